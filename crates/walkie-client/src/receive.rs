//! Incoming streams from the relay: delivered clips (live or from the inbox), messages (from
//! the inbox) and fetched files. Inbox clips are read one after another so they arrive oldest first; live clips
//! are read beside them so a long live clip never holds up the rest. A live clip is known by
//! its id while it is talked: a second live stream under an id already live is not heard, so
//! nobody's packets are ever mixed into another's clip.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use walkie_net::read_frame;
use walkie_proto::clip::ClipId;
use walkie_proto::message::{Content, MAX_STORED_PAYLOAD};
use walkie_proto::received::{ReceivedClip, ReceivedMessage};
use walkie_proto::wire::{DeliverHeader, ErrorCode, ErrorMsg, MAX_STREAM_FRAME, StreamFrame};

use crate::routing::{Event, Reply, SharedWaiters, lock};

/// Largest fetched file accepted (a 60 s clip at 510 kb/s is under 4 MiB).
const MAX_FILE_BYTES: usize = 16 << 20;
/// Most packets accepted in one delivered clip (10 minutes of 10 ms frames).
const MAX_PACKETS: usize = 60_000;

pub(crate) async fn accept_streams(
    conn: quinn::Connection,
    waiters: SharedWaiters,
    events: mpsc::Sender<Event>,
) {
    let mut seen = HashSet::new();
    let mut live = tokio::task::JoinSet::new();
    let talking: Arc<Mutex<HashSet<ClipId>>> = Arc::default();
    while let Ok(mut recv) = conn.accept_uni().await {
        while live.try_join_next().is_some() {}
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
                let _ = events.send(Event::LiveStarted(header.clone())).await;
                let talking = talking.clone();
                let events = events.clone();
                live.spawn(async move {
                    let id = header.id;
                    read_clip(recv, header, events, true).await;
                    talking
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                });
            }
            Ok(Some(StreamFrame::Deliver(header))) if !header.content.is_voice() => {
                // Messages come from the inbox only, in order with clips. A recalled one comes
                // again under an id already seen: it replaces what was shown.
                let recalled = header.content == Content::Recalled;
                if seen.insert(header.id) || recalled {
                    read_message(recv, header, events.clone()).await;
                }
            }
            Ok(Some(StreamFrame::Deliver(header))) => {
                // Inbox clips: in order. The relay may resend one it delivered live moments ago.
                if seen.insert(header.id) {
                    read_clip(recv, header, events.clone(), false).await;
                }
            }
            Ok(Some(StreamFrame::File { req, meta })) => {
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
            }
            _ => {
                let _ = recv.stop(1u32.into());
            }
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
                    let _ = events.send(Event::LivePacket(header.id, p.clone())).await;
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
