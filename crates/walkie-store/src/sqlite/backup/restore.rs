//! Restoring a backup (the format is the parent module's) into a new data dir, trusting
//! nothing in the file: it is unpacked into `DIR.partial-<random>` beside `DIR`, and only
//! when every check passed is that renamed to `DIR`, so a refused or failed restore leaves
//! nothing behind.
//!
//! The checks, in order: `DIR` is missing or empty; the first entry is the manifest, of a
//! format this build reads, listing only paths a data dir has (no absolute path, no `..`,
//! only the database, the extra names the caller allows and payload files), each once;
//! their sizes fit the free space before anything is written; every entry is a regular
//! file the manifest lists, of the size it lists, with the SHA-256 it lists; nothing listed
//! is missing; the database passes `PRAGMA integrity_check` and opens as a store; and every
//! clip's payload lies inside a file that was restored.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::{DB, FORMAT, FileEntry, MANIFEST, Manifest, is_extra_name, is_payload_path};
use crate::StoreError;
use crate::sqlite::{Payload, SqliteStore, files, usage::free_bytes};

/// The largest manifest read (it takes a couple of hundred bytes a file).
const MAX_MANIFEST: u64 = 64 << 20;

/// Errors of a restore; none leaves anything behind.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target exists and is not an empty directory.
    #[error("{} exists and is not an empty directory; restore makes a new data dir: name one that does not exist", .0.display())]
    NotEmpty(PathBuf),
    /// The target names no directory that could be made (`/`, `..`).
    #[error("{} names no directory to restore into", .0.display())]
    BadTarget(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file is not a backup, or its manifest cannot be read.
    #[error("not a walkie backup: {0}")]
    NotABackup(String),
    /// The tar structure is damaged (a header checksum, say) or cut short in a header.
    #[error("the backup is damaged or truncated: {0}")]
    Damaged(String),
    /// A newer build wrote it.
    #[error(
        "the backup is of format {0}; this build reads format {FORMAT}: restore it with a newer walkie-relay"
    )]
    Format(u32),
    /// The manifest or an entry names a path no data dir has.
    #[error(
        "the backup holds {0:?}, which is no file of a data dir (an absolute path, `..`, or an unknown name)"
    )]
    UnsafePath(String),
    /// An entry is a link, a directory or a device, not a regular file.
    #[error("the backup's entry {path:?} is a {kind}, not a regular file")]
    NotRegular {
        /// The entry's path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// An entry the manifest does not list.
    #[error("the backup holds {0:?}, which its manifest does not list")]
    Unlisted(String),
    /// A path listed or held twice.
    #[error("the backup holds {0:?} twice")]
    Duplicate(String),
    /// An entry's size differs from the manifest's.
    #[error("the backup's {path:?} is {actual} bytes, its manifest says {listed}")]
    Size {
        /// The entry's path.
        path: String,
        /// What the manifest says.
        listed: u64,
        /// What the entry says.
        actual: u64,
    },
    /// An entry's bytes do not match the manifest's SHA-256.
    #[error("the backup's {0:?} does not match its SHA-256 in the manifest: the file is damaged")]
    Checksum(String),
    /// The file ends before an entry the manifest lists is complete.
    #[error("the backup ends before {0:?} is complete: the file is truncated")]
    Truncated(String),
    /// The files would not fit.
    #[error("the backup needs {need} bytes and {} has {free} free", dir.display())]
    NoSpace {
        /// Bytes the manifest lists.
        need: u64,
        /// Bytes free where the data dir is made.
        free: u64,
        /// Where.
        dir: PathBuf,
    },
    /// The database fails SQLite's integrity check, or is no database.
    #[error("the backup's database fails its check: {0}")]
    Integrity(String),
    /// A clip's payload is not inside a restored file.
    #[error("the backup's database and files disagree: {0}")]
    BadPayload(String),
    /// The restored store would not open.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Clips (and messages) in the restored store.
    pub clips: u64,
    /// Files restored.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// When the backup was made (ms since the epoch).
    pub created_at_ms: i64,
    /// What made it.
    pub created_by: String,
}

