//! Assembling one uploaded clip, without I/O: validates the header, each packet and the end
//! marker against the relay's limits, and writes the packets into the clip's Ogg Opus file in
//! memory as they arrive (each packet copied once, its TOC read once).

use crate::clip::{ClipHeader, ClipId, CodecParams, validate_name};
use crate::ogg::OggOpusWriter;
use crate::toc::{MAX_PACKET_BYTES, packet_samples};
use crate::wire::{ErrorCode, ErrorMsg};

/// Frame sizes a clip may use, in 48 kHz samples (10, 20, 40, 60 ms).
pub const FRAME_SIZES: [u32; 4] = [480, 960, 1920, 2880];
/// Largest pre-skip accepted (libopus uses 312; RFC 7845 allows more, we cap at 80 ms).
pub const MAX_PRE_SKIP: u16 = 3840;

/// Why an upload was refused (or ended), as the talker and live listeners are told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Wire error code (a `Busy` refusal carries its retry delay here, typed).
    pub code: ErrorCode,
    /// One clear sentence.
    pub message: String,
}

impl Refusal {
    /// A refusal with this code and sentence.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The wire form, about `clip`.
    pub fn to_wire(&self, clip: ClipId) -> ErrorMsg {
        ErrorMsg {
            req: None,
            clip: Some(clip),
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// Checks a clip header before anything else happens.
pub fn check_header(header: &ClipHeader) -> Result<(), Refusal> {
    validate_name(header.to.name())
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    if !FRAME_SIZES.contains(&header.codec.frame_samples) {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "frame size of {} samples is not one of 10, 20, 40 or 60 ms",
                header.codec.frame_samples
            ),
        ));
    }
    if header.codec.pre_skip > MAX_PRE_SKIP {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!("pre-skip {} is above {MAX_PRE_SKIP}", header.codec.pre_skip),
        ));
    }
    Ok(())
}

/// A clip being received.
pub struct ClipAssembler {
    pre_skip: u64,
    max_samples: u64,
    codec: CodecParams,
    /// The Ogg stream's serial number, from the clip id.
    serial: u32,
    /// The file so far, from the first packet on.
    ogg: Option<OggOpusWriter<Vec<u8>>>,
    packets: usize,
    decoded_samples: u64,
    last_packet_samples: u64,
}

impl std::fmt::Debug for ClipAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipAssembler")
            .field("packets", &self.packets)
            .field("decoded_samples", &self.decoded_samples)
            .field("max_samples", &self.max_samples)
            .finish_non_exhaustive()
    }
}

/// A complete, validated clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// The whole Ogg Opus file.
    pub ogg: Vec<u8>,
    /// How many Opus packets it holds.
    pub packets: u32,
    /// Decoded length in 48 kHz samples (after pre-skip).
    pub samples: u64,
}

/// The serial number of a clip's stored Ogg stream: the first bytes of its id (a serial only
/// tells streams apart inside one physical Ogg file, and there is one here).
pub fn ogg_serial(id: &ClipId) -> u32 {
    u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}

/// What a clip's Ogg file starts with room for (a 5-second clip at 24 kb/s is about 16 KB).
const FILE_START_CAPACITY: usize = 16 * 1024;

impl ClipAssembler {
    /// Starts a clip allowed to last at most `max_clip_ms`.
    pub fn new(header: &ClipHeader, max_clip_ms: u32) -> Self {
        Self {
            pre_skip: header.codec.pre_skip.into(),
            max_samples: u64::from(max_clip_ms) * 48,
            codec: header.codec,
            serial: ogg_serial(&header.id),
            ogg: None,
            packets: 0,
            decoded_samples: 0,
            last_packet_samples: 0,
        }
    }

    /// How much audio has arrived, in 48 kHz samples, pre-skip included: what the talker has
    /// sent in real time.
    pub fn received_samples(&self) -> u64 {
        self.decoded_samples
    }

    /// How long the clip is so far, in 48 kHz samples after pre-skip.
    pub fn samples_so_far(&self) -> u64 {
        self.decoded_samples.saturating_sub(self.pre_skip)
    }

