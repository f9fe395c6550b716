//! Backups of the embedded store: [`SqliteStore::backup`] writes one tar file holding a
//! consistent copy of the database, every payload it points to and the extra files the
//! caller names (the relay's certificate and key), while the store is in use; [`restore`]
//! makes a new data dir from one, checking everything before the dir appears.
//!
//! # The file
//! A tar archive, its entries in this order:
//! ```text
//! walkie-backup.json    the manifest: format, when, by what, how many clips, and every other
//!                       entry's path, size and SHA-256
//! cert.pem, key.pem     the extra files the caller names (those that exist)
//! clips/seg/<x>.seg     each segment the backup's rows point into, up to the end of the last
//!                       payload they use; every byte no row of the backup uses is zero
//! clips/<ab>/<id>.opus  each per-clip file (older builds) a row points to
//! walkie.db             the database, in rollback-journal mode: one file, no -wal beside it
//! ```
//! The manifest comes first so that restore knows every path and size before it writes a
//! byte; the checksums are only known at the end, so its entry is written first as spaces,
//! with room for the manifest the plan needs, and filled in last (JSON may end in spaces).
//!
//! # Consistency
//! 1. The database is copied in one read transaction (SQLite's online backup in a single
//!    step): the snapshot. In WAL mode the store keeps committing meanwhile.
//! 2. The payloads the snapshot's rows point to are copied, a file at a time. Payloads are
//!    never rewritten and segments only grow, so what is read is what was committed, unless
//!    it was erased (purge, recall, channel deletion, retention) after the snapshot. Erasing
//!    commits the row change first and touches the bytes after; so after a file's payloads
//!    are read, a clip whose row (by seq) in the live database still points at the same
//!    bytes was read intact.
//! 3. A clip whose row changed or went away meanwhile is put in the backup's database as it
//!    is now (row and inbox entries; gone if it is gone), and its bytes in the backup are
//!    zeros. So a backup never holds a row whose payload it could not copy, and never brings
//!    back a payload someone erased while it ran. Everything else is as of the snapshot (the
//!    display name a purge removes after its clips, say).
//!
//! Holding the database's write lock while copying would give the snapshot exactly, but it
//! would stall every commit of the relay for the whole copy; this way the backup waits for
//! nothing and nobody waits for it. A payload missing while its row still points at it is
//! damage, and fails the backup.

mod restore;
#[cfg(test)]
mod tests;

pub use restore::{RestoreError, RestoreSummary, restore};

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::segments::{SEGMENT_BYTES, read_exact_at};
use super::{Payload, SqliteStore, files, schema};
use crate::StoreError;

/// The manifest's name: the archive's first entry.
pub const MANIFEST: &str = "walkie-backup.json";
/// The archive format this build writes, and the newest it reads.
pub const FORMAT: u32 = 1;
/// The database's name, in a data dir and in the archive.
const DB: &str = "walkie.db";
/// The largest file a backup holds in memory to copy: a segment takes 64 MiB and then one
/// more payload.
const MAX_IMAGE: u64 = 4 * SEGMENT_BYTES;
/// The largest extra file copied (a certificate or a key is a few hundred bytes).
const MAX_EXTRA: u64 = 1 << 20;
/// How long the snapshot waits for a lock the database is held under (WAL recovery).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Errors of a backup.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup file exists already.
    #[error("{} exists; a backup never overwrites a file: choose another name, or remove it first", .0.display())]
    OutExists(PathBuf),
    /// `FILE.partial` exists: another backup is writing it, or one was interrupted.
    #[error("{} exists: another backup to this file is running, or one was interrupted (remove it if none is running)", .0.display())]
    InProgress(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The database failed, or holds what it should not.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A payload is missing, or shorter than its row says, and its row still points at it.
    #[error("the payload of clip seq {seq} ({}) is missing or shorter than its row says: the data dir is damaged", path.display())]
    PayloadMissing {
        /// The clip's seq.
        seq: i64,
        /// Where its payload should be.
        path: PathBuf,
    },
    /// An extra file name is not a plain file name of the data dir, or is not a small file.
    #[error("{0}")]
    BadExtra(String),
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Clips (and messages) in the backup's database.
    pub clips: u64,
    /// Size of the backup file.
    pub bytes: u64,
    /// Entries besides the manifest.
    pub files: usize,
    /// Clips erased (purged, recalled, deleted) while the backup ran: in it as they are now,
    /// without their payload.
    pub erased_meanwhile: usize,
}

