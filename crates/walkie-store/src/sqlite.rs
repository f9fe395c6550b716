//! The embedded store: [`SqliteStore`] owns a relay's data dir, with SQLite for users,
//! channels, clip metadata and inboxes, and one Ogg Opus file per clip.
//!
//! # Layout
//! ```text
//! DIR/walkie.db              SQLite: WAL, synchronous=FULL, schema version in PRAGMA user_version
//! DIR/clips/<ab>/<id>.opus   one standard Ogg Opus file per clip, <ab> = the id's first 2 hex digits
//! DIR/clips/tmp/             files being written: <id>.opus.<random>.partial
//! ```
//!
//! # Why files, not blobs
//! The stored file *is* the standard Ogg Opus file that fetch and export hand out, byte for
//! byte: `opusinfo` or a media player read it in place, it streams from disk without loading
//! a whole clip into memory, and the database holds only metadata, so it stays small and its
//! WAL, checkpoints and backups stay cheap.
//!
//! # Commit protocol
//! [`Store::commit_clip`] holds the database write lock (`BEGIN IMMEDIATE`, which excludes
//! writers in every process) from its duplicate check to its commit:
//! 1. a known id from the same sender is a [`CommitOutcome::Duplicate`] and nothing is
//!    written; from another sender it is [`StoreError::IdConflict`];
//! 2. the bytes go to a `.partial` file in `clips/tmp/`, which is fsynced and renamed to its
//!    final path; the directory is fsynced (and `clips/` too when the shard dir is new);
//! 3. the clip row and one inbox row per recipient are inserted and committed, durable on
//!    return thanks to `synchronous=FULL`.
//!
//! So no row ever points at a half-written file. If step 3 fails the file is removed again.
//!
//! # Sharing the data dir
//! The relay and admin commands (`walkie-relay user add ...`) open the same dir at the same
//! time, so nothing is cached: every call reads the database and sees what any process has
//! committed. Writes use one connection per store (a mutex in-process, SQLite's lock across
//! processes, waiting up to 5 s); reads use a small pool of query-only connections that, in
//! WAL mode, never wait for a writer.
//!
//! # Crash leftovers
//! A crash can leave a `.partial` file (before the rename) or a clip file without a row
//! (between the rename and the commit). [`SqliteStore::open`] removes both, with two guards so
//! that it is safe while another process uses the dir: it only considers files last modified
//! more than [`LEFTOVER_MIN_AGE`] ago, and it decides and removes while holding the write
//! lock, which every commit holds from its check to its commit. A file that a commit in
//! progress is writing or has just renamed is therefore never taken for a leftover.

mod files;
mod schema;

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{
    Connection, OptionalExtension, Params, Row, Transaction, TransactionBehavior, params,
};

use walkie_proto::clip::{ClipId, ClipMeta, Target, now_ms};

use self::schema::{CLIP_COLUMNS, get, query_clips};
use crate::{ChannelInfo, CommitOutcome, Record, Store, StoreError, TokenHash, records};

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
    /// Clips whose files are synced, waiting for the next group commit.
    queue: Mutex<Vec<Arc<Job>>>,
}

/// One clip in a group commit.
#[derive(Debug)]
struct Job {
    meta: ClipMeta,
    recipients: Vec<String>,
    /// Where its file goes, relative to `clips/`.
    rel: String,
    /// Its synced temp file.
    tmp: PathBuf,
    len: usize,
    /// Set by the lock holder that committed it.
    result: Mutex<Option<Result<CommitOutcome, StoreError>>>,
}

