//! Incoming streams from the relay: delivered clips (live or from the inbox), messages (from
//! the inbox) and fetched files. Inbox clips are read one after another so they arrive oldest
//! first; live clips and fetched files are read beside them, so a long live clip never holds
//! up the rest and an application slow to take its events still gets its fetches. A live clip is known by
//! its id while it is talked: a second live stream under an id already live is not heard, so
//! nobody's packets are ever mixed into another's clip.
//!
//! A live clip's packets also come as datagrams naming the clip's stream: [`read_datagrams`]
//! turns those of a stream being read into events beside the stream's own copies (the
//! player takes whichever copy of a packet comes first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use walkie_net::read_frame;
use walkie_proto::clip::ClipId;
use walkie_proto::message::{Content, MAX_STORED_PAYLOAD};
use walkie_proto::received::{LivePacket, ReceivedClip, ReceivedMessage, Via};
use walkie_proto::wire::{
    DeliverHeader, ErrorCode, ErrorMsg, LiveDatagram, MAX_STREAM_FRAME, StreamFrame,
};

use crate::routing::{Event, Reply, SharedWaiters, lock};

/// Largest fetched file accepted (a 60 s clip at 510 kb/s is under 4 MiB).
const MAX_FILE_BYTES: usize = 16 << 20;
/// Most packets accepted in one delivered clip (10 minutes of 10 ms frames).
const MAX_PACKETS: usize = 60_000;

/// The live clips being read, by the id of their stream (what their datagrams name), and
/// the datagrams that came ahead of their stream's header.
#[derive(Default)]
pub(crate) struct LiveStreamMap {
    clips: HashMap<u64, ClipId>,
    /// `(when, stream, packets)` for streams not known yet: at most [`PENDING`], for at most
    /// [`PENDING_AGE`].
    pending: VecDeque<(Instant, u64, Vec<LivePacket>)>,
}

/// Datagrams kept for a stream whose header has not arrived (it may be lost and on its way
/// again while the datagrams flow).
const PENDING: usize = 64;
/// How long such a datagram waits.
const PENDING_AGE: Duration = Duration::from_secs(1);

pub(crate) type LiveStreams = Arc<Mutex<LiveStreamMap>>;

fn live_lock(m: &LiveStreams) -> std::sync::MutexGuard<'_, LiveStreamMap> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Turns the connection's live datagrams into packet events until it closes. A datagram for
/// a stream that is not (or no longer) a live clip being read is dropped.
pub(crate) async fn read_datagrams(
    conn: quinn::Connection,
    streams: LiveStreams,
    events: mpsc::Sender<Event>,
) {
    while let Ok(bytes) = conn.read_datagram().await {
        let Ok(datagram) = LiveDatagram::decode(&bytes) else {
            continue;
        };
        let packets: Vec<LivePacket> = datagram
            .packets()
            .iter()
            .enumerate()
            .map(|(k, &(index, data))| LivePacket {
                index,
                data: data.to_vec(),
                via: if k == 0 { Via::Datagram } else { Via::Repeat },
            })
            .collect();
        let id = {
            let mut map = live_lock(&streams);
            match map.clips.get(&datagram.stream).copied() {
                Some(id) => id,
                None => {
                    if map.pending.len() == PENDING {
                        map.pending.pop_front();
                    }
                    map.pending
                        .push_back((Instant::now(), datagram.stream, packets));
                    continue;
                }
            }
        };
        for packet in packets {
            if events.send(Event::LivePacket(id, packet)).await.is_err() {
                return;
            }
        }
    }
}

