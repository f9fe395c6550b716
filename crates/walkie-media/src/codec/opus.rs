//! libopus wrappers: a 48 kHz mono VOIP encoder (PCM frame -> packet) and decoder (packet -> PCM, with concealment).

use ::opus::{Application, Bitrate, Channels};

use walkie_proto::clip::CodecParams;
use walkie_proto::toc::{MAX_PACKET_SAMPLES, packet_samples};

use super::{CodecError, EncoderConfig};

/// Largest packet the encoder may produce, in bytes (libopus's recommended buffer size).
const MAX_ENCODED_BYTES: usize = 4_000;
/// Concealment works in steps of 2.5 ms at 48 kHz.
const CONCEAL_STEP: usize = 120;

/// Wraps a libopus error with what walkie was doing.
fn opus_err(context: &'static str) -> impl FnOnce(::opus::Error) -> CodecError {
    move |source| CodecError::Opus { context, source }
}

/// An Opus encoder: 48 kHz mono, VOIP application, VBR.
pub struct Encoder {
    inner: ::opus::Encoder,
    frame_samples: usize,
    bitrate: u32,
    pre_skip: u16,
    /// libopus writes each packet here; only its actual length is copied out, so a packet
    /// holds its own bytes and not a 4 kB buffer (60 s of packets: 12 MB -> 0.2 MB).
    scratch: Box<[u8; MAX_ENCODED_BYTES]>,
}

impl Encoder {
    /// Creates an encoder with the given settings (validated first).
    pub fn new(cfg: &EncoderConfig) -> Result<Encoder, CodecError> {
        cfg.validate()?;
        let setup = "cannot set up the Opus encoder";
        let mut inner = ::opus::Encoder::new(48_000, Channels::Mono, Application::Voip)
            .map_err(opus_err(setup))?;
        inner.set_vbr(true).map_err(opus_err(setup))?;
        // validate() bounds both values well inside i32.
        inner
            .set_bitrate(Bitrate::Bits(cfg.bitrate as i32))
            .map_err(opus_err(setup))?;
        inner
            .set_complexity(i32::from(cfg.complexity))
            .map_err(opus_err(setup))?;
        let lookahead = inner.get_lookahead().map_err(opus_err(setup))?;
        let pre_skip = u16::try_from(lookahead).map_err(|_| {
            CodecError::Config(format!(
                "libopus reported an impossible lookahead of {lookahead}"
            ))
        })?;
        Ok(Encoder {
            inner,
            frame_samples: cfg.frame_samples(),
            bitrate: cfg.bitrate,
            pre_skip,
            scratch: Box::new([0; MAX_ENCODED_BYTES]),
        })
    }

    /// Encodes one frame of exactly `frame_samples` samples into one packet.
    pub fn encode(&mut self, frame: &[f32]) -> Result<Vec<u8>, CodecError> {
        if frame.len() != self.frame_samples {
            return Err(CodecError::FrameSize {
                expected: self.frame_samples,
                got: frame.len(),
            });
        }
        let n = self
            .inner
            .encode_float(frame, &mut self.scratch[..])
            .map_err(opus_err("the Opus encoder failed on a frame"))?;
        Ok(self.scratch[..n.min(MAX_ENCODED_BYTES)].to_vec())
    }

    /// Tunes the encoder to a path that loses `percent` of its packets (0 to 100): in-band FEC
    /// (low-bitrate copies of each frame inside the next packet, which a listener decodes
    /// when a packet is lost) on for any loss, off for none. Takes effect from the next frame.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), CodecError> {
        let setup = "cannot tune the Opus encoder to the path's loss";
        self.inner
            .set_inband_fec(percent > 0)
            .map_err(opus_err(setup))?;
        self.inner
            .set_packet_loss_perc(i32::from(percent.min(100)))
            .map_err(opus_err(setup))
    }

    /// The encoder's lookahead in 48 kHz samples, as libopus reports it: the Ogg pre-skip.
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// Samples per frame at 48 kHz.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// The codec parameters of the packets this encoder produces.
    pub fn params(&self) -> CodecParams {
        CodecParams {
            frame_samples: self.frame_samples as u32,
            bitrate: self.bitrate,
            pre_skip: self.pre_skip,
        }
    }
}

/// An Opus decoder: 48 kHz mono output, with packet-loss concealment.
pub struct Decoder {
    inner: ::opus::Decoder,
    buf: Vec<f32>,
}

impl Decoder {
    /// Creates a 48 kHz mono decoder.
    pub fn new() -> Result<Decoder, CodecError> {
        let inner = ::opus::Decoder::new(48_000, Channels::Mono)
            .map_err(opus_err("cannot set up the Opus decoder"))?;
        Ok(Decoder {
            inner,
            buf: vec![0.0; MAX_PACKET_SAMPLES as usize],
        })
    }

