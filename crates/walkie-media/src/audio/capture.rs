//! Microphone capture: a cpal input stream kept open for the life of [`Capture`], a worker
//! thread turning its samples into 20 ms frames of 48 kHz mono, and a short backlog of
//! recent frames so a clip can start with a pre-roll (no lost first syllable).
//!
//! ```text
//! device callback --(lock-free ring)--> worker: CapturePipeline --(held frames)--> next_frame()
//! ```
//! The callback only writes into the ring (see [`super::cpal`]); everything that allocates
//! or locks happens on the worker or the caller's thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::cpal::Stream;
use ::cpal::traits::StreamTrait;

use super::AudioError;
use super::cpal::{
    CallbackState, Direction, StreamInfo, build_input, choose_config, find_device, stream_info,
};
use super::pipeline::CapturePipeline;
use super::ring::{RingReader, sample_ring};
use super::source::{AudioSource, CaptureConfig, Frame, Pull};

/// How often the worker looks for new samples.
const POLL: Duration = Duration::from_millis(2);
/// Device audio the ring holds before the callback has to drop samples.
const RING_MS: u32 = 500;

/// Frames handed from the worker to the reader.
#[derive(Default)]
struct Held {
    frames: Mutex<VecDeque<Frame>>,
    ready: Condvar,
    /// RMS level of the newest frame, as `f32` bits.
    level: AtomicU32,
    /// Frames dropped because nobody took them within the hold time.
    dropped: AtomicU64,
    /// Set by the worker when it stops on an error.
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open microphone producing 20 ms frames of 48 kHz mono audio.
pub struct Capture {
    stream: Option<Stream>,
    state: Arc<CallbackState>,
    held: Arc<Held>,
    worker: Option<JoinHandle<()>>,
    info: StreamInfo,
}

impl Capture {
    /// Opens an input device (the default one for `None`, else by name; see `walkie devices`)
    /// at whatever rate, channel count and sample format it offers, and starts capturing.
    pub fn open(device: Option<&str>, cfg: CaptureConfig) -> Result<Capture, AudioError> {
        let (dev, name, host) = find_device(Direction::Input, device)?;
        let (config, format) = choose_config(&dev, &name, Direction::Input)?;
        let info = stream_info(host, &name, &config, format);
        let capacity = (info.rate as usize * usize::from(info.channels))
            .saturating_mul(RING_MS as usize)
            / 1000;
        let (writer, reader) = sample_ring(capacity);
        let state = Arc::new(CallbackState::default());
        let stream = build_input(&dev, &name, config, format, writer, state.clone())?;
        let pipeline = CapturePipeline::new(info.rate, info.channels, cfg.noise_suppression)?;
        let held = Arc::new(Held::default());
        let hold = (cfg.hold_ms / 20).max(1) as usize;
        let worker = {
            let (held, state) = (held.clone(), state.clone());
            std::thread::Builder::new()
                .name("walkie-capture".into())
                .spawn(move || run_worker(reader, pipeline, state, held, hold))
                .map_err(|e| AudioError::Worker(format!("cannot start the capture thread: {e}")))?
        };
        let capture = Capture {
            stream: Some(stream),
            state,
            held,
            worker: Some(worker),
            info,
        };
        if let Some(stream) = &capture.stream {
            stream.play().map_err(|source| AudioError::Device {
                context: format!("cannot start input device {name:?}"),
                source,
            })?;
        }
        Ok(capture)
    }

    /// The device and configuration in use.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The oldest frame not yet taken, waiting up to `timeout`; `None` on timeout. Fails
    /// once the device is lost or the worker has stopped.
    pub fn next_frame(&self, timeout: Duration) -> Result<Option<Frame>, AudioError> {
        let deadline = Instant::now() + timeout;
        let mut frames = lock(&self.held.frames);
        loop {
            if let Some(f) = frames.pop_front() {
                return Ok(Some(f));
            }
            self.check()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            frames = self
                .held
                .ready
                .wait_timeout(frames, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Drops held frames older than `preroll` (counted back from the newest): call when the
    /// talk key goes down, then take frames.
    pub fn start_clip(&self, preroll: Duration) {
        let keep = usize::try_from(preroll.as_millis().div_ceil(20)).unwrap_or(usize::MAX);
        let mut frames = lock(&self.held.frames);
        let excess = frames.len().saturating_sub(keep);
        frames.drain(..excess);
    }

    /// RMS level (0..1) of the newest frame.
    pub fn level(&self) -> f32 {
        f32::from_bits(self.held.level.load(Ordering::Relaxed))
    }

    /// Device frames the callback dropped because the worker fell behind (ring full).
    pub fn overruns(&self) -> u64 {
        self.state.xruns.load(Ordering::Relaxed)
    }

    /// 20 ms frames dropped because nobody took them within the hold time.
    pub fn dropped_frames(&self) -> u64 {
        self.held.dropped.load(Ordering::Relaxed)
    }

    /// Errors the backend reported (its own overruns included).
    pub fn errors(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    /// Device frames delivered so far and when the newest of them was captured.
    pub fn captured_up_to(&self) -> Option<(u64, Instant)> {
        self.state.stamp.load()
    }

    fn check(&self) -> Result<(), AudioError> {
        if self.state.lost.load(Ordering::Acquire) {
            return Err(AudioError::DeviceLost {
                name: self.info.device.clone(),
                reason: "the backend reported the device gone".into(),
            });
        }
        if let Some(reason) = lock(&self.held.failure).clone() {
            return Err(AudioError::Worker(reason));
        }
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Stop the callbacks first, then the worker.
        drop(self.stream.take());
        self.held.stop.store(true, Ordering::Release);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl AudioSource for Capture {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError> {
        Ok(Capture::next_frame(self, timeout)?.map_or(Pull::Timeout, Pull::Frame))
    }

    fn start_clip(&mut self, preroll: Duration) {
        Capture::start_clip(self, preroll);
    }

    fn level(&self) -> f32 {
        Capture::level(self)
    }
}

/// The worker: drains the ring, runs the pipeline, hands frames over.
fn run_worker(
    mut reader: RingReader,
    mut pipeline: CapturePipeline,
    state: Arc<CallbackState>,
    held: Arc<Held>,
    hold: usize,
) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while !held.stop.load(Ordering::Acquire) {
        buf.clear();
        if reader.pop_into_vec(&mut buf, usize::MAX) == 0 {
            std::thread::sleep(POLL);
            continue;
        }
        let clock = state.stamp.load();
        if let Err(e) = pipeline.push(&buf, clock, |f| out.push(f)) {
            *lock(&held.failure) = Some(e.to_string());
            held.ready.notify_all();
            return;
        }
        if let Some(last) = out.last() {
            held.level.store(last.rms().to_bits(), Ordering::Relaxed);
        }
        if !out.is_empty() {
            let mut frames = lock(&held.frames);
            frames.extend(out.drain(..));
            let excess = frames.len().saturating_sub(hold);
            if excess > 0 {
                frames.drain(..excess);
                held.dropped.fetch_add(excess as u64, Ordering::Relaxed);
            }
            held.ready.notify_all();
        }
    }
}
