//! What each sender stores, for the per-user quota: read from the store at most every
//! [`REFRESH`] per user (the embedded store sums the sender's rows, which grows with their
//! history) and kept current in between by the clips this relay stores. Purges and expiry by
//! other processes show within [`REFRESH`]; the quota is a bound, not an account.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shared::lock;

/// How long a sender's count read from the store is trusted.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);

/// Bytes stored per sender, as last known.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    by_user: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Usage {
    /// `user`'s count if it was read from the store less than [`REFRESH`] before `now`.
    pub fn fresh(&self, user: &str, now: Instant) -> Option<u64> {
        lock(&self.by_user)
            .get(user)
            .filter(|(_, at)| now.saturating_duration_since(*at) < REFRESH)
            .map(|(bytes, _)| *bytes)
    }

    /// `user`'s count as just read from the store.
    pub fn set(&self, user: &str, bytes: u64, now: Instant) {
        lock(&self.by_user).insert(user.to_string(), (bytes, now));
    }

    /// This relay stored `bytes` more for `user`.
    pub fn add(&self, user: &str, bytes: u64) {
        if let Some((total, _)) = lock(&self.by_user).get_mut(user) {
            *total = total.saturating_add(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_trusted_for_a_while_and_kept_current_by_new_clips() {
        let usage = Usage::default();
        let t = Instant::now();
        assert_eq!(usage.fresh("alice", t), None, "never read");
        usage.add("alice", 10);
        assert_eq!(
            usage.fresh("alice", t),
            None,
            "nothing to add to before the first read"
        );
        usage.set("alice", 100, t);
        usage.add("alice", 20);
        assert_eq!(usage.fresh("alice", t + Duration::from_secs(1)), Some(120));
        assert_eq!(
            usage.fresh("alice", t + REFRESH),
            None,
            "read again after a while"
        );
    }
}