/// The archive's first entry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u32,
    created_at_ms: i64,
    created_by: String,
    clips: u64,
    files: Vec<FileEntry>,
}

/// One entry of the archive, as the manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    size: u64,
    sha256: String,
}

/// A snapshot row with a payload.
#[derive(Debug)]
struct Row {
    seq: i64,
    file: String,
    at: Option<i64>,
    bytes: i64,
}

/// Whether the data dir `dir` holds an embedded store (its database).
pub fn has_store(dir: &Path) -> bool {
    dir.join(DB).is_file()
}

impl SqliteStore {
    /// Writes a backup of this store to `out` (see the module doc), with the files `extras`
    /// (plain names of files in the data dir; those missing are skipped). Safe while the
    /// store is in use, by this process or others. `created_by` goes into the manifest.
    /// Writes `OUT.partial` (and `OUT.partial-db`), then syncs it and gives it its name;
    /// never overwrites `out`.
    pub fn backup(
        &self,
        out: &Path,
        extras: &[&str],
        created_by: &str,
    ) -> Result<BackupSummary, BackupError> {
        self.backup_with(out, extras, created_by, || {})
    }

    /// [`SqliteStore::backup`], calling `after_snapshot` between the snapshot and the copy.
    fn backup_with(
        &self,
        out: &Path,
        extras: &[&str],
        created_by: &str,
        after_snapshot: impl FnOnce(),
    ) -> Result<BackupSummary, BackupError> {
        if fs::symlink_metadata(out).is_ok() {
            return Err(BackupError::OutExists(out.to_path_buf()));
        }
        let partial = with_suffix(out, ".partial");
        let snap_path = with_suffix(out, ".partial-db");
        let file = match crate::private::file_options()
            .write(true)
            .create_new(true)
            .open(&partial)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(BackupError::InProgress(partial));
            }
            Err(e) => return Err(io_err(&partial)(e)),
        };
        // Stale snapshot files (of a backup killed before it cleaned up) go first: an old
        // journal must not be played back into the new snapshot.
        let snap_files: Vec<PathBuf> = ["", "-journal", "-wal", "-shm"]
            .iter()
            .map(|s| with_suffix(&snap_path, s))
            .collect();
        for stale in &snap_files {
            let _ = fs::remove_file(stale);
        }
        let _cleanup = Cleanup(snap_files.into_iter().chain([partial.clone()]).collect());
        let data_dir = self.db_path.parent().unwrap_or(Path::new("."));
        let extras = read_extras(data_dir, extras)?;

        let mut snap = self.snapshot(&snap_path)?;
        after_snapshot();
        let groups = snapshot_rows(&snap)?;

        // Room for the manifest: every path is known now; a size, a checksum and the
        // punctuation take less than 160 bytes more each.
        let paths: Vec<String> = extras
            .iter()
            .map(|(name, _)| name.clone())
            .chain(groups.keys().map(|f| format!("clips/{f}")))
            .chain([DB.to_string()])
            .collect();
        let room = 1024 + created_by.len() + paths.iter().map(|p| p.len() + 160).sum::<usize>();
        let created_at_ms = walkie_proto::clip::now_ms();
        let mtime = u64::try_from(created_at_ms / 1000).unwrap_or(0);
        let mut tar = tar::Builder::new(BufWriter::new(file));
        let werr = io_err(&partial);
        tar.append_data(
            &mut header(room as u64, mtime),
            MANIFEST,
            &vec![b' '; room][..],
        )
        .map_err(&werr)?;
        let manifest_at = tar.get_mut().stream_position().map_err(&werr)? - round_up(room);

        let mut entries = Vec::with_capacity(paths.len());
        for (name, bytes) in &extras {
            entries.push(append_bytes(&mut tar, name, bytes, mtime).map_err(&werr)?);
        }
        let mut erased = Vec::new();
        for (file, rows) in &groups {
            if let Some(image) = self.copy_payloads(file, rows, &mut erased)? {
                let path = format!("clips/{file}");
                entries.push(append_bytes(&mut tar, &path, &image, mtime).map_err(&werr)?);
            }
        }
        self.carry_over(&mut snap, &erased)?;
        let clips: i64 = snap
            .query_row("SELECT COUNT(*) FROM clips", [], |r| r.get(0))
            .map_err(StoreError::from)?;
        snap.close().map_err(|(_, e)| StoreError::from(e))?;
        entries.push(append_file(&mut tar, DB, &snap_path, mtime)?);

        let manifest = Manifest {
            format: FORMAT,
            created_at_ms,
            created_by: created_by.to_string(),
            clips: u64::try_from(clips).unwrap_or(0),
            files: entries,
        };
        let json = serde_json::to_vec(&manifest)
            .map_err(|e| werr(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if json.len() > room {
            return Err(werr(io::Error::other(format!(
                "the manifest ({} bytes) outgrew the room kept for it ({room})",
                json.len()
            ))));
        }
        let mut file = tar
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(&werr)?;
        (|| {
            file.seek(SeekFrom::Start(manifest_at))?;
            file.write_all(&json)?;
            file.sync_all()
        })()
        .map_err(&werr)?;
        let bytes = file.metadata().map_err(&werr)?.len();
        drop(file);
        publish(&partial, out)?;
        Ok(BackupSummary {
            clips: manifest.clips,
            bytes,
            files: manifest.files.len(),
            erased_meanwhile: erased.len(),
        })
    }

    /// Copies the database into a new file at `path` in one read transaction, and returns a
    /// connection to the copy, switched to rollback-journal mode (one file).
    fn snapshot(&self, path: &Path) -> Result<Connection, BackupError> {
        crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_err(path))?;
        let src = schema::connect(&self.db_path, true)?;
        let mut dst = Connection::open(path).map_err(StoreError::from)?;
        {
            let backup = Backup::new(&src, &mut dst).map_err(StoreError::from)?;
            let started = std::time::Instant::now();
            // -1: every page in one step, so one read transaction: a consistent copy even
            // while others commit (a copy in several steps starts over after each commit).
            while backup.step(-1).map_err(StoreError::from)? != StepResult::Done {
                if started.elapsed() > SNAPSHOT_WAIT {
                    return Err(StoreError::Database(format!(
                        "the database stayed locked for {SNAPSHOT_WAIT:?}; no snapshot taken"
                    ))
                    .into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mode: String = dst
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .map_err(StoreError::from)?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(StoreError::Database(format!(
                "the snapshot stayed in journal mode {mode}"
            ))
            .into());
        }
        Ok(dst)
    }

    /// The payloads of the rows of `file`, read into one image of the file, then checked
    /// against the live database: a row that no longer points at the same bytes was erased
    /// meanwhile (its seq goes to `erased`, its bytes become zeros). `None` if no row is left.
    fn copy_payloads(
        &self,
        file: &str,
        rows: &[Row],
        erased: &mut Vec<i64>,
    ) -> Result<Option<Vec<u8>>, BackupError> {
        let mut located = Vec::with_capacity(rows.len());
        for row in rows {
            let payload = self
                .locate(&row.file, row.at, row.bytes)
                .map_err(|why| StoreError::Corrupt(format!("clip seq {} {why}", row.seq)))?;
            located.push((row, payload));
        }
        let path = self.clips_dir.join(file);
        let mut image = Vec::new();
        let mut unread = vec![false; rows.len()];
        match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => unread.fill(true),
            Err(e) => return Err(io_err(&path)(e)),
            Ok(f) => {
                for ((_, payload), unread) in located.iter().zip(&mut unread) {
                    let (at, len) = match payload {
                        Payload::Range { at, len, .. } => (*at, *len),
                        Payload::File(_) => (0, f.metadata().map_err(io_err(&path))?.len()),
                    };
                    let end = at.checked_add(len).filter(|&e| e <= MAX_IMAGE).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "a payload of {} ends at {at}+{len}, beyond what a backup copies ({MAX_IMAGE} bytes)",
                            path.display()
                        ))
                    })?;
                    let (at, end) = (at as usize, end as usize);
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    match read_exact_at(&f, &mut image[at..end], at as u64) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => *unread = true,
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                }
            }
        }
        // Read; now which rows still point here. An erasure commits its row change before
        // it touches the bytes, so a row unchanged now was read before any erasure of it.
        let alive: Vec<bool> = self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT file, audio_at, bytes FROM clips WHERE seq = ?1")?;
            let mut alive = Vec::with_capacity(rows.len());
            for row in rows {
                let now = stmt
                    .query_row([row.seq], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .optional()?;
                alive.push(now == Some((row.file.clone(), row.at, row.bytes)));
            }
            Ok(alive)
        })?;
        let (mut end, mut kept) = (0, 0);
        for (((row, payload), alive), unread) in located.iter().zip(alive).zip(unread) {
            let (at, len) = match payload {
                Payload::Range { at, len, .. } => (*at as usize, *len as usize),
                Payload::File(_) => (0, image.len()),
            };
            let stop = at.saturating_add(len);
            if !alive {
                erased.push(row.seq);
                if let Some(bytes) = image.get_mut(at..stop) {
                    bytes.fill(0);
                }
            } else if unread {
                return Err(BackupError::PayloadMissing { seq: row.seq, path });
            } else {
                kept += 1;
                end = end.max(stop);
            }
        }
        if kept == 0 {
            return Ok(None);
        }
        image.truncate(end);
        Ok(Some(image))
    }

    /// Puts the clips `erased` into the snapshot as the live database has them now: the row
    /// and its inbox entries, or neither if the row is gone.
    fn carry_over(&self, snap: &mut Connection, erased: &[i64]) -> Result<(), BackupError> {
        if erased.is_empty() {
            return Ok(());
        }
        let tx = snap.transaction().map_err(StoreError::from)?;
        for &seq in erased {
            let (row, inbox) = self.read(|conn| {
                // One read transaction for the row and its inbox entries.
                let read = conn.unchecked_transaction()?;
                let row = read
                    .query_row("SELECT * FROM clips WHERE seq = ?1", [seq], |r| {
                        (0..r.as_ref().column_count())
                            .map(|i| r.get::<_, Value>(i))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .optional()?;
                let inbox = super::strings(&read, "SELECT user FROM inbox WHERE seq = ?1", [seq])?;
                Ok((row, inbox))
            })?;
            tx.execute("DELETE FROM inbox WHERE seq = ?1", [seq])
                .map_err(StoreError::from)?;
            tx.execute("DELETE FROM clips WHERE seq = ?1", [seq])
                .map_err(StoreError::from)?;
            let Some(values) = row else { continue };
            let marks: Vec<String> = (1..=values.len()).map(|i| format!("?{i}")).collect();
            tx.execute(
                &format!("INSERT INTO clips VALUES ({})", marks.join(", ")),
                params_from_iter(values),
            )
            .map_err(StoreError::from)?;
            let file: String = tx
                .query_row("SELECT file FROM clips WHERE seq = ?1", [seq], |r| r.get(0))
                .map_err(StoreError::from)?;
            if !file.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "clip seq {seq} moved to another payload while the backup ran"
                ))
                .into());
            }
            for user in inbox {
                tx.execute(
                    "INSERT INTO inbox (user, seq) VALUES (?1, ?2)",
                    params![user, seq],
                )
                .map_err(StoreError::from)?;
            }
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(())
    }
}