impl Job {
    fn take(&self) -> Option<Result<CommitOutcome, StoreError>> {
        self.result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn set(&self, r: Result<CommitOutcome, StoreError>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    }
}

/// Commits `group` in one transaction. Each clip: a known id is a duplicate (same sender) or a
/// conflict, and its temp file goes; a new one has its file renamed into place and its rows
/// inserted (a later clip of the group with the same id sees it). Then every touched
/// directory is fsynced once, and the transaction commits. On a failure nothing of the group
/// is kept and every clip of it gets the error (its files removed: no row refers to them).
fn commit_group(conn: &mut Connection, clips_dir: &Path, group: &[Arc<Job>]) {
    let mut placed: Vec<PathBuf> = Vec::new();
    let run = (|| -> Result<Vec<Result<CommitOutcome, StoreError>>, StoreError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(group.len());
        let mut dirty: Vec<PathBuf> = Vec::new();
        for job in group {
            let existing = tx
                .query_row(
                    "SELECT seq, sender FROM clips WHERE id = ?1",
                    [job.meta.id.0],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()?;
            if let Some((seq, sender)) = existing {
                let _ = fs::remove_file(&job.tmp);
                outcomes.push(if sender == job.meta.from {
                    to_seq(seq).map(CommitOutcome::Duplicate)
                } else {
                    Err(StoreError::IdConflict(job.meta.id))
                });
                continue;
            }
            let (path, dirs) = files::place(clips_dir, &job.rel, &job.tmp)?;
            placed.push(path);
            for d in dirs {
                if !dirty.contains(&d) {
                    dirty.push(d);
                }
            }
            let seq = insert_clip(&tx, &job.meta, &job.recipients, &job.rel, job.len)?;
            outcomes.push(Ok(CommitOutcome::Stored(seq)));
        }
        // Shards before clips/: a new shard's own entry is synced after its contents.
        for d in &dirty {
            files::sync_dir(d)?;
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
            // Rolled back: no row refers to the files placed for this group.
            for path in &placed {
                let _ = fs::remove_file(path);
            }
            let copies: Vec<StoreError> = group.iter().skip(1).map(|_| clone_error(&e)).collect();
            for (job, err) in group.iter().zip(std::iter::once(e).chain(copies)) {
                let _ = fs::remove_file(&job.tmp);
                job.set(Err(err));
            }
        }
    }
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
            queue: Mutex::new(Vec::new()),
        };
        store.sweep_leftovers(LEFTOVER_MIN_AGE)?;
        Ok(store)
    }

