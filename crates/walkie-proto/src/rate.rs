//! Rate limits without I/O: token buckets for clips per minute and upload bytes per second,
//! per user, with time passed in so tests drive them with a fake clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `rate` tokens per second.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        Self {
            capacity,
            rate,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at = now;
    }

    /// Takes `n` tokens if there are enough; otherwise says how long until there will be.
    pub fn try_take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(self.wait_for(n))
        }
    }

    /// Takes `n` tokens, going into debt if needed; returns how long the caller should pause
    /// so that its average rate stays at the limit.
    pub fn take_paced(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    fn wait_for(&self, n: f64) -> Duration {
        if self.rate <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64(((n - self.tokens) / self.rate).max(0.0))
    }
}

/// Per-user limits of one relay.
#[derive(Debug)]
pub struct UserLimits {
    clips_per_minute: u32,
    bytes_per_second: u64,
    clips: HashMap<String, Bucket>,
    bytes: HashMap<String, Bucket>,
}

/// Burst allowance for uploads: a whole stored clip from an outbox may arrive at once.
const BYTE_BURST: f64 = 1024.0 * 1024.0;
/// Users tracked before idle buckets (full again) are forgotten.
const MAX_TRACKED: usize = 100_000;

impl UserLimits {
    /// Limits with these rates.
    pub fn new(clips_per_minute: u32, bytes_per_second: u64) -> Self {
        Self {
            clips_per_minute,
            bytes_per_second,
            clips: HashMap::new(),
            bytes: HashMap::new(),
        }
    }

    /// Admits one more clip from `user`, or says how long to wait.
    pub fn admit_clip(&mut self, user: &str, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(self.clips_per_minute.max(1));
        self.trim(now);
        self.clips
            .entry(user.to_string())
            .or_insert_with(|| Bucket::new(cap, cap / 60.0, now))
            .try_take(1.0, now)
    }

    /// Accounts `n` uploaded bytes from `user`; returns how long to pause reading.
    pub fn pace_bytes(&mut self, user: &str, n: usize, now: Instant) -> Duration {
        let rate = self.bytes_per_second.max(1) as f64;
        self.bytes
            .entry(user.to_string())
            .or_insert_with(|| Bucket::new(BYTE_BURST.max(rate), rate, now))
            .take_paced(n as f64, now)
    }

    fn trim(&mut self, now: Instant) {
        if self.clips.len() + self.bytes.len() > MAX_TRACKED {
            // Buckets that have refilled completely carry no state worth keeping.
            let full = |b: &mut Bucket| {
                b.refill(now);
                b.tokens < b.capacity
            };
            self.clips.retain(|_, b| full(b));
            self.bytes.retain(|_, b| full(b));
        }
    }
}

/// One token bucket per key (a user, an IP address) with the same capacity and rate; keys
/// whose bucket refilled are forgotten once many are tracked, so the map stays bounded by
/// the keys active within one refill time.
#[derive(Debug)]
pub struct KeyedLimits<K> {
    capacity: f64,
    rate: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq> KeyedLimits<K> {
    /// Buckets of `capacity` tokens that refill at `per_second`.
    pub fn new(capacity: f64, per_second: f64) -> Self {
        Self {
            capacity,
            rate: per_second,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`, or says how long until there is one.
    pub fn admit(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        self.bucket(key, now).try_take(1.0, now)
    }

    /// Takes `n` tokens for `key`, going into debt if needed; returns how long the caller
    /// should pause so that the key's average rate stays at the limit.
    pub fn pace(&mut self, key: K, n: usize, now: Instant) -> Duration {
        self.bucket(key, now).take_paced(n as f64, now)
    }

    fn bucket(&mut self, key: K, now: Instant) -> &mut Bucket {
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.capacity
            });
        }
        let (capacity, rate) = (self.capacity, self.rate);
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(capacity, rate, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_pacing_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = KeyedLimits::new(1000.0, 100.0);
        assert_eq!(l.pace("a", 1000, t0), Duration::ZERO);
        assert_eq!(l.pace("a", 100, t0), Duration::from_secs(1));
        assert_eq!(l.pace("b", 500, t0), Duration::ZERO, "per key");
        assert_eq!(
            l.pace("a", 100, t0 + Duration::from_secs(2)),
            Duration::ZERO,
            "paid back"
        );
    }

    #[test]
    fn keyed_limits_are_per_key_and_refill() {
        let t0 = Instant::now();
        let mut l = KeyedLimits::new(2.0, 1.0 / 60.0);
        assert!(l.admit("a", t0).is_ok());
        assert!(l.admit("a", t0).is_ok());
        let wait = l.admit("a", t0).expect_err("third refused");
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(l.admit("b", t0).is_ok());
        assert!(l.admit("a", t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn clips_per_minute_refuse_then_recover() {
        let t0 = Instant::now();
        let mut l = UserLimits::new(3, 1000);
        for _ in 0..3 {
            assert!(l.admit_clip("bob", t0).is_ok());
        }
        let wait = l.admit_clip("bob", t0).expect_err("fourth refused");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(l.admit_clip("alice", t0).is_ok(), "limits are per user");
        assert!(
            l.admit_clip("bob", t0 + Duration::from_secs(20)).is_ok(),
            "a token refills in 20 s"
        );
    }

    #[test]
    fn bytes_are_paced_after_the_burst() {
        let t0 = Instant::now();
        let mut l = UserLimits::new(60, 1000);
        assert_eq!(l.pace_bytes("bob", 1 << 20, t0), Duration::ZERO);
        let pause = l.pace_bytes("bob", 2000, t0);
        assert_eq!(pause, Duration::from_secs(2));
    }
}
