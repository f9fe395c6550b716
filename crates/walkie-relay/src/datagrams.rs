//! A session's incoming live datagrams: routed by the id of the clip stream they name to the
//! upload task of that clip ([`Routes`]), read by one task per connection that is started by
//! the session's first live upload (a listener that never talks costs nothing here).
//!
//! Datagrams are unreliable and bounded at every step: quinn keeps at most the transport's
//! datagram receive buffer per connection (older ones are dropped), the reader drops what
//! does not decode or names no upload of this session, and each upload's queue is short and
//! never waited on (a full queue drops the datagram: the stream still carries the packet).
//! A datagram for a stream not known yet waits a moment, in a short queue, for the stream's
//! first frame (which may be lost and retransmitted while datagrams flow).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use walkie_proto::wire::LiveDatagram;

use crate::shared::lock;

/// Datagrams queued for one upload before newer ones are dropped (200 ms of packets).
const QUEUE: usize = 10;
/// Datagrams kept for a stream not known yet (its first frame is still on its way, lost and
/// being retransmitted): at most this many, for at most [`PENDING_AGE`].
const PENDING: usize = 32;
/// How long a datagram waits for its stream to be known.
const PENDING_AGE: Duration = Duration::from_secs(1);

/// Where a session's datagrams go: one queue per clip stream being uploaded live.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    uploads: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    /// Recent datagrams naming no upload yet: `(when, stream, bytes)`.
    pending: Mutex<VecDeque<(Instant, u64, Bytes)>>,
    reading: AtomicBool,
}

/// An upload's queue of datagrams; unrouted when dropped.
pub(crate) struct Route {
    routes: Arc<Routes>,
    stream: u64,
    /// Datagrams naming this upload's stream.
    pub rx: mpsc::Receiver<Bytes>,
}

impl Drop for Route {
    fn drop(&mut self) {
        lock(&self.routes.uploads).remove(&self.stream);
    }
}

impl Routes {
    /// Routes datagrams naming `stream` on `conn` to the returned queue, starting the
    /// connection's datagram reader if it is not running yet.
    pub fn open(self: &Arc<Self>, conn: &quinn::Connection, stream: u64) -> Route {
        let (tx, rx) = mpsc::channel(QUEUE);
        // What came ahead of the stream's first frame goes first.
        {
            let mut pending = lock(&self.pending);
            pending.retain(|(at, s, bytes)| {
                if *s == stream && at.elapsed() <= PENDING_AGE {
                    let _ = tx.try_send(bytes.clone());
                }
                *s != stream
            });
        }
        lock(&self.uploads).insert(stream, tx);
        if !self.reading.swap(true, Ordering::AcqRel) {
            tokio::spawn(read(Arc::downgrade(self), conn.clone()));
        }
        Route {
            routes: self.clone(),
            stream,
            rx,
        }
    }
}

/// Reads the connection's datagrams until it closes (or the session is gone).
async fn read(routes: std::sync::Weak<Routes>, conn: quinn::Connection) {
    while let Ok(bytes) = conn.read_datagram().await {
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let Ok(datagram) = LiveDatagram::decode(&bytes) else {
            continue;
        };
        let tx = lock(&routes.uploads).get(&datagram.stream).cloned();
        match tx {
            Some(tx) => {
                let _ = tx.try_send(bytes);
            }
            None => {
                let mut pending = lock(&routes.pending);
                if pending.len() == PENDING {
                    pending.pop_front();
                }
                pending.push_back((Instant::now(), datagram.stream, bytes));
            }
        }
    }
}
