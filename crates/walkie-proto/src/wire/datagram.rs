//! Live packets as QUIC datagrams: the unreliable, never-retransmitted copy of a live clip's
//! Opus packets, beside the reliable clip stream that still carries every packet in order.
//!
//! A datagram names the clip by the id of the QUIC stream that carries it (the talker's upload
//! stream on the way to the relay, the relay's delivery stream on the way to a listener: both
//! ends of a stream know its id), and carries one to [`MAX_COPIES`] packets, each with its
//! number in the clip: the newest, then older ones sent again so that a lost datagram's packet
//! still arrives in time to be played (redundancy, RFC 2198's idea without RTP).
//!
//! ```text
//! datagram := kind:u8 (= 1) stream:varint count:u8 (1..=3) { index:varint len:varint bytes }*count
//! ```
//! Varints are LEB128 (the same as postcard's). Every length is checked against the packet cap
//! before anything is sliced, and nothing is allocated while decoding.

use crate::toc::MAX_PACKET_BYTES;

/// The only kind of datagram: live packets.
const KIND_LIVE: u8 = 1;
/// Most packets one datagram carries: the newest and two older copies.
pub const MAX_COPIES: usize = 3;

/// Why bytes are not a live datagram.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The first byte is not a known kind.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// The datagram ends inside a field.
    #[error("the datagram is cut short")]
    Short,
    /// A varint is longer than its type allows.
    #[error("a number in the datagram is too large")]
    Overflow,
    /// No packets, or more than [`MAX_COPIES`].
    #[error("a datagram carries 1 to {MAX_COPIES} packets, not {0}")]
    Count(u8),
    /// A packet is empty or larger than the Opus packet cap.
    #[error("a packet of {0} bytes (1 to {MAX_PACKET_BYTES} allowed)")]
    PacketSize(u64),
    /// Bytes follow the last packet.
    #[error("{0} bytes after the last packet")]
    Trailing(usize),
}

