//! One uploaded clip, carried out (a stream whose first frame is a message goes to
//! [`crate::message`] instead): every decision is [`RelayUpload`]'s (the protocol core in
//! `walkie-proto`); this driver reads the clip stream, asks the store, the rate limits and
//! the cluster what the core wants to know, and does what it says: live copies, the commit,
//! the talker's answer, the wake-ups. It also paces a sender that uploads faster than its
//! byte rate (QUIC flow control then pushes back on the talker).

use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};
use walkie_net::{FrameReader, NetError};
use walkie_proto::assemble::Refusal;
use walkie_proto::clip::{ClipId, ClipMeta};
use walkie_proto::live::LiveForward;
use walkie_proto::upload::{
    Action, Checked, CommitFailure, FloorRefusal, Input, Outcome, RelayUpload,
};
use walkie_proto::wire::{ErrorCode, LiveDatagram, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use walkie_store::{CommitOutcome, StoreError};

use crate::RelayError;
use crate::access;
use crate::cluster::{Cluster, FloorError};
use crate::live::{Encoded, LiveSink, RemoteOut, abort_live, end_live};
use crate::metrics::Held;
use crate::registry::{ControlTx, Session};
use crate::shared::{Shared, lock};

/// Runs one clip stream from `session` to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    recv: quinn::RecvStream,
    tx: ControlTx,
) {
    let mut recv = FrameReader::new(recv);
    let mut core = RelayUpload::new(
        &session.user,
        shared.config.upload_limits(),
        Instant::now(),
        walkie_proto::clip::now_ms(),
    );
    // The first frame says what the stream carries: a clip (the core's) or a message.
    let first = tokio::time::timeout(
        shared.config.stream_idle,
        recv.next::<StreamFrame>(MAX_STREAM_FRAME),
    )
    .await;
    // A clip's packets may also come as datagrams naming this stream.
    let mut route = matches!(first, Ok(Ok(Some(StreamFrame::Upload(_))))).then(|| {
        session
            .datagrams
            .open(&session.conn, recv.stream().id().into())
    });
    match first {
        Ok(Ok(Some(StreamFrame::Message(header)))) => {
            return crate::message::run(&shared, &session, recv, &tx, header).await;
        }
        Ok(read) => core.handle(input_of(read), Instant::now()),
        Err(_) => core.handle_timeout(Instant::now()),
    }
    let mut driver = Driver {
        shared: &shared,
        session: &session,
        tx: &tx,
        live: None,
        floor: None,
        stored: None,
        reserved: None,
    };
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        while let Some(action) = core.poll_action() {
            if let Some(input) = driver.carry_out(action, &mut recv).await {
                core.handle(input, Instant::now());
            }
        }
        match core.outcome() {
            Some(Outcome::Stored { .. }) => break,
            Some(Outcome::Cancelled) => {
                // The talker let go with Esc or slid off the button: nobody waits for an answer.
                debug!(user = %session.user, clip = ?core.clip(), "clip cancelled");
                break;
            }
            Some(Outcome::Refused(r)) => {
                debug!(user = %session.user, "upload refused: {}", r.message);
                break;
            }
            None if !core.wants_frames() => {
                // Every question the core asks is answered above; it cannot be waiting here.
                debug!(user = %session.user, "the upload stalled without an outcome");
                break;
            }
            None => {}
        }
        // The timer is set again only when the core's deadline comes earlier than it, or
        // after it fired: the deadlines move later with every packet, and a timer that fires
        // before the deadline that counts is harmless (the core ignores a timeout before its
        // deadline). Re-arming a timer per frame cost more than reading the frame.
        if let Some(d) = core.poll_timeout()
            && armed.is_none_or(|a| d < a)
        {
            timer.as_mut().reset(d.into());
            armed = Some(d);
        }
        let next = async {
            tokio::select! {
                biased;
                Some(d) = async { route.as_mut()?.rx.recv().await }, if route.is_some() => Next::Datagram(d),
                read = recv.next::<StreamFrame>(MAX_STREAM_FRAME) => Next::Read(read),
                () = &mut timer, if armed.is_some() => Next::Timeout,
            }
        };
        match next.await {
            Next::Datagram(d) => driver.datagram(&d),
            Next::Timeout => {
                armed = None;
                core.handle_timeout(Instant::now());
            }
            Next::Read(read) => {
                let mut now = Instant::now();
                if let Ok(Some(StreamFrame::Packet(p))) = &read
                    && driver.pace(p.len(), now).await
                {
                    now = Instant::now();
                }
                core.handle(input_of(read), now);
            }
        }
    }
}

