//! The relay's storage contract: users, channels, clips and per-user delivery inboxes, and
//! the stores that keep it.
//!
//! The relay talks only to the [`Store`] trait. Every method is synchronous and may block on
//! disk or network: async callers use `spawn_blocking`, or a thread of their own (the relay
//! commits clips in batches on one, with [`Store::commit_clips`]). The store holds no authorization
//! logic; the relay decides who may read or write what. Errors are [`StoreError`], the same
//! for every backend.
//!
//! | backend | module | feature |
//! |---|---|---|
//! | SQLite for metadata + one Ogg Opus file per clip, in a data dir (the default) | [`sqlite`] | `sqlite` (default) |
//! | NATS JetStream, shared by several relays; also the relays' link (floor leases, notices) | [`nats`] | `nats` |
//! | a wrapper that fails writes as a full disk would | [`faulty`] | `testing` |
//! | the conformance suite every backend runs | [`conformance`] | `testing` |
//! | a data dir private to its user (0700 dirs, 0600 files) | [`private`] | |
//! | records: small values under structured keys, with compare-and-set (people data) | [`records`] | |
//!
//! Must not depend on: the relay, the network transport, the client, audio. Only the
//! vocabulary of [`walkie_proto`].

#![warn(missing_docs)]
#![deny(unsafe_code)]

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
pub mod faulty;
#[cfg(feature = "nats")]
pub mod nats;
pub mod private;
pub mod records;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use walkie_proto::clip::{ClipId, ClipMeta, Target};

pub use records::Record;

/// SHA-256 of a user's token; the token itself is never stored.
pub type TokenHash = [u8; 32];

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A user or channel of that name already exists.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// "user" or "channel".
        kind: &'static str,
        /// The name that exists.
        name: String,
    },
    /// A user, channel or clip named in the request does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// "user", "channel" or "clip".
        kind: &'static str,
        /// The missing name or id.
        name: String,
    },
    /// A clip id that is already stored belongs to another sender.
    #[error("clip {0} already exists with another sender")]
    IdConflict(ClipId),
    /// The database failed (locked, corrupt, disk full): the embedded store's engine reported
    /// this, in its words.
    #[error("database error: {0}")]
    Database(String),
    /// A file under the data dir could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Stored data does not parse (a row with an invalid target, say).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The storage backend failed or cannot be reached: the NATS cluster is unreachable,
    /// has no quorum or did not answer within the deadline. (A full disk or a failing file
    /// of the embedded store is [`StoreError::Io`] or [`StoreError::Database`].) The relay reports
    /// every store failure to clients with the `storage` error code.
    #[error("storage unavailable: {0}")]
    Backend(String),
    /// This store cannot do that operation.
    #[error("this store does not support {0}")]
    Unsupported(&'static str),
}

/// A channel and its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Channel name.
    pub name: String,
    /// Member user names, sorted.
    pub members: Vec<String>,
}

/// What happened to a clip handed to [`Store::commit_clip`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Newly stored, durable, with this sequence number.
    Stored(u64),
    /// The same id from the same sender was already stored (a retry); nothing was written.
    Duplicate(u64),
}

/// One clip for [`Store::commit_clips`]: what [`Store::commit_clip`] takes, owned.
#[derive(Clone, Debug)]
pub struct NewClip {
    /// The clip's metadata (`seq` is ignored: the store assigns it).
    pub meta: ClipMeta,
    /// The inboxes (delivery keys) it is queued in.
    pub recipients: Vec<String>,
    /// Its stored bytes (a whole Ogg Opus file, or a message's payload).
    pub payload: Vec<u8>,
}