    /// Decodes one packet. Empty or malformed packets are errors (use [`Decoder::conceal`] for a lost one).
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, CodecError> {
        self.decode_slice(packet).map(<[f32]>::to_vec)
    }

    /// Like [`Decoder::decode`], returning the samples in the decoder's own buffer (valid until
    /// the next call) instead of a new `Vec`: no allocation per packet.
    pub fn decode_slice(&mut self, packet: &[u8]) -> Result<&[f32], CodecError> {
        let expected = packet_samples(packet)? as usize;
        let n = self
            .inner
            .decode_float(packet, &mut self.buf, false)
            .map_err(|e| {
                CodecError::Packet(format!("libopus could not decode it ({})", e.description()))
            })?;
        if n != expected {
            return Err(CodecError::Packet(format!(
                "decoded {n} samples where the header says {expected}"
            )));
        }
        Ok(&self.buf[..n])
    }

    /// Decodes `samples` samples for a lost packet from the in-band FEC data of the packet
    /// after it, `next` (libopus conceals instead when `next` carries none). `samples` must be
    /// the lost packet's length, a multiple of 120 up to 5760.
    pub fn recover(&mut self, next: &[u8], samples: usize) -> Result<Vec<f32>, CodecError> {
        if samples == 0 || samples > self.buf.len() || !samples.is_multiple_of(CONCEAL_STEP) {
            return Err(CodecError::Packet(format!(
                "cannot recover {samples} samples: use a multiple of {CONCEAL_STEP} up to {MAX_PACKET_SAMPLES}"
            )));
        }
        packet_samples(next)?;
        let n = self
            .inner
            .decode_float(next, &mut self.buf[..samples], true)
            .map_err(|e| {
                CodecError::Packet(format!(
                    "libopus could not decode FEC data ({})",
                    e.description()
                ))
            })?;
        Ok(self.buf[..n].to_vec())
    }

