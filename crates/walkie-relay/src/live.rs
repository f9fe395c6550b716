//! Live copies of clips: [`LiveSink`], one recipient session's live stream of a clip being
//! talked; [`RemoteOut`], the same clip published to the other relays of the cluster; and
//! [`run_inbound`], which forwards the other relays' live clips to this relay's sessions and
//! applies their wake-ups and messages (see `cluster.rs` for the protocol).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use bytes::Bytes;
use walkie_net::{DatagramPath, write_frame};
use walkie_proto::clip::ClipId;
use walkie_proto::live::Outgoing;
use walkie_proto::toc::MAX_PACKET_BYTES;
use walkie_proto::wire::{
    DeliverHeader, ErrorCode, ErrorMsg, MAX_STREAM_FRAME, ServerMsg, StreamFrame, encode_frame,
};

use crate::cluster::{Cluster, Inbound, Notice};
use crate::metrics::{Held, Metrics};
use crate::registry::Session;
use crate::shared::Shared;

/// Live clips from other relays followed at once; more are not forwarded live (their
/// recipients get them from their inbox).
const MAX_REMOTE_CLIPS: usize = 4096;
/// Most recipients accepted in one remote live clip.
const MAX_RECIPIENTS: usize = 100_000;

/// A wire-encoded stream frame, shared by every live copy (encoded once per packet, not
/// once per listener), and whether it is the stream's last.
pub(crate) struct Encoded {
    bytes: Bytes,
    last: bool,
    /// When it was made (the packet's arrival), for the fan-out delay.
    at: Instant,
}

impl Encoded {
    /// Encodes `frame` (an end marker or an abort is a stream's last frame).
    pub fn of(frame: &StreamFrame) -> Option<Encoded> {
        let last = matches!(frame, StreamFrame::End { .. } | StreamFrame::Abort(_));
        encode_frame(frame, MAX_STREAM_FRAME).ok().map(|v| Encoded {
            bytes: Bytes::from(v),
            last,
            at: Instant::now(),
        })
    }

    /// Encodes an Opus packet frame.
    pub fn packet(packet: &[u8]) -> Option<Encoded> {
        Encoded::of(&StreamFrame::Packet(packet.to_vec()))
    }

    fn share(&self) -> Encoded {
        Encoded {
            bytes: self.bytes.clone(),
            last: self.last,
            at: self.at,
        }
    }
}

/// The stream id of a live copy not yet opened.
const NOT_OPEN: u64 = u64::MAX;

/// A live copy of a clip going to one recipient session: frames on a stream of its own, and
/// each packet also as a datagram naming that stream, with as many older packets repeated as
/// the recipient's measured loss calls for.
pub(crate) struct LiveSink {
    pub session: Arc<Session>,
    pub tx: Option<mpsc::Sender<Encoded>>,
    task: JoinHandle<bool>,
    /// The id of the stream once it is open.
    stream: Arc<AtomicU64>,
    datagrams: DatagramPath,
}

impl LiveSink {
    /// Opens a stream to `session` and sends `header`; frames pushed later follow it.
    pub fn open(
        session: Arc<Session>,
        header: DeliverHeader,
        queue: usize,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Encoded>(queue.max(1));
        let metrics = metrics.clone();
        let conn = session.conn.clone();
        let stream = Arc::new(AtomicU64::new(NOT_OPEN));
        let opened = stream.clone();
        let datagrams = DatagramPath::new(session.conn.clone(), session.loss.clone());
        let task = tokio::spawn(async move {
            let _listening = Held::new(&metrics.live_listeners);
            let Ok(mut send) = conn.open_uni().await else {
                return false;
            };
            opened.store(send.id().into(), Ordering::Release);
            if write_frame(&mut send, &StreamFrame::Deliver(header), MAX_STREAM_FRAME)
                .await
                .is_err()
            {
                return false;
            }
            let mut ended = false;
            while let Some(frame) = rx.recv().await {
                // An end marker or an abort is the stream's last frame: finish, so it is
                // delivered (a reset would discard it).
                ended = frame.last;
                // The shared bytes go to quinn as they are: no copy per listener.
                let at = frame.at;
                if send.write_chunk(frame.bytes).await.is_err() {
                    return false;
                }
                metrics.fanout_seconds.observe(at.elapsed().as_secs_f64());
            }
            if ended {
                let _ = send.finish();
            } else {
                let _ = send.reset(ErrorCode::BadRequest.quic_code().into());
            }
            ended
        });
        Self {
            session,
            tx: Some(tx),
            task,
            stream,
            datagrams,
        }
    }