/// Durable storage for a relay. Implementations must be safe to share between threads and
/// between processes on the same data (admin commands run while the relay serves).
pub trait Store: Send + Sync + 'static {
    /// Adds a user with the hash of their token.
    fn add_user(&self, name: &str, token_hash: &TokenHash) -> Result<(), StoreError>;
    /// Removes a user (and their channel memberships and pending deliveries). False if unknown.
    fn remove_user(&self, name: &str) -> Result<bool, StoreError>;
    /// All user names, sorted.
    fn users(&self) -> Result<Vec<String>, StoreError>;
    /// The stored token hash of a user, if the user exists.
    fn token_hash(&self, name: &str) -> Result<Option<TokenHash>, StoreError>;
    /// Replaces a user's token hash (the old token stops working); false if the user is unknown.
    fn set_token(&self, name: &str, token_hash: &TokenHash) -> Result<bool, StoreError>;
    /// The token hashes of `names`, in order (`None` for a user that does not exist). The relay
    /// checks its sessions against them every second; the default asks one by one.
    fn token_hashes(&self, names: &[String]) -> Result<Vec<Option<TokenHash>>, StoreError> {
        names.iter().map(|n| self.token_hash(n)).collect()
    }
    /// True if any stored clip was sent by `name` or sent directly to them: such a name is not
    /// given to a new user, who would otherwise inherit that history. The default looks at
    /// the direct clips only.
    fn has_history(&self, name: &str) -> Result<bool, StoreError> {
        Ok(!self.readable(name, 1, None)?.is_empty())
    }

    /// Creates a channel with its initial members (who must exist).
    fn add_channel(&self, name: &str, members: &[String]) -> Result<(), StoreError>;
    /// All channels with their members, sorted by name.
    fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError>;
    /// The channels `user` is a member of, sorted. A session opening asks this, so a store
    /// should answer it without reading every channel's members (SQLite: one index lookup).
    fn channels_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .channels()?
            .into_iter()
            .filter(|c| c.members.iter().any(|m| m == user))
            .map(|c| c.name)
            .collect())
    }
    /// Members of one channel, sorted; `None` if the channel does not exist.
    fn members(&self, channel: &str) -> Result<Option<Vec<String>>, StoreError>;
    /// Adds and removes members (added users must exist); returns the new member list.
    fn update_members(
        &self,
        channel: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// Deletes a channel with its memberships and every clip sent to it (audio erased, inbox
    /// entries gone), so that a channel created later under the name starts empty; the number
    /// of clips deleted, or `None` if there was no such channel.
    fn delete_channel(&self, _name: &str) -> Result<Option<usize>, StoreError> {
        Err(StoreError::Unsupported("deleting a channel"))
    }

    /// The record under `key` (see [`records`]), if any.
    fn record(&self, _key: &[&str]) -> Result<Option<Record>, StoreError> {
        Err(StoreError::Unsupported("records"))
    }
    /// Writes `value` under `key` if the record's revision is still `rev` (0: if there is no
    /// record): the new revision, or `None` when another write got there first (read again
    /// and retry). Values larger than [`records::MAX_RECORD`] are refused.
    fn put_record(
        &self,
        _key: &[&str],
        _value: &[u8],
        _rev: u64,
    ) -> Result<Option<u64>, StoreError> {
        Err(StoreError::Unsupported("records"))
    }
    /// Deletes the record under `key`; deleting an absent record is not an error.
    fn delete_record(&self, _key: &[&str]) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("records"))
    }
    /// The keys of every record under `prefix` (whole tokens), as tokens, sorted.
    fn record_keys(&self, _prefix: &[&str]) -> Result<Vec<Vec<String>>, StoreError> {
        Err(StoreError::Unsupported("records"))
    }

    /// Stores a complete clip durably (file and metadata fsynced and committed) and queues it
    /// for each recipient, in one step: either all of it is visible afterwards or none of it.
    /// `meta.seq` is ignored; the store assigns it. A repeat of a known id from the same
    /// sender is a no-op that reports [`CommitOutcome::Duplicate`]; from another sender it is
    /// [`StoreError::IdConflict`].
    fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
    ) -> Result<CommitOutcome, StoreError>;
    /// Commits each clip as [`Store::commit_clip`] does (an id that came earlier in the batch
    /// is committed after it: its duplicate, or a conflict); each clip's outcome, in the
    /// batch's order. The default commits them one after another; the SQLite
    /// store makes a batch durable together (one group commit), the NATS store runs its
    /// commits at once. For a caller that gathers clips from many senders on one thread.
    fn commit_clips(&self, clips: Vec<NewClip>) -> Vec<Result<CommitOutcome, StoreError>> {
        clips
            .iter()
            .map(|c| self.commit_clip(&c.meta, &c.recipients, &c.payload))
            .collect()
    }
    /// Metadata of one stored clip.
    fn clip(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError>;
    /// Metadata of a clip whose commit is complete (stored and queued for every recipient):
    /// the relay acknowledges a resend of such a clip without reading it again. A store whose
    /// commit is not atomic (NATS) answers `None` for a clip whose commit was interrupted, so
    /// that the resend completes it.
    fn committed(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        self.clip(id)
    }
    /// The stored Ogg Opus bytes of a clip.
    fn clip_audio(&self, id: &ClipId) -> Result<Vec<u8>, StoreError>;
    /// At most `max` bytes of a clip's stored file from `offset` (fewer only at its end), so a
    /// file can be streamed without holding it whole. The default reads the whole file.
    fn clip_audio_part(&self, id: &ClipId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        let all = self.clip_audio(id)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
        let end = start.saturating_add(max).min(all.len());
        Ok(all[start..end].to_vec())
    }

    /// Clips queued for `user` and not yet acknowledged, with `seq > after_seq`, oldest first.
    /// An inbox is named by its delivery key: a user name, or any other key the relay queues
    /// clips for in [`Store::commit_clip`] (a second device's `NAME/DEVICE`).
    fn pending(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError>;
    /// Marks a clip delivered to `user` (removes it from their inbox). Unknown ids are ignored.
    fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError>;
    /// Whether the store can take writes now (for a readiness check): an error says why not.
    /// The default answers yes; stores that can fail to write check for real.
    fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Items waiting in all inboxes (not acknowledged yet), for the metrics; `None` when the
    /// store cannot count them cheaply.
    fn inbox_depth(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Empties the inbox of a delivery key (a removed device's).
    fn clear_inbox(&self, _key: &str) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("clearing an inbox"))
    }

    /// A conversation, newest last: for a channel, its clips; for `Target::User(other)`, the
    /// direct clips between `viewer` and `other` in both directions. At most `limit` clips,
    /// only those with `seq < before_seq` when given.
    fn history(
        &self,
        viewer: &str,
        target: &Target,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError>;
    /// A page of every clip `user` may read (clips of channels they are a member of now, and
    /// direct clips they sent or received), newest last: at most `limit` clips, only those with
    /// `seq < before_seq` when given. Paged like [`Store::history`], so a long history is
    /// never read whole.
    fn readable(
        &self,
        user: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError>;

    /// How many bytes of audio `sender`'s stored clips take (for the relay's per-user quota);
    /// `None` from a store that does not count them (the quota is then not enforced).
    fn stored_bytes_of(&self, _sender: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Deletes the audio of every clip `user` sent (the files are overwritten, then removed),
    /// removes those clips from every inbox, and anonymises their metadata (sender becomes
    /// [`PURGED_SENDER`]); returns how many clips were purged.
    fn purge_user(&self, _user: &str) -> Result<usize, StoreError> {
        Err(StoreError::Unsupported("purging a user's clips"))
    }

    /// Recalls a stored item (its sender took it back): its payload is erased (overwritten,
    /// then removed), its metadata says [`walkie_proto::message::Content::Recalled`] with no
    /// bytes, and it is queued again for each of `keys` (the recipients' delivery keys), so
    /// that every client that holds it is told, now or when it comes back. Returns the
    /// recalled metadata, or `None` if there is no such item. Recalling twice queues again.
    fn recall_clip(&self, _id: &ClipId, _keys: &[String]) -> Result<Option<ClipMeta>, StoreError> {
        Err(StoreError::Unsupported("recalling a message"))
    }

    /// Deletes clips stored before `before_ms` (milliseconds since the epoch), with their
    /// audio and inbox entries; returns how many.
    fn delete_clips_before(&self, _before_ms: i64) -> Result<usize, StoreError> {
        Err(StoreError::Unsupported("retention"))
    }
}

/// The sender name that purged clips keep in their metadata.
pub const PURGED_SENDER: &str = "purged-user";
