//! The playback queue, WeChat-style: pure logic, time passed in.
//!
//! Clips that arrive while another is playing, and the backlog after reconnecting, play one
//! after another: stored clips in the relay's order (by `seq`), live clips in arrival order
//! after them, your own clips skipped, every clip once. A live clip plays while it is still
//! being recorded, through a [`JitterBuffer`]; one that had to wait its turn plays its
//! backlog first, then joins live at its edge. The queue hands out one [`Step`] per 20 ms
//! frame for the player to decode; [`Step::Finished`] is the moment to mark a clip played.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use walkie_proto::clip::{ClipId, CodecParams};
use walkie_proto::received::{LivePacket, ReceivedClip, Via};
use walkie_proto::wire::DeliverHeader;

use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};

/// Most packets kept for one clip (10 minutes of 10 ms frames), like the receiver's cap.
const MAX_PACKETS: usize = 60_000;
/// The target a connection's first live clip starts from, before any clip has shown the
/// path's jitter. The buffer holds the delay a clip starts with (it changes it only in long
/// pauses), so the first guess is a cautious one: 150 ms covers 30 ± 20 ms of jitter on both
/// the talker's and the listener's hop with datagrams lost and repeated (BENCHMARKS.md
/// section 13). On a clean path it costs that first clip about 100 ms of extra delay; the
/// next clip starts from what this one learned.
const FIRST_START: Duration = Duration::from_millis(150);
/// How far a datagram's packet may be ahead of the clip's stream (10 s of 20 ms frames): the
/// slots up to it are made at once.
const MAX_AHEAD: usize = 500;

/// Queue settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The live jitter buffer's settings.
    pub jitter: JitterConfig,
    /// A live clip that gets no packet and no end for this long is abandoned (its sender
    /// vanished or its stream was dropped; the stored copy can still come and play).
    pub stall: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            jitter: JitterConfig::default(),
            stall: Duration::from_secs(5),
        }
    }
}

/// What to do for the next frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A clip starts: set up a fresh decoder.
    Start {
        /// The clip.
        id: ClipId,
        /// Who sent it.
        from: String,
        /// How its packets are encoded (pre-skip, frame size).
        codec: CodecParams,
        /// Its decoded length in 48 kHz samples, when already known (stored clips).
        samples: Option<u64>,
    },
    /// Decode and play this packet.
    Packet(Vec<u8>),
    /// Play one frame of packet-loss concealment.
    Conceal,
    /// Decode one frame from this (next) packet's in-band FEC data: its own packet is lost.
    Recover(Vec<u8>),
    /// The clip played to its end: mark it played.
    Finished {
        /// The clip.
        id: ClipId,
        /// Its decoded length in 48 kHz samples.
        samples: u64,
    },
    /// The clip stopped part way (aborted or stalled); it is not marked played.
    Abandoned {
        /// The clip.
        id: ClipId,
    },
}

/// A packet as it arrived.
#[derive(Clone, Debug)]
struct Arrived {
    data: Vec<u8>,
    at: Instant,
    via: Via,
}

#[derive(Clone, Debug)]
struct Entry {
    id: ClipId,
    from: String,
    seq: u64,
    codec: CodecParams,
    /// Packets by index (`None`: not here yet, or already handed out from the backlog).
    packets: Vec<Option<Arrived>>,
    /// Packets that came by the stream: it is in order, so this is also the next one's index.
    streamed: usize,
    /// Decoded length, once the clip is complete.
    end: Option<u64>,
    last_activity: Instant,
}

impl Entry {
    fn new(id: ClipId, from: &str, seq: u64, codec: CodecParams, now: Instant) -> Entry {
        Entry {
            id,
            from: from.to_string(),
            seq,
            codec,
            packets: Vec::new(),
            streamed: 0,
            end: None,
            last_activity: now,
        }
    }

