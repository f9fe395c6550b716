//! The embedded store: [`SqliteStore`] owns a relay's data dir, with SQLite for users,
//! channels, clip metadata and inboxes, and clip payloads appended to segment files.
//!
//! # Layout
//! ```text
//! DIR/walkie.db              SQLite: WAL, synchronous=FULL, schema version in PRAGMA user_version
//! DIR/clips/seg/<x>.seg      segments: payloads one after another, each a whole Ogg Opus file
//!                            (or message payload) at the offset its row gives (`audio_at`)
//! DIR/clips/<ab>/<id>.opus   one Ogg Opus file per clip, for clips stored by older builds
//! DIR/clips/tmp/             files older builds were writing: <id>.opus.<random>.partial
//! ```
//!
//! # Why segments, not blobs or a file per clip
//! A stored payload *is* the standard Ogg Opus file that fetch and export hand out, byte for
//! byte, read in place without loading the whole segment, and the database holds only
//! metadata, so it stays small and its WAL, checkpoints and backups stay cheap. A file per
//! clip did the same, but creating and syncing a file per clip was most of the relay's CPU
//! under load (inode allocation, directory locks, one fsync per file): a segment takes a
//! whole group commit's payloads with one write each and one `fdatasync`.
//!
//! # Commit protocol (group commit)
//! [`Store::commit_clip`], [`Store::commit_clips`] (a batch, queued together: the relay's
//! commit thread) and [`Store::ack`] queue their work, then one caller at a time takes the
//! write connection and commits everything queued in one transaction
//! (`BEGIN IMMEDIATE`, which excludes writers in every process):
//! 1. for each clip, a known id from the same sender is a [`CommitOutcome::Duplicate`] and
//!    nothing is written; from another sender it is [`StoreError::IdConflict`];
//! 2. a new clip's payload is appended to this store's segment and its clip row and one inbox
//!    row per recipient are inserted; an ack deletes its inbox row;
//! 3. the segment is synced (`fdatasync`), then the transaction commits, durable on return
//!    thanks to `synchronous=FULL`.
//!
//! So no row ever points at bytes not yet on disk, and every clip, inbox change and ack
//! waiting rides one segment sync and one WAL sync. If the transaction fails the payloads
//! it appended are erased again.
//!
//! # Erasing
//! Purge, recall, channel deletion and retention commit their row changes first, then erase
//! the payloads: a hole punched in the segment (its blocks given back; zeros where the file
//! system cannot), or the old file overwritten and removed. A segment no row points to any
//! more is removed by [`SqliteStore::open`] and after each retention pass.
//!
//! # Sharing the data dir
//! The relay and admin commands (`walkie-relay user add ...`) open the same dir at the same
//! time, so nothing is cached: every call reads the database and sees what any process has
//! committed. Writes use one connection per store (a mutex in-process, SQLite's lock across
//! processes, waiting up to 5 s); reads use a small pool of query-only connections that, in
//! WAL mode, never wait for a writer. Each store appends only to a segment it created.
//!
//! # Crash leftovers
//! A crash between a segment sync and the commit leaves bytes no row points to inside a
//! segment (space only, given back when the segment goes). Older builds could leave a
//! `.partial` file or a clip file without a row. [`SqliteStore::open`] removes those, and
//! segments no row points to, with two guards so that it is safe while another process uses
//! the dir: it only considers files last modified more than [`LEFTOVER_MIN_AGE`] ago, and it
//! decides and removes while holding the write lock, which every commit holds from its check
//! to its commit.
//!
//! # Backups
//! [`SqliteStore::backup`] writes the database and the payloads it points to into one file
//! while the store is in use; [`backup::restore`] makes a new data dir from one.

pub mod backup;
mod files;
mod schema;
mod segments;
mod usage;

pub use usage::{StorageUse, storage_use};

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{
    Connection, OptionalExtension, Params, Row, Transaction, TransactionBehavior, params,
};

use walkie_proto::clip::{ClipId, ClipMeta, Target, now_ms};

use self::schema::{CLIP_COLUMNS, get, query_clips};
use self::segments::Segment;
use crate::{ChannelInfo, CommitOutcome, NewClip, Record, Store, StoreError, TokenHash, records};

/// SQLite's errors become the backend-neutral [`StoreError::Database`] (with SQLite's words).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Crash leftovers younger than this are left alone by [`SqliteStore::open`].
pub const LEFTOVER_MIN_AGE: Duration = Duration::from_secs(60);

/// Idle read connections kept for reuse; more are opened on demand and closed after use.
const MAX_IDLE_READERS: usize = 4;

