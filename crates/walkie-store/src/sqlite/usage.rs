//! How much disk an embedded store's data dir takes, and how much its file system has
//! left: what `walkie-relay status` reports. Sizes are the blocks allocated (a segment with
//! erased payloads punched out takes less than its length).

use std::fs;
use std::io;
use std::path::Path;

/// Bytes a data dir takes, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageUse {
    /// The database with its write-ahead log and index.
    pub database: u64,
    /// Clip and message payloads (segments and older per-clip files).
    pub payloads: u64,
    /// Bytes an unprivileged writer may still use on the dir's file system, when known.
    pub free: Option<u64>,
}

/// Bytes a file takes on disk.
fn allocated(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// Sums the files under `dir`, at most `depth` levels down (symbolic links not followed).
fn tree_bytes(dir: &Path, depth: usize) -> io::Result<u64> {
    let mut total = 0u64;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() && depth > 0 {
            total = total.saturating_add(tree_bytes(&entry.path(), depth - 1)?);
        } else if meta.is_file() {
            total = total.saturating_add(allocated(&meta));
        }
    }
    Ok(total)
}

/// What the store in `dir` takes and what is left beside it.
pub fn storage_use(dir: &Path) -> io::Result<StorageUse> {
    let mut database = 0u64;
    for name in ["walkie.db", "walkie.db-wal", "walkie.db-shm"] {
        match dir.join(name).symlink_metadata() {
            Ok(meta) => database = database.saturating_add(allocated(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(StorageUse {
        database,
        payloads: tree_bytes(&dir.join("clips"), 3)?,
        free: free_bytes(dir),
    })
}

/// Bytes free for an unprivileged user on the file system of `dir`, where that is known.
#[cfg(unix)]
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(unix))]
pub(super) fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}