    /// Keeps a copy of a packet; true if it is the first copy of its index.
    fn take(&mut self, p: &LivePacket, now: Instant) -> bool {
        let i = p.index as usize;
        if i >= MAX_PACKETS || i > self.streamed + MAX_AHEAD {
            return false;
        }
        self.last_activity = now;
        if p.via == Via::Stream {
            self.streamed = self.streamed.max(i + 1);
        }
        if self.packets.len() <= i {
            self.packets.resize_with(i + 1, || None);
        }
        if self.packets[i].is_some() {
            return false;
        }
        self.packets[i] = Some(Arrived {
            data: p.data.clone(),
            at: now,
            via: p.via,
        });
        true
    }

    /// The time the first packet arrived.
    fn first_arrival(&self) -> Option<Instant> {
        self.packets.iter().flatten().map(|a| a.at).min()
    }

    /// A jitter buffer from slot `first` holding the packets already here from there on,
    /// starting from the target `start`.
    fn jitter_from(&self, cfg: JitterConfig, first: usize, start: Duration) -> JitterBuffer {
        let mut jb = JitterBuffer::starting_at(cfg, first as u64);
        jb.start_from(start);
        for (i, a) in self.packets.iter().enumerate().skip(first) {
            if let Some(a) = a {
                jb.push(i as u64, a.data.clone(), a.at, a.via);
            }
        }
        jb
    }
}

#[derive(Clone, Debug)]
enum Mode {
    /// Playing packets already received, from `cursor`.
    Backlog { cursor: usize },
    /// Playing at the live edge through the jitter buffer.
    Live(Box<JitterBuffer>),
}

#[derive(Clone, Debug)]
struct Current {
    entry: Entry,
    mode: Mode,
    announced: bool,
    aborted: bool,
}

/// Clips waiting to be played, and the one playing.
#[derive(Clone, Debug)]
pub struct PlaybackQueue {
    me: String,
    cfg: QueueConfig,
    waiting: VecDeque<Entry>,
    current: Option<Current>,
    /// Every clip queued, playing or played (not those abandoned, so a stored copy can play).
    seen: HashSet<ClipId>,
    /// The jitter buffer's counts of the live clip that just finished, until taken.
    live_stats: Option<(ClipId, JitterStats)>,
    /// The target delay the last live clip ended with: the next one starts from it (the path
    /// is the same connection). The first clip starts from [`FIRST_START`].
    path_target: Duration,
}

impl PlaybackQueue {
    /// An empty queue for user `me` (whose own clips are skipped).
    pub fn new(me: &str, cfg: QueueConfig) -> PlaybackQueue {
        PlaybackQueue {
            me: me.into(),
            cfg,
            waiting: VecDeque::new(),
            current: None,
            seen: HashSet::new(),
            live_stats: None,
            path_target: FIRST_START,
        }
    }

    /// A clip announced by the relay (live: packets follow). Returns true if it was queued
    /// (false for your own clips and clips already queued or played).
    pub fn offer(&mut self, header: &DeliverHeader, now: Instant) -> bool {
        if header.from == self.me || self.seen.contains(&header.id) {
            return false;
        }
        let seq = if header.live { 0 } else { header.seq };
        let entry = Entry::new(header.id, &header.from, seq, header.codec, now);
        self.insert(entry);
        true
    }

    /// A complete clip (from the inbox, or the stored copy of one that was live). Fills in
    /// whatever a live copy of it missed. Returns true if it was newly queued.
    pub fn offer_complete(&mut self, clip: &ReceivedClip, now: Instant) -> bool {
        let id = clip.header.id;
        if clip.header.from == self.me {
            return false;
        }
        if let Some(cur) = self
            .current
            .as_mut()
            .filter(|c| c.entry.id == id && !c.aborted)
        {
            if cur.entry.end.is_none() {
                if let Mode::Live(jb) = &cur.mode {
                    let cursor = usize::try_from(jb.next_index()).unwrap_or(usize::MAX);
                    cur.mode = Mode::Backlog { cursor };
                }
                fill(&mut cur.entry, clip, now);
            }
            return false;
        }
        if let Some(e) = self.waiting.iter_mut().find(|e| e.id == id) {
            if e.end.is_none() {
                fill(e, clip, now);
            }
            return false;
        }
        if self.seen.contains(&id) {
            return false;
        }
        let mut entry = Entry::new(
            id,
            &clip.header.from,
            clip.header.seq,
            clip.header.codec,
            now,
        );
        fill(&mut entry, clip, now);
        self.insert(entry);
        true
    }

