//! The relay's side of one uploaded clip: every decision between the first frame of a clip
//! stream and the talker's `ClipStored` (or refusal), as a state machine. See the module above
//! for the flow.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::assemble::{Assembled, ClipAssembler, Refusal, check_header};
use crate::clip::{ClipHeader, ClipId, ClipMeta, Target};
use crate::wire::{DeliverHeader, ErrorCode, ErrorMsg, StreamFrame};

/// The limits one upload is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Longest clip accepted, in milliseconds.
    pub max_clip_ms: u32,
    /// A stream with no frame for this long is dropped.
    pub stream_idle: Duration,
    /// How long a talker may hold the floor and the stream: the maximum clip plus a grace.
    pub max_hold: Duration,
    /// Clips one user may send per minute (named in a "busy" refusal).
    pub clips_per_minute: u32,
    /// The floor follows the audio: a talker whose audio falls this far behind the time since
    /// the floor was granted (no packets, or a trickle slower than real time) loses the floor
    /// and the clip ends there (default 2 s).
    pub floor_gap: Duration,
}

impl UploadLimits {
    /// Limits for clips of at most `max_clip_ms`, with a 5 s grace on the hold.
    pub fn new(max_clip_ms: u32, stream_idle: Duration, clips_per_minute: u32) -> Self {
        let max_hold = Duration::from_millis(u64::from(max_clip_ms)) + Duration::from_secs(5);
        Self {
            max_clip_ms,
            stream_idle,
            max_hold,
            clips_per_minute,
            floor_gap: DEFAULT_FLOOR_GAP,
        }
    }
}

/// How far a floor holder's audio may fall behind the clock (see [`UploadLimits::floor_gap`]).
pub const DEFAULT_FLOOR_GAP: Duration = Duration::from_secs(2);

/// How far in the future a clip's `started_at_ms` may be dated, against the relay's clock.
pub const MAX_FUTURE_SKEW_MS: i64 = 30_000;
/// How far in the past a clip's `started_at_ms` may be dated: a clip recorded offline waits in
/// the talker's outbox, but not for more than a day.
pub const MAX_PAST_MS: i64 = 24 * 3600 * 1000;

/// The start time the relay stores for a clip the talker dated `claimed`, the relay's clock
/// reading `wall_ms`: the claim if it is plausible, else the relay's own time.
pub fn plausible_start(claimed: i64, wall_ms: i64) -> i64 {
    if claimed > wall_ms.saturating_add(MAX_FUTURE_SKEW_MS)
        || claimed < wall_ms.saturating_sub(MAX_PAST_MS)
    {
        wall_ms
    } else {
        claimed
    }
}

/// What the relay knows about a clip's target and id, in answer to [`Action::Check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Everyone who should get the clip (the sender left out or not: the machine removes them).
    pub recipients: Vec<String>,
    /// The clip stored under this id already, if any: its sender and seq.
    pub stored: Option<(String, u64)>,
    /// Who is uploading a clip with this id on this relay now (reserved when its header was
    /// checked), if anyone: an id is bound to its sender from the first header.
    pub in_flight: Option<String>,
}

/// Why a floor was not granted, in answer to [`Action::TakeFloor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FloorRefusal {
    /// Someone else holds it.
    Taken {
        /// Who is talking.
        user: String,
    },
    /// The floor could not be checked (a cluster without quorum, say).
    Unavailable(String),
}

/// Why a commit failed, in answer to [`Action::Commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitFailure {
    /// The id was stored meanwhile by another sender.
    Conflict(String),
    /// The store failed (full disk, no quorum, ...).
    Storage(String),
}

/// Something that happened to the upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A frame read from the clip stream.
    Frame(StreamFrame),
    /// The stream ended cleanly: no more frames.
    Finished,
    /// The talker reset the stream with this application code (0: cancelled).
    Reset(u64),
    /// A frame could not be read (too large, malformed, the connection is gone).
    Broken(String),
    /// The answer to [`Action::Check`]: who gets the clip and whether its id is stored, or
    /// why the sender may not send there.
    Checked(Result<Checked, Refusal>),
    /// The answer to [`Action::Admit`]: admitted, or how long until the sender may send again.
    Admitted(Result<(), Duration>),
    /// The answer to [`Action::TakeFloor`].
    Floor(Result<(), FloorRefusal>),
    /// The answer to [`Action::Commit`]: the clip's seq, or why it was not stored.
    Committed(Result<u64, CommitFailure>),
}

