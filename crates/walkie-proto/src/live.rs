//! The fast path of a live clip's packets, without I/O: how much resilience a measured loss
//! calls for ([`Resilience`]), a path's recent loss from its transport counters
//! ([`LossMeter`]), and which copy of each packet goes out as a datagram and when a talker's
//! datagrams are refused ([`LiveForward`]).
//!
//! Every packet of a live clip travels twice: on the clip's reliable stream (in order, so the
//! stored clip is exact and complete) and as a datagram (never retransmitted, so one loss does
//! not hold back the packets behind it). Whichever copy arrives first is forwarded, once; a
//! datagram also carries the previous one or two packets again when the path loses packets.

use std::collections::VecDeque;

use crate::toc::packet_samples;
use crate::wire::LiveBody;

/// Packets a talker's datagrams may run ahead of its clip stream (1 s of 20 ms frames): a
/// datagram further ahead is dropped, so datagrams never carry more than the stream does.
pub const DATAGRAM_WINDOW: u32 = 50;

/// What a path's loss calls for: Opus in-band FEC tuned to an expected loss, and how many
/// older packets each datagram carries again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resilience {
    /// The expected loss given to the encoder (`0`: in-band FEC off).
    pub fec_loss_percent: u8,
    /// Older packets repeated in each datagram (0 to 2).
    pub copies: u8,
}

impl Resilience {
    /// Loss (in permille) from which each datagram repeats the previous packet.
    pub const ONE_COPY_FROM: u32 = 10;
    /// Loss from which each datagram repeats the previous two packets.
    pub const TWO_COPIES_FROM: u32 = 30;
    /// The highest expected loss given to the encoder.
    pub const MAX_FEC_PERCENT: u8 = 25;

    /// The resilience for a measured loss of `permille` on each leg of the way (talker to
    /// relay, relay to listener).
    ///
    /// Chosen from offline runs of 11.4 s of recorded speech at 24 kb/s (BENCHMARKS.md,
    /// section 11). In-band FEC alone lifts PESQ-WB at 10% random loss from 2.2 to 3.4, but
    /// it costs 0.15 when nothing is lost (its data takes bits from every frame) and reaches
    /// only 2.7 at 19% (10% on each of two legs). A repeated packet costs bytes, not quality:
    /// with `c` copies a frame is lost on a leg only when `c + 1` datagrams in a row are, and
    /// the relay repairs the talker's leg before it forwards. So repeats come first, and the
    /// encoder is told the loss that is left after them (`2 * p^(c+1)` for two legs): FEC is
    /// on only where the repeats are not enough.
    pub fn for_loss(permille: u32) -> Resilience {
        Resilience {
            fec_loss_percent: Self::fec_percent(permille, permille),
            copies: Self::copies_for(permille),
        }
    }

    /// The older packets each datagram repeats on a leg that loses `permille`.
    pub fn copies_for(permille: u32) -> u8 {
        match permille {
            p if p >= Self::TWO_COPIES_FROM => 2,
            p if p >= Self::ONE_COPY_FROM => 1,
            _ => 0,
        }
    }

    /// The chance that a leg losing `permille` loses a frame despite its repeats:
    /// `p^(copies + 1)`.
    pub fn left_after_repeats(permille: u32) -> f64 {
        let p = f64::from(permille.min(1000)) / 1000.0;
        p.powi(i32::from(Self::copies_for(permille)) + 1)
    }

    /// The expected loss to tune the encoder's in-band FEC to, in percent (0: off), for a
    /// talker whose own leg loses `up` permille and whose listeners' legs lose up to `down`.
    pub fn fec_percent(up: u32, down: u32) -> u8 {
        let left = Self::left_after_repeats(up) + Self::left_after_repeats(down);
        if left >= 0.01 {
            ((left * 100.0).ceil() as u8).min(Self::MAX_FEC_PERCENT)
        } else {
            0
        }
    }
}

/// A path's recent loss, from the transport's running counts of packets sent and declared
/// lost (QUIC's loss detection): each reading folds the packets since the last one into a
/// moving average that follows about the last `HALF_LIFE` packets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossMeter {
    sent: u64,
    lost: u64,
    /// The loss estimate, 0..=1.
    rate: f64,
    primed: bool,
}

