//! How many 48 kHz samples an Opus packet decodes to, read from its TOC byte and frame count
//! alone (RFC 6716 §3.1), in pure Rust: the relay checks every packet it accepts without
//! linking libopus. Also the one packet-size cap every part of walkie uses.
//!
//! A packet starts with a TOC byte: `config` (5 bits: mode, bandwidth and frame duration),
//! `s` (stereo) and `c` (2 bits: one frame, two equal frames, two frames of different sizes,
//! or an arbitrary count given in the next byte). Code 3's count byte also says whether the
//! frames are VBR and whether padding follows; every length this parser reads is checked
//! against the bytes that are there, so a lying length is refused, never read past.

/// Longest Opus packet, in 48 kHz samples (120 ms, RFC 6716).
pub const MAX_PACKET_SAMPLES: u32 = 5_760;
/// Largest Opus packet walkie accepts anywhere (relay ingest, Ogg files, decoding), in bytes:
/// six 20 ms frames of the 1275-byte maximum (RFC 6716 §3.4, R2), so 120 ms of the highest
/// bitrate fits. libopus never writes more than 1275 bytes per frame.
pub const MAX_PACKET_BYTES: usize = 7_650;
/// The largest frame in a packet, in bytes (RFC 6716 §3.4, R2).
const MAX_FRAME_BYTES: usize = 1_275;

/// Why a packet is not valid Opus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TocError {
    /// No bytes at all.
    #[error("the packet is empty")]
    Empty,
    /// More than [`MAX_PACKET_BYTES`].
    #[error("{0} bytes is more than the {MAX_PACKET_BYTES}-byte limit")]
    TooLarge(usize),
    /// The framing does not fit the bytes (RFC 6716 §3.4).
    #[error("malformed packet ({0})")]
    Malformed(&'static str),
    /// The frames add up to nothing or to more than 120 ms.
    #[error("{0} samples is not 1 to {MAX_PACKET_SAMPLES}")]
    Duration(u32),
}

