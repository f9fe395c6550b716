//! A fault-injecting [`Store`] wrapper: passes every call through, but while "disk full" is
//! switched on, every write fails as a full disk would (`ENOSPC`). Tests use it to check
//! that the relay refuses new clips clearly, keeps serving reads, and recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use walkie_proto::clip::{ClipId, ClipMeta, Target};

use crate::{ChannelInfo, CommitOutcome, NewClip, Store, StoreError, TokenHash};

/// Wraps a store and fails its writes on demand.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    full: AtomicBool,
    refused: AtomicU64,
}

impl FaultyStore {
    /// Wraps `inner`; writes work until [`FaultyStore::set_disk_full`] is called.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            full: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        }
    }

    /// Switches the simulated full disk on or off.
    pub fn set_disk_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// How many writes were refused so far.
    pub fn refused_writes(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(disk_full());
        }
        Ok(())
    }
}

/// The error a full disk gives.
fn disk_full() -> StoreError {
    StoreError::Io {
        path: "clips".into(),
        source: std::io::Error::from_raw_os_error(28), // ENOSPC: No space left on device
    }
}

impl Store for FaultyStore {
    fn add_user(&self, name: &str, token_hash: &TokenHash) -> Result<(), StoreError> {
        self.check()?;
        self.inner.add_user(name, token_hash)
    }
    fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.remove_user(name)
    }
    fn users(&self) -> Result<Vec<String>, StoreError> {
        self.inner.users()
    }
    fn token_hash(&self, name: &str) -> Result<Option<TokenHash>, StoreError> {
        self.inner.token_hash(name)
    }
    fn set_token(&self, name: &str, token_hash: &TokenHash) -> Result<bool, StoreError> {
        self.inner.set_token(name, token_hash)
    }
    fn token_hashes(&self, names: &[String]) -> Result<Vec<Option<TokenHash>>, StoreError> {
        self.inner.token_hashes(names)
    }
    fn has_history(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.has_history(name)
    }
    fn stored_bytes_of(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        self.inner.stored_bytes_of(sender)
    }
    fn add_channel(&self, name: &str, members: &[String]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.add_channel(name, members)
    }
    fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        self.inner.channels()
    }
    fn members(&self, channel: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.inner.members(channel)
    }
    fn channels_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.inner.channels_of(user)
    }
    fn update_members(
        &self,
        channel: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.check()?;
        self.inner.update_members(channel, add, remove)
    }
    fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
    ) -> Result<CommitOutcome, StoreError> {
        self.check()?;
        self.inner.commit_clip(meta, recipients, ogg)
    }
    fn commit_clips(&self, clips: Vec<NewClip>) -> Vec<Result<CommitOutcome, StoreError>> {
        if self.full.load(Ordering::SeqCst) {
            // Each clip is a write refused, as one by one.
            self.refused.fetch_add(clips.len() as u64, Ordering::SeqCst);
            return clips.iter().map(|_| Err(disk_full())).collect();
        }
        self.inner.commit_clips(clips)
    }
    fn clip(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        self.inner.clip(id)
    }
    fn clip_audio(&self, id: &ClipId) -> Result<Vec<u8>, StoreError> {
        self.inner.clip_audio(id)
    }
    fn pending(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        self.inner.pending(user, after_seq, limit)
    }
    fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError> {
        // An ack that cannot be written only means the clip is delivered again later.
        self.check()?;
        self.inner.ack(user, id)
    }
    fn history(
        &self,
        viewer: &str,
        target: &Target,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        self.inner.history(viewer, target, limit, before_seq)
    }
    fn readable(
        &self,
        user: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        self.inner.readable(user, limit, before_seq)
    }
    fn purge_user(&self, user: &str) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.purge_user(user)
    }
    fn delete_clips_before(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.check()?;
        self.inner.delete_clips_before(before_ms)
    }
    fn recall_clip(&self, id: &ClipId, keys: &[String]) -> Result<Option<ClipMeta>, StoreError> {
        self.check()?;
        self.inner.recall_clip(id, keys)
    }
    fn clear_inbox(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.inner.clear_inbox(key)
    }
    fn ready(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.ready()
    }
    fn inbox_depth(&self) -> Result<Option<u64>, StoreError> {
        self.inner.inbox_depth()
    }
    fn delete_channel(&self, name: &str) -> Result<Option<usize>, StoreError> {
        self.check()?;
        self.inner.delete_channel(name)
    }
    fn record(&self, key: &[&str]) -> Result<Option<crate::Record>, StoreError> {
        self.inner.record(key)
    }
    fn put_record(&self, key: &[&str], value: &[u8], rev: u64) -> Result<Option<u64>, StoreError> {
        self.check()?;
        self.inner.put_record(key, value, rev)
    }
    fn delete_record(&self, key: &[&str]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete_record(key)
    }
    fn record_keys(&self, prefix: &[&str]) -> Result<Vec<Vec<String>>, StoreError> {
        self.inner.record_keys(prefix)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::conformance::Backend;
    use crate::sqlite::SqliteStore;

    /// The faulty store over SQLite, disk not full: it must keep the whole contract.
    struct Faulty {
        dir: tempfile::TempDir,
        store: FaultyStore,
    }

    impl Backend for Faulty {
        fn store(&self) -> &dyn Store {
            &self.store
        }
        fn another(&self) -> Arc<dyn Store> {
            Arc::new(FaultyStore::new(Arc::new(
                SqliteStore::open(self.dir.path()).expect("opens"),
            )))
        }
    }

    fn fresh() -> Faulty {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FaultyStore::new(Arc::new(SqliteStore::open(dir.path()).expect("opens")));
        Faulty { dir, store }
    }

    crate::conformance_tests!(fresh());

    #[test]
    fn a_full_disk_refuses_writes_as_enospc_and_keeps_reads() {
        let f = fresh();
        f.store.add_user("alice", &[0; 32]).expect("added");
        f.store.set_disk_full(true);
        let err = f.store.add_user("bob", &[1; 32]).expect_err("refused");
        assert!(
            matches!(&err, StoreError::Io { source, .. } if source.raw_os_error() == Some(28)),
            "{err}"
        );
        assert_eq!(f.store.users().expect("reads work"), ["alice"]);
        assert_eq!(f.store.refused_writes(), 1);
        f.store.set_disk_full(false);
        f.store.add_user("bob", &[1; 32]).expect("space is back");
    }
}
