//! Synthetic clips for tests of the protocol core and of everything built on it: packets with
//! valid Opus framing (so every check of [`crate::toc`] passes) laid out as an encoder would
//! (20 ms packets covering the audio plus a pre-skip), but no audio. The protocol never decodes
//! audio; tests that need real speech use the media crate's encoder.

use crate::clip::CodecParams;

/// A clip as an encoder would hand it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticClip {
    /// 20 ms frames, 24 kb/s, pre-skip 312 (what libopus reports).
    pub params: CodecParams,
    /// One packet per 20 ms, covering the samples and the pre-skip.
    pub packets: Vec<Vec<u8>>,
    /// The clip's length in 48 kHz samples.
    pub samples: u64,
}

/// A clip of `samples` 48 kHz samples: CELT fullband 20 ms packets (TOC 0xf8) whose bodies
/// differ from packet to packet (40 to 89 bytes), so that a packet out of place is noticed.
pub fn synthetic_clip(samples: u64) -> SyntheticClip {
    let params = CodecParams {
        frame_samples: 960,
        bitrate: 24_000,
        pre_skip: 312,
    };
    let n = (samples + u64::from(params.pre_skip)).div_ceil(960);
    let packets = (0..n)
        .map(|i| {
            let body = (0..40 + i % 50).map(|j| (i.wrapping_mul(7).wrapping_add(j)) as u8);
            std::iter::once(31u8 << 3).chain(body).collect()
        })
        .collect();
    SyntheticClip {
        params,
        packets,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_packets_pass_the_toc_checks_and_cover_the_clip() {
        let clip = synthetic_clip(48_000);
        assert_eq!(clip.packets.len(), 51);
        for p in &clip.packets {
            assert_eq!(crate::toc::packet_samples(p), Ok(960));
        }
        assert_ne!(clip.packets[0], clip.packets[1]);
    }
}