/// The worst loss the relay measures on the way to the sessions of `sinks`, in permille.
fn sinks_loss(sinks: &[LiveSink]) -> u16 {
    let worst = sinks
        .iter()
        .map(|s| s.session.loss.permille())
        .max()
        .unwrap_or(0);
    u16::try_from(worst.min(1000)).unwrap_or(1000)
}

/// What woke the upload.
enum Next {
    Read(Result<Option<StreamFrame>, NetError>),
    Datagram(bytes::Bytes),
    Timeout,
}

/// What a read from the clip stream means to the core.
fn input_of(read: Result<Option<StreamFrame>, NetError>) -> Input {
    match read {
        Ok(Some(frame)) => Input::Frame(frame),
        Ok(None) => Input::Finished,
        Err(NetError::Reset(code)) => Input::Reset(code),
        Err(e) => Input::Broken(e.to_string()),
    }
}

/// What the driver holds for one upload.
struct Driver<'a> {
    shared: &'a Shared,
    session: &'a Session,
    tx: &'a ControlTx,
    live: Option<Live>,
    /// The channel's floor while this clip holds it: released by the core's action, or when
    /// the upload task ends any other way (the talker's connection is gone).
    floor: Option<FloorGuard>,
    /// The metadata of the commit in progress, for the log line once it is stored.
    stored: Option<ClipMeta>,
    /// The clip id this upload reserved for its sender, on every relay (freed when the
    /// upload ends, however it ends).
    reserved: Option<ClipGuard>,
}

/// The live copies of the clip: to this relay's sessions and to the other relays.
struct Live {
    id: ClipId,
    sinks: Vec<LiveSink>,
    /// Which packets went out as datagrams, from the stream or the talker's datagrams.
    fast: LiveForward,
    remote: RemoteOut,
    /// The sessions still receiving live were marked (so their pumps skip the stored copy).
    marked: bool,
}