impl LossMeter {
    /// Packets after which an old reading weighs half as much.
    const HALF_LIFE: f64 = 200.0;

    /// Packets a first estimate needs (at 10% loss, 20 packets hold no loss one time in eight).
    const PRIME: u64 = 100;

    /// A meter starting from the counters as they are now: the loss so far on the path (a
    /// connection's handshake and requests, when there were at least 100 packets) is its
    /// first estimate.
    pub fn new(sent: u64, lost: u64) -> LossMeter {
        let primed = sent >= Self::PRIME;
        LossMeter {
            sent,
            lost,
            rate: if primed {
                lost.min(sent) as f64 / sent as f64
            } else {
                0.0
            },
            primed,
        }
    }

    /// Takes new running counts; returns the loss estimate in permille.
    pub fn update(&mut self, sent: u64, lost: u64) -> u32 {
        let ds = sent.saturating_sub(self.sent);
        let dl = lost.saturating_sub(self.lost).min(ds);
        // Until 100 packets have been sent the first estimate waits, counting from the start.
        if ds == 0 || (!self.primed && ds < Self::PRIME) {
            return self.permille();
        }
        (self.sent, self.lost) = (sent, lost.max(self.lost));
        let sample = dl as f64 / ds as f64;
        if self.primed {
            let keep = 0.5f64.powf(ds as f64 / Self::HALF_LIFE);
            self.rate = self.rate * keep + sample * (1.0 - keep);
        } else {
            self.rate = sample;
            self.primed = true;
        }
        self.permille()
    }

    /// True once there were packets enough to estimate from.
    pub fn is_primed(&self) -> bool {
        self.primed
    }

    /// The current estimate in permille.
    pub fn permille(&self) -> u32 {
        (self.rate * 1000.0).round().clamp(0.0, 1000.0) as u32
    }
}

/// Why a talker's live copy is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LiveMismatch {
    /// A packet that came first as a datagram differs from the stream's copy: listeners would
    /// hear something other than what is stored.
    #[error("packet {0} of the clip differs between its datagram and its stream")]
    Differs(u32),
}

/// One live clip's fast path at a sender of datagrams (the talker, or the relay for each
/// clip it forwards): which packets are new, what was sent first as a datagram (to check the
/// stream's copy against it), and the recent packets that datagrams repeat.
#[derive(Clone, Debug)]
pub struct LiveForward {
    /// Packets received on the stream so far (the next stream packet's index).
    stream_next: u32,
    /// For indexes `stream_next..`: the hash of a packet forwarded first as a datagram.
    early: VecDeque<Option<u64>>,
    /// The last packets forwarded, newest last, for the copies: `(index, packet)`.
    recent: VecDeque<(u32, Vec<u8>)>,
    /// Most packets the clip may have.
    max_packets: u32,
    /// The highest index that came as a datagram: a packet that comes first by the stream
    /// after a later one came as a datagram was overtaken (lost and retransmitted), too late
    /// to be worth a datagram of its own.
    highest_datagram: Option<u32>,
}

/// A packet to send as a datagram: its body with `copies` older packets repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The packet's index in the clip.
    pub index: u32,
    /// The datagram body without copies, and with one and two copies (when there are older
    /// packets to repeat): `bodies[c]` for `c` copies.
    pub bodies: [Option<LiveBody>; 3],
}

impl Outgoing {
    /// The body for a path that wants `copies` older packets repeated (fewer when there are
    /// not that many yet).
    pub fn body(&self, copies: u8) -> Option<&LiveBody> {
        (0..=usize::from(copies.min(2)))
            .rev()
            .find_map(|c| self.bodies[c].as_ref())
    }
}

impl LiveForward {
    /// A clip of at most `max_packets` packets.
    pub fn new(max_packets: u32) -> LiveForward {
        LiveForward {
            stream_next: 0,
            early: VecDeque::new(),
            recent: VecDeque::new(),
            max_packets,
            highest_datagram: None,
        }
    }

    /// Packets taken from the stream so far.
    pub fn stream_received(&self) -> u32 {
        self.stream_next
    }

