//! A lock-free (sample position, instant) cell written by an audio callback and read anywhere.
//!
//! The callback is the only writer; readers never block it. It is a sequence lock over two
//! atomics: the writer bumps the sequence to odd, stores both values, bumps it to even; a
//! reader retries while the sequence is odd or changed under it. The writer never waits,
//! never allocates and never takes a lock, so it is safe in a real-time callback.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

/// The latest (position, instant) pair published by one writer thread.
#[derive(Debug)]
pub struct Stamp {
    base: Instant,
    seq: AtomicU64,
    pos: AtomicU64,
    /// Nanoseconds since `base`, plus one; 0 means "never stored".
    nanos: AtomicU64,
}

impl Stamp {
    /// An empty stamp. Instants stored later than about 584 years after this call saturate.
    pub fn new() -> Stamp {
        Stamp {
            base: Instant::now(),
            seq: AtomicU64::new(0),
            pos: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }

    /// Publishes `pos` reached at `at`. Call from one thread only (the audio callback).
    /// Instants before the stamp was created are stored as its creation instant.
    pub fn store(&self, pos: u64, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX - 1)
            + 1;
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.pos.store(pos, Ordering::Relaxed);
        self.nanos.store(nanos, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The latest published pair, or `None` before the first [`Stamp::store`].
    pub fn load(&self) -> Option<(u64, Instant)> {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let pos = self.pos.load(Ordering::Relaxed);
            let nanos = self.nanos.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != before {
                continue;
            }
            if nanos == 0 {
                return None;
            }
            return Some((pos, self.base + Duration::from_nanos(nanos - 1)));
        }
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn empty_then_latest_value() {
        let s = Stamp::new();
        assert_eq!(s.load(), None);
        let t = Instant::now() + Duration::from_millis(5);
        s.store(42, t);
        let (pos, at) = s.load().unwrap();
        assert_eq!(pos, 42);
        assert!(at.max(t) - at.min(t) < Duration::from_micros(1));
        s.store(43, t - Duration::from_secs(3600));
        assert_eq!(s.load().unwrap().0, 43);
    }

    #[test]
    fn readers_never_see_torn_pairs() {
        // The writer keeps nanos = pos * 1000 (relative to the base), so a torn read would
        // show up as a mismatched pair.
        let s = Arc::new(Stamp::new());
        let base = s.base;
        let w = {
            let s = s.clone();
            std::thread::spawn(move || {
                for pos in 1..200_000u64 {
                    s.store(pos, base + Duration::from_micros(pos));
                }
            })
        };
        let mut seen = 0;
        while !w.is_finished() || seen == 0 {
            if let Some((pos, at)) = s.load() {
                assert_eq!((at - base).as_micros() as u64, pos);
                seen += 1;
            }
        }
        w.join().unwrap();
    }
}
