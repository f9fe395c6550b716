//! A clip's audio as the app keeps it: the Opus packets (to play or replay) and a small
//! waveform of peaks computed from the decoded audio (to draw).

use walkie_media::codec::{self, CodecError};
use walkie_proto::clip::{ClipId, CodecParams, Target};
use walkie_proto::received::ReceivedClip;
use walkie_proto::wire::DeliverHeader;

/// Bars in a clip's waveform.
pub const PEAKS: usize = 48;

/// The packets of a stored or received clip.
#[derive(Clone, Debug)]
pub struct ClipAudio {
    /// How the packets are encoded.
    pub codec: CodecParams,
    /// The Opus packets.
    pub packets: Vec<Vec<u8>>,
    /// Decoded length in 48 kHz samples.
    pub samples: u64,
}

impl ClipAudio {
    /// The audio of a clip pushed by the relay.
    pub fn of_received(clip: &ReceivedClip) -> ClipAudio {
        ClipAudio {
            codec: clip.header.codec,
            packets: clip.packets.clone(),
            samples: clip.samples,
        }
    }

    /// The audio of a fetched Ogg Opus file.
    pub fn from_ogg(bytes: &[u8]) -> Result<ClipAudio, CodecError> {
        let ogg = walkie_proto::ogg::read_ogg(bytes)?;
        Ok(ClipAudio {
            codec: ogg.params,
            packets: ogg.packets,
            samples: ogg.samples,
        })
    }

    /// The waveform: [`PEAKS`] values in 0..1.
    pub fn peaks(&self) -> Result<Vec<f32>, CodecError> {
        Ok(peaks(
            &codec::decode_packets(&self.codec, &self.packets, self.samples)?,
            PEAKS,
        ))
    }

    /// The clip as the player takes it, under `id` and `from` (a replay uses a fresh id, and
    /// a name other than yours so your own clips play too).
    pub fn to_received(
        &self,
        id: ClipId,
        from: &str,
        to: Target,
        started_at_ms: i64,
    ) -> ReceivedClip {
        let header = DeliverHeader {
            id,
            from: from.to_string(),
            to,
            started_at_ms,
            codec: self.codec,
            live: false,
            seq: 0,
            content: Default::default(),
        };
        ReceivedClip {
            header,
            packets: self.packets.clone(),
            samples: self.samples,
        }
    }

    /// Bytes held, for bounding the cache.
    pub fn bytes(&self) -> usize {
        self.packets.iter().map(Vec::len).sum()
    }
}

/// The loudest absolute sample of each of `bars` equal slices of `pcm`, scaled so that the
/// loudest bar of a quiet clip still shows (at most 4x gain), each in 0..1.
pub fn peaks(pcm: &[f32], bars: usize) -> Vec<f32> {
    if bars == 0 {
        return Vec::new();
    }
    if pcm.is_empty() {
        return vec![0.0; bars];
    }
    let raw: Vec<f32> = (0..bars)
        .map(|b| {
            let start = b * pcm.len() / bars;
            let end = ((b + 1) * pcm.len() / bars).max(start + 1).min(pcm.len());
            pcm[start..end].iter().fold(0.0f32, |m, s| m.max(s.abs()))
        })
        .collect();
    let top = raw.iter().copied().fold(0.0f32, f32::max);
    let gain = if top > 0.0 { (1.0 / top).min(4.0) } else { 1.0 };
    raw.iter().map(|p| (p * gain).clamp(0.0, 1.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_media::codec::{EncoderConfig, encode_pcm};
    use walkie_proto::ogg::write_ogg;

    #[test]
    fn peaks_follow_the_loudness_and_are_normalised() {
        let mut pcm = vec![0.0f32; 4_800];
        for s in &mut pcm[2_400..3_600] {
            *s = -0.2;
        }
        let p = peaks(&pcm, 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], 0.0);
        assert!((p[2] - 0.8).abs() < 1e-6, "quiet clips get up to 4x: {p:?}");
        assert_eq!(peaks(&[], 3), vec![0.0; 3]);
        assert_eq!(
            peaks(&[0.5, 1.0], 4).len(),
            4,
            "more bars than samples still works"
        );
    }

    #[test]
    fn a_fetched_file_decodes_to_a_waveform_and_replays_under_another_id() {
        let pcm: Vec<f32> = (0..9_600)
            .map(|i| {
                if i < 4_800 {
                    0.0
                } else {
                    0.5 * ((i as f32) * 0.05).sin()
                }
            })
            .collect();
        let enc = encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
        let ogg = write_ogg(&enc.params, &enc.packets, enc.samples, 7).expect("ogg");
        let audio = ClipAudio::from_ogg(&ogg).expect("reads");
        assert_eq!(audio.samples, 9_600);
        let p = audio.peaks().expect("decodes");
        assert_eq!(p.len(), PEAKS);
        assert!(p[..PEAKS / 2 - 2].iter().all(|&x| x < 0.2), "{p:?}");
        assert!(p[PEAKS / 2 + 2..].iter().all(|&x| x > 0.5), "{p:?}");
        let r = audio.to_received(ClipId([9; 16]), "replay", Target::Channel("crew".into()), 5);
        assert_eq!(
            (r.header.id, r.samples, r.packets.len()),
            (ClipId([9; 16]), 9_600, enc.packets.len())
        );
    }
}
