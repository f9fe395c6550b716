//! A clip as a recipient holds it (its delivery header, its packets and its length), and a
//! message as a recipient holds it (its delivery header and its payload).

use crate::clip::{ClipMeta, Target};
use crate::ogg::{OggError, write_ogg};
use crate::wire::DeliverHeader;

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
        write_ogg(&self.header.codec, &self.packets, self.samples, rand::random())
    }

    /// Metadata in the form history uses.
    pub fn meta(&self) -> ClipMeta {
        ClipMeta {
            id: self.header.id,
            from: self.header.from.clone(),
            to: self.header.to.clone(),
            started_at_ms: self.header.started_at_ms,
            duration_ms: u32::try_from(self.duration_ms()).unwrap_or(u32::MAX),
            packets: u32::try_from(self.packets.len()).unwrap_or(u32::MAX),
            bytes: self.packets.iter().map(|p| p.len() as u64).sum(),
            codec: self.header.codec,
            seq: self.header.seq,
            content: self.header.content,
        }
    }

    /// The conversation this clip belongs to, seen from `me`: the channel, or the other user.
    pub fn conversation(&self, me: &str) -> Target {
        match &self.header.to {
            Target::User(to) if to == me => Target::User(self.header.from.clone()),
            t => t.clone(),
        }
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
        ClipMeta {
            id: self.header.id,
            from: self.header.from.clone(),
            to: self.header.to.clone(),
            started_at_ms: self.header.started_at_ms,
            duration_ms: 0,
            packets: 0,
            bytes: self.payload.len() as u64,
            codec: self.header.codec,
            seq: self.header.seq,
            content: self.header.content,
        }
    }

    /// The conversation this message belongs to, seen from `me`: the channel, or the other user.
    pub fn conversation(&self, me: &str) -> Target {
        match &self.header.to {
            Target::User(to) if to == me => Target::User(self.header.from.clone()),
            t => t.clone(),
        }
    }
}
