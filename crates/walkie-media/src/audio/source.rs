//! Where 20 ms frames of 48 kHz mono audio come from: the [`AudioSource`] trait every input
//! backend implements (a microphone, a WAV file, silence), and the frame it hands out.

use std::time::{Duration, Instant};

use super::AudioError;

/// Capture settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Remove background noise with RNNoise (on by default).
    pub noise_suppression: bool,
    /// How much recent audio is held for a reader that is not taking frames, in ms; older
    /// frames are dropped (and counted). Also the longest pre-roll available.
    pub hold_ms: u32,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            noise_suppression: true,
            hold_ms: 1_000,
        }
    }
}

/// Samples in one 20 ms frame at 48 kHz: what sources hand out.
pub const FRAME_SAMPLES: usize = 960;
/// The rate of everything sources hand out and sinks take.
pub const RATE: u32 = 48_000;

/// One 20 ms frame of 48 kHz mono audio from a source.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Frame number since the source opened (0, 1, 2, …; gaps mean dropped frames).
    pub index: u64,
    /// [`FRAME_SAMPLES`] samples in -1..1.
    pub samples: Vec<f32>,
    /// When the frame's last sample was captured (for a device, from the callback's timestamp).
    pub captured_at: Instant,
}

impl Frame {
    /// Root-mean-square level of the frame, 0..1.
    pub fn rms(&self) -> f32 {
        rms(&self.samples)
    }
}

/// Root-mean-square level of some samples (0 for none).
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// What [`AudioSource::next_frame`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Pull {
    /// The next frame.
    Frame(Frame),
    /// No frame arrived within the timeout; try again.
    Timeout,
    /// The source has no more audio (end of a file).
    Ended,
}

/// Where 20 ms frames of 48 kHz mono audio come from: a microphone, a file, silence.
///
/// A source keeps producing frames whether or not anyone takes them, holding the most recent
/// ones (about a second) so that a clip can start with a short pre-roll.
pub trait AudioSource: Send {
    /// The oldest frame not yet taken, waiting up to `timeout` for one.
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError>;
    /// Discards held frames older than `preroll` (counted back from the newest): call it when
    /// the talk key goes down, then take frames with [`AudioSource::next_frame`].
    fn start_clip(&mut self, preroll: Duration);
    /// RMS level (0..1) of the newest frame, for a level meter.
    fn level(&self) -> f32;
}

impl<S: AudioSource + ?Sized> AudioSource for Box<S> {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError> {
        (**self).next_frame(timeout)
    }
    fn start_clip(&mut self, preroll: Duration) {
        (**self).start_clip(preroll)
    }
    fn level(&self) -> f32 {
        (**self).level()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_of_nothing_and_of_a_square() {
        assert_eq!(rms(&[]), 0.0);
        assert!((rms(&[0.5, -0.5, 0.5, -0.5]) - 0.5).abs() < 1e-6);
    }
}
