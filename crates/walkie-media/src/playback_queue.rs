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
use walkie_proto::received::ReceivedClip;
use walkie_proto::wire::DeliverHeader;

use crate::jitter::{JitterBuffer, JitterConfig, Playout};

/// Most packets kept for one clip (10 minutes of 10 ms frames), like the receiver's cap.
const MAX_PACKETS: usize = 60_000;

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

#[derive(Clone, Debug)]
struct Entry {
    id: ClipId,
    from: String,
    seq: u64,
    codec: CodecParams,
    packets: Vec<Vec<u8>>,
    arrivals: Vec<Instant>,
    /// Decoded length, once the clip is complete.
    end: Option<u64>,
    last_activity: Instant,
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
        }
    }

    /// A clip announced by the relay (live: packets follow). Returns true if it was queued
    /// (false for your own clips and clips already queued or played).
    pub fn offer(&mut self, header: &DeliverHeader, now: Instant) -> bool {
        if header.from == self.me || self.seen.contains(&header.id) {
            return false;
        }
        let entry = Entry {
            id: header.id,
            from: header.from.clone(),
            seq: if header.live { 0 } else { header.seq },
            codec: header.codec,
            packets: Vec::new(),
            arrivals: Vec::new(),
            end: None,
            last_activity: now,
        };
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
        let mut entry = Entry {
            id,
            from: clip.header.from.clone(),
            seq: clip.header.seq,
            codec: clip.header.codec,
            packets: Vec::new(),
            arrivals: Vec::new(),
            end: None,
            last_activity: now,
        };
        fill(&mut entry, clip, now);
        self.insert(entry);
        true
    }

    /// The next packet of a live clip.
    pub fn packet(&mut self, id: ClipId, packet: Vec<u8>, now: Instant) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.entry.id == id) {
            if cur.entry.end.is_some() || cur.entry.packets.len() >= MAX_PACKETS {
                return;
            }
            if let Mode::Live(jb) = &mut cur.mode {
                jb.push(cur.entry.packets.len() as u64, packet.clone(), now);
            }
            push_packet(&mut cur.entry, packet, now);
        } else if let Some(e) = self.waiting.iter_mut().find(|e| e.id == id)
            && e.end.is_none()
            && e.packets.len() < MAX_PACKETS
        {
            push_packet(e, packet, now);
        }
    }

    /// A live clip is complete: `samples` is its decoded length.
    pub fn end(&mut self, id: ClipId, samples: u64, now: Instant) {
        if let Some(cur) = self.current.as_mut().filter(|c| c.entry.id == id) {
            if cur.entry.end.is_none() {
                cur.entry.end = Some(samples);
                cur.entry.last_activity = now;
                if let Mode::Live(jb) = &mut cur.mode {
                    jb.end(cur.entry.packets.len() as u64);
                }
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
                    if let Some(p) = cur.entry.packets.get_mut(*cursor) {
                        *cursor += 1;
                        return Some(Step::Packet(std::mem::take(p)));
                    }
                    if let Some(samples) = cur.entry.end {
                        self.current = None;
                        return Some(Step::Finished { id, samples });
                    }
                    // Caught up with a clip still being recorded: join it live.
                    let first = *cursor as u64;
                    cur.mode = Mode::Live(Box::new(JitterBuffer::starting_at(jitter, first)));
                }
                Mode::Live(jb) => {
                    return match jb.pop(now)? {
                        Playout::Packet(p) => Some(Step::Packet(p)),
                        Playout::Conceal => Some(Step::Conceal),
                        Playout::Ended => {
                            tracing::debug!(clip = %id, stats = ?jb.stats(), "live clip played through the jitter buffer");
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
                .arrivals
                .first()
                .is_none_or(|&t| now.saturating_duration_since(t) <= self.cfg.jitter.cap);
        let mode = if fresh {
            let mut jb = JitterBuffer::new(self.cfg.jitter);
            for (i, (p, &t)) in entry.packets.iter().zip(&entry.arrivals).enumerate() {
                jb.push(i as u64, p.clone(), t);
            }
            Mode::Live(Box::new(jb))
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

fn push_packet(e: &mut Entry, packet: Vec<u8>, now: Instant) {
    e.packets.push(packet);
    e.arrivals.push(now);
    e.last_activity = now;
}

/// Completes `e` from a stored copy: the packets it lacks, its length and its seq.
fn fill(e: &mut Entry, clip: &ReceivedClip, now: Instant) {
    let have = e.packets.len();
    for p in clip
        .packets
        .iter()
        .skip(have)
        .take(MAX_PACKETS.saturating_sub(have))
    {
        push_packet(e, p.clone(), now);
    }
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
        for k in 0..10u8 {
            q.packet(ClipId([5; 16]), pk(5, k), now);
            q.packet(ClipId([6; 16]), pk(6, k), now); // ignored: not queued
            if let Some(s) = q.next(now + Duration::from_millis(7)) {
                steps.push(s);
            }
            now += F;
        }
        let (played, _) = summary(&steps);
        assert!(played.len() >= 5, "playing while live: {steps:?}");
        assert_eq!(played[0], (5, 0));
        q.end(ClipId([5; 16]), 10 * 960 - 312, now);
        steps.extend(drain(&mut q, now, 100));
        let (played, ends) = summary(&steps);
        assert_eq!(played, (0..10).map(|k| (5, k)).collect::<Vec<_>>());
        assert_eq!(ends, vec!["played 5"]);
        assert!(matches!(
            steps.last(),
            Some(Step::Finished { samples: 9_288, .. })
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
                q.packet(a, pk(2, k), now);
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
                q.packet(b, pk(2, k), now);
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
        q.packet(ClipId([4; 16]), pk(4, 0), t0);
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
            q.packet(c, pk(3, k), now);
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