    /// A copy of a live clip's packet (by its stream or as a datagram; the first copy of
    /// each index counts).
    pub fn packet(&mut self, id: ClipId, packet: LivePacket, now: Instant) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.entry.id == id) {
            if cur.entry.end.is_some() {
                return;
            }
            if cur.entry.take(&packet, now)
                && let Mode::Live(jb) = &mut cur.mode
            {
                jb.push(u64::from(packet.index), packet.data, now, packet.via);
            }
        } else if let Some(e) = self.waiting.iter_mut().find(|e| e.id == id)
            && e.end.is_none()
        {
            e.take(&packet, now);
        }
    }

    /// A live clip is complete: `samples` is its decoded length.
    pub fn end(&mut self, id: ClipId, samples: u64, now: Instant) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.entry.id == id) {
            if cur.entry.end.is_none() {
                cur.entry.end = Some(samples);
                cur.entry.last_activity = now;
                if let Mode::Live(jb) = &mut cur.mode {
                    jb.end(cur.entry.streamed as u64);
                }
                cur.entry.packets.truncate(cur.entry.streamed);
            }
        } else if let Some(e) = self.waiting.iter_mut().find(|e| e.id == id) {
            e.end.get_or_insert(samples);
            e.last_activity = now;
        }
    }

    /// A live clip was abandoned by the sender or the relay: drop it (a stored copy may
    /// still come). Returns true if it was queued or playing.
    pub fn abort(&mut self, id: ClipId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|e| e.id != id);
        let mut found = self.waiting.len() != before;
        if let Some(cur) = self.current.as_mut().filter(|c| c.entry.id == id) {
            cur.aborted = true;
            found = true;
        }
        if found {
            self.seen.remove(&id);
        }
        found
    }

    /// The frame just played was quiet or speech: the live jitter buffer changes timing only
    /// in long pauses ([`JitterBuffer::heard`]).
    pub fn heard(&mut self, quiet: bool) {
        if let Some(Current {
            mode: Mode::Live(jb),
            ..
        }) = self.current.as_mut()
        {
            jb.heard(quiet);
        }
    }

    /// The jitter buffer's counts of the live clip that finished last (once).
    pub fn take_live_stats(&mut self) -> Option<(ClipId, JitterStats)> {
        self.live_stats.take()
    }

    /// Clips waiting behind the one playing.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The clip playing now.
    pub fn current(&self) -> Option<ClipId> {
        self.current.as_ref().map(|c| c.entry.id)
    }

    /// True when nothing is playing or waiting.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.waiting.is_empty()
    }

    /// What to play for the next frame at `now`; `None` when there is nothing to play yet
    /// (idle, or a live clip still buffering).
    pub fn next(&mut self, now: Instant) -> Option<Step> {
        loop {
            if self.current.is_none() {
                let entry = self.waiting.pop_front()?;
                self.current = Some(self.begin(entry, now));
            }
            let stall = self.cfg.stall;
            let jitter = self.cfg.jitter;
            let start = self.path_target;
            let cur = self.current.as_mut()?;
            let id = cur.entry.id;
            if cur.aborted
                || (cur.entry.end.is_none()
                    && now.saturating_duration_since(cur.entry.last_activity) > stall)
            {
                self.current = None;
                self.seen.remove(&id);
                return Some(Step::Abandoned { id });
            }
            if !cur.announced {
                cur.announced = true;
                let e = &cur.entry;
                return Some(Step::Start {
                    id,
                    from: e.from.clone(),
                    codec: e.codec,
                    samples: e.end,
                });
            }
            match &mut cur.mode {
                Mode::Backlog { cursor } => {
                    let complete = cur.entry.end.is_some();
                    match cur.entry.packets.get_mut(*cursor) {
                        Some(slot @ Some(_)) => {
                            *cursor += 1;
                            let data = slot.take().map(|a| a.data).unwrap_or_default();
                            return Some(Step::Packet(data));
                        }
                        // (A complete clip has every packet; this only guards the index.)
                        Some(None) if complete => {
                            *cursor += 1;
                            return Some(Step::Conceal);
                        }
                        None if complete => {
                            let samples = cur.entry.end.unwrap_or_default();
                            self.current = None;
                            return Some(Step::Finished { id, samples });
                        }
                        // Caught up with a clip still being recorded: join it live, with
                        // what came ahead of the gap.
                        _ => {
                            let jb = cur.entry.jitter_from(jitter, *cursor, start);
                            cur.mode = Mode::Live(Box::new(jb));
                        }
                    }
                }
                Mode::Live(jb) => {
                    return match jb.pop(now)? {
                        Playout::Packet(p) => Some(Step::Packet(p)),
                        Playout::Conceal => Some(Step::Conceal),
                        Playout::Recover(p) => Some(Step::Recover(p)),
                        Playout::Ended => {
                            tracing::debug!(clip = %id, stats = ?jb.stats(), "live clip played through the jitter buffer");
                            self.live_stats = Some((id, jb.stats()));
                            self.path_target = jb.target();
                            let samples = cur.entry.end.unwrap_or_default();
                            self.current = None;
                            Some(Step::Finished { id, samples })
                        }
                    };
                }
            }
        }
    }

    /// Starts playing `entry`: live through the jitter buffer if it is fresh, else its backlog.
    fn begin(&self, entry: Entry, now: Instant) -> Current {
        let fresh = entry.end.is_none()
            && entry
                .first_arrival()
                .is_none_or(|t| now.saturating_duration_since(t) <= self.cfg.jitter.cap);
        let mode = if fresh {
            Mode::Live(Box::new(entry.jitter_from(
                self.cfg.jitter,
                0,
                self.path_target,
            )))
        } else {
            Mode::Backlog { cursor: 0 }
        };
        Current {
            entry,
            mode,
            announced: false,
            aborted: false,
        }
    }

    /// Queues a new clip: stored clips by `seq` among the stored ones, live ones at the end.
    fn insert(&mut self, entry: Entry) {
        self.seen.insert(entry.id);
        let at = if entry.seq > 0 {
            self.waiting.iter().position(|e| e.seq > entry.seq)
        } else {
            None
        };
        match at {
            Some(i) => self.waiting.insert(i, entry),
            None => self.waiting.push_back(entry),
        }
    }
}

