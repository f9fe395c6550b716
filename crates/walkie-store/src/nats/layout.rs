//! Names of the NATS store's streams, subjects and keys, and the JSON records kept in them.
//! Pure functions: no I/O, unit-tested below.

use serde::{Deserialize, Serialize};

use walkie_proto::clip::{ClipId, ClipMeta, Target};

use crate::StoreError;

/// Bytes per audio chunk message: well under the server's 1 MiB `max_payload`, headers included.
pub(super) const AUDIO_CHUNK: usize = 512 * 1024;

/// Longest accepted name prefix (stream names must stay short).
const MAX_PREFIX_LEN: usize = 32;

/// Every stream, bucket and subject name of one store, derived from its prefix.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The prefix itself, `[A-Za-z0-9_-]{1,32}`.
    pub prefix: String,
}

impl Layout {
    /// Checks the prefix: it becomes part of stream names and subjects.
    pub fn new(prefix: &str) -> Result<Layout, StoreError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(StoreError::Backend(format!(
                "NATS name prefix {prefix:?} is not valid: use 1 to {MAX_PREFIX_LEN} of A-Z, a-z, 0-9, '_', '-'"
            )));
        }
        Ok(Layout {
            prefix: prefix.to_string(),
        })
    }

    /// KV bucket of users (key: encoded name, value: [`UserRec`]).
    pub fn users_bucket(&self) -> String {
        format!("{}_users", self.prefix)
    }

    /// KV bucket of channels (key: encoded name, value: [`ChannelRec`]).
    pub fn channels_bucket(&self) -> String {
        format!("{}_channels", self.prefix)
    }

    /// KV bucket of clip ids (key: id in hex, value: [`IdRec`]).
    pub fn ids_bucket(&self) -> String {
        format!("{}_clipids", self.prefix)
    }

    /// KV bucket of purged clips: the anonymised metadata that replaces an erased clip
    /// message (key: [`Layout::purged_key`], value: [`ClipRec`] with `meta.seq` set).
    pub fn purged_bucket(&self) -> String {
        format!("{}_purged", self.prefix)
    }

    /// KV bucket of records (key: [`crate::records::record_key`], value: the record's bytes
    /// followed by a random nonce).
    pub fn records_bucket(&self) -> String {
        format!("{}_records", self.prefix)
    }

    /// KV bucket of the relays' floor leases (key: encoded channel name), used by the
    /// relays' cluster link (`relay::cluster`), not by the store.
    pub fn floors_bucket(&self) -> String {
        format!("{}_floors", self.prefix)
    }

    /// Subject of the relays' notices about one live clip (`relay::cluster`).
    pub fn relay_live_subject(&self, id: &ClipId) -> String {
        format!("{}.relay.live.{id}", self.prefix)
    }

    /// Subject of the relays' other notices (inbox wake-ups, messages to users).
    pub fn relay_notice_subject(&self) -> String {
        format!("{}.relay.notice", self.prefix)
    }

    /// Every subject of the relays' notices, which each relay subscribes to.
    pub fn relay_all(&self) -> String {
        format!("{}.relay.>", self.prefix)
    }

    /// Stream of clip metadata; its message sequence is the clip's `seq`.
    pub fn clips_stream(&self) -> String {
        format!("{}_clips", self.prefix)
    }

    /// Stream of audio chunks.
    pub fn audio_stream(&self) -> String {
        format!("{}_audio", self.prefix)
    }

    /// Stream of inbox entries, one subject per (user, seq).
    pub fn inbox_stream(&self) -> String {
        format!("{}_inbox", self.prefix)
    }

    /// Every subject of the clips stream.
    pub fn clips_all(&self) -> String {
        format!("{}.clip.>", self.prefix)
    }

    /// Every subject of the audio stream.
    pub fn audio_all(&self) -> String {
        format!("{}.audio.>", self.prefix)
    }

    /// Every subject of the inbox stream.
    pub fn inbox_all(&self) -> String {
        format!("{}.inbox.>", self.prefix)
    }

    /// The metadata subject of a clip: `P.clip.c.<channel>.<id>` for a channel,
    /// `P.clip.d.<a>.<b>.<id>` for a direct clip, where a <= b are the two encoded user names
    /// (so both directions of a conversation share one subject filter).
    pub fn clip_subject(&self, meta: &ClipMeta) -> String {
        format!("{}.{}", self.conversation(&meta.from, &meta.to), meta.id)
    }

    /// The subject filter of one conversation as `viewer` sees it (see [`Layout::clip_subject`]).
    pub fn conversation_filter(&self, viewer: &str, target: &Target) -> String {
        format!("{}.*", self.conversation(viewer, target))
    }

    fn conversation(&self, from: &str, to: &Target) -> String {
        match to {
            Target::Channel(channel) => format!("{}.clip.c.{}", self.prefix, encode(channel)),
            Target::User(user) => {
                let (a, b) = (encode(from), encode(user));
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                format!("{}.clip.d.{a}.{b}", self.prefix)
            }
        }
    }

    /// The two filters that cover every direct clip sent or received by `user`.
    pub fn direct_filters(&self, user: &str) -> [String; 2] {
        let u = encode(user);
        [
            format!("{}.clip.d.{u}.*.*", self.prefix),
            format!("{}.clip.d.*.{u}.*", self.prefix),
        ]
    }

    /// The key of a purged clip in the purged bucket: its metadata subject without the
    /// `P.clip.` head, with the seq in place of the id (`c.<channel>.<seq>`,
    /// `d.<a>.<b>.<seq>`), so that [`Layout::purged_filter`] of a conversation filter finds
    /// the purged clips of that conversation.
    pub fn purged_key(&self, clip_subject: &str, seq: u64) -> Result<String, StoreError> {
        let head = format!("{}.clip.", self.prefix);
        clip_subject
            .strip_prefix(&head)
            .and_then(|rest| rest.rsplit_once('.'))
            .map(|(conversation, _id)| format!("{conversation}.{seq}"))
            .ok_or_else(|| StoreError::Corrupt(format!("{clip_subject:?} is not a clip subject")))
    }

    /// The purged-bucket key filter that matches what the clip subject filter `filter`
    /// (from [`Layout::conversation_filter`], [`Layout::direct_filters`] or
    /// [`Layout::clips_all`]) matches.
    pub fn purged_filter(&self, filter: &str) -> String {
        let head = format!("{}.clip.", self.prefix);
        filter.strip_prefix(&head).unwrap_or(filter).to_string()
    }

    /// The seq of a purged clip from its key.
    pub fn purged_seq(&self, key: &str) -> Result<u64, StoreError> {
        key.rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("purged key {key:?} has no seq")))
    }

    /// Subject of audio chunk `n` of one commit attempt of a clip.
    pub fn audio_subject(&self, id: &ClipId, attempt: &str, n: u32) -> String {
        format!("{}.audio.{id}.{attempt}.{n}", self.prefix)
    }

    /// Filter of every chunk of one commit attempt.
    pub fn audio_attempt_filter(&self, id: &ClipId, attempt: &str) -> String {
        format!("{}.audio.{id}.{attempt}.>", self.prefix)
    }

    /// Filter of every chunk of every commit attempt of a clip.
    pub fn audio_clip_filter(&self, id: &ClipId) -> String {
        format!("{}.audio.{id}.>", self.prefix)
    }

    /// Filter of the inbox entries of one clip, in every user's inbox.
    pub fn inbox_clip_filter(&self, seq: u64) -> String {
        format!("{}.inbox.*.{seq}", self.prefix)
    }

    /// Subject of one inbox entry.
    pub fn inbox_subject(&self, user: &str, seq: u64) -> String {
        format!("{}.inbox.{}.{seq}", self.prefix, encode(user))
    }

    /// Filter of every inbox entry of a user.
    pub fn inbox_filter(&self, user: &str) -> String {
        format!("{}.inbox.{}.>", self.prefix, encode(user))
    }

    /// The seq of an inbox entry from its subject.
    pub fn inbox_seq(&self, subject: &str) -> Result<u64, StoreError> {
        subject
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("inbox subject {subject:?} has no seq")))
    }
}

