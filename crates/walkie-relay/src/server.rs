//! The accept loop: admission control for new connections (a bounded number of TLS handshakes
//! at once, a bounded queue waiting for one, the rest refused at once), and the shutdown that
//! closes every session and lets in-flight uploads commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::conn;
use crate::shared::Shared;

/// How long a connection attempt may wait for a handshake slot before it is refused.
const HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
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