/// Restores the backup `file` into the new data dir `dir` (missing, or an empty directory),
/// accepting the extra files `extras` (plain names) besides the store's. See the module doc.
pub fn restore(file: &Path, dir: &Path, extras: &[&str]) -> Result<RestoreSummary, RestoreError> {
    check_target(dir)?;
    let name = dir
        .file_name()
        .ok_or_else(|| RestoreError::BadTarget(dir.to_path_buf()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::private::create_dir_all(&parent).map_err(io_err(&parent))?;
    let mut partial_name = OsString::from(name);
    partial_name.push(format!(".partial-{:016x}", rand::random::<u64>()));
    let partial = parent.join(partial_name);
    crate::private::create_dir(&partial).map_err(io_err(&partial))?;
    let mut guard = RemoveDir(Some(partial.clone()));

    let archive = File::open(file).map_err(io_err(file))?;
    let mut archive = tar::Archive::new(BufReader::new(archive));
    let mut entries = archive.entries().map_err(io_err(file))?;
    let manifest = read_manifest(&mut entries, file, extras)?;
    let need = manifest
        .files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.size))
        .ok_or_else(|| RestoreError::NotABackup("its manifest's sizes overflow".into()))?;
    if let Some(free) = free_bytes(&partial).filter(|&free| need > free) {
        return Err(RestoreError::NoSpace {
            need,
            free,
            dir: parent,
        });
    }

    let mut left: BTreeMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let mut done = BTreeSet::new();
    let mut dirs = BTreeSet::from([partial.clone()]);
    for entry in entries {
        let mut entry = entry.map_err(|e| RestoreError::Damaged(e.to_string()))?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| RestoreError::UnsafePath(String::from_utf8_lossy(e.as_bytes()).into()))?;
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(RestoreError::NotRegular {
                path,
                kind: format!("{kind:?}").to_lowercase(),
            });
        }
        let Some(listed) = left.remove(path.as_str()) else {
            return Err(if done.contains(&path) {
                RestoreError::Duplicate(path)
            } else if !allowed(&path, extras) {
                RestoreError::UnsafePath(path)
            } else {
                RestoreError::Unlisted(path)
            });
        };
        if entry.size() != listed.size {
            return Err(RestoreError::Size {
                path,
                listed: listed.size,
                actual: entry.size(),
            });
        }
        let target = partial.join(&path);
        if let Some(p) = target.parent() {
            crate::private::create_dir_all(p).map_err(io_err(p))?;
            dirs.insert(p.to_path_buf());
        }
        let (read, sha256) = write_entry(&mut entry, file, &target)?;
        if read != listed.size {
            return Err(RestoreError::Truncated(path));
        }
        if sha256 != listed.sha256 {
            return Err(RestoreError::Checksum(path));
        }
        done.insert(path);
    }
    if let Some(path) = left.keys().next() {
        return Err(RestoreError::Truncated(path.to_string()));
    }

    check_database(&partial.join(DB))?;
    let clips = {
        let store = SqliteStore::open(&partial)?;
        check_payloads(&store)?
    };
    dirs.insert(partial.join("clips"));
    for d in dirs.iter().rev() {
        files::sync_dir(d)?;
    }
    if let Err(e) = fs::rename(&partial, dir) {
        return Err(match e.kind() {
            io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists => {
                RestoreError::NotEmpty(dir.to_path_buf())
            }
            _ => io_err(dir)(e),
        });
    }
    guard.0 = None;
    files::sync_dir(&parent)?;
    Ok(RestoreSummary {
        clips,
        files: manifest.files.len(),
        bytes: need,
        created_at_ms: manifest.created_at_ms,
        created_by: manifest.created_by,
    })
}

/// `dir` may be made: it does not exist, or is an empty directory.
fn check_target(dir: &Path) -> Result<(), RestoreError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
        Ok(m) if m.is_dir() => {
            let mut entries = fs::read_dir(dir).map_err(io_err(dir))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(RestoreError::NotEmpty(dir.to_path_buf())),
            }
        }
        Ok(_) => Err(RestoreError::NotEmpty(dir.to_path_buf())),
    }
}

/// Whether a backup may hold `path`.
fn allowed(path: &str, extras: &[&str]) -> bool {
    path == DB || (extras.contains(&path) && is_extra_name(path)) || is_payload_path(path)
}