impl Driver<'_> {
    /// Does what the core asked; the answer to feed back, for the actions that are questions.
    async fn carry_out(&mut self, action: Action, recv: &mut FrameReader) -> Option<Input> {
        let user = &self.session.user;
        match action {
            Action::Check { id, target } => Some(Input::Checked(self.check(id, &target).await)),
            Action::Admit => Some(Input::Admitted(
                lock(&self.shared.limits).admit_clip(user, Instant::now()),
            )),
            Action::TakeFloor {
                channel,
                clip,
                hold,
            } => {
                let taken = match self
                    .shared
                    .cluster
                    .take_floor(&channel, user, clip, hold)
                    .await
                {
                    Ok(()) => {
                        self.shared.metrics.floor_grants.inc();
                        self.floor = Some(FloorGuard {
                            _held: Held::new(&self.shared.metrics.floors_held),
                            cluster: self.shared.cluster.clone(),
                            channel,
                            user: user.clone(),
                            clip,
                        });
                        Ok(())
                    }
                    Err(FloorError::Taken { user, .. }) => Err(FloorRefusal::Taken { user }),
                    Err(e @ FloorError::Unavailable { .. }) => {
                        Err(FloorRefusal::Unavailable(e.to_string()))
                    }
                };
                Some(Input::Floor(taken))
            }
            Action::OpenLive { header, recipients } => {
                let sinks = recipients
                    .iter()
                    .flat_map(|r| self.shared.registry.sessions_of(r))
                    .map(|s| {
                        LiveSink::open(
                            s,
                            header.clone(),
                            self.shared.config.live_queue,
                            &self.shared.metrics,
                        )
                    })
                    .collect::<Vec<_>>();
                // The talker tunes its FEC to its listeners' loss (measured here, per session).
                let worst = sinks_loss(&sinks);
                let _ = self.tx.try_send(
                    ServerMsg::ListenersLoss {
                        clip: header.id,
                        permille: worst,
                    }
                    .into(),
                );
                let remote = RemoteOut::start(self.shared, &header, &recipients);
                let frame_ms = u64::from(header.codec.frame_samples.max(1)) / 48;
                let max_packets =
                    self.shared.config.max_hold().as_millis() as u64 / frame_ms.max(1);
                self.live = Some(Live {
                    id: header.id,
                    sinks,
                    fast: LiveForward::new(u32::try_from(max_packets + 1).unwrap_or(u32::MAX)),
                    remote,
                    marked: false,
                });
                None
            }
            Action::Forward(packet) => {
                if let Some(live) = &mut self.live {
                    // Encoded once for every listener.
                    if !live.sinks.is_empty()
                        && let Some(frame) = Encoded::packet(&packet)
                    {
                        for sink in &mut live.sinks {
                            sink.push(&frame);
                        }
                    }
                    live.remote.packet(&packet);
                    match live.fast.from_stream(&packet) {
                        // First here: it goes out as a datagram too.
                        Ok(Some(out)) => {
                            for sink in &mut live.sinks {
                                sink.datagram(&out);
                            }
                        }
                        Ok(None) => {}
                        // Listeners heard other audio than what would be stored.
                        Err(mismatch) => return Some(Input::Broken(mismatch.to_string())),
                    }
                }
                None
            }
            Action::ReleaseFloor { .. } => {
                drop(self.floor.take());
                None
            }
            Action::Commit {
                meta,
                recipients,
                ogg,
            } => {
                // Mark live copies before the commit wakes any pump, so no pump sends them again.
                if let Some(live) = &mut self.live {
                    for sink in live.sinks.iter().filter(|s| s.tx.is_some()) {
                        sink.session.mark_live_sent(meta.id);
                    }
                    live.marked = true;
                }
                self.stored = Some(meta.clone());
                // Each recipient's inbox, and one per other device they have.
                Some(Input::Committed(
                    match self.shared.commit(meta, &recipients, ogg).await {
                        Ok(CommitOutcome::Stored(seq) | CommitOutcome::Duplicate(seq)) => Ok(seq),
                        Err(e @ RelayError::Store(StoreError::IdConflict(_))) => {
                            Err(CommitFailure::Conflict(e.to_string()))
                        }
                        Err(e) => Err(CommitFailure::Storage(e.to_string())),
                    },
                ))
            }
            Action::Stored { id, seq, duplicate } => {
                if let Some(meta) = self.stored.take() {
                    if !duplicate {
                        self.shared.usage.add(&meta.from, meta.bytes);
                    }
                    info!(clip = %id, from = %meta.from, to = %meta.to, ms = meta.duration_ms, seq, "clip stored");
                }
                let _ = self
                    .tx
                    .send(ServerMsg::ClipStored { id, seq, duplicate }.into())
                    .await;
                None
            }
            Action::StopReading(code) => {
                let _ = recv.stream().stop(code.into());
                None
            }
            Action::Refuse(error) => {
                // Refusals never wait for a client that does not read its control stream: a
                // full queue drops them, so a flood of bad streams cannot pile up tasks here.
                let _ = self.tx.try_send(ServerMsg::Error(error).into());
                None
            }
            Action::AbortLive(error) => {
                if let Some(mut live) = self.live.take() {
                    if live.marked {
                        for sink in &live.sinks {
                            sink.session.take_live_sent(&live.id);
                        }
                    }
                    abort_live(&mut live.sinks, live.id, error.code, &error.message);
                    live.remote.abort(error.code, &error.message);
                }
                None
            }
            Action::EndLive { packets, samples } => {
                if let Some(mut live) = self.live.take() {
                    // A live copy that was dropped is unmarked: the pump sends the stored clip.
                    end_live(&mut live.sinks, live.id, packets, samples);
                    live.remote.end(packets, samples);
                }
                None
            }
            Action::Wake(users) => {
                self.shared.wake_everywhere(&users);
                None
            }
        }
    }

    /// Who may hear a clip to `target`, and whether `id` is stored or being uploaded; keeps
    /// the reservation of `id` for the rest of the upload.
    async fn check(
        &mut self,
        id: ClipId,
        target: &walkie_proto::clip::Target,
    ) -> Result<Checked, Refusal> {
        let (checked, guard) = check_send(self.shared, self.session, id, target).await?;
        self.reserved = guard;
        Ok(checked)
    }

    /// A datagram from the talker naming this clip's stream: its packets that are new go to
    /// the listeners at once, ahead of the stream (which is not waited for).
    fn datagram(&mut self, bytes: &[u8]) {
        let (Some(live), Ok(datagram)) = (&mut self.live, LiveDatagram::decode(bytes)) else {
            return;
        };
        for &(index, packet) in datagram.packets() {
            if let Some(out) = live.fast.from_datagram(index, packet) {
                for sink in &mut live.sinks {
                    sink.datagram(&out);
                }
            }
        }
    }

    /// Over the per-user upload rate: slow the sender down rather than refuse; true if it
    /// waited.
    async fn pace(&self, bytes: usize, now: Instant) -> bool {
        let pause = lock(&self.shared.limits).pace_bytes(&self.session.user, bytes, now);
        if pause.is_zero() {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }
}