/// What the relay's async code does next for this upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Find who may hear a clip to `target` (refusing a sender who may not use it) and whether
    /// `id` is stored already; answer with [`Input::Checked`].
    Check {
        /// The clip.
        id: ClipId,
        /// Its target.
        target: Target,
    },
    /// Ask the sender's rate limit for one more clip; answer with [`Input::Admitted`].
    Admit,
    /// Take `channel`'s floor for `clip` for at most `hold`; answer with [`Input::Floor`].
    TakeFloor {
        /// The channel.
        channel: String,
        /// The clip.
        clip: ClipId,
        /// How long the floor may be held before it frees itself.
        hold: Duration,
    },
    /// Start live copies of the clip to the online sessions of `recipients` (and to the other
    /// relays of a cluster).
    OpenLive {
        /// The header every live copy starts with (`live`, seq 0).
        header: DeliverHeader,
        /// Who should hear it.
        recipients: Vec<String>,
    },
    /// Forward one checked packet to every live copy.
    Forward(Vec<u8>),
    /// Free `channel`'s floor (held by `clip`).
    ReleaseFloor {
        /// The channel.
        channel: String,
        /// The clip that held it.
        clip: ClipId,
    },
    /// Store the clip durably and queue it for `recipients`; answer with [`Input::Committed`].
    Commit {
        /// Its metadata (`seq` is assigned by the store).
        meta: ClipMeta,
        /// Whose inbox it goes to.
        recipients: Vec<String>,
        /// The Ogg Opus file.
        ogg: Vec<u8>,
    },
    /// Tell the talker the clip is stored (`ClipStored`).
    Stored {
        /// The clip.
        id: ClipId,
        /// Its seq.
        seq: u64,
        /// True when it had been stored before (a resend).
        duplicate: bool,
    },
    /// Stop reading the talker's stream, with this application error code.
    StopReading(u32),
    /// Tell the talker the clip was refused (on its control stream).
    Refuse(ErrorMsg),
    /// End every live copy with this abort.
    AbortLive(ErrorMsg),
    /// End every live copy with the end marker: the clip is stored.
    EndLive {
        /// Packets in the clip.
        packets: u32,
        /// Its decoded length in 48 kHz samples.
        samples: u64,
    },
    /// Wake the delivery pumps of these users: their inboxes grew.
    Wake(Vec<String>),
}

/// How an upload ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or found stored: a resend).
    Stored {
        /// Its seq.
        seq: u64,
        /// True for a resend of a stored clip.
        duplicate: bool,
    },
    /// Refused, with what the talker was told.
    Refused(Refusal),
    /// The talker cancelled it; nobody was answered.
    Cancelled,
}

/// The answer to an upload under an id that another user's clip uses: word for word what a
/// fetch of a clip one may not read answers.
pub fn not_readable(id: ClipId) -> Refusal {
    Refusal::new(
        ErrorCode::NotFound,
        format!("there is no clip {id} you may read"),
    )
}

/// Where the upload is.
#[derive(Debug)]
enum State {
    /// Waiting for the first frame, which must be the upload header.
    AwaitHeader,
    /// Waiting for [`Input::Checked`].
    Checking { header: ClipHeader },
    /// Waiting for [`Input::Admitted`].
    Admitting {
        header: ClipHeader,
        recipients: Vec<String>,
    },
    /// An upload under another sender's id: charged to the rate limit like any clip, then
    /// answered exactly as a fetch of an id one may not read is.
    Probing { header: ClipHeader },
    /// Waiting for [`Input::Floor`].
    TakingFloor {
        header: ClipHeader,
        recipients: Vec<String>,
    },
    /// Reading packets until the end marker.
    Receiving {
        header: ClipHeader,
        recipients: Vec<String>,
        // Boxed: the file grows in it, and the state moves on every input but a packet.
        asm: Box<ClipAssembler>,
        floor: bool,
    },
    /// Waiting for [`Input::Committed`].
    Committing {
        header: ClipHeader,
        recipients: Vec<String>,
        packets: u32,
        samples: u64,
    },
    /// Nothing more to do.
    Done(Outcome),
}

/// The relay's side of one uploaded clip.
#[derive(Debug)]
pub struct RelayUpload {
    sender: String,
    limits: UploadLimits,
    state: State,
    actions: VecDeque<Action>,
    /// A frame must arrive by then (while frames are wanted).
    idle_deadline: Option<Instant>,
    /// The clip must end by then (from the moment the floor is granted).
    hold_deadline: Option<Instant>,
    /// A floor holder's audio must have reached this point by then.
    floor_deadline: Option<Instant>,
    /// When the floor was granted.
    floor_since: Option<Instant>,
    /// The relay's wall clock when the stream opened (ms since the epoch).
    wall_ms: i64,
}

