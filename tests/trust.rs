//! Trust without a pin, end to end: a relay presenting a certificate from a private CA
//! (`CertSource::Files`), clients that check it against their roots and the relay's name, a
//! pin that wins over any CA, the `walkie` binary trusting `SSL_CERT_FILE` or `--ca-file`,
//! invite links without a pin, and a renewed certificate taken up without a restart.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use support::*;
use walkie_client::{Client, ClientConfig, ClientError};
use walkie_net::{CertificateDer, Fingerprint, NetError, Trust};
use walkie_relay::RelayConfig;
use walkie_relay::tls::CertSource;

const RELAY: &str = env!("CARGO_BIN_EXE_walkie-relay");

/// A private certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "walkie test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf for `names` (DNS names or IP addresses) with a fresh key, written (each
    /// file replaced at once, as a renewal tool does) as `DIR/chain.pem` (the leaf, then this
    /// CA) and `DIR/key.pem`; the leaf's fingerprint.
    fn issue(&self, names: &[&str], dir: &Path) -> Fingerprint {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("leaf key");
        let leaf = params.signed_by(&key, &self.issuer).expect("leaf");
        std::fs::create_dir_all(dir).expect("cert dir");
        replace(
            &dir.join("chain.pem"),
            &format!("{}{}", leaf.pem(), self.pem),
        );
        replace(&dir.join("key.pem"), &key.serialize_pem());
        Fingerprint::of(leaf.der())
    }

    /// Trust in the system's roots and this CA.
    fn roots(&self) -> Trust {
        Trust::Roots {
            extra: vec![self.cert.clone()],
        }
    }

    /// The CA's certificate as a PEM file in `dir`.
    fn pem_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("ca.pem");
        path
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("written");
    std::fs::rename(&tmp, path).expect("renamed");
}

/// A relay on 127.0.0.1 presenting a leaf of `ca` for `names`, from files in `dir/certs`
/// that it checks for a renewal every 200 ms.
async fn ca_relay(dir: &Path, ca: &Ca, names: &[&str]) -> (TestRelay, PathBuf) {
    let certs = dir.join("certs");
    let leaf = ca.issue(names, &certs);
    let relay = start_relay(
        &dir.join("relay"),
        RelayConfig {
            cert: CertSource::Files {
                cert: certs.join("chain.pem"),
                key: certs.join("key.pem"),
            },
            cert_check: Duration::from_millis(200),
            ..RelayConfig::default()
        },
    )
    .await;
    assert_eq!(
        relay.handle.fingerprint, leaf,
        "the relay presents the leaf"
    );
    (relay, certs)
}

fn with_trust(cfg: &ClientConfig, trust: Trust) -> ClientConfig {
    ClientConfig {
        trust,
        ..cfg.clone()
    }
}