/// The embedded [`Store`]: a SQLite database plus one Ogg Opus file per clip, in one data dir.
/// Cheap to share behind an `Arc`; safe to open several times, from several processes.
#[derive(Debug)]
pub struct SqliteStore {
    db_path: PathBuf,
    clips_dir: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    /// Clips and acks waiting for the next group commit.
    queue: Mutex<Queue>,
    /// Signalled after each group commit: its jobs have their results.
    committed: Condvar,
    /// The segment this store appends to; locked only by the holder of `writer`.
    segment: Mutex<Option<Segment>>,
}

/// The jobs waiting for a group commit, and whether a caller is committing a group now.
#[derive(Debug, Default)]
struct Queue {
    jobs: Vec<Arc<Job>>,
    leader: bool,
}

/// What a group commit does for one caller.
#[derive(Debug)]
enum Work {
    /// Store a clip (or message) and queue it in its recipients' inboxes.
    Clip {
        meta: ClipMeta,
        recipients: Vec<String>,
        payload: Vec<u8>,
    },
    /// Take a delivered item out of one inbox.
    Ack { key: String, id: ClipId },
}

/// What a group commit did for one caller.
#[derive(Debug)]
enum Done {
    Clip(CommitOutcome),
    Acked,
}

/// One caller's work in a group commit.
#[derive(Debug)]
struct Job {
    work: Work,
    /// Set by the lock holder that committed it.
    result: Mutex<Option<Result<Done, StoreError>>>,
}

impl Job {
    fn take(&self) -> Option<Result<Done, StoreError>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn is_done(&self) -> bool {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn set(&self, r: Result<Done, StoreError>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    }
}

/// Commits `group` in one transaction. Each clip: a known id is a duplicate (same sender) or a
/// conflict; a new one has its payload appended to the segment and its rows inserted (a later
/// clip of the group with the same id sees it). Each ack deletes its inbox row. Then the
/// segment is synced once and the transaction commits. On a failure nothing of the group is
/// kept and every job of it gets the error (the payloads appended are erased: no row refers
/// to them).
fn commit_group(
    conn: &mut Connection,
    slot: &mut Option<Segment>,
    clips_dir: &Path,
    group: &[Arc<Job>],
) {
    let mut appended: Vec<(PathBuf, u64, u64)> = Vec::new();
    let run = (|| -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Under the write lock, which another process's sweep also holds while it removes
        // segments: checked before it, a segment could be removed before we append to it.
        segments::check(slot);
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group {
            let (meta, recipients, payload) = match &job.work {
                Work::Ack { key, id } => {
                    ack_in(&tx, key, id)?;
                    outcomes.push(Ok(Done::Acked));
                    continue;
                }
                Work::Clip {
                    meta,
                    recipients,
                    payload,
                } => (meta, recipients, payload),
            };
            let existing = tx
                .prepare_cached("SELECT seq, sender FROM clips WHERE id = ?1")?
                .query_row([meta.id.0], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            if let Some((seq, sender)) = existing {
                outcomes.push(if sender == meta.from {
                    to_seq(seq).map(|s| Done::Clip(CommitOutcome::Duplicate(s)))
                } else {
                    Err(StoreError::IdConflict(meta.id))
                });
                continue;
            }
            let seg = segments::current(slot, clips_dir, payload.len() as u64)?;
            let at = seg.append(payload)?;
            appended.push((seg.path().to_path_buf(), at, payload.len() as u64));
            let stored = Stored {
                file: seg.rel(),
                at: Some(at),
                bytes: payload.len(),
            };
            let seq = insert_clip(&tx, meta, recipients, &stored)?;
            outcomes.push(Ok(Done::Clip(CommitOutcome::Stored(seq))));
        }
        if let Some(seg) = slot.as_mut() {
            seg.sync()?;
        }
        tx.commit()?;
        Ok(outcomes)
    })();
    match run {
        Ok(outcomes) => {
            for (job, outcome) in group.iter().zip(outcomes) {
                job.set(outcome);
            }
        }
        Err(e) => {
            // Rolled back: no row refers to the payloads appended for this group.
            for (path, at, len) in &appended {
                let _ = segments::erase(path, *at, *len);
            }
            let copies: Vec<StoreError> = group.iter().skip(1).map(|_| clone_error(&e)).collect();
            for (job, err) in group.iter().zip(std::iter::once(e).chain(copies)) {
                job.set(Err(err));
            }
        }
    }
}

/// The leader's turn; ending it lets the next caller lead. Ending it by a panic also gives
/// every job of its group that has no result an error, so that no caller waits forever.
struct Lead<'a> {
    store: &'a SqliteStore,
    group: Vec<Arc<Job>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for job in &self.group {
                let mut result = job.result.lock().unwrap_or_else(PoisonError::into_inner);
                if result.is_none() {
                    *result = Some(Err(StoreError::Backend(
                        "the group commit this write was in failed".into(),
                    )));
                }
            }
        }
        self.store
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leader = false;
        self.store.committed.notify_all();
    }
}

