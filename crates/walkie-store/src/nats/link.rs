//! The link between the relays that share a NATS store: core NATS pub/sub for the notices they
//! send each other, and the channels' floor leases (and the reservations of clip ids being
//! uploaded, keys `=clip.ID`) in the KV bucket `P_floors`. The relay's
//! cluster code (`walkie-relay`, `cluster/nats.rs`) decides what to send and when; this module
//! owns how it lives in NATS (bucket and subject names, the lease record, compare-and-set), next
//! to the rest of the store's layout.
//!
//! # Floor leases
//! Key: the encoded channel; value `{user, clip, relay, expires_at_ms, nonce}`, or empty once
//! released. Taking is a compare-and-set on the key's revision: create when the key has no
//! value, update when the value is empty, expired or this clip's own; a lost race re-reads and
//! tries again. Releasing is a compare-and-set to empty, so a lease that expired and was taken
//! over is never released by its old holder. Reads go to the stream leader (like the store's),
//! so a floor just released on one relay is free for every other at once.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use walkie_proto::clip::{ClipId, now_ms};

use super::js::{Bucket, Cas, Js};
use super::layout::{Layout, encode, json};
use super::{NatsConfig, connect_client};
use crate::StoreError;

/// How long one floor operation may keep retrying through a NATS election.
const FLOOR_DEADLINE: Duration = Duration::from_secs(10);
/// Compare-and-set rounds of one floor take before it is reported unavailable.
const FLOOR_TRIES: usize = 8;

/// A floor lease, as stored in the floors bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    /// The talker.
    user: String,
    /// Their clip.
    clip: ClipId,
    /// The relay that granted it (for operators reading the bucket).
    relay: u64,
    /// When it frees itself, in milliseconds since the epoch.
    expires_at_ms: i64,
    /// Random: tells this write from any other (see the store's `Bucket::create`).
    nonce: u64,
}

/// The answer to [`NatsLink::take_floor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Floor {
    /// The floor is this clip's now.
    Granted,
    /// Another clip's unexpired lease holds it; its talker.
    Held(String),
}

/// Something that happened to the link's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected again after an outage (notices may have been lost meanwhile).
    Reconnected,
}

/// One relay's link to the others over NATS.
pub struct NatsLink {
    client: async_nats::Client,
    js: Js,
    floors: Bucket,
    layout: Layout,
    origin: u64,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("prefix", &self.layout.prefix)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The other relays' messages, as they arrive.
pub struct Subscription(async_nats::Subscriber);

impl Subscription {
    /// The next message's subject and payload; `None` once the link is gone.
    pub async fn next(&mut self) -> Option<(String, Bytes)> {
        self.0
            .next()
            .await
            .map(|m| (m.subject.to_string(), m.payload))
    }
}

impl NatsLink {
    /// Connects to the cluster of `config` (the same servers and prefix as the relay's
    /// [`super::NatsStore`]) as the relay `origin`, and opens the floors bucket. Connection
    /// events go to `events`. Must be called inside the relay's tokio runtime, which then
    /// drives the link.
    pub async fn connect(
        config: &NatsConfig,
        origin: u64,
        events: tokio::sync::mpsc::Sender<LinkEvent>,
    ) -> Result<NatsLink, StoreError> {
        let layout = Layout::new(&config.prefix)?;
        let options = move || {
            let events = events.clone();
            async_nats::ConnectOptions::new()
                .no_echo()
                .event_callback(move |event| {
                    let events = events.clone();
                    async move {
                        match event {
                            async_nats::Event::Connected => {
                                let _ = events.try_send(LinkEvent::Reconnected);
                            }
                            async_nats::Event::Disconnected => {
                                warn!("the relays' NATS link is down; reconnecting")
                            }
                            other => debug!("NATS link: {other}"),
                        }
                    }
                })
        };
        let (client, js) = connect_client(config, "walkie-relay", config.deadline, options).await?;
        let js = Js {
            deadline: config.deadline.min(FLOOR_DEADLINE),
            ..js
        };
        let floors = Bucket::open(&js, layout.floors_bucket()).await?;
        Ok(NatsLink {
            client,
            js,
            floors,
            layout,
            origin,
        })
    }

