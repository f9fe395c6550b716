//! The relay's opt-in HTTP listener for operators (`serve --metrics ADDR`): `/metrics` (the
//! Prometheus text format), `/healthz` (the process answers) and `/readyz` (the store is
//! open and writable). Nothing a client of the relay uses; meant for loopback or a private
//! network, it shows counts, never names or tokens.
//!
//! Bounded like everything facing a network: a few connections at a time, a deadline for
//! the request head and for the whole exchange, GET and HEAD only, no request bodies read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::metrics::Snapshot;
use crate::shared::Shared;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a scrape waits for the store's inbox count before leaving it out.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// The relay's own counts the listener reads at each scrape.
pub(crate) struct Counts {
    /// Connections whose QUIC handshake is under way.
    pub handshaking: Arc<AtomicUsize>,
    /// Connections admitted and not authenticated yet (handshaking ones included).
    pub unauthenticated: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// Binds the listener (an error names the address), so the relay fails to start rather
/// than run without the metrics it was asked for.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::RelayError::Io {
            path: format!("metrics listener {addr}").into(),
            source,
        })
}

/// Serves until the relay shuts down.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, counts: Arc<Counts>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!("metrics listener: cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (shared, counts) = (shared.clone(), counts.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (shared, counts) = (shared.clone(), counts.clone());
                async move { Ok::<_, Infallible>(answer(&shared, &counts, &req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%remote, "metrics connection: {e}"),
                Err(_) => debug!(%remote, "metrics connection closed after {CONNECTION_TIMEOUT:?}"),
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, kind: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

const PLAIN: &str = "text/plain; charset=utf-8";
/// The content type Prometheus asks OpenMetrics text by (what prometheus-client writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(
    shared: &Arc<Shared>,
    counts: &Counts,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n", PLAIN);
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let inbox_depth = tokio::time::timeout(STORE_WAIT, shared.store(|s| s.inbox_depth()))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let now = Snapshot {
                handshaking: counts.handshaking.load(Ordering::Relaxed),
                unauthenticated: (counts.unauthenticated)(),
                sessions: shared.connections.load(Ordering::Relaxed),
                inbox_depth,
            };
            text(StatusCode::OK, shared.metrics.render(&now), OPENMETRICS)
        }
        "/healthz" => text(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => match tokio::time::timeout(STORE_WAIT, shared.store(|s| s.ready())).await {
            Ok(Ok(())) => text(StatusCode::OK, "ready\n", PLAIN),
            Ok(Err(e)) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {e}\n"),
                PLAIN,
            ),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store did not answer within {STORE_WAIT:?}\n"),
                PLAIN,
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz or /readyz\n",
            PLAIN,
        ),
    }
}
