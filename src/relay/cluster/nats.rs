//! [`NatsCluster`]: the link between the relays that share a NATS store (`--store nats://...`).
//!
//! - Notices ([`super::Notice`]) travel over core NATS: one publisher task per relay sends
//!   them in order (live clips on `P.relay.live.<clip>`, the rest on `P.relay.notice`), and
//!   one subscription to `P.relay.>` receives the others' (`no_echo`, and an origin id in
//!   each message, so a relay never hears itself). Both sides go through bounded queues: a
//!   relay that cannot keep up drops notices instead of growing (see `super` for why that
//!   is safe).
//! - Floors are leases in the KV bucket `P_floors` (key: the encoded channel), value
//!   `{user, clip, relay, expires_at_ms, nonce}` or empty when released. Taking is a
//!   compare-and-set on the key's revision: create when the key has no value, update when the
//!   value is empty, expired or this clip's own; a lost race re-reads and tries again.
//!   Releasing is a compare-and-set to empty, so a lease that expired and was taken over is
//!   never released by its old holder. Reads go to the stream leader (like the store's), so
//!   a floor just released on one relay is free for every other at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Cluster, FloorError, Inbound, Notice};
use crate::clip::{ClipId, now_ms};
use crate::store::StoreError;
use crate::store::nats::js::{Bucket, Cas, Js};
use crate::store::nats::layout::{Layout, encode, json};
use crate::store::nats::{NatsConfig, connect_client};

/// Notices waiting to be published; beyond this they are dropped.
const OUT_QUEUE: usize = 4096;
/// Notices received and not yet handled by the relay; beyond this they are dropped.
const IN_QUEUE: usize = 4096;
/// How long one floor operation may keep retrying through a NATS election.
const FLOOR_DEADLINE: Duration = Duration::from_secs(10);
/// Compare-and-set rounds of one floor take before it is reported unavailable.
const FLOOR_TRIES: usize = 8;
/// How often delivery pumps re-read their inbox, in case a wake-up notice was lost.
const INBOX_POLL: Duration = Duration::from_secs(10);

/// One notice with the id of the relay that sent it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: u64,
    notice: Notice,
}

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

/// The floors bucket and how to reach it.
struct Floors {
    js: Js,
    bucket: Bucket,
    origin: u64,
}

