//! The HTTPS client instant-acme talks to the ACME server through ([`instant_acme::HttpClient`]):
//! one HTTP/1.1 connection per request (an order makes a dozen), hyper's client over
//! tokio-rustls on ring. It trusts Mozilla's roots (webpki-roots) and the extra roots of
//! `--acme-ca-file` (a private or test CA such as Pebble's). Bounded: a deadline per request,
//! a cap on response bodies.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Limited;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::AcmeError;

/// How long one request may take until its response head (connect and TLS included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one connection may stay open (the body is read after the head arrived).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read (a certificate chain is a few KiB).
const MAX_BODY: usize = 1024 * 1024;

/// An HTTPS client for the ACME server.
#[derive(Clone)]
pub(crate) struct Https {
    tls: TlsConnector,
}

impl Https {
    /// A client trusting Mozilla's roots and those in `extra_roots` (PEM).
    pub(crate) fn new(extra_roots: Option<&Path>) -> Result<Https, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_roots {
            let bad = |what: String| AcmeError::CaFile {
                path: path.to_path_buf(),
                what,
            };
            let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in the file".into()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("not a usable root: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Https {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }
}

impl HttpClient for Https {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let uri = req.uri().to_string();
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(result) => result,
                Err(_) => Err(other(format!(
                    "{uri}: no answer within {REQUEST_TIMEOUT:?}"
                ))),
            }
        })
    }
}

fn other(message: String) -> instant_acme::Error {
    instant_acme::Error::Other(message.into())
}

async fn send(
    tls: TlsConnector,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, instant_acme::Error> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(other(format!("{uri}: the ACME server must be https://")));
    }
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(other(format!("{uri}: no host")));
    };
    // An IPv6 literal comes in brackets.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).map_err(|e| other(format!("{uri}: {e}")))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| other(format!("cannot connect to {authority}: {e}")))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| other(format!("TLS with {authority} failed: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| other(format!("{authority}: {e}")))?;
    // Ends when the response has been read and `sender` is gone, or at the deadline.
    tokio::spawn(tokio::time::timeout(CONNECTION_TIMEOUT, conn));
    // HTTP/1.1 on one connection: the request target in origin form, the authority in Host.
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = target
        .parse::<Uri>()
        .map_err(|e| other(format!("{uri}: {e}")))?;
    let host_header =
        HeaderValue::from_str(authority.as_str()).map_err(|e| other(format!("{uri}: {e}")))?;
    req.headers_mut().insert(HOST, host_header);
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| other(format!("{uri}: {e}")))?;
    Ok(BytesResponse::from(
        response.map(|body| Limited::new(body, MAX_BODY)),
    ))
}
