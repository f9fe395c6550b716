//! `walkie-relay backup` and `restore`: which files of the data dir go into a backup besides
//! the store's (the relay's certificate and key, so that the fingerprint clients pinned still
//! holds after a restore), and what the commands print. The work is the embedded store's
//! ([`walkie_store::sqlite::backup`]); a NATS store is backed up with its cluster's tools.

use std::path::{Path, PathBuf};

use walkie_store::StoreError;
use walkie_store::sqlite::SqliteStore;
use walkie_store::sqlite::backup::{self, BackupError, RestoreError};

/// The relay's files in its data dir: its TLS identity (`walkie_net::RelayIdentity`).
const IDENTITY_FILES: &[&str] = &["cert.pem", "key.pem"];

/// Why `backup` and `restore` refuse a NATS store.
#[cfg(feature = "nats")]
pub(crate) const NATS_REFUSED: &str = "backup and restore cover the embedded store (--store sqlite); a NATS store lives in its JetStream cluster: back that up with the cluster's own tools (`nats stream backup` for each of its streams, the key-value buckets' included), and keep a copy of this data dir's cert.pem and key.pem";

/// Errors of the backup and restore commands.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The data dir holds no store: a mistyped `--data-dir` would back up nothing.
    #[error("{} holds no relay data (no database); pass the relay's --data-dir", .0.display())]
    NoData(PathBuf),
    /// The store would not open.
    #[error("cannot open the relay's data in {}: {source}", dir.display())]
    Open {
        /// The data dir.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The backup failed; nothing was written at its name.
    #[error("backup to {} failed: {source}", out.display())]
    Backup {
        /// The backup file asked for.
        out: PathBuf,
        /// Why.
        source: BackupError,
    },
    /// The restore was refused or failed; the data dir was not made.
    #[error("cannot restore {}: {source}; nothing was written to {}", file.display(), dir.display())]
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data dir asked for.
        dir: PathBuf,
        /// Why.
        source: RestoreError,
    },
}

/// `walkie-relay --data-dir DIR backup --out FILE`: safe while a relay serves from `DIR`.
pub(crate) fn backup(data_dir: &Path, out: &Path) -> Result<(), Error> {
    if !backup::has_store(data_dir) {
        return Err(Error::NoData(data_dir.to_path_buf()));
    }
    let store = SqliteStore::open(data_dir).map_err(|source| Error::Open {
        dir: data_dir.to_path_buf(),
        source,
    })?;
    let made_by = concat!("walkie-relay ", env!("CARGO_PKG_VERSION"));
    let summary = store
        .backup(out, IDENTITY_FILES, made_by)
        .map_err(|source| Error::Backup {
            out: out.to_path_buf(),
            source,
        })?;
    if summary.erased_meanwhile > 0 {
        eprintln!(
            "note: {} clips were purged, recalled or deleted while the backup ran; it holds them as they are now, without their audio",
            summary.erased_meanwhile
        );
    }
    println!(
        "backup {}: {} clips, {} bytes",
        out.display(),
        summary.clips,
        summary.bytes
    );
    Ok(())
}

/// `walkie-relay --data-dir DIR restore FILE`: `DIR` must not exist yet (or be empty).
pub(crate) fn restore(file: &Path, data_dir: &Path) -> Result<(), Error> {
    let summary =
        backup::restore(file, data_dir, IDENTITY_FILES).map_err(|source| Error::Restore {
            file: file.to_path_buf(),
            dir: data_dir.to_path_buf(),
            source,
        })?;
    println!(
        "restored {} clips into {}",
        summary.clips,
        data_dir.display()
    );
    Ok(())
}
