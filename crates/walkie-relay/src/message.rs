//! One uploaded message (text, picture, doodle), carried out: the same checks as a clip's
//! (who may send there, the id bound to its sender, the rate limit, the quota), the payload
//! read in chunks up to its kind's cap, then checked and made safe off the async threads
//! (pictures decoded and encoded again, doodles drawn), one at a time per relay, and
//! committed as a clip is: acknowledged only once durable, then pushed from the recipients'
//! inboxes.

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};
use walkie_net::{FrameReader, NetError};
use walkie_proto::assemble::Refusal;
use walkie_proto::clip::{ClipMeta, CodecParams, now_ms, validate_name};
use walkie_proto::message::{
    Admission, Content, Kind, MessageAssembler, MessageHeader, admission, check_text,
};
use walkie_proto::upload::not_readable;
use walkie_proto::wire::{ErrorCode, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use walkie_store::{CommitOutcome, StoreError};

use crate::RelayError;
use crate::registry::{ControlTx, Session};
use crate::shared::{Shared, lock};
use crate::upload::check_send;

/// Runs one message stream from `session` to its end: the sender gets `ClipStored` or a
/// refusal naming the message.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    mut recv: FrameReader,
    tx: &ControlTx,
    header: MessageHeader,
) {
    let id = header.id;
    match receive(shared, session, &mut recv, header).await {
        Ok(Some((seq, duplicate))) => {
            let _ = recv.stream().stop(0u32.into());
            let _ = tx
                .send(ServerMsg::ClipStored { id, seq, duplicate }.into())
                .await;
        }
        Ok(None) => debug!(user = %session.user, message = %id, "message cancelled"),
        Err(refusal) => {
            debug!(user = %session.user, message = %id, "message refused: {}", refusal.message);
            let _ = recv.stream().stop(1u32.into());
            // Never waits for a client that does not read its control stream.
            let _ = tx.try_send(ServerMsg::Error(refusal.to_wire(id)).into());
        }
    }
}

/// The message's `(seq, duplicate)` once stored, `None` if the sender cancelled it.
async fn receive(
    shared: &Shared,
    session: &Session,
    recv: &mut FrameReader,
    header: MessageHeader,
) -> Result<Option<(u64, bool)>, Refusal> {
    let user = &session.user;
    validate_name(header.to.name())
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    let (checked, _reserved) = check_send(shared, session, header.id, &header.to).await?;
    let recipients = match admission(user, checked) {
        Admission::Resend { seq } => return Ok(Some((seq, true))),
        Admission::Probe => {
            admit(shared, user)?;
            return Err(not_readable(header.id));
        }
        Admission::New { recipients } => recipients,
    };
    admit(shared, user)?;
    let Some(payload) = read_payload(shared, session, recv, header.kind).await? else {
        return Ok(None);
    };
    let kind = header.kind;
    let (payload, content) = {
        // Decoding a picture takes up to a few hundred MB and ~0.1 s: one at a time.
        let _permit = shared
            .media
            .acquire()
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "the relay is shutting down"))?;
        tokio::task::spawn_blocking(move || make_safe(kind, payload))
            .await
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))??
    };
    let meta = ClipMeta {
        id: header.id,
        from: user.clone(),
        to: header.to.clone(),
        // The relay's clock, not the sender's: a recall's window counts from here.
        started_at_ms: now_ms(),
        duration_ms: 0,
        packets: 0,
        bytes: payload.len() as u64,
        codec: CodecParams::NONE,
        seq: 0,
        content,
    };
    match shared.commit(meta.clone(), &recipients, payload).await {
        Ok(CommitOutcome::Stored(seq)) => {
            shared.usage.add(user, meta.bytes);
            info!(message = %meta.id, from = %meta.from, to = %meta.to, kind = content.name(), bytes = meta.bytes, seq, "message stored");
            shared.wake_everywhere(&recipients);
            Ok(Some((seq, false)))
        }
        Ok(CommitOutcome::Duplicate(seq)) => Ok(Some((seq, true))),
        Err(e @ RelayError::Store(StoreError::IdConflict(_))) => {
            Err(Refusal::new(ErrorCode::Conflict, e.to_string()))
        }
        Err(e) => Err(Refusal::new(ErrorCode::Storage, e.to_string())),
    }
}

/// One more item of the sender's per-minute rate (clips and messages count together).
fn admit(shared: &Shared, user: &str) -> Result<(), Refusal> {
    lock(&shared.limits)
        .admit_clip(user, Instant::now())
        .map_err(|wait| {
            let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
            Refusal::new(
                ErrorCode::Busy { retry_after_ms: ms },
                format!(
                    "busy, retry after {ms} ms: at most {} clips and messages per minute",
                    shared.config.clips_per_minute
                ),
            )
        })
}

/// The longest a message's upload may take, however it trickles (10 MB at 300 kb/s).
const MAX_UPLOAD_TIME: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads the payload's chunks up to the end marker; `None` if the sender cancelled.
async fn read_payload(
    shared: &Shared,
    session: &Session,
    recv: &mut FrameReader,
    kind: Kind,
) -> Result<Option<Vec<u8>>, Refusal> {
    let mut assembler = MessageAssembler::new(kind);
    let idle = shared.config.stream_idle;
    let deadline = tokio::time::Instant::now() + MAX_UPLOAD_TIME;
    loop {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let read = tokio::time::timeout(wait, recv.next::<StreamFrame>(MAX_STREAM_FRAME))
            .await
            .map_err(|_| {
                if tokio::time::Instant::now() >= deadline {
                    Refusal::new(
                        ErrorCode::Timeout,
                        format!(
                            "the message took longer than {} s to upload; it was dropped",
                            MAX_UPLOAD_TIME.as_secs()
                        ),
                    )
                } else {
                    Refusal::new(
                        ErrorCode::Timeout,
                        format!(
                            "nothing of the message arrived for {} s; it was dropped",
                            idle.as_secs()
                        ),
                    )
                }
            })?;
        match read {
            Ok(Some(StreamFrame::Chunk(chunk))) => {
                assembler.push(&chunk)?;
                let pause = lock(&shared.message_bytes).pace(
                    session.user.clone(),
                    chunk.len(),
                    Instant::now(),
                );
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(Some(StreamFrame::End { packets, .. })) => {
                return assembler.finish(packets).map(Some);
            }
            Ok(Some(StreamFrame::Abort(_))) | Err(NetError::Reset(_)) => return Ok(None),
            Ok(Some(_)) => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "a message stream carries chunks and an end marker only",
                ));
            }
            Ok(None) => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "the message stream ended before its end marker",
                ));
            }
            Err(e) => return Err(Refusal::new(ErrorCode::BadRequest, e.to_string())),
        }
    }
}

/// Checks a payload and makes the form the relay stores: texts as they are, pictures encoded
/// again with a thumbnail, doodles in canonical JSON with a rendering.
fn make_safe(kind: Kind, payload: Vec<u8>) -> Result<(Vec<u8>, Content), Refusal> {
    match kind {
        Kind::Text => {
            let chars = check_text(&payload)?;
            Ok((payload, Content::Text { chars }))
        }
        Kind::Picture => crate::picture::accept(&payload).map_err(|e| {
            let code = if matches!(e, crate::picture::PictureError::TooLarge(_)) {
                ErrorCode::TooLarge
            } else {
                ErrorCode::BadRequest
            };
            Refusal::new(code, e.to_string())
        }),
        Kind::Doodle => crate::doodle::accept(&payload),
    }
}