    /// Invents `samples` samples for a lost packet (packet-loss concealment). `samples` must be
    /// a multiple of 120 (2.5 ms) from 120 to 5760.
    pub fn conceal(&mut self, samples: usize) -> Result<Vec<f32>, CodecError> {
        if samples == 0 || samples > self.buf.len() || !samples.is_multiple_of(CONCEAL_STEP) {
            return Err(CodecError::Packet(format!(
                "cannot conceal {samples} samples: use a multiple of {CONCEAL_STEP} up to {MAX_PACKET_SAMPLES}"
            )));
        }
        let n = self
            .inner
            .decode_float(&[], &mut self.buf[..samples], false)
            .map_err(opus_err("Opus packet-loss concealment failed"))?;
        Ok(self.buf[..n].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(len: usize) -> Vec<f32> {
        (0..len).map(|i| 0.4 * (i as f32 * 0.05).sin()).collect()
    }

    #[test]
    fn encoder_applies_settings_and_reports_lookahead() {
        let cfg = EncoderConfig::default();
        let mut enc = Encoder::new(&cfg).unwrap();
        assert_eq!(enc.inner.get_bitrate().unwrap(), Bitrate::Bits(24_000));
        assert_eq!(enc.inner.get_complexity().unwrap(), 10);
        assert!(enc.inner.get_vbr().unwrap());
        assert_eq!(enc.inner.get_application().unwrap(), Application::Voip);
        let lookahead = enc.inner.get_lookahead().unwrap();
        assert!(lookahead > 0);
        assert_eq!(i32::from(enc.pre_skip()), lookahead);
        assert_eq!(
            enc.params(),
            CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: enc.pre_skip()
            }
        );
    }

    #[test]
    fn wrong_frame_sizes_and_bad_configs_are_refused() {
        let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
        assert!(matches!(
            enc.encode(&[0.0; 959]),
            Err(CodecError::FrameSize {
                expected: 960,
                got: 959
            })
        ));
        assert!(enc.encode(&[]).is_err());
        for cfg in [
            EncoderConfig {
                bitrate: 5_999,
                ..Default::default()
            },
            EncoderConfig {
                bitrate: 510_001,
                ..Default::default()
            },
            EncoderConfig {
                complexity: 11,
                ..Default::default()
            },
            EncoderConfig {
                frame_ms: 30,
                ..Default::default()
            },
        ] {
            assert!(
                matches!(Encoder::new(&cfg), Err(CodecError::Config(_))),
                "{cfg:?}"
            );
        }
    }

    #[test]
    fn fec_data_recovers_a_lost_frame_better_than_concealment() {
        // A voiced, changing signal: a glide from 200 to 400 Hz.
        let pcm: Vec<f32> = (0..48_000)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.5 * (2.0 * std::f32::consts::PI * (200.0 * t + 100.0 * t * t)).sin()
            })
            .collect();
        let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
        enc.set_expected_loss(20).unwrap();
        assert!(enc.inner.get_inband_fec().unwrap());
        assert_eq!(enc.inner.get_packet_loss_perc().unwrap(), 20);
        let packets: Vec<Vec<u8>> = pcm.chunks(960).map(|f| enc.encode(f).unwrap()).collect();
        // Every 5th packet lost: decoded from the next one's FEC data, or concealed.
        let decode = |fec: bool| {
            let mut dec = Decoder::new().unwrap();
            let mut out = Vec::new();
            for (k, p) in packets.iter().enumerate() {
                if k % 5 == 2 {
                    out.extend(if fec {
                        dec.recover(&packets[k + 1], 960).unwrap()
                    } else {
                        dec.conceal(960).unwrap()
                    });
                } else {
                    out.extend(dec.decode(p).unwrap());
                }
            }
            let skip = usize::from(enc.pre_skip());
            let err: f32 = out[skip..]
                .iter()
                .zip(&pcm)
                .map(|(a, b)| (a - b).powi(2))
                .sum();
            err
        };
        let (with_fec, concealed) = (decode(true), decode(false));
        assert!(
            with_fec < concealed * 0.7,
            "squared error with FEC {with_fec:.1}, concealed {concealed:.1}"
        );
        enc.set_expected_loss(0).unwrap();
        assert!(!enc.inner.get_inband_fec().unwrap());
        assert!(Decoder::new().unwrap().recover(&[], 960).is_err());
    }

    #[test]
    fn every_frame_size_round_trips_one_packet() {
        for ms in [10u32, 20, 40, 60] {
            let cfg = EncoderConfig {
                frame_ms: ms,
                ..Default::default()
            };
            let mut enc = Encoder::new(&cfg).unwrap();
            let mut dec = Decoder::new().unwrap();
            let packet = enc.encode(&tone(cfg.frame_samples())).unwrap();
            assert_eq!(packet_samples(&packet).unwrap(), 48 * ms);
            assert_eq!(dec.decode(&packet).unwrap().len(), 48 * ms as usize);
        }
    }

    #[test]
    fn packets_hold_only_their_own_bytes() {
        let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
        let packet = enc.encode(&tone(960)).unwrap();
        assert!(
            !packet.is_empty() && packet.capacity() == packet.len(),
            "{} of {}",
            packet.len(),
            packet.capacity()
        );
        let mut dec = Decoder::new().unwrap();
        let owned = dec.decode(&packet).unwrap();
        let mut dec2 = Decoder::new().unwrap();
        assert_eq!(dec2.decode_slice(&packet).unwrap(), &owned[..]);
    }

    #[test]
    fn garbage_packets_are_errors_not_panics() {
        let mut dec = Decoder::new().unwrap();
        assert!(dec.decode(&[]).is_err());
        // Code 3 (arbitrary frame count) with a count of zero frames.
        assert!(dec.decode(&[0x03, 0x00]).is_err());
        // Code 3 claiming 63 frames of 20 ms: far over 120 ms.
        assert!(dec.decode(&[0x1b, 0x3f, 1, 2, 3]).is_err());
        // Code 2 (two frames of different sizes) whose first size overruns the packet.
        assert!(dec.decode(&[0x02, 0xfb, 0x01]).is_err());
        assert!(dec.decode(&vec![0u8; 70_000]).is_err());
        let mut seed = 0x1234_5678u32;
        for len in 1..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            if let Ok(pcm) = dec.decode(&bytes) {
                assert!(pcm.len() <= 5760 && pcm.iter().all(|s| s.is_finite()));
            }
        }
    }

    #[test]
    fn concealment_fills_the_gap() {
        let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
        let mut dec = Decoder::new().unwrap();
        for _ in 0..5 {
            dec.decode(&enc.encode(&tone(960)).unwrap()).unwrap();
        }
        let filled = dec.conceal(960).unwrap();
        assert_eq!(filled.len(), 960);
        assert!(
            filled.iter().any(|s| s.abs() > 1e-4),
            "concealment should continue the tone"
        );
        assert!(dec.conceal(0).is_err());
        assert!(dec.conceal(100).is_err());
        assert!(dec.conceal(5880).is_err());
        assert_eq!(dec.conceal(5760).unwrap().len(), 5760);
    }
}
