//! The relay: accepts QUIC connections, authenticates sessions, stores clips durably and
//! pushes them to their recipients, live while they are sent and from each user's inbox.
//!
//! | file | owns |
//! |---|---|
//! | `auth.rs` | tokens: generation, hashing, constant-time checks |
//! | `conn.rs` | one connection: hello, control requests, stream accept loop |
//! | `upload.rs` | one uploaded clip: checks, live fan-out, commit, ack |
//! | `deliver.rs` | a session's delivery pump (inbox, oldest first) and fetches |
//! | `ingest.rs` | clip validation without I/O |
//! | `registry.rs` | who is online |

pub mod auth;
mod conn;
mod deliver;
pub mod ingest;
pub mod registry;
mod upload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::net::{self, Fingerprint, NetError, RelayIdentity};
use crate::proto::{ErrorCode, ErrorMsg};
use crate::store::{Store, StoreError};
use registry::Registry;

/// Relay settings, with the defaults documented on each field.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// UDP address to listen on (default `[::]:7300`).
    pub listen: SocketAddr,
    /// Longest clip accepted, in milliseconds (default 60 000, like WeChat).
    pub max_clip_ms: u32,
    /// A connection silent this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// A clip stream with no frame for this long is aborted (default 10 s).
    pub stream_idle: Duration,
    /// Time allowed for the hello after the handshake (default 10 s).
    pub hello_timeout: Duration,
    /// Most unidirectional streams a client may have open at once (default 32).
    pub max_streams_per_conn: u32,
    /// Frames queued per live recipient before its live stream is dropped (default 256,
    /// about 5 s of audio); the recipient still gets the stored clip from its inbox.
    pub live_queue: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0u16; 8], 7300)),
            max_clip_ms: 60_000,
            idle_timeout: Duration::from_secs(30),
            stream_idle: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            max_streams_per_conn: 32,
            live_queue: 256,
        }
    }
}

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Network or TLS setup failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking store task was cancelled or panicked.
    #[error("store task failed: {0}")]
    Task(String),
}

impl RelayError {
    /// The wire error to report to a client for this failure.
    pub fn to_wire(&self, req: Option<u64>, clip: Option<crate::clip::ClipId>) -> ErrorMsg {
        ErrorMsg { req, clip, code: ErrorCode::Storage, message: format!("the relay's store failed: {self}") }
    }
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub config: RelayConfig,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// Runs a blocking store call off the async threads.
    pub async fn store<T, F>(&self, f: F) -> Result<T, RelayError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RelayError::Task(e.to_string()))?
            .map_err(RelayError::from)
    }
}

/// A running relay.
pub struct RelayHandle {
    /// The address it listens on (with the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// Its certificate file (`DATA_DIR/cert.pem`).
    pub cert_path: PathBuf,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops accepting, closes every connection, waits for in-flight commits, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.endpoint.close(0u32.into(), b"relay shutting down");
        self.endpoint.wait_idle().await;
    }

    /// Waits until the relay stops (after [`RelayHandle::shutdown`] from elsewhere or a fatal error).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Starts a relay on `config.listen` with the identity kept in `data_dir`, serving `store`.
pub async fn start(config: RelayConfig, data_dir: &Path, store: Arc<dyn Store>) -> Result<RelayHandle, RelayError> {
    let identity = RelayIdentity::load_or_create(data_dir)?;
    let endpoint = net::server_endpoint(config.listen, &identity, config.idle_timeout, config.max_streams_per_conn)?;
    let addr = endpoint.local_addr().map_err(|source| NetError::Bind { addr: config.listen, source })?;
    let (stop, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared { store, registry: Registry::default(), config, shutdown });
    let task = tokio::spawn(accept_loop(endpoint.clone(), shared));
    Ok(RelayHandle { addr, fingerprint: identity.fingerprint(), cert_path: identity.cert_path, endpoint, stop, task })
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tasks.spawn(conn::handle(shared.clone(), incoming));
            }
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Tell every client, then give in-flight uploads a moment to commit and ack.
    for session in shared.registry.all() {
        session.conn.close(0u32.into(), b"relay shutting down");
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tasks.abort_all();
    }
}