/// Where a payload is: its own file (older builds) or a range of a segment.
#[derive(Debug)]
enum Payload {
    File(PathBuf),
    Range { path: PathBuf, at: u64, len: u64 },
}

/// Where a new clip's payload was put, for its row.
struct Stored<'a> {
    file: &'a str,
    at: Option<u64>,
    bytes: usize,
}

/// A job that came back from its group without a result (never expected: every job of a
/// group gets one, even when the leader panics).
fn lost_job() -> StoreError {
    StoreError::Backend("a group commit lost a job".into())
}

/// The same failure for every clip of a group (I/O errors keep their kind and message).
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::IdConflict(id) => StoreError::IdConflict(*id),
        _ => StoreError::Backend(e.to_string()),
    }
}

impl SqliteStore {
    /// Opens the store in `data_dir`, creating the dir, `walkie.db` and `clips/` as needed,
    /// migrating the schema, and removing crash leftovers older than [`LEFTOVER_MIN_AGE`].
    /// A database written by a newer build is refused with [`StoreError::Corrupt`].
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let clips_dir = data_dir.join("clips");
        let tmp_dir = clips_dir.join(files::TMP_DIR);
        crate::private::create_dir_all(&tmp_dir).map_err(files::io_err(&tmp_dir))?;
        let db_path = data_dir.join("walkie.db");
        // Created 0600 before SQLite opens it; its journal files take the same mode.
        crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&db_path)
            .map_err(files::io_err(&db_path))?;
        let mut writer = schema::connect(&db_path, false)?;
        schema::prepare(&mut writer)?;
        let store = SqliteStore {
            db_path,
            clips_dir,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            queue: Mutex::new(Queue::default()),
            committed: Condvar::new(),
            segment: Mutex::new(None),
        };
        store.sweep_leftovers(LEFTOVER_MIN_AGE)?;
        Ok(store)
    }

    /// Removes `.partial` files, row-less clip files and segments no row points to, all older
    /// than `min_age`; returns how many.
    fn sweep_leftovers(&self, min_age: Duration) -> Result<usize, StoreError> {
        let found = files::scan(&self.clips_dir, min_age)?;
        let mut removed = self.remove_dead_segments(min_age)?;
        if found.partial.is_empty() && found.clips.is_empty() {
            return Ok(removed);
        }
        let mut conn = self.writer();
        // Writes nothing: the transaction only holds the write lock while files are judged.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        removed += found
            .partial
            .iter()
            .filter(|p| files::remove_leftover(p))
            .count();
        // A purged clip keeps its row but not its file (`file = ''`).
        let mut known = tx.prepare("SELECT 1 FROM clips WHERE id = ?1 AND file != ''")?;
        for (id, path) in &found.clips {
            if !known.exists([id.0])? && files::remove_leftover(path) {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes segments last modified at least `min_age` ago that no row points to (all their
    /// payloads erased, or bytes of a commit that never happened), but never the one this
    /// store appends to. Decided and done under the write lock.
    fn remove_dead_segments(&self, min_age: Duration) -> Result<usize, StoreError> {
        let old = segments::old_segments(&self.clips_dir, min_age);
        if old.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ours = self
            .segment
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.rel().to_string());
        let mut used = tx.prepare_cached("SELECT 1 FROM clips WHERE file = ?1 LIMIT 1")?;
        let mut removed = 0;
        for rel in old {
            if Some(&rel) != ours.as_ref()
                && !used.exists([&rel])?
                && files::remove_leftover(&self.clips_dir.join(&rel))
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The write connection. A panic while it was held left no open transaction (a
    /// `Transaction` rolls back when dropped), so a poisoned lock is still usable.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A write transaction that holds the database write lock from its first statement.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs reads on a pooled query-only connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => schema::connect(&self.db_path, true)?,
        };
        let out = f(&conn);
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

impl SqliteStore {
    /// One page: the newest `limit` clips matching `filter` (over `clips c`, with `?1` and `?2`
    /// bound to `p1` and `p2`) with seq below `before_seq`, read newest first, then put back in
    /// order. History and everything-readable both page through it.
    fn newest(
        &self,
        filter: &str,
        p1: &str,
        p2: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let sql = format!(
            "SELECT * FROM (SELECT {CLIP_COLUMNS} FROM clips c WHERE ({filter}) AND c.seq < ?3 \
             ORDER BY c.seq DESC LIMIT ?4) c ORDER BY c.seq"
        );
        let before = before_seq.map_or(i64::MAX, sql_int);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            query_clips(&mut stmt, params![p1, p2, before, sql_int(limit)])
        })
    }

    /// Where a clip's payload is (checked to stay inside the clips dir).
    fn payload_of(&self, id: &ClipId) -> Result<Payload, StoreError> {
        let (file, at, bytes): (String, Option<i64>, i64) = self
            .read(|conn| {
                first(
                    conn,
                    "SELECT file, audio_at, bytes FROM clips WHERE id = ?1",
                    [id.0],
                    |r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)),
                )
            })?
            .ok_or_else(|| StoreError::NotFound {
                kind: "clip",
                name: id.to_string(),
            })?;
        if file.is_empty() {
            return Err(StoreError::NotFound {
                kind: "clip audio (purged)",
                name: id.to_string(),
            });
        }
        self.locate(&file, at, bytes)
            .map_err(|why| StoreError::Corrupt(format!("clip {id} {why}")))
    }

    /// A row's payload location from its `file`, `audio_at` and `bytes`, or what is wrong.
    fn locate(&self, file: &str, at: Option<i64>, bytes: i64) -> Result<Payload, String> {
        if !Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(format!("has file name {file:?}"));
        }
        let path = self.clips_dir.join(file);
        match at {
            None => Ok(Payload::File(path)),
            Some(at) => match (u64::try_from(at), u64::try_from(bytes)) {
                (Ok(at), Ok(len)) => Ok(Payload::Range { path, at, len }),
                _ => Err(format!("has payload range {at}+{bytes}")),
            },
        }
    }

    /// The payloads of the rows `sql` selects (`file, audio_at, bytes`), skipping rows
    /// without one; a row that names a bad location is an error.
    fn payloads(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        params: impl Params,
    ) -> Result<Vec<Payload>, StoreError> {
        let mut stmt = tx.prepare(sql)?;
        let rows = stmt.query_map(params, |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (file, at, bytes) = row?;
            if file.is_empty() {
                continue;
            }
            out.push(
                self.locate(&file, at, bytes)
                    .map_err(|why| StoreError::Corrupt(format!("a clip {why}")))?,
            );
        }
        Ok(out)
    }

    /// Erases payloads whose rows are gone or purged (see the module doc).
    fn erase(&self, payloads: &[Payload]) -> Result<(), StoreError> {
        for p in payloads {
            match p {
                Payload::File(path) => files::shred(path)?,
                Payload::Range { path, at, len } => segments::erase(path, *at, *len)?,
            }
        }
        Ok(())
    }

    /// Queues `work` for the next group commit and waits until it is committed. One caller
    /// at a time leads: it takes everything queued, commits it as one group and wakes the
    /// others; the rest wait on a condition variable, not on the write connection, so a
    /// group's callers return at once instead of taking the connection one after another.
    fn submit(&self, work: Work) -> Result<Done, StoreError> {
        self.submit_all(vec![work])
            .pop()
            .unwrap_or_else(|| Err(lost_job()))
    }

    /// [`SqliteStore::submit`] for several jobs at once: they join the same group (in
    /// order), and their results come back in order.
    fn submit_all(&self, works: Vec<Work>) -> Vec<Result<Done, StoreError>> {
        let jobs: Vec<Arc<Job>> = works
            .into_iter()
            .map(|work| {
                Arc::new(Job {
                    work,
                    result: Mutex::new(None),
                })
            })
            .collect();
        let lock_queue = || self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut queue = lock_queue();
        queue.jobs.extend(jobs.iter().cloned());
        loop {
            if jobs.iter().all(|j| j.is_done()) {
                // Committed with a group, by this caller or another.
                return jobs
                    .iter()
                    .map(|j| j.take().unwrap_or_else(|| Err(lost_job())))
                    .collect();
            }
            if queue.leader {
                queue = self
                    .committed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            queue.leader = true;
            let group = std::mem::take(&mut queue.jobs);
            drop(queue);
            // Resets `leader` and wakes the waiters even if the commit panics.
            let lead = Lead { store: self, group };
            let mut conn = self.writer();
            let mut slot = self.segment.lock().unwrap_or_else(PoisonError::into_inner);
            commit_group(&mut conn, &mut slot, &self.clips_dir, &lead.group);
            drop((slot, conn, lead));
            queue = lock_queue();
        }
    }
}

/// The first row of a query, mapped; `None` if there is none.
fn first<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}

