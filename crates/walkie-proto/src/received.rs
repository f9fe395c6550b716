//! A clip as a recipient holds it (its delivery header, its packets and its length), one
//! packet of a live clip as it arrives, and a message as a recipient holds it (its delivery
//! header and its payload).

use crate::clip::{ClipMeta, Target};
use crate::ogg::{OggError, write_ogg};
use crate::wire::DeliverHeader;

/// One packet of a live clip as it arrived: by the clip's stream (in order) or in a datagram
/// (maybe out of order, maybe again: the first copy of each index counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivePacket {
    /// Its number in the clip, from 0.
    pub index: u32,
    /// The Opus packet.
    pub data: Vec<u8>,
    /// How it came.
    pub via: Via,
}

/// How a copy of a live packet came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The clip's stream: every packet, in order, retransmitted when lost.
    Stream,
    /// The datagram sent for this packet.
    Datagram,
    /// Repeated in the datagram of a later packet (its own datagram may have been lost).
    Repeat,
}

/// A complete clip pushed by the relay: its delivery header, its Opus packets and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedClip {
    /// Who sent it, where, and its codec.
    pub header: DeliverHeader,
    /// The Opus packets.
    pub packets: Vec<Vec<u8>>,
    /// Decoded length in 48 kHz samples.
    pub samples: u64,
}

impl ReceivedClip {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        (self.samples + 24) / 48
    }

    /// The clip as an Ogg Opus file.
    pub fn ogg(&self) -> Result<Vec<u8>, OggError> {
        write_ogg(
            &self.header.codec,
            &self.packets,
            self.samples,
            rand::random(),
        )
    }

    /// Metadata in the form history uses.
    pub fn meta(&self) -> ClipMeta {
        let duration_ms = u32::try_from(self.duration_ms()).unwrap_or(u32::MAX);
        let packets = u32::try_from(self.packets.len()).unwrap_or(u32::MAX);
        meta_of(
            &self.header,
            duration_ms,
            packets,
            self.packets.iter().map(|p| p.len() as u64).sum(),
        )
    }

    /// The conversation this clip belongs to, seen from `me`: the channel, or the other user.
    pub fn conversation(&self, me: &str) -> Target {
        conversation_of(&self.header, me)
    }
}

/// Metadata in the form history uses, from a delivery header and what came after it.
fn meta_of(h: &DeliverHeader, duration_ms: u32, packets: u32, bytes: u64) -> ClipMeta {
    ClipMeta {
        id: h.id,
        from: h.from.clone(),
        to: h.to.clone(),
        started_at_ms: h.started_at_ms,
        duration_ms,
        packets,
        bytes,
        codec: h.codec,
        seq: h.seq,
        content: h.content,
    }
}

/// The conversation a delivery belongs to, seen from `me`: the channel, or the other user.
fn conversation_of(h: &DeliverHeader, me: &str) -> Target {
    match &h.to {
        Target::User(to) if to == me => Target::User(h.from.clone()),
        t => t.clone(),
    }
}

/// A complete message (text, picture, doodle, or the news that one was recalled) pushed by
/// the relay: its delivery header and its stored payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Who sent it, where, and what it holds ([`DeliverHeader::content`]).
    pub header: DeliverHeader,
    /// The payload as [`crate::message::parts`] cuts it.
    pub payload: Vec<u8>,
}

impl ReceivedMessage {
    /// The payload cut into its parts.
    pub fn parts(&self) -> Result<crate::message::Parts<'_>, crate::message::PartsError> {
        crate::message::parts(&self.header.content, &self.payload)
    }

    /// The one-line detail `walkie listen` prints (see [`crate::message::detail`]).
    pub fn detail(&self) -> String {
        crate::message::detail(&self.header.content, &self.payload)
    }

    /// Metadata in the form history uses.
    pub fn meta(&self) -> ClipMeta {
        meta_of(&self.header, 0, 0, self.payload.len() as u64)
    }

    /// The conversation this message belongs to, seen from `me`: the channel, or the other user.
    pub fn conversation(&self, me: &str) -> Target {
        conversation_of(&self.header, me)
    }
}
