//! Where what the relay sends goes: replies to the request or upload waiting for them, and
//! everything else as [`Event`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use walkie_proto::clip::{ClipId, ClipMeta};
use walkie_proto::received::{LivePacket, ReceivedClip, ReceivedMessage};
use walkie_proto::wire::{ContactEntry, DeliverHeader, ErrorMsg, ServerMsg};

/// Something the relay pushed.
#[derive(Debug)]
pub enum Event {
    /// A live clip started (its packets are arriving).
    LiveStarted(DeliverHeader),
    /// A packet of a live clip, as it arrives (before the clip ends): from the clip's stream
    /// in order, and from datagrams in any order and maybe twice.
    LivePacket(ClipId, LivePacket),
    /// A clip arrived completely and is stored at the relay.
    Clip(ReceivedClip),
    /// A message (text, picture, doodle) arrived, or one was recalled (its content says
    /// [`walkie_proto::message::Content::Recalled`]).
    Message(ReceivedMessage),
    /// A live clip was abandoned by its sender or the relay.
    Aborted(ErrorMsg),
    /// The relay reported an error not tied to a request.
    Error(ErrorMsg),
    /// The channels you are a member of (once, after connecting).
    Channels(Vec<String>),
    /// Who among the people you share a channel with is online now.
    Online(Vec<String>),
    /// Someone came online (`true`) or went offline.
    Presence(String, bool),
    /// A recipient played one of your clips.
    PlayedBy(ClipId, String),
    /// Someone's relation to you changed: they asked, accepted, or removed you.
    ContactChanged(ContactEntry),
}

pub(crate) enum Reply {
    History(Vec<ClipMeta>),
    File(ClipMeta, Vec<u8>),
    /// The answer to a people request (profile, profiles, contacts, groups).
    People(ServerMsg),
    Error(ErrorMsg),
}

/// Where an upload's outcome goes: `(seq, duplicate)` or the relay's refusal.
type UploadWaiter = oneshot::Sender<Result<(u64, bool), ErrorMsg>>;

/// Where replies go, by request id or clip id.
#[derive(Default)]
pub(crate) struct Waiters {
    pub(crate) requests: HashMap<u64, oneshot::Sender<Reply>>,
    pub(crate) uploads: HashMap<ClipId, UploadWaiter>,
    /// The relay's figure for the loss to each live upload's listeners, in permille (only
    /// for uploads in progress).
    pub(crate) listeners_loss: HashMap<ClipId, u16>,
}

pub(crate) type SharedWaiters = Arc<Mutex<Waiters>>;

pub(crate) fn lock(w: &SharedWaiters) -> MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}