/// The first column of every row, as strings.
fn strings(conn: &Connection, sql: &str, params: impl Params) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(get(row, 0)?);
    }
    Ok(out)
}

/// A stored seq as the `u64` the API speaks.
fn to_seq(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative clip seq {seq}")))
}

/// A `u64` seq or count as an SQL integer, saturating (no stored seq comes near `i64::MAX`).
fn sql_int(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// Adds existing users to a channel inside a write transaction.
fn add_members(tx: &Transaction<'_>, channel: &str, users: &[String]) -> Result<(), StoreError> {
    let mut exists = tx.prepare_cached("SELECT 1 FROM users WHERE name = ?1")?;
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO members (channel, user) VALUES (?1, ?2)")?;
    for user in users {
        if !exists.exists([user])? {
            return Err(StoreError::NotFound {
                kind: "user",
                name: user.clone(),
            });
        }
        insert.execute([channel, user])?;
    }
    Ok(())
}

/// Inserts a clip row and its inbox rows; returns the new seq. Recipients that are not (or no
/// longer) users are skipped, as are repeats.
fn insert_clip(
    tx: &Transaction<'_>,
    meta: &ClipMeta,
    recipients: &[String],
    stored: &Stored<'_>,
) -> Result<u64, StoreError> {
    let (kind, name) = match &meta.to {
        Target::Channel(name) => ("c", name),
        Target::User(name) => ("u", name),
    };
    tx.prepare_cached(
        "INSERT INTO clips (id, sender, target_kind, target_name, started_at_ms, duration_ms, packets, \
         bytes, frame_samples, bitrate, pre_skip, file, stored_at_ms, content, audio_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(
        params![
            meta.id.0,
            meta.from,
            kind,
            name,
            meta.started_at_ms,
            meta.duration_ms,
            meta.packets,
            sql_int(stored.bytes),
            meta.codec.frame_samples,
            meta.codec.bitrate,
            meta.codec.pre_skip,
            stored.file,
            now_ms(),
            schema::content_column(&meta.content),
            stored.at.map(sql_int)
        ],
    )?;
    let seq = tx.last_insert_rowid();
    queue(tx, recipients, seq)?;
    to_seq(seq)
}

/// Queues the item at `seq` in the inbox of each delivery key whose user exists (a device's
/// key `NAME/DEVICE` names its user first).
fn queue(tx: &Transaction<'_>, keys: &[String], seq: i64) -> Result<(), StoreError> {
    let mut queue = tx.prepare_cached(
        "INSERT OR IGNORE INTO inbox (user, seq) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM users WHERE name = ?3)",
    )?;
    for key in keys {
        let user = key.split_once('/').map_or(key.as_str(), |(user, _)| user);
        queue.execute(params![key, seq, user])?;
    }
    Ok(())
}

/// Takes the item `id` out of the inbox of delivery key `key` (nothing if it is not there).
fn ack_in(tx: &Transaction<'_>, key: &str, id: &ClipId) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM inbox WHERE user = ?1 AND seq = (SELECT seq FROM clips WHERE id = ?2)",
    )?
    .execute(params![key, id.0])?;
    Ok(())
}

