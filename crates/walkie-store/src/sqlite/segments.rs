//! Clip payloads appended to segment files under `clips/seg/`: the one a store is filling,
//! how a payload is written durably, read back, erased, and when a segment can go.
//!
//! A file per clip cost the relay more than everything else an upload does: at 700 clips a
//! second two thirds of its CPU went into the kernel, a third of it allocating inodes (see
//! BENCHMARKS.md, "Durable ingest"). A segment takes many payloads one after another, each
//! still a whole standard Ogg Opus file (or message payload) byte for byte, at the offset its
//! row records; one `fdatasync` makes a whole group commit's payloads durable.
//!
//! Locking is the caller's job: every function here that writes runs while the store holds
//! the database write lock, which excludes writers in every process. Each store appends only
//! to a segment it created itself; at the start of each group, under that lock, it checks
//! that the file at the segment's path is still the one it holds (another process's sweep,
//! which holds the same lock, may have removed a segment no row pointed to), and starts a
//! new one if not.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::files::{io_err, list_dir, old_enough, sync_dir, write_all_at, write_zeros};
use crate::StoreError;

/// Subdirectory of `clips/` holding segments. Three letters, so never a shard name.
pub(super) const SEG_DIR: &str = "seg";
const SEG_EXT: &str = "seg";
/// A segment takes no new payload once it holds this much (one larger payload still fits).
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

/// The segment a store is filling.
#[derive(Debug)]
pub(super) struct Segment {
    file: File,
    /// Relative to `clips/`: what the rows' `file` column holds.
    rel: String,
    path: PathBuf,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
}

impl Segment {
    /// Creates a new empty segment (and `clips/seg/` if needed) and makes its entry durable.
    fn create(clips_dir: &Path) -> Result<Segment, StoreError> {
        let dir = clips_dir.join(SEG_DIR);
        match crate::private::create_dir(&dir) {
            Ok(()) => sync_dir(clips_dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        let name = format!("{:016x}.{SEG_EXT}", rand::random::<u64>());
        let path = dir.join(&name);
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&dir)?;
        Ok(Segment {
            file,
            rel: format!("{SEG_DIR}/{name}"),
            path,
            len: 0,
            dirty: false,
        })
    }

    /// What the rows of its payloads name as their file.
    pub(super) fn rel(&self) -> &str {
        &self.rel
    }

    /// Whether the file at our path is still the one we hold.
    fn still_ours(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match (fs::metadata(&self.path), self.file.metadata()) {
                (Ok(there), Ok(held)) => there.dev() == held.dev() && there.ino() == held.ino(),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        self.path.exists()
    }

    /// Appends `bytes`; returns the offset they start at. Not durable until [`Self::sync`].
    pub(super) fn append(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        let at = self.len;
        write_all_at(&self.file, bytes, at).map_err(io_err(&self.path))?;
        self.len += bytes.len() as u64;
        self.dirty = true;
        Ok(at)
    }

    /// Makes everything appended durable (one `fdatasync`).
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.file.sync_data().map_err(io_err(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Where a payload written at `at` lives, for erasing it after a failed commit.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// The segment to append a payload of `need` bytes to: the one in `slot` if it is still ours
/// and has room, else a new one (the old one synced first, so nothing it took waits on it).
pub(super) fn current<'a>(
    slot: &'a mut Option<Segment>,
    clips_dir: &Path,
    need: u64,
) -> Result<&'a mut Segment, StoreError> {
    let keep = slot
        .as_ref()
        .is_some_and(|s| s.len == 0 || s.len + need <= SEGMENT_BYTES);
    if !keep {
        if let Some(old) = slot.as_mut() {
            old.sync()?;
        }
        *slot = None;
    }
    match slot {
        Some(seg) => Ok(seg),
        None => Ok(slot.insert(Segment::create(clips_dir)?)),
    }
}

/// Before a group: forgets the segment in `slot` if its file was removed or replaced.
pub(super) fn check(slot: &mut Option<Segment>) {
    if slot.as_ref().is_some_and(|s| !s.still_ours()) {
        *slot = None;
    }
}

/// Reads up to `max` bytes of the payload of `len` bytes at `at` in `path`, from `offset`
/// into the payload.
pub(super) fn read(
    path: &Path,
    at: u64,
    len: u64,
    offset: u64,
    max: usize,
) -> Result<Vec<u8>, StoreError> {
    if offset >= len {
        return Ok(Vec::new());
    }
    let want = usize::try_from((len - offset).min(max as u64)).unwrap_or(max);
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = vec![0u8; want];
    read_exact_at(&file, &mut out, at + offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            StoreError::Corrupt(format!(
                "{} ends before the payload at {at}..{} it should hold",
                path.display(),
                at + len
            ))
        } else {
            io_err(path)(e)
        }
    })?;
    Ok(out)
}

/// Erases the payload of `len` bytes at `at` so that no byte of it stays on disk: its blocks
/// are given back to the file system (a hole, which reads as zeros) where the file system
/// can, else it is overwritten with zeros; then synced. A segment already gone is fine.
pub(super) fn erase(path: &Path, at: u64, len: u64) -> Result<(), StoreError> {
    let file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if len == 0 {
        return Ok(());
    }
    (|| {
        if !punch_hole(&file, at, len) {
            write_zeros(&file, at, len)?;
        }
        file.sync_data()
    })()
    .map_err(io_err(path))
}

/// Segments under `clips/seg/` (their names relative to `clips/`) last modified at least
/// `min_age` ago.
pub(super) fn old_segments(clips_dir: &Path, min_age: std::time::Duration) -> Vec<String> {
    let now = std::time::SystemTime::now();
    list_dir(&clips_dir.join(SEG_DIR))
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == SEG_EXT))
        .filter(|path| old_enough(path, now, min_age))
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            Some(format!("{SEG_DIR}/{name}"))
        })
        .collect()
}

/// Reads exactly `out.len()` bytes at `at` without moving a shared cursor.
#[cfg(unix)]
pub(super) fn read_exact_at(file: &File, out: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, out, at)
}

#[cfg(not(unix))]
pub(super) fn read_exact_at(mut file: &File, out: &mut [u8], at: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(out)
}

/// Deallocates `len` bytes at `at` (Linux `FALLOC_FL_PUNCH_HOLE`); false where that is not
/// supported, and the caller overwrites instead.
#[cfg(target_os = "linux")]
fn punch_hole(file: &File, at: u64, len: u64) -> bool {
    use rustix::fs::{FallocateFlags, fallocate};
    fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        at,
        len,
    )
    .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn punch_hole(_file: &File, _at: u64, _len: u64) -> bool {
    false
}
