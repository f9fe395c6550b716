//! The relay: accepts QUIC connections, authenticates sessions, stores clips durably and
//! pushes them to their recipients, live while they are sent and from each user's inbox.
//!
//! Must not depend on: audio (walkie-media, libopus, cpal), the client, the app. It checks Opus
//! packets with the pure-Rust TOC reader of [`walkie_proto::toc`] and never decodes audio.
//!
//! The modules form one chain; each uses only those below it:
//!
//! | layer | file | owns |
//! |---|---|---|
//! | 1 | `server.rs` | the accept loop and admission (handshake slots, the pending cap) |
//! | 1 | `http.rs` | the operators' HTTP listener: metrics, health, readiness |
//! | 2 | `listener.rs` | the small bounded HTTP/1 server it and the ACME responder run on |
//! | 2 | `conn.rs` | one connection: handshake, hello and authentication, the session's tasks |
//! | 3 | `requests.rs` | control-stream requests: ack, played, history, fetch, people |
//! | 4 | `people.rs` | invites, profiles, contacts and groups users make, in the store's records |
//! | 3 | `upload.rs` | carries out one upload's actions ([`walkie_proto::upload::RelayUpload`] decides) |
//! | 4 | `recall.rs` | a sender takes back a message or clip within the recall window |
//! | 3 | `message.rs` | one uploaded message (text, picture, doodle): checks, caps, commit |
//! | 4 | `picture.rs`, `doodle.rs` | pictures encoded again with a thumbnail; doodles checked and drawn |
//! | 3 | `deliver.rs` | a session's delivery pump (inbox, oldest first) and fetched files |
//! | 4 | `live.rs` | live copies to sessions; live clips and notices from other relays |
//! | 4 | `access.rs` | who may read or send where, and who receives a clip |
//! | 5 | `presence.rs` | who hears that a user came online or went offline, in batches |
//! | 5 | `registry.rs` | who is online: sessions, wake-ups |
//! | 5 | `cluster/` | the link to the other relays: floors, notices (`cluster/nats.rs` over NATS) |
//! | 6 | `shared.rs`, `config.rs`, `auth.rs`, `quota.rs` | shared state, settings, tokens, what each sender stores |
//! | 6 | `metrics.rs` | the operators' counters, gauges and histograms |
//! | | `maintenance.rs` | revoking removed users' sessions, retention |
//! | | `demo.rs` | an in-process relay with two users and a channel (`walkie demo`, `walkie app --demo`) |
//! | | `cli.rs` | the `walkie-relay` command line |
//! | | `backup.rs` | the `backup` and `restore` commands (the store's backup, with the relay's identity) |
//! | | `logwriter.rs` | log lines on stderr with peer-controlled text escaped |
//! | | `runstate.rs`, `status.rs` | the state file a running relay keeps for `walkie-relay status`, and the report |
//! | | `tls.rs` | which certificate the relay presents; CA-issued files read again when they change |
//! | | `acme/` | `serve --acme`: a certificate from an ACME CA, obtained at start and renewed in place |

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod access;
pub mod acme;
pub mod auth;
pub mod avatar;
mod backup;
pub mod cli;
pub mod cluster;
mod committer;
pub mod config;
mod conn;
mod datagrams;
mod deliver;
pub mod demo;
pub mod doodle;
mod http;
mod listener;
mod live;
mod logwriter;
mod maintenance;
mod message;
mod metrics;
pub mod people;
mod people_requests;
pub mod picture;
mod presence;
mod quota;
mod recall;
mod registry;
mod requests;
pub mod runstate;
mod server;
mod shared;
pub mod status;
pub mod tls;
mod upload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use walkie_net::{Fingerprint, NetError};
use walkie_proto::rate::{KeyedLimits, UserLimits};
use walkie_store::{Store, StoreError};

pub use config::RelayConfig;

/// People requests (profile, contacts, channels) one user may make in a burst, and how many
/// per second after it.
const PEOPLE_BURST: f64 = 60.0;
const PEOPLE_PER_SECOND: f64 = 1.0;
pub(crate) use shared::lock;