    /// Subscribes to every relay's messages (this relay's own are not echoed back).
    pub async fn subscribe(&self) -> Result<Subscription, StoreError> {
        self.client
            .subscribe(self.layout.relay_all())
            .await
            .map(Subscription)
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot subscribe to the other relays' notices: {e}"
                ))
            })
    }

    /// The subject for the messages of one live clip.
    pub fn live_subject(&self, clip: &ClipId) -> String {
        self.layout.relay_live_subject(clip)
    }

    /// The subject for every other notice.
    pub fn notice_subject(&self) -> String {
        self.layout.relay_notice_subject()
    }

    /// Publishes a message (at most once: core NATS).
    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), StoreError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot publish to the other relays: {e}")))
    }

    /// Takes `channel`'s floor for `clip` of `user`, for at most `hold` unless released. A
    /// retry for the same clip succeeds (and renews the lease).
    pub async fn take_floor(
        &self,
        channel: &str,
        user: &str,
        clip: ClipId,
        hold: Duration,
    ) -> Result<Floor, StoreError> {
        let held = self
            .lease(&encode(channel), user, clip, hold, |l| {
                l.clip != clip || l.user != user
            })
            .await?;
        Ok(held.map_or(Floor::Granted, Floor::Held))
    }

    /// Releases `channel`'s floor if `user`'s `clip` holds it. A lease that cannot be released
    /// frees itself when it expires.
    pub async fn release_floor(
        &self,
        channel: &str,
        user: &str,
        clip: ClipId,
    ) -> Result<(), StoreError> {
        self.release(&encode(channel), user, clip).await
    }

    /// Binds clip id `clip` to `user` cluster-wide while it is uploaded, for at most `hold`
    /// unless released: `None` when it is theirs, else the user whose unexpired reservation
    /// holds it (a second upload of the same id by the same user renews it).
    pub async fn reserve_clip(
        &self,
        clip: ClipId,
        user: &str,
        hold: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.lease(&clip_key(&clip), user, clip, hold, |l| l.user != user)
            .await
    }

    /// Releases `user`'s reservation of `clip`.
    pub async fn release_clip(&self, clip: ClipId, user: &str) -> Result<(), StoreError> {
        self.release(&clip_key(&clip), user, clip).await
    }

    /// Writes a lease of `key` for `user`'s `clip` unless an unexpired one that `conflicts`
    /// holds it; the holder's user name then.
    async fn lease(
        &self,
        key: &str,
        user: &str,
        clip: ClipId,
        hold: Duration,
        conflicts: impl Fn(&Lease) -> bool,
    ) -> Result<Option<String>, StoreError> {
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        for _ in 0..FLOOR_TRIES {
            let now = now_ms();
            let lease = Lease {
                user: user.to_string(),
                clip,
                relay: self.origin,
                expires_at_ms: now.saturating_add(hold_ms),
                nonce: rand::random(),
            };
            let value = json(&lease)?;
            let cas = match self.floors.get(&self.js, key).await? {
                None => self.floors.create(&self.js, key, value).await?,
                Some((bytes, rev)) => {
                    if let Some(held) = parse_lease(&bytes)
                        && conflicts(&held)
                        && held.expires_at_ms > now
                    {
                        return Ok(Some(held.user));
                    }
                    self.floors.update(&self.js, key, value, rev).await?
                }
            };
            match cas {
                Cas::Done(_) => return Ok(None),
                Cas::Lost => debug!(%key, "lost a race for a lease; reading it again"),
            }
        }
        Err(StoreError::Backend("the lease kept changing".into()))
    }

    /// Empties `key`'s lease if `user`'s `clip` holds it (someone who took it over after it
    /// expired keeps theirs).
    async fn release(&self, key: &str, user: &str, clip: ClipId) -> Result<(), StoreError> {
        let Some((bytes, rev)) = self.floors.get(&self.js, key).await? else {
            return Ok(());
        };
        if parse_lease(&bytes).is_some_and(|l| l.clip == clip && l.user == user) {
            self.floors.update(&self.js, key, Bytes::new(), rev).await?;
        }
        Ok(())
    }
}

/// The key of a clip id's reservation in the floors bucket: `=` followed by letters cannot be
/// an encoded channel name (whose escapes are `=` and two hex digits).
fn clip_key(clip: &ClipId) -> String {
    format!("=clip.{clip}")
}

/// A stored lease; `None` for a released floor (empty value) or one that does not parse.
fn parse_lease(bytes: &[u8]) -> Option<Lease> {
    if bytes.is_empty() {
        return None;
    }
    match serde_json::from_slice(bytes) {
        Ok(lease) => Some(lease),
        Err(e) => {
            warn!("a floor lease does not parse ({e}); treating the floor as free");
            None
        }
    }
}
