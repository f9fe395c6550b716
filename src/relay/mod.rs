//! The relay: accepts QUIC connections, authenticates sessions, stores clips durably and
//! pushes them to their recipients, live while they are sent and from each user's inbox.
//!
//! | file | owns |
//! |---|---|
//! | `auth.rs` | tokens: generation, hashing, constant-time checks |
//! | `conn.rs` | one connection: hello, control requests, stream accept loop |
//! | `upload.rs` | one uploaded clip: checks, live fan-out, commit, ack |
//! | `live.rs` | live copies to sessions; live clips and notices from other relays |
//! | `cluster.rs` | the link to the other relays: floors, notices (`cluster/nats.rs` over NATS) |
//! | `deliver.rs` | a session's delivery pump (inbox, oldest first) and fetches |
//! | `ingest.rs` | clip validation without I/O |
//! | `registry.rs` | who is online, presence |
//! | `floor.rs` | one talker per channel (no I/O), for a relay alone |
//! | `limits.rs` | per-user rate limits (no I/O) |
//! | `maintenance.rs` | revoking removed users' sessions, retention |

pub mod auth;
pub mod cluster;
mod conn;
mod deliver;
pub mod floor;
pub mod ingest;
pub mod limits;
mod live;
mod maintenance;
pub mod registry;
mod upload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::net::{self, Fingerprint, NetError, RelayIdentity};
use crate::proto::{ErrorCode, ErrorMsg};
use crate::proto::ServerMsg;
use crate::store::{Store, StoreError};
use cluster::{Cluster, LocalCluster, Notice};
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
    /// Authenticated connections at once; more are told "busy, retry after" (default 10 000).
    pub max_connections: usize,
    /// TLS handshakes in progress at once (default 128): handshakes are CPU-bound, so this
    /// decides how a connection storm is absorbed.
    pub max_handshakes: usize,
    /// Connection attempts waiting for a handshake slot; beyond it they are refused at once
    /// and the client retries (default 4096).
    pub max_pending_handshakes: usize,
    /// Clips one user may send per minute (default 60).
    pub clips_per_minute: u32,
    /// Upload bytes per second per user, with bursts of 1 MiB (default 64 KiB/s, eight
    /// times Opus's highest bitrate); faster senders are slowed down, not refused.
    pub bytes_per_second: u64,
    /// Clips older than this are deleted (default: kept forever).
    pub retention: Option<Duration>,
    /// The retry delay suggested with a "busy" refusal (default 1000 ms).
    pub busy_retry_ms: u32,
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
            max_connections: 10_000,
            max_handshakes: 128,
            max_pending_handshakes: 4096,
            clips_per_minute: 60,
            bytes_per_second: 64 * 1024,
            retention: None,
            busy_retry_ms: 1000,
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
    /// The other relays sharing the store (floors, live clips, wake-ups), or none.
    pub cluster: Arc<dyn Cluster>,
    pub limits: Mutex<limits::UserLimits>,
    /// Authenticated connections now.
    pub connections: AtomicUsize,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (single inserts,
/// removes and counter updates).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The message sent with a "busy" refusal.
    pub fn busy(&self) -> ErrorMsg {
        let ms = self.config.busy_retry_ms;
        ErrorMsg { req: None, clip: None, code: ErrorCode::Busy { retry_after_ms: ms }, message: format!("busy, retry after {ms} ms") }
    }

    /// Wakes the delivery pumps of these users, here and on the other relays.
    pub fn wake_everywhere(&self, users: &[String]) {
        self.registry.wake(users);
        if self.cluster.spans_relays() && !users.is_empty() {
            self.cluster.publish(Notice::Wake { users: users.to_vec() });
        }
    }

    /// Sends `msg` to every session of `users`, here and on the other relays (best effort).
    pub fn tell_everywhere(&self, users: &[String], msg: &ServerMsg) {
        self.registry.tell(users, msg);
        if self.cluster.spans_relays() && !users.is_empty() {
            self.cluster.publish(Notice::Tell { users: users.to_vec(), msg: msg.clone() });
        }
    }

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

/// Starts a relay on `config.listen` with the identity kept in `data_dir`, serving `store`
/// alone (floors in memory: the embedded store's setting).
pub async fn start(config: RelayConfig, data_dir: &Path, store: Arc<dyn Store>) -> Result<RelayHandle, RelayError> {
    start_with(config, data_dir, store, Arc::new(LocalCluster::default())).await
}

/// Like [`start`], as one of several relays sharing `store`, linked by `cluster` (a
/// [`cluster::nats::NatsCluster`] on the same NATS servers and prefix as the store).
pub async fn start_with(
    config: RelayConfig,
    data_dir: &Path,
    store: Arc<dyn Store>,
    cluster: Arc<dyn Cluster>,
) -> Result<RelayHandle, RelayError> {
    let identity = RelayIdentity::load_or_create(data_dir)?;
    let endpoint = net::server_endpoint(config.listen, &identity, config.idle_timeout, config.max_streams_per_conn)?;
    let addr = endpoint.local_addr().map_err(|source| NetError::Bind { addr: config.listen, source })?;
    let (stop, shutdown) = watch::channel(false);
    let limits = limits::UserLimits::new(config.clips_per_minute, config.bytes_per_second);
    let shared = Arc::new(Shared {
        store,
        registry: Registry::default(),
        config,
        shutdown,
        cluster: cluster.clone(),
        limits: Mutex::new(limits),
        connections: AtomicUsize::new(0),
    });
    tokio::spawn(maintenance::run(shared.clone()));
    if let Some(incoming) = cluster.incoming() {
        tokio::spawn(live::run_inbound(shared.clone(), incoming));
    }
    let task = tokio::spawn(accept_loop(endpoint.clone(), shared));
    Ok(RelayHandle { addr, fingerprint: identity.fingerprint(), cert_path: identity.cert_path, endpoint, stop, task })
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes.max(1)));
    let waiting = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Admission: a bounded number of handshakes run at once (they are CPU-bound);
                // a bounded number wait for a slot; the rest are refused at once and retry.
                if waiting.load(Ordering::Relaxed) >= shared.config.max_pending_handshakes {
                    tracing::debug!(remote = %incoming.remote_address(), "refused: too many connection attempts waiting for a handshake");
                    incoming.refuse();
                    continue;
                }
                waiting.fetch_add(1, Ordering::Relaxed);
                let (shared, handshakes, waiting) = (shared.clone(), handshakes.clone(), waiting.clone());
                tasks.spawn(async move {
                    let permit = tokio::time::timeout(HANDSHAKE_QUEUE_WAIT, handshakes.acquire_owned()).await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    match permit {
                        Ok(Ok(permit)) => conn::handle(shared, incoming, permit).await,
                        _ => {
                            tracing::debug!(remote = %incoming.remote_address(), "refused: no handshake slot within {HANDSHAKE_QUEUE_WAIT:?}");
                            incoming.refuse();
                        }
                    }
                });
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

/// How long a connection attempt may wait for a handshake slot before it is refused.
const HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(5);
