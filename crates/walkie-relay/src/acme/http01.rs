//! The HTTP-01 challenge responder (RFC 8555 section 8.3) on `--acme-http ADDR`: answers
//! `GET /.well-known/acme-challenge/TOKEN` with the key authorization of a challenge of an
//! order in flight, and 404 to everything else. The ACME server fetches it from port 80 of
//! the domain. Its own instance of the relay's bounded HTTP/1 server (`listener.rs`; the
//! operators' listener serves the relay's state and starts later): a few connections at a
//! time and fewer per source, deadlines, no bodies, and at most [`MAX_TOKENS`] tokens, each
//! removed when its order ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::AcmeError;
use crate::listener::{self, Bounds, respond};
use crate::lock;

/// The path the ACME server fetches, before the token.
const PREFIX: &str = "/.well-known/acme-challenge/";
/// Challenges answered at once (an order for one name has one).
const MAX_TOKENS: usize = 16;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// Of those, from one source (the CA validates from a few addresses; an attacker holding
/// connections open needs many to delay it).
const MAX_PER_SOURCE: usize = 4;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// The listener, serving until dropped.
pub(crate) struct Responder {
    addr: SocketAddr,
    tokens: Tokens,
    task: JoinHandle<()>,
}

/// A challenge being answered; its token is forgotten when this is dropped.
pub(crate) struct Answering {
    tokens: Tokens,
    token: String,
}

impl Responder {
    /// Binds `addr` and serves on it.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Responder, AcmeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AcmeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AcmeError::Bind { addr, source })?;
        let tokens = Tokens::default();
        let task = tokio::spawn(serve(listener, tokens.clone()));
        info!(%addr, "answering ACME HTTP-01 challenges");
        Ok(Responder { addr, tokens, task })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `token` with `key_authorization` until the returned guard is dropped.
    pub(crate) fn answer(
        &self,
        token: &str,
        key_authorization: &str,
    ) -> Result<Answering, AcmeError> {
        let mut tokens = lock(&self.tokens);
        if tokens.len() >= MAX_TOKENS && !tokens.contains_key(token) {
            return Err(AcmeError::Order(format!(
                "more than {MAX_TOKENS} challenges at once"
            )));
        }
        tokens.insert(token.to_string(), key_authorization.to_string());
        Ok(Answering {
            tokens: self.tokens.clone(),
            token: token.to_string(),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        lock(&self.tokens).remove(&self.token);
    }
}

/// What the responder takes on: the CA's validation fetches (a few, from a few addresses).
const BOUNDS: Bounds = Bounds {
    connections: MAX_CONNECTIONS,
    per_source: MAX_PER_SOURCE,
    head: HEAD_TIMEOUT,
    whole: CONNECTION_TIMEOUT,
    max_head: MAX_HEAD,
};

async fn serve(socket: TcpListener, tokens: Tokens) {
    listener::serve(socket, BOUNDS, "ACME challenge listener", move |req| {
        let answer = answer(&tokens, &req);
        async move { answer }
    })
    .await
}

fn answer(tokens: &Tokens, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let found = (req.method() == Method::GET || req.method() == Method::HEAD)
        .then(|| req.uri().path().strip_prefix(PREFIX))
        .flatten()
        .and_then(|token| lock(tokens).get(token).cloned());
    let (status, body) = match found {
        Some(key_authorization) => {
            debug!("answered an ACME HTTP-01 challenge");
            (StatusCode::OK, Bytes::from(key_authorization))
        }
        None => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    respond(status, body, "text/plain")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .expect("answered in time")
        .expect("read");
        response
    }

    #[tokio::test]
    async fn answers_tokens_in_flight_only() {
        let responder = Responder::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("binds");
        let addr = responder.addr();
        let answering = responder.answer("tok-1", "tok-1.thumb").expect("room");
        let ok = get(addr, "/.well-known/acme-challenge/tok-1").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\ntok-1.thumb"), "{ok}");
        for other in [
            "/.well-known/acme-challenge/tok-2",
            "/.well-known/acme-challenge/",
            "/metrics",
            "/tok-1",
        ] {
            let missing = get(addr, other).await;
            assert!(missing.starts_with("HTTP/1.1 404"), "{other}: {missing}");
        }
        drop(answering);
        let gone = get(addr, "/.well-known/acme-challenge/tok-1").await;
        assert!(gone.starts_with("HTTP/1.1 404"), "{gone}");
    }

    #[tokio::test]
    async fn holds_a_bounded_number_of_tokens() {
        let responder = Responder::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("binds");
        let held: Vec<Answering> = (0..MAX_TOKENS)
            .map(|i| responder.answer(&format!("t{i}"), "k").expect("room"))
            .collect();
        assert!(responder.answer("one-more", "k").is_err());
        drop(held);
        assert!(responder.answer("one-more", "k").is_ok());
    }
}
