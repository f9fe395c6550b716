//! The null backends: a source of silence and a sink that discards (or records) audio, each
//! either paced like a real device or as fast as the caller goes. Also the frame pacer the
//! file source shares.

use std::time::{Duration, Instant};

use super::AudioError;
use super::backend::{AudioSink, AudioSource, FRAME_SAMPLES, Frame, PlayedUpTo, Pull, RATE};

/// One frame's duration.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames a paced source holds for a late reader before dropping the oldest (1 s).
pub const HOLD_FRAMES: u64 = 50;
/// Audio a paced sink buffers before `play` blocks.
const SINK_BUFFER: Duration = Duration::from_secs(1);

/// Hands out frame numbers on a real-time timeline (frame `k` is ready 20 ms × (k + 1) after
/// the start) or at once, holding at most [`HOLD_FRAMES`] for a reader that falls behind.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    realtime: bool,
    next: u64,
}

impl Pacer {
    /// A pacer starting now.
    pub fn new(realtime: bool) -> Pacer {
        Pacer { start: Instant::now(), realtime, next: 0 }
    }

    /// Frames ready by `now` (unbounded when not real time).
    fn ready(&self, now: Instant) -> u64 {
        if !self.realtime {
            return u64::MAX;
        }
        let elapsed = now.saturating_duration_since(self.start).as_micros();
        u64::try_from(elapsed / FRAME.as_micros()).unwrap_or(u64::MAX)
    }

    /// The next frame number, waiting up to `timeout` for it; `None` on timeout.
    pub fn wait_next(&mut self, timeout: Duration) -> Option<u64> {
        let now = Instant::now();
        if !self.realtime {
            self.next += 1;
            return Some(self.next - 1);
        }
        let ready = self.ready(now);
        if ready > self.next {
            self.next = self.next.max(ready.saturating_sub(HOLD_FRAMES));
            self.next += 1;
            return Some(self.next - 1);
        }
        let due = self.captured_at(self.next);
        if due.saturating_duration_since(now) > timeout {
            std::thread::sleep(timeout);
            return None;
        }
        std::thread::sleep(due.saturating_duration_since(now));
        self.next += 1;
        Some(self.next - 1)
    }

    /// Skips frames older than `preroll` before the newest ready one.
    pub fn start_clip(&mut self, preroll: Duration) {
        let keep = preroll.as_micros().div_ceil(FRAME.as_micros());
        let ready = self.ready(Instant::now());
        if ready != u64::MAX {
            self.next = self.next.max(ready.saturating_sub(u64::try_from(keep).unwrap_or(u64::MAX)));
        }
    }

    /// When frame `index` is (or was) complete on the timeline; now when not real time.
    pub fn captured_at(&self, index: u64) -> Instant {
        if !self.realtime {
            return Instant::now();
        }
        let frames = u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX);
        self.start + FRAME * frames
    }
}

/// Endless silence, one frame every 20 ms (or at once).
#[derive(Clone, Debug)]
pub struct NullSource {
    pacer: Pacer,
}

impl NullSource {
    /// A silent source, paced like a microphone when `realtime`.
    pub fn new(realtime: bool) -> NullSource {
        NullSource { pacer: Pacer::new(realtime) }
    }
}

impl AudioSource for NullSource {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError> {
        Ok(match self.pacer.wait_next(timeout) {
            Some(index) => Pull::Frame(Frame { index, samples: vec![0.0; FRAME_SAMPLES], captured_at: self.pacer.captured_at(index) }),
            None => Pull::Timeout,
        })
    }

    fn start_clip(&mut self, preroll: Duration) {
        self.pacer.start_clip(preroll);
    }

    fn level(&self) -> f32 {
        0.0
    }
}

/// A sink that plays nothing: in real time (audio drains at 48 kHz, `play` blocks past a
/// second of backlog) or instantly; optionally keeping everything it was given.
#[derive(Clone, Debug)]
pub struct NullSink {
    realtime: bool,
    busy_until: Option<Instant>,
    written: u64,
    recording: Option<Vec<f32>>,
}

/// Duration of `n` samples at 48 kHz.
fn samples_duration(n: u64) -> Duration {
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / u64::from(RATE))
}

