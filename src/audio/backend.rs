//! Audio backends behind two traits, and a name table to pick one: a real device (cpal), a
//! WAV file, or nothing. Tests and headless runs use the WAV and null backends.
//!
//! | spec | source ([`open_source`]) | sink ([`open_sink`]) |
//! |---|---|---|
//! | none, `default` | the default input device | the default output device |
//! | `NAME` | the input device `NAME` (see `walkie devices`) | the output device `NAME` |
//! | `null` | endless silence, in real time | discards audio, in real time |
//! | `wav:PATH` | the file's audio, in real time, then the end | — |

use std::path::Path;
use std::time::{Duration, Instant};

use super::AudioError;
use super::capture::{Capture, CaptureConfig};
use super::null::{NullSink, NullSource};
use super::playback::Playback;
use super::wav_source::WavSource;

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
            if self.queued_ms() == 0 && self.played_up_to().map_or(written == 0, |p| p.samples + 48 >= written) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
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

/// Opens a source by spec (see the module table).
pub fn open_source(spec: Option<&str>, cfg: CaptureConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    match spec {
        Some("null") => Ok(Box::new(NullSource::new(true))),
        Some(s) if s.starts_with("wav:") => Ok(Box::new(WavSource::open(Path::new(&s[4..]), true)?)),
        Some("default") | None => Ok(Box::new(Capture::open(None, cfg)?)),
        Some(name) => Ok(Box::new(Capture::open(Some(name), cfg)?)),
    }
}

/// Opens a sink by spec (see the module table).
pub fn open_sink(spec: Option<&str>) -> Result<Box<dyn AudioSink>, AudioError> {
    match spec {
        Some("null") => Ok(Box::new(NullSink::realtime())),
        Some("default") | None => Ok(Box::new(Playback::open(None)?)),
        Some(name) => Ok(Box::new(Playback::open(Some(name))?)),
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

    #[test]
    fn the_name_table_opens_null_and_wav_backends() {
        let mut src = open_source(Some("null"), CaptureConfig::default()).unwrap();
        assert!(matches!(src.next_frame(Duration::from_secs(1)).unwrap(), Pull::Frame(f) if f.samples.len() == FRAME_SAMPLES));
        let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/hello-crew.wav");
        let mut src = open_source(Some(&format!("wav:{}", wav.display())), CaptureConfig::default()).unwrap();
        assert!(matches!(src.next_frame(Duration::from_secs(1)).unwrap(), Pull::Frame(_)));
        assert!(open_source(Some("wav:/no/such.wav"), CaptureConfig::default()).is_err());
        let mut sink = open_sink(Some("null")).unwrap();
        sink.play(&[0.0; 480]).unwrap();
        assert_eq!(sink.written(), 480);
    }
}
