//! The speaker (an output device): a cpal output stream at the device's native rate, fed 48 kHz mono audio.
//!
//! ```text
//! play(pcm48) --resample on the caller's thread--> lock-free ring --> device callback
//! ```
//! Resampling happens in [`Speaker::play`] on the pushing thread, which blocks while the
//! bounded ring is full; the callback only copies from the ring to every channel and plays
//! silence (counted as an underrun unless the stream was flushed) when it runs dry. At 48 kHz
//! devices (PulseAudio, most hardware) the resampler is a pass-through.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ::cpal::Stream;
use ::cpal::traits::StreamTrait;

use super::AudioError;
use super::cpal::{
    CallbackState, Direction, StreamInfo, build_output, choose_config, find_device, output_delay,
    stream_info,
};
use super::ring::{RingWriter, sample_ring};
use super::sink::{AudioSink, PlayedUpTo};
use super::source::RATE;
use super::stream_resample::StreamResampler;

/// Audio the ring holds before `play` blocks.
const RING_MS: u32 = 1_000;
/// How often a blocked `play` looks for room.
const POLL: Duration = Duration::from_millis(2);
/// A device that takes nothing for this long while audio waits is considered stopped.
const STALL: Duration = Duration::from_secs(3);
/// Callbacks [`Speaker::open`] waits for: past the start-up buffer, into the steady cadence.
const STARTUP_CALLBACKS: u64 = 4;
/// Longest wait in [`Speaker::open`] for the output stream's first callbacks.
const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// Where an output stream has got to; cheap to clone and read from any thread.
#[derive(Clone, Debug)]
pub struct SpeakerClock {
    state: Arc<CallbackState>,
    rate: u32,
}

impl SpeakerClock {
    /// 48 kHz samples handed to the device so far, when, and when they will be audible.
    pub fn played_up_to(&self) -> Option<PlayedUpTo> {
        let (frames, handed_at) = self.state.stamp.load()?;
        let samples =
            u64::try_from(u128::from(frames) * u128::from(RATE) / u128::from(self.rate.max(1)))
                .unwrap_or(u64::MAX);
        Some(PlayedUpTo {
            samples,
            handed_at,
            audible_at: handed_at + output_delay(&self.state),
        })
    }
}

/// An open speaker taking 48 kHz mono audio.
pub struct Speaker {
    stream: Option<Stream>,
    state: Arc<CallbackState>,
    writer: RingWriter,
    capacity: usize,
    resampler: StreamResampler,
    scratch: Vec<f32>,
    written: u64,
    info: StreamInfo,
}

impl Speaker {
    /// Opens an output device (the default one for `None`, else by name) at its native rate,
    /// channel count and sample format, and starts it (playing silence until audio comes).
    pub fn open(device: Option<&str>) -> Result<Speaker, AudioError> {
        let (dev, name, host) = find_device(Direction::Output, device)?;
        let (config, format) = choose_config(&dev, &name, Direction::Output)?;
        let info = stream_info(host, &name, &config, format);
        let capacity = (info.rate as usize).saturating_mul(RING_MS as usize) / 1000;
        let (writer, reader) = sample_ring(capacity);
        let state = Arc::new(CallbackState::default());
        state.idle.store(true, Ordering::Release);
        let stream = build_output(&dev, &name, config, format, reader, state.clone())?;
        let resampler = StreamResampler::new(RATE, info.rate)?;
        stream.play().map_err(|source| AudioError::Device {
            context: format!("cannot start output device {name:?}"),
            source,
        })?;
        // A new PulseAudio stream (seen on null sinks) takes a first callback at once, then
        // none for about 2 s while the server plays out its start-up buffer; audio handed over
        // meanwhile would start that late (and a live clip's jitter buffer would drop most of
        // it to catch up). Wait until callbacks come regularly, within reason.
        let started = Instant::now();
        while state.callbacks.load(Ordering::Acquire) < STARTUP_CALLBACKS
            && started.elapsed() < STARTUP_WAIT
        {
            std::thread::sleep(POLL);
        }
        if state.callbacks.load(Ordering::Acquire) < STARTUP_CALLBACKS {
            tracing::warn!(device = %name, "the output stream has not started after {STARTUP_WAIT:?}; playing anyway");
        }
        Ok(Speaker {
            stream: Some(stream),
            state,
            writer,
            capacity,
            resampler,
            scratch: Vec::new(),
            written: 0,
            info,
        })
    }

    /// The device and configuration in use.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// A handle for reading the play position from another thread.
    pub fn clock(&self) -> SpeakerClock {
        SpeakerClock {
            state: self.state.clone(),
            rate: self.info.rate,
        }
    }

    /// Queues 48 kHz mono audio, blocking this thread while the ring is full. Fails if the
    /// device is lost or stops taking audio.
    pub fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError> {
        self.state.idle.store(false, Ordering::Release);
        self.written += pcm48.len() as u64;
        self.scratch.clear();
        self.resampler.process(pcm48, &mut self.scratch)?;
        self.push_scratch()
    }

    /// Ends the current stretch of audio: pushes out what the resampler holds back and stops
    /// counting the silence that follows as underruns.
    pub fn flush(&mut self) -> Result<(), AudioError> {
        self.scratch.clear();
        self.resampler.flush(&mut self.scratch)?;
        self.push_scratch()?;
        self.state.idle.store(true, Ordering::Release);
        Ok(())
    }

    /// Audio queued but not yet handed to the device, in milliseconds.
    pub fn queued_ms(&self) -> u32 {
        let in_ring = self.capacity.saturating_sub(self.writer.free()) as u64;
        let ms = in_ring * 1000 / u64::from(self.info.rate.max(1))
            + self.resampler.pending() as u64 * 1000 / u64::from(RATE);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    /// Flushes, then waits until everything queued has been handed to the device or
    /// `timeout` passes; true if it drained.
    pub fn wait_drained(&mut self, timeout: Duration) -> Result<bool, AudioError> {
        AudioSink::wait_drained(self, timeout)
    }

    /// Total 48 kHz samples accepted by [`Speaker::play`].
    pub fn written(&self) -> u64 {
        self.written
    }

    /// 48 kHz samples handed to the device so far, when, and when they will be audible.
    pub fn played_up_to(&self) -> Option<PlayedUpTo> {
        self.clock().played_up_to()
    }

    /// Device frames of silence played because audio ran out mid-stream.
    pub fn underruns(&self) -> u64 {
        self.state.xruns.load(Ordering::Relaxed)
    }

    /// Errors the backend reported (its own underruns included).
    pub fn errors(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    fn push_scratch(&mut self) -> Result<(), AudioError> {
        let mut rest = &self.scratch[..];
        let mut progress = Instant::now();
        while !rest.is_empty() {
            let n = self.writer.push(rest);
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            if self.state.lost.load(Ordering::Acquire) {
                return Err(AudioError::DeviceLost {
                    name: self.info.device.clone(),
                    reason: "the backend reported the device gone".into(),
                });
            }
            if n > 0 {
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                return Err(AudioError::DeviceLost {
                    name: self.info.device.clone(),
                    reason: format!("it took no audio for {STALL:?}"),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        drop(self.stream.take());
    }
}

impl AudioSink for Speaker {
    fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError> {
        Speaker::play(self, pcm48)
    }

    fn flush(&mut self) -> Result<(), AudioError> {
        Speaker::flush(self)
    }

    fn queued_ms(&self) -> u32 {
        Speaker::queued_ms(self)
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn played_up_to(&self) -> Option<PlayedUpTo> {
        Speaker::played_up_to(self)
    }
}
