//! The client's side of one clip upload: what to write, and what an answer from the relay
//! means at each point. The relay may answer before the end marker is sent: a refusal (not a
//! member, floor taken, too long), or "already stored" for a resent clip (the relay then stops
//! reading). Either settles the upload: a refusal fails every later step, "stored" turns the
//! remaining packets into no-ops and is the result. A write that fails (the relay stopped the
//! stream) is not the end either: the relay's reason is on its way on the control stream, so
//! the machine waits a moment for it before reporting the stream error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::clip::{ClipHeader, ClipId};
use crate::wire::{ErrorMsg, StreamFrame};

/// The relay's answer about a clip: `(seq, duplicate)` once stored, or its refusal.
pub type Answer = Result<(u64, bool), ErrorMsg>;

/// How long a failed write waits for the relay's reason before it reports the stream error.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long the end marker waits for `ClipStored`.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Why an upload did not end stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadFailure {
    /// The relay refused the clip.
    #[error("the relay refused: {} ({})", .0.message, .0.code.name())]
    Refused(ErrorMsg),
    /// Writing to the clip stream failed and the relay gave no reason in time.
    #[error("stream failed: {0}")]
    Stream(String),
    /// `ClipStored` did not come in time.
    #[error("the relay did not acknowledge the clip within {0:?}")]
    Timeout(Duration),
    /// The talker cancelled it.
    #[error("the clip was cancelled")]
    Cancelled,
}

/// What the client's async code does next for this upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Write this frame to the clip stream.
    Write(StreamFrame),
    /// Finish the stream (no more frames).
    FinishStream,
    /// Reset the stream with this application code (0: cancelled).
    Reset(u32),
}

/// The client's side of one clip upload.
#[derive(Debug)]
pub struct ClientUpload {
    id: ClipId,
    packets: u32,
    actions: VecDeque<ClientAction>,
    /// The relay's answer, once it came (early or not).
    answer: Option<Answer>,
    /// A failed write waiting for the relay's reason: the error and how long it waits.
    waiting: Option<(String, Instant)>,
    /// The end marker went out: `ClipStored` is due by then.
    ack_due: Option<Instant>,
    /// A failure that is not the relay's answer.
    failed: Option<UploadFailure>,
}

impl ClientUpload {
    /// An upload of the clip `header` announces: its first action writes the header.
    pub fn new(header: &ClipHeader) -> Self {
        let mut actions = VecDeque::new();
        actions.push_back(ClientAction::Write(StreamFrame::Upload(header.clone())));
        Self {
            id: header.id,
            packets: 0,
            actions,
            answer: None,
            waiting: None,
            ack_due: None,
            failed: None,
        }
    }

