//! Floor control without I/O: one talker per channel at a time. A floor is released when
//! its clip ends, when its talker disconnects (the upload's guard drops), or when it has
//! been held longer than the maximum clip duration plus a grace period.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::clip::ClipId;

/// Who holds a channel's floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The talking user.
    pub user: String,
    /// Their clip.
    pub clip: ClipId,
    /// Since when.
    pub since: Instant,
}

/// The floors of all channels.
#[derive(Debug, Default)]
pub struct Floors {
    held: HashMap<String, Holder>,
}

impl Floors {
    /// Takes `channel`'s floor for `user`'s `clip`, unless another clip (or the same id from
    /// another user) holds it and has held it for less than `max_hold`. Taking it again for
    /// the same user and clip (a retry) succeeds.
    pub fn try_take(
        &mut self,
        channel: &str,
        user: &str,
        clip: ClipId,
        now: Instant,
        max_hold: Duration,
    ) -> Result<(), Holder> {
        if let Some(h) = self.held.get(channel)
            && (h.clip != clip || h.user != user)
            && now.saturating_duration_since(h.since) < max_hold
        {
            return Err(h.clone());
        }
        self.held.insert(
            channel.to_string(),
            Holder {
                user: user.to_string(),
                clip,
                since: now,
            },
        );
        Ok(())
    }

    /// Releases `channel`'s floor if `user`'s `clip` holds it.
    pub fn release(&mut self, channel: &str, user: &str, clip: ClipId) {
        if self
            .held
            .get(channel)
            .is_some_and(|h| h.clip == clip && h.user == user)
        {
            self.held.remove(channel);
        }
    }

    /// The current holder of a channel's floor.
    pub fn holder(&self, channel: &str) -> Option<&Holder> {
        self.held.get(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(65);

    #[test]
    fn one_talker_at_a_time_per_channel() {
        let t = Instant::now();
        let mut f = Floors::default();
        let (a, b) = (ClipId([1; 16]), ClipId([2; 16]));
        assert!(f.try_take("crew", "alice", a, t, MAX).is_ok());
        let busy = f.try_take("crew", "bob", b, t, MAX).expect_err("busy");
        assert_eq!(busy.user, "alice");
        assert!(
            f.try_take("ops", "bob", b, t, MAX).is_ok(),
            "other channels are independent"
        );
        assert!(
            f.try_take("crew", "alice", a, t, MAX).is_ok(),
            "a retry of the same clip keeps the floor"
        );
        f.release("crew", "bob", b);
        assert_eq!(
            f.holder("crew").map(|h| h.user.as_str()),
            Some("alice"),
            "only the holder's clip releases"
        );
        assert!(
            f.try_take("crew", "bob", a, t, MAX).is_err(),
            "the talker's clip id from another user does not get the floor"
        );
        f.release("crew", "bob", a);
        assert_eq!(
            f.holder("crew").map(|h| h.user.as_str()),
            Some("alice"),
            "nor does it release it"
        );
        f.release("crew", "alice", a);
        assert!(
            f.try_take("crew", "bob", b, t, MAX).is_ok(),
            "released when the clip ends"
        );
    }

    #[test]
    fn a_floor_held_past_the_maximum_is_taken_over() {
        let t = Instant::now();
        let mut f = Floors::default();
        assert!(f.try_take("crew", "alice", ClipId([1; 16]), t, MAX).is_ok());
        assert!(
            f.try_take(
                "crew",
                "bob",
                ClipId([2; 16]),
                t + Duration::from_secs(64),
                MAX
            )
            .is_err()
        );
        assert!(
            f.try_take("crew", "bob", ClipId([2; 16]), t + MAX, MAX)
                .is_ok()
        );
        assert_eq!(f.holder("crew").map(|h| h.user.as_str()), Some("bob"));
    }
}
