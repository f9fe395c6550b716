//! What every part of a running relay shares: the store, who is online, the settings, the link
//! to the other relays, the per-user rate limits, and the shutdown signal; with the helpers
//! that reach all of a user's sessions here and on the other relays.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use walkie_proto::clip::ClipMeta;
use walkie_proto::rate::{KeyedLimits, UserLimits};
use walkie_proto::wire::{ErrorCode, ErrorMsg, ServerMsg};
use walkie_store::{CommitOutcome, NewClip, Store, StoreError};

use crate::RelayError;
use crate::cluster::{Cluster, Notice};
use crate::committer::Committer;
use crate::config::RelayConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// State shared by every connection task.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    /// Commits clips and messages in batches, on its own thread.
    pub committer: Committer,
    pub registry: Registry,
    pub config: RelayConfig,
    pub shutdown: watch::Receiver<bool>,
    /// The other relays sharing the store (floors, live clips, wake-ups), or none.
    pub cluster: Arc<dyn Cluster>,
    pub limits: Mutex<UserLimits>,
    /// People requests per user.
    pub people_limits: Mutex<KeyedLimits<String>>,
    /// Sign-up attempts per source address.
    pub signup_limits: Mutex<KeyedLimits<std::net::IpAddr>>,
    /// Authenticated connections now.
    pub connections: AtomicUsize,
    /// What each sender stores, for the quota.
    pub usage: crate::quota::Usage,
    /// Each recipient's delivery keys (their inbox and their other devices'), read lately.
    pub delivery_keys: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// Message bytes uploaded per user (a burst for a photo, then the configured rate).
    pub message_bytes: Mutex<KeyedLimits<String>>,
    /// One permit: pictures are decoded and doodles drawn one at a time.
    pub media: tokio::sync::Semaphore,
    /// Who is online here, as the people who see them, and the changes not told yet.
    pub presence: Mutex<walkie_proto::presence::Presence>,
    /// What the relay counts for its operators.
    pub metrics: Arc<Metrics>,
}

/// How long a user's list of devices is trusted before it is read again: a device linked
/// through another relay of a cluster gets its own copy of clips committed here from then on.
const DEVICES_FRESH: Duration = Duration::from_secs(5);
/// Users whose delivery keys are remembered at most.
const DEVICES_CACHED: usize = 100_000;

/// Locks a mutex whose data stays consistent even if a holder panicked (single inserts,
/// removes and counter updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The refusal sent to a connection the relay has no room for: its retry delay is typed.
    pub fn busy(&self) -> ErrorMsg {
        let ms = self.config.busy_retry_ms;
        ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Busy { retry_after_ms: ms },
            message: format!("busy, retry after {ms} ms"),
        }
    }

    /// Wakes the delivery pumps of these users, here and on the other relays.
    pub fn wake_everywhere(&self, users: &[String]) {
        self.registry.wake(users);
        if self.cluster.spans_relays() && !users.is_empty() {
            self.cluster.publish(Notice::Wake {
                users: users.to_vec(),
            });
        }
    }

    /// Sends `msg` to every session of `users`, here and on the other relays (best effort).
    pub fn tell_everywhere(&self, users: &[String], msg: &ServerMsg) {
        self.registry.tell(users, msg);
        if self.cluster.spans_relays() && !users.is_empty() {
            self.cluster.publish(Notice::Tell {
                users: users.to_vec(),
                msg: msg.clone(),
            });
        }
    }

    /// The inboxes a clip for `users` goes to: each user's, and each of their other devices'.
    pub async fn delivery_keys(&self, users: &[String]) -> Result<Vec<String>, RelayError> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(users.len());
        let mut missing = Vec::new();
        {
            let cache = lock(&self.delivery_keys);
            for u in users {
                match cache.get(u) {
                    Some((at, keys)) if now.duration_since(*at) < DEVICES_FRESH => {
                        out.extend(keys.iter().cloned())
                    }
                    _ => missing.push(u.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let asked = missing.clone();
        let found = self
            .store(move |s| {
                asked
                    .iter()
                    .map(|u| crate::people::delivery_keys(s, u))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let mut cache = lock(&self.delivery_keys);
        if cache.len() + found.len() > DEVICES_CACHED {
            cache.clear();
        }
        for (user, keys) in missing.into_iter().zip(found) {
            out.extend(keys.iter().cloned());
            cache.insert(user, (now, keys));
        }
        Ok(out)
    }

    /// Stores an item (a clip or a message) durably and queues it for every delivery key of
    /// `recipients`, in one store call.
    pub async fn commit(
        &self,
        meta: ClipMeta,
        recipients: &[String],
        payload: Vec<u8>,
    ) -> Result<CommitOutcome, RelayError> {
        let recipients = self.delivery_keys(recipients).await?;
        self.committer
            .commit(NewClip {
                meta,
                recipients,
                payload,
            })
            .await
    }

    /// Forgets what is remembered of `user`'s devices (one was linked or removed here).
    pub fn forget_devices(&self, user: &str) {
        lock(&self.delivery_keys).remove(user);
    }

    /// Runs a blocking store call off the async threads.
    pub async fn store<T, F>(&self, f: F) -> Result<T, RelayError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RelayError::Task(e.to_string()))?
            .map_err(RelayError::from)
    }
}