/// The connection error, which must say the relay is not trusted (at once, not after a
/// timeout), and that trying again would not help.
async fn untrusted(cfg: &ClientConfig) -> String {
    match Client::connect(cfg).await {
        Ok(_) => panic!("{} connected with {:?}", cfg.relay, cfg.trust),
        Err(e @ ClientError::Net(NetError::Untrusted { .. })) => {
            assert!(!e.is_transient(), "{e}");
            e.to_string()
        }
        Err(other) => panic!("expected an untrusted relay, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pin_the_ca_and_the_name_are_checked_and_a_pin_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (relay, _) = ca_relay(tmp.path(), &ca, &["localhost", "127.0.0.1"]).await;
    let alice = relay.add_user("alice");
    relay.add_channel("crew", &["alice"]);

    // No pin, the CA as an extra root: the leaf checks out for 127.0.0.1 (its IP SAN).
    let by_ca = with_trust(&alice, ca.roots());
    let client = Client::connect(&by_ca).await.expect("connects by the CA");
    client.history(None, 10, None).await.expect("history");
    client.close().await;

    // No pin and no extra root: the system's roots do not know the private CA.
    let why = untrusted(&with_trust(&alice, Trust::system())).await;
    assert!(why.contains("cannot connect to"), "{why}");

    // No pin, asked for a name the leaf does not cover: refused, though the CA is trusted.
    let endpoint = walkie_net::client_endpoint(ca.roots(), "127.0.0.1:0".parse().expect("addr"))
        .expect("endpoint");
    let addr = relay.handle.addr;
    let e = endpoint
        .connect(addr, "relay.example.org")
        .expect("connect")
        .await
        .expect_err("another name is refused");
    assert!(
        matches!(
            walkie_net::handshake_error(&addr.to_string(), &e),
            NetError::Untrusted { .. }
        ),
        "{e}"
    );
    // The name it covers is accepted (a DNS name, where 127.0.0.1 was checked as an IP).
    let conn = endpoint
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("localhost is the leaf's name");
    conn.close(0u32.into(), b"bye");

    // A pin wins: the leaf's own fingerprint connects with no CA at all...
    let pinned = with_trust(&alice, Trust::Pinned(relay.handle.fingerprint));
    Client::connect(&pinned)
        .await
        .expect("the pinned leaf connects")
        .close()
        .await;
    // ...and another pin is refused even though the CA would vouch for the relay.
    let why = untrusted(&with_trust(
        &alice,
        Trust::Pinned(Fingerprint::of(&ca.cert)),
    ))
    .await;
    assert!(why.contains("does not match the pinned"), "{why}");

    // A relay whose CA-issued certificate names another host is refused at its address.
    let other_dir = tmp.path().join("other");
    let (other, _) = ca_relay(&other_dir, &ca, &["relay.example.org"]).await;
    let bob = other.add_user("bob");
    untrusted(&with_trust(&bob, ca.roots())).await;
    other.handle.shutdown().await;
    relay.handle.shutdown().await;
}

/// Runs a command off the async runtime (the relay keeps serving meanwhile).
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("runs"))
        .await
        .expect("joined")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkie_binary_trusts_ssl_cert_file_and_joins_with_a_link_without_a_pin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (relay, _) = ca_relay(tmp.path(), &ca, &["localhost", "127.0.0.1"]).await;
    let ca_pem = ca.pem_file(tmp.path());
    let alice = relay.add_user("alice");
    let addr = relay.handle.addr.to_string();
    let as_alice = |home: &Path| {
        let mut cmd = walkie_at_home(home);
        cmd.env("WALKIE_RELAY", &addr)
            .env("WALKIE_USER", &alice.user)
            .env("WALKIE_TOKEN", &alice.token)
            .arg("profile");
        cmd
    };
    let home = tmp.path().join("alice");

    // No pin: SSL_CERT_FILE names the roots to trust.
    let mut cmd = as_alice(&home);
    cmd.env("SSL_CERT_FILE", &ca_pem);
    let out = ok_stdout(&output(cmd).await);
    assert!(out.starts_with("user alice\n"), "{out}");
    // Without it, the system's roots do not know the CA: a clear failure, exit 1.
    let out = output(as_alice(&home)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to {addr}")) && err.contains("certificate"),
        "{err}"
    );
    // --ca-file adds the CA to the system's roots.
    let mut cmd = as_alice(&home);
    cmd.arg("--ca-file").arg(&ca_pem);
    assert!(ok_stdout(&output(cmd).await).starts_with("user alice\n"));

    // An invite link without a pin, and a sign-up with it.
    let mut create = Command::new(RELAY);
    create.arg("--data-dir").arg(&relay.data).args([
        "invite",
        "create",
        "--no-pin",
        "--address",
        &addr,
    ]);
    let made = ok_stdout(&output(create).await);
    let link = made.lines().last().expect("link line").to_string();
    assert!(
        link.starts_with(&format!("walkie://{addr}/join/")) && !link.contains('#'),
        "{link}"
    );
    let zoe_home = tmp.path().join("zoe");
    let mut join = walkie_at_home(&zoe_home);
    join.env("SSL_CERT_FILE", &ca_pem)
        .args(["join", &link, "--name", "zoe"]);
    let joined = ok_stdout(&output(join).await);
    assert_eq!(joined.lines().last(), Some("zoe"), "{joined}");
    // The saved profile has no pin: zoe's next command checks the certificate by the CA.
    let mut cmd = walkie_at_home(&zoe_home);
    cmd.env("SSL_CERT_FILE", &ca_pem).arg("profile");
    assert!(ok_stdout(&output(cmd).await).starts_with("user zoe\n"));
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_without_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (relay, certs) = ca_relay(tmp.path(), &ca, &["localhost", "127.0.0.1"]).await;
    let alice = relay.add_user("alice");
    let old = relay.handle.fingerprint;
    let before = Client::connect(&with_trust(&alice, ca.roots()))
        .await
        .expect("connects");

    // The same CA issues a new leaf with a new key, put in place of the files.
    let new = ca.issue(&["localhost", "127.0.0.1"], &certs);
    assert_ne!(new, old);
    let pinned_new = with_trust(&alice, Trust::Pinned(new));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(&pinned_new).await {
            Ok(client) => {
                client.close().await;
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(
                    matches!(e, ClientError::Net(NetError::Untrusted { .. })),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the renewed certificate was not presented within 30 s: {e}"),
        }
    }
    // The old leaf is gone for new connections; the connection made with it stays usable.
    untrusted(&with_trust(&alice, Trust::Pinned(old))).await;
    before
        .history(None, 10, None)
        .await
        .expect("the old connection still works");
    before.close().await;
    Client::connect(&with_trust(&alice, ca.roots()))
        .await
        .expect("the CA vouches for the new leaf")
        .close()
        .await;
    relay.handle.shutdown().await;
}
