//! One uploaded clip: reads the header, checks who may send where, forwards each packet to
//! online recipients as it arrives, and on the end marker stores the clip durably, acks the
//! sender with `ClipStored`, and only then ends the live streams.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::conn::{ControlTx, may_access};
use super::ingest::{ClipAssembler, IngestError, check_header};
use super::registry::Session;
use super::Shared;
use crate::clip::{ClipHeader, ClipId, ClipMeta, Target};
use crate::codec;
use crate::net::{read_frame, write_frame};
use crate::proto::{DeliverHeader, ErrorCode, ErrorMsg, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use crate::store::CommitOutcome;

/// A live copy of the clip going to one recipient session.
struct LiveSink {
    session: Arc<Session>,
    tx: Option<mpsc::Sender<StreamFrame>>,
    task: JoinHandle<bool>,
}

impl LiveSink {
    fn open(session: Arc<Session>, header: DeliverHeader, queue: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<StreamFrame>(queue);
        let conn = session.conn.clone();
        let task = tokio::spawn(async move {
            let Ok(mut send) = conn.open_uni().await else { return false };
            if write_frame(&mut send, &StreamFrame::Deliver(header), MAX_STREAM_FRAME).await.is_err() {
                return false;
            }
            let mut ended = false;
            while let Some(frame) = rx.recv().await {
                ended = matches!(frame, StreamFrame::End { .. });
                if write_frame(&mut send, &frame, MAX_STREAM_FRAME).await.is_err() {
                    return false;
                }
            }
            if ended {
                let _ = send.finish();
            } else {
                let _ = send.reset(ErrorCode::BadRequest.quic_code().into());
            }
            ended
        });
        Self { session, tx: Some(tx), task }
    }

    /// Queues a frame; a recipient that cannot keep up loses its live copy (it gets the
    /// stored clip from its inbox instead), so a slow reader never grows the relay's memory.
    fn push(&mut self, frame: StreamFrame) {
        if let Some(tx) = &self.tx
            && tx.try_send(frame).is_err()
        {
            self.tx = None;
            self.task.abort();
        }
    }
}

fn refusal(id: ClipId, err: &IngestError) -> ServerMsg {
    ServerMsg::Error(ErrorMsg { req: None, clip: Some(id), code: err.code, message: err.message.clone() })
}

pub(crate) async fn handle(shared: Arc<Shared>, session: Arc<Session>, mut recv: quinn::RecvStream, tx: ControlTx) {
    let first = tokio::time::timeout(shared.config.stream_idle, read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME)).await;
    let header = match first {
        Ok(Ok(Some(StreamFrame::Upload(h)))) => h,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
            let _ = recv.stop(ErrorCode::BadRequest.quic_code().into());
            // Refusals never wait for a client that does not read its control stream: a
            // full queue drops them, so a flood of bad streams cannot pile up tasks here.
            let _ = tx.try_send(ServerMsg::Error(ErrorMsg {
                req: None,
                clip: None,
                code: ErrorCode::BadRequest,
                message: "a clip stream must start with an upload header".into(),
            }));
            return;
        }
    };
    let id = header.id;
    if let Err(err) = receive(&shared, &session, &mut recv, header, &tx).await {
        debug!(user = %session.user, clip = %id, "upload refused: {}", err.message);
        let _ = recv.stop(err.code.quic_code().into());
        let _ = tx.try_send(refusal(id, &err));
    }
}

fn ingest(code: ErrorCode, message: impl Into<String>) -> IngestError {
    IngestError { code, message: message.into() }
}

async fn recipients(shared: &Shared, sender: &str, to: &Target) -> Result<Vec<String>, IngestError> {
    may_access(shared, sender, to).await.map_err(|(code, message)| ingest(code, message))?;
    let members = match to {
        Target::User(name) => vec![name.clone()],
        Target::Channel(name) => {
            let name = name.clone();
            shared
                .store(move |s| s.members(&name))
                .await
                .map_err(|e| ingest(ErrorCode::Storage, e.to_string()))?
                .unwrap_or_default()
        }
    };
    Ok(members.into_iter().filter(|m| m != sender).collect())
}

