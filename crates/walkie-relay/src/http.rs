//! The relay's opt-in HTTP listener for operators (`serve --metrics ADDR`): `/metrics` (the
//! Prometheus text format), `/healthz` (the process answers) and `/readyz` (the store is
//! open and writable). Nothing a client of the relay uses; meant for loopback or a private
//! network, it shows counts, never names or tokens.
//!
//! Bounded like everything facing a network (`listener.rs`): a few connections at a time,
//! half of them from one source at most, deadlines, GET and HEAD only, no bodies read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::listener::{self, Bounds, respond};
use crate::metrics::Snapshot;
use crate::server::Admission;
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

/// What the operators' listener takes on: scrapes are few and from one or two places.
const BOUNDS: Bounds = Bounds {
    connections: MAX_CONNECTIONS,
    per_source: MAX_CONNECTIONS / 2,
    head: HEAD_TIMEOUT,
    whole: CONNECTION_TIMEOUT,
    max_head: MAX_HEAD,
};

/// Serves until the relay shuts down.
/// `admission` is the accept loop's own: its counts are the connections' gauges.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, admission: Admission) {
    let admission = Arc::new(admission);
    let mut shutdown = shared.shutdown.clone();
    let serving = listener::serve(listener, BOUNDS, "metrics listener", move |req| {
        let (shared, admission) = (shared.clone(), admission.clone());
        async move { answer(&shared, &admission, &req).await }
    });
    tokio::select! {
        _ = serving => {}
        _ = shutdown.changed() => {}
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";
/// The content type Prometheus asks OpenMetrics text by (what prometheus-client writes).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(
    shared: &Arc<Shared>,
    admission: &Admission,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = respond(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n", PLAIN);
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
                handshaking: admission.in_handshake.load(Ordering::Relaxed),
                unauthenticated: admission.unauthenticated.total(),
                sessions: shared.connections.load(Ordering::Relaxed),
                inbox_depth,
            };
            respond(StatusCode::OK, shared.metrics.render(&now), OPENMETRICS)
        }
        "/healthz" => respond(StatusCode::OK, "ok\n", PLAIN),
        "/readyz" => match tokio::time::timeout(STORE_WAIT, shared.store(|s| s.ready())).await {
            Ok(Ok(())) => respond(StatusCode::OK, "ready\n", PLAIN),
            Ok(Err(e)) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {e}\n"),
                PLAIN,
            ),
            Err(_) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: the store did not answer within {STORE_WAIT:?}\n"),
                PLAIN,
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz or /readyz\n",
            PLAIN,
        ),
    }
}
