//! The relays of one deployment as a cluster: floor control, live fan-out and inbox wake-ups
//! across relays. The relay talks to the [`Cluster`] trait only:
//!
//! - [`LocalCluster`] is a relay on its own (the embedded SQLite store): floors in memory
//!   ([`walkie_proto::floor::Floors`]), nothing to tell anyone.
//! - [`nats::NatsCluster`] links the relays that share a NATS store: floor leases in a
//!   JetStream KV bucket (compare-and-set), and [`Notice`]s over core NATS pub/sub, which
//!   every relay publishes and subscribes to.
//!
//! # What crosses relays, and how (see `live.rs` for the receiving side)
//! - A live clip: the talker's relay publishes [`Notice::LiveStart`] (header and recipients),
//!   each packet as [`Notice::LivePacket`] (numbered), then [`Notice::LiveEnd`] only once the
//!   clip is durably stored, or [`Notice::LiveAbort`]. Every other relay forwards them to its
//!   own sessions of the recipients, as live streams (the same `LiveSink`s the talker's relay
//!   uses). Core NATS is at-most-once: a receiving relay that sees a gap in the numbering, or
//!   no end within the maximum clip duration, aborts its live copies; its recipients then get
//!   the stored clip from their inbox, as a slow listener does.
//! - Inbox wake-ups: after a commit, [`Notice::Wake`] with the recipients; each relay wakes
//!   their delivery pumps. A lost notice only delays delivery: pumps also poll the inbox every
//!   [`Cluster::inbox_poll`], and every pump is woken when the link reconnects.
//! - Messages for users (played receipts, channel lists, contact changes): [`Notice::Tell`].
//! - Presence: each relay's batch of users who came or went, with who sees them
//!   ([`Notice::Presence`]); every relay tells its own sessions.
//! - The floor: one talker per channel cluster-wide ([`Cluster::take_floor`]). A lease names
//!   the holder and the clip and expires after the maximum clip duration plus a grace period,
//!   so the floor of a relay that crashed mid-clip frees itself.

#[cfg(feature = "nats")]
pub mod nats;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use walkie_proto::clip::ClipId;
use walkie_proto::floor::Floors;
use walkie_proto::wire::{DeliverHeader, ErrorMsg, ServerMsg};

/// Why a floor was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloorError {
    /// Another clip holds the channel's floor: its talker is named.
    #[error("{user} is talking on {channel}")]
    Taken {
        /// Who is talking.
        user: String,
        /// The channel.
        channel: String,
    },
    /// The cluster could not be asked (no quorum, unreachable, contended past the retries).
    #[error("cannot check the floor of {channel}: {reason}")]
    Unavailable {
        /// The channel.
        channel: String,
        /// What went wrong.
        reason: String,
    },
}

/// What one relay tells the others (encoded with postcard on the wire between relays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// A live clip started on the sending relay; its packets follow, in order.
    LiveStart {
        /// The header recipients get (`live` is true, `seq` 0).
        header: DeliverHeader,
        /// Who should hear it (the sender excluded).
        recipients: Vec<String>,
    },
    /// Packet `n` (counting from 0) of a live clip.
    LivePacket {
        /// The clip.
        clip: ClipId,
        /// Its number in the clip.
        n: u32,
        /// The Opus packet.
        data: Vec<u8>,
    },
    /// The live clip is stored durably: its end marker.
    LiveEnd {
        /// The clip.
        clip: ClipId,
        /// Packets in the clip.
        packets: u32,
        /// Decoded length in 48 kHz samples.
        samples: u64,
    },
    /// The live clip was abandoned (the sender cancelled, the relay refused or failed).
    LiveAbort {
        /// The clip.
        clip: ClipId,
        /// Why, as recipients see it.
        error: ErrorMsg,
    },
    /// These users' inboxes grew: wake their delivery pumps.
    Wake {
        /// The users.
        users: Vec<String>,
    },
    /// Users who came online or went offline at the sending relay (a batch), with who sees it.
    Presence {
        /// The changes.
        changes: Vec<walkie_proto::presence::Change>,
    },
    /// Send `msg` to every session of `users` (receipts, channel lists, contact changes).
    Tell {
        /// The users.
        users: Vec<String>,
        /// The message.
        msg: ServerMsg,
    },
}

/// What the cluster link hands to its relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A notice from another relay.
    Notice(Notice),
    /// The link to the cluster came back after an outage (notices may have been lost).
    Reconnected,
}

