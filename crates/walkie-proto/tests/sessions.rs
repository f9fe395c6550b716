//! The upload protocol end to end with no I/O: clients' upload cores talk to relay upload
//! cores through in-memory streams, in a world with an in-memory store, rate limits and
//! floors, on a simulated clock. Every case runs in microseconds, without sockets or sleeps,
//! and the same every time.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use walkie_proto::clip::{ClipHeader, ClipId, Target};
use walkie_proto::floor::Floors;
use walkie_proto::rate::UserLimits;
use walkie_proto::testing::{SyntheticClip, synthetic_clip};
use walkie_proto::upload::{
    Action, Checked, ClientAction, ClientUpload, CommitFailure, FloorRefusal, Input, RelayUpload,
    UploadFailure, UploadLimits,
};
use walkie_proto::wire::{ErrorCode, StreamFrame};

const IDLE: Duration = Duration::from_secs(10);

/// How a live listener's copy of a clip ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LiveEnd {
    Ended,
    Aborted(ErrorCode),
}

/// What the online recipients of one clip heard live.
#[derive(Clone, Debug, Default)]
struct Heard {
    recipients: Vec<String>,
    packets: usize,
    end: Option<LiveEnd>,
}

/// Everything outside the two cores: the store, the channels, the floors, the rate limits and
/// the clock.
struct World {
    start: Instant,
    now: Instant,
    channels: HashMap<String, Vec<String>>,
    users: Vec<String>,
    /// The in-memory store: clip id -> (sender, seq).
    stored: HashMap<ClipId, (String, u64)>,
    /// Ids reserved by the uploads in progress: clip id -> sender.
    reserved: HashMap<ClipId, String>,
    next_seq: u64,
    floors: Floors,
    limits: UserLimits,
    upload_limits: UploadLimits,
    /// The next commit fails as a full disk would.
    disk_full: bool,
    heard: HashMap<ClipId, Heard>,
    woken: Vec<String>,
}

impl World {
    /// Users alice, bob, carol; channel crew of all three; 60 clips a minute.
    fn new() -> World {
        World::with_clips_per_minute(60)
    }

