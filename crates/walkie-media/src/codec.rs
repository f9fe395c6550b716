//! The codec path: encoder settings, PCM <-> Opus packets for whole clips, and WAV <-> Ogg Opus files.
//!
//! [`opus`] wraps libopus (48 kHz mono); Ogg Opus files are read and written by
//! [`walkie_proto::ogg`], and an Opus packet's length is read by [`walkie_proto::toc`].
//! A clip is encoded with enough trailing zero frames to cover the encoder's lookahead, so
//! that after dropping `pre_skip` samples at the start and trimming at the end the decoder
//! returns exactly as many samples as went in, aligned with the input.

pub mod opus;

use std::path::Path;

use walkie_proto::clip::{CodecParams, MAX_SAMPLES};
use walkie_proto::ogg::{self, OggError};
use walkie_proto::received::ReceivedClip;
use walkie_proto::toc::TocError;

use crate::audio::{self, AudioError};

/// Errors of the codec path.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// An encoder setting is out of range.
    #[error("invalid encoder setting: {0}")]
    Config(String),
    /// libopus refused an operation.
    #[error("{context}: {source}")]
    Opus {
        /// What walkie was doing.
        context: &'static str,
        /// What libopus reported.
        #[source]
        source: ::opus::Error,
    },
    /// A PCM frame handed to the encoder has the wrong length.
    #[error("an Opus frame must have {expected} samples, got {got}")]
    FrameSize {
        /// The configured frame size.
        expected: usize,
        /// The length of the frame given.
        got: usize,
    },
    /// An Opus packet is empty, malformed, too long or undecodable.
    #[error("invalid Opus packet: {0}")]
    Packet(String),
    /// A clip or file exceeds one of walkie's size or duration caps.
    #[error("too large: {0}")]
    TooLarge(String),
    /// An Ogg Opus file could not be read or written.
    #[error(transparent)]
    Ogg(#[from] OggError),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An error in the Ogg Opus file at `path`.
    #[error("{path}: {source}")]
    InFile {
        /// The file path.
        path: String,
        /// The error found in it.
        #[source]
        source: Box<CodecError>,
    },
    /// The WAV side failed (reading, resampling or writing).
    #[error(transparent)]
    Audio(#[from] AudioError),
}

/// Opus encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Target bitrate in bits per second (VBR), 6000..=510000.
    pub bitrate: u32,
    /// Encoder complexity, 0 (fastest) ..= 10 (best).
    pub complexity: u8,
    /// Frame duration in milliseconds: 10, 20, 40 or 60.
    pub frame_ms: u32,
}

impl EncoderConfig {
    /// Checks every setting against what libopus and walkie support.
    pub fn validate(&self) -> Result<(), CodecError> {
        if !(6_000..=510_000).contains(&self.bitrate) {
            return Err(CodecError::Config(format!(
                "bitrate {} b/s is outside 6000..=510000",
                self.bitrate
            )));
        }
        if self.complexity > 10 {
            return Err(CodecError::Config(format!(
                "complexity {} is outside 0..=10",
                self.complexity
            )));
        }
        if ![10, 20, 40, 60].contains(&self.frame_ms) {
            return Err(CodecError::Config(format!(
                "frame duration {} ms is not one of 10, 20, 40, 60",
                self.frame_ms
            )));
        }
        Ok(())
    }

    /// Samples per frame at 48 kHz (960 for 20 ms).
    pub fn frame_samples(&self) -> usize {
        48 * self.frame_ms as usize
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            complexity: 10,
            frame_ms: 20,
        }
    }
}

/// A whole clip as Opus packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedClip {
    /// How the packets were encoded.
    pub params: CodecParams,
    /// The Opus packets, one per frame.
    pub packets: Vec<Vec<u8>>,
    /// The input length at 48 kHz: the decoded length after pre-skip and end trimming.
    pub samples: u64,
}

impl From<TocError> for CodecError {
    fn from(e: TocError) -> Self {
        CodecError::Packet(e.to_string())
    }
}

/// Encodes mono 48 kHz PCM into Opus packets, zero-padding the end so that the decoder can
/// return every input sample despite the encoder's lookahead.
pub fn encode_pcm(pcm48: &[f32], cfg: &EncoderConfig) -> Result<EncodedClip, CodecError> {
    let samples = pcm48.len() as u64;
    if samples > MAX_SAMPLES {
        return Err(CodecError::TooLarge(format!(
            "{samples} samples is longer than the {MAX_SAMPLES}-sample (10 minute) limit"
        )));
    }
    let mut enc = opus::Encoder::new(cfg)?;
    let frame = cfg.frame_samples();
    // Full frames straight from the input (no copy of the clip); then the rest of the input
    // and the lookahead's zeros, zero-padded to whole frames.
    let whole = pcm48.len() / frame * frame;
    let total = pcm48.len() + usize::from(enc.pre_skip());
    let mut packets = Vec::with_capacity(total.div_ceil(frame));
    for f in pcm48[..whole].chunks_exact(frame) {
        packets.push(enc.encode(f)?);
    }
    let mut tail = pcm48[whole..].to_vec();
    tail.resize((total - whole).div_ceil(frame) * frame, 0.0);
    for f in tail.chunks_exact(frame) {
        packets.push(enc.encode(f)?);
    }
    Ok(EncodedClip {
        params: enc.params(),
        packets,
        samples,
    })
}

