//! [`NatsCluster`]: the link between the relays that share a NATS store (`--store nats://...`).
//!
//! - Notices ([`super::Notice`]) travel over core NATS: one publisher task per relay sends
//!   them in order (live clips on `P.relay.live.<clip>`, the rest on `P.relay.notice`), and
//!   one subscription to `P.relay.>` receives the others' (`no_echo`, and an origin id in
//!   each message, so a relay never hears itself). Both sides go through bounded queues: a
//!   relay that cannot keep up drops notices instead of growing (see `super` for why that
//!   is safe).
//! - Floors are leases in the store's floors bucket, taken and released with compare-and-set
//!   ([`walkie_store::nats::link`] has the layout and the protocol).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use walkie_proto::clip::ClipId;
use walkie_store::StoreError;
use walkie_store::nats::NatsConfig;
use walkie_store::nats::link::{Floor, LinkEvent, NatsLink};

use super::{Cluster, FloorError, Inbound, Notice};

/// Notices waiting to be published; beyond this they are dropped.
const OUT_QUEUE: usize = 4096;
/// Notices received and not yet handled by the relay; beyond this they are dropped.
const IN_QUEUE: usize = 4096;
/// How often delivery pumps re-read their inbox, in case a wake-up notice was lost.
const INBOX_POLL: Duration = Duration::from_secs(10);

/// One notice with the id of the relay that sent it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: u64,
    notice: Notice,
}

/// The cluster link of one relay over NATS.
pub struct NatsCluster {
    link: Arc<NatsLink>,
    origin: u64,
    out: mpsc::Sender<(String, Bytes)>,
    incoming: Mutex<Option<mpsc::Receiver<Inbound>>>,
    dropped: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl NatsCluster {
    /// Connects to the cluster of `config` (the same servers and prefix as the relay's
    /// [`walkie_store::nats::NatsStore`]), opens the floors bucket and subscribes to the
    /// other relays' notices. Must be called inside the relay's tokio runtime, which then
    /// drives the link.
    pub async fn connect(config: &NatsConfig) -> Result<NatsCluster, StoreError> {
        let origin: u64 = rand::random();
        let (in_tx, in_rx) = mpsc::channel::<Inbound>(IN_QUEUE);
        let (events_tx, mut events) = mpsc::channel::<LinkEvent>(16);
        let link = Arc::new(NatsLink::connect(config, origin, events_tx).await?);
        let mut sub = link.subscribe().await?;
        let dropped = Arc::new(AtomicU64::new(0));
        let reconnects = {
            let in_tx = in_tx.clone();
            tokio::spawn(async move {
                while let Some(LinkEvent::Reconnected) = events.recv().await {
                    let _ = in_tx.try_send(Inbound::Reconnected);
                }
            })
        };
        let reader = {
            let dropped = dropped.clone();
            tokio::spawn(async move {
                while let Some((subject, payload)) = sub.next().await {
                    match postcard::from_bytes::<Envelope>(&payload) {
                        Ok(env) if env.origin == origin => {}
                        Ok(env) => {
                            if in_tx.try_send(Inbound::Notice(env.notice)).is_err() {
                                count_drop(&dropped, "incoming");
                            }
                        }
                        Err(e) => warn!(%subject, "undecodable notice from another relay: {e}"),
                    }
                }
            })
        };
        let (out, mut out_rx) = mpsc::channel::<(String, Bytes)>(OUT_QUEUE);
        let writer = {
            let link = link.clone();
            tokio::spawn(async move {
                while let Some((subject, payload)) = out_rx.recv().await {
                    if let Err(e) = link.publish(subject, payload).await {
                        debug!("cannot publish a notice to the other relays: {e}");
                    }
                }
            })
        };
        Ok(NatsCluster {
            link,
            origin,
            out,
            incoming: Mutex::new(Some(in_rx)),
            dropped,
            tasks: vec![reconnects, reader, writer],
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
    if n.is_multiple_of(1000) {
        warn!(
            dropped = n + 1,
            "the {which} queue of relay notices is full; notices dropped"
        );
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Cluster for NatsCluster {
    fn take_floor(
        &self,
        channel: &str,
        user: &str,
        clip: ClipId,
        hold: Duration,
    ) -> BoxFuture<'static, Result<(), FloorError>> {
        let link = self.link.clone();
        let (channel, user) = (channel.to_string(), user.to_string());
        Box::pin(async move {
            match link.take_floor(&channel, &user, clip, hold).await {
                Ok(Floor::Granted) => Ok(()),
                Ok(Floor::Held(user)) => Err(FloorError::Taken { user, channel }),
                Err(e) => Err(FloorError::Unavailable {
                    channel,
                    reason: e.to_string(),
                }),
            }
        })
    }

    fn release_floor(&self, channel: &str, user: &str, clip: ClipId) {
        let link = self.link.clone();
        let (channel, user) = (channel.to_string(), user.to_string());
        tokio::spawn(async move {
            if let Err(e) = link.release_floor(&channel, &user, clip).await {
                // The lease then frees itself when it expires.
                warn!(%channel, clip = %clip, "cannot release the floor: {e}");
            }
        });
    }

    fn reserve_clip(
        &self,
        clip: ClipId,
        user: &str,
        hold: Duration,
    ) -> BoxFuture<'static, Result<Option<String>, FloorError>> {
        let link = self.link.clone();
        let user = user.to_string();
        Box::pin(async move {
            link.reserve_clip(clip, &user, hold)
                .await
                .map_err(|e| FloorError::Unavailable {
                    channel: format!("clip {clip}"),
                    reason: e.to_string(),
                })
        })
    }

    fn release_clip(&self, clip: ClipId, user: &str) {
        let link = self.link.clone();
        let user = user.to_string();
        tokio::spawn(async move {
            if let Err(e) = link.release_clip(clip, &user).await {
                // The reservation then frees itself when it expires.
                warn!(clip = %clip, "cannot release a clip id: {e}");
            }
        });
    }

    fn spans_relays(&self) -> bool {
        true
    }

    fn publish(&self, notice: Notice) -> bool {
        let subject = match &notice {
            Notice::LiveStart { header, .. } => self.link.live_subject(&header.id),
            Notice::LivePacket { clip, .. }
            | Notice::LiveEnd { clip, .. }
            | Notice::LiveAbort { clip, .. } => self.link.live_subject(clip),
            Notice::Wake { .. } | Notice::Presence { .. } | Notice::Tell { .. } => {
                self.link.notice_subject()
            }
        };
        let payload = match postcard::to_allocvec(&Envelope {
            origin: self.origin,
            notice,
        }) {
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
        crate::lock(&self.incoming).take()
    }

    fn inbox_poll(&self) -> Option<Duration> {
        Some(INBOX_POLL)
    }
}
