//! The accept loop: admission control for new connections, before any of them authenticated.
//! - Connection attempts not yet authenticated (in a handshake, waiting for one, or before
//!   their hello) are capped in total and per source address; beyond either cap a new attempt
//!   is refused at once (a stateless QUIC refusal) and the client retries.
//! - Under load (many handshakes in progress) an attempt from an address QUIC has not
//!   validated gets a Retry: a spoofed or bare Initial costs the relay one small packet and
//!   no state, and only a peer that really receives at its address comes back.
//! - A bounded number of TLS handshakes run at once (they are CPU-bound); a slot is taken
//!   only by a validated or unloaded attempt and held for the handshake alone (at most 3 s).
//!
//! The shutdown closes every session and lets in-flight uploads commit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::conn;
use crate::shared::{Shared, lock};

/// How long a connection attempt may wait for a handshake slot before it is refused.
const HANDSHAKE_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The attempts not yet authenticated, in total and per source address.
#[derive(Debug, Default)]
pub(crate) struct Unauthenticated {
    total: AtomicUsize,
    by_source: Mutex<HashMap<IpAddr, usize>>,
}

impl Unauthenticated {
    /// Counts one more attempt from `ip`, unless a cap is reached.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        total_cap: usize,
        per_source_cap: usize,
    ) -> Option<PreAuth> {
        let mut by_source = lock(&self.by_source);
        let from_ip = by_source.entry(ip).or_insert(0);
        if *from_ip >= per_source_cap || self.total.load(Ordering::Relaxed) >= total_cap {
            if *from_ip == 0 {
                by_source.remove(&ip);
            }
            return None;
        }
        *from_ip += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(PreAuth {
            counts: self.clone(),
            ip,
        })
    }

    /// Attempts not yet authenticated, in total.
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// One attempt counted as in a handshake (waiting for a slot, or shaking hands): the load that
/// decides when unvalidated addresses get a Retry. Uncounted when dropped.
pub(crate) struct InHandshake(Arc<AtomicUsize>);

impl InHandshake {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InHandshake(count.clone())
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One attempt not yet authenticated; dropped when it authenticated or gave up.
pub(crate) struct PreAuth {
    counts: Arc<Unauthenticated>,
    ip: IpAddr,
}

impl Drop for PreAuth {
    fn drop(&mut self) {
        let mut by_source = lock(&self.counts.by_source);
        if let Some(n) = by_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.ip);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counts admission keeps across connections (the metrics read them too); a clone shares
/// them.
#[derive(Clone, Default)]
pub(crate) struct Admission {
    /// Connections in their QUIC handshake.
    pub in_handshake: Arc<AtomicUsize>,
    /// Connections admitted and not authenticated yet, in all and per source.
    pub unauthenticated: Arc<Unauthenticated>,
}

pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    admission: Admission,
) {
    let mut shutdown = shared.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let handshakes = Arc::new(Semaphore::new(shared.config.max_handshakes.max(1)));
    let Admission {
        in_handshake,
        unauthenticated,
    } = admission;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let remote = incoming.remote_address();
                if !incoming.remote_address_validated()
                    && incoming.may_retry()
                    && in_handshake.load(Ordering::Relaxed) >= shared.config.retry_above_handshakes
                {
                    tracing::debug!(%remote, "under load: address validation (Retry) asked");
                    shared.metrics.refused("retry");
                    let _ = incoming.retry();
                    continue;
                }
                let Some(pre_auth) = unauthenticated.admit(
                    remote.ip(),
                    shared.config.max_pending_handshakes,
                    shared.config.max_unauthenticated_per_source,
                ) else {
                    tracing::debug!(%remote, "refused: too many connection attempts not yet authenticated (from this source or in all)");
                    shared.metrics.refused("unauthenticated-cap");
                    incoming.refuse();
                    continue;
                };
                let counted = InHandshake::new(&in_handshake);
                let (shared, handshakes) = (shared.clone(), handshakes.clone());
                tasks.spawn(async move {
                    let permit = tokio::time::timeout(HANDSHAKE_QUEUE_WAIT, handshakes.acquire_owned()).await;
                    match permit {
                        Ok(Ok(permit)) => conn::handle(shared, incoming, permit, counted, pre_auth).await,
                        _ => {
                            tracing::debug!(%remote, "refused: no handshake slot within {HANDSHAKE_QUEUE_WAIT:?}");
                            shared.metrics.refused("no-handshake-slot");
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
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_cannot_take_every_unauthenticated_slot() {
        let u = Arc::new(Unauthenticated::default());
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "198.51.100.7".parse().expect("ip"),
        );
        let held: Vec<PreAuth> = (0..3)
            .map(|_| u.admit(a, 10, 3).expect("under the cap"))
            .collect();
        assert!(u.admit(a, 10, 3).is_none(), "the source is at its cap");
        let other = u.admit(b, 10, 3).expect("another source still gets in");
        assert_eq!(u.total(), 4);
        drop(held);
        assert_eq!(u.total(), 1);
        assert!(
            u.admit(a, 10, 3).is_some(),
            "slots come back when attempts end"
        );
        drop(other);
        let one = u.admit(b, 1, 3).expect("under the total cap");
        assert!(u.admit(b, 1, 3).is_none(), "the total cap holds too");
        drop(one);
    }
}