/// Encodes a user or channel name as one subject token and KV key (the records' encoding:
/// valid names only ever need `.` → `=2E`).
pub(crate) use crate::records::encode_token as encode;

/// The inverse of [`encode`].
pub(super) use crate::records::decode_token as decode;

/// A user: the SHA-256 of their token, in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UserRec {
    /// Hex of the 32-byte token hash.
    pub token_hash: String,
    /// When the user was added.
    pub created_at_ms: i64,
    /// Random: tells this write from any other when a retried create finds the key taken.
    pub nonce: u64,
    /// Bytes of audio the user's stored clips take (the relay's per-user quota): added when a
    /// commit completes, taken off when clips are purged or expire. A relay that dies between
    /// the two steps leaves it low by one clip, never high.
    #[serde(default)]
    pub stored_bytes: u64,
}

/// A channel and its members, sorted and unique: one key, so a membership change is one
/// compare-and-set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChannelRec {
    /// Member user names, sorted, unique.
    pub members: Vec<String>,
    /// When the channel was created.
    pub created_at_ms: i64,
    /// Random, new on every write (see [`UserRec::nonce`]).
    pub nonce: u64,
}

/// The claim of a clip id, and how far its commit got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IdRec {
    /// The sender that claimed the id: a repeat from another sender is a conflict.
    pub from: String,
    /// The metadata subject the clip is (or will be) stored under.
    pub subject: String,
    /// The clip's seq, once its metadata is stored.
    pub seq: Option<u64>,
    /// True once every inbox entry is written: a repeat is then a plain duplicate.
    pub done: bool,
    /// True once the sender was purged: the clip's metadata is in the purged bucket and its
    /// audio and metadata message are (being) erased; `from` is then the purged sender.
    #[serde(default)]
    pub purged: bool,
}

/// Where a clip's audio is: `chunks` messages of one commit attempt, and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AudioRef {
    /// The random name of the attempt that wrote the chunks.
    pub attempt: String,
    /// Number of chunks (at least 1).
    pub chunks: u32,
    /// SHA-256 of the whole Ogg file, in hex.
    pub sha256: String,
}

