//! `walkie-relay status`: whether a relay runs on a data dir (by its lock), its addresses and
//! sessions (from the state file it keeps), and the store's users, channels, waiting inbox
//! items and storage use. One `key value` line each, for people and scripts alike.

use std::fmt::Write as _;
use std::path::Path;

use walkie_store::Store;

use crate::LOCK_FILE;
use crate::runstate;

/// Is a relay holding the data dir's lock? (`None`: no lock file, no relay ever started here.)
fn running(dir: &Path) -> std::io::Result<Option<bool>> {
    let file = match std::fs::File::open(dir.join(LOCK_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    match file.try_lock_shared() {
        // Taken and given back at once (dropping the file unlocks it).
        Ok(()) => Ok(Some(false)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Some(true)),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whole seconds between two instants in ms, never negative.
fn ago(now_ms: i64, then_ms: i64) -> i64 {
    (now_ms - then_ms).max(0) / 1000
}

/// The status report of the relay on `dir`, whose store is `store` (`sqlite`: the embedded
/// store in `dir`, whose disk use is reported).
pub fn report(dir: &Path, store: &dyn Store, sqlite: bool) -> Result<String, String> {
    let mut out = String::new();
    let now = walkie_proto::clip::now_ms();
    let lock =
        running(dir).map_err(|e| format!("cannot read {}: {e}", dir.join(LOCK_FILE).display()))?;
    match (lock, runstate::read(dir)) {
        (Some(true), Ok(state)) => {
            let _ = writeln!(
                out,
                "relay running (pid {}, version {}, up {} s)",
                state.pid,
                state.version,
                ago(now, state.started_ms)
            );
            let _ = writeln!(out, "listening on {}", state.listen);
            match &state.metrics {
                Some(at) => {
                    let _ = writeln!(out, "metrics on http://{at}/metrics");
                }
                None => {
                    let _ = writeln!(out, "metrics off (serve --metrics ADDR)");
                }
            }
            let _ = writeln!(
                out,
                "sessions {} (as of {} s ago)",
                state.sessions,
                ago(now, state.updated_ms)
            );
            let _ = writeln!(out, "live listeners {}", state.live_listeners);
            let _ = writeln!(out, "floors held {}", state.floors_held);
        }
        (Some(true), Err(e)) => {
            let _ = writeln!(out, "relay running (its state file cannot be read: {e})");
        }
        // A killed relay leaves its state file behind: the lock says it is gone.
        (Some(false) | None, _) => {
            let _ = writeln!(out, "relay not running");
        }
    }
    let users = store.users().map_err(|e| e.to_string())?;
    let channels = store.channels().map_err(|e| e.to_string())?;
    let _ = writeln!(out, "users {}", users.len());
    let _ = writeln!(out, "channels {}", channels.len());
    match store.inbox_depth() {
        Ok(Some(n)) => {
            let _ = writeln!(out, "inbox {n} waiting");
        }
        Ok(None) => {}
        Err(e) => return Err(e.to_string()),
    }
    if sqlite {
        let usage = walkie_store::sqlite::storage_use(dir)
            .map_err(|e| format!("cannot measure {}: {e}", dir.display()))?;
        let _ = writeln!(
            out,
            "storage {} bytes in {} (database {}, payloads {})",
            usage.database + usage.payloads,
            dir.display(),
            usage.database,
            usage.payloads
        );
        if let Some(free) = usage.free {
            let _ = writeln!(out, "free {free} bytes on its file system");
        }
    } else {
        let _ = writeln!(
            out,
            "storage in the NATS cluster (the data dir holds the certificate)"
        );
    }
    Ok(out)
}