/// The relay's view of the other relays it shares a store with.
pub trait Cluster: Send + Sync + 'static {
    /// Takes `channel`'s floor for `clip` of `user`, for at most `hold` unless released. A
    /// retry for the same clip succeeds (and renews the lease).
    fn take_floor(
        &self,
        channel: &str,
        user: &str,
        clip: ClipId,
        hold: Duration,
    ) -> BoxFuture<'static, Result<(), FloorError>>;
    /// Releases `channel`'s floor if `user`'s `clip` holds it (in the background; never blocks).
    fn release_floor(&self, channel: &str, user: &str, clip: ClipId);
    /// Binds clip id `clip` to `user` on every relay while it is uploaded (for at most `hold`
    /// unless released): `Ok(None)` when it is theirs, `Ok(Some(other))` when another user's
    /// upload holds it.
    fn reserve_clip(
        &self,
        clip: ClipId,
        user: &str,
        hold: Duration,
    ) -> BoxFuture<'static, Result<Option<String>, FloorError>>;
    /// Releases `user`'s reservation of `clip` (in the background; never blocks).
    fn release_clip(&self, clip: ClipId, user: &str);
    /// True when other relays may exist: live clips and wake-ups are then published.
    fn spans_relays(&self) -> bool;
    /// Queues a notice for the other relays without waiting; false if it was dropped (the
    /// outgoing queue is full or the link is gone).
    fn publish(&self, notice: Notice) -> bool;
    /// The notices of the other relays; `Some` once, for the relay that owns this link.
    fn incoming(&self) -> Option<mpsc::Receiver<Inbound>>;
    /// How often delivery pumps re-read their inbox without being woken (`None`: only when
    /// woken, which is exact within one relay).
    fn inbox_poll(&self) -> Option<Duration>;
}

/// A relay alone: floors in memory, nobody to tell.
#[derive(Debug, Default)]
pub struct LocalCluster {
    floors: Mutex<Floors>,
    /// Clip ids being uploaded: id -> (sender, uploads of it).
    reserved: Mutex<HashMap<ClipId, (String, u32)>>,
}

impl Cluster for LocalCluster {
    fn take_floor(
        &self,
        channel: &str,
        user: &str,
        clip: ClipId,
        hold: Duration,
    ) -> BoxFuture<'static, Result<(), FloorError>> {
        let result = crate::lock(&self.floors)
            .try_take(channel, user, clip, Instant::now(), hold)
            .map_err(|holder| FloorError::Taken {
                user: holder.user,
                channel: channel.to_string(),
            });
        Box::pin(std::future::ready(result))
    }

    fn release_floor(&self, channel: &str, user: &str, clip: ClipId) {
        crate::lock(&self.floors).release(channel, user, clip);
    }

    fn reserve_clip(
        &self,
        clip: ClipId,
        user: &str,
        _hold: Duration,
    ) -> BoxFuture<'static, Result<Option<String>, FloorError>> {
        // Held until released: an upload task always releases (its guard drops with it).
        let mut map = crate::lock(&self.reserved);
        let held = match map.get_mut(&clip) {
            Some((owner, _)) if owner != user => Some(owner.clone()),
            Some((_, n)) => {
                *n += 1;
                None
            }
            None => {
                map.insert(clip, (user.to_string(), 1));
                None
            }
        };
        Box::pin(std::future::ready(Ok(held)))
    }

    fn release_clip(&self, clip: ClipId, user: &str) {
        let mut map = crate::lock(&self.reserved);
        if let Some((owner, n)) = map.get_mut(&clip)
            && owner == user
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&clip);
            }
        }
    }

    fn spans_relays(&self) -> bool {
        false
    }

    fn publish(&self, _notice: Notice) -> bool {
        true
    }

    fn incoming(&self) -> Option<mpsc::Receiver<Inbound>> {
        None
    }

    fn inbox_poll(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_local_cluster_is_one_talker_per_channel() {
        let c = LocalCluster::default();
        let hold = Duration::from_secs(65);
        let (a, b) = (ClipId([1; 16]), ClipId([2; 16]));
        assert_eq!(c.take_floor("crew", "alice", a, hold).await, Ok(()));
        assert_eq!(
            c.take_floor("crew", "bob", b, hold).await,
            Err(FloorError::Taken {
                user: "alice".into(),
                channel: "crew".into()
            })
        );
        c.release_floor("crew", "alice", a);
        assert_eq!(c.take_floor("crew", "bob", b, hold).await, Ok(()));
        assert!(!c.spans_relays() && c.incoming().is_none() && c.inbox_poll().is_none());
    }

    #[test]
    fn notices_roundtrip_through_postcard() {
        let n = Notice::LivePacket {
            clip: ClipId([7; 16]),
            n: 3,
            data: vec![1, 2, 3],
        };
        let bytes = postcard::to_allocvec(&n).expect("encodes");
        assert_eq!(postcard::from_bytes::<Notice>(&bytes).expect("decodes"), n);
    }
}