impl AudioRef {
    /// No audio: the reference of a purged clip.
    pub fn none() -> AudioRef {
        AudioRef {
            attempt: String::new(),
            chunks: 0,
            sha256: String::new(),
        }
    }
}

/// The message stored in the clips stream; `meta.seq` is 0 there (the message's stream
/// sequence is the seq) and `meta.bytes` is the audio's length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClipRec {
    /// The clip's metadata.
    pub meta: ClipMeta,
    /// Its audio.
    pub audio: AudioRef,
    /// When it was committed.
    pub stored_at_ms: i64,
}

/// Parses a stored JSON record, naming `what` in the error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// Serializes a record (never fails for these plain structs, but no unwrap).
pub(crate) fn json<T: Serialize>(value: &T) -> Result<bytes::Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialize a record: {e}")))
}

/// Number of chunks for `len` bytes of audio.
pub(super) fn chunk_count(len: usize) -> u32 {
    u32::try_from(len.div_ceil(AUDIO_CHUNK).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::clip::CodecParams;

    fn meta(from: &str, to: &str) -> ClipMeta {
        ClipMeta {
            id: ClipId([0xab; 16]),
            from: from.into(),
            to: to.parse().unwrap(),
            started_at_ms: 0,
            duration_ms: 0,
            packets: 0,
            bytes: 0,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: 312,
            },
            seq: 0,
            content: Default::default(),
        }
    }

    #[test]
    fn names_encode_to_single_tokens_and_back() {
        for name in [
            "bob",
            "a.b",
            "team-1",
            "x_y",
            "a..b",
            "a.",
            "Ünï code",
            "=2E",
            "",
            "=",
        ] {
            let enc = encode(name);
            assert!(
                !enc.contains('.') && !enc.contains('*') && !enc.contains('>'),
                "{enc}"
            );
            assert_eq!(decode(&enc).as_deref(), Some(name));
        }
        assert_ne!(encode("a.b"), encode("a=2Eb"));
        assert_eq!(decode("a=2"), None);
        assert_eq!(decode("a=zz"), None);
    }

    #[test]
    fn direct_subjects_are_the_same_in_both_directions() {
        let l = Layout::new("w").unwrap();
        let ab = l.clip_subject(&meta("alice", "@bob"));
        let ba = l.clip_subject(&meta("bob", "@alice"));
        let id = ClipId([0xab; 16]);
        assert_eq!(ab, format!("w.clip.d.alice.bob.{id}"));
        assert_eq!(ba, ab);
        assert_eq!(
            l.conversation_filter("bob", &"@alice".parse().unwrap()),
            "w.clip.d.alice.bob.*"
        );
        assert_eq!(
            l.clip_subject(&meta("bob", "crew")),
            format!("w.clip.c.crew.{id}")
        );
        assert_eq!(
            l.conversation_filter("x", &"crew".parse().unwrap()),
            "w.clip.c.crew.*"
        );
        assert_eq!(
            l.clip_subject(&meta("a.b", "c.d")),
            format!("w.clip.c.c=2Ed.{id}")
        );
    }

    #[test]
    fn inbox_subjects_carry_the_seq() {
        let l = Layout::new("p-1_x").unwrap();
        let s = l.inbox_subject("a.b", 42);
        assert_eq!(s, "p-1_x.inbox.a=2Eb.42");
        assert_eq!(l.inbox_seq(&s).unwrap(), 42);
        assert!(l.inbox_seq("p.inbox.bob.x").is_err());
        assert!(
            Layout::new("a.b").is_err()
                && Layout::new("").is_err()
                && Layout::new(&"x".repeat(33)).is_err()
        );
    }

    #[test]
    fn purged_keys_follow_the_conversation_filters() {
        let l = Layout::new("w").unwrap();
        let subject = l.clip_subject(&meta("alice", "crew"));
        assert_eq!(l.purged_key(&subject, 42).unwrap(), "c.crew.42");
        let direct = l.clip_subject(&meta("bob", "@alice"));
        assert_eq!(l.purged_key(&direct, 7).unwrap(), "d.alice.bob.7");
        assert_eq!(l.purged_seq("d.alice.bob.7").unwrap(), 7);
        assert!(l.purged_key("w.inbox.bob.3", 1).is_err());
        let crew = l.conversation_filter("x", &"crew".parse().unwrap());
        assert_eq!(l.purged_filter(&crew), "c.crew.*");
        assert_eq!(l.purged_filter(&l.direct_filters("bob")[1]), "d.*.bob.*");
        assert_eq!(l.purged_filter(&l.clips_all()), ">");
        assert_eq!(l.inbox_clip_filter(9), "w.inbox.*.9");
        assert_eq!(
            l.audio_clip_filter(&ClipId([0xab; 16])),
            format!("w.audio.{}.>", ClipId([0xab; 16]))
        );
    }

    #[test]
    fn chunks_cover_the_audio() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(AUDIO_CHUNK), 1);
        assert_eq!(chunk_count(AUDIO_CHUNK + 1), 2);
        assert_eq!(chunk_count(4 * 1024 * 1024), 8);
    }
}
