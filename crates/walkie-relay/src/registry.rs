//! Who is online: the sessions of each user, how to wake their delivery pumps, and which
//! clips each session already received live (so the pump does not send them twice).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};
use walkie_proto::clip::ClipId;
use walkie_proto::wire::{ErrorMsg, ServerMsg};

/// Sends replies on a session's control stream from any task.
pub(crate) type ControlTx = mpsc::Sender<Outgoing>;

/// What a session's control-stream writer sends: a message, or a message already encoded as
/// a frame (a presence batch is encoded once for all its recipients).
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// Encoded by the writer.
    Msg(ServerMsg),
    /// A whole frame (length prefix included), shared.
    Frame(bytes::Bytes),
}

impl From<ServerMsg> for Outgoing {
    fn from(msg: ServerMsg) -> Self {
        Outgoing::Msg(msg)
    }
}

/// One authenticated connection: the only thing called a session in walkie.
#[derive(Debug)]
pub struct Session {
    /// Unique per relay process.
    pub id: u64,
    /// The authenticated user.
    pub user: String,
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Wakes the delivery pump when the user's inbox grows.
    pub wake: Notify,
    /// The session's control-stream writer.
    pub control: ControlTx,
    /// The hash of the token the session authenticated with: when the user's stored token
    /// changes, the session ends.
    pub credential: walkie_store::TokenHash,
    /// Which of the user's other devices this is (`None`: the first, whose token is the
    /// user's own).
    pub device: Option<String>,
    /// The inbox this session is delivered from (the user's, or its device's own).
    pub inbox: String,
    live_sent: Mutex<HashSet<ClipId>>,
    /// Where the session's live datagrams go.
    pub datagrams: Arc<crate::datagrams::Routes>,
    /// The loss on the way to this session's client, for the repeats of its live copies.
    pub loss: walkie_net::PathLoss,
}

impl Session {
    /// Remembers that this session received `id` completely while it was live.
    pub fn mark_live_sent(&self, id: ClipId) {
        lock(&self.live_sent).insert(id);
    }

    /// True (once) if `id` was already delivered live to this session.
    pub fn take_live_sent(&self, id: &ClipId) -> bool {
        lock(&self.live_sent).remove(id)
    }

    /// Closes the connection with an error the client reads typed (see
    /// [`walkie_proto::wire::close_reason`]).
    pub fn close(&self, error: &ErrorMsg) {
        close(&self.conn, error);
    }
}

/// Closes `conn` with `error`: its QUIC code, and the error itself as the reason bytes.
pub(crate) fn close(conn: &quinn::Connection, error: &ErrorMsg) {
    conn.close(
        error.code.quic_code().into(),
        &walkie_proto::wire::close_reason(error),
    );
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent (single inserts and
    // removes), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// All online sessions by user.
#[derive(Debug, Default)]
pub struct Registry {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<String, Vec<Arc<Session>>>>,
}

impl Registry {
    /// Adds a session for `user`.
    pub fn register(
        &self,
        user: &str,
        credential: walkie_store::TokenHash,
        device: Option<String>,
        conn: quinn::Connection,
        control: ControlTx,
    ) -> Arc<Session> {
        let loss = walkie_net::PathLoss::new(&conn);
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.to_string(),
            conn,
            wake: Notify::new(),
            control,
            credential,
            inbox: match &device {
                Some(d) => format!("{user}/{d}"),
                None => user.to_string(),
            },
            device,
            live_sent: Mutex::new(HashSet::new()),
            datagrams: Arc::default(),
            loss,
        });
        let mut map = lock(&self.sessions);
        let list = map.entry(user.to_string()).or_default();
        list.push(session.clone());
        session
    }

    /// Removes a session.
    pub fn unregister(&self, session: &Session) {
        let mut map = lock(&self.sessions);
        let Some(list) = map.get_mut(&session.user) else {
            return;
        };
        list.retain(|s| s.id != session.id);
        if list.is_empty() {
            map.remove(&session.user);
        }
    }

    /// Sends `msg` to every session of `users` (best effort: a full queue drops it).
    pub fn tell(&self, users: &[String], msg: &ServerMsg) {
        self.send_each(users, Outgoing::Msg(msg.clone()));
    }

    /// Sends one encoded frame to every session of `users` (best effort, as [`Registry::tell`]).
    pub fn tell_frame(&self, users: &[String], frame: &bytes::Bytes) {
        self.send_each(users, Outgoing::Frame(frame.clone()));
    }

    fn send_each(&self, users: &[String], out: Outgoing) {
        let map = lock(&self.sessions);
        for s in users.iter().filter_map(|u| map.get(u)).flatten() {
            let _ = s.control.try_send(out.clone());
        }
    }

    /// Online sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> Vec<Arc<Session>> {
        lock(&self.sessions).get(user).cloned().unwrap_or_default()
    }

    /// Wakes the delivery pumps of these users.
    pub fn wake(&self, users: &[String]) {
        let map = lock(&self.sessions);
        for user in users {
            for s in map.get(user).into_iter().flatten() {
                s.wake.notify_one();
            }
        }
    }

    /// Every online session (for shutdown).
    pub fn all(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).values().flatten().cloned().collect()
    }
}