/// The snapshot's rows that have a payload, by file (relative to `clips/`), each file's in
/// offset order. A file name a backup cannot hold is corruption.
fn snapshot_rows(snap: &Connection) -> Result<BTreeMap<String, Vec<Row>>, BackupError> {
    let mut stmt = snap
        .prepare(
            "SELECT seq, file, audio_at, bytes FROM clips WHERE file != '' ORDER BY file, audio_at",
        )
        .map_err(StoreError::from)?;
    let mut rows = stmt.query([]).map_err(StoreError::from)?;
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let row = Row {
            seq: schema::get(r, 0)?,
            file: schema::get(r, 1)?,
            at: schema::get(r, 2)?,
            bytes: schema::get(r, 3)?,
        };
        if !is_payload_path(&format!("clips/{}", row.file)) {
            return Err(StoreError::Corrupt(format!(
                "clip seq {} names its payload file {:?}, not one of a data dir's",
                row.seq, row.file
            ))
            .into());
        }
        out.entry(row.file.clone()).or_default().push(row);
    }
    Ok(out)
}

/// Whether `path` (relative to the data dir, `/`-separated) is where a data dir keeps a
/// payload: `clips/seg/<name>.seg` or `clips/<ab>/<id>.opus`.
fn is_payload_path(path: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["clips", "seg", name] => name.strip_suffix(".seg").is_some_and(hex),
        ["clips", shard, name] => {
            shard.len() == 2
                && hex(shard)
                && name
                    .strip_suffix(".opus")
                    .is_some_and(|id| id.len() == 32 && hex(id) && id.starts_with(shard))
        }
        _ => false,
    }
}

