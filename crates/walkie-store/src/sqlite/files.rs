//! Clip files under `DIR/clips/` as older builds wrote them (one Ogg Opus file per clip in
//! `clips/<ab>/`, written through `clips/tmp/`): erasing one, syncing a directory, and which
//! such files a crash left behind. New payloads go to segments (`super::segments`).
//!
//! Locking is the caller's job: [`super::SqliteStore`] sweeps leftovers only while it holds
//! the database write lock, and only judges files older than a minute.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use walkie_proto::clip::ClipId;

use crate::StoreError;

/// Subdirectory of `clips/` for files being written. Three letters, so never a shard name.
pub(super) const TMP_DIR: &str = "tmp";
const PARTIAL_EXT: &str = "partial";

/// Wraps an I/O error with the path it concerns.
pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Overwrites a clip file with zeros, syncs it, and removes it, so its audio does not
/// linger in the file's old blocks. A file already gone is fine.
pub(super) fn shred(path: &Path) -> Result<(), StoreError> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    (|| {
        let file = OpenOptions::new().write(true).open(path)?;
        write_zeros(&file, 0, len)?;
        file.sync_all()?;
        fs::remove_file(path)
    })()
    .map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Overwrites `len` bytes of `file` at `at` with zeros (not synced).
pub(super) fn write_zeros(file: &File, at: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        write_all_at(file, &zeros[..n], at + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes all of `bytes` at offset `at` of `file`.
#[cfg(unix)]
pub(super) fn write_all_at(file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, at)
}

#[cfg(not(unix))]
pub(super) fn write_all_at(mut file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)
}

/// Whether `path` is a regular file last modified at least `min_age` before `now`.
pub(super) fn old_enough(path: &Path, now: SystemTime, min_age: Duration) -> bool {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .and_then(|m| m.modified().ok())
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|age| age >= min_age)
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Files that look like crash leftovers, all older than the age asked for.
#[derive(Debug, Default)]
pub(super) struct Leftovers {
    /// `clips/tmp/*.partial`: writes that never reached their rename.
    pub(super) partial: Vec<PathBuf>,
    /// `clips/xx/<id>.opus` files; orphans only if no row has that id.
    pub(super) clips: Vec<(ClipId, PathBuf)>,
}

/// Lists temp files and clip files last modified more than `min_age` ago. Files that
/// vanish or cannot be examined during the scan are skipped; only an unreadable `clips_dir`
/// is an error.
pub(super) fn scan(clips_dir: &Path, min_age: Duration) -> Result<Leftovers, StoreError> {
    let now = SystemTime::now();
    let old_enough = |path: &Path| old_enough(path, now, min_age);
    let mut out = Leftovers::default();
    for path in list_dir(&clips_dir.join(TMP_DIR)) {
        if path.extension().is_some_and(|e| e == PARTIAL_EXT) && old_enough(&path) {
            out.partial.push(path);
        }
    }
    let shards = fs::read_dir(clips_dir).map_err(io_err(clips_dir))?;
    for shard in shards.filter_map(Result::ok) {
        let shard_name = shard.file_name();
        let Some(shard_name) = shard_name.to_str().filter(|n| n.len() == 2) else {
            continue;
        };
        for path in list_dir(&shard.path()) {
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".opus"))
                .filter(|hex| hex.starts_with(shard_name))
                .and_then(|hex| hex.parse::<ClipId>().ok());
            if let Some(id) = id.filter(|_| old_enough(&path)) {
                out.clips.push((id, path));
            }
        }
    }
    Ok(out)
}

/// The entries of a directory, or none if it cannot be read.
pub(super) fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Removes a leftover file; one already gone is fine, any other failure is logged and skipped.
pub(super) fn remove_leftover(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed leftover clip file");
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove leftover clip file");
            false
        }
    }
}
