//! Delivery to one session: the pump that sends every unacknowledged clip and message from
//! the user's inbox, oldest first, each on its own stream; and fetches of stored files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use walkie_net::write_frame;
use walkie_proto::clip::{ClipId, ClipMeta};
use walkie_proto::message::Content;
use walkie_proto::ogg::{self, OggError};
use walkie_proto::upload::not_readable;
use walkie_proto::wire::{
    DeliverHeader, ErrorCode, ErrorMsg, FILE_CHUNK_BYTES, MAX_STREAM_FRAME, ServerMsg, StreamFrame,
};

use crate::RelayError;
use crate::access::may_read;
use crate::registry::{ControlTx, Session};
use crate::shared::Shared;

const PAGE: usize = 64;

/// Sends the session's inbox, then waits to be woken for more, until the connection ends.
///
/// Each round reads the whole inbox from the start, oldest first, and sends what this
/// session was not sent yet: with a replicated store, a clip committed on another relay (or
/// by a slower commit here) can enter the inbox after a clip with a higher seq, so a cursor
/// that only moves forward could skip it. What was sent stays in the inbox until the client
/// acknowledges it; the set of sent clips is trimmed to the inbox after every full read.
pub(crate) async fn pump(shared: Arc<Shared>, session: Arc<Session>) {
    // Each clip sent, and whether it was sent as recalled: an item recalled after it was sent
    // (its inbox entry unacknowledged, or queued again) is sent once more, as recalled.
    let mut sent: HashMap<ClipId, bool> = HashMap::new();
    loop {
        let mut after = 0u64;
        let mut inbox: HashSet<ClipId> = HashSet::new();
        let complete = loop {
            let key = session.inbox.clone();
            let page = match shared.store(move |s| s.pending(&key, after, PAGE)).await {
                Ok(page) => page,
                Err(e) => {
                    warn!(user = %session.user, "cannot read inbox: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    break false;
                }
            };
            let mut sent_now = Vec::new();
            for meta in &page {
                after = after.max(meta.seq);
                inbox.insert(meta.id);
                let recalled = meta.content == Content::Recalled;
                if sent.insert(meta.id, recalled) == Some(recalled)
                    || (!recalled && session.take_live_sent(&meta.id))
                {
                    continue;
                }
                match send_stored(&shared, &session, meta).await {
                    Ok(()) => sent_now.push(meta.id),
                    // The connection is gone: this session's delivery ends.
                    Err(e @ (SendError::Net(_) | SendError::Conn(_))) => {
                        debug!(user = %session.user, clip = %meta.id, "delivery stopped: {e}");
                        return;
                    }
                    // One unreadable clip must not hold up the rest; it stays in the inbox.
                    Err(e) => {
                        warn!(user = %session.user, clip = %meta.id, "cannot deliver a stored clip: {e}")
                    }
                }
            }
            tell_played_elsewhere(&shared, &session, &sent_now).await;
            if page.len() < PAGE {
                break true;
            }
        };
        if !complete {
            continue;
        }
        sent.retain(|id, _| inbox.contains(id));
        match shared.cluster.inbox_poll() {
            // Other relays' wake-ups travel over the network and may be lost: look again
            // now and then even without one.
            Some(every) => {
                let _ = tokio::time::timeout(every, session.wake.notified()).await;
            }
            None => session.wake.notified().await,
        }
    }
}

/// For a user with several devices: which of the clips just delivered from the inbox they
/// already played on another device, so this one shows them played.
async fn tell_played_elsewhere(shared: &Shared, session: &Session, delivered: &[ClipId]) {
    if delivered.is_empty()
        || !shared
            .delivery_keys(std::slice::from_ref(&session.user))
            .await
            .is_ok_and(|k| k.len() > 1)
    {
        return;
    }
    let user = session.user.clone();
    let Ok(played) = shared.store(move |s| crate::people::played(s, &user)).await else {
        return;
    };
    for id in delivered
        .iter()
        .filter(|id| played.contains(&id.to_string()))
    {
        let _ = session.control.try_send(
            ServerMsg::PlayedBy {
                id: *id,
                user: session.user.clone(),
            }
            .into(),
        );
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error(transparent)]
    Net(#[from] walkie_net::NetError),
    #[error("stored clip is unreadable: {0}")]
    Ogg(#[from] OggError),
    #[error("connection lost: {0}")]
    Conn(#[from] quinn::ConnectionError),
    #[error("the client read nothing for {} s", FETCH_STALL.as_secs())]
    Stalled,
}

async fn load_audio(shared: &Shared, id: ClipId) -> Result<Vec<u8>, RelayError> {
    shared.store(move |s| s.clip_audio(&id)).await
}

async fn send_stored(shared: &Shared, session: &Session, meta: &ClipMeta) -> Result<(), SendError> {
    let header = DeliverHeader {
        id: meta.id,
        from: meta.from.clone(),
        to: meta.to.clone(),
        started_at_ms: meta.started_at_ms,
        codec: meta.codec,
        live: false,
        seq: meta.seq,
        content: meta.content,
    };
    if !meta.content.is_voice() {
        return send_message(shared, session, header).await;
    }
    let ogg = load_audio(shared, meta.id).await?;
    let parsed = ogg::read_ogg(&ogg)?;
    let mut send = session.conn.open_uni().await?;
    write_frame(&mut send, &StreamFrame::Deliver(header), MAX_STREAM_FRAME).await?;
    let packets = parsed.packets.len() as u32;
    for p in parsed.packets {
        write_frame(&mut send, &StreamFrame::Packet(p), MAX_STREAM_FRAME).await?;
    }
    write_frame(
        &mut send,
        &StreamFrame::End {
            packets,
            samples: parsed.samples,
        },
        MAX_STREAM_FRAME,
    )
    .await?;
    let _ = send.finish();
    Ok(())
}

/// Sends a stored message: its header, its payload in chunks (none for a recalled one), and
/// the end marker with the chunk count.
/// The payload is streamed from the store a part at a time, as a fetch is: a picture sent to a
/// big channel is never held whole once per recipient.
async fn send_message(
    shared: &Shared,
    session: &Session,
    header: DeliverHeader,
) -> Result<(), SendError> {
    let id = header.id;
    let first = match header.content {
        Content::Recalled => Vec::new(),
        _ => {
            shared
                .store(move |s| s.clip_audio_part(&id, 0, READ_PART))
                .await?
        }
    };
    let mut send = session.conn.open_uni().await?;
    write_frame(&mut send, &StreamFrame::Deliver(header), MAX_STREAM_FRAME).await?;
    let chunks = write_chunks(shared, &mut send, id, first, false).await?;
    write_frame(
        &mut send,
        &StreamFrame::End {
            packets: chunks,
            samples: 0,
        },
        MAX_STREAM_FRAME,
    )
    .await?;
    let _ = send.finish();
    Ok(())
}

/// Writes a stored file as chunk frames, `first` (its first part, read already) and then the
/// rest read from the store [`READ_PART`] at a time; with `stall`, each write gives up after
/// [`FETCH_STALL`] without progress. Returns how many chunks were written.
async fn write_chunks(
    shared: &Shared,
    send: &mut quinn::SendStream,
    id: ClipId,
    first: Vec<u8>,
    stall: bool,
) -> Result<u32, SendError> {
    let (mut part, mut offset, mut chunks) = (first, 0u64, 0u32);
    while !part.is_empty() {
        offset += part.len() as u64;
        let last = part.len() < READ_PART;
        for chunk in part.chunks(FILE_CHUNK_BYTES) {
            let frame = StreamFrame::Chunk(chunk.to_vec());
            let write = write_frame(send, &frame, MAX_STREAM_FRAME);
            if stall {
                stalled(write).await??
            } else {
                write.await?
            }
            chunks += 1;
        }
        if last {
            break;
        }
        part = shared
            .store(move |s| s.clip_audio_part(&id, offset, READ_PART))
            .await?;
    }
    Ok(chunks)
}

/// Fetches one session may have running at once; further fetch requests wait their turn
/// (the session's control stream is not read meanwhile).
pub(crate) const MAX_FETCHES: usize = 4;
/// A fetch whose stream makes no progress for this long (the client reads nothing) ends.
const FETCH_STALL: Duration = Duration::from_secs(10);
/// Bytes of a file read from the store at a time (sent as several chunk frames).
const READ_PART: usize = 8 * FILE_CHUNK_BYTES;

/// Answers a fetch: checks the user may read the clip, then streams its stored file from the
/// store part by part (never whole in memory), giving up when the client stops reading.
pub(crate) async fn fetch(
    shared: Arc<Shared>,
    session: Arc<Session>,
    req: u64,
    id: ClipId,
    tx: ControlTx,
) {
    let fail = |code: ErrorCode, message: String| {
        ServerMsg::Error(ErrorMsg {
            req: Some(req),
            clip: Some(id),
            code,
            message,
        })
    };
    let meta = match shared.store(move |s| s.clip(&id)).await {
        Ok(Some(meta)) => meta,
        Ok(None) => {
            answer(
                &shared,
                &tx,
                fail(ErrorCode::NotFound, not_readable(id).message),
            )
            .await;
            return;
        }
        Err(e) => {
            answer(
                &shared,
                &tx,
                ServerMsg::Error(e.to_wire(Some(req), Some(id))),
            )
            .await;
            return;
        }
    };
    if !may_read(&shared, &session.user, &meta).await {
        // Same answer as for a missing clip, so ids cannot be probed.
        answer(
            &shared,
            &tx,
            fail(ErrorCode::NotFound, not_readable(id).message),
        )
        .await;
        return;
    }
    let result = stream_file(&shared, &session, req, &meta).await;
    match result {
        Ok(()) => {}
        Err(SendError::Relay(RelayError::Store(walkie_store::StoreError::NotFound { .. }))) => {
            answer(
                &shared,
                &tx,
                fail(
                    ErrorCode::NotFound,
                    format!("the audio of clip {id} was deleted"),
                ),
            )
            .await;
        }
        Err(SendError::Stalled) => {
            debug!(user = %session.user, clip = %id, "fetch stalled: the client reads nothing");
            answer(
                &shared,
                &tx,
                fail(
                    ErrorCode::Timeout,
                    format!(
                        "clip {id} was not read for {} s; the fetch ended",
                        FETCH_STALL.as_secs()
                    ),
                ),
            )
            .await;
        }
        Err(e) => {
            answer(
                &shared,
                &tx,
                fail(ErrorCode::Storage, format!("cannot send clip {id}: {e}")),
            )
            .await;
        }
    }
}

/// Sends `meta`'s file on a new stream, one chunk read from the store at a time.
async fn stream_file(
    shared: &Shared,
    session: &Session,
    req: u64,
    meta: &ClipMeta,
) -> Result<(), SendError> {
    let id = meta.id;
    let first = shared
        .store(move |s| s.clip_audio_part(&id, 0, READ_PART))
        .await?;
    let mut send = stalled(session.conn.open_uni()).await??;
    let sent: Result<(), SendError> = async {
        stalled(write_frame(
            &mut send,
            &StreamFrame::File {
                req,
                meta: meta.clone(),
            },
            MAX_STREAM_FRAME,
        ))
        .await??;
        write_chunks(shared, &mut send, id, first, true).await?;
        stalled(write_frame(
            &mut send,
            &StreamFrame::End {
                packets: meta.packets,
                samples: 0,
            },
            MAX_STREAM_FRAME,
        ))
        .await??;
        Ok(())
    }
    .await;
    match sent {
        Ok(()) => {
            let _ = send.finish();
            Ok(())
        }
        Err(e) => {
            // The client must not take a partial file for a whole one.
            let _ = send.reset(ErrorCode::Timeout.quic_code().into());
            Err(e)
        }
    }
}

/// How long an answer waits for room in the session's control queue.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Sends a fetch's answer on the session's control queue, waiting a bounded time for room:
/// a client that reads nothing for that long loses it (counted and logged), so a fetch task
/// never waits forever on a client that does not read.
async fn answer(shared: &Shared, tx: &ControlTx, msg: ServerMsg) {
    if let Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) =
        tx.send_timeout(msg.into(), ANSWER_WAIT).await
    {
        shared.metrics.answers_dropped.inc();
        warn!("a fetch's answer was dropped: the client read nothing for {ANSWER_WAIT:?}");
    }
}

/// `step`, unless it makes no progress for [`FETCH_STALL`].
async fn stalled<T>(step: impl std::future::Future<Output = T>) -> Result<T, SendError> {
    tokio::time::timeout(FETCH_STALL, step)
        .await
        .map_err(|_| SendError::Stalled)
}