/// Whether `name` may be an extra file: one plain file name that is not the store's.
fn is_extra_name(name: &str) -> bool {
    !name.is_empty()
        && name != DB
        && name != MANIFEST
        && name != "clips"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads the extra files that exist.
fn read_extras(dir: &Path, names: &[&str]) -> Result<Vec<(String, Vec<u8>)>, BackupError> {
    let mut out = Vec::new();
    for name in names {
        if !is_extra_name(name) {
            return Err(BackupError::BadExtra(format!(
                "{name:?} is not a plain file name of the data dir"
            )));
        }
        let path = dir.join(name);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        if !meta.is_file() || meta.len() > MAX_EXTRA {
            return Err(BackupError::BadExtra(format!(
                "{} is not a file of at most {MAX_EXTRA} bytes",
                path.display()
            )));
        }
        out.push((name.to_string(), fs::read(&path).map_err(io_err(&path))?));
    }
    Ok(out)
}

/// A tar header for a private regular file of `size` bytes.
fn header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(mtime);
    h
}

/// Appends an entry holding `bytes`.
fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mtime: u64,
) -> io::Result<FileEntry> {
    tar.append_data(&mut header(bytes.len() as u64, mtime), path, bytes)?;
    Ok(FileEntry {
        path: path.to_string(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// Appends an entry holding the file at `src`, hashing it on the way.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    src: &Path,
    mtime: u64,
) -> Result<FileEntry, BackupError> {
    let file = File::open(src).map_err(io_err(src))?;
    let size = file.metadata().map_err(io_err(src))?.len();
    let mut reader = Hashing {
        inner: file.take(size),
        hash: Sha256::new(),
        read: 0,
    };
    tar.append_data(&mut header(size, mtime), path, &mut reader)
        .map_err(io_err(src))?;
    if reader.read != size {
        return Err(io_err(src)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while it was copied",
        )));
    }
    Ok(FileEntry {
        path: path.to_string(),
        size,
        sha256: hex::encode(reader.hash.finalize()),
    })
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Gives the finished `partial` its name `out`, never replacing a file there (a hard link
/// fails if `out` exists; where the file system has none, a rename after a check), and makes
/// that durable.
fn publish(partial: &Path, out: &Path) -> Result<(), BackupError> {
    match fs::hard_link(partial, out) {
        Ok(()) => fs::remove_file(partial).map_err(io_err(partial))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(BackupError::OutExists(out.to_path_buf()));
        }
        Err(_) => {
            if fs::symlink_metadata(out).is_ok() {
                return Err(BackupError::OutExists(out.to_path_buf()));
            }
            fs::rename(partial, out).map_err(io_err(out))?;
        }
    }
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    files::sync_dir(dir)?;
    Ok(())
}

/// Removes its files when dropped (those already gone are fine).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A tar entry's data size rounded up to whole blocks.
fn round_up(size: usize) -> u64 {
    (size as u64).div_ceil(512) * 512
}

/// Wraps an I/O error with the path it concerns.
fn io_err(path: &Path) -> impl Fn(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}
