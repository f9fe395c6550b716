//! The relay's small HTTP/1 server (hyper's, no framework), shared by the operators' listener
//! (`http.rs`) and the ACME challenge responder (`acme/http01.rs`): bounded like everything
//! that faces a network. A few connections at a time in all and fewer from one source (an
//! IPv6 source is its /64), a deadline for the request head and for the whole connection, a
//! cap on the head's size, and no request bodies read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::lock;

/// How much one listener takes on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Connections served at once; more wait in the kernel's backlog.
    pub connections: usize,
    /// Of those, from one source; more from it are closed at once.
    pub per_source: usize,
    /// How long a client may take to send a request head.
    pub head: Duration,
    /// How long one connection may last.
    pub whole: Duration,
    /// Longest request head read, in bytes.
    pub max_head: usize,
}

/// A response with a plain body.
pub(crate) fn respond(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Who a connection is counted against: an IPv4 address, or an IPv6 /64 (one host's usual
/// share, so a single machine cannot take every slot by changing its low bits).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        },
        v4 => v4,
    }
}

type Sources = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One connection counted against its source while it lives.
struct FromSource {
    sources: Sources,
    key: IpAddr,
}

impl FromSource {
    fn admit(sources: &Sources, ip: IpAddr, cap: usize) -> Option<FromSource> {
        let key = source(ip);
        let mut map = lock(sources);
        let n = map.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(FromSource {
            sources: sources.clone(),
            key,
        })
    }
}

impl Drop for FromSource {
    fn drop(&mut self) {
        let mut map = lock(&self.sources);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves `listener` with `answer` until the task running it is dropped or aborted.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    bounds: Bounds,
    what: &'static str,
    answer: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(bounds.connections.max(1)));
    let sources = Sources::default();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!("{what}: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(counted) = FromSource::admit(&sources, remote.ip(), bounds.per_source) else {
            debug!(%remote, "{what}: too many connections from this source; closed");
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.head)
                .max_buf_size(bounds.max_head)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(bounds.whole, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%remote, "{what}: {e}"),
                Err(_) => debug!(%remote, "{what}: connection closed after {:?}", bounds.whole),
            }
            drop((counted, permit));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_slash_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(source(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_source_gets_its_share_and_its_slot_back() {
        let sources = Sources::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = FromSource::admit(&sources, ip, 2).expect("first");
        let second = FromSource::admit(&sources, ip, 2).expect("second");
        assert!(FromSource::admit(&sources, ip, 2).is_none());
        assert!(FromSource::admit(&sources, "192.0.2.2".parse().expect("ip"), 2).is_some());
        drop(first);
        assert!(FromSource::admit(&sources, ip, 2).is_some());
        drop(second);
    }
}