/// Decodes packets, drops the first `pre_skip` samples and trims to `samples` (or returns
/// what there is when the packets hold fewer).
pub fn decode_packets(
    params: &CodecParams,
    packets: &[Vec<u8>],
    samples: u64,
) -> Result<Vec<f32>, CodecError> {
    let mut dec = opus::Decoder::new()?;
    let want = usize::try_from(samples).unwrap_or(usize::MAX);
    let mut skip = usize::from(params.pre_skip);
    let mut out = Vec::with_capacity(want.min(MAX_SAMPLES as usize));
    for packet in packets {
        if out.len() >= want {
            break;
        }
        let pcm = dec.decode_slice(packet)?;
        let drop = skip.min(pcm.len());
        skip -= drop;
        // Never past `want`: the last packet's padding would make `out` grow (double) for
        // samples that are cut anyway.
        let keep = (pcm.len() - drop).min(want - out.len());
        out.extend_from_slice(&pcm[drop..drop + keep]);
    }
    Ok(out)
}

/// Decodes a received clip to 48 kHz mono.
pub fn decode_clip(clip: &ReceivedClip) -> Result<Vec<f32>, CodecError> {
    decode_packets(&clip.header.codec, &clip.packets, clip.samples)
}

/// Encodes a WAV file (any supported rate, mono or stereo) to an Ogg Opus file with a random serial.
pub fn encode_file(
    input_wav: &Path,
    output_opus: &Path,
    cfg: &EncoderConfig,
) -> Result<EncodedClip, CodecError> {
    cfg.validate()?;
    let pcm = audio::load_wav_48k_mono(input_wav)?;
    let clip = encode_pcm(&pcm, cfg)?;
    let bytes = ogg::write_ogg(&clip.params, &clip.packets, clip.samples, rand::random())?;
    std::fs::write(output_opus, bytes).map_err(|source| CodecError::Io {
        action: "write",
        path: output_opus.display().to_string(),
        source,
    })?;
    Ok(clip)
}

