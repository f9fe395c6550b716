//! One push-to-talk clip, from the key going down to stored, queued, refused or cancelled.
//! While it records, the loop keeps serving release and cancel, the player and relay events
//! (clips, presence, receipts keep arriving while you talk); other commands are done right
//! after.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Command;
use super::book;
use super::state::{NoticeKind, Talk};
use super::worker::Worker;
use walkie_client::talk::{self, TalkControl, TalkOptions, TalkOutcome};
use walkie_client::{Client, ClientError};
use walkie_proto::clip::{ClipMeta, CodecParams, Target, now_ms};
use walkie_proto::wire::ErrorCode;

/// The longest clip recorded (the relay refuses clips over 60 s by default).
pub const MAX_CLIP: Duration = Duration::from_secs(59);

impl Worker {
    /// Records and streams a clip to `to` until released or cancelled.
    pub(super) async fn talk(&mut self, client: &Client, to: Target, rx: &mut mpsc::UnboundedReceiver<Command>) {
        if self.mic.is_lent() {
            self.notice(NoticeKind::Error, "The microphone is busy with the microphone test; try again in a moment.");
            return;
        }
        let Some(outbox) = self.session.as_ref().map(|s| s.outbox.clone()) else { return };
        let source = match self.mic.take() {
            Ok(s) => s,
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("Microphone: {e}"));
                return;
            }
        };
        let control = TalkControl::new();
        let opts = TalkOptions { encoder: self.encoder(), ..TalkOptions::new(to.clone()) };
        self.snap.talk = Talk::Talking { to: to.clone(), control: control.clone() };
        if matches!(self.snap.notice.as_ref().map(|n| n.kind), Some(NoticeKind::Busy)) {
            self.snap.notice = None;
        }
        self.publish();
        let started_at_ms = now_ms();
        let clip = talk::talk(client, &outbox, source, &opts, control.clone(), Some(MAX_CLIP));
        tokio::pin!(clip);
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        // A lost connection ends the talk with its error; until then, events are served.
        let mut events_open = true;
        let result = loop {
            tokio::select! {
                r = &mut clip => break r,
                e = client.next_event_shared(), if events_open => match e {
                    Some(e) => {
                        self.event(e, Some(client)).await;
                        self.publish();
                    }
                    None => events_open = false,
                },
                cmd = rx.recv() => match cmd {
                    Some(Command::TalkRelease) => {
                        control.release();
                        self.snap.talk = Talk::Sending { to: to.clone() };
                        self.publish();
                    }
                    Some(Command::TalkCancel) => control.cancel(),
                    Some(Command::TalkStart(_)) => {}
                    Some(other) => self.deferred.push_back(other),
                    None => {
                        control.cancel();
                        self.deferred.push_back(Command::Shutdown);
                    }
                },
                _ = tick.tick() => {
                    self.player_events(Some(client)).await;
                    self.publish();
                }
            }
        };
        self.snap.talk = Talk::Idle;
        let me = self.snap.me().unwrap_or_default().to_string();
        let meta = |id, seq, duration_ms| ClipMeta {
            id,
            from: me.clone(),
            to: to.clone(),
            started_at_ms,
            duration_ms,
            packets: 0,
            bytes: 0,
            codec: CodecParams { frame_samples: 960, bitrate: opts.encoder.bitrate, pre_skip: 0 },
            seq,
        };
        match result {
            Ok((outcome, source)) => {
                self.mic.give_back(Some(source));
                match outcome {
                    TalkOutcome::Stored { id, seq, duration } => {
                        let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
                        book::add_clip(&mut self.snap.conversations, &me, &meta(id, seq, ms), true);
                        self.jobs.push_back(super::jobs::Job::Audio(id));
                    }
                    TalkOutcome::Queued { id, reason } => {
                        book::add_clip(&mut self.snap.conversations, &me, &meta(id, 0, 0), true);
                        book::set_queued(&mut self.snap.conversations, id, true);
                        self.notice(
                            NoticeKind::Info,
                            format!("Recorded, but not sent yet ({reason}): it waits in the outbox and goes when the relay is back."),
                        );
                    }
                    TalkOutcome::Cancelled => self.notice(NoticeKind::Info, "Cancelled: nothing was sent."),
                }
            }
            Err(ClientError::Refused(e)) if e.code == ErrorCode::FloorTaken => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Busy, busy_text(&e.message));
            }
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("The clip was not sent: {e}"));
            }
        }
    }
}

/// The busy notice: the relay's sentence names who is talking.
fn busy_text(message: &str) -> String {
    let m = message.strip_prefix("busy: ").unwrap_or(message);
    let mut text = format!("Busy: {m}");
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_notice_names_the_talker() {
        assert_eq!(
            super::busy_text("busy: bob is talking on crew; try again when they finish"),
            "Busy: bob is talking on crew; try again when they finish."
        );
    }
}
