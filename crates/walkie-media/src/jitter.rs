//! The adaptive jitter buffer for live clips: pure logic, time passed in.
//!
//! Packets are numbered 0, 1, 2, … within a clip and each holds one frame (20 ms). The
//! playout side calls [`JitterBuffer::pop`] whenever the speaker needs the next frame and
//! gets a packet to decode, an order to conceal (run the decoder's packet-loss concealment
//! for one frame), or the end of the clip.
//!
//! # How the delay is kept small and bounded
//! * The **delay** is how late slot `next` is being played compared with when its packet
//!   would arrive on the fastest path seen recently: `now - (a0 + next * frame + base)`,
//!   where `base` is the smallest `arrival - index * frame` in the last `window`.
//! * The **target** is `cfg.target` (40 ms), raised to the spread of recent arrivals
//!   (`max - min` of `arrival - index * frame` in the window, plus 10 ms) and capped at
//!   `cfg.cap` (200 ms).
//! * Playout starts once the delay reaches the target, or a frame more than the target is
//!   buffered (a burst), or at once when the clip has ended.
//! * A missing packet is waited for by concealing without advancing (the delay grows one
//!   frame), as long as the delay stays under the cap; past the cap, or when later packets
//!   show it was lost, its slot is concealed and skipped, and it is dropped if it comes late.
//! * Over target for `drain_hold`, the buffer drains back down by dropping a frame: at once
//!   if it is a near-silent packet, otherwise one every [`DRAIN_EVERY`] frames.
//! * A burst holding more than the cap drops its oldest packets; the buffer never holds
//!   more than `cap / frame` packets.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Packets this small are near-silence (Opus DTX/comfort frames) and the first to be dropped.
const SILENT_BYTES: usize = 12;
/// While draining, at most one speech frame is dropped per this many frames played.
pub const DRAIN_EVERY: u32 = 5;
/// Added to the arrival spread when raising the target.
const MARGIN: Duration = Duration::from_millis(10);

/// Jitter buffer settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JitterConfig {
    /// Duration of one packet (20 ms).
    pub frame: Duration,
    /// The delay aimed for when arrivals are steady (40 ms).
    pub target: Duration,
    /// The most delay ever added; later packets are concealed and dropped (200 ms).
    pub cap: Duration,
    /// How much arrival history the target and the base follow (2 s).
    pub window: Duration,
    /// How long the delay must stay over target before speech frames are dropped (500 ms).
    pub drain_hold: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            frame: Duration::from_millis(20),
            target: Duration::from_millis(40),
            cap: Duration::from_millis(200),
            window: Duration::from_secs(2),
            drain_hold: Duration::from_millis(500),
        }
    }
}

/// What to play for the next frame slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Playout {
    /// Decode and play this packet.
    Packet(Vec<u8>),
    /// Play one frame of packet-loss concealment (`Decoder::conceal`).
    Conceal,
    /// The clip is over.
    Ended,
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets played.
    pub played: u64,
    /// Slots concealed and skipped (their packet lost or too late).
    pub skipped: u64,
    /// Frames concealed while waiting (each adds one frame of delay).
    pub expanded: u64,
    /// Packets that arrived after their slot was played or skipped.
    pub late: u64,
    /// Packets dropped to bring the delay back to target.
    pub drained: u64,
    /// Packets dropped because a burst held more than the cap.
    pub overflowed: u64,
}