async fn receive(
    shared: &Shared,
    session: &Session,
    recv: &mut quinn::RecvStream,
    header: ClipHeader,
    tx: &ControlTx,
) -> Result<(), IngestError> {
    check_header(&header)?;
    let recipients = recipients(shared, &session.user, &header.to).await?;
    let id = header.id;
    let known = shared.store(move |s| s.clip(&id)).await.map_err(|e| ingest(ErrorCode::Storage, e.to_string()))?;
    if let Some(meta) = known {
        if meta.from != session.user {
            return Err(ingest(ErrorCode::Conflict, format!("clip id {id} is already taken; send it with a new id")));
        }
        // A retry of a stored clip: acknowledge again, store nothing.
        let _ = recv.stop(0u32.into());
        let _ = tx.send(ServerMsg::ClipStored { id, seq: meta.seq, duplicate: true }).await;
        return Ok(());
    }

    let now = std::time::Instant::now();
    if let Err(wait) = super::lock(&shared.limits).admit_clip(&session.user, now) {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        return Err(ingest(
            ErrorCode::Busy { retry_after_ms: ms },
            format!("busy, retry after {ms} ms: at most {} clips per minute", shared.config.clips_per_minute),
        ));
    }
    let _floor = match &header.to {
        Target::Channel(channel) => Some(FloorGuard::take(shared, channel, &session.user, id)?),
        Target::User(_) => None,
    };

    let deliver = DeliverHeader {
        id,
        from: session.user.clone(),
        to: header.to.clone(),
        started_at_ms: header.started_at_ms,
        codec: header.codec,
        live: true,
        seq: 0,
    };
    let mut sinks: Vec<LiveSink> = recipients
        .iter()
        .flat_map(|r| shared.registry.sessions_of(r))
        .map(|s| LiveSink::open(s, deliver.clone(), shared.config.live_queue))
        .collect();
    let result = collect(shared, &session.user, recv, &header, &mut sinks).await;
    let assembled = match result {
        Ok(a) => a,
        Err(err) => {
            abort_live(&mut sinks, id, &err);
            return Err(err);
        }
    };

    let ogg = codec::ogg::write_ogg(&header.codec, &assembled.packets, assembled.samples, rand::random())
        .map_err(|e| ingest(ErrorCode::BadRequest, format!("cannot build the Ogg file: {e}")));
    let ogg = match ogg {
        Ok(o) => o,
        Err(err) => {
            abort_live(&mut sinks, id, &err);
            return Err(err);
        }
    };
    let meta = ClipMeta {
        id,
        from: session.user.clone(),
        to: header.to.clone(),
        started_at_ms: header.started_at_ms,
        duration_ms: u32::try_from((assembled.samples + 24) / 48).unwrap_or(u32::MAX),
        packets: assembled.packets.len() as u32,
        bytes: ogg.len() as u64,
        codec: header.codec,
        seq: 0,
    };
    // Mark live copies before the commit wakes any pump, so no pump sends them again.
    for sink in sinks.iter().filter(|s| s.tx.is_some()) {
        sink.session.mark_live_sent(id);
    }
    let rcpt = recipients.clone();
    let commit_meta = meta.clone();
    let outcome = shared.store(move |s| s.commit_clip(&commit_meta, &rcpt, &ogg)).await;
    let seq = match outcome {
        Ok(CommitOutcome::Stored(seq)) => seq,
        Ok(CommitOutcome::Duplicate(seq)) => seq,
        Err(e) => {
            let code = if matches!(e, super::RelayError::Store(crate::store::StoreError::IdConflict(_))) {
                ErrorCode::Conflict
            } else {
                ErrorCode::Storage
            };
            let err = ingest(code, format!("the relay could not store the clip: {e}"));
            for sink in &sinks {
                sink.session.take_live_sent(&id);
            }
            abort_live(&mut sinks, id, &err);
            return Err(err);
        }
    };
    info!(clip = %id, from = %meta.from, to = %meta.to, ms = meta.duration_ms, seq, "clip stored");
    let _ = tx.send(ServerMsg::ClipStored { id, seq, duplicate: false }).await;
    for sink in &mut sinks {
        sink.push(StreamFrame::End { packets: meta.packets, samples: assembled.samples });
        if sink.tx.take().is_none() {
            // Its live copy was dropped: the pump sends the stored clip instead.
            sink.session.take_live_sent(&id);
        }
    }
    shared.registry.wake(&recipients);
    Ok(())
}