    /// Sends a packet as a datagram (once the stream is open: the datagram names it), with
    /// as many older packets repeated as the recipient's measured loss calls for.
    pub fn datagram(&mut self, out: &Outgoing) {
        let stream = self.stream.load(Ordering::Acquire);
        if self.tx.is_some() && stream != NOT_OPEN {
            self.datagrams.send(stream, out);
        }
    }

    /// Queues a frame; a recipient that cannot keep up loses its live copy (it gets the
    /// stored clip from its inbox instead), so a slow reader never grows the relay's memory.
    /// False once the copy is dropped.
    pub fn push(&mut self, frame: &Encoded) -> bool {
        if let Some(tx) = &self.tx
            && tx.try_send(frame.share()).is_err()
        {
            self.tx = None;
            self.task.abort();
        }
        self.tx.is_some()
    }
}

/// Sends `Abort` to every live copy and closes them.
pub(crate) fn abort_live(sinks: &mut [LiveSink], id: ClipId, code: ErrorCode, message: &str) {
    let abort = Encoded::of(&StreamFrame::Abort(ErrorMsg {
        req: None,
        clip: Some(id),
        code,
        message: message.to_string(),
    }));
    for sink in sinks {
        if let Some(abort) = &abort {
            sink.push(abort);
        }
        sink.tx = None;
    }
}

/// Sends the end marker to every live copy and closes them. A session whose copy was
/// dropped is unmarked, so its delivery pump sends the stored clip instead.
pub(crate) fn end_live(sinks: &mut [LiveSink], id: ClipId, packets: u32, samples: u64) {
    let end = Encoded::of(&StreamFrame::End { packets, samples });
    for sink in sinks {
        if let Some(end) = &end {
            sink.push(end);
        }
        if sink.tx.take().is_none() {
            sink.session.take_live_sent(&id);
        }
    }
}

/// The live copy of a clip for the other relays: a no-op when the relay is alone. Once a
/// notice cannot be queued the copy is broken: nothing more is sent but an abort, and the
/// other relays' recipients get the stored clip from their inbox.
pub(crate) struct RemoteOut {
    cluster: Arc<dyn Cluster>,
    id: ClipId,
    next: u32,
    on: bool,
    broken: bool,
}

impl RemoteOut {
    /// Announces the clip to the other relays (when there are recipients and other relays).
    pub fn start(shared: &Shared, header: &DeliverHeader, recipients: &[String]) -> Self {
        let on = shared.cluster.spans_relays() && !recipients.is_empty();
        let mut out = Self {
            cluster: shared.cluster.clone(),
            id: header.id,
            next: 0,
            on,
            broken: false,
        };
        out.send(Notice::LiveStart {
            header: header.clone(),
            recipients: recipients.to_vec(),
        });
        out
    }

    fn send(&mut self, notice: Notice) {
        if self.on && !self.broken && !self.cluster.publish(notice) {
            debug!(clip = %self.id, "the live copy for other relays is broken; they deliver the stored clip");
            self.broken = true;
        }
    }

    /// The next packet.
    pub fn packet(&mut self, data: &[u8]) {
        let n = self.next;
        self.next = self.next.saturating_add(1);
        // No copy of the packet for a notice nobody will send (a relay alone, or a broken copy).
        if self.on && !self.broken {
            self.send(Notice::LivePacket {
                clip: self.id,
                n,
                data: data.to_vec(),
            });
        }
    }

    /// The clip is stored: its end marker.
    pub fn end(&mut self, packets: u32, samples: u64) {
        self.send(Notice::LiveEnd {
            clip: self.id,
            packets,
            samples,
        });
        self.on = false;
    }

    /// The clip is abandoned.
    pub fn abort(&mut self, code: ErrorCode, message: &str) {
        if self.on {
            // Even a broken copy tries to say so, so receivers need not wait for the expiry.
            self.cluster.publish(Notice::LiveAbort {
                clip: self.id,
                error: ErrorMsg {
                    req: None,
                    clip: Some(self.id),
                    code,
                    message: message.to_string(),
                },
            });
        }
        self.on = false;
    }
}

/// A live clip from another relay, forwarded to this relay's sessions.
struct Remote {
    sinks: Vec<LiveSink>,
    recipients: Vec<String>,
    next: u32,
    since: Instant,
}

impl Remote {
    /// Drops the live copies: the sessions' pumps deliver the stored clip (if it is stored).
    fn abort(mut self, id: ClipId, code: ErrorCode, message: &str) {
        abort_live(&mut self.sinks, id, code, message);
    }
}

