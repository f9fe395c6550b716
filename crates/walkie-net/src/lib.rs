//! walkie's QUIC transport, shared by the relay and the client: endpoints with large socket
//! buffers, the relay's self-signed certificate (rcgen), the client's trust (a pinned SHA-256
//! fingerprint, or the system's CA roots and the relay's name: `trust.rs`), ALPN, and framed
//! reads/writes on streams.
//!
//! Must not depend on: any store, the relay, the client, audio. Messages and framing rules come
//! from [`walkie_proto::wire`]; this crate only moves their bytes.

#![warn(missing_docs)]
#![deny(unsafe_code)]

mod certs;
mod datagrams;
mod frames;
mod trust;

pub use certs::{ServerCert, read_pem_pair};
pub use datagrams::{DatagramPath, PathLoss};
pub use frames::FrameReader;
/// A DER certificate, as [`Trust::Roots`] holds its extra roots.
pub use rustls::pki_types::CertificateDer;
pub use trust::{Trust, load_ca_file, relay_host};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use walkie_proto::wire::{self as proto, ALPN, FrameError};

/// The server name clients present when they pin: trust comes from the pinned certificate,
/// not the name. Clients trusting CA roots present the relay's host name instead.
pub const SERVER_NAME: &str = "walkie-relay";
/// How long a connection may stay silent before it is closed (clients ping more often).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Client keep-alive interval.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A fingerprint is not `sha256:` followed by 64 hex digits.
    #[error("fingerprint {0:?} is not of the form sha256:<64 hex digits>")]
    BadFingerprint(String),
    /// Certificate generation or TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting to the relay failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The relay address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed: the relay's certificate is not the pinned one (or, with no
    /// pin, not issued for the relay's name by a trusted CA), or the relay speaks another
    /// protocol version. Trying again does not help.
    #[error("cannot connect to {addr}: {reason}")]
    Untrusted {
        /// The relay address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A stream failed or the peer closed it.
    #[error("stream failed: {0}")]
    Stream(String),
    /// The peer reset the stream with this application code (a client resets a clip it
    /// cancels with code 0).
    #[error("the peer reset the stream (code {0})")]
    Reset(u64),
    /// A frame was too large or malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A SHA-256 certificate fingerprint, written `sha256:HEX`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert: &[u8]) -> Self {
        Self(Sha256::digest(cert).into())
    }

    /// Parses `sha256:HEX` (colons between hex pairs are accepted too).
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let hex_part = s
            .trim()
            .strip_prefix("sha256:")
            .unwrap_or(s.trim())
            .replace(':', "");
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut out)
            .map_err(|_| NetError::BadFingerprint(s.to_string()))?;
        Ok(Self(out))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// The relay's certificate and key, kept in the data dir.
pub struct RelayIdentity {
    /// DER certificate.
    pub cert: CertificateDer<'static>,
    /// DER private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the PEM certificate lives (`DIR/cert.pem`).
    pub cert_path: PathBuf,
}

impl RelayIdentity {
    /// Loads `DIR/cert.pem` and `DIR/key.pem`, creating them (key mode 0600) on first run.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, NetError> {
        let cert_path = data_dir.join("cert.pem");
        let key_path = data_dir.join("key.pem");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Io { path, source }
        };
        if !cert_path.exists() || !key_path.exists() {
            std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
            let generated = rcgen::generate_simple_self_signed(vec![
                SERVER_NAME.to_string(),
                "localhost".to_string(),
            ])
            .map_err(|e| NetError::Tls(e.to_string()))?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
                .map_err(io(&key_path))?;
            write_private(&cert_path, generated.cert.pem().as_bytes()).map_err(io(&cert_path))?;
        }
        let cert = load_cert(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| NetError::BadPem {
            path: key_path.clone(),
            what: format!("no private key: {e}"),
        })?;
        Ok(Self {
            cert,
            key,
            cert_path,
        })
    }

    /// The certificate's fingerprint, which clients pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads the first certificate of a PEM file.
pub fn load_cert(path: &Path) -> Result<CertificateDer<'static>, NetError> {
    let bytes = std::fs::read(path).map_err(|source| NetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| NetError::BadPem {
            path: path.to_path_buf(),
            what: "no PEM certificate in the file".into(),
        })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport(
    idle: Duration,
    keep_alive: Option<Duration>,
) -> Result<quinn::TransportConfig, NetError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        idle.try_into()
            .map_err(|_| NetError::Tls("idle timeout out of range".into()))?,
    ));
    t.keep_alive_interval(keep_alive);
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    Ok(t)
}