/// The cluster link of one relay over NATS.
pub struct NatsCluster {
    floors: Arc<Floors>,
    layout: Layout,
    origin: u64,
    out: mpsc::Sender<(String, Bytes)>,
    incoming: Mutex<Option<mpsc::Receiver<Inbound>>>,
    dropped: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster").field("prefix", &self.layout.prefix).field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl NatsCluster {
    /// Connects to the cluster of `config` (the same servers and prefix as the relay's
    /// [`crate::store::nats::NatsStore`]), opens the floors bucket and subscribes to the
    /// other relays' notices. Must be called inside the relay's tokio runtime, which then
    /// drives the link.
    pub async fn connect(config: &NatsConfig) -> Result<NatsCluster, StoreError> {
        let layout = Layout::new(&config.prefix)?;
        let origin: u64 = rand::random();
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(IN_QUEUE);
        let events = in_tx.clone();
        let options = move || {
            let events = events.clone();
            async_nats::ConnectOptions::new().no_echo().event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let _ = events.try_send(Inbound::Reconnected);
                        }
                        async_nats::Event::Disconnected => warn!("the relays' NATS link is down; reconnecting"),
                        other => debug!("NATS link: {other}"),
                    }
                }
            })
        };
        let deadline = config.deadline.min(FLOOR_DEADLINE);
        let (client, js) = connect_client(config, "walkie-relay", config.deadline, options).await?;
        let js = Js { deadline, ..js };
        let bucket = Bucket::open(&js, layout.floors_bucket()).await?;
        let mut sub = client
            .subscribe(layout.relay_all())
            .await
            .map_err(|e| StoreError::Backend(format!("cannot subscribe to the other relays' notices: {e}")))?;
        let dropped = Arc::new(AtomicU64::new(0));
        let reader = {
            let dropped = dropped.clone();
            tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    match postcard::from_bytes::<Envelope>(&msg.payload) {
                        Ok(env) if env.origin == origin => {}
                        Ok(env) => {
                            if in_tx.try_send(Inbound::Notice(env.notice)).is_err() {
                                count_drop(&dropped, "incoming");
                            }
                        }
                        Err(e) => warn!(subject = %msg.subject, "undecodable notice from another relay: {e}"),
                    }
                }
            })
        };
        let (out, mut out_rx) = mpsc::channel::<(String, Bytes)>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some((subject, payload)) = out_rx.recv().await {
                if let Err(e) = client.publish(subject, payload).await {
                    debug!("cannot publish a notice to the other relays: {e}");
                }
            }
        });
        Ok(NatsCluster {
            floors: Arc::new(Floors { js, bucket, origin }),
            layout,
            origin,
            out,
            incoming: Mutex::new(Some(in_rx)),
            dropped,
            tasks: vec![reader, writer],
        })
    }

    /// Notices dropped so far because a queue was full.
    pub fn dropped_notices(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Counts a dropped notice, logging the first and then every 1000th.
fn count_drop(dropped: &AtomicU64, which: &str) {
    let n = dropped.fetch_add(1, Ordering::Relaxed);
    if n % 1000 == 0 {
        warn!(dropped = n + 1, "the {which} queue of relay notices is full; notices dropped");
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Floors {
    fn unavailable(channel: &str, e: impl std::fmt::Display) -> FloorError {
        FloorError::Unavailable { channel: channel.to_string(), reason: e.to_string() }
    }

    async fn take(&self, channel: String, user: String, clip: ClipId, hold: Duration) -> Result<(), FloorError> {
        let key = encode(&channel);
        let hold_ms = i64::try_from(hold.as_millis()).unwrap_or(i64::MAX);
        for _ in 0..FLOOR_TRIES {
            let now = now_ms();
            let lease = Lease { user: user.clone(), clip, relay: self.origin, expires_at_ms: now.saturating_add(hold_ms), nonce: rand::random() };
            let value = json(&lease).map_err(|e| Self::unavailable(&channel, e))?;
            let current = self.bucket.get(&self.js, &key).await.map_err(|e| Self::unavailable(&channel, e))?;
            let cas = match current {
                None => self.bucket.create(&self.js, &key, value).await,
                Some((bytes, rev)) => {
                    if let Some(held) = parse_lease(&bytes)
                        && held.clip != clip
                        && held.expires_at_ms > now
                    {
                        return Err(FloorError::Taken { user: held.user, channel });
                    }
                    self.bucket.update(&self.js, &key, value, rev).await
                }
            };
            match cas.map_err(|e| Self::unavailable(&channel, e))? {
                Cas::Done(_) => return Ok(()),
                Cas::Lost => debug!(%channel, "lost a race for the floor; reading it again"),
            }
        }
        Err(Self::unavailable(&channel, "the floor kept changing"))
    }

    async fn release(&self, channel: String, clip: ClipId) {
        let key = encode(&channel);
        let result = async {
            let Some((bytes, rev)) = self.bucket.get(&self.js, &key).await? else { return Ok(()) };
            if parse_lease(&bytes).is_some_and(|l| l.clip == clip) {
                // Lost: someone took it over (our lease had expired); theirs stays.
                self.bucket.update(&self.js, &key, Bytes::new(), rev).await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if let Err(e) = result {
            // The lease then frees itself when it expires.
            warn!(%channel, clip = %clip, "cannot release the floor: {e}");
        }
    }
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

impl Cluster for NatsCluster {
    fn take_floor(&self, channel: &str, user: &str, clip: ClipId, hold: Duration) -> BoxFuture<'static, Result<(), FloorError>> {
        let floors = self.floors.clone();
        let (channel, user) = (channel.to_string(), user.to_string());
        Box::pin(async move { floors.take(channel, user, clip, hold).await })
    }

    fn release_floor(&self, channel: &str, clip: ClipId) {
        let floors = self.floors.clone();
        let channel = channel.to_string();
        tokio::spawn(async move { floors.release(channel, clip).await });
    }

    fn spans_relays(&self) -> bool {
        true
    }

    fn publish(&self, notice: Notice) -> bool {
        let subject = match &notice {
            Notice::LiveStart { header, .. } => self.layout.relay_live_subject(&header.id),
            Notice::LivePacket { clip, .. } | Notice::LiveEnd { clip, .. } | Notice::LiveAbort { clip, .. } => {
                self.layout.relay_live_subject(clip)
            }
            Notice::Wake { .. } | Notice::Tell { .. } => self.layout.relay_notice_subject(),
        };
        let payload = match postcard::to_allocvec(&Envelope { origin: self.origin, notice }) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                warn!("cannot encode a notice: {e}");
                return false;
            }
        };
        if self.out.try_send((subject, payload)).is_err() {
            count_drop(&self.dropped, "outgoing");
            return false;
        }
        true
    }

    fn incoming(&self) -> Option<mpsc::Receiver<Inbound>> {
        super::super::lock(&self.incoming).take()
    }

    fn inbox_poll(&self) -> Option<Duration> {
        Some(INBOX_POLL)
    }
}