    /// The clip.
    pub fn id(&self) -> ClipId {
        self.id
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<ClientAction> {
        self.actions.pop_front()
    }

    /// When [`ClientUpload::handle_timeout`] must be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.answer.is_some() || self.failed.is_some() {
            return None;
        }
        self.waiting.as_ref().map(|w| w.1).or(self.ack_due)
    }

    /// True while a failed write waits for the relay's reason.
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some() && self.answer.is_none() && self.failed.is_none()
    }

    /// Queues one packet. A refusal that already came fails it; "already stored" makes it a
    /// no-op (there is nothing left to send).
    pub fn send(&mut self, packet: Vec<u8>) -> Result<(), UploadFailure> {
        self.settled()?;
        if self.answer.is_none() {
            self.packets += 1;
            self.actions
                .push_back(ClientAction::Write(StreamFrame::Packet(packet)));
        }
        Ok(())
    }

    /// The talker let go: queues the end marker and the stream's finish, unless the relay
    /// answered already.
    pub fn finish(&mut self, samples: u64, now: Instant) {
        if self.answer.is_some() || self.failed.is_some() || self.ack_due.is_some() {
            return;
        }
        self.actions
            .push_back(ClientAction::Write(StreamFrame::End {
                packets: self.packets,
                samples,
            }));
        self.actions.push_back(ClientAction::FinishStream);
        self.ack_due = Some(now + ACK_WAIT);
    }

    /// The talker cancelled: the stream is reset, and the relay drops the clip.
    pub fn cancel(&mut self) {
        self.actions.clear();
        self.actions.push_back(ClientAction::Reset(0));
        self.failed.get_or_insert(UploadFailure::Cancelled);
    }

    /// A write failed (the relay stopped the stream, or the connection broke): nothing more is
    /// written, and the relay's reason is waited for.
    pub fn write_failed(&mut self, error: impl Into<String>, now: Instant) {
        self.actions.clear();
        self.ack_due = None;
        if self.waiting.is_none() {
            self.waiting = Some((error.into(), now + ANSWER_WAIT));
        }
    }

    /// The relay answered about this clip (the first answer counts).
    pub fn answer(&mut self, answer: Answer) {
        if self.answer.is_none() && self.failed.is_none() {
            self.answer = Some(answer);
        }
    }

    /// The connection closed before the relay answered.
    pub fn closed(&mut self, why: impl Into<String>) {
        if self.answer.is_none() {
            self.failed.get_or_insert(UploadFailure::Stream(why.into()));
        }
    }

    /// A deadline passed: a failed write's reason or the acknowledgement did not come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.answer.is_some() || self.failed.is_some() {
            return;
        }
        if let Some((error, until)) = &self.waiting {
            if now >= *until {
                self.failed = Some(UploadFailure::Stream(error.clone()));
            }
        } else if self.ack_due.is_some_and(|d| now >= d) {
            self.failed = Some(UploadFailure::Timeout(ACK_WAIT));
        }
    }

    /// Fails if the upload is settled as failed (a refusal or a failure); fine otherwise.
    pub fn settled(&self) -> Result<(), UploadFailure> {
        match (&self.answer, &self.failed) {
            (Some(Err(refusal)), _) => Err(UploadFailure::Refused(refusal.clone())),
            (Some(Ok(_)), _) | (None, None) => Ok(()),
            (None, Some(f)) => Err(f.clone()),
        }
    }

    /// How the upload ended, once it has: `(seq, duplicate)` or why not.
    pub fn result(&self) -> Option<Result<(u64, bool), UploadFailure>> {
        match (&self.answer, &self.failed) {
            (Some(Ok(stored)), _) => Some(Ok(*stored)),
            (Some(Err(refusal)), _) => Some(Err(UploadFailure::Refused(refusal.clone()))),
            (None, Some(f)) => Some(Err(f.clone())),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::{CodecParams, Target};
    use crate::wire::ErrorCode;

    fn upload() -> ClientUpload {
        let header = ClipHeader {
            id: ClipId([3; 16]),
            to: Target::Channel("crew".into()),
            started_at_ms: 0,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: 312,
            },
        };
        ClientUpload::new(&header)
    }

    fn drain(u: &mut ClientUpload) -> Vec<ClientAction> {
        std::iter::from_fn(|| u.poll_action()).collect()
    }

    fn refusal(code: ErrorCode) -> ErrorMsg {
        ErrorMsg {
            req: None,
            clip: Some(ClipId([3; 16])),
            code,
            message: "no".into(),
        }
    }

    #[test]
    fn the_header_then_packets_then_the_end_marker_counting_the_packets() {
        let t = Instant::now();
        let mut u = upload();
        u.send(vec![1]).expect("sent");
        u.send(vec![2]).expect("sent");
        u.finish(1_000, t);
        let actions = drain(&mut u);
        assert!(matches!(
            actions[0],
            ClientAction::Write(StreamFrame::Upload(_))
        ));
        assert_eq!(
            actions[3..],
            [
                ClientAction::Write(StreamFrame::End {
                    packets: 2,
                    samples: 1_000
                }),
                ClientAction::FinishStream
            ]
        );
        assert_eq!(u.poll_timeout(), Some(t + ACK_WAIT));
        u.answer(Ok((5, false)));
        assert_eq!(u.result(), Some(Ok((5, false))));
    }

    #[test]
    fn an_early_refusal_fails_the_next_packet_and_the_end() {
        let t = Instant::now();
        let mut u = upload();
        drain(&mut u);
        u.answer(Err(refusal(ErrorCode::FloorTaken)));
        assert!(
            matches!(u.send(vec![1]), Err(UploadFailure::Refused(m)) if m.code == ErrorCode::FloorTaken)
        );
        u.finish(960, t);
        assert!(drain(&mut u).is_empty(), "nothing more is written");
        assert!(matches!(u.result(), Some(Err(UploadFailure::Refused(_)))));
    }

    #[test]
    fn already_stored_turns_the_rest_into_no_ops_and_is_the_result() {
        let t = Instant::now();
        let mut u = upload();
        drain(&mut u);
        u.answer(Ok((9, true)));
        u.send(vec![1]).expect("a no-op");
        u.finish(960, t);
        assert!(drain(&mut u).is_empty());
        assert_eq!(u.result(), Some(Ok((9, true))));
    }

    #[test]
    fn a_failed_write_waits_for_the_reason_and_reports_the_stream_error_without_one() {
        let t = Instant::now();
        let mut u = upload();
        u.send(vec![1]).expect("queued");
        u.write_failed("stopped by peer", t);
        assert!(u.is_waiting());
        assert_eq!(u.poll_timeout(), Some(t + ANSWER_WAIT));
        u.answer(Err(refusal(ErrorCode::TooLong)));
        assert!(
            matches!(u.settled(), Err(UploadFailure::Refused(m)) if m.code == ErrorCode::TooLong)
        );

        let mut u = upload();
        u.write_failed("stopped by peer", t);
        u.handle_timeout(t + ANSWER_WAIT);
        assert_eq!(
            u.result(),
            Some(Err(UploadFailure::Stream("stopped by peer".into())))
        );
    }

    #[test]
    fn no_acknowledgement_in_time_is_a_timeout_and_cancel_resets() {
        let t = Instant::now();
        let mut u = upload();
        u.finish(960, t);
        u.handle_timeout(t + ACK_WAIT - Duration::from_millis(1));
        assert_eq!(u.result(), None);
        u.handle_timeout(t + ACK_WAIT);
        assert_eq!(u.result(), Some(Err(UploadFailure::Timeout(ACK_WAIT))));
        let mut u = upload();
        drain(&mut u);
        u.cancel();
        assert_eq!(drain(&mut u), [ClientAction::Reset(0)]);
    }
}