    fn with_clips_per_minute(per_minute: u32) -> World {
        let start = Instant::now();
        World {
            start,
            now: start,
            channels: HashMap::from([(
                "crew".to_string(),
                vec!["alice".into(), "bob".into(), "carol".into()],
            )]),
            users: vec!["alice".into(), "bob".into(), "carol".into()],
            stored: HashMap::new(),
            reserved: HashMap::new(),
            next_seq: 1,
            floors: Floors::default(),
            limits: UserLimits::new(per_minute, 64 * 1024),
            upload_limits: UploadLimits::new(60_000, IDLE, per_minute),
            disk_full: false,
            heard: HashMap::new(),
            woken: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// A new clip from `user` to `to`: its client core, and the relay core of its stream.
    fn upload(&self, user: &str, to: &str, clip: &SyntheticClip) -> Talk {
        let header = ClipHeader {
            id: ClipId::random(),
            to: to.parse().expect("a target"),
            started_at_ms: 0,
            codec: clip.params,
        };
        self.upload_with(user, header)
    }

    /// An upload of a given header (a resend keeps its id).
    fn upload_with(&self, user: &str, header: ClipHeader) -> Talk {
        Talk {
            user: user.to_string(),
            id: header.id,
            client: ClientUpload::new(&header),
            relay: RelayUpload::new(
                user,
                self.upload_limits,
                self.now,
                walkie_proto::clip::now_ms(),
            ),
            stream: VecDeque::new(),
            finished: false,
            reset: None,
            stopped: false,
        }
    }

    /// Answers what a relay core asks, and records what it does; the input to feed back.
    fn carry_out(&mut self, t: &mut Talk, action: Action) -> Option<Input> {
        match action {
            Action::Check { id, target } => {
                let recipients = match &target {
                    Target::Channel(c) => match self.channels.get(c) {
                        Some(m) if m.contains(&t.user) => Ok(m.clone()),
                        _ => Err(walkie_proto::assemble::Refusal::new(
                            ErrorCode::Forbidden,
                            format!("you are not a member of channel {c}"),
                        )),
                    },
                    Target::User(u) if self.users.contains(u) => Ok(vec![u.clone()]),
                    Target::User(u) => Err(walkie_proto::assemble::Refusal::new(
                        ErrorCode::NotFound,
                        format!("there is no user @{u}"),
                    )),
                };
                let in_flight = self.reserved.get(&id).cloned();
                if recipients.is_ok() && in_flight.is_none() {
                    self.reserved.insert(id, t.user.clone());
                }
                Some(Input::Checked(recipients.map(|recipients| Checked {
                    recipients,
                    stored: self.stored.get(&id).cloned(),
                    in_flight,
                })))
            }
            Action::Admit => Some(Input::Admitted(self.limits.admit_clip(&t.user, self.now))),
            Action::TakeFloor {
                channel,
                clip,
                hold,
            } => Some(Input::Floor(
                self.floors
                    .try_take(&channel, &t.user, clip, self.now, hold)
                    .map_err(|holder| FloorRefusal::Taken { user: holder.user }),
            )),
            Action::ReleaseFloor { channel, clip } => {
                self.floors.release(&channel, &t.user, clip);
                None
            }
            Action::OpenLive { header, recipients } => {
                self.heard.insert(
                    header.id,
                    Heard {
                        recipients,
                        ..Heard::default()
                    },
                );
                None
            }
            Action::Forward(_) => {
                self.heard
                    .get_mut(&t.id)
                    .expect("forwarded after OpenLive")
                    .packets += 1;
                None
            }
            Action::Commit { meta, .. } => {
                if std::mem::take(&mut self.disk_full) {
                    return Some(Input::Committed(Err(CommitFailure::Storage(
                        "No space left on device".into(),
                    ))));
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.stored.insert(meta.id, (meta.from.clone(), seq));
                Some(Input::Committed(Ok(seq)))
            }
            Action::Stored { seq, duplicate, .. } => {
                t.client.answer(Ok((seq, duplicate)));
                None
            }
            Action::StopReading(_) => {
                t.stopped = true;
                t.stream.clear();
                None
            }
            Action::Refuse(error) => {
                t.client.answer(Err(error));
                None
            }
            Action::AbortLive(error) => {
                self.heard
                    .get_mut(&t.id)
                    .expect("aborted after OpenLive")
                    .end = Some(LiveEnd::Aborted(error.code));
                None
            }
            Action::EndLive { .. } => {
                self.heard.get_mut(&t.id).expect("ended after OpenLive").end = Some(LiveEnd::Ended);
                None
            }
            Action::Wake(users) => {
                self.woken.extend(users);
                None
            }
        }
    }

    /// Runs both cores of `t` until neither has anything left to do.
    fn settle(&mut self, t: &mut Talk) {
        loop {
            let mut progress = false;
            while let Some(action) = t.client.poll_action() {
                progress = true;
                match action {
                    ClientAction::Write(_) if t.stopped => t
                        .client
                        .write_failed("the relay stopped the stream", self.now),
                    ClientAction::Write(frame) => t.stream.push_back(frame),
                    ClientAction::FinishStream => t.finished = true,
                    ClientAction::Reset(code) => {
                        t.reset = Some(u64::from(code));
                        t.stream.clear();
                    }
                }
            }
            if t.relay.wants_frames() {
                let input = if let Some(code) = t.reset.take() {
                    Some(Input::Reset(code))
                } else if let Some(frame) = t.stream.pop_front() {
                    Some(Input::Frame(frame))
                } else if t.finished && !t.stopped {
                    t.finished = false;
                    Some(Input::Finished)
                } else {
                    None
                };
                if let Some(input) = input {
                    progress = true;
                    t.relay.handle(input, self.now);
                }
            }
            while let Some(action) = t.relay.poll_action() {
                progress = true;
                if let Some(input) = self.carry_out(t, action) {
                    t.relay.handle(input, self.now);
                }
            }
            if !progress {
                if t.relay.outcome().is_some() && self.reserved.get(&t.id) == Some(&t.user) {
                    self.reserved.remove(&t.id);
                }
                return;
            }
        }
    }

    /// Lets the clock reach every deadline the cores set within `by`.
    fn wait(&mut self, t: &mut Talk, by: Duration) {
        let until = self.now + by;
        while let Some(at) = [t.relay.poll_timeout(), t.client.poll_timeout()]
            .into_iter()
            .flatten()
            .filter(|&at| at <= until)
            .min()
        {
            self.now = self.now.max(at);
            t.relay.handle_timeout(self.now);
            t.client.handle_timeout(self.now);
            self.settle(t);
        }
        self.now = until;
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }
}

/// One clip's upload: both cores and the stream between them.
struct Talk {
    user: String,
    id: ClipId,
    client: ClientUpload,
    relay: RelayUpload,
    stream: VecDeque<StreamFrame>,
    finished: bool,
    reset: Option<u64>,
    stopped: bool,
}

impl Talk {
    /// The talker sends the first `n` packets of `clip`, the world keeping up.
    fn talk(
        &mut self,
        world: &mut World,
        clip: &SyntheticClip,
        n: usize,
    ) -> Result<(), UploadFailure> {
        world.settle(self);
        for p in clip.packets.iter().take(n) {
            self.client.send(p.clone())?;
            world.settle(self);
        }
        Ok(())
    }

    /// The talker sends the whole clip and lets go.
    fn send_all(
        &mut self,
        world: &mut World,
        clip: &SyntheticClip,
    ) -> Option<Result<(u64, bool), UploadFailure>> {
        world.settle(self);
        self.send_all_rest(world, clip, 0)
    }

    /// The talker sends the packets from `from` on and lets go.
    fn send_all_rest(
        &mut self,
        world: &mut World,
        clip: &SyntheticClip,
        from: usize,
    ) -> Option<Result<(u64, bool), UploadFailure>> {
        for p in &clip.packets[from..] {
            if let Err(e) = self.client.send(p.clone()) {
                return Some(Err(e));
            }
            world.settle(self);
        }
        self.let_go(world, clip)
    }

    /// The talker lets go: the end marker.
    fn let_go(
        &mut self,
        world: &mut World,
        clip: &SyntheticClip,
    ) -> Option<Result<(u64, bool), UploadFailure>> {
        self.client.finish(clip.samples, world.now);
        world.settle(self);
        self.client.result()
    }
}

fn refused_with(result: Option<Result<(u64, bool), UploadFailure>>) -> Option<ErrorCode> {
    match result {
        Some(Err(UploadFailure::Refused(e))) => Some(e.code),
        _ => None,
    }
}

#[test]
fn a_clip_is_heard_live_while_it_is_talked_then_stored_then_acknowledged() {
    let mut w = World::new();
    let clip = synthetic_clip(48_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 10).expect("talking");
    let heard = &w.heard[&alice.id];
    assert_eq!(
        (heard.recipients.as_slice(), heard.packets, &heard.end),
        (&["bob".to_string(), "carol".into()][..], 10, &None)
    );
    assert!(w.stored.is_empty(), "nothing is stored while she talks");
    let stored = alice.send_all_rest(&mut w, &clip, 10);
    assert_eq!(stored, Some(Ok((1, false))));
    assert_eq!(w.heard[&alice.id].packets, clip.packets.len());
    assert_eq!(
        w.heard[&alice.id].end,
        Some(LiveEnd::Ended),
        "listeners get the end marker after the commit"
    );
    assert_eq!(w.woken, ["bob", "carol"]);
}

#[test]
fn a_second_talker_is_refused_the_floor_naming_the_first_until_the_first_lets_go() {
    let mut w = World::new();
    let clip = synthetic_clip(24_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 3).expect("alice talks");
    let mut bob = w.upload("bob", "crew", &clip);
    let refused = bob.send_all(&mut w, &clip);
    let Some(Err(UploadFailure::Refused(e))) = refused else {
        panic!("bob is refused: {refused:?}")
    };
    assert_eq!(e.code, ErrorCode::FloorTaken);
    assert!(
        e.message.contains("alice is talking on crew"),
        "{}",
        e.message
    );
    assert!(!w.heard.contains_key(&bob.id), "nobody heard bob");
    // Direct clips are not floor-controlled.
    let mut direct = w.upload("bob", "@carol", &clip);
    assert_eq!(direct.send_all(&mut w, &clip), Some(Ok((1, false))));
    // Alice lets go: the floor is free by the time she hears "stored".
    assert_eq!(alice.send_all_rest(&mut w, &clip, 3), Some(Ok((2, false))));
    let mut again = w.upload("bob", "crew", &clip);
    assert_eq!(again.send_all(&mut w, &clip), Some(Ok((3, false))));
}

#[test]
fn a_talker_who_never_lets_go_loses_the_floor_after_the_maximum_hold() {
    let mut w = World::new();
    let clip = synthetic_clip(24_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 2).expect("alice talks");
    // She keeps sending audio in real time (the floor follows it) but never ends the clip.
    let hold = w.upload_limits.max_hold;
    let second = synthetic_clip(48_000);
    while w.elapsed() < hold - Duration::from_secs(1) {
        w.advance(Duration::from_secs(1));
        // Past the maximum clip the relay refuses it: the next send fails.
        if alice.talk(&mut w, &second, second.packets.len()).is_err()
            || alice.relay.outcome().is_some()
        {
            break;
        }
    }
    w.wait(&mut alice, Duration::from_secs(2));
    assert_eq!(
        refused_with(alice.client.result()),
        Some(ErrorCode::TooLong)
    );
    assert_eq!(
        w.heard[&alice.id].end,
        Some(LiveEnd::Aborted(ErrorCode::TooLong))
    );
    let mut bob = w.upload("bob", "crew", &clip);
    assert_eq!(
        bob.send_all(&mut w, &clip),
        Some(Ok((1, false))),
        "the floor is free again"
    );
}

#[test]
fn busy_says_when_to_retry_and_a_retry_then_goes_through() {
    let mut w = World::with_clips_per_minute(2);
    let clip = synthetic_clip(9_600);
    for seq in 1..=2 {
        let mut up = w.upload("alice", "@bob", &clip);
        assert_eq!(up.send_all(&mut w, &clip), Some(Ok((seq, false))));
    }
    let mut third = w.upload("alice", "@bob", &clip);
    let Some(Err(UploadFailure::Refused(e))) = third.send_all(&mut w, &clip) else {
        panic!("the third is refused")
    };
    let ErrorCode::Busy { retry_after_ms } = e.code else {
        panic!("busy, got {:?}", e.code)
    };
    assert_eq!(retry_after_ms, 30_000, "two a minute: one token every 30 s");
    assert!(
        e.message.contains("at most 2 clips per minute"),
        "{}",
        e.message
    );
    w.advance(Duration::from_millis(u64::from(retry_after_ms)));
    let mut retry = w.upload_with(
        "alice",
        ClipHeader {
            id: third.id,
            to: Target::User("bob".into()),
            started_at_ms: 0,
            codec: clip.params,
        },
    );
    assert_eq!(retry.send_all(&mut w, &clip), Some(Ok((3, false))));
}

#[test]
fn a_cancelled_clip_reaches_listeners_as_cancelled_and_is_neither_stored_nor_answered() {
    let mut w = World::new();
    let clip = synthetic_clip(48_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 5).expect("talking");
    alice.client.cancel();
    w.settle(&mut alice);
    assert_eq!(
        w.heard[&alice.id].end,
        Some(LiveEnd::Aborted(ErrorCode::Cancelled))
    );
    assert!(w.stored.is_empty());
    assert_eq!(
        alice.client.result(),
        Some(Err(UploadFailure::Cancelled)),
        "no answer came; the client knows it cancelled"
    );
    let mut bob = w.upload("bob", "crew", &clip);
    assert_eq!(
        bob.send_all(&mut w, &clip),
        Some(Ok((1, false))),
        "the floor is free"
    );
}

#[test]
fn a_resend_after_a_lost_ack_is_acknowledged_again_and_stored_once() {
    let mut w = World::new();
    let clip = synthetic_clip(48_000);
    let mut first = w.upload("alice", "crew", &clip);
    assert_eq!(first.send_all(&mut w, &clip), Some(Ok((1, false))));
    // The ack was lost: the outbox sends the same clip again.
    let header = ClipHeader {
        id: first.id,
        to: Target::Channel("crew".into()),
        started_at_ms: 0,
        codec: clip.params,
    };
    let mut resend = w.upload_with("alice", header);
    resend
        .talk(&mut w, &clip, 3)
        .expect("sends are no-ops after the early answer");
    assert_eq!(
        resend.client.result(),
        Some(Ok((1, true))),
        "answered before the end marker"
    );
    assert_eq!(resend.let_go(&mut w, &clip), Some(Ok((1, true))));
    assert_eq!(w.stored.len(), 1);
    assert_eq!(
        w.heard[&first.id].end,
        Some(LiveEnd::Ended),
        "the resend opened no new live copies"
    );
}

#[test]
fn another_users_stored_id_is_answered_as_a_fetch_and_changes_nothing() {
    let mut w = World::new();
    let clip = synthetic_clip(9_600);
    let mut alice = w.upload("alice", "crew", &clip);
    assert_eq!(alice.send_all(&mut w, &clip), Some(Ok((1, false))));
    let header = ClipHeader {
        id: alice.id,
        to: Target::Channel("crew".into()),
        started_at_ms: 0,
        codec: clip.params,
    };
    let mut mallory = w.upload_with("carol", header);
    assert_eq!(
        refused_with(mallory.send_all(&mut w, &clip)),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(w.stored[&alice.id], ("alice".to_string(), 1));
}

#[test]
fn nobody_can_hijack_a_live_clip_by_its_id() {
    let mut w = World::new();
    let clip = synthetic_clip(48_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 10).expect("alice talks");
    // carol heard the header (and so the id) live, and uploads her own audio under it.
    let header = ClipHeader {
        id: alice.id,
        to: Target::Channel("crew".into()),
        started_at_ms: 0,
        codec: clip.params,
    };
    let mut carol = w.upload_with("carol", header);
    assert_eq!(
        refused_with(carol.send_all(&mut w, &clip)),
        Some(ErrorCode::NotFound),
        "refused as a fetch of it is"
    );
    assert_eq!(
        w.heard[&alice.id].packets, 10,
        "carol's packets reached nobody"
    );
    assert_eq!(
        alice.send_all_rest(&mut w, &clip, 10),
        Some(Ok((1, false))),
        "alice's clip is stored whole"
    );
    assert_eq!(w.stored[&alice.id], ("alice".to_string(), 1));
    assert_eq!(w.heard[&alice.id].end, Some(LiveEnd::Ended));
    assert!(
        w.reserved.is_empty(),
        "the id is free once alice's upload ended"
    );
}

#[test]
fn a_talker_who_goes_silent_loses_the_floor_after_the_gap_and_listeners_are_told() {
    let mut w = World::new();
    let clip = synthetic_clip(48_000);
    let mut alice = w.upload("alice", "crew", &clip);
    alice.talk(&mut w, &clip, 4).expect("talking");
    // 4 packets are 80 ms of audio, sent at once: the floor lasts 80 ms + the gap.
    let gap = walkie_proto::upload::DEFAULT_FLOOR_GAP + Duration::from_millis(80);
    w.wait(&mut alice, gap - Duration::from_millis(1));
    assert!(alice.relay.outcome().is_none(), "still within the gap");
    w.wait(&mut alice, Duration::from_millis(1));
    assert_eq!(
        w.heard[&alice.id].end,
        Some(LiveEnd::Aborted(ErrorCode::Timeout))
    );
    assert_eq!(
        refused_with(alice.client.result()),
        Some(ErrorCode::Timeout)
    );
}

#[test]
fn a_failed_commit_tells_the_talker_and_the_listeners_and_frees_the_floor() {
    let mut w = World::new();
    let clip = synthetic_clip(9_600);
    w.disk_full = true;
    let mut alice = w.upload("alice", "crew", &clip);
    let Some(Err(UploadFailure::Refused(e))) = alice.send_all(&mut w, &clip) else {
        panic!("refused")
    };
    assert_eq!(e.code, ErrorCode::Storage);
    assert!(
        e.message.contains("No space left on device"),
        "{}",
        e.message
    );
    assert_eq!(
        w.heard[&alice.id].end,
        Some(LiveEnd::Aborted(ErrorCode::Storage))
    );
    // Transient for the outbox: the resend (same id) is stored.
    let header = ClipHeader {
        id: alice.id,
        to: Target::Channel("crew".into()),
        started_at_ms: 0,
        codec: clip.params,
    };
    let mut resend = w.upload_with("alice", header);
    assert_eq!(resend.send_all(&mut w, &clip), Some(Ok((1, false))));
}

#[test]
fn a_non_member_is_refused_before_anyone_hears_anything() {
    let mut w = World::new();
    w.users.push("dave".into());
    let clip = synthetic_clip(9_600);
    let mut dave = w.upload("dave", "crew", &clip);
    assert_eq!(
        refused_with(dave.send_all(&mut w, &clip)),
        Some(ErrorCode::Forbidden)
    );
    assert!(w.heard.is_empty() && w.stored.is_empty());
    let mut nobody = w.upload("alice", "@zed", &clip);
    assert_eq!(
        refused_with(nobody.send_all(&mut w, &clip)),
        Some(ErrorCode::NotFound)
    );
}
