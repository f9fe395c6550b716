//! The database side of [`super::SqliteStore`]: connection settings, the schema and its
//! migrations (tracked by `PRAGMA user_version`), and the mapping of clip rows to [`ClipMeta`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Params, Row, Statement, TransactionBehavior};

use walkie_proto::clip::{ClipId, ClipMeta, CodecParams, Target};
use walkie_proto::message::Content;

use crate::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema. `clips.seq` is AUTOINCREMENT so that a seq is never reused,
    // even if the newest clip is deleted one day: delivery cursors stay meaningful.
    // Clips keep their sender and target as plain text: history outlives a removed user.
    "CREATE TABLE users (
        name          TEXT PRIMARY KEY NOT NULL,
        token_hash    BLOB NOT NULL CHECK (length(token_hash) = 32),
        created_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE channels (
        name          TEXT PRIMARY KEY NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE members (
        channel TEXT NOT NULL REFERENCES channels (name) ON DELETE CASCADE,
        user    TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        PRIMARY KEY (channel, user)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user);
    CREATE TABLE clips (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            BLOB NOT NULL UNIQUE CHECK (length(id) = 16),
        sender        TEXT NOT NULL,
        target_kind   TEXT NOT NULL CHECK (target_kind IN ('c', 'u')),
        target_name   TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        packets       INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        frame_samples INTEGER NOT NULL,
        bitrate       INTEGER NOT NULL,
        pre_skip      INTEGER NOT NULL,
        file          TEXT NOT NULL,
        stored_at_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX clips_by_target ON clips (target_kind, target_name, seq);
    CREATE INDEX clips_by_sender ON clips (sender, seq);
    CREATE TABLE inbox (
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        seq  INTEGER NOT NULL REFERENCES clips (seq) ON DELETE CASCADE,
        PRIMARY KEY (user, seq)
    ) STRICT, WITHOUT ROWID;",
    // 2: records (see `crate::records`): the relay's people data, under encoded keys.
    "CREATE TABLE records (
        key   TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        rev   INTEGER NOT NULL CHECK (rev > 0)
    ) STRICT, WITHOUT ROWID;",
    // 3: inboxes are keyed by delivery key, not only by user: a user's second device has
    // its own inbox (`NAME/DEVICE`), so the key no longer references `users`. Removing a
    // user deletes their main inbox; the relay clears their devices' inboxes.
    "CREATE TABLE inbox_by_key (
        user TEXT NOT NULL,
        seq  INTEGER NOT NULL REFERENCES clips (seq) ON DELETE CASCADE,
        PRIMARY KEY (user, seq)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO inbox_by_key (user, seq) SELECT user, seq FROM inbox;
    DROP TABLE inbox;
    ALTER TABLE inbox_by_key RENAME TO inbox;",
    // 4: messages beside clips: what each stored item holds (`walkie_proto::message::Content`
    // as JSON); every row before this is a voice clip. The payload of a message lives in the
    // item's file as a clip's Ogg Opus does.
    "ALTER TABLE clips ADD COLUMN content TEXT NOT NULL DEFAULT '\"Voice\"';",
    // 5: payloads in segments (`super::segments`): a row with `audio_at` set has its payload
    // at that offset, `bytes` long, in the segment its `file` names. NULL (every row before
    // this): `file` is the payload's own file.
    "ALTER TABLE clips ADD COLUMN audio_at INTEGER;",
];

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for another connection's lock before failing with "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection with the per-connection settings every user of the database needs.
/// A `query_only` connection refuses writes, which keeps the reader pool honest.
pub(super) fn connect(db: &Path, query_only: bool) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    if query_only {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

/// Switches the database to WAL (persistent, so once is enough) and brings the schema up to
/// [`SCHEMA_VERSION`] inside one write transaction, so two processes opening a fresh data
/// dir at once cannot both migrate. A database from a newer build is refused.
pub(super) fn prepare(conn: &mut Connection) -> Result<(), StoreError> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            mode,
            "SQLite refused WAL mode; readers will wait for writers"
        );
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let from = usize::try_from(version)
        .ok()
        .filter(|&v| v <= MIGRATIONS.len())
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "database schema version {version} is not one this build knows (up to {SCHEMA_VERSION})"
            ))
        })?;
    for migration in &MIGRATIONS[from..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// The clip columns [`clip_from_row`] expects, in order, for a query aliasing `clips` as `c`.
pub(super) const CLIP_COLUMNS: &str = "c.seq, c.id, c.sender, c.target_kind, c.target_name, \
     c.started_at_ms, c.duration_ms, c.packets, c.bytes, c.frame_samples, c.bitrate, c.pre_skip, c.content";

/// Runs a query selecting [`CLIP_COLUMNS`] and maps every row.
pub(super) fn query_clips(
    stmt: &mut Statement<'_>,
    params: impl Params,
) -> Result<Vec<ClipMeta>, StoreError> {
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(clip_from_row(row)?);
    }
    Ok(out)
}

/// Maps one row of [`CLIP_COLUMNS`]; values of the wrong type or range are [`StoreError::Corrupt`].
pub(super) fn clip_from_row(row: &Row<'_>) -> Result<ClipMeta, StoreError> {
    let kind: String = get(row, 3)?;
    let name: String = get(row, 4)?;
    let to = match kind.as_str() {
        "c" => Target::Channel(name),
        "u" => Target::User(name),
        other => {
            return Err(StoreError::Corrupt(format!(
                "clip row has target kind {other:?}"
            )));
        }
    };
    Ok(ClipMeta {
        seq: get(row, 0)?,
        id: ClipId(get(row, 1)?),
        from: get(row, 2)?,
        to,
        started_at_ms: get(row, 5)?,
        duration_ms: get(row, 6)?,
        packets: get(row, 7)?,
        bytes: get(row, 8)?,
        codec: CodecParams {
            frame_samples: get(row, 9)?,
            bitrate: get(row, 10)?,
            pre_skip: get(row, 11)?,
        },
        content: content_from(&get::<String>(row, 12)?)?,
    })
}

/// What an item holds, from its `content` column.
pub(super) fn content_from(json: &str) -> Result<Content, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("column content {json:?}: {e}")))
}

/// The `content` column's value for an item.
pub(super) fn content_column(content: &Content) -> String {
    serde_json::to_string(content).unwrap_or_else(|_| "\"Voice\"".into())
}

/// Reads one column; a value that does not convert is corruption, not a database failure.
pub(super) fn get<T: rusqlite::types::FromSql>(row: &Row<'_>, idx: usize) -> Result<T, StoreError> {
    row.get(idx).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            let column = row.as_ref().column_name(idx).unwrap_or("?").to_string();
            StoreError::Corrupt(format!("column {column}: {e}"))
        }
        other => StoreError::from(other),
    })
}