/// Bytes of live datagrams a peer may have waiting to be read before the oldest are dropped:
/// about 200 datagrams, 4 s of a live clip with repeats (quinn's default is 1.25 MB per
/// connection, which a hostile client could fill on every connection).
pub const DATAGRAM_RECEIVE_BUFFER: usize = 32 * 1024;
/// Bytes of live datagrams queued to send before the oldest are dropped: 2 s of a live clip
/// with two repeats. A datagram older than that would be too late to play anyway.
pub const DATAGRAM_SEND_BUFFER: usize = 16 * 1024;

/// Bytes a client may send on one stream ahead of the relay reading them: a clip stream's
/// frames are under 8 KiB each, so 64 KiB keeps several in flight at 100 ms of round trip.
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes a client may have in flight to the relay on all its streams before it authenticated:
/// only the control stream is open then, and the hello is a few hundred bytes.
pub const UNAUTHENTICATED_WINDOW: u32 = 16 * 1024;
/// Bytes an authenticated client may have in flight on all its streams at once.
pub const SESSION_WINDOW: u32 = 1024 * 1024;
/// Bytes the relay buffers for one client that it has sent and the client has not acknowledged.
pub const SEND_WINDOW: u64 = 2 * 1024 * 1024;

/// A server endpoint bound to `addr` with the relay's identity, ALPN [`walkie_proto::wire::ALPN`], TLS 1.3 only.
///
/// Flow control is sized to the protocol so that a peer that never authenticates parks almost
/// nothing: a new connection may open only its control stream (one bidirectional stream, no
/// unidirectional ones) and send at most [`UNAUTHENTICATED_WINDOW`] bytes; the relay grants
/// clip streams and [`SESSION_WINDOW`] with [`open_session`] once the hello checked out.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &RelayIdentity,
    idle: Duration,
) -> Result<quinn::Endpoint, NetError> {
    server_endpoint_with(addr, ServerCert::from_identity(identity)?, idle)
}

/// Like [`server_endpoint`], presenting whatever `cert` holds at each handshake (a
/// CA-issued certificate, renewed in place).
pub fn server_endpoint_with(
    addr: SocketAddr,
    cert: Arc<ServerCert>,
    idle: Duration,
) -> Result<quinn::Endpoint, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = transport(idle, None)?;
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(1u32.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(UNAUTHENTICATED_WINDOW.into());
    t.send_window(SEND_WINDOW);
    config.transport_config(Arc::new(t));
    let socket = bind_socket(addr)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| NetError::Tls("no async runtime".into()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        runtime,
    )
    .map_err(|source| NetError::Bind { addr, source })
}

/// Grants an authenticated connection its clip streams (`max_uni_streams` at once) and the
/// session's flow-control window.
pub fn open_session(conn: &quinn::Connection, max_uni_streams: u32) {
    conn.set_max_concurrent_uni_streams(max_uni_streams.into());
    conn.set_receive_window(SESSION_WINDOW.into());
}

/// Binds a UDP socket with large buffers so bursts of handshakes and ACKs are not dropped.
/// Send and receive buffer asked for on every endpoint's UDP socket. With Linux's default
/// 208 KiB a relay drops handshake packets in a connection storm and ACKs at 1,000 listeners
/// (../shared/notes/quinn.md). The kernel caps the request at `net.core.rmem_max` and
/// `wmem_max` (4 MiB on our machines; raise them where they are lower).
const SOCKET_BUFFER: usize = 4 << 20;

fn bind_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, NetError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |source| NetError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    if addr.is_ipv6() {
        // [::] takes IPv4 too, as std's bind does by default on Linux.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, it only drops more in bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    tracing::debug!(%addr, recv = ?socket.recv_buffer_size().ok(), send = ?socket.send_buffer_size().ok(), "UDP socket buffers");
    socket.bind(&addr.into()).map_err(bind)?;
    Ok(socket.into())
}

/// A client endpoint on an ephemeral port that trusts the relay as `trust` says: a
/// [`Fingerprint`] pins its certificate; [`Trust::Roots`] checks it against the system's roots
/// (and any extra ones) for the name given to `connect` ([`Trust::server_name`]).
pub fn client_endpoint(
    trust: impl Into<Trust>,
    bind: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    client_endpoint_with_alpn(trust, bind, ALPN)
}

