//! Frame timing for sources that are not devices (silence, a WAV file): frame `k` is ready
//! 20 ms × (k + 1) after the start, like a microphone's, or at once when not real time.

use std::time::{Duration, Instant};

/// One frame's duration.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames a paced source holds for a late reader before dropping the oldest (1 s).
pub const HOLD_FRAMES: u64 = 50;

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
        Pacer {
            start: Instant::now(),
            realtime,
            next: 0,
        }
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
            self.next = self
                .next
                .max(ready.saturating_sub(u64::try_from(keep).unwrap_or(u64::MAX)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_reader_keeps_only_the_hold_window_and_preroll() {
        let mut p = Pacer::new(true);
        p.start -= Duration::from_secs(3); // 150 frames are ready
        assert_eq!(p.wait_next(Duration::ZERO), Some(100));
        p.start_clip(Duration::from_millis(100));
        assert_eq!(p.wait_next(Duration::ZERO), Some(145));
        let mut fast = Pacer::new(false);
        assert_eq!(
            (
                fast.wait_next(Duration::ZERO),
                fast.wait_next(Duration::ZERO)
            ),
            (Some(0), Some(1))
        );
    }
}
