//! `serve --acme` against Pebble, the ACME test server, on loopback: a relay gets its
//! certificate through a real HTTP-01 challenge, serves it, renews it without a restart,
//! restarts on the stored one without the CA, and fails to start, clearly and in bounded
//! time, when the challenge cannot pass or the CA does not answer.
//!
//! Pebble (Debian package `pebble`) runs with its own HTTPS certificate made here, its
//! validation target port set to the relay's `--acme-http` port, and `pebble-challtestsrv`
//! as its DNS server (every name resolves to 127.0.0.1), so the test domain is a real DNS
//! name. Without pebble installed the tests are skipped, except under `CI=true`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use walkie_net::Fingerprint;
use walkie_relay::acme::AcmeConfig;
use walkie_relay::tls::CertSource;
use walkie_relay::{RelayConfig, RelayError};
use walkie_store::sqlite::SqliteStore;

use support::start_relay;

/// The relay's name in these tests; pebble-challtestsrv resolves it to 127.0.0.1.
const DOMAIN: &str = "relay.walkie.test";

/// Pebble and its DNS server on free loopback ports, killed when dropped.
struct Pebble {
    pebble: Child,
    dns: Child,
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    directory: String,
    /// Pebble's management interface (roots of the certificates it issues).
    management: SocketAddr,
    /// The port Pebble validates HTTP-01 challenges on: the relay's `--acme-http` port.
    http_port: u16,
    /// The CA of Pebble's own HTTPS certificate (`--acme-ca-file`).
    ca_file: PathBuf,
    ca: CertificateDer<'static>,
}

/// Whether a program can be started (`-h` exits with an error status, which is fine).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A loopback port free for TCP and UDP right now.
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for both TCP and UDP in 50 tries");
}

/// Polls `check` every 100 ms until it gives a value or `limit` passes (blocking: for
/// Pebble's start, before the relay runs).
fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Pebble {
    /// Starts Pebble, issuing certificates valid for `validity` seconds (Pebble's default,
    /// five years, when `None`), validating HTTP-01 on `http_port`. `None` when Pebble is
    /// not installed and this is not CI.
    fn start(validity: Option<u64>, http_port: u16) -> Option<Pebble> {
        if !installed("pebble") || !installed("pebble-challtestsrv") {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "pebble is not installed (scripts/install-deps.sh installs it)"
            );
            println!(
                "skipped: pebble and pebble-challtestsrv are not installed (Debian: apt install pebble)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // Pebble's own HTTPS certificate, from a CA the relay is told to trust.
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "walkie test CA for pebble");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("leaf");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("write");

        let (acme_port, management_port) = (free_port(), free_port());
        let (dns_port, dns_management) = (free_port(), free_port());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = validity {
            pebble["certificateValidityPeriod"] = secs.into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string())
            .expect("write");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        // Every name resolves to 127.0.0.1 (and has no AAAA record: the relay answers on IPv4).
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv6", ""])
            .stdout(log("dns.log"))
            .stderr(log("dns.err"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random validation delays, no random nonce rejections, and a real challenge
            // for every order (no reuse of an earlier authorization).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble starts");
        let ca = CertificateDer::from_pem_slice(ca_cert.pem().as_bytes()).expect("CA der");
        let this = Pebble {
            pebble,
            dns,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            http_port,
            ca_file,
            ca,
            dir,
        };
        let acme = SocketAddr::from(([127, 0, 0, 1], acme_port));
        poll(
            Duration::from_secs(30),
            "pebble's directory answers",
            || {
                https_get(acme, "/dir", &this.ca)
                    .ok()
                    .filter(|(status, _)| *status == 200)
            },
        );
        poll(
            Duration::from_secs(30),
            "pebble-challtestsrv listens",
            || TcpStream::connect(("127.0.0.1", dns_port)).ok(),
        );
        Some(this)
    }

    /// The root Pebble issues under (a new one each run).
    fn root(&self) -> CertificateDer<'static> {
        let (status, body) = https_get(self.management, "/roots/0", &self.ca).expect("roots");
        assert_eq!(status, 200);
        CertificateDer::from_pem_slice(&body).expect("root PEM")
    }

    /// `--acme` settings for this Pebble, checking for renewal every `renew_check`.
    fn acme(&self, renew_check: Duration) -> AcmeConfig {
        AcmeConfig {
            directory: self.directory.clone(),
            http: SocketAddr::from(([127, 0, 0, 1], self.http_port)),
            ca_file: Some(self.ca_file.clone()),
            renew_check,
            timeout: Duration::from_secs(30),
            ..AcmeConfig::new(DOMAIN, "ops@walkie.test")
        }
    }

    fn stop(mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in ["pebble.log", "pebble.err", "dns.err"] {
                let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!(
                    "--- {name} (last lines, newest first) ---\n{}",
                    tail.join("\n")
                );
            }
        }
    }
}