    /// Removes `.partial` files and row-less clip files older than `min_age`; returns how many.
    fn sweep_leftovers(&self, min_age: Duration) -> Result<usize, StoreError> {
        let found = files::scan(&self.clips_dir, min_age)?;
        if found.partial.is_empty() && found.clips.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writer();
        // Writes nothing: the transaction only holds the write lock while files are judged.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut removed = found
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

    /// Where a clip's audio file is (checked to stay inside the clips dir).
    fn audio_path(&self, id: &ClipId) -> Result<std::path::PathBuf, StoreError> {
        let file: String = self
            .read(|conn| {
                first(conn, "SELECT file FROM clips WHERE id = ?1", [id.0], |r| {
                    get(r, 0)
                })
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
        if !Path::new(&file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(StoreError::Corrupt(format!(
                "clip {id} has file name {file:?}"
            )));
        }
        Ok(self.clips_dir.join(file))
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
    file: &str,
    bytes: usize,
) -> Result<u64, StoreError> {
    let (kind, name) = match &meta.to {
        Target::Channel(name) => ("c", name),
        Target::User(name) => ("u", name),
    };
    tx.execute(
        "INSERT INTO clips (id, sender, target_kind, target_name, started_at_ms, duration_ms, packets, \
         bytes, frame_samples, bitrate, pre_skip, file, stored_at_ms, content) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            meta.id.0,
            meta.from,
            kind,
            name,
            meta.started_at_ms,
            meta.duration_ms,
            meta.packets,
            sql_int(bytes),
            meta.codec.frame_samples,
            meta.codec.bitrate,
            meta.codec.pre_skip,
            file,
            now_ms(),
            schema::content_column(&meta.content)
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

    /// The stored `bytes` is the length of `ogg`, whatever `meta.bytes` says.
    /// Group commit: the clip's file is written and fsynced without a lock (so concurrent
    /// commits sync in parallel), then queued; whoever holds the write lock next commits every
    /// queued clip at once (renames, one fsync per touched directory, one transaction), so
    /// under load many clips share each directory and WAL fsync.
    fn commit_clip(
        &self,
        meta: &ClipMeta,
        recipients: &[String],
        ogg: &[u8],
    ) -> Result<CommitOutcome, StoreError> {
        let rel = files::relative_path(&meta.id);
        let tmp = files::write_tmp(&self.clips_dir, &rel, ogg)?;
        let job = Arc::new(Job {
            meta: meta.clone(),
            recipients: recipients.to_vec(),
            rel,
            tmp,
            len: ogg.len(),
            result: Mutex::new(None),
        });
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.clone());
        let mut conn = self.writer();
        if let Some(done) = job.take() {
            return done; // an earlier lock holder committed it with its group
        }
        let group = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        commit_group(&mut conn, &self.clips_dir, &group);
        job.take().unwrap_or_else(|| {
            Err(StoreError::Corrupt(format!(
                "clip {} was left out of its group commit",
                meta.id
            )))
        })
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
        let path = self.audio_path(id)?;
        fs::read(&path).map_err(files::io_err(&path))
    }

    fn clip_audio_part(&self, id: &ClipId, offset: u64, max: usize) -> Result<Vec<u8>, StoreError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.audio_path(id)?;
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

    fn ack(&self, user: &str, id: &ClipId) -> Result<(), StoreError> {
        self.writer().execute(
            "DELETE FROM inbox WHERE user = ?1 AND seq = (SELECT seq FROM clips WHERE id = ?2)",
            params![user, id.0],
        )?;
        Ok(())
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
            let files = strings(
                tx,
                "SELECT file FROM clips WHERE sender = ?1 AND file != ''",
                [user],
            )?;
            tx.execute(
                "DELETE FROM inbox WHERE seq IN (SELECT seq FROM clips WHERE sender = ?1)",
                [user],
            )?;
            tx.execute(
                "UPDATE clips SET sender = ?2, file = '', bytes = 0, packets = 0 WHERE sender = ?1",
                params![user, crate::PURGED_SENDER],
            )?;
            Ok(files)
        })?;
        for rel in &files {
            files::shred(&self.clips_dir.join(rel))?;
        }
        Ok(files.len())
    }

    fn recall_clip(&self, id: &ClipId, keys: &[String]) -> Result<Option<ClipMeta>, StoreError> {
        // Metadata and inboxes first, in one transaction; the file goes after the commit (a
        // crash in between leaves a file no row points to, which the next open sweeps away).
        let done = self.write(|tx| {
            let Some((seq, file)) = first(tx, "SELECT seq, file FROM clips WHERE id = ?1", [id.0], |r| Ok((get::<i64>(r, 0)?, get::<String>(r, 1)?)))? else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE clips SET content = ?2, file = '', bytes = 0, packets = 0, duration_ms = 0 WHERE seq = ?1",
                params![seq, schema::content_column(&walkie_proto::message::Content::Recalled)],
            )?;
            queue(tx, keys, seq)?;
            let meta = first(tx, &format!("SELECT {CLIP_COLUMNS} FROM clips c WHERE c.seq = ?1"), [seq], schema::clip_from_row)?;
            Ok(Some((file, meta)))
        })?;
        let Some((file, meta)) = done else {
            return Ok(None);
        };
        if !file.is_empty() {
            files::shred(&self.clips_dir.join(&file))?;
        }
        Ok(meta)
    }

    fn delete_channel(&self, name: &str) -> Result<Option<usize>, StoreError> {
        let files = self.write(|tx| {
            if tx.execute("DELETE FROM channels WHERE name = ?1", [name])? == 0 {
                return Ok(None);
            }
            let filter = "target_kind = 'c' AND target_name = ?1";
            let files = strings(
                tx,
                &format!("SELECT file FROM clips WHERE {filter} AND file != ''"),
                [name],
            )?;
            // Inbox entries go with their clips (ON DELETE CASCADE); purged clips have no file.
            let rows = tx.execute(&format!("DELETE FROM clips WHERE {filter}"), [name])?;
            Ok(Some((files, rows)))
        })?;
        let Some((files, rows)) = files else {
            return Ok(None);
        };
        for rel in &files {
            files::shred(&self.clips_dir.join(rel))?;
        }
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
            let files = strings(
                tx,
                "SELECT file FROM clips WHERE stored_at_ms < ?1 AND file != ''",
                [before_ms],
            )?;
            tx.execute("DELETE FROM clips WHERE stored_at_ms < ?1", [before_ms])?;
            Ok(files)
        })?;
        for rel in &files {
            files::shred(&self.clips_dir.join(rel))?;
        }
        Ok(files.len())
    }
}

#[cfg(test)]
mod tests;