/// Completes `e` from a stored copy: the packets it lacks, its length and its seq.
fn fill(e: &mut Entry, clip: &ReceivedClip, now: Instant) {
    let n = clip.packets.len().min(MAX_PACKETS);
    e.packets.resize_with(n.max(e.packets.len()), || None);
    e.packets.truncate(n);
    for (slot, p) in e.packets.iter_mut().zip(&clip.packets).skip(e.streamed) {
        if slot.is_none() {
            *slot = Some(Arrived {
                data: p.clone(),
                at: now,
                via: Via::Stream,
            });
        }
    }
    e.streamed = n;
    e.end = Some(clip.samples);
    e.last_activity = now;
    if e.seq == 0 {
        e.seq = clip.header.seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::clip::Target;

    const F: Duration = Duration::from_millis(20);

    fn codec() -> CodecParams {
        CodecParams {
            frame_samples: 960,
            bitrate: 24_000,
            pre_skip: 312,
        }
    }

    fn header(n: u8, from: &str, live: bool, seq: u64) -> DeliverHeader {
        DeliverHeader {
            id: ClipId([n; 16]),
            from: from.into(),
            to: Target::Channel("crew".into()),
            started_at_ms: 0,
            codec: codec(),
            live,
            seq,
            content: Default::default(),
        }
    }

    /// Packet `k` of clip `n`.
    fn pk(n: u8, k: u8) -> Vec<u8> {
        vec![
            n, k, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
        ]
    }

    /// A packet from `pk` as it comes by the clip's stream (its index is `k`).
    fn streamed(data: Vec<u8>) -> LivePacket {
        LivePacket {
            index: u32::from(data[1]),
            data,
            via: Via::Stream,
        }
    }

    fn stored(n: u8, from: &str, seq: u64, packets: u8) -> ReceivedClip {
        ReceivedClip {
            header: header(n, from, false, seq),
            packets: (0..packets).map(|k| pk(n, k)).collect(),
            samples: u64::from(packets) * 960 - 312,
        }
    }

    /// Pulls steps every 20 ms until idle (or `limit` steps); returns them.
    fn drain(q: &mut PlaybackQueue, mut now: Instant, limit: usize) -> Vec<Step> {
        let mut out = Vec::new();
        while out.len() < limit && !q.is_idle() {
            if let Some(s) = q.next(now) {
                out.push(s);
            }
            now += F;
        }
        out
    }

    /// (clip, packet) of every played packet, and the finished/abandoned clips in order.
    fn summary(steps: &[Step]) -> (Vec<(u8, u8)>, Vec<String>) {
        let mut played = Vec::new();
        let mut ends = Vec::new();
        for s in steps {
            match s {
                Step::Packet(p) => played.push((p[0], p[1])),
                Step::Finished { id, .. } => ends.push(format!("played {}", id.0[0])),
                Step::Abandoned { id } => ends.push(format!("abandoned {}", id.0[0])),
                _ => {}
            }
        }
        (played, ends)
    }

    #[test]
    fn backlog_plays_in_seq_order_skipping_own_and_duplicates() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        assert!(q.offer_complete(&stored(3, "bob", 30, 2), t0));
        assert!(q.offer_complete(&stored(1, "ann", 10, 2), t0));
        assert!(!q.offer_complete(&stored(9, "me", 20, 2), t0), "own clip");
        assert!(q.offer_complete(&stored(2, "bob", 20, 3), t0));
        assert!(!q.offer_complete(&stored(2, "bob", 20, 3), t0), "duplicate");
        assert_eq!(q.waiting(), 3);
        let steps = drain(&mut q, t0, 100);
        let (played, ends) = summary(&steps);
        assert_eq!(
            played,
            vec![(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1)]
        );
        assert_eq!(ends, vec!["played 1", "played 2", "played 3"]);
        assert!(
            matches!(&steps[0], Step::Start { id, samples: Some(1_608), from, .. } if id.0[0] == 1 && from == "ann")
        );
        assert!(
            !q.offer_complete(&stored(1, "ann", 10, 2), t0),
            "already played"
        );
    }

    #[test]
    fn a_live_clip_plays_before_it_ends_and_finishes_on_end() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        assert!(q.offer(&header(5, "ann", true, 0), t0));
        assert!(!q.offer(&header(6, "me", true, 0), t0), "own live clip");
        let mut now = t0;
        let mut steps = Vec::new();
        // 400 ms: the first clip of a connection starts 150 ms in (FIRST_START).
        for k in 0..20u8 {
            q.packet(ClipId([5; 16]), streamed(pk(5, k)), now);
            q.packet(ClipId([6; 16]), streamed(pk(6, k)), now); // ignored: not queued
            if let Some(s) = q.next(now + Duration::from_millis(7)) {
                steps.push(s);
            }
            now += F;
        }
        let (played, _) = summary(&steps);
        assert!(played.len() >= 5, "playing while live: {steps:?}");
        assert_eq!(played[0], (5, 0));
        q.end(ClipId([5; 16]), 20 * 960 - 312, now);
        steps.extend(drain(&mut q, now, 100));
        let (played, ends) = summary(&steps);
        assert_eq!(played, (0..20).map(|k| (5, k)).collect::<Vec<_>>());
        assert_eq!(ends, vec!["played 5"]);
        assert!(matches!(
            steps.last(),
            Some(Step::Finished {
                samples: 18_888,
                ..
            })
        ));
    }

    #[test]
    fn clips_arriving_during_playback_wait_their_turn_and_lose_nothing() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        q.offer_complete(&stored(1, "ann", 10, 20), t0);
        let a = ClipId([2; 16]);
        q.offer(&header(2, "bob", true, 0), t0);
        let mut now = t0;
        let mut steps = Vec::new();
        // Bob talks for 40 frames while Ann's stored clip plays; his clip ends after 40.
        for k in 0..60u8 {
            if k < 40 {
                q.packet(a, streamed(pk(2, k)), now);
            }
            if k == 40 {
                q.end(a, 40 * 960 - 312, now);
            }
            if let Some(s) = q.next(now) {
                steps.push(s);
            }
            now += F;
        }
        steps.extend(drain(&mut q, now, 200));
        let (played, ends) = summary(&steps);
        let want: Vec<(u8, u8)> = (0..20)
            .map(|k| (1, k))
            .chain((0..40).map(|k| (2, k)))
            .collect();
        assert_eq!(played, want);
        assert_eq!(ends, vec!["played 1", "played 2"]);
    }

    #[test]
    fn a_waiting_live_clip_catches_up_and_joins_live_at_its_edge() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        q.offer_complete(&stored(1, "ann", 10, 20), t0);
        let b = ClipId([2; 16]);
        q.offer(&header(2, "bob", true, 0), t0);
        let mut now = t0;
        let mut steps = Vec::new();
        // The player pulls two steps per 20 ms (say, a fast-forwarding sink), so Bob's
        // backlog runs out before his clip ends and the rest plays live.
        for k in 0..100u8 {
            if k < 60 {
                q.packet(b, streamed(pk(2, k)), now);
            } else if k == 60 {
                q.end(b, 60 * 960 - 312, now);
            }
            for _ in 0..2 {
                if let Some(s) = q.next(now + Duration::from_millis(7)) {
                    steps.push(s);
                }
            }
            now += F;
        }
        let (played, ends) = summary(&steps);
        let bobs: Vec<u8> = played
            .iter()
            .filter(|(c, _)| *c == 2)
            .map(|(_, k)| *k)
            .collect();
        assert_eq!(
            bobs,
            (0..60).collect::<Vec<_>>(),
            "backlog then live, in order, nothing lost"
        );
        assert_eq!(ends, vec!["played 1", "played 2"]);
        assert!(
            steps.contains(&Step::Conceal),
            "live at the edge: the buffer waits for packets"
        );
    }

    #[test]
    fn stalled_and_aborted_live_clips_are_abandoned_and_can_come_back_stored() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        q.offer(&header(4, "ann", true, 0), t0);
        q.packet(ClipId([4; 16]), streamed(pk(4, 0)), t0);
        let steps = drain(&mut q, t0, 1_000);
        let (played, ends) = summary(&steps);
        assert_eq!(played, vec![(4, 0)]);
        assert_eq!(ends, vec!["abandoned 4"]);
        // The stored copy arrives later and plays in full.
        let later = t0 + Duration::from_secs(10);
        assert!(q.offer_complete(&stored(4, "ann", 40, 3), later));
        let (played, ends) = summary(&drain(&mut q, later, 100));
        assert_eq!(played, vec![(4, 0), (4, 1), (4, 2)]);
        assert_eq!(ends, vec!["played 4"]);

        q.offer(&header(7, "bob", true, 0), later);
        assert!(q.abort(ClipId([7; 16])));
        assert!(q.is_idle());
        assert!(!q.abort(ClipId([8; 16])));
    }

    #[test]
    fn the_stored_copy_completes_a_live_clip_that_lost_its_stream() {
        let t0 = Instant::now();
        let mut q = PlaybackQueue::new("me", QueueConfig::default());
        let c = ClipId([3; 16]);
        q.offer(&header(3, "ann", true, 0), t0);
        let mut now = t0;
        let mut steps = Vec::new();
        for k in 0..5u8 {
            q.packet(c, streamed(pk(3, k)), now);
            if let Some(s) = q.next(now) {
                steps.push(s);
            }
            now += F;
        }
        // The live stream was dropped after 5 packets; the stored copy has 12.
        assert!(!q.offer_complete(&stored(3, "ann", 33, 12), now));
        steps.extend(drain(&mut q, now, 100));
        let (played, ends) = summary(&steps);
        assert_eq!(played, (0..12).map(|k| (3, k)).collect::<Vec<_>>());
        assert_eq!(ends, vec!["played 3"]);
    }
}