use cluster::{Cluster, LocalCluster};
use registry::Registry;
use shared::Shared;

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Network or TLS setup failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No certificate could be obtained over ACME (`serve --acme`).
    #[error(transparent)]
    Acme(#[from] acme::AcmeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking store task was cancelled or panicked.
    #[error("store task failed: {0}")]
    Task(String),
    /// Another relay serves from this data dir (it holds the dir's lock).
    #[error("{} is in use by another walkie-relay ({holder}); stop it first or use another --data-dir", dir.display())]
    DataDirInUse {
        /// The data dir.
        dir: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// A file or directory of the data dir could not be created or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// Which.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

impl RelayError {
    /// The wire error to report to a client for this failure.
    pub fn to_wire(
        &self,
        req: Option<u64>,
        clip: Option<walkie_proto::clip::ClipId>,
    ) -> walkie_proto::wire::ErrorMsg {
        walkie_proto::wire::ErrorMsg {
            req,
            clip,
            code: walkie_proto::wire::ErrorCode::Storage,
            message: format!("the relay's store failed: {self}"),
        }
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
    /// Where the metrics listener listens, when the relay has one (`serve --metrics`).
    pub metrics_addr: Option<SocketAddr>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Keeps `DIR/relay.state` current; removes it on shutdown.
    state: JoinHandle<()>,
    /// The data dir's lock, held while the relay runs.
    _lock: std::fs::File,
}

impl RelayHandle {
    /// Stops accepting, closes every connection, waits for in-flight commits, and returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        // Its state file is gone before the data dir is handed back (a caller may remove it).
        let _ = self.state.await;
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
pub async fn start(
    config: RelayConfig,
    data_dir: &Path,
    store: Arc<dyn Store>,
) -> Result<RelayHandle, RelayError> {
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
    let lock = lock_data_dir(data_dir)?;
    match walkie_store::private::tighten(data_dir) {
        Ok(changed) if changed.is_empty() => {}
        Ok(changed) => {
            let named: Vec<String> = changed
                .iter()
                .take(3)
                .map(|p| match p.strip_prefix(data_dir) {
                    Ok(rel) if rel.as_os_str().is_empty() => "the dir itself".to_string(),
                    Ok(rel) => rel.display().to_string(),
                    Err(_) => p.display().to_string(),
                })
                .collect();
            let n = changed.len();
            tracing::warn!(dir = %data_dir.display(), "{n} files or directories of the data dir were readable by others ({}{}); made private (0600 files, 0700 dirs)", named.join(", "), if n > 3 { ", …" } else { "" })
        }
        Err(e) => {
            tracing::warn!(dir = %data_dir.display(), "cannot make the data dir private: {e}")
        }
    }
    // Under --acme, the certificate (obtained now if needed) and its renewal task's state.
    let (server_cert, cert_path, acme) = match &config.cert {
        tls::CertSource::Acme(acme) => {
            let acme = acme::Acme::start(acme, data_dir).await?;
            (acme.cert(), acme.cert_path(), Some(acme))
        }
        source => {
            let (cert, path) = tls::load(source, data_dir)?;
            (cert, path, None)
        }
    };
    let endpoint =
        walkie_net::server_endpoint_with(config.listen, server_cert.clone(), config.idle_timeout)?;
    let addr = endpoint.local_addr().map_err(|source| NetError::Bind {
        addr: config.listen,
        source,
    })?;
    let (stop, shutdown) = watch::channel(false);
    let limits = UserLimits::new(config.clips_per_minute, config.bytes_per_second);
    let signups = f64::from(config.signups_per_source_per_hour.max(1));
    let message_rate = config.message_bytes_per_second.max(1) as f64;
    let metrics = Arc::new(metrics::Metrics::new());
    let committer = committer::Committer::start(store.clone(), metrics.clone())?;
    let metrics_listener = match config.metrics {
        Some(at) => Some(http::bind(at).await?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(|source| RelayError::Io {
            path: "metrics listener".into(),
            source,
        })?),
        None => None,
    };
    let shared = Arc::new(Shared {
        store,
        committer,
        registry: Registry::default(),
        config,
        shutdown,
        cluster: cluster.clone(),
        limits: Mutex::new(limits),
        people_limits: Mutex::new(KeyedLimits::new(PEOPLE_BURST, PEOPLE_PER_SECOND)),
        signup_limits: Mutex::new(KeyedLimits::new(signups, signups / 3600.0)),
        connections: AtomicUsize::new(0),
        usage: Default::default(),
        delivery_keys: Default::default(),
        media: tokio::sync::Semaphore::new(1),
        message_bytes: Mutex::new(KeyedLimits::new(MESSAGE_BYTE_BURST, message_rate)),
        presence: Default::default(),
        metrics,
    });
    tokio::spawn(presence::run(shared.clone()));
    tokio::spawn(maintenance::run(shared.clone()));
    if let Some(incoming) = cluster.incoming() {
        tokio::spawn(live::run_inbound(shared.clone(), incoming));
    }
    if let Some(acme) = acme {
        tokio::spawn(acme.renew(shared.shutdown.clone()));
    }
    if let tls::CertSource::Files { cert, key } = &shared.config.cert {
        tokio::spawn(tls::watch_files(
            server_cert.clone(),
            (cert.clone(), key.clone()),
            shared.config.cert_check,
            shared.shutdown.clone(),
        ));
    }
    let state = tokio::spawn(runstate::run(
        shared.clone(),
        data_dir.to_path_buf(),
        runstate::initial(addr.to_string(), metrics_addr.map(|a| a.to_string())),
        shared.shutdown.clone(),
    ));
    let admission = server::Admission::default();
    if let Some(listener) = metrics_listener {
        tokio::spawn(http::serve(listener, shared.clone(), admission.clone()));
    }
    let task = tokio::spawn(server::accept_loop(endpoint.clone(), shared, admission));
    Ok(RelayHandle {
        addr,
        fingerprint: server_cert.fingerprint(),
        cert_path,
        metrics_addr,
        endpoint,
        stop,
        task,
        state,
        _lock: lock,
    })
}

/// Bytes of messages a user may upload at once before the per-second rate applies: a picture
/// at its largest, with room.
const MESSAGE_BYTE_BURST: f64 = 16.0 * 1024.0 * 1024.0;

/// The name of the lock file in a data dir.
pub const LOCK_FILE: &str = "relay.lock";

/// Takes the data dir's lock (creating the dir, private, if needed), so a second relay on the
/// same dir refuses to start instead of serving one database twice. The lock is the kernel's
/// (`flock`): it goes with the process, even when it is killed.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, RelayError> {
    use std::io::{Read, Seek, Write};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RelayError::Io { path, source }
    };
    walkie_store::private::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = walkie_store::private::file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = walkie_proto::logsafe::escape(holder.trim()).into_owned();
            return Err(RelayError::DataDirInUse {
                dir: data_dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "unknown process".into()
                } else {
                    holder
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
    }
    let note = format!("pid {}", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()))
        .map_err(io(&path))?;
    Ok(file)
}