impl RelayUpload {
    /// A new clip stream from `sender`, opened at `now` (`wall_ms` on the relay's clock, in
    /// milliseconds since the epoch: the talker's `started_at_ms` is held to it).
    pub fn new(sender: &str, limits: UploadLimits, now: Instant, wall_ms: i64) -> Self {
        Self {
            sender: sender.to_string(),
            limits,
            state: State::AwaitHeader,
            actions: VecDeque::new(),
            idle_deadline: Some(now + limits.stream_idle),
            hold_deadline: None,
            floor_deadline: None,
            floor_since: None,
            wall_ms,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`RelayUpload::handle_timeout`] must be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.idle_deadline, self.hold_deadline, self.floor_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// True while the machine waits for frames from the stream (the driver reads only then,
    /// so a talker waiting for a check or the floor is held back by QUIC flow control).
    pub fn wants_frames(&self) -> bool {
        matches!(self.state, State::AwaitHeader | State::Receiving { .. })
    }

    /// How it ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// The clip's id, once its header arrived.
    pub fn clip(&self) -> Option<ClipId> {
        match &self.state {
            State::AwaitHeader | State::Done(_) => None,
            State::Checking { header }
            | State::Admitting { header, .. }
            | State::Probing { header }
            | State::TakingFloor { header, .. }
            | State::Receiving { header, .. }
            | State::Committing { header, .. } => Some(header.id),
        }
    }

    /// The deadline passed: no frame for too long, or the clip went on too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.hold_deadline.is_some_and(|d| now >= d) {
            self.fail(Refusal::new(
                ErrorCode::TooLong,
                "the clip went on longer than the relay's maximum duration",
            ));
        } else if self.floor_deadline.is_some_and(|d| now >= d) {
            let gap = self.limits.floor_gap.as_millis();
            self.fail(Refusal::new(
                ErrorCode::Timeout,
                format!("the talker's audio stopped (fell {gap} ms behind); the floor was released and the clip ended"),
            ));
        } else if self.idle_deadline.is_some_and(|d| now >= d) {
            match self.state {
                State::AwaitHeader => self.bad_header(),
                _ => self.fail(Refusal::new(
                    ErrorCode::Timeout,
                    "no audio arrived for too long; the clip was dropped",
                )),
            }
        }
    }

    /// Feeds what happened.
    pub fn handle(&mut self, input: Input, now: Instant) {
        // A packet while receiving, nearly every input of an upload: taken in place, without
        // moving the state out and back (a state is a few hundred bytes).
        let input = match (input, &mut self.state) {
            (Input::Frame(StreamFrame::Packet(p)), State::Receiving { asm, .. }) => {
                match asm.push(&p) {
                    Ok(()) => {
                        let received = asm.received_samples();
                        self.forward(p, received, now);
                    }
                    Err(refusal) => {
                        let state =
                            std::mem::replace(&mut self.state, State::Done(Outcome::Cancelled));
                        if let State::Receiving {
                            header,
                            recipients,
                            floor,
                            ..
                        } = state
                        {
                            self.state =
                                self.end_receiving(header, recipients, floor, Err(refusal));
                        }
                    }
                }
                return;
            }
            (input, _) => input,
        };
        let state = std::mem::replace(&mut self.state, State::Done(Outcome::Cancelled));
        self.state = match (state, input) {
            (State::AwaitHeader, Input::Frame(StreamFrame::Upload(header))) => {
                self.on_header(header)
            }
            (State::AwaitHeader, _) => {
                self.state = State::AwaitHeader;
                self.bad_header();
                return;
            }
            (State::Checking { header }, Input::Checked(checked)) => {
                self.on_checked(header, checked)
            }
            (State::Probing { header }, Input::Admitted(admitted)) => match admitted {
                Ok(()) => self.refused(header.id, not_readable(header.id)),
                Err(wait) => self.busy(header.id, wait),
            },
            (State::Admitting { header, recipients }, Input::Admitted(admitted)) => {
                match admitted {
                    Ok(()) => self.after_admission(header, recipients, now),
                    Err(wait) => self.busy(header.id, wait),
                }
            }
            (State::TakingFloor { header, recipients }, Input::Floor(floor)) => {
                match floor {
                    Ok(()) => self.start_receiving(header, recipients, true, now),
                    Err(FloorRefusal::Taken { user }) => {
                        let channel = header.to.name().to_string();
                        self.refused(
                        header.id,
                        Refusal::new(ErrorCode::FloorTaken, format!("busy: {user} is talking on {channel}; try again when they finish")),
                    )
                    }
                    Err(FloorRefusal::Unavailable(why)) => {
                        self.refused(header.id, Refusal::new(ErrorCode::Storage, why))
                    }
                }
            }
            (
                State::Receiving {
                    header,
                    recipients,
                    asm,
                    floor,
                },
                input,
            ) => self.on_receiving(header, recipients, asm, floor, input),
            (
                State::Committing {
                    header,
                    recipients,
                    packets,
                    samples,
                },
                Input::Committed(result),
            ) => self.on_committed(header, recipients, packets, samples, result),
            // Anything else is an input this state does not wait for (a late answer, a frame
            // while the driver should not be reading): ignored.
            (state, _) => state,
        };
    }

    fn on_header(&mut self, mut header: ClipHeader) -> State {
        self.idle_deadline = None;
        if let Err(refusal) = check_header(&header) {
            return self.refused(header.id, refusal);
        }
        header.started_at_ms = plausible_start(header.started_at_ms, self.wall_ms);
        self.actions.push_back(Action::Check {
            id: header.id,
            target: header.to.clone(),
        });
        State::Checking { header }
    }

    fn on_checked(&mut self, header: ClipHeader, checked: Result<Checked, Refusal>) -> State {
        let checked = match checked {
            Ok(c) => c,
            Err(refusal) => return self.refused(header.id, refusal),
        };
        let foreign = |from: Option<&String>| from.is_some_and(|f| *f != self.sender);
        if foreign(checked.stored.as_ref().map(|(from, _)| from))
            || foreign(checked.in_flight.as_ref())
        {
            // Another sender's id (stored, or live now): never accepted, and answered as a
            // fetch of it would be, after costing a clip of the rate limit, so ids cannot be
            // probed or hijacked.
            self.actions.push_back(Action::Admit);
            return State::Probing { header };
        }
        if let Some((_, seq)) = checked.stored {
            // A resend of a stored clip: acknowledge again, store nothing.
            self.actions.push_back(Action::StopReading(0));
            self.actions.push_back(Action::Stored {
                id: header.id,
                seq,
                duplicate: true,
            });
            return State::Done(Outcome::Stored {
                seq,
                duplicate: true,
            });
        }
        let recipients: Vec<String> = checked
            .recipients
            .into_iter()
            .filter(|r| *r != self.sender)
            .collect();
        self.actions.push_back(Action::Admit);
        State::Admitting { header, recipients }
    }

    fn after_admission(
        &mut self,
        header: ClipHeader,
        recipients: Vec<String>,
        now: Instant,
    ) -> State {
        match &header.to {
            Target::Channel(channel) => {
                self.actions.push_back(Action::TakeFloor {
                    channel: channel.clone(),
                    clip: header.id,
                    hold: self.limits.max_hold,
                });
                State::TakingFloor { header, recipients }
            }
            // Direct clips are not floor-controlled.
            Target::User(_) => self.start_receiving(header, recipients, false, now),
        }
    }

    fn start_receiving(
        &mut self,
        header: ClipHeader,
        recipients: Vec<String>,
        floor: bool,
        now: Instant,
    ) -> State {
        let live = DeliverHeader {
            id: header.id,
            from: self.sender.clone(),
            to: header.to.clone(),
            started_at_ms: header.started_at_ms,
            codec: header.codec,
            live: true,
            seq: 0,
            content: Default::default(),
        };
        self.actions.push_back(Action::OpenLive {
            header: live,
            recipients: recipients.clone(),
        });
        self.idle_deadline = Some(now + self.limits.stream_idle);
        self.hold_deadline = Some(now + self.limits.max_hold);
        if floor {
            self.floor_since = Some(now);
            self.floor_deadline = Some(now + self.limits.floor_gap);
        }
        let asm = Box::new(ClipAssembler::new(&header, self.limits.max_clip_ms));
        State::Receiving {
            header,
            recipients,
            asm,
            floor,
        }
    }

    fn on_receiving(
        &mut self,
        header: ClipHeader,
        recipients: Vec<String>,
        asm: Box<ClipAssembler>,
        floor: bool,
        input: Input,
    ) -> State {
        let ended = match input {
            // (Packets are taken in place by `handle`.)
            Input::Frame(StreamFrame::End { packets, samples }) => (*asm).finish(packets, samples),
            Input::Frame(StreamFrame::Abort(_)) | Input::Reset(0) => Err(self.cancelled()),
            Input::Frame(_) => Err(Refusal::new(
                ErrorCode::BadRequest,
                "unexpected frame in a clip stream",
            )),
            Input::Reset(code) => Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("bad clip stream: the talker reset it (code {code})"),
            )),
            Input::Broken(e) => Err(Refusal::new(
                ErrorCode::BadRequest,
                format!("bad clip stream: {e}"),
            )),
            Input::Finished => Err(Refusal::new(
                ErrorCode::BadRequest,
                "the clip stream ended without an end marker",
            )),
            // Answers this state does not wait for.
            Input::Checked(_) | Input::Admitted(_) | Input::Floor(_) | Input::Committed(_) => {
                return State::Receiving {
                    header,
                    recipients,
                    asm,
                    floor,
                };
            }
        };
        self.end_receiving(header, recipients, floor, ended)
    }

    /// A packet was checked (size, TOC) and joined the file: it goes to the live copies, and
    /// the deadlines move on (`received`: the audio so far, in samples).
    fn forward(&mut self, packet: Vec<u8>, received: u64, now: Instant) {
        self.actions.push_back(Action::Forward(packet));
        self.idle_deadline = Some(now + self.limits.stream_idle);
        if let Some(since) = self.floor_since {
            let audio = Duration::from_millis(received / 48);
            self.floor_deadline = Some(since + audio + self.limits.floor_gap);
        }
    }

    /// The clip ended: complete (`ended` holds its file) or refused.
    fn end_receiving(
        &mut self,
        header: ClipHeader,
        recipients: Vec<String>,
        floor: bool,
        ended: Result<Assembled, Refusal>,
    ) -> State {
        self.clear_deadlines();
        // The talker has let go (or the clip failed): the floor is free before the talker
        // hears `ClipStored`, so whoever is told "stored" may talk next.
        if floor {
            self.actions.push_back(Action::ReleaseFloor {
                channel: header.to.name().to_string(),
                clip: header.id,
            });
        }
        let assembled = match ended {
            Ok(a) => a,
            Err(refusal) => return self.abandon(header.id, refusal),
        };
        let (file, packets) = (assembled.ogg, assembled.packets);
        let meta = ClipMeta {
            id: header.id,
            from: self.sender.clone(),
            to: header.to.clone(),
            started_at_ms: header.started_at_ms,
            duration_ms: u32::try_from((assembled.samples + 24) / 48).unwrap_or(u32::MAX),
            packets,
            bytes: file.len() as u64,
            codec: header.codec,
            seq: 0,
            content: Default::default(),
        };
        self.actions.push_back(Action::Commit {
            meta,
            recipients: recipients.clone(),
            ogg: file,
        });
        State::Committing {
            header,
            recipients,
            packets,
            samples: assembled.samples,
        }
    }

    fn on_committed(
        &mut self,
        header: ClipHeader,
        recipients: Vec<String>,
        packets: u32,
        samples: u64,
        result: Result<u64, CommitFailure>,
    ) -> State {
        match result {
            Ok(seq) => {
                self.actions.push_back(Action::Stored {
                    id: header.id,
                    seq,
                    duplicate: false,
                });
                self.actions.push_back(Action::EndLive { packets, samples });
                self.actions.push_back(Action::Wake(recipients));
                State::Done(Outcome::Stored {
                    seq,
                    duplicate: false,
                })
            }
            Err(failure) => {
                let (code, why) = match failure {
                    CommitFailure::Conflict(why) => (ErrorCode::Conflict, why),
                    CommitFailure::Storage(why) => (ErrorCode::Storage, why),
                };
                self.abandon(
                    header.id,
                    Refusal::new(code, format!("the relay could not store the clip: {why}")),
                )
            }
        }
    }

    fn clear_deadlines(&mut self) {
        (self.idle_deadline, self.hold_deadline, self.floor_deadline) = (None, None, None);
    }

    /// Over the clips-per-minute limit: busy, with the typed delay.
    fn busy(&mut self, id: ClipId, wait: Duration) -> State {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        self.refused(
            id,
            Refusal::new(
                ErrorCode::Busy { retry_after_ms: ms },
                format!(
                    "busy, retry after {ms} ms: at most {} clips per minute",
                    self.limits.clips_per_minute
                ),
            ),
        )
    }

    /// The talker cancelled the clip: live listeners are told, the talker is not answered.
    fn cancelled(&self) -> Refusal {
        Refusal::new(
            ErrorCode::Cancelled,
            format!("{} cancelled the clip", self.sender),
        )
    }

    /// Ends a clip whose live copies are open: they get the abort, the talker the refusal
    /// (unless they cancelled it themselves).
    fn abandon(&mut self, id: ClipId, refusal: Refusal) -> State {
        self.actions
            .push_back(Action::AbortLive(refusal.to_wire(id)));
        if refusal.code == ErrorCode::Cancelled {
            return State::Done(Outcome::Cancelled);
        }
        self.refused(id, refusal)
    }

    /// Refuses the clip: the talker's stream is stopped and the talker told why.
    fn refused(&mut self, id: ClipId, refusal: Refusal) -> State {
        self.clear_deadlines();
        self.actions
            .push_back(Action::StopReading(refusal.code.quic_code()));
        self.actions.push_back(Action::Refuse(refusal.to_wire(id)));
        State::Done(Outcome::Refused(refusal))
    }

    /// A stream that does not start with an upload header (or not in time).
    fn bad_header(&mut self) {
        let refusal = Refusal::new(
            ErrorCode::BadRequest,
            "a clip stream must start with an upload header",
        );
        self.idle_deadline = None;
        self.actions
            .push_back(Action::StopReading(refusal.code.quic_code()));
        self.actions.push_back(Action::Refuse(ErrorMsg {
            req: None,
            clip: None,
            code: refusal.code,
            message: refusal.message.clone(),
        }));
        self.state = State::Done(Outcome::Refused(refusal));
    }

    /// Fails the clip from whatever state it is in (a deadline passed).
    fn fail(&mut self, refusal: Refusal) {
        let state = std::mem::replace(&mut self.state, State::Done(Outcome::Cancelled));
        self.state = match state {
            State::Receiving { header, floor, .. } => {
                if floor {
                    self.actions.push_back(Action::ReleaseFloor {
                        channel: header.to.name().to_string(),
                        clip: header.id,
                    });
                }
                self.abandon(header.id, refusal)
            }
            State::Checking { header }
            | State::Admitting { header, .. }
            | State::Probing { header }
            | State::TakingFloor { header, .. }
            | State::Committing { header, .. } => self.refused(header.id, refusal),
            State::AwaitHeader => {
                self.state = State::AwaitHeader;
                self.bad_header();
                return;
            }
            done @ State::Done(_) => done,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::CodecParams;
    use crate::testing::synthetic_clip;

    const IDLE: Duration = Duration::from_secs(10);
    /// The relay's clock in these tests.
    const WALL: i64 = 1_790_000_000_000;

    fn header(to: Target) -> ClipHeader {
        ClipHeader {
            id: ClipId([9; 16]),
            to,
            started_at_ms: WALL - 1000,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: 312,
            },
        }
    }

    fn drain(u: &mut RelayUpload) -> Vec<Action> {
        std::iter::from_fn(|| u.poll_action()).collect()
    }

    fn crew() -> Target {
        Target::Channel("crew".into())
    }

    /// An upload from alice that passed every check and holds the floor.
    fn receiving(now: Instant) -> RelayUpload {
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), now, WALL);
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), now);
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec!["alice".into(), "bob".into()],
                stored: None,
                in_flight: None,
            })),
            now,
        );
        u.handle(Input::Admitted(Ok(())), now);
        u.handle(Input::Floor(Ok(())), now);
        drain(&mut u);
        u
    }

    #[test]
    fn a_channel_clip_is_checked_admitted_floored_forwarded_committed_and_acknowledged_in_that_order()
     {
        let t = Instant::now();
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        assert!(u.wants_frames());
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
        assert_eq!(
            drain(&mut u),
            [Action::Check {
                id: ClipId([9; 16]),
                target: crew()
            }]
        );
        assert!(!u.wants_frames(), "the talker waits while the relay checks");
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec!["alice".into(), "bob".into()],
                stored: None,
                in_flight: None,
            })),
            t,
        );
        assert_eq!(drain(&mut u), [Action::Admit]);
        u.handle(Input::Admitted(Ok(())), t);
        assert!(matches!(drain(&mut u)[..], [Action::TakeFloor { .. }]));
        u.handle(Input::Floor(Ok(())), t);
        let open = drain(&mut u);
        assert!(
            matches!(&open[..], [Action::OpenLive { recipients, .. }] if recipients == &["bob".to_string()]),
            "the talker is not a recipient: {open:?}"
        );
        let clip = synthetic_clip(4_800);
        for p in &clip.packets {
            u.handle(Input::Frame(StreamFrame::Packet(p.clone())), t);
        }
        assert_eq!(
            drain(&mut u),
            clip.packets
                .iter()
                .cloned()
                .map(Action::Forward)
                .collect::<Vec<_>>()
        );
        u.handle(
            Input::Frame(StreamFrame::End {
                packets: clip.packets.len() as u32,
                samples: clip.samples,
            }),
            t,
        );
        let actions = drain(&mut u);
        assert!(
            matches!(&actions[0], Action::ReleaseFloor { channel, .. } if channel == "crew"),
            "the floor frees first: {actions:?}"
        );
        let Action::Commit {
            meta,
            recipients,
            ogg,
        } = &actions[1]
        else {
            panic!("then the commit: {actions:?}")
        };
        assert_eq!(
            (meta.from.as_str(), meta.duration_ms, recipients.as_slice()),
            ("alice", 100, &["bob".to_string()][..])
        );
        assert_eq!(
            crate::ogg::read_ogg(ogg).expect("a valid file").packets,
            clip.packets
        );
        u.handle(Input::Committed(Ok(7)), t);
        assert_eq!(
            drain(&mut u),
            [
                Action::Stored {
                    id: ClipId([9; 16]),
                    seq: 7,
                    duplicate: false
                },
                Action::EndLive {
                    packets: clip.packets.len() as u32,
                    samples: clip.samples
                },
                Action::Wake(vec!["bob".into()])
            ]
        );
        assert_eq!(
            u.outcome(),
            Some(&Outcome::Stored {
                seq: 7,
                duplicate: false
            })
        );
    }

    #[test]
    fn a_direct_clip_takes_no_floor() {
        let t = Instant::now();
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(
            Input::Frame(StreamFrame::Upload(header(Target::User("bob".into())))),
            t,
        );
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec!["bob".into()],
                stored: None,
                in_flight: None,
            })),
            t,
        );
        u.handle(Input::Admitted(Ok(())), t);
        let actions = drain(&mut u);
        assert!(
            matches!(
                &actions[..],
                [Action::Check { .. }, Action::Admit, Action::OpenLive { .. }]
            ),
            "{actions:?}"
        );
    }

    #[test]
    fn a_stream_that_does_not_start_with_a_header_is_refused_without_a_clip_id() {
        let t = Instant::now();
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(Input::Frame(StreamFrame::Packet(vec![0xf8])), t);
        let actions = drain(&mut u);
        assert!(
            matches!(
                &actions[..],
                [
                    Action::StopReading(1),
                    Action::Refuse(ErrorMsg {
                        clip: None,
                        code: ErrorCode::BadRequest,
                        ..
                    })
                ]
            ),
            "{actions:?}"
        );
        let mut silent = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        assert_eq!(silent.poll_timeout(), Some(t + IDLE));
        silent.handle_timeout(t + IDLE);
        assert!(
            matches!(silent.outcome(), Some(Outcome::Refused(r)) if r.code == ErrorCode::BadRequest)
        );
    }

    #[test]
    fn busy_carries_its_retry_delay_typed() {
        let t = Instant::now();
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec![],
                stored: None,
                in_flight: None,
            })),
            t,
        );
        u.handle(Input::Admitted(Err(Duration::from_millis(19_250))), t);
        let refused = drain(&mut u).into_iter().find_map(|a| match a {
            Action::Refuse(m) => Some(m),
            _ => None,
        });
        assert_eq!(
            refused.map(|m| m.code),
            Some(ErrorCode::Busy {
                retry_after_ms: 19_250
            })
        );
    }

    #[test]
    fn silence_drops_the_clip_and_a_clip_past_the_hold_is_too_long() {
        let t = Instant::now();
        // A direct clip holds no floor: only the stream's idle timer applies.
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(
            Input::Frame(StreamFrame::Upload(header(Target::User("bob".into())))),
            t,
        );
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec!["bob".into()],
                stored: None,
                in_flight: None,
            })),
            t,
        );
        u.handle(Input::Admitted(Ok(())), t);
        drain(&mut u);
        u.handle(
            Input::Frame(StreamFrame::Packet(synthetic_clip(960).packets[0].clone())),
            t + Duration::from_secs(5),
        );
        drain(&mut u);
        assert_eq!(
            u.poll_timeout(),
            Some(t + Duration::from_secs(15)),
            "each packet restarts the idle timer"
        );
        u.handle_timeout(t + Duration::from_secs(15));
        let actions = drain(&mut u);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::AbortLive(m) if m.code == ErrorCode::Timeout))
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Refuse(m) if m.code == ErrorCode::Timeout))
        );

        let mut u = receiving(t);
        let hold = UploadLimits::new(60_000, IDLE, 60).max_hold;
        u.handle_timeout(t + hold);
        assert!(matches!(u.outcome(), Some(Outcome::Refused(r)) if r.code == ErrorCode::TooLong));
    }

    #[test]
    fn the_floor_follows_the_audio_a_silent_or_trickling_talker_loses_it() {
        let t = Instant::now();
        let gap = DEFAULT_FLOOR_GAP;
        // A header and no audio: the floor goes after the gap, not after the 10 s idle timer.
        let mut u = receiving(t);
        assert_eq!(u.poll_timeout(), Some(t + gap));
        u.handle_timeout(t + gap);
        let actions = drain(&mut u);
        assert!(
            matches!(&actions[0], Action::ReleaseFloor { .. }),
            "the floor is freed first: {actions:?}"
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Refuse(m) if m.code == ErrorCode::Timeout)),
            "{actions:?}"
        );

        // A trickle: one 20 ms packet every 1.5 s never catches up with the clock.
        let packet = synthetic_clip(960).packets[0].clone();
        let mut u = receiving(t);
        let mut at = t;
        let lost = loop {
            at += Duration::from_millis(1500);
            let due = u.poll_timeout().expect("a deadline while talking");
            if due <= at {
                u.handle_timeout(due);
                break due;
            }
            u.handle(Input::Frame(StreamFrame::Packet(packet.clone())), at);
        };
        assert!(
            lost <= t + Duration::from_secs(4),
            "a trickle keeps the floor only about the gap: lost after {:?}",
            lost - t
        );
        assert!(matches!(u.outcome(), Some(Outcome::Refused(r)) if r.code == ErrorCode::Timeout));

        // Real-time audio (a packet every 20 ms) keeps it for as long as the talker talks.
        let mut u = receiving(t);
        for i in 1..=500u64 {
            let at = t + Duration::from_millis(20 * i);
            assert!(
                u.poll_timeout().is_some_and(|d| d > at),
                "still holding at packet {i}"
            );
            u.handle(Input::Frame(StreamFrame::Packet(packet.clone())), at);
        }
        assert!(
            u.outcome().is_none(),
            "10 s of real-time audio holds the floor"
        );
    }

    #[test]
    fn a_start_time_far_from_the_relays_clock_is_replaced_by_the_relays() {
        assert_eq!(
            plausible_start(WALL - 5_000, WALL),
            WALL - 5_000,
            "a clip recorded a moment ago keeps its time"
        );
        assert_eq!(
            plausible_start(WALL - 3_600_000, WALL),
            WALL - 3_600_000,
            "so does one that waited offline for an hour"
        );
        assert_eq!(
            plausible_start(1_262_304_000_000, WALL),
            WALL,
            "a clip dated 2010"
        );
        assert_eq!(
            plausible_start(WALL + 3_600_000, WALL),
            WALL,
            "a clip from the future"
        );
        assert_eq!(plausible_start(i64::MIN, WALL), WALL);
        let mut u = RelayUpload::new(
            "alice",
            UploadLimits::new(60_000, IDLE, 60),
            Instant::now(),
            WALL,
        );
        let mut h = header(Target::User("bob".into()));
        h.started_at_ms = -5;
        u.handle(Input::Frame(StreamFrame::Upload(h)), Instant::now());
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec!["bob".into()],
                stored: None,
                in_flight: None,
            })),
            Instant::now(),
        );
        u.handle(Input::Admitted(Ok(())), Instant::now());
        let open = drain(&mut u).into_iter().find_map(|a| match a {
            Action::OpenLive { header, .. } => Some(header),
            _ => None,
        });
        assert_eq!(
            open.map(|h| h.started_at_ms),
            Some(WALL),
            "listeners hear the relay's time"
        );
    }

    #[test]
    fn a_cancel_tells_live_listeners_and_not_the_talker() {
        for input in [
            Input::Reset(0),
            Input::Frame(StreamFrame::Abort(ErrorMsg {
                req: None,
                clip: None,
                code: ErrorCode::Cancelled,
                message: String::new(),
            })),
        ] {
            let t = Instant::now();
            let mut u = receiving(t);
            u.handle(input, t);
            let actions = drain(&mut u);
            assert!(
                matches!(&actions[..], [Action::ReleaseFloor { .. }, Action::AbortLive(m)] if m.code == ErrorCode::Cancelled),
                "{actions:?}"
            );
            assert_eq!(u.outcome(), Some(&Outcome::Cancelled));
        }
    }

    #[test]
    fn a_resend_of_a_stored_clip_is_acknowledged_again_and_another_senders_id_is_answered_as_a_fetch()
     {
        let t = Instant::now();
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec![],
                stored: Some(("alice".into(), 3)),
                in_flight: None,
            })),
            t,
        );
        assert_eq!(
            drain(&mut u)[1..],
            [
                Action::StopReading(0),
                Action::Stored {
                    id: ClipId([9; 16]),
                    seq: 3,
                    duplicate: true
                }
            ]
        );
        // Another user's id, stored or still being talked: costs a clip of the rate limit, then
        // the fetch's own answer; nothing is opened, forwarded or stored.
        for (stored, in_flight) in [
            (Some(("alice".to_string(), 3)), None),
            (None, Some("alice".to_string())),
        ] {
            let mut u = RelayUpload::new("mallory", UploadLimits::new(60_000, IDLE, 60), t, WALL);
            u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
            u.handle(
                Input::Checked(Ok(Checked {
                    recipients: vec!["alice".into(), "bob".into()],
                    stored,
                    in_flight,
                })),
                t,
            );
            assert_eq!(drain(&mut u)[1..], [Action::Admit]);
            u.handle(Input::Admitted(Ok(())), t);
            let actions = drain(&mut u);
            let fetch_answer = not_readable(ClipId([9; 16])).to_wire(ClipId([9; 16]));
            assert_eq!(
                actions,
                [
                    Action::StopReading(ErrorCode::NotFound.quic_code()),
                    Action::Refuse(fetch_answer)
                ]
            );
        }
        // Over the rate limit, the probe is refused as busy like any clip.
        let mut u = RelayUpload::new("mallory", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec![],
                stored: None,
                in_flight: Some("alice".into()),
            })),
            t,
        );
        u.handle(Input::Admitted(Err(Duration::from_secs(3))), t);
        assert!(
            matches!(u.outcome(), Some(Outcome::Refused(r)) if matches!(r.code, ErrorCode::Busy { .. }))
        );
        // The same sender's id in flight (a retry racing its first attempt) goes on.
        let mut u = RelayUpload::new("alice", UploadLimits::new(60_000, IDLE, 60), t, WALL);
        u.handle(Input::Frame(StreamFrame::Upload(header(crew()))), t);
        u.handle(
            Input::Checked(Ok(Checked {
                recipients: vec![],
                stored: None,
                in_flight: Some("alice".into()),
            })),
            t,
        );
        assert_eq!(drain(&mut u)[1..], [Action::Admit]);
        u.handle(Input::Admitted(Ok(())), t);
        assert!(matches!(drain(&mut u)[..], [Action::TakeFloor { .. }]));
    }

    #[test]
    fn a_failed_commit_aborts_the_live_copies_and_tells_the_talker() {
        let t = Instant::now();
        let mut u = receiving(t);
        let clip = synthetic_clip(960);
        for p in &clip.packets {
            u.handle(Input::Frame(StreamFrame::Packet(p.clone())), t);
        }
        u.handle(
            Input::Frame(StreamFrame::End {
                packets: clip.packets.len() as u32,
                samples: clip.samples,
            }),
            t,
        );
        drain(&mut u);
        u.handle(
            Input::Committed(Err(CommitFailure::Storage(
                "No space left on device".into(),
            ))),
            t,
        );
        let actions = drain(&mut u);
        assert!(
            matches!(&actions[0], Action::AbortLive(m) if m.code == ErrorCode::Storage),
            "{actions:?}"
        );
        assert!(
            matches!(&actions[2], Action::Refuse(m) if m.message.contains("No space left")),
            "{actions:?}"
        );
    }
}