/// A GET over HTTPS trusting `ca` alone: status and body.
fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &CertificateDer<'static>,
) -> Result<(u16, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // Go closes without a TLS close_notify at times: keep what arrived.
    if let Err(e) = tls.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(e.to_string());
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the response head")?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, response[split + 4..].to_vec()))
}

/// The chain in `DIR/acme/cert.pem`, leaf first.
fn stored_chain(data: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(data.join("acme").join("cert.pem")).expect("DIR/acme/cert.pem");
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("chain parses")
}

/// Checks `chain` for DOMAIN against `root`, as a client trusting that root would.
fn verify(chain: &[CertificateDer<'static>], root: CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    let name = ServerName::try_from(DOMAIN).expect("name");
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .expect("the chain is valid for the domain under Pebble's root");
}

/// A QUIC handshake with the relay at `addr` trusting only `pin`.
async fn handshake(addr: SocketAddr, pin: Fingerprint) -> Result<(), String> {
    let endpoint = walkie_net::client_endpoint(pin, "127.0.0.1:0".parse().expect("addr"))
        .map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect(addr, walkie_net::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    let result = tokio::time::timeout(Duration::from_secs(10), connecting).await;
    endpoint.close(0u32.into(), b"done");
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no handshake within 10 s".into()),
    }
}

fn acme_config(acme: AcmeConfig) -> RelayConfig {
    RelayConfig {
        cert: CertSource::Acme(acme),
        ..RelayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_gets_its_certificate_over_acme_and_restarts_on_it_without_the_ca() {
    let Some(pebble) = Pebble::start(None, free_port()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    // The CA file outlives Pebble's directory: the restart below reads it again.
    let ca_file = tmp.path().join("pebble-https-ca.pem");
    std::fs::copy(&pebble.ca_file, &ca_file).expect("copy");
    let acme = AcmeConfig {
        ca_file: Some(ca_file),
        ..pebble.acme(Duration::from_secs(3600))
    };
    let relay = start_relay(&data, acme_config(acme.clone())).await;

    // It serves what it stored, a chain for the domain under Pebble's root, never a
    // self-signed certificate of its own.
    let chain = stored_chain(&data);
    assert!(chain.len() >= 2, "leaf and intermediate");
    let leaf = Fingerprint::of(&chain[0]);
    assert_eq!(relay.handle.fingerprint, leaf);
    assert_eq!(relay.handle.cert_path, data.join("acme").join("cert.pem"));
    verify(&chain, pebble.root());
    assert!(
        !data.join("cert.pem").exists(),
        "no self-signed certificate was made"
    );
    handshake(relay.handle.addr, leaf)
        .await
        .expect("a client pinning the stored leaf connects");
    let alice = relay.add_user("alice");
    let client = relay.connect(&alice).await;
    client
        .history(None, 10, None)
        .await
        .expect("a session works");
    client.close().await;
    #[cfg(unix)]
    for name in ["cert.pem", "key.pem", "account.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("acme").join(name))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is private");
    }
    relay.handle.shutdown().await;

    // Without the CA, a restart serves the stored certificate (it is far from due).
    pebble.stop();
    let again = AcmeConfig {
        // The old listener may still be closing; the port does not matter without the CA.
        http: "127.0.0.1:0".parse().expect("addr"),
        ..acme
    };
    let relay = start_relay(&data, acme_config(again)).await;
    assert_eq!(relay.handle.fingerprint, leaf, "the stored certificate");
    handshake(relay.handle.addr, leaf)
        .await
        .expect("still serving the stored leaf");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_certificate_is_renewed_and_served_without_a_restart() {
    // Certificates valid for 15 s: due for renewal after 10.
    let Some(pebble) = Pebble::start(Some(15), free_port()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = start_relay(&data, acme_config(pebble.acme(Duration::from_secs(1)))).await;
    let first = relay.handle.fingerprint;
    assert_eq!(Fingerprint::of(&stored_chain(&data)[0]), first);
    let alice = relay.add_user("alice");
    let client = relay.connect(&alice).await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let renewed = loop {
        let now = Fingerprint::of(&stored_chain(&data)[0]);
        if now != first {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no renewed certificate on disk in 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    verify(&stored_chain(&data), pebble.root());
    // New handshakes get the stored (renewed) certificate; none gets the first any more.
    // Polled: the file is written just before the swap, and renewals go on every 10 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = Fingerprint::of(&stored_chain(&data)[0]);
        if current != first
            && handshake(relay.handle.addr, current).await.is_ok()
            && handshake(relay.handle.addr, first).await.is_err()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate {renewed} is not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The session opened before the renewal is still up.
    assert_eq!(client.close_reason(), None);
    client
        .history(None, 10, None)
        .await
        .expect("the earlier session still works");
    client.close().await;
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_that_cannot_pass_fails_the_start_clearly() {
    // Pebble validates on a port where nothing answers; the relay listens on another.
    let Some(pebble) = Pebble::start(None, free_port()) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let acme = AcmeConfig {
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..pebble.acme(Duration::from_secs(3600))
    };
    let limit = acme.timeout + Duration::from_secs(30);
    let store = Arc::new(SqliteStore::open(&data).expect("store"));
    let config = RelayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..acme_config(acme)
    };
    let started = tokio::time::timeout(limit, walkie_relay::start(config, &data, store))
        .await
        .expect("start gives up in bounded time");
    let Err(e) = started else {
        panic!("the relay started without a certificate");
    };
    assert!(matches!(e, RelayError::Acme(_)), "{e:?}");
    let message = e.to_string();
    println!("start failed as it should: {message}");
    for says in [
        "cannot get a certificate for relay.walkie.test",
        "could not validate relay.walkie.test",
        "--acme-http",
    ] {
        assert!(message.contains(says), "{says:?} in {message}");
    }
    assert!(!data.join("cert.pem").exists(), "no self-signed fallback");
    assert!(!data.join("acme").join("cert.pem").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_never_answers_fails_the_start_after_the_timeout() {
    // Accepts connections and says nothing: no TLS handshake, no directory. No Pebble needed.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
            if held.len() > 16 {
                break;
            }
        }
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let acme = AcmeConfig {
        directory: format!("https://{addr}/dir"),
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        timeout: Duration::from_secs(2),
        ..AcmeConfig::new(DOMAIN, "ops@walkie.test")
    };
    let store = Arc::new(SqliteStore::open(&data).expect("store"));
    let config = RelayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..acme_config(acme)
    };
    let started = tokio::time::timeout(
        Duration::from_secs(30),
        walkie_relay::start(config, &data, store),
    )
    .await
    .expect("start gives up in bounded time");
    let message = started.err().expect("no certificate, no start").to_string();
    println!("start failed as it should: {message}");
    assert!(message.contains("no certificate within 2s"), "{message}");
    holder.abort();
}

#[test]
fn serve_refuses_acme_flags_that_cannot_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("serve")
            .args(args)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["--acme", "relay.example.org"]);
    assert!(e.contains("--acme-contact"), "{e}");
    for (domain, says) in [
        ("192.0.2.7", "IP address"),
        ("*.example.org", "wildcard"),
        ("relay.example.org:443", "port"),
    ] {
        let e = run(&["--acme", domain, "--acme-contact", "ops@example.org"]);
        assert!(e.contains(says), "{domain}: {e}");
    }
    let e = run(&[
        "--acme",
        "relay.example.org",
        "--acme-contact",
        "ops@example.org",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = run(&["--acme-contact", "ops@example.org"]);
    assert!(e.contains("--acme <DOMAIN>"), "{e}");
}