/// Handles the other relays' notices until the relay shuts down or the link is gone.
pub(crate) async fn run_inbound(shared: Arc<Shared>, mut rx: mpsc::Receiver<Inbound>) {
    let mut live: HashMap<ClipId, Remote> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = shared.shutdown.clone();
    // A clip may last the maximum duration plus the talker's grace; then its end is late.
    let expiry = shared.config.max_hold() + Duration::from_secs(5);
    loop {
        tokio::select! {
            inbound = rx.recv() => match inbound {
                Some(Inbound::Notice(notice)) => handle(&shared, &mut live, notice),
                Some(Inbound::Reconnected) => {
                    // Wake-ups may have been lost while the link was down.
                    for session in shared.registry.all() {
                        session.wake.notify_one();
                    }
                }
                None => break,
            },
            _ = sweep.tick() => {
                let late: Vec<ClipId> = live.iter().filter(|(_, r)| r.since.elapsed() > expiry).map(|(id, _)| *id).collect();
                for id in late {
                    if let Some(r) = live.remove(&id) {
                        debug!(clip = %id, "a live clip from another relay never ended; dropped");
                        r.abort(id, ErrorCode::Timeout, "the talker's relay stopped sending this clip");
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    for (id, r) in live.drain() {
        r.abort(id, ErrorCode::Internal, "the relay is shutting down");
    }
}

fn handle(shared: &Arc<Shared>, live: &mut HashMap<ClipId, Remote>, notice: Notice) {
    match notice {
        Notice::LiveStart { header, recipients } => {
            let id = header.id;
            if !header.live
                || recipients.len() > MAX_RECIPIENTS
                || live.len() >= MAX_REMOTE_CLIPS
                || live.contains_key(&id)
            {
                return;
            }
            let sessions: Vec<Arc<Session>> = recipients
                .iter()
                .flat_map(|r| shared.registry.sessions_of(r))
                .collect();
            if sessions.is_empty() {
                return;
            }
            let sinks: Vec<LiveSink> = sessions
                .into_iter()
                .map(|s| {
                    LiveSink::open(s, header.clone(), shared.config.live_queue, &shared.metrics)
                })
                .collect();
            live.insert(
                id,
                Remote {
                    sinks,
                    recipients,
                    next: 0,
                    since: Instant::now(),
                },
            );
        }
        Notice::LivePacket { clip, n, data } => {
            let Some(r) = live.get_mut(&clip) else { return };
            if n != r.next || data.len() > MAX_PACKET_BYTES {
                if let Some(r) = live.remove(&clip) {
                    r.abort(
                        clip,
                        ErrorCode::Internal,
                        "live packets from the talker's relay were lost",
                    );
                }
                return;
            }
            r.next += 1;
            let Some(frame) = Encoded::packet(&data) else {
                return;
            };
            for sink in &mut r.sinks {
                // Too slow for live: the copy is dropped and the pump sends the stored clip.
                sink.push(&frame);
            }
        }
        Notice::LiveEnd {
            clip,
            packets,
            samples,
        } => {
            let Some(mut r) = live.remove(&clip) else {
                return;
            };
            if packets != r.next {
                r.abort(
                    clip,
                    ErrorCode::Internal,
                    "live packets from the talker's relay were lost",
                );
                return;
            }
            // Marked before the end goes out and before the wake-up that follows this notice,
            // so the pumps skip the stored copy of what their session heard live. (A pump that
            // reads the inbox between the commit and this notice, on its periodic poll, sends
            // the stored copy as well: the client then gets the same clip id twice.)
            for sink in r.sinks.iter().filter(|s| s.tx.is_some()) {
                sink.session.mark_live_sent(clip);
            }
            end_live(&mut r.sinks, clip, packets, samples);
            shared.registry.wake(&r.recipients);
        }
        Notice::LiveAbort { clip, error } => {
            if let Some(r) = live.remove(&clip) {
                r.abort(clip, error.code, &error.message);
            }
        }
        Notice::Wake { users } => shared.registry.wake(&users),
        Notice::Presence { changes } => crate::presence::tell_here(shared, &changes),
        Notice::Tell { users, msg } => {
            shared.registry.tell(&users, &msg);
            // Presence follows a user's channels and contacts wherever they changed.
            match &msg {
                ServerMsg::Channels { channels } => {
                    for user in &users {
                        crate::presence::channels_changed(shared, user, channels.clone());
                    }
                }
                ServerMsg::ContactChanged { .. } => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        crate::presence::contacts_changed(&shared, &users).await
                    });
                }
                _ => {}
            }
        }
    }
}
