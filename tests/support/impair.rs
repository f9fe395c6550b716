//! An impairing UDP proxy for tests and benchmarks (this kernel has no `netem`): clients talk
//! to [`ImpairProxy::addr`], and each client address gets an upstream socket of its own to the
//! relay; every datagram, in each direction, is dropped with a seeded random chance or
//! delivered after a delay with uniform jitter (so datagrams can overtake one another, as on
//! a real path). It counts what it forwards, for the bytes-on-the-wire figures, and can give
//! every client a new upstream socket mid-call ([`ImpairProxy::rebind_all`]): to the relay that
//! is the client's address changing (a NAT rebinding).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What one direction of the path does to datagrams.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Chance that a datagram is dropped (0..1).
    pub loss: f64,
    /// Mean one-way delay.
    pub delay: Duration,
    /// Each datagram's delay is `delay` ± up to this much, uniformly.
    pub jitter: Duration,
}

impl Impairment {
    /// A clean path.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// `loss` with `delay_ms` ± `jitter_ms`.
    pub fn new(loss: f64, delay_ms: u64, jitter_ms: u64) -> Impairment {
        Impairment {
            loss,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
        }
    }

    /// Whether to drop the next datagram, and otherwise its delay.
    fn decide(&self, rng: &Mutex<StdRng>) -> Option<Duration> {
        let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
        if self.loss > 0.0 && rng.random_bool(self.loss.min(1.0)) {
            return None;
        }
        let j = self.jitter.as_secs_f64();
        let d = self.delay.as_secs_f64()
            + if j > 0.0 {
                rng.random_range(-j..=j)
            } else {
                0.0
            };
        Some(Duration::from_secs_f64(d.max(0.0)))
    }
}

/// Datagrams and bytes forwarded and dropped in one direction.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    /// UDP payload bytes forwarded (add 28 per datagram for IPv4 and UDP headers).
    pub bytes: AtomicU64,
}

impl Counts {
    fn note(&self, len: usize, kept: bool) {
        if kept {
            self.forwarded.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(forwarded, dropped, bytes)` so far.
    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

struct Client {
    upstream: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

struct Inner {
    front: Arc<UdpSocket>,
    relay: SocketAddr,
    up: Mutex<Impairment>,
    down: Mutex<Impairment>,
    rng: Mutex<StdRng>,
    clients: Mutex<HashMap<SocketAddr, Client>>,
    /// Client to relay.
    up_counts: Counts,
    /// Relay to clients.
    down_counts: Counts,
}

/// The proxy; stops when dropped.
pub struct ImpairProxy {
    /// Where clients connect instead of the relay.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl ImpairProxy {
    /// A proxy on 127.0.0.1 in front of `relay`, impairing the way up (client to relay) and
    /// the way down; `seed` makes the drops and delays repeatable.
    pub async fn start(relay: SocketAddr, up: Impairment, down: Impairment, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("proxy binds"));
        let addr = front.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            front: front.clone(),
            relay,
            up: Mutex::new(up),
            down: Mutex::new(down),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            clients: Mutex::new(HashMap::new()),
            up_counts: Counts::default(),
            down_counts: Counts::default(),
        });
        let task = tokio::spawn(front_loop(inner.clone()));
        ImpairProxy { addr, inner, task }
    }

    /// Changes the impairments from now on.
    pub fn set(&self, up: Impairment, down: Impairment) {
        *self.inner.up.lock().unwrap_or_else(|e| e.into_inner()) = up;
        *self.inner.down.lock().unwrap_or_else(|e| e.into_inner()) = down;
    }

    /// Client to relay counts.
    pub fn up(&self) -> &Counts {
        &self.inner.up_counts
    }

    /// Relay to client counts.
    pub fn down(&self) -> &Counts {
        &self.inner.down_counts
    }

    /// Clients seen so far (each has its own upstream socket).
    pub fn clients(&self) -> usize {
        self.inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Gives every client a new upstream socket: the relay sees each client's datagrams come
    /// from a new address from now on.
    pub async fn rebind_all(&self) {
        let peers: Vec<SocketAddr> = {
            let clients = self.inner.clients.lock().unwrap_or_else(|e| e.into_inner());
            clients.keys().copied().collect()
        };
        for peer in peers {
            let fresh = upstream_for(&self.inner, peer).await;
            let old = self
                .inner
                .clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer, fresh);
            if let Some(old) = old {
                old.task.abort();
            }
        }
    }
}

impl Drop for ImpairProxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, c) in self
            .inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            c.task.abort();
        }
    }
}

/// A new upstream socket for `peer`, with its task carrying the relay's answers back.
async fn upstream_for(inner: &Arc<Inner>, peer: SocketAddr) -> Client {
    let upstream = Arc::new(
        UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("upstream binds"),
    );
    let task = tokio::spawn(back_loop(inner.clone(), upstream.clone(), peer));
    Client { upstream, task }
}

/// Client to relay: each datagram through the client's own upstream socket.
async fn front_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = inner.front.recv_from(&mut buf).await else {
            return;
        };
        let known = inner
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .map(|c| c.upstream.clone());
        let upstream = match known {
            Some(u) => u,
            None => {
                let c = upstream_for(&inner, peer).await;
                let u = c.upstream.clone();
                inner
                    .clients
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(peer, c);
                u
            }
        };
        let up = *inner.up.lock().unwrap_or_else(|e| e.into_inner());
        let delay = up.decide(&inner.rng);
        inner.up_counts.note(n, delay.is_some());
        if let Some(d) = delay {
            let bytes = buf[..n].to_vec();
            let relay = inner.relay;
            send_later(d, async move {
                let _ = upstream.send_to(&bytes, relay).await;
            });
        }
    }
}

/// Relay to client, for one client's upstream socket.
async fn back_loop(inner: Arc<Inner>, upstream: Arc<UdpSocket>, peer: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, _)) = upstream.recv_from(&mut buf).await else {
            return;
        };
        let down = *inner.down.lock().unwrap_or_else(|e| e.into_inner());
        let delay = down.decide(&inner.rng);
        inner.down_counts.note(n, delay.is_some());
        if let Some(d) = delay {
            let bytes = buf[..n].to_vec();
            let front = inner.front.clone();
            send_later(d, async move {
                let _ = front.send_to(&bytes, peer).await;
            });
        }
    }
}

/// Runs `send` after `delay` (at once when there is none).
fn send_later(delay: Duration, send: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        send.await;
    });
}
