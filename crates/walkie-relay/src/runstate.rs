//! What a running relay tells the admin commands on the same data dir: `DIR/relay.state`, a
//! small JSON file with its process, addresses and live counts, written at start and every
//! few seconds, removed when it stops. `walkie-relay status` reads it; whether the relay
//! really runs is decided by the data dir's lock, not by this file (a killed relay leaves
//! it behind).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use walkie_proto::clip::now_ms;

use crate::shared::Shared;

/// The file's name in the data dir.
pub const STATE_FILE: &str = "relay.state";
/// How often the counts are written.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Largest state file read (it is a few hundred bytes).
const MAX_BYTES: u64 = 64 * 1024;

/// A running relay's state, as written to [`STATE_FILE`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The relay's process id.
    pub pid: u32,
    /// The relay's version.
    pub version: String,
    /// When it started, ms since the epoch.
    pub started_ms: i64,
    /// When this was written, ms since the epoch.
    pub updated_ms: i64,
    /// The QUIC address it listens on.
    pub listen: String,
    /// The metrics listener's address, if any.
    pub metrics: Option<String>,
    /// Authenticated sessions.
    pub sessions: usize,
    /// Live copies being sent now.
    pub live_listeners: i64,
    /// Floors held now.
    pub floors_held: i64,
}

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RunStateError {
    /// Not there (the relay never ran here, or stopped cleanly).
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// Unreadable or not a state file.
    #[error("{}: {why}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads a data dir's state file.
pub fn read(dir: &Path) -> Result<RunState, RunStateError> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunStateError::Missing(path));
        }
        Err(e) => {
            return Err(RunStateError::Bad {
                path,
                why: e.to_string(),
            });
        }
    };
    let mut text = String::new();
    file.take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| RunStateError::Bad {
            path: path.clone(),
            why: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| RunStateError::Bad {
        path,
        why: e.to_string(),
    })
}

/// Writes the state file whole (a temporary file renamed over it, private).
fn write(dir: &Path, state: &RunState) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let mut file = walkie_store::private::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

/// Keeps the state file current until shutdown, then removes it.
pub(crate) async fn run(
    shared: Arc<Shared>,
    dir: PathBuf,
    mut state: RunState,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut warned = false;
    loop {
        state.updated_ms = now_ms();
        state.sessions = shared.connections.load(Ordering::Relaxed);
        state.live_listeners = shared.metrics.live_listeners.get();
        state.floors_held = shared.metrics.floors_held.get();
        let (d, s) = (dir.clone(), state.clone());
        let written = tokio::task::spawn_blocking(move || write(&d, &s)).await;
        if let Ok(Err(e)) = written
            && !warned
        {
            warned = true;
            tracing::warn!(dir = %dir.display(), "cannot write the relay's state file (walkie-relay status will not see this relay's counts): {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
}

/// The state a relay starts with.
pub(crate) fn initial(listen: String, metrics: Option<String>) -> RunState {
    let now = now_ms();
    RunState {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_ms: now,
        updated_ms: now,
        listen,
        metrics,
        sessions: 0,
        live_listeners: 0,
        floors_held: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_round_trips_and_junk_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(read(dir.path()), Err(RunStateError::Missing(_))));
        let state = initial("127.0.0.1:7300".into(), Some("127.0.0.1:9300".into()));
        write(dir.path(), &state).expect("written");
        assert_eq!(read(dir.path()).expect("read"), state);
        std::fs::write(dir.path().join(STATE_FILE), b"{\"pid\": \"x\"").expect("junk");
        assert!(matches!(read(dir.path()), Err(RunStateError::Bad { .. })));
    }
}