/// Like [`client_endpoint`], for connections that take no datagrams: the relay sends their
/// live clips on the reliable streams only (measuring what datagrams buy and cost).
pub fn stream_only_client_endpoint(
    trust: impl Into<Trust>,
    bind: SocketAddr,
) -> Result<quinn::Endpoint, NetError> {
    let mut transport = transport(IDLE_TIMEOUT, Some(KEEP_ALIVE))?;
    transport.datagram_receive_buffer_size(None);
    endpoint_with(&trust.into(), bind, ALPN, transport)
}

/// Like [`client_endpoint`] with another ALPN (tests use it to check version refusal).
pub fn client_endpoint_with_alpn(
    trust: impl Into<Trust>,
    bind: SocketAddr,
    alpn: &[u8],
) -> Result<quinn::Endpoint, NetError> {
    endpoint_with(
        &trust.into(),
        bind,
        alpn,
        transport(IDLE_TIMEOUT, Some(KEEP_ALIVE))?,
    )
}

fn endpoint_with(
    trust: &Trust,
    bind: SocketAddr,
    alpn: &[u8],
    transport: quinn::TransportConfig,
) -> Result<quinn::Endpoint, NetError> {
    let provider = provider();
    let verifier = trust.verifier(&provider)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|source| NetError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The error of a failed connection attempt to `addr`: [`NetError::Untrusted`] when the TLS
/// handshake itself failed (a QUIC crypto error: a certificate that does not match the pin,
/// no common protocol version), [`NetError::Connect`] otherwise (unreachable, timed out,
/// refused: worth a retry).
pub fn handshake_error(addr: &str, e: &quinn::ConnectionError) -> NetError {
    let is_crypto = |code: u64| code & !0xff == 0x100;
    let crypto = match e {
        quinn::ConnectionError::TransportError(t) => is_crypto(t.code.into()),
        quinn::ConnectionError::ConnectionClosed(c) => is_crypto(c.error_code.into()),
        _ => false,
    };
    let (addr, reason) = (addr.to_string(), e.to_string());
    if crypto {
        NetError::Untrusted { addr, reason }
    } else {
        NetError::Connect { addr, reason }
    }
}

/// Writes one frame to a stream.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
    cap: usize,
) -> Result<(), NetError> {
    let bytes = proto::encode_frame(msg, cap)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| NetError::Stream(e.to_string()))
}

/// Reads one frame from a stream; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    cap: usize,
) -> Result<Option<T>, NetError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(NetError::Frame(FrameError::Malformed(format!(
                "stream ended inside a frame header ({n} of 4 bytes)"
            ))));
        }
        Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
    }
    let len = proto::frame::frame_len(prefix, cap)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => NetError::Frame(FrameError::Malformed(format!(
            "stream ended inside a frame ({n} of {len} bytes)"
        ))),
        quinn::ReadExactError::ReadError(e) => read_error(e),
    })?;
    Ok(Some(proto::frame::decode_body(&body)?))
}

fn read_error(e: quinn::ReadError) -> NetError {
    match e {
        quinn::ReadError::Reset(code) => NetError::Reset(code.into_inner()),
        e => NetError::Stream(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_sockets_get_large_buffers() {
        let cap = |f: &str| {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .unwrap_or(SOCKET_BUFFER)
        };
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(socket) = bind_socket(addr.parse().expect("addr")) else {
                continue;
            }; // no IPv6 here
            let sock = socket2::SockRef::from(&socket);
            let (recv, send) = (
                sock.recv_buffer_size().expect("recv"),
                sock.send_buffer_size().expect("send"),
            );
            // Linux reports twice the size asked for (bookkeeping), capped by the sysctls.
            assert!(
                recv >= SOCKET_BUFFER.min(cap("/proc/sys/net/core/rmem_max")),
                "{addr}: recv buffer {recv}"
            );
            assert!(
                send >= SOCKET_BUFFER.min(cap("/proc/sys/net/core/wmem_max")),
                "{addr}: send buffer {send}"
            );
        }
    }

    #[test]
    fn fingerprints_parse_and_print() {
        let fp = Fingerprint::of(b"cert");
        assert_eq!(Fingerprint::parse(&fp.to_string()).expect("parses"), fp);
        assert!(Fingerprint::parse("sha256:abcd").is_err());
        assert!(Fingerprint::parse("md5:00").is_err());
    }

    #[test]
    fn identity_is_created_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = RelayIdentity::load_or_create(dir.path()).expect("creates");
        let b = RelayIdentity::load_or_create(dir.path()).expect("loads");
        assert_eq!(a.fingerprint(), b.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("key.pem"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