impl Store for SqliteStore {
    fn add_user(&self, name: &str, token_hash: &TokenHash) -> Result<(), StoreError> {
        let added = self.writer().execute(
            "INSERT INTO users (name, token_hash, created_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![name, token_hash, now_ms()],
        )?;
        if added == 0 {
            return Err(StoreError::Exists {
                kind: "user",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM members WHERE user = ?1", [name])?;
            tx.execute("DELETE FROM inbox WHERE user = ?1", [name])?;
            Ok(tx.execute("DELETE FROM users WHERE name = ?1", [name])? > 0)
        })
    }

    fn users(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| strings(conn, "SELECT name FROM users ORDER BY name", []))
    }

    fn set_token(&self, name: &str, token_hash: &TokenHash) -> Result<bool, StoreError> {
        Ok(self.writer().execute(
            "UPDATE users SET token_hash = ?2 WHERE name = ?1",
            params![name, token_hash],
        )? > 0)
    }

    fn token_hashes(&self, names: &[String]) -> Result<Vec<Option<TokenHash>>, StoreError> {
        // One scan of the users table rather than a query per name.
        let all: std::collections::HashMap<String, TokenHash> = self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT name, token_hash FROM users")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, TokenHash>(1)?))
            })?;
            rows.collect::<Result<_, _>>().map_err(StoreError::from)
        })?;
        Ok(names.iter().map(|n| all.get(n).copied()).collect())
    }

    fn stored_bytes_of(&self, sender: &str) -> Result<Option<u64>, StoreError> {
        self.read(|conn| {
            // Purged clips (file = '') keep their row but no audio.
            let total: i64 = conn.query_row(
                "SELECT COALESCE(SUM(bytes), 0) FROM clips WHERE sender = ?1 AND file != ''",
                [sender],
                |r| r.get(0),
            )?;
            Ok(Some(u64::try_from(total).unwrap_or(0)))
        })
    }

    fn has_history(&self, name: &str) -> Result<bool, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT 1 FROM clips WHERE sender = ?1 UNION ALL SELECT 1 FROM clips WHERE target_kind = 'u' AND target_name = ?1 LIMIT 1",
            )?;
            Ok(stmt.exists([name])?)
        })
    }

    fn token_hash(&self, name: &str) -> Result<Option<TokenHash>, StoreError> {
        self.read(|conn| {
            first(
                conn,
                "SELECT token_hash FROM users WHERE name = ?1",
                [name],
                |r| get(r, 0),
            )
        })
    }

    fn add_channel(&self, name: &str, members: &[String]) -> Result<(), StoreError> {
        self.write(|tx| {
            let created = tx.execute(
                "INSERT INTO channels (name, created_at_ms) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, now_ms()],
            )?;
            if created == 0 {
                return Err(StoreError::Exists { kind: "channel", name: name.to_string() });
            }
            add_members(tx, name, members)
        })
    }

    fn channels(&self) -> Result<Vec<ChannelInfo>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT c.name, m.user FROM channels c LEFT JOIN members m ON m.channel = c.name ORDER BY c.name, m.user",
            )?;
            let mut rows = stmt.query([])?;
            let mut out: Vec<ChannelInfo> = Vec::new();
            while let Some(row) = rows.next()? {
                let name: String = get(row, 0)?;
                if out.last().is_none_or(|c| c.name != name) {
                    out.push(ChannelInfo { name, members: Vec::new() });
                }
                if let (Some(user), Some(channel)) = (get::<Option<String>>(row, 1)?, out.last_mut()) {
                    channel.members.push(user);
                }
            }
            Ok(out)
        })
    }

    fn channels_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT channel FROM members WHERE user = ?1 ORDER BY channel")?;
            let rows = stmt.query_map([user], |row| row.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn members(&self, channel: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.read(|conn| {
            // One statement, one snapshot: no rows = no channel, one NULL user = no members.
            let mut stmt = conn.prepare_cached(
                "SELECT m.user FROM channels c LEFT JOIN members m ON m.channel = c.name WHERE c.name = ?1 ORDER BY m.user",
            )?;
            let mut rows = stmt.query([channel])?;
            let mut out = None;
            while let Some(row) = rows.next()? {
                let members = out.get_or_insert_with(Vec::new);
                members.extend(get::<Option<String>>(row, 0)?);
            }
            Ok(out)
        })
    }

    /// Additions are applied before removals, so a name in both lists ends up removed.
    fn update_members(
        &self,
        channel: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.write(|tx| {
            if !tx
                .prepare_cached("SELECT 1 FROM channels WHERE name = ?1")?
                .exists([channel])?
            {
                return Err(StoreError::NotFound {
                    kind: "channel",
                    name: channel.to_string(),
                });
            }
            add_members(tx, channel, add)?;
            let mut delete =
                tx.prepare_cached("DELETE FROM members WHERE channel = ?1 AND user = ?2")?;
            for user in remove {
                delete.execute([channel, user])?;
            }
            strings(
                tx,
                "SELECT user FROM members WHERE channel = ?1 ORDER BY user",
                [channel],
            )
        })
    }

    /// The stored `bytes` is the length of `ogg`, whatever `meta.bytes` says. Group commit
    /// (see the module doc): under load many clips share each segment sync and WAL sync.
    fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
    ) -> Result<CommitOutcome, StoreError> {
        self.commit_clips(vec![NewClip {
            meta: meta.clone(),
            recipients: recipients.to_vec(),
            payload: ogg.to_vec(),
        }])
        .pop()
        .unwrap_or_else(|| Err(lost_job()))
    }

    /// One group commit for the whole batch (and whatever else is queued then).
    fn commit_clips(&self, clips: Vec<NewClip>) -> Vec<Result<CommitOutcome, StoreError>> {
        let ids: Vec<ClipId> = clips.iter().map(|c| c.meta.id).collect();
        let works = clips
            .into_iter()
            .map(|c| Work::Clip {
                meta: c.meta,
                recipients: c.recipients,
                payload: c.payload,
            })
            .collect();
        self.submit_all(works)
            .into_iter()
            .zip(ids)
            .map(|(done, id)| match done? {
                Done::Clip(outcome) => Ok(outcome),
                Done::Acked => Err(StoreError::Corrupt(format!(
                    "clip {id} was committed as an ack"
                ))),
            })
            .collect()
    }

    fn clip(&self, id: &ClipId) -> Result<Option<ClipMeta>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CLIP_COLUMNS} FROM clips c WHERE c.id = ?1"
            ))?;
            Ok(query_clips(&mut stmt, [id.0])?.into_iter().next())
        })
    }

    fn clip_audio(&self, id: &ClipId) -> Result<Vec<u8>, StoreError> {
        match self.payload_of(id)? {
            Payload::File(path) => fs::read(&path).map_err(files::io_err(&path)),
            Payload::Range { path, at, len } => segments::read(
                &path,
                at,
                len,
                0,
                usize::try_from(len).unwrap_or(usize::MAX),
            ),
        }
    }

    fn clip_audio_part(&self, id: &ClipId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = match self.payload_of(id)? {
            Payload::File(path) => path,
            Payload::Range { path, at, len } => {
                return segments::read(&path, at, len, offset, max);
            }
        };
        let mut file = fs::File::open(&path).map_err(files::io_err(&path))?;
        if offset >= file.metadata().map_err(files::io_err(&path))?.len() {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(files::io_err(&path))?;
        let mut part = Vec::with_capacity(max.min(1 << 20));
        file.take(max as u64)
            .read_to_end(&mut part)
            .map_err(files::io_err(&path))?;
        Ok(part)
    }

    fn pending(
        &self,
        user: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CLIP_COLUMNS} FROM inbox i JOIN clips c ON c.seq = i.seq \
                 WHERE i.user = ?1 AND i.seq > ?2 ORDER BY i.seq LIMIT ?3"
            ))?;
            query_clips(&mut stmt, params![user, sql_int(after_seq), sql_int(limit)])
        })
    }

    /// Rides the group commit with clips (see the module doc).
    fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError> {
        self.submit(Work::Ack {
            key: user.to_string(),
            id: *id,
        })
        .map(|_| ())
    }

    /// Takes the database's write lock and gives it back, and creates and removes a file
    /// beside the segments: both fail on a read-only or full file system.
    fn ready(&self) -> Result<(), StoreError> {
        {
            let mut conn = self.writer();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.rollback()?;
        }
        let probe = self.clips_dir.join(".ready");
        fs::write(&probe, b"walkie").map_err(files::io_err(&probe))?;
        fs::remove_file(&probe).map_err(files::io_err(&probe))
    }

    fn inbox_depth(&self) -> Result<Option<u64>, StoreError> {
        let n: i64 =
            self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM inbox", [], |r| r.get(0))?))?;
        Ok(Some(u64::try_from(n).unwrap_or(0)))
    }

    fn clear_inbox(&self, key: &str) -> Result<(), StoreError> {
        self.writer()
            .execute("DELETE FROM inbox WHERE user = ?1", [key])?;
        Ok(())
    }

    fn history(
        &self,
        viewer: &str,
        target: &Target,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let filter = match target {
            Target::Channel(_) => "c.target_kind = 'c' AND c.target_name = ?2",
            Target::User(_) => {
                "c.target_kind = 'u' AND ((c.sender = ?1 AND c.target_name = ?2) OR (c.sender = ?2 AND c.target_name = ?1))"
            }
        };
        self.newest(filter, viewer, target.name(), limit, before_seq)
    }

    fn readable(
        &self,
        user: &str,
        limit: usize,
        before_seq: Option<u64>,
    ) -> Result<Vec<ClipMeta>, StoreError> {
        let filter = "(c.target_kind = 'c' AND c.target_name IN (SELECT channel FROM members WHERE user = ?1)) \
             OR (c.target_kind = 'u' AND (c.sender = ?1 OR c.target_name = ?1))";
        self.newest(filter, user, "", limit, before_seq)
    }

    fn purge_user(&self, user: &str) -> Result<usize, StoreError> {
        // Metadata first, in one transaction; the files go after the commit. A crash in
        // between leaves files no row points to, which the next open sweeps away.
        let files = self.write(|tx| {
            let files = self.payloads(
                tx,
                "SELECT file, audio_at, bytes FROM clips WHERE sender = ?1 AND file != ''",
                [user],
            )?;
            tx.execute(
                "DELETE FROM inbox WHERE seq IN (SELECT seq FROM clips WHERE sender = ?1)",
                [user],
            )?;
            tx.execute(
                "UPDATE clips SET sender = ?2, file = '', audio_at = NULL, bytes = 0, packets = 0 WHERE sender = ?1",
                params![user, crate::PURGED_SENDER],
            )?;
            Ok(files)
        })?;
        self.erase(&files)?;
        Ok(files.len())
    }

    fn recall_clip(&self, id: &ClipId, keys: &[String]) -> Result<Option<ClipMeta>, StoreError> {
        // Metadata and inboxes first, in one transaction; the file goes after the commit (a
        // crash in between leaves a file no row points to, which the next open sweeps away).
        let done = self.write(|tx| {
            let Some(seq) = first(tx, "SELECT seq FROM clips WHERE id = ?1", [id.0], |r| get::<i64>(r, 0))? else {
                return Ok(None);
            };
            let file = self.payloads(tx, "SELECT file, audio_at, bytes FROM clips WHERE seq = ?1", [seq])?;
            tx.execute(
                "UPDATE clips SET content = ?2, file = '', audio_at = NULL, bytes = 0, packets = 0, duration_ms = 0 WHERE seq = ?1",
                params![seq, schema::content_column(&walkie_proto::message::Content::Recalled)],
            )?;
            queue(tx, keys, seq)?;
            let meta = first(tx, &format!("SELECT {CLIP_COLUMNS} FROM clips c WHERE c.seq = ?1"), [seq], schema::clip_from_row)?;
            Ok(Some((file, meta)))
        })?;
        let Some((file, meta)) = done else {
            return Ok(None);
        };
        self.erase(&file)?;
        Ok(meta)
    }

    fn delete_channel(&self, name: &str) -> Result<Option<usize>, StoreError> {
        let files = self.write(|tx| {
            if tx.execute("DELETE FROM channels WHERE name = ?1", [name])? == 0 {
                return Ok(None);
            }
            let filter = "target_kind = 'c' AND target_name = ?1";
            let files = self.payloads(
                tx,
                &format!("SELECT file, audio_at, bytes FROM clips WHERE {filter} AND file != ''"),
                [name],
            )?;
            // Inbox entries go with their clips (ON DELETE CASCADE); purged clips have no file.
            let rows = tx.execute(&format!("DELETE FROM clips WHERE {filter}"), [name])?;
            Ok(Some((files, rows)))
        })?;
        let Some((files, rows)) = files else {
            return Ok(None);
        };
        self.erase(&files)?;
        Ok(Some(rows))
    }

    fn record(&self, key: &[&str]) -> Result<Option<Record>, StoreError> {
        let key = records::record_key(key)?;
        self.read(|conn| {
            first(
                conn,
                "SELECT value, rev FROM records WHERE key = ?1",
                [&key],
                |r| {
                    Ok(Record {
                        value: get(r, 0)?,
                        rev: to_seq(get(r, 1)?)?,
                    })
                },
            )
        })
    }

    fn put_record(&self, key: &[&str], value: &[u8], rev: u64) -> Result<Option<u64>, StoreError> {
        let key = records::record_key(key)?;
        records::check_value(value)?;
        self.write(|tx| {
            let now: Option<i64> =
                first(tx, "SELECT rev FROM records WHERE key = ?1", [&key], |r| {
                    get(r, 0)
                })?;
            if now.map_or(0, |r| u64::try_from(r).unwrap_or(0)) != rev {
                return Ok(None);
            }
            let next = sql_int(rev) + 1;
            tx.execute(
                "INSERT INTO records (key, value, rev) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, rev = excluded.rev",
                params![key, value, next],
            )?;
            Ok(Some(to_seq(next)?))
        })
    }

    fn delete_record(&self, key: &[&str]) -> Result<(), StoreError> {
        let key = records::record_key(key)?;
        self.write(|tx| {
            tx.execute("DELETE FROM records WHERE key = ?1", [&key])?;
            Ok(())
        })
    }

    fn record_keys(&self, prefix: &[&str]) -> Result<Vec<Vec<String>>, StoreError> {
        let lo = records::record_prefix(prefix)?;
        // Every key that starts with `lo`: at least `lo`, and below `lo` with its last
        // character ('.') replaced by the next one ('/').
        let hi = format!("{}/", &lo[..lo.len() - 1]);
        let keys = self.read(|conn| {
            strings(
                conn,
                "SELECT key FROM records WHERE key >= ?1 AND key < ?2 ",
                [&lo, &hi],
            )
        })?;
        records::parse_record_keys(&keys)
    }

    fn delete_clips_before(&self, before_ms: i64) -> Result<usize, StoreError> {
        let files = self.write(|tx| {
            let files = self.payloads(
                tx,
                "SELECT file, audio_at, bytes FROM clips WHERE stored_at_ms < ?1 AND file != ''",
                [before_ms],
            )?;
            tx.execute("DELETE FROM clips WHERE stored_at_ms < ?1", [before_ms])?;
            Ok(files)
        })?;
        self.erase(&files)?;
        if !files.is_empty() {
            self.remove_dead_segments(LEFTOVER_MIN_AGE)?;
        }
        Ok(files.len())
    }
}

#[cfg(test)]
mod tests;