    /// Adds one packet; refuses malformed packets and clips that grow past the maximum
    /// (allowing one frame and the pre-skip of encoder padding at the end).
    pub fn push(&mut self, packet: &[u8]) -> Result<(), Refusal> {
        if packet.len() > MAX_PACKET_BYTES {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!(
                    "an Opus packet of {} bytes exceeds {MAX_PACKET_BYTES} bytes",
                    packet.len()
                ),
            ));
        }
        let n = packet_samples(packet).map_err(|e| {
            Refusal::new(
                ErrorCode::BadRequest,
                format!("packet {} is not valid Opus: {e}", self.packets),
            )
        })?;
        self.decoded_samples += u64::from(n);
        self.last_packet_samples = u64::from(n);
        let allowance = self.max_samples + self.pre_skip + 5760;
        if self.decoded_samples > allowance {
            return Err(self.too_long());
        }
        let ogg = match &mut self.ogg {
            Some(w) => w,
            None => self.ogg.insert(
                OggOpusWriter::new(
                    Vec::with_capacity(FILE_START_CAPACITY),
                    &self.codec,
                    self.serial,
                    48_000,
                )
                .map_err(cannot_build)?,
            ),
        };
        ogg.write_counted(packet, n).map_err(cannot_build)?;
        self.packets += 1;
        Ok(())
    }

    fn too_long(&self) -> Refusal {
        Refusal::new(
            ErrorCode::TooLong,
            format!(
                "the clip is longer than the relay's maximum of {} s",
                self.max_samples as f64 / 48_000.0
            ),
        )
    }

    /// Completes the clip with the sender's end marker, which must agree with what arrived.
    pub fn finish(self, packets: u32, samples: u64) -> Result<Assembled, Refusal> {
        if packets as usize != self.packets {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "the end marker counts {packets} packets but {} arrived",
                    self.packets
                ),
            ));
        }
        if self.packets == 0 {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "the clip has no audio packets",
            ));
        }
        // The end must fall inside the last packet (RFC 7845 end trimming): a sender may not
        // claim more audio than it sent, nor send whole packets past the end.
        let before_last = self.decoded_samples - self.last_packet_samples;
        // The peer controls `samples`: an overflow is as wrong as any other bad end marker.
        let end = samples.saturating_add(self.pre_skip);
        if samples == 0 || end > self.decoded_samples || end <= before_last {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "the end marker claims {samples} samples but the packets hold {} after pre-skip",
                    self.samples_so_far()
                ),
            ));
        }
        if samples > self.max_samples {
            return Err(self.too_long());
        }
        let ogg = self
            .ogg
            .ok_or_else(|| Refusal::new(ErrorCode::BadRequest, "the clip has no audio packets"))?
            .finish(samples)
            .map_err(cannot_build)?;
        Ok(Assembled {
            ogg,
            packets,
            samples,
        })
    }
}

/// The file could not be written (a packet past the 10-minute limit of the Ogg writer).
fn cannot_build(e: crate::ogg::OggError) -> Refusal {
    Refusal::new(
        ErrorCode::BadRequest,
        format!("cannot build the Ogg file: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{ClipId, CodecParams, Target};
    use crate::testing::synthetic_clip;

    fn header(pre_skip: u16) -> ClipHeader {
        ClipHeader {
            id: ClipId([1; 16]),
            to: Target::Channel("crew".into()),
            started_at_ms: 0,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip,
            },
        }
    }

    #[test]
    fn a_real_clip_assembles() {
        let clip = synthetic_clip(500 * 48);
        let mut asm = ClipAssembler::new(&header(clip.params.pre_skip), 60_000);
        for p in &clip.packets {
            asm.push(p).expect("valid packet");
        }
        let done = asm
            .finish(clip.packets.len() as u32, clip.samples)
            .expect("complete");
        assert_eq!(done.samples, 24_000);
        assert_eq!(done.packets as usize, clip.packets.len());
        // The file is what writing the whole clip at once gives, byte for byte.
        let whole = crate::ogg::write_ogg(&clip.params, &clip.packets, clip.samples, 0x0101_0101)
            .expect("a valid clip");
        assert_eq!(done.ogg, whole);
        assert_eq!(
            crate::ogg::read_ogg(&done.ogg).expect("readable").packets,
            clip.packets
        );
    }

    #[test]
    fn refuses_a_clip_past_the_maximum() {
        let clip = synthetic_clip(1_500 * 48);
        let mut asm = ClipAssembler::new(&header(clip.params.pre_skip), 1_000);
        let err = clip
            .packets
            .iter()
            .try_for_each(|p| asm.push(p))
            .expect_err("too long");
        assert_eq!(err.code, ErrorCode::TooLong);
    }

    #[test]
    fn refuses_garbage_and_lying_end_markers() {
        let mut asm = ClipAssembler::new(&header(312), 60_000);
        assert_eq!(
            asm.push(&[]).expect_err("empty").code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            asm.push(&vec![0; MAX_PACKET_BYTES + 1])
                .expect_err("huge")
                .code,
            ErrorCode::TooLarge
        );
        let clip = synthetic_clip(100 * 48);
        let mut asm = ClipAssembler::new(&header(clip.params.pre_skip), 60_000);
        for p in &clip.packets {
            asm.push(p).expect("valid");
        }
        assert_eq!(
            asm.finish(99, clip.samples).expect_err("count").code,
            ErrorCode::BadRequest
        );
        let mut asm = ClipAssembler::new(&header(clip.params.pre_skip), 60_000);
        for p in &clip.packets {
            asm.push(p).expect("valid");
        }
        let n = clip.packets.len() as u32;
        let mut short = ClipAssembler::new(&header(clip.params.pre_skip), 60_000);
        for p in &clip.packets {
            short.push(p).expect("valid");
        }
        assert_eq!(
            asm.finish(n, 48_000 * 10).expect_err("samples").code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            short.finish(n, 960).expect_err("claims too little").code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn header_checks() {
        let mut h = header(312);
        assert!(check_header(&h).is_ok());
        h.codec.frame_samples = 1000;
        assert!(check_header(&h).is_err());
        let mut h = header(60_000);
        assert!(check_header(&h).is_err());
        h = header(312);
        h.to = Target::Channel("../etc".into());
        assert!(check_header(&h).is_err());
    }
}
