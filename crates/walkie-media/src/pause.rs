//! Tells quiet frames from speech in a clip's decoded audio, so that the jitter buffer
//! changes a live clip's timing only in its pauses.

use crate::audio::source::rms;

/// Below this RMS (about -54 dBFS) a frame is quiet whatever the clip's level.
const SILENT_RMS: f32 = 0.002;
/// A frame this many times weaker than the clip's loudest (about -30 dB) is quiet.
const BELOW_PEAK: f32 = 30.0;
/// The loudest level seen decays by this factor every frame (about 9 dB in 20 s of 20 ms
/// frames), so that one shout does not turn the rest of a long clip quiet.
const PEAK_DECAY: f32 = 0.999;

/// Follows the level of one clip's decoded frames.
#[derive(Clone, Debug, Default)]
pub struct QuietFrames {
    peak: f32,
}

impl QuietFrames {
    /// A follower for a new clip.
    pub fn new() -> QuietFrames {
        QuietFrames::default()
    }

    /// Takes the next decoded frame; true when it is quiet: near silence, or about 30 dB
    /// under the clip's loudest frame so far.
    pub fn is_quiet(&mut self, pcm: &[f32]) -> bool {
        if pcm.is_empty() {
            return true;
        }
        let rms = rms(pcm);
        // A NaN from a broken decoder counts as loud: no timing is changed on its account.
        let rms = if rms.is_finite() { rms } else { 1.0 };
        self.peak = (self.peak * PEAK_DECAY).max(rms);
        rms < SILENT_RMS || rms * BELOW_PEAK < self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amp: f32) -> Vec<f32> {
        (0..960).map(|i| amp * (i as f32 * 0.05).sin()).collect()
    }

    #[test]
    fn quiet_is_near_silence_or_far_under_the_clip_peak() {
        let mut q = QuietFrames::new();
        assert!(q.is_quiet(&[0.0; 960]), "digital silence");
        assert!(
            !q.is_quiet(&tone(0.01)),
            "soft speech in a quiet clip so far"
        );
        assert!(!q.is_quiet(&tone(0.3)), "speech");
        assert!(q.is_quiet(&tone(0.005)), "30 dB under the peak");
        assert!(!q.is_quiet(&tone(0.05)), "a softer word is still speech");
        assert!(
            !q.is_quiet(&[f32::NAN; 960]),
            "broken audio is not taken for a pause"
        );
        assert!(q.is_quiet(&[]));
    }

    #[test]
    fn the_peak_fades_so_a_shout_does_not_silence_the_rest() {
        let mut q = QuietFrames::new();
        assert!(!q.is_quiet(&tone(0.9)));
        assert!(q.is_quiet(&tone(0.02)), "right after the shout");
        for _ in 0..3_000 {
            q.is_quiet(&tone(0.02));
        }
        assert!(
            !q.is_quiet(&tone(0.02)),
            "a minute later it is speech again"
        );
    }
}