/// Samples per frame at 48 kHz for a TOC byte's configuration number (RFC 6716 Table 2).
fn frame_samples(toc: u8) -> u32 {
    let config = toc >> 3;
    match config {
        // SILK-only NB/MB/WB: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid SWB/FB: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only NB/WB/SWB/FB: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// Reads a frame length (RFC 6716 §3.2.1): one byte below 252, else two. Returns the length
/// and how many bytes it took.
fn frame_len(bytes: &[u8]) -> Result<(usize, usize), TocError> {
    match bytes {
        [] => Err(TocError::Malformed("a frame length is missing")),
        [b, ..] if *b < 252 => Ok((usize::from(*b), 1)),
        [b0, b1, ..] => Ok((usize::from(*b1) * 4 + usize::from(*b0), 2)),
        [_] => Err(TocError::Malformed("a two-byte frame length is cut short")),
    }
}

/// Counts the frames of a packet, checking that its framing fits its bytes (RFC 6716 §3.4).
fn frame_count(packet: &[u8]) -> Result<u32, TocError> {
    let body = &packet[1..];
    match packet[0] & 0x3 {
        // One frame: all the rest.
        0 => {
            if body.len() > MAX_FRAME_BYTES {
                return Err(TocError::Malformed("a frame is longer than 1275 bytes"));
            }
            Ok(1)
        }
        // Two frames of equal size: the rest must split evenly.
        1 => {
            if !body.len().is_multiple_of(2) || body.len() / 2 > MAX_FRAME_BYTES {
                return Err(TocError::Malformed(
                    "two equal frames do not fit the packet",
                ));
            }
            Ok(2)
        }
        // Two frames, the first's length given.
        2 => {
            let (first, used) = frame_len(body)?;
            let rest = body.len() - used;
            if first > rest || first > MAX_FRAME_BYTES || rest - first > MAX_FRAME_BYTES {
                return Err(TocError::Malformed(
                    "the first frame's length overruns the packet",
                ));
            }
            Ok(2)
        }
        // An arbitrary number of frames: count byte, optional padding, VBR lengths.
        _ => {
            let Some((&count_byte, mut rest)) = body.split_first() else {
                return Err(TocError::Malformed("the frame count is missing"));
            };
            let (vbr, padded, count) = (
                count_byte & 0x80 != 0,
                count_byte & 0x40 != 0,
                usize::from(count_byte & 0x3f),
            );
            if count == 0 {
                return Err(TocError::Malformed("a packet of zero frames"));
            }
            if padded {
                // Padding length: bytes of 255 add 254 each, the first other byte ends it.
                let mut pad = 0usize;
                loop {
                    let Some((&b, tail)) = rest.split_first() else {
                        return Err(TocError::Malformed("the padding length is cut short"));
                    };
                    rest = tail;
                    pad += if b == 255 { 254 } else { usize::from(b) };
                    if b != 255 {
                        break;
                    }
                }
                if pad > rest.len() {
                    return Err(TocError::Malformed("the padding is longer than the packet"));
                }
                rest = &rest[..rest.len() - pad];
            }
            if vbr {
                let mut total = 0usize;
                for _ in 0..count - 1 {
                    let (len, used) = frame_len(rest)?;
                    rest = &rest[used..];
                    if len > MAX_FRAME_BYTES {
                        return Err(TocError::Malformed("a frame is longer than 1275 bytes"));
                    }
                    total += len;
                }
                if total > rest.len() || rest.len() - total > MAX_FRAME_BYTES {
                    return Err(TocError::Malformed("the frame lengths overrun the packet"));
                }
            } else if !rest.len().is_multiple_of(count) || rest.len() / count > MAX_FRAME_BYTES {
                return Err(TocError::Malformed("equal frames do not fit the packet"));
            }
            Ok(count as u32)
        }
    }
}

/// Number of 48 kHz samples in an Opus packet, from its TOC byte and frame count. Refuses
/// empty packets, packets over [`MAX_PACKET_BYTES`], framing that does not fit the bytes, and
/// packets longer than 120 ms.
pub fn packet_samples(packet: &[u8]) -> Result<u32, TocError> {
    if packet.is_empty() {
        return Err(TocError::Empty);
    }
    if packet.len() > MAX_PACKET_BYTES {
        return Err(TocError::TooLarge(packet.len()));
    }
    let total = frame_count(packet)?.saturating_mul(frame_samples(packet[0]));
    if total == 0 || total > MAX_PACKET_SAMPLES {
        return Err(TocError::Duration(total));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_each_framing_code() {
        assert_eq!(packet_samples(&[]), Err(TocError::Empty));
        // Config 1 (SILK NB 20 ms), code 0: one frame of 960 samples.
        assert_eq!(packet_samples(&[1 << 3, 0xaa]), Ok(960));
        // Config 3 (SILK NB 60 ms), code 1: two frames = 120 ms.
        assert_eq!(packet_samples(&[(3 << 3) | 1, 0xaa, 0xbb]), Ok(5_760));
        // Code 1 with an odd body cannot split into two equal frames.
        assert!(packet_samples(&[(1 << 3) | 1, 0xaa]).is_err());
        // Code 2: first frame 1 byte, second the rest.
        assert_eq!(packet_samples(&[(1 << 3) | 2, 1, 0xaa, 0xbb]), Ok(1_920));
        // Code 2 whose first length overruns the packet.
        assert!(packet_samples(&[0x02, 0xfb, 0x01]).is_err());
        // Config 16 (CELT NB 2.5 ms), code 3 with 48 frames = 120 ms; 49 frames is too long.
        assert_eq!(packet_samples(&[16 << 3 | 3, 48]), Ok(5_760));
        assert!(packet_samples(&[16 << 3 | 3, 49]).is_err());
        // Code 3 with 3 frames of 60 ms: 180 ms.
        assert!(packet_samples(&[3 << 3 | 3, 3]).is_err());
        // Code 3 with zero frames.
        assert!(packet_samples(&[0x03, 0x00]).is_err());
        // Code 3 claiming 63 frames of 20 ms: far over 120 ms.
        assert!(packet_samples(&[0x1b, 0x3f, 1, 2, 3]).is_err());
        // Code 3, VBR, two frames: lengths 2 then the rest.
        assert_eq!(packet_samples(&[(1 << 3) | 3, 0x82, 2, 9, 9, 9]), Ok(1_920));
        // ... whose first length overruns.
        assert!(packet_samples(&[(1 << 3) | 3, 0x82, 9, 9]).is_err());
        // Code 3, padded by 2 bytes, CBR 2 frames of 1 byte.
        assert_eq!(
            packet_samples(&[(1 << 3) | 3, 0x42, 2, 7, 7, 0, 0]),
            Ok(1_920)
        );
        // Padding longer than the packet.
        assert!(packet_samples(&[(1 << 3) | 3, 0x42, 200, 7, 7]).is_err());
        assert_eq!(
            packet_samples(&vec![0u8; MAX_PACKET_BYTES + 1]),
            Err(TocError::TooLarge(MAX_PACKET_BYTES + 1))
        );
    }

    #[test]
    fn every_configuration_has_its_frame_duration() {
        let ms = |config: u8| f64::from(packet_samples(&[config << 3, 0]).expect("valid")) / 48.0;
        assert_eq!(
            (0..12).map(ms).collect::<Vec<_>>(),
            [10.0, 20.0, 40.0, 60.0].repeat(3)
        );
        assert_eq!((12..16).map(ms).collect::<Vec<_>>(), [10.0, 20.0].repeat(2));
        assert_eq!(
            (16..32).map(ms).collect::<Vec<_>>(),
            [2.5, 5.0, 10.0, 20.0].repeat(4)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_within_120_ms(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(n) = packet_samples(&bytes) {
                prop_assert!((120..=MAX_PACKET_SAMPLES).contains(&n));
            }
        }
    }
}
