//! One uploaded clip: reads the header, checks who may send where, takes the channel's floor
//! (cluster-wide, through [`super::cluster::Cluster`]), forwards each packet to online
//! recipients as it arrives (this relay's sessions, and the other relays of a cluster), and on
//! the end marker stores the clip durably, acks the sender with `ClipStored`, and only then
//! ends the live streams and wakes the recipients' delivery pumps on every relay.

use std::sync::Arc;

use tracing::{debug, info};

use super::Shared;
use super::cluster::{Cluster, FloorError};
use super::conn::{ControlTx, may_access};
use super::ingest::{ClipAssembler, IngestError, check_header};
use super::live::{Encoded, LiveSink, RemoteOut, abort_live, end_live};
use super::registry::Session;
use crate::clip::{ClipHeader, ClipId, ClipMeta, Target};
use crate::codec;
use crate::net::read_frame;
use crate::proto::{DeliverHeader, ErrorCode, ErrorMsg, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use crate::store::CommitOutcome;

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
    match receive(&shared, &session, &mut recv, header, &tx).await {
        Ok(()) => {}
        // The talker let go with Esc or slid off the button: nobody waits for an answer.
        Err(err) if err.code == ErrorCode::Cancelled => debug!(user = %session.user, clip = %id, "clip cancelled"),
        Err(err) => {
            debug!(user = %session.user, clip = %id, "upload refused: {}", err.message);
            let _ = recv.stop(err.code.quic_code().into());
            let _ = tx.try_send(refusal(id, &err));
        }
    }
}

/// The talker cancelled the clip: live listeners are told, the sender is not answered.
fn cancelled(user: &str) -> IngestError {
    ingest(ErrorCode::Cancelled, format!("{user} cancelled the clip"))
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
    let known = shared.store(move |s| s.committed(&id)).await.map_err(|e| ingest(ErrorCode::Storage, e.to_string()))?;
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
    let floor = match &header.to {
        Target::Channel(channel) => Some(FloorGuard::take(shared, channel, &session.user, id).await?),
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
    let mut remote = RemoteOut::start(shared, &deliver, &recipients);
    let result = collect(shared, &session.user, recv, &header, &mut sinks, &mut remote).await;
    // The talker has let go (or the clip failed): the floor is free before the sender hears
    // `ClipStored`, so whoever is told "stored" may talk next.
    drop(floor);
    let assembled = match result {
        Ok(a) => a,
        Err(err) => {
            abort_all(&mut sinks, &mut remote, id, &err);
            return Err(err);
        }
    };

    let ogg = codec::ogg::write_ogg(&header.codec, &assembled.packets, assembled.samples, rand::random())
        .map_err(|e| ingest(ErrorCode::BadRequest, format!("cannot build the Ogg file: {e}")));
    let ogg = match ogg {
        Ok(o) => o,
        Err(err) => {
            abort_all(&mut sinks, &mut remote, id, &err);
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
            abort_all(&mut sinks, &mut remote, id, &err);
            return Err(err);
        }
    };
    info!(clip = %id, from = %meta.from, to = %meta.to, ms = meta.duration_ms, seq, "clip stored");
    let _ = tx.send(ServerMsg::ClipStored { id, seq, duplicate: false }).await;
    // A live copy that was dropped is unmarked: the pump sends the stored clip instead.
    end_live(&mut sinks, id, meta.packets, assembled.samples);
    remote.end(meta.packets, assembled.samples);
    shared.wake_everywhere(&recipients);
    Ok(())
}

fn abort_all(sinks: &mut [LiveSink], remote: &mut RemoteOut, id: ClipId, err: &IngestError) {
    abort_live(sinks, id, err.code, &err.message);
    remote.abort(err.code, &err.message);
}

/// Reads packets until the end marker, forwarding each to the live sinks.
async fn collect(
    shared: &Shared,
    user: &str,
    recv: &mut quinn::RecvStream,
    header: &ClipHeader,
    sinks: &mut [LiveSink],
    remote: &mut RemoteOut,
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
            .map_err(|e| match e {
                crate::net::NetError::Reset(0) => cancelled(user),
                e => ingest(ErrorCode::BadRequest, format!("bad clip stream: {e}")),
            })?;
        match frame {
            Some(StreamFrame::Packet(p)) => {
                let pause = super::lock(&shared.limits).pace_bytes(user, p.len(), std::time::Instant::now());
                if !pause.is_zero() {
                    // Over the per-user upload rate: slow the sender down (QUIC flow control
                    // pushes back) rather than refuse.
                    tokio::time::sleep(pause).await;
                }
                // Checked (size, TOC) before anyone hears it; encoded once for every listener.
                let frame = (!sinks.is_empty()).then(|| Encoded::packet(&p)).flatten();
                asm.push(p.clone())?;
                remote.packet(&p);
                if let Some(frame) = frame {
                    for sink in sinks.iter_mut() {
                        sink.push(&frame);
                    }
                }
            }
            Some(StreamFrame::End { packets, samples }) => return asm.finish(packets, samples),
            Some(StreamFrame::Abort(_)) => return Err(cancelled(user)),
            Some(_) => return Err(ingest(ErrorCode::BadRequest, "unexpected frame in a clip stream")),
            None => return Err(ingest(ErrorCode::BadRequest, "the clip stream ended without an end marker")),
        }
    }
}

/// How long a talker may hold a floor or a clip stream: the maximum clip plus a grace period.
pub(crate) fn max_hold(shared: &Shared) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(shared.config.max_clip_ms)) + std::time::Duration::from_secs(5)
}

/// Holds a channel's floor for one clip; releases it when dropped (clip stored, refused, or
/// the talker gone).
struct FloorGuard {
    cluster: Arc<dyn Cluster>,
    channel: String,
    clip: ClipId,
}

impl FloorGuard {
    async fn take(shared: &Shared, channel: &str, user: &str, clip: ClipId) -> Result<Self, IngestError> {
        shared.cluster.take_floor(channel, user, clip, max_hold(shared)).await.map_err(|e| match e {
            FloorError::Taken { user, channel } => {
                ingest(ErrorCode::FloorTaken, format!("busy: {user} is talking on {channel}; try again when they finish"))
            }
            e @ FloorError::Unavailable { .. } => ingest(ErrorCode::Storage, e.to_string()),
        })?;
        Ok(Self { cluster: shared.cluster.clone(), channel: channel.to_string(), clip })
    }
}

impl Drop for FloorGuard {
    fn drop(&mut self) {
        self.cluster.release_floor(&self.channel, self.clip);
    }
}