    /// The next packet from the stream (checked by the upload's core). `Ok(Some)` when it
    /// is new and goes out as a datagram; `Ok(None)` when its datagram went first (and
    /// matched), or when a later packet already came as a datagram: this one's datagram was
    /// lost and the stream's copy is a retransmission; a datagram now would reach listeners
    /// no sooner than the stream's copy (and would look to them like a path much slower than
    /// it is). It is still repeated in the next datagrams. An error when its datagram held
    /// other bytes.
    pub fn from_stream(&mut self, packet: &[u8]) -> Result<Option<Outgoing>, LiveMismatch> {
        let index = self.stream_next;
        self.stream_next = self.stream_next.saturating_add(1);
        match self.early.pop_front().flatten() {
            Some(hash) if hash == fingerprint(packet) => Ok(None),
            Some(_) => Err(LiveMismatch::Differs(index)),
            None => {
                let out = self.remember(index, packet);
                let overtaken = self.highest_datagram.is_some_and(|h| h > index);
                Ok((!overtaken).then_some(out))
            }
        }
    }

    /// A packet from a datagram: `Some` when it is new, in the window ahead of the stream,
    /// and a well-formed Opus packet; `None` when it is dropped (already sent, too far
    /// ahead, past the clip's end, or malformed).
    pub fn from_datagram(&mut self, index: u32, packet: &[u8]) -> Option<Outgoing> {
        if index < self.stream_next
            || index >= self.stream_next.saturating_add(DATAGRAM_WINDOW)
            || index >= self.max_packets
            || packet_samples(packet).is_err()
        {
            return None;
        }
        let slot = (index - self.stream_next) as usize;
        if self.early.len() <= slot {
            self.early.resize(slot + 1, None);
        }
        if self.early[slot].is_some() {
            return None;
        }
        self.early[slot] = Some(fingerprint(packet));
        self.highest_datagram = Some(self.highest_datagram.map_or(index, |h| h.max(index)));
        Some(self.remember(index, packet))
    }

    /// Keeps `packet` among the recent ones and builds its datagram bodies.
    fn remember(&mut self, index: u32, packet: &[u8]) -> Outgoing {
        // The two packets just before this one, if they were forwarded (newest first).
        let older: Vec<(u32, &[u8])> = [1u32, 2]
            .iter()
            .filter_map(|back| {
                let want = index.checked_sub(*back)?;
                self.recent
                    .iter()
                    .rev()
                    .find(|(i, _)| *i == want)
                    .map(|(i, p)| (*i, &p[..]))
            })
            .collect();
        let body = |copies: usize| {
            (copies <= older.len()).then(|| {
                LiveBody::new(
                    std::iter::once((index, packet)).chain(older[..copies].iter().copied()),
                )
            })?
        };
        let out = Outgoing {
            index,
            bodies: [body(0), body(1), body(2)],
        };
        // Datagrams come in any order: keep the newest few by index.
        self.recent.push_back((index, packet.to_vec()));
        if self.recent.len() > 4 {
            let oldest = self
                .recent
                .iter()
                .enumerate()
                .min_by_key(|(_, (i, _))| *i)
                .map(|(k, _)| k)
                .unwrap_or(0);
            self.recent.remove(oldest);
        }
        out
    }
}