/// Reads and checks the first entry, the manifest.
fn read_manifest<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    file: &Path,
    extras: &[&str],
) -> Result<Manifest, RestoreError> {
    let mut first = entries
        .next()
        .ok_or_else(|| RestoreError::NotABackup("the file holds nothing".into()))?
        .map_err(|e| RestoreError::NotABackup(e.to_string()))?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() || !first.header().entry_type().is_file()
    {
        return Err(RestoreError::NotABackup(format!(
            "its first entry is not {MANIFEST}"
        )));
    }
    if first.size() > MAX_MANIFEST {
        return Err(RestoreError::NotABackup(format!(
            "its manifest is {} bytes, more than {MAX_MANIFEST}",
            first.size()
        )));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MAX_MANIFEST)
        .read_to_end(&mut json)
        .map_err(io_err(file))?;
    if json.len() as u64 != first.size() {
        return Err(RestoreError::Truncated(MANIFEST.into()));
    }
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| RestoreError::NotABackup(format!("its manifest does not read: {e}")))?;
    if manifest.format > FORMAT {
        return Err(RestoreError::Format(manifest.format));
    }
    if manifest.format == 0 {
        return Err(RestoreError::NotABackup("its manifest has format 0".into()));
    }
    let mut seen = BTreeSet::new();
    for f in &manifest.files {
        if !allowed(&f.path, extras) {
            return Err(RestoreError::UnsafePath(f.path.clone()));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(RestoreError::Duplicate(f.path.clone()));
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RestoreError::NotABackup(format!(
                "its manifest's checksum of {:?} is not a SHA-256",
                f.path
            )));
        }
    }
    if !seen.contains(DB) {
        return Err(RestoreError::NotABackup(format!(
            "its manifest lists no {DB}"
        )));
    }
    Ok(manifest)
}

/// Writes an entry's bytes to a new file at `target` (runs of zeros as holes) and syncs
/// it; returns how many bytes the entry gave and their SHA-256.
fn write_entry(
    entry: &mut impl Read,
    archive: &Path,
    target: &Path,
) -> Result<(u64, String), RestoreError> {
    let mut out = crate::private::file_options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(io_err(target))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_err(archive)(e)),
        };
        let chunk = &buf[..n];
        hash.update(chunk);
        if chunk.iter().all(|&b| b == 0) {
            out.seek(SeekFrom::Current(n as i64))
        } else {
            out.write_all(chunk).map(|()| 0)
        }
        .map_err(io_err(target))?;
        total += n as u64;
    }
    out.set_len(total)
        .and_then(|()| out.sync_all())
        .map_err(io_err(target))?;
    Ok((total, hex::encode(hash.finalize())))
}

/// `PRAGMA integrity_check` on the restored database.
fn check_database(db: &Path) -> Result<(), RestoreError> {
    let bad = |e: rusqlite::Error| RestoreError::Integrity(e.to_string());
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(bad)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(bad)?;
    let report = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(bad)?
        .take(5)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    if report != ["ok"] {
        return Err(RestoreError::Integrity(report.join("; ")));
    }
    Ok(())
}

/// Checks that every clip's payload lies inside a restored file; returns how many clips
/// (and messages) the store holds.
fn check_payloads(store: &SqliteStore) -> Result<u64, RestoreError> {
    let (rows, clips) = store.read(|conn| {
        let mut stmt =
            conn.prepare("SELECT seq, file, audio_at, bytes FROM clips WHERE file != ''")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let clips: i64 = conn.query_row("SELECT COUNT(*) FROM clips", [], |r| r.get(0))?;
        Ok((rows, clips))
    })?;
    for (seq, file, at, bytes) in rows {
        let outside = || {
            RestoreError::BadPayload(format!(
                "clip seq {seq}'s payload ({file:?} at {at:?}, {bytes} bytes) is not inside a file of the backup"
            ))
        };
        let (path, end) = match store.locate(&file, at, bytes) {
            Ok(Payload::Range { path, at, len }) => (path, at.checked_add(len)),
            Ok(Payload::File(path)) => (path, Some(0)),
            Err(why) => {
                return Err(RestoreError::BadPayload(format!("clip seq {seq} {why}")));
            }
        };
        let size = fs::symlink_metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        match (size, end) {
            (Some(size), Some(end)) if end <= size => {}
            _ => return Err(outside()),
        }
    }
    Ok(u64::try_from(clips).unwrap_or(0))
}

/// Removes a directory tree when dropped, unless its path was taken out.
struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Wraps an I/O error with the path it concerns.
fn io_err(path: &Path) -> impl Fn(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