/// A decoded live datagram, borrowing its packets from the received bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveDatagram<'a> {
    /// The QUIC stream id of the clip's stream.
    pub stream: u64,
    copies: [(u32, &'a [u8]); MAX_COPIES],
    count: usize,
}

impl<'a> LiveDatagram<'a> {
    /// The packets it carries, `(index in the clip, Opus packet)`, newest first.
    pub fn packets(&self) -> &[(u32, &'a [u8])] {
        &self.copies[..self.count]
    }

    /// Decodes `bytes`; never panics, whatever they hold.
    pub fn decode(bytes: &'a [u8]) -> Result<LiveDatagram<'a>, DatagramError> {
        let mut r = Reader { bytes, at: 0 };
        let kind = r.byte()?;
        if kind != KIND_LIVE {
            return Err(DatagramError::Kind(kind));
        }
        let stream = r.varint()?;
        let count = r.byte()?;
        if count == 0 || usize::from(count) > MAX_COPIES {
            return Err(DatagramError::Count(count));
        }
        let mut copies: [(u32, &[u8]); MAX_COPIES] = [(0, &[]); MAX_COPIES];
        for slot in copies.iter_mut().take(usize::from(count)) {
            let index = u32::try_from(r.varint()?).map_err(|_| DatagramError::Overflow)?;
            let len = r.varint()?;
            if len == 0 || len > MAX_PACKET_BYTES as u64 {
                return Err(DatagramError::PacketSize(len));
            }
            // `len` is at most the packet cap, so it fits in usize.
            *slot = (index, r.take(len as usize)?);
        }
        if r.at != bytes.len() {
            return Err(DatagramError::Trailing(bytes.len() - r.at));
        }
        Ok(LiveDatagram {
            stream,
            copies,
            count: usize::from(count),
        })
    }
}

/// The part of a live datagram after the stream id: the same for every listener of a clip, so
/// a relay builds it once per packet and prefixes each listener's stream id
/// ([`LiveBody::for_stream`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveBody {
    bytes: Vec<u8>,
    count: u8,
}

impl LiveBody {
    /// A body carrying `packets` (newest first); packets past [`MAX_COPIES`], empty ones and
    /// ones over the packet cap are left out. `None` if none is left.
    pub fn new<'p>(packets: impl IntoIterator<Item = (u32, &'p [u8])>) -> Option<LiveBody> {
        let mut body = LiveBody::default();
        for (index, packet) in packets {
            if usize::from(body.count) == MAX_COPIES {
                break;
            }
            if packet.is_empty() || packet.len() > MAX_PACKET_BYTES {
                continue;
            }
            put_varint(&mut body.bytes, u64::from(index));
            put_varint(&mut body.bytes, packet.len() as u64);
            body.bytes.extend_from_slice(packet);
            body.count += 1;
        }
        (body.count > 0).then_some(body)
    }

    /// The whole datagram for the stream with id `stream`.
    pub fn for_stream(&self, stream: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 12);
        out.push(KIND_LIVE);
        put_varint(&mut out, stream);
        out.push(self.count);
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Its size once prefixed with a stream id of at most `stream_bytes` varint bytes.
    pub fn datagram_len(&self, stream_bytes: usize) -> usize {
        2 + stream_bytes + self.bytes.len()
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DatagramError> {
        let b = *self.bytes.get(self.at).ok_or(DatagramError::Short)?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DatagramError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DatagramError::Overflow);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DatagramError::Overflow)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DatagramError> {
        let end = self.at.checked_add(n).ok_or(DatagramError::Short)?;
        let out = self.bytes.get(self.at..end).ok_or(DatagramError::Short)?;
        self.at = end;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_datagram_round_trips_with_its_copies() {
        let (a, b) = (vec![0xf8, 1, 2, 3], vec![0xf8; 90]);
        let body = LiveBody::new([(300, &a[..]), (298, &b[..])]).unwrap();
        let bytes = body.for_stream(6);
        assert_eq!(bytes.len(), body.datagram_len(1));
        let d = LiveDatagram::decode(&bytes).unwrap();
        assert_eq!(d.stream, 6);
        assert_eq!(d.packets(), &[(300, &a[..]), (298, &b[..])]);
        // Postcard's varint for the same numbers: the format is the documented one.
        assert_eq!(&bytes[..3], &[KIND_LIVE, 6, 2]);
        assert_eq!(&bytes[3..5], &postcard::to_stdvec(&300u32).unwrap()[..]);
    }

    #[test]
    fn bodies_leave_out_what_cannot_be_sent() {
        let big = vec![0xf8; MAX_PACKET_BYTES + 1];
        let ok = [0xf8u8, 1];
        assert_eq!(LiveBody::new([(0, &[][..]), (1, &big[..])]), None);
        let body = LiveBody::new([(0, &ok[..]); 5]).unwrap();
        assert_eq!(
            LiveDatagram::decode(&body.for_stream(2))
                .unwrap()
                .packets()
                .len(),
            MAX_COPIES
        );
    }

    #[test]
    fn hostile_datagrams_are_refused() {
        let good = LiveBody::new([(7, &[0xf8u8, 9][..])])
            .unwrap()
            .for_stream(2);
        let cases: Vec<(Vec<u8>, DatagramError)> = vec![
            (vec![], DatagramError::Short),
            (vec![9, 2, 1], DatagramError::Kind(9)),
            (vec![KIND_LIVE, 2, 0], DatagramError::Count(0)),
            (vec![KIND_LIVE, 2, 4], DatagramError::Count(4)),
            (vec![KIND_LIVE, 2, 1, 7, 0], DatagramError::PacketSize(0)),
            // A length of 2^40 before any allocation or slice.
            (
                vec![KIND_LIVE, 2, 1, 7, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20],
                DatagramError::PacketSize(1 << 40),
            ),
            (vec![KIND_LIVE, 2, 1, 7, 5, 1, 2], DatagramError::Short),
            (
                vec![
                    KIND_LIVE, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                DatagramError::Overflow,
            ),
            // An index over u32.
            (
                vec![KIND_LIVE, 2, 1, 0x80, 0x80, 0x80, 0x80, 0x10, 1, 1],
                DatagramError::Overflow,
            ),
            ([good.clone(), vec![0]].concat(), DatagramError::Trailing(1)),
        ];
        for (bytes, want) in cases {
            assert_eq!(LiveDatagram::decode(&bytes), Err(want), "{bytes:?}");
        }
        assert!(LiveDatagram::decode(&good).is_ok());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            // What decodes encodes again to a datagram that decodes the same (a varint may
            // have been written longer than needed; the packets are what count).
            if let Ok(d) = LiveDatagram::decode(&bytes) {
                let body = LiveBody::new(d.packets().iter().copied()).unwrap();
                let again = body.for_stream(d.stream);
                prop_assert_eq!(LiveDatagram::decode(&again).unwrap(), d);
            }
        }

        #[test]
        fn every_body_round_trips(
            stream in any::<u64>(),
            packets in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 1..200)), 1..=3),
        ) {
            let body = LiveBody::new(packets.iter().map(|(i, p)| (*i, &p[..]))).unwrap();
            let bytes = body.for_stream(stream);
            let d = LiveDatagram::decode(&bytes).unwrap();
            prop_assert_eq!(d.stream, stream);
            let got: Vec<(u32, Vec<u8>)> = d.packets().iter().map(|(i, p)| (*i, p.to_vec())).collect();
            prop_assert_eq!(got, packets);
        }
    }
}