/// A 64-bit FNV-1a hash: enough to tell a talker's datagram from its stream copy (the talker
/// chooses both, so a collision only fools the talker's own listeners with its own audio).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LiveDatagram;

    /// A 20 ms SILK packet (TOC config 9) tagged with `n`.
    fn packet(n: u32) -> Vec<u8> {
        let mut p = vec![9 << 3, 0, 0, 0, 0];
        p[1..].copy_from_slice(&n.to_le_bytes());
        p
    }

    fn indexes(out: &Outgoing, copies: u8) -> Vec<u32> {
        let bytes = out.body(copies).unwrap().for_stream(2);
        LiveDatagram::decode(&bytes)
            .unwrap()
            .packets()
            .iter()
            .map(|(i, _)| *i)
            .collect()
    }

    #[test]
    fn resilience_follows_the_loss() {
        // (loss per leg in permille, FEC percent, copies)
        for (permille, fec_loss_percent, copies) in [
            (0, 0, 0),
            (4, 0, 0),
            // 0.5% on each leg: 1% end to end, FEC tuned to it.
            (5, 1, 0),
            // 1.5%: one copy leaves 0.05%: no FEC.
            (15, 0, 1),
            // 10%: two copies leave 0.2%; 30%: 5.4% left, FEC tuned to 6%.
            (100, 0, 2),
            (300, 6, 2),
        ] {
            assert_eq!(
                Resilience::for_loss(permille),
                Resilience {
                    fec_loss_percent,
                    copies
                },
                "{permille} permille"
            );
        }
        assert_eq!(Resilience::for_loss(1000).fec_loss_percent, 25);
        // A clean uplink and listeners losing 30%: 2.7% left, FEC tuned to 3%.
        assert_eq!(Resilience::fec_percent(0, 300), 3);
        assert_eq!(Resilience::fec_percent(0, 0), 0);
    }

    #[test]
    fn the_loss_meter_follows_recent_counts() {
        assert_eq!(
            LossMeter::new(200, 20).permille(),
            100,
            "the path's history"
        );
        assert!(!LossMeter::new(10, 5).is_primed(), "too little history");
        let mut m = LossMeter::new(10, 5);
        assert_eq!(m.update(50, 7), 0, "too few packets to judge");
        assert!(!m.is_primed());
        assert_eq!(m.update(110, 15), 100);
        assert!(m.is_primed());
        // A long clean stretch brings it down; counters never run backwards.
        for k in 1..=10 {
            m.update(110 + 200 * k, 15);
        }
        assert!(m.permille() <= 1, "{}", m.permille());
        assert_eq!(m.update(0, 0), m.permille());
    }

    #[test]
    fn each_packet_goes_out_once_whichever_copy_comes_first() {
        let mut f = LiveForward::new(1_000);
        // Packet 0 by stream, 2 by datagram ahead of 1, then 1 and 2 by stream.
        assert_eq!(f.from_stream(&packet(0)).unwrap().unwrap().index, 0);
        let two = f.from_datagram(2, &packet(2)).unwrap();
        assert_eq!(indexes(&two, 2), vec![2, 0], "1 is not there to repeat yet");
        assert!(f.from_datagram(2, &packet(2)).is_none(), "a duplicate");
        // 1 comes by stream after 2's datagram: retransmitted, no datagram of its own ...
        assert_eq!(f.from_stream(&packet(1)).unwrap(), None);
        assert_eq!(f.from_stream(&packet(2)).unwrap(), None, "sent already");
        assert!(
            f.from_datagram(1, &packet(1)).is_none(),
            "behind the stream"
        );
        // ... but repeated in the next datagrams.
        let three = f.from_datagram(3, &packet(3)).unwrap();
        assert_eq!(indexes(&three, 0), vec![3]);
        assert_eq!(indexes(&three, 1), vec![3, 2]);
        assert_eq!(indexes(&three, 2), vec![3, 2, 1]);
        assert_eq!(f.stream_received(), 3);
        // 4 by stream before any later datagram: on time, it goes out as a datagram.
        assert_eq!(f.from_stream(&packet(3)).unwrap(), None);
        assert_eq!(f.from_stream(&packet(4)).unwrap().unwrap().index, 4);
        // Before any datagram, stream packets go out as datagrams with their repeats.
        let mut g = LiveForward::new(10);
        g.from_stream(&packet(0)).unwrap().unwrap();
        let one = g.from_stream(&packet(1)).unwrap().unwrap();
        assert_eq!(indexes(&one, 2), vec![1, 0]);
    }

    #[test]
    fn hostile_datagrams_are_dropped_or_caught() {
        let mut f = LiveForward::new(100);
        assert!(
            f.from_datagram(DATAGRAM_WINDOW, &packet(1)).is_none(),
            "too far ahead"
        );
        assert!(f.from_datagram(3, &[]).is_none(), "not Opus");
        assert!(f.from_datagram(3, &[0xff]).is_none(), "bad framing");
        assert!(f.from_datagram(u32::MAX, &packet(1)).is_none());
        // A datagram that differs from the stream's copy of the same packet.
        assert!(f.from_datagram(0, &packet(7)).is_some());
        assert_eq!(f.from_stream(&packet(0)), Err(LiveMismatch::Differs(0)));
        // Past the clip's longest length.
        let mut short = LiveForward::new(2);
        assert!(short.from_datagram(2, &packet(2)).is_none());
        assert!(short.early.len() <= DATAGRAM_WINDOW as usize);
    }
}