pub(crate) async fn accept_streams(
    conn: quinn::Connection,
    waiters: SharedWaiters,
    events: mpsc::Sender<Event>,
    streams: LiveStreams,
) {
    // Nothing here waits for the application to take its events: inbox items go to their
    // own reader (in order; it waits for the application), live clips and fetched files
    // are read beside. An application slow to take events must not hold up the reply to
    // its own fetch. What queues is bounded by the streams the relay may have open at once
    // (QUIC stream credit), never by what the relay sends over time.
    let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
    let mut beside = tokio::task::JoinSet::new();
    beside.spawn(read_inbox(inbox_rx, events.clone()));
    let talking: Arc<Mutex<HashSet<ClipId>>> = Arc::default();
    while let Ok(mut recv) = conn.accept_uni().await {
        while beside.try_join_next().is_some() {}
        let first = read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME).await;
        match first {
            Ok(Some(StreamFrame::Deliver(header))) if header.live => {
                if !talking
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(header.id)
                {
                    // The id is live already (from whoever came first): not heard twice.
                    let _ = recv.stop(1u32.into());
                    continue;
                }
                let stream = u64::from(recv.id());
                let early: Vec<LivePacket> = {
                    let mut map = live_lock(&streams);
                    map.clips.insert(stream, header.id);
                    let mut early = Vec::new();
                    map.pending.retain_mut(|(at, s, packets)| {
                        if *s == stream && at.elapsed() <= PENDING_AGE {
                            early.append(packets);
                        }
                        *s != stream
                    });
                    early
                };
                let (talking, events, streams) = (talking.clone(), events.clone(), streams.clone());
                beside.spawn(async move {
                    let id = header.id;
                    let _ = events.send(Event::LiveStarted(header.clone())).await;
                    for packet in early {
                        let _ = events.send(Event::LivePacket(id, packet)).await;
                    }
                    read_clip(recv, header, events, true).await;
                    live_lock(&streams).clips.remove(&stream);
                    talking
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                });
            }
            Ok(Some(StreamFrame::Deliver(header))) => {
                // The inbox reader is gone only when the events' receiver is: nobody listens.
                if inbox_tx.send((recv, header)).is_err() {
                    return;
                }
            }
            Ok(Some(StreamFrame::File { req, meta })) => {
                let waiters = waiters.clone();
                beside.spawn(async move {
                    let reply = match read_file(&mut recv).await {
                        Ok(bytes) => Reply::File(meta, bytes),
                        Err(message) => Reply::Error(ErrorMsg {
                            req: Some(req),
                            clip: None,
                            code: ErrorCode::BadRequest,
                            message,
                        }),
                    };
                    if let Some(tx) = lock(&waiters).requests.remove(&req) {
                        let _ = tx.send(reply);
                    }
                });
            }
            _ => {
                let _ = recv.stop(1u32.into());
            }
        }
    }
}

/// Reads the inbox's clips and messages one after another, oldest first, each handed to the
/// application before the next is read.
async fn read_inbox(
    mut inbox: mpsc::UnboundedReceiver<(quinn::RecvStream, DeliverHeader)>,
    events: mpsc::Sender<Event>,
) {
    let mut seen = HashSet::new();
    while let Some((recv, header)) = inbox.recv().await {
        if events.is_closed() {
            return;
        }
        if !header.content.is_voice() {
            // A recalled message comes again under an id already seen: it replaces what was
            // shown.
            let recalled = header.content == Content::Recalled;
            if seen.insert(header.id) || recalled {
                read_message(recv, header, events.clone()).await;
            }
        } else if seen.insert(header.id) {
            // The relay may resend a clip it delivered live moments ago.
            read_clip(recv, header, events.clone(), false).await;
        }
    }
}

async fn read_clip(
    mut recv: quinn::RecvStream,
    header: DeliverHeader,
    events: mpsc::Sender<Event>,
    live: bool,
) {
    let mut packets = Vec::new();
    loop {
        match read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME).await {
            Ok(Some(StreamFrame::Packet(p))) if packets.len() < MAX_PACKETS => {
                if live {
                    let packet = LivePacket {
                        index: packets.len() as u32,
                        data: p.clone(),
                        via: Via::Stream,
                    };
                    let _ = events.send(Event::LivePacket(header.id, packet)).await;
                }
                packets.push(p);
            }
            Ok(Some(StreamFrame::End { samples, .. })) => {
                let clip = ReceivedClip {
                    header,
                    packets,
                    samples,
                };
                let _ = events.send(Event::Clip(clip)).await;
                return;
            }
            Ok(Some(StreamFrame::Abort(e))) => {
                let _ = events.send(Event::Aborted(e)).await;
                return;
            }
            // A stream reset or a malformed clip: the relay still has it in our inbox.
            _ => return,
        }
    }
}

async fn read_message(
    mut recv: quinn::RecvStream,
    header: DeliverHeader,
    events: mpsc::Sender<Event>,
) {
    let mut payload = Vec::new();
    let mut chunks = 0u32;
    loop {
        match read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME).await {
            Ok(Some(StreamFrame::Chunk(c))) if payload.len() + c.len() <= MAX_STORED_PAYLOAD => {
                payload.extend_from_slice(&c);
                chunks += 1;
            }
            Ok(Some(StreamFrame::End { packets, .. })) if packets == chunks => {
                let message = ReceivedMessage { header, payload };
                // A payload that does not match its description is not shown (the relay
                // still has it in our inbox).
                if message.parts().is_ok() {
                    let _ = events.send(Event::Message(message)).await;
                }
                return;
            }
            // Too large, reset, malformed: the relay still has it in our inbox.
            _ => {
                let _ = recv.stop(1u32.into());
                return;
            }
        }
    }
}

async fn read_file(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    loop {
        match read_frame::<StreamFrame>(recv, MAX_STREAM_FRAME).await {
            Ok(Some(StreamFrame::Chunk(c))) if bytes.len() + c.len() <= MAX_FILE_BYTES => {
                bytes.extend_from_slice(&c)
            }
            Ok(Some(StreamFrame::End { .. })) => return Ok(bytes),
            Ok(Some(StreamFrame::Chunk(_))) => {
                return Err(format!("the file is larger than {MAX_FILE_BYTES} bytes"));
            }
            Ok(other) => return Err(format!("unexpected frame in a file stream: {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
}
