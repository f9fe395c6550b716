//! One clip being uploaded, carried out: [`ClientUpload`] (the protocol core) decides what to
//! write and what the relay's answers mean; this driver writes the stream, feeds it the
//! answer from the control stream when it comes, and waits when it says to wait.

use std::time::Instant;

use tokio::sync::oneshot;
use walkie_net::{DatagramPath, PathLoss};
use walkie_proto::clip::{ClipHeader, ClipId};
use walkie_proto::live::LiveForward;
use walkie_proto::upload::{Answer, ClientAction, ClientUpload};
use walkie_proto::wire::{ErrorMsg, MAX_STREAM_FRAME, encode_frame};

use crate::connection::Datagrams;
use crate::error::ClientError;
use crate::routing::{SharedWaiters, lock};

/// Queued frames are written together up to about this many bytes per write.
const BATCH_BYTES: usize = 32 * 1024;

/// A clip being uploaded: push packets as they are made, then [`Upload::finish`] (or cancel).
pub struct Upload {
    send: quinn::SendStream,
    ack: oneshot::Receiver<Result<(u64, bool), ErrorMsg>>,
    core: ClientUpload,
    /// The answer arrived (or the connection closed): nothing more comes on `ack`.
    answered: bool,
    waiters: SharedWaiters,
    /// Packets sent one by one as they are made (a live clip) also go as datagrams.
    fast: Fast,
}

/// The datagram copies of a live upload's packets.
struct Fast {
    stream: u64,
    forward: LiveForward,
    path: DatagramPath,
}

impl Upload {
    /// Opens the upload on `send` with the clip's header; `ack` gets the relay's answer.
    pub(crate) async fn start(
        send: quinn::SendStream,
        header: &ClipHeader,
        ack: oneshot::Receiver<Result<(u64, bool), ErrorMsg>>,
        waiters: SharedWaiters,
        conn: quinn::Connection,
        loss: PathLoss,
        datagrams: Datagrams,
    ) -> Result<Upload, ClientError> {
        let fast = Fast {
            stream: send.id().into(),
            forward: LiveForward::new(u32::MAX),
            path: match datagrams {
                Datagrams::On => DatagramPath::new(conn, loss),
                Datagrams::Off => DatagramPath::off(conn, loss),
            },
        };
        let mut up = Upload {
            send,
            ack,
            core: ClientUpload::new(header),
            answered: false,
            waiters,
            fast,
        };
        up.drive().await?;
        Ok(up)
    }

    /// The clip.
    pub fn id(&self) -> ClipId {
        self.core.id()
    }

    /// Sends one Opus packet as it is made: on the clip's stream, and first as a datagram
    /// (repeating older packets when the path loses some) so that listeners need not wait
    /// for a retransmission. A refusal that already came (too long, not a member) fails it;
    /// after "already stored" (a resent clip) it does nothing.
    pub async fn packet(&mut self, packet: Vec<u8>) -> Result<(), ClientError> {
        self.absorb();
        if let Ok(Some(out)) = self.fast.forward.from_stream(&packet) {
            self.fast.path.send(self.fast.stream, &out);
        }
        self.core.send(packet)?;
        self.drive().await
    }

    /// Whether this clip's packets also go as datagrams (in-band FEC is tuned only then: on
    /// the stream alone a lost packet is retransmitted, never missing).
    pub fn resilient(&self) -> bool {
        self.fast.path.is_on()
    }

    /// The loss of the path to the relay measured while this clip was sent, in permille.
    pub fn loss_permille(&self) -> u32 {
        self.fast.path.loss_permille()
    }

    /// The worst loss on the way from the relay to this clip's listeners, as the relay
    /// measured and told it when the clip started, in permille (0 until told).
    pub fn listeners_loss_permille(&self) -> u32 {
        lock(&self.waiters)
            .listeners_loss
            .get(&self.core.id())
            .map_or(0, |p| u32::from(*p))
    }

