//! The shared vocabulary of a clip: its id, its target, its codec parameters and its metadata.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest user or channel name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Errors when parsing the vocabulary types from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClipError {
    /// A clip id is not 32 hexadecimal digits.
    #[error("clip id {0:?} is not 32 hexadecimal digits")]
    BadClipId(String),
    /// A user or channel name breaks the naming rules.
    #[error(
        "name {0:?} is not valid: use 1 to 32 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    BadName(String),
    /// A user name the relay keeps for itself.
    #[error("name {0:?} is reserved by the relay; choose another")]
    ReservedName(String),
}

/// A clip's identity, chosen by the sender so that a retry is idempotent (128 random bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClipId(pub [u8; 16]);

impl ClipId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for ClipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClipId({self})")
    }
}

impl FromStr for ClipId {
    type Err = ClipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        if s.len() != 32 || hex::decode_to_slice(s, &mut out).is_err() {
            return Err(ClipError::BadClipId(s.to_string()));
        }
        Ok(Self(out))
    }
}

/// Checks a user or channel name: 1..=32 bytes of `[a-z0-9._-]`, starting with a letter or digit.
/// Names become file and key names, so path separators and control characters never pass.
pub fn validate_name(name: &str) -> Result<(), ClipError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ClipError::BadName(name.to_string()))
    }
}

/// Names no user may have: the relay uses them itself (`purged-user` is the sender of clips
/// whose sender was purged).
pub const RESERVED_USER_NAMES: &[&str] = &["purged-user"];

/// Checks a user name: a valid name ([`validate_name`]) that is not reserved.
pub fn validate_user_name(name: &str) -> Result<(), ClipError> {
    validate_name(name)?;
    if RESERVED_USER_NAMES.contains(&name) {
        return Err(ClipError::ReservedName(name.to_string()));
    }
    Ok(())
}

/// Where a clip goes: a channel (`crew`) or one user (`@bob`).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Target {
    /// Every member of a channel.
    Channel(String),
    /// One user (a direct clip).
    User(String),
}

impl Target {
    /// The bare name, without the `@` of a user.
    pub fn name(&self) -> &str {
        match self {
            Target::Channel(n) | Target::User(n) => n,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Channel(n) => f.write_str(n),
            Target::User(n) => write!(f, "@{n}"),
        }
    }
}

impl FromStr for Target {
    type Err = ClipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('@') {
            Some(user) => validate_name(user).map(|()| Target::User(user.to_string())),
            None => validate_name(s).map(|()| Target::Channel(s.to_string())),
        }
    }
}

/// How a clip's audio is encoded. Opus always runs at 48 kHz mono in walkie.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CodecParams {
    /// Samples per Opus frame at 48 kHz (960 for 20 ms).
    pub frame_samples: u32,
    /// Target bitrate in bits per second.
    pub bitrate: u32,
    /// The encoder's lookahead in 48 kHz samples (Ogg Opus pre-skip).
    pub pre_skip: u16,
}

impl CodecParams {
    /// The codec parameters of an item that holds no audio (a text, picture or doodle).
    pub const NONE: CodecParams = CodecParams {
        frame_samples: 0,
        bitrate: 0,
        pre_skip: 0,
    };
}

/// What the sender announces when a clip stream opens.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClipHeader {
    /// The sender-chosen id.
    pub id: ClipId,
    /// Channel or user.
    pub to: Target,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Codec parameters of the packets that follow.
    pub codec: CodecParams,
}

/// A complete, stored clip as the relay and history report it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ClipMeta {
    /// The sender-chosen id.
    pub id: ClipId,
    /// The sender's user name.
    pub from: String,
    /// Channel or user.
    pub to: Target,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Decoded duration in milliseconds (after pre-skip and end trimming).
    pub duration_ms: u32,
    /// Number of Opus packets.
    pub packets: u32,
    /// Size of the stored Ogg Opus file in bytes.
    pub bytes: u64,
    /// Codec parameters.
    pub codec: CodecParams,
    /// The relay's storage order, increasing; 0 before it is stored.
    pub seq: u64,
    /// What it holds: voice, or a message of another kind (see [`crate::message`]).
    #[serde(default)]
    pub content: crate::message::Content,
}

/// Longest clip walkie encodes, writes or reads: 10 minutes at 48 kHz.
pub const MAX_SAMPLES: u64 = 10 * 60 * 48_000;

/// Milliseconds since the Unix epoch, now: for the drivers (relay, client) that stamp clips.
/// The state machines of this crate never read the clock; they are handed `now`.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_id_roundtrips_through_hex() {
        let id = ClipId::random();
        assert_eq!(id.to_string().parse::<ClipId>(), Ok(id));
        assert!("xyz".parse::<ClipId>().is_err());
        assert!("0".repeat(31).parse::<ClipId>().is_err());
    }

    #[test]
    fn names_refuse_separators_and_control_characters() {
        for bad in [
            "",
            "a/b",
            "..",
            ".hidden",
            "a\\b",
            "a\nb",
            "Bob",
            "a b",
            &"x".repeat(33),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["crew", "bob", "team-1", "a.b_c", &"x".repeat(32)] {
            assert!(validate_name(good).is_ok(), "{good:?} should pass");
        }
    }

    #[test]
    fn targets_parse_channels_and_users() {
        assert_eq!("crew".parse(), Ok(Target::Channel("crew".into())));
        assert_eq!("@bob".parse(), Ok(Target::User("bob".into())));
        assert_eq!(Target::User("bob".into()).to_string(), "@bob");
        assert!("@".parse::<Target>().is_err());
        assert!("@a/b".parse::<Target>().is_err());
    }
}