impl NullSink {
    /// A sink paced like a speaker.
    pub fn realtime() -> NullSink {
        NullSink { realtime: true, busy_until: None, written: 0, recording: None }
    }

    /// A sink that takes everything at once.
    pub fn instant() -> NullSink {
        NullSink { realtime: false, busy_until: None, written: 0, recording: None }
    }

    /// Keeps a copy of everything played, for [`NullSink::recorded`].
    pub fn recording(mut self) -> NullSink {
        self.recording = Some(Vec::new());
        self
    }

    /// Everything played so far (empty unless made with [`NullSink::recording`]).
    pub fn recorded(&self) -> &[f32] {
        self.recording.as_deref().unwrap_or(&[])
    }

    fn queued(&self, now: Instant) -> Duration {
        self.busy_until.map_or(Duration::ZERO, |b| b.saturating_duration_since(now))
    }
}

impl AudioSink for NullSink {
    fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError> {
        if let Some(rec) = &mut self.recording {
            rec.extend_from_slice(pcm48);
        }
        self.written += pcm48.len() as u64;
        if self.realtime {
            let now = Instant::now();
            let excess = self.queued(now).saturating_sub(SINK_BUFFER);
            if !excess.is_zero() {
                std::thread::sleep(excess);
            }
            let from = self.busy_until.map_or(now, |b| b.max(now));
            self.busy_until = Some(from + samples_duration(pcm48.len() as u64));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AudioError> {
        Ok(())
    }

    fn queued_ms(&self) -> u32 {
        u32::try_from(self.queued(Instant::now()).as_millis()).unwrap_or(u32::MAX)
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn played_up_to(&self) -> Option<PlayedUpTo> {
        if self.written == 0 {
            return None;
        }
        let now = Instant::now();
        let queued = self.queued(now).as_nanos() * u128::from(RATE) / 1_000_000_000;
        let samples = self.written.saturating_sub(u64::try_from(queued).unwrap_or(u64::MAX));
        Some(PlayedUpTo { samples, handed_at: now, audible_at: now })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_silence_arrives_every_20_ms() {
        let t0 = Instant::now();
        let mut src = NullSource::new(true);
        let mut last = None;
        for want in 0..3 {
            match src.next_frame(Duration::from_secs(1)).unwrap() {
                Pull::Frame(f) => {
                    assert_eq!(f.index, want);
                    assert!(f.samples.iter().all(|&s| s == 0.0));
                    last = Some(f.captured_at);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(last.unwrap() >= t0 + Duration::from_millis(60));
        assert_eq!(src.next_frame(Duration::ZERO).unwrap(), Pull::Timeout);
        assert_eq!(src.level(), 0.0);
    }

    #[test]
    fn a_late_reader_keeps_only_the_hold_window_and_preroll() {
        let mut p = Pacer::new(true);
        p.start -= Duration::from_secs(3); // 150 frames are ready
        assert_eq!(p.wait_next(Duration::ZERO), Some(100));
        p.start_clip(Duration::from_millis(100));
        assert_eq!(p.wait_next(Duration::ZERO), Some(145));
        let mut fast = Pacer::new(false);
        assert_eq!((fast.wait_next(Duration::ZERO), fast.wait_next(Duration::ZERO)), (Some(0), Some(1)));
    }

    #[test]
    fn sinks_count_record_and_drain() {
        let mut fast = NullSink::instant().recording();
        fast.play(&[0.5; 960]).unwrap();
        assert_eq!((fast.written(), fast.queued_ms(), fast.recorded().len()), (960, 0, 960));
        assert_eq!(fast.played_up_to().unwrap().samples, 960);
        let mut slow = NullSink::realtime();
        assert!(slow.played_up_to().is_none());
        slow.play(&[0.0; 4_800]).unwrap();
        let q = slow.queued_ms();
        assert!((90..=100).contains(&q), "{q}");
        assert!(slow.played_up_to().unwrap().samples < 4_800);
        assert!(slow.wait_drained(Duration::from_secs(2)).unwrap());
        assert!(slow.played_up_to().unwrap().samples + 48 >= 4_800);
    }
}
