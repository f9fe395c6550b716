//! Where 48 kHz mono audio goes: the [`AudioSink`] trait every output backend implements (a
//! speaker, a buffer, nowhere), and how far playback has got.

use std::time::{Duration, Instant};

use super::AudioError;

/// Where a sink's audio has got to: for marking clips played and measuring latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayedUpTo {
    /// 48 kHz samples handed to the device so far, counted in what was passed to `play`.
    pub samples: u64,
    /// When the last of them was handed to the output callback.
    pub handed_at: Instant,
    /// When the device expects the last of them to be audible (handed_at plus its buffer delay).
    pub audible_at: Instant,
}

/// Where 48 kHz mono audio goes: a speaker, a buffer, nowhere.
pub trait AudioSink: Send {
    /// Queues audio, blocking the calling thread (never the audio callback) while the sink's
    /// bounded buffer is full.
    fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError>;
    /// Declares the end of the current stretch of audio: pushes out anything held back for
    /// resampling, so that a gap after it is not counted as an underrun.
    fn flush(&mut self) -> Result<(), AudioError>;
    /// Queued audio not yet handed to the device, in milliseconds.
    fn queued_ms(&self) -> u32;
    /// Total 48 kHz samples accepted by [`AudioSink::play`].
    fn written(&self) -> u64;
    /// Where playback has got to, once anything has been played.
    fn played_up_to(&self) -> Option<PlayedUpTo>;
    /// Flushes, then waits until everything queued has been handed to the device or `timeout`
    /// passes; true if it drained.
    fn wait_drained(&mut self, timeout: Duration) -> Result<bool, AudioError> {
        self.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            // A resampling sink converts positions back to 48 kHz with rounding: allow 1 ms.
            let written = self.written();
            if self.queued_ms() == 0
                && self
                    .played_up_to()
                    .map_or(written == 0, |p| p.samples + 48 >= written)
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl<S: AudioSink + ?Sized> AudioSink for Box<S> {
    fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError> {
        (**self).play(pcm48)
    }
    fn flush(&mut self) -> Result<(), AudioError> {
        (**self).flush()
    }
    fn queued_ms(&self) -> u32 {
        (**self).queued_ms()
    }
    fn written(&self) -> u64 {
        (**self).written()
    }
    fn played_up_to(&self) -> Option<PlayedUpTo> {
        (**self).played_up_to()
    }
    fn wait_drained(&mut self, timeout: Duration) -> Result<bool, AudioError> {
        (**self).wait_drained(timeout)
    }
}