/// An adaptive jitter buffer for one live clip.
#[derive(Clone, Debug)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    next: u64,
    packets: BTreeMap<u64, Vec<u8>>,
    /// Arrival time of the first packet: the origin of the relative arrivals.
    a0: Option<Instant>,
    /// `(arrival, arrival - a0 - index * frame in ns)` over the window.
    arrivals: VecDeque<(Instant, i128)>,
    started: bool,
    total: Option<u64>,
    over_since: Option<Instant>,
    since_drop: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer for a clip whose first packet is number 0.
    pub fn new(cfg: JitterConfig) -> JitterBuffer {
        JitterBuffer::starting_at(cfg, 0)
    }

    /// A buffer whose first packet is `first` (a clip joined live after its start).
    pub fn starting_at(cfg: JitterConfig, first: u64) -> JitterBuffer {
        let frame = cfg.frame.max(Duration::from_millis(1));
        let cfg = JitterConfig {
            frame,
            cap: cfg.cap.max(frame),
            ..cfg
        };
        JitterBuffer {
            cfg,
            next: first,
            packets: BTreeMap::new(),
            a0: None,
            arrivals: VecDeque::new(),
            started: false,
            total: None,
            over_since: None,
            since_drop: 0,
            stats: JitterStats::default(),
        }
    }

    /// Most packets held at once: the cap in frames.
    fn max_packets(&self) -> u64 {
        (self.cfg.cap.as_nanos() / self.cfg.frame.as_nanos()).max(1) as u64
    }

    fn frame_ns(&self) -> i128 {
        self.cfg.frame.as_nanos() as i128
    }

    /// A packet arrived at `now`.
    pub fn push(&mut self, index: u64, packet: Vec<u8>, now: Instant) {
        if self.total.is_some_and(|t| index >= t) || self.packets.contains_key(&index) {
            return;
        }
        let a0 = *self.a0.get_or_insert(now);
        let rel = now.saturating_duration_since(a0).as_nanos() as i128
            - i128::from(index) * self.frame_ns();
        self.arrivals.push_back((now, rel));
        while self.arrivals.len() > 1
            && self
                .arrivals
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.cfg.window)
        {
            self.arrivals.pop_front();
        }
        if index < self.next {
            self.stats.late += 1;
            return;
        }
        self.packets.insert(index, packet);
        let max = self.max_packets();
        if index >= self.next + max {
            let new_next = index + 1 - max;
            let before = self.packets.len();
            self.packets.retain(|&i, _| i >= new_next);
            self.stats.overflowed += (before - self.packets.len()) as u64;
            self.next = new_next;
        }
    }

    /// The clip has `total` packets; no more will come.
    pub fn end(&mut self, total: u64) {
        self.total = Some(total);
        self.packets.retain(|&i, _| i < total);
    }

    /// The current target delay.
    pub fn target(&self) -> Duration {
        let (lo, hi) = self
            .arrivals
            .iter()
            .fold((i128::MAX, i128::MIN), |(lo, hi), &(_, r)| {
                (lo.min(r), hi.max(r))
            });
        let spread = if hi >= lo {
            Duration::from_nanos(u64::try_from(hi - lo).unwrap_or(u64::MAX))
        } else {
            Duration::ZERO
        };
        (spread + MARGIN).clamp(self.cfg.target, self.cfg.cap)
    }

    /// How late slot `next` is being played relative to the fastest recent arrival path
    /// (zero before the first packet).
    pub fn delay(&self, now: Instant) -> Duration {
        let Some(a0) = self.a0 else {
            return Duration::ZERO;
        };
        let base = self.arrivals.iter().map(|&(_, r)| r).min().unwrap_or(0);
        let late = now.saturating_duration_since(a0).as_nanos() as i128
            - i128::from(self.next) * self.frame_ns()
            - base;
        Duration::from_nanos(u64::try_from(late.max(0)).unwrap_or(u64::MAX))
    }

    /// Packets buffered contiguously from the next slot.
    fn contiguous(&self) -> u64 {
        let mut n = 0;
        while self.packets.contains_key(&(self.next + n)) {
            n += 1;
        }
        n
    }

    /// The counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The next packet number to be played.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// What to play for the next frame slot at `now`; `None` while still buffering before
    /// playout starts (play nothing and ask again).
    pub fn pop(&mut self, now: Instant) -> Option<Playout> {
        if !self.started {
            self.a0?;
            let buffered = self.contiguous();
            let target = self.target();
            let enough = buffered >= self.max_packets()
                || self.cfg.frame * u32::try_from(buffered).unwrap_or(u32::MAX)
                    >= target + self.cfg.frame;
            if self.total.is_none() && !enough && self.delay(now) < target {
                return None;
            }
            self.started = true;
        }
        if self.total.is_some_and(|t| self.next >= t) {
            return Some(Playout::Ended);
        }
        let delay = self.delay(now);
        let target = self.target();
        if delay > target + self.cfg.frame {
            self.over_since.get_or_insert(now);
        } else {
            self.over_since = None;
        }
        self.since_drop = self.since_drop.saturating_add(1);
        if let Some(packet) = self.packets.remove(&self.next) {
            self.next += 1;
            if self.should_drain(&packet, now) && self.packets.contains_key(&self.next) {
                self.stats.drained += 1;
                self.since_drop = 0;
                let following = self.packets.remove(&self.next).unwrap_or_default();
                self.next += 1;
                self.stats.played += 1;
                return Some(Playout::Packet(following));
            }
            self.stats.played += 1;
            return Some(Playout::Packet(packet));
        }
        let gap = self.packets.keys().next().is_some_and(|&i| i > self.next);
        let give_up = self.total.is_some()
            || (gap && delay >= target)
            || delay + self.cfg.frame > self.cfg.cap;
        if give_up {
            self.next += 1;
            self.stats.skipped += 1;
        } else {
            self.stats.expanded += 1;
        }
        Some(Playout::Conceal)
    }

    /// True when `packet` (just taken) may be dropped to bring the delay down.
    fn should_drain(&self, packet: &[u8], now: Instant) -> bool {
        let Some(since) = self.over_since else {
            return false;
        };
        if packet.len() <= SILENT_BYTES {
            return true;
        }
        now.saturating_duration_since(since) >= self.cfg.drain_hold
            && self.since_drop >= DRAIN_EVERY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A speech-sized packet tagged with its index.
    fn packet(i: u64) -> Vec<u8> {
        let mut p = vec![0x55; 60];
        p[..8].copy_from_slice(&i.to_le_bytes());
        p
    }

    fn index_of(p: &[u8]) -> u64 {
        u64::from_le_bytes(p[..8].try_into().unwrap())
    }

    /// Drives a buffer: packet `i` arrives at `arrive(i)`, the speaker pops every 20 ms from
    /// `t0 + 7 ms`; returns what each pop gave with the delay right after it.
    struct Sim {
        jb: JitterBuffer,
        t0: Instant,
        log: Vec<(Duration, Option<Playout>, Duration)>,
    }

    impl Sim {
        fn run(packets: u64, end_after: bool, arrive: impl Fn(u64) -> Duration, pops: u64) -> Sim {
            let t0 = Instant::now();
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let mut events: Vec<(Duration, u64)> = (0..packets).map(|i| (arrive(i), i)).collect();
            events.sort();
            let mut ev = events.into_iter().peekable();
            let mut log = Vec::new();
            for k in 0..pops {
                let at = ms(7) + F * k as u32;
                while let Some(&(t, i)) = ev.peek() {
                    if t > at {
                        break;
                    }
                    jb.push(i, packet(i), t0 + t);
                    ev.next();
                }
                if end_after && ev.peek().is_none() {
                    jb.end(packets);
                }
                let delay = jb.delay(t0 + at);
                let out = jb.pop(t0 + at);
                log.push((at, out, delay));
            }
            Sim { jb, t0, log }
        }

        fn played(&self) -> Vec<u64> {
            self.log
                .iter()
                .filter_map(|(_, o, _)| {
                    if let Some(Playout::Packet(p)) = o {
                        Some(index_of(p))
                    } else {
                        None
                    }
                })
                .collect()
        }
    }

    /// Small deterministic jitter, 0..4 ms.
    fn wobble(i: u64) -> Duration {
        Duration::from_micros(i * 7_919 % 4_000)
    }

    #[test]
    fn steady_arrival_converges_to_the_target() {
        let sim = Sim::run(500, false, |i| F * i as u32 + wobble(i), 480);
        let played = sim.played();
        assert_eq!(
            played,
            (0..played.len() as u64).collect::<Vec<_>>(),
            "in order, none missing"
        );
        assert!(played.len() >= 470);
        let stats = sim.jb.stats();
        assert_eq!(
            (stats.skipped, stats.late, stats.overflowed),
            (0, 0, 0),
            "{stats:?}"
        );
        assert!(stats.expanded <= 1, "{stats:?}");
        for (at, _, delay) in &sim.log[50..] {
            assert!(
                *delay >= ms(40) && *delay <= ms(60),
                "delay {delay:?} at {at:?}"
            );
        }
        assert_eq!(sim.jb.target(), ms(40));
    }

    #[test]
    fn a_150_ms_spike_grows_the_delay_within_the_cap_then_drains() {
        // Packet 100 is held up 150 ms; the ordered stream holds the next ones behind it.
        let spike_end = F * 100 + ms(150);
        let arrive = |i: u64| {
            let t = F * i as u32 + wobble(i);
            if i >= 100 { spike_end.max(t) } else { t }
        };
        let sim = Sim::run(600, false, arrive, 590);
        let stats = sim.jb.stats();
        assert_eq!(
            (stats.late, stats.overflowed),
            (0, 0),
            "nothing lost in a spike under the cap: {stats:?}"
        );
        let peak = sim.log.iter().map(|(_, _, d)| *d).max().unwrap();
        assert!(peak >= ms(150) && peak <= ms(200), "peak delay {peak:?}");
        // Within 4 s of the spike the delay is back near the target.
        for (at, _, delay) in sim
            .log
            .iter()
            .filter(|(at, _, _)| *at > spike_end + ms(4_000))
        {
            assert!(*delay <= ms(60), "delay {delay:?} at {at:?}");
        }
        assert!(stats.drained >= 5, "{stats:?}");
        let played = sim.played();
        assert!(played.windows(2).all(|w| w[0] < w[1]), "in order");
    }

    #[test]
    fn a_very_late_packet_is_concealed_not_played_late() {
        // Packet 50 is 400 ms late (reordered on an unreliable path); the rest are on time.
        let arrive = |i: u64| {
            if i == 50 {
                F * 50 + ms(400)
            } else {
                F * i as u32
            }
        };
        let sim = Sim::run(200, false, arrive, 190);
        let played = sim.played();
        assert!(!played.contains(&50), "packet 50 was played late");
        assert!(played.contains(&49) && played.contains(&51));
        let stats = sim.jb.stats();
        assert_eq!((stats.skipped, stats.late), (1, 1), "{stats:?}");
        assert!(sim.log.iter().all(|(_, _, d)| *d <= ms(200)));
    }

    #[test]
    fn a_stall_longer_than_the_cap_keeps_the_delay_bounded() {
        // Everything after packet 60 is held up for 600 ms, then arrives in a burst.
        let arrive = |i: u64| {
            if i > 60 {
                (F * 60 + ms(600)).max(F * i as u32)
            } else {
                F * i as u32
            }
        };
        let sim = Sim::run(300, false, arrive, 290);
        for (at, _, delay) in &sim.log {
            assert!(*delay <= ms(200) + F, "delay {delay:?} at {at:?}");
        }
        let stats = sim.jb.stats();
        assert!(stats.late > 0 || stats.overflowed > 0, "{stats:?}");
        assert!(sim.jb.packets.len() as u64 <= sim.jb.max_packets());
        let _ = sim.t0;
    }

    #[test]
    fn a_burst_beyond_the_cap_drops_the_oldest() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for i in 0..30 {
            jb.push(i, packet(i), t0);
        }
        assert_eq!(jb.stats().overflowed, 20);
        assert_eq!(jb.next_index(), 20);
        let Some(Playout::Packet(p)) = jb.pop(t0) else {
            panic!("playout starts: 200 ms buffered")
        };
        assert_eq!(index_of(&p), 20);
        jb.push(3, packet(3), t0 + F);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn end_of_clip_flushes_without_waiting() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.pop(t0), None, "nothing before the first packet");
        jb.push(0, packet(0), t0);
        assert_eq!(jb.pop(t0 + ms(5)), None, "buffering");
        jb.push(2, packet(2), t0 + ms(6));
        jb.end(3);
        jb.push(7, packet(7), t0 + ms(6)); // past the end: ignored
        assert!(matches!(jb.pop(t0 + ms(7)), Some(Playout::Packet(p)) if index_of(&p) == 0));
        assert_eq!(
            jb.pop(t0 + ms(8)),
            Some(Playout::Conceal),
            "packet 1 never came"
        );
        assert!(matches!(jb.pop(t0 + ms(9)), Some(Playout::Packet(p)) if index_of(&p) == 2));
        assert_eq!(jb.pop(t0 + ms(10)), Some(Playout::Ended));
        assert_eq!(jb.pop(t0 + ms(30)), Some(Playout::Ended));
        assert_eq!(jb.stats().skipped, 1);
    }

    #[test]
    fn near_silent_packets_are_dropped_first_when_over_target() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        // 10 packets on time, silent ones in the middle; the speaker starts 200 ms late.
        for i in 0..10 {
            let p = if (3..6).contains(&i) {
                vec![i as u8; 4]
            } else {
                packet(i)
            };
            jb.push(i, p, t0 + F * i as u32);
        }
        let mut got = Vec::new();
        let mut t = t0 + ms(200);
        while let Some(Playout::Packet(p)) = jb.pop(t) {
            got.push(p);
            t += F;
        }
        assert!(jb.stats().drained >= 1, "{:?}", jb.stats());
        assert!(got.len() < 10);
        assert!(
            got.iter().filter(|p| p.len() > SILENT_BYTES).count() >= 6,
            "speech frames are kept"
        );
    }
}