/// Reads packets until the end marker, forwarding each to the live sinks.
async fn collect(
    shared: &Shared,
    user: &str,
    recv: &mut quinn::RecvStream,
    header: &ClipHeader,
    sinks: &mut [LiveSink],
) -> Result<super::ingest::Assembled, IngestError> {
    let mut asm = ClipAssembler::new(header, shared.config.max_clip_ms);
    let deadline = tokio::time::Instant::now() + max_hold(shared);
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err(ingest(ErrorCode::TooLong, "the clip went on longer than the relay's maximum duration"));
        }
        let frame = tokio::time::timeout(shared.config.stream_idle, read_frame::<StreamFrame>(recv, MAX_STREAM_FRAME))
            .await
            .map_err(|_| ingest(ErrorCode::Timeout, "no audio arrived for too long; the clip was dropped"))?
            .map_err(|e| ingest(ErrorCode::BadRequest, format!("bad clip stream: {e}")))?;
        match frame {
            Some(StreamFrame::Packet(p)) => {
                let pause = super::lock(&shared.limits).pace_bytes(user, p.len(), std::time::Instant::now());
                if !pause.is_zero() {
                    // Over the per-user upload rate: slow the sender down (QUIC flow control
                    // pushes back) rather than refuse.
                    tokio::time::sleep(pause).await;
                }
                asm.push(p.clone())?;
                for sink in sinks.iter_mut() {
                    sink.push(StreamFrame::Packet(p.clone()));
                }
            }
            Some(StreamFrame::End { packets, samples }) => return asm.finish(packets, samples),
            Some(StreamFrame::Abort(_)) => return Err(ingest(ErrorCode::BadRequest, "the sender cancelled the clip")),
            Some(_) => return Err(ingest(ErrorCode::BadRequest, "unexpected frame in a clip stream")),
            None => return Err(ingest(ErrorCode::BadRequest, "the clip stream ended without an end marker")),
        }
    }
}

fn abort_live(sinks: &mut [LiveSink], id: ClipId, err: &IngestError) {
    for sink in sinks {
        sink.push(StreamFrame::Abort(ErrorMsg { req: None, clip: Some(id), code: err.code, message: err.message.clone() }));
        sink.tx = None;
    }
}

/// How long a talker may hold a floor or a clip stream: the maximum clip plus a grace period.
fn max_hold(shared: &Shared) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(shared.config.max_clip_ms)) + std::time::Duration::from_secs(5)
}

/// Holds a channel's floor for one clip; releases it when dropped (clip stored, refused, or
/// the talker gone).
struct FloorGuard<'a> {
    shared: &'a Shared,
    channel: String,
    clip: ClipId,
}

impl<'a> FloorGuard<'a> {
    fn take(shared: &'a Shared, channel: &str, user: &str, clip: ClipId) -> Result<Self, IngestError> {
        let now = std::time::Instant::now();
        super::lock(&shared.floors).try_take(channel, user, clip, now, max_hold(shared)).map_err(|holder| {
            ingest(ErrorCode::FloorTaken, format!("busy: {} is talking on {channel}; try again when they finish", holder.user))
        })?;
        Ok(Self { shared, channel: channel.to_string(), clip })
    }
}

impl Drop for FloorGuard<'_> {
    fn drop(&mut self) {
        super::lock(&self.shared.floors).release(&self.channel, self.clip);
    }
}