/// Decodes an Ogg Opus file to a 48 kHz mono 16-bit WAV file; returns the number of samples written.
pub fn decode_file(input_opus: &Path, output_wav: &Path) -> Result<u64, CodecError> {
    let file = ogg::read_ogg_file(input_opus)?;
    let pcm = decode_packets(&file.params, &file.packets, file.samples).map_err(|e| {
        CodecError::InFile {
            path: input_opus.display().to_string(),
            source: Box::new(e),
        }
    })?;
    audio::wav::write_wav_mono16(output_wav, 48_000, &pcm)?;
    Ok(pcm.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;
    use walkie_proto::toc::packet_samples;

    /// A linear chirp from `f0` to `f1` Hz over `len` samples at 48 kHz.
    fn chirp(len: usize, f0: f32, f1: f32) -> Vec<f32> {
        let secs = (len as f32 / 48_000.0).max(1e-3);
        (0..len)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.5 * (TAU * (f0 * t + (f1 - f0) / (2.0 * secs) * t * t)).sin()
            })
            .collect()
    }

    /// (lag of the maximum normalized cross-correlation within ±max_lag, its value).
    fn best_lag(x: &[f32], y: &[f32], max_lag: i64) -> (i64, f32) {
        let mut best = (0, f32::MIN);
        for lag in -max_lag..=max_lag {
            let (mut dot, mut ex, mut ey) = (0.0f64, 0.0f64, 0.0f64);
            for i in 0..x.len() as i64 {
                let j = i + lag;
                if j >= 0 && (j as usize) < y.len() {
                    let (a, b) = (f64::from(x[i as usize]), f64::from(y[j as usize]));
                    dot += a * b;
                    ex += a * a;
                    ey += b * b;
                }
            }
            let c = (dot / (ex * ey).sqrt()) as f32;
            if c > best.1 {
                best = (lag, c);
            }
        }
        best
    }

    /// Clicks every 100 ms, starting at 50 ms, with a different sign each time.
    fn clicks(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                if i % 4_800 == 2_400 {
                    if i % 9_600 == 2_400 { 0.8 } else { -0.8 }
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Asserts every click of `clicks(out.len())` comes out as the loudest sample near it, within ±2.
    fn assert_clicks_aligned(out: &[f32], what: &str) {
        for at in (2_400..out.len().saturating_sub(200)).step_by(4_800) {
            let window = at - 200..at + 200;
            let peak = window
                .clone()
                .max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs()))
                .unwrap();
            assert!(
                peak.abs_diff(at) <= 2,
                "{what}: click at {at} decoded at {peak}"
            );
        }
    }

    #[test]
    fn a_second_of_chirp_round_trips_aligned_and_exact() {
        // Tones coded by SILK come out up to 2 samples early (libopus's own SILK path; clicks land
        // exactly, see below), and VOIP's high-pass filter advances tones below ~1 kHz by a few
        // more samples, so this chirp stays above 1.5 kHz.
        let input = chirp(48_000, 1_500.0, 4_000.0);
        let clip = encode_pcm(&input, &EncoderConfig::default()).unwrap();
        assert_eq!(clip.samples, 48_000);
        let pre = u64::from(clip.params.pre_skip);
        assert_eq!(clip.packets.len() as u64, (48_000 + pre).div_ceil(960));
        let out = decode_packets(&clip.params, &clip.packets, clip.samples).unwrap();
        assert_eq!(out.len(), input.len());
        let (lag, c) = best_lag(&input, &out, 20);
        assert!(lag.abs() <= 2, "best alignment at lag {lag}");
        assert!(c > 0.9, "correlation {c}");
        // The very end survives too: the last 10 ms carry the chirp, not silence.
        let tail = &out[out.len() - 480..];
        assert!(tail.iter().map(|s| s.abs()).fold(0.0, f32::max) > 0.2);
    }

    #[test]
    fn pre_skip_trimming_aligns_clicks_to_the_sample() {
        for ms in [10u32, 20, 40, 60] {
            let cfg = EncoderConfig {
                frame_ms: ms,
                ..Default::default()
            };
            let input = clicks(48_000);
            let clip = encode_pcm(&input, &cfg).unwrap();
            let out = decode_packets(&clip.params, &clip.packets, clip.samples).unwrap();
            assert_eq!(out.len(), input.len());
            assert_clicks_aligned(&out, &format!("{ms} ms"));
            let (lag, _) = best_lag(&input, &out, 20);
            assert!(lag.abs() <= 2, "{ms} ms: best lag {lag}");
        }
    }

    #[test]
    fn pre_skip_is_what_libopus_reports() {
        let mut reference =
            ::opus::Encoder::new(48_000, ::opus::Channels::Mono, ::opus::Application::Voip)
                .unwrap();
        let lookahead = reference.get_lookahead().unwrap();
        let clip = encode_pcm(&chirp(4_800, 200.0, 2_000.0), &EncoderConfig::default()).unwrap();
        assert_eq!(i32::from(clip.params.pre_skip), lookahead);
        assert_eq!(clip.params.bitrate, 24_000);
        assert_eq!(clip.params.frame_samples, 960);
    }

    #[test]
    fn every_frame_size_gives_exact_lengths() {
        for ms in [10u32, 20, 40, 60] {
            let cfg = EncoderConfig {
                frame_ms: ms,
                bitrate: 32_000,
                complexity: 5,
            };
            let input = chirp(12_345, 1_000.0, 1_000.0);
            let clip = encode_pcm(&input, &cfg).unwrap();
            for p in &clip.packets {
                assert_eq!(packet_samples(p).unwrap(), 48 * ms);
            }
            let out = decode_packets(&clip.params, &clip.packets, clip.samples).unwrap();
            assert_eq!(out.len(), 12_345, "{ms} ms");
            let (_, c) = best_lag(&input, &out, 4);
            assert!(c > 0.9, "{ms} ms: correlation {c}");
        }
    }

    #[test]
    fn empty_and_short_inputs_and_short_packet_lists() {
        let clip = encode_pcm(&[], &EncoderConfig::default()).unwrap();
        assert_eq!((clip.samples, clip.packets.len()), (0, 1));
        assert!(
            decode_packets(&clip.params, &clip.packets, 0)
                .unwrap()
                .is_empty()
        );
        let clip = encode_pcm(&chirp(9_600, 200.0, 2_000.0), &EncoderConfig::default()).unwrap();
        let some = decode_packets(&clip.params, &clip.packets[..3], clip.samples).unwrap();
        assert_eq!(some.len(), 3 * 960 - usize::from(clip.params.pre_skip));
        assert!(
            encode_pcm(
                &[0.0; 10],
                &EncoderConfig {
                    frame_ms: 25,
                    ..Default::default()
                }
            )
            .is_err()
        );
        let mut bad = clip.packets.clone();
        bad[2] = vec![0x03, 0x00];
        assert!(matches!(
            decode_packets(&clip.params, &bad, clip.samples),
            Err(CodecError::Packet(_))
        ));
    }

    /// libopus's own parser (`opus_packet_parse`) and walkie's pure-Rust TOC reader agree on
    /// every packet: the same length for the packets both accept, and the relay (which has no
    /// libopus) refuses nothing that libopus would decode.
    #[test]
    fn the_toc_reader_agrees_with_libopus() {
        let libopus = |p: &[u8]| -> Option<u32> {
            let frames = ::opus::packet::parse(p).ok()?.frames.len();
            let per = ::opus::packet::get_samples_per_frame(p, 48_000).ok()?;
            u32::try_from(frames * per)
                .ok()
                .filter(|&n| n > 0 && n <= 5_760)
        };
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        };
        let mut agreed = 0;
        for len in 1..600usize {
            for _ in 0..40 {
                let mut p: Vec<u8> = (0..len).map(|_| next()).collect();
                // Small frame counts and lengths make valid code-2/3 packets likely too.
                if p.len() > 1 && p[0] & 3 >= 2 {
                    p[1] &= 0x8f;
                }
                let ours = packet_samples(&p).ok();
                assert_eq!(ours, libopus(&p), "packet {p:02x?}");
                agreed += usize::from(ours.is_some());
            }
        }
        assert!(agreed > 1_000, "only {agreed} valid packets were tried");
        let clip = encode_pcm(&chirp(48_000, 300.0, 3_000.0), &EncoderConfig::default()).unwrap();
        for p in &clip.packets {
            assert_eq!(packet_samples(p).ok(), libopus(p));
        }
    }

    #[test]
    fn wav_files_encode_and_decode() {
        let dir = tempfile::tempdir().unwrap();
        let (wav, opus, out) = (
            dir.path().join("in.wav"),
            dir.path().join("c.opus"),
            dir.path().join("out.wav"),
        );
        let tone: Vec<i16> = (0..8_000)
            .map(|i| ((i as f32 * 0.2).sin() * 8_000.0) as i16)
            .collect();
        audio::wav::write_i16_wav(&wav, 16_000, 1, &tone);
        let clip = encode_file(&wav, &opus, &EncoderConfig::default()).unwrap();
        assert_eq!(clip.samples, 24_000);
        assert_eq!(decode_file(&opus, &out).unwrap(), 24_000);
        let r = hound::WavReader::open(&out).unwrap();
        assert_eq!(
            (r.spec().sample_rate, r.spec().channels, r.len()),
            (48_000, 1, 24_000)
        );
        let err = decode_file(&dir.path().join("missing.opus"), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.opus"), "{err}");
        std::fs::write(&opus, b"OggS garbage").unwrap();
        let err = decode_file(&opus, &out).unwrap_err().to_string();
        assert!(err.contains("c.opus"), "{err}");
        assert!(
            encode_file(
                &dir.path().join("none.wav"),
                &opus,
                &EncoderConfig::default()
            )
            .is_err()
        );
    }

    /// Runs an opus-tools program; a missing tool fails the test with install advice.
    fn run_tool(tool: &str, args: &[&std::ffi::OsStr]) -> std::process::Output {
        std::process::Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("{tool} could not be run ({e}): install opus-tools (e.g. `apt-get install opus-tools`)")
        })
    }

    #[test]
    fn opus_tools_accept_our_files() {
        let dir = tempfile::tempdir().unwrap();
        let (opus, wav) = (dir.path().join("clip.opus"), dir.path().join("clip.wav"));
        let input = chirp(3 * 48_000 + 123, 200.0, 2_000.0);
        let clip = encode_pcm(&input, &EncoderConfig::default()).unwrap();
        std::fs::write(
            &opus,
            ogg::write_ogg(&clip.params, &clip.packets, clip.samples, 7).unwrap(),
        )
        .unwrap();
        let info = run_tool("opusinfo", &[opus.as_os_str()]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&info.stdout),
            String::from_utf8_lossy(&info.stderr)
        );
        assert!(info.status.success(), "opusinfo failed:\n{text}");
        assert!(
            !text.contains("WARNING") && !text.contains("ERROR"),
            "opusinfo complained:\n{text}"
        );
        let dec = run_tool(
            "opusdec",
            &[
                "--rate".as_ref(),
                "48000".as_ref(),
                opus.as_os_str(),
                wav.as_os_str(),
            ],
        );
        assert!(
            dec.status.success(),
            "opusdec failed: {}",
            String::from_utf8_lossy(&dec.stderr)
        );
        let r = hound::WavReader::open(&wav).unwrap();
        assert_eq!((r.spec().sample_rate, r.spec().channels), (48_000, 1));
        assert_eq!(u64::from(r.duration()), clip.samples);
    }
}