/// Who may hear a clip or message to `target` from the session's user (refusing a sender who
/// may not use it or is over their quota), and whether `id` is stored already or being
/// uploaded by someone; reserves `id` for this sender unless another holds it (the guard
/// frees it when dropped).
///
/// One store trip answers the questions (recipients, whether `id` is stored, the sender's
/// usage when its count is not fresh), then the id is reserved, only for a sender who may
/// send (in a cluster a reservation is a write every relay sees). A clip with this id that
/// is committed between the trip and the reservation was uploaded under a reservation that
/// ended before this one began; the store answers this commit as its duplicate, or refuses
/// it as a conflict if another user sent it, so nothing is stored twice.
pub(crate) async fn check_send(
    shared: &Shared,
    session: &Session,
    id: ClipId,
    target: &walkie_proto::clip::Target,
) -> Result<(Checked, Option<ClipGuard>), Refusal> {
    let user = &session.user;
    let quota = shared.config.quota_bytes_per_user;
    let now = Instant::now();
    let cached = quota.and_then(|_| shared.usage.fresh(user, now));
    let read_usage = quota.is_some() && cached.is_none();
    let (who, to, default) = (user.clone(), target.clone(), shared.config.direct_from);
    let (recipients, stored, read) = shared
        .store(move |s| {
            let recipients = match access::recipients_in(s, &who, &to, default)? {
                Ok(r) => r,
                Err(refusal) => return Ok((Err(refusal), None, None)),
            };
            let stored = s.committed(&id)?;
            let used = if read_usage {
                s.stored_bytes_of(&who)?
            } else {
                None
            };
            Ok((Ok(recipients), stored, used))
        })
        .await
        .map_err(access::storage)?;
    let recipients = recipients?;
    if let Some(bytes) = read {
        shared.usage.set(user, bytes, now);
    }
    if let Some(quota) = quota {
        check_quota(cached.or(read), quota)?;
    }
    let in_flight = shared
        .cluster
        .reserve_clip(id, user, shared.config.max_hold())
        .await
        .map_err(|e| Refusal::new(ErrorCode::Storage, e.to_string()))?;
    let guard = in_flight.is_none().then(|| ClipGuard {
        cluster: shared.cluster.clone(),
        user: user.clone(),
        clip: id,
    });
    Ok((
        Checked {
            recipients,
            stored: stored.map(|meta| (meta.from, meta.seq)),
            in_flight,
        },
        guard,
    ))
}

/// Refuses a clip from a sender who already stores `quota` bytes (`used`: their count, when
/// the store keeps one).
fn check_quota(used: Option<u64>, quota: u64) -> Result<(), Refusal> {
    match used {
        Some(bytes) if bytes >= quota => Err(Refusal::new(
            ErrorCode::QuotaExceeded,
            format!(
                "you store {} MiB of clips on this relay, its limit per user ({} MiB); nothing more is accepted until older clips are deleted",
                bytes / (1024 * 1024),
                quota / (1024 * 1024)
            ),
        )),
        _ => Ok(()),
    }
}

/// Holds the reservation of a clip id for its sender; releases it when dropped.
pub(crate) struct ClipGuard {
    cluster: Arc<dyn Cluster>,
    user: String,
    clip: ClipId,
}

impl Drop for ClipGuard {
    fn drop(&mut self) {
        self.cluster.release_clip(self.clip, &self.user);
    }
}

/// Holds a channel's floor for one clip; releases it when dropped (the clip ended, was
/// refused, or its task ended with the talker's connection).
struct FloorGuard {
    _held: Held,
    cluster: Arc<dyn Cluster>,
    channel: String,
    user: String,
    clip: ClipId,
}

impl Drop for FloorGuard {
    fn drop(&mut self) {
        self.cluster
            .release_floor(&self.channel, &self.user, self.clip);
    }
}