    /// Sends packets that are all at hand (a recorded clip, a resend from the outbox) in as
    /// few stream writes as they fit in; otherwise as [`Self::packet`] for each.
    pub async fn packets(
        &mut self,
        packets: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(), ClientError> {
        self.absorb();
        for packet in packets {
            self.core.send(packet)?;
        }
        self.drive().await
    }

    /// Sends the end marker and waits for the relay's `ClipStored`: `(seq, duplicate)`.
    pub async fn finish(mut self, samples: u64) -> Result<(u64, bool), ClientError> {
        self.absorb();
        self.core.finish(samples, Instant::now());
        self.drive().await?;
        loop {
            if let Some(result) = self.core.result() {
                return result.map_err(ClientError::from);
            }
            self.wait().await;
        }
    }

    /// Abandons the clip (the relay discards it; live listeners drop what they heard).
    pub fn cancel(mut self) {
        self.core.cancel();
        while let Some(action) = self.core.poll_action() {
            if let ClientAction::Reset(code) = action {
                let _ = self.send.reset(code.into());
            }
        }
    }

    /// Takes an answer that arrived meanwhile (an early refusal, or "already stored").
    fn absorb(&mut self) {
        if !self.answered {
            match self.ack.try_recv() {
                Ok(answer) => self.answer(answer),
                Err(oneshot::error::TryRecvError::Closed) => self.closed(),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
    }

    fn answer(&mut self, answer: Answer) {
        self.answered = true;
        self.core.answer(answer);
    }

    fn closed(&mut self) {
        self.answered = true;
        self.core
            .closed("connection ended before the clip was acknowledged");
    }

    /// Carries out the queued writes; a failed write makes the core wait for the relay's
    /// reason, and this waits with it. Fails if the upload is settled as failed. Frames
    /// queued together go out in one write (up to [`BATCH_BYTES`]).
    async fn drive(&mut self) -> Result<(), ClientError> {
        let mut batch = Vec::new();
        while let Some(action) = self.core.poll_action() {
            let frame = match action {
                ClientAction::Write(frame) => frame,
                other => {
                    self.write(&mut batch).await;
                    self.carry_out(other);
                    continue;
                }
            };
            match encode_frame(&frame, MAX_STREAM_FRAME) {
                Ok(bytes) => batch.extend_from_slice(&bytes),
                Err(e) => self.core.write_failed(e.to_string(), Instant::now()),
            }
            if batch.len() >= BATCH_BYTES {
                self.write(&mut batch).await;
            }
        }
        self.write(&mut batch).await;
        while self.core.is_waiting() {
            self.wait().await;
        }
        self.core.settled().map_err(ClientError::from)
    }

    /// Writes the frames in `batch` and empties it.
    async fn write(&mut self, batch: &mut Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.send.write_all(batch).await {
            // The relay stopped the stream: its reason arrives on the control stream.
            self.core.write_failed(e.to_string(), Instant::now());
        }
        batch.clear();
    }

    /// Carries out an action other than a write.
    fn carry_out(&mut self, action: ClientAction) {
        match action {
            ClientAction::Write(_) => {}
            ClientAction::FinishStream => {
                let _ = self.send.finish();
            }
            ClientAction::Reset(code) => {
                let _ = self.send.reset(code.into());
            }
        }
    }

    /// Waits for the relay's answer or the core's next deadline.
    async fn wait(&mut self) {
        let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
        if self.answered {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => return,
            }
            self.core.handle_timeout(Instant::now());
            return;
        }
        let outcome = match deadline {
            Some(d) => tokio::time::timeout_at(d, &mut self.ack).await.ok(),
            None => Some((&mut self.ack).await),
        };
        match outcome {
            Some(Ok(answer)) => self.answer(answer),
            Some(Err(_)) => self.closed(),
            None => self.core.handle_timeout(Instant::now()),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let mut w = lock(&self.waiters);
        w.uploads.remove(&self.core.id());
        w.listeners_loss.remove(&self.core.id());
    }
}
