//! `serve --acme DOMAIN`: a certificate from an ACME CA (Let's Encrypt by default), obtained
//! before the relay listens and renewed while it serves, without a restart.
//!
//! At start the relay serves `DIR/acme/cert.pem` if it is for this domain and directory and
//! less than two thirds of its lifetime have passed; otherwise it runs an order first (HTTP-01:
//! the ACME server fetches a token from port 80 of the domain, which `--acme-http` answers).
//! It never falls back to a self-signed certificate: with no usable certificate, start fails.
//! A stored one that is due but not expired is served if the order fails, and renewed later.
//! In the background, every `renew_check`, a certificate past two thirds of its lifetime is
//! renewed: the new files are written atomically and swapped in with [`ServerCert::replace`]
//! (open connections keep theirs); a failure is logged and retried with backoff.
//!
//! The ACME protocol is instant-acme's: pure Rust on tokio and rustls, maintained by a
//! rustls maintainer (djc), and without its default features it builds on ring (no aws-lc,
//! so no cmake: the relay still builds alone) and takes our own HTTPS client (`client.rs`)
//! instead of pulling hyper-rustls, HTTP/2 and the platform verifier into the relay.
//!
//! | file | owns |
//! |---|---|
//! | `order.rs` | one order: account, challenge, finalization, the chain |
//! | `client.rs` | the HTTPS client to the ACME server (roots, deadlines, caps) |
//! | `http01.rs` | the challenge responder on `--acme-http` |
//! | `stored.rs` | the files in `DIR/acme/`, written atomically, private |
//! | `validity.rs` | a certificate's validity period, from its DER |

mod client;
mod http01;
mod order;
mod stored;
mod validity;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};
use walkie_net::ServerCert;

use client::Https;
use http01::Responder;
use stored::Issued;
use validity::Validity;

/// Let's Encrypt's production directory, the default `--acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// How often the certificate is checked for renewal by default.
pub const RENEW_CHECK: Duration = Duration::from_secs(3600);
/// How long one order may take by default, from the first request to the chain.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait between renewal attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// How the relay gets its certificate from an ACME CA.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The DNS name to get a certificate for (clients reach the relay by it).
    pub domain: String,
    /// The ACME directory URL (default Let's Encrypt's production one).
    pub directory: String,
    /// The account's contact email (the CA writes about expiry and policy changes).
    pub contact: String,
    /// TCP address the HTTP-01 challenges are answered on (default `[::]:80`): what port 80
    /// of the domain reaches.
    pub http: SocketAddr,
    /// Extra roots (PEM) to trust for the ACME server's HTTPS, e.g. a test CA.
    pub ca_file: Option<PathBuf>,
    /// How often the certificate is checked for renewal (default an hour).
    pub renew_check: Duration,
    /// How long one order may take (default 60 s); start fails after it.
    pub timeout: Duration,
}

impl AcmeConfig {
    /// Let's Encrypt for `domain`, with the defaults above.
    pub fn new(domain: &str, contact: &str) -> AcmeConfig {
        AcmeConfig {
            domain: domain.to_string(),
            directory: LETS_ENCRYPT.to_string(),
            contact: contact.to_string(),
            http: SocketAddr::from(([0u16; 8], 80)),
            ca_file: None,
            renew_check: RENEW_CHECK,
            timeout: ORDER_TIMEOUT,
        }
    }
}

/// Errors of getting or renewing a certificate over ACME.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The domain is not a DNS name a certificate can be issued for.
    #[error("--acme {domain:?}: {why}")]
    Domain {
        /// As given.
        domain: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The contact is not an email address.
    #[error("--acme-contact {0:?} is not an email address (name@example.com)")]
    Contact(String),
    /// The directory is not an https:// URL.
    #[error("--acme-directory {0:?} is not an https:// URL")]
    Directory(String),
    /// `--acme-ca-file` cannot be used.
    #[error("--acme-ca-file {}: {what}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The challenge listener could not be bound.
    #[error("cannot listen for ACME HTTP-01 challenges on {addr} (--acme-http): {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A file of `DIR/acme` could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The TLS configuration could not be made.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The ACME server refused a request or could not be reached.
    #[error("{what}: {source}")]
    Server {
        /// What the relay asked for.
        what: &'static str,
        /// The ACME server's problem, or the transport's error.
        source: instant_acme::Error,
    },
    /// The ACME server could not validate the challenge.
    #[error(
        "the ACME server could not validate {domain}: {reason} (it fetches http://{domain}/.well-known/acme-challenge/TOKEN on port 80; this relay answers on {listening}, --acme-http: port 80 of {domain} must reach it)"
    )]
    Validation {
        /// The domain.
        domain: String,
        /// What the ACME server said.
        reason: String,
        /// Where the responder listens.
        listening: SocketAddr,
    },
    /// The order went wrong otherwise.
    #[error("{0}")]
    Order(String),
    /// The order took longer than allowed.
    #[error("no certificate within {0:?}")]
    Timeout(Duration),
    /// Getting a certificate failed (the cause inside).
    #[error("cannot get a certificate for {domain} from {directory}: {source}")]
    Obtain {
        /// The domain.
        domain: String,
        /// The ACME directory.
        directory: String,
        /// Why.
        source: Box<AcmeError>,
    },
}

/// Checks `--acme DOMAIN`: a DNS name (letters, digits, hyphens; at least two labels), not
/// an IP address, a wildcard or a name with a port. Returns it in lower case without a
/// final dot.
pub fn validate_domain(domain: &str) -> Result<String, AcmeError> {
    let bad = |why| AcmeError::Domain {
        domain: domain.to_string(),
        why,
    };
    let name = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        return Err(bad(
            "an IP address; give the DNS name that points at the relay",
        ));
    }
    if name.contains('*') {
        return Err(bad(
            "a wildcard; give the relay's own name (HTTP-01 cannot validate wildcards)",
        ));
    }
    if name.contains(':') || name.contains('/') {
        return Err(bad("give the name alone, without a port, scheme or path"));
    }
    if !name.is_ascii() {
        return Err(bad(
            "not ASCII; give an internationalised name in its xn-- form",
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(bad("a DNS name has 1 to 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err(bad(
            "a public DNS name has at least two labels (relay.example.org)",
        ));
    }
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !labels.iter().all(label_ok) {
        return Err(bad(
            "each label is 1 to 63 letters, digits or inner hyphens, between single dots",
        ));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("an all-numeric top-level label; not a DNS name"));
    }
    Ok(name)
}

/// Checks the contact email (the ACME account's `mailto:`).
fn validate_contact(contact: &str) -> Result<(), AcmeError> {
    let bad = || AcmeError::Contact(contact.to_string());
    let (local, host) = contact.split_once('@').ok_or_else(bad)?;
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
    if !printable(local) || !printable(host) || !host.contains('.') || contact.len() > 254 {
        return Err(bad());
    }
    Ok(())
}

/// The relay's ACME certificate, served and renewed.
pub(crate) struct Acme {
    config: AcmeConfig,
    dir: PathBuf,
    https: Https,
    responder: Responder,
    cert: Arc<ServerCert>,
    validity: Validity,
    /// Renewals failed in a row (1 when start fell back to a due stored certificate).
    failures: u32,
}

impl Acme {
    /// Checks the settings, answers challenges from now on, and serves the stored certificate
    /// or gets one (within `config.timeout`).
    pub(crate) async fn start(config: &AcmeConfig, data_dir: &Path) -> Result<Acme, AcmeError> {
        let domain = validate_domain(&config.domain)?;
        validate_contact(&config.contact)?;
        if !config.directory.starts_with("https://") {
            return Err(AcmeError::Directory(config.directory.clone()));
        }
        let config = AcmeConfig {
            domain,
            ..config.clone()
        };
        let dir = data_dir.join("acme");
        walkie_store::private::create_dir_all(&dir).map_err(|source| AcmeError::Io {
            path: dir.clone(),
            source,
        })?;
        let https = Https::new(config.ca_file.as_deref())?;
        let responder = Responder::bind(config.http).await?;
        let stored = match stored::load(&dir, &config.domain, &config.directory) {
            Ok(stored) => stored,
            Err(why) => {
                warn!(dir = %dir.display(), "the stored ACME certificate is not used ({why}); getting a new one");
                None
            }
        };
        let now = SystemTime::now();
        let mut failures = 0;
        let issued = match stored {
            Some(s) if now < s.validity.renew_at() => {
                info!(
                    domain = %config.domain,
                    "serving the stored ACME certificate (valid for {}, renewed from {} before its end)",
                    left(s.validity.not_after),
                    span(s.validity.lifetime() / 3)
                );
                s
            }
            Some(s) => match obtain(&config, &dir, &https, &responder).await {
                Ok(new) => new,
                Err(e) if now < s.validity.not_after => {
                    failures = 1;
                    warn!(
                        "the stored ACME certificate is due for renewal and renewing failed; serving it (valid for {}) and retrying: {e}",
                        left(s.validity.not_after)
                    );
                    s
                }
                Err(e) => return Err(e),
            },
            None => obtain(&config, &dir, &https, &responder).await?,
        };
        Ok(Acme {
            cert: issued.server_cert()?,
            validity: issued.validity,
            config,
            dir,
            https,
            responder,
            failures,
        })
    }

    /// The certificate to serve with (renewed in place).
    pub(crate) fn cert(&self) -> Arc<ServerCert> {
        self.cert.clone()
    }

    /// The chain's file.
    pub(crate) fn cert_path(&self) -> PathBuf {
        self.dir.join(stored::CERT)
    }

    /// Renews the certificate when it is due, until shutdown.
    pub(crate) async fn renew(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = backoff(self.config.renew_check, self.failures);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if SystemTime::now() < self.validity.renew_at() {
                continue;
            }
            info!(domain = %self.config.domain, "the ACME certificate is due for renewal (valid for {})", left(self.validity.not_after));
            let result = tokio::select! {
                r = obtain(&self.config, &self.dir, &self.https, &self.responder) => r,
                _ = shutdown.changed() => return,
            };
            let renewed = result.and_then(|issued| {
                self.cert
                    .replace(issued.chain, issued.key)
                    .map_err(|e| AcmeError::Tls(e.to_string()))?;
                Ok(issued.validity)
            });
            match renewed {
                Ok(validity) => {
                    self.validity = validity;
                    self.failures = 0;
                    info!(
                        domain = %self.config.domain,
                        fingerprint = %self.cert.fingerprint(),
                        "ACME certificate renewed (valid for {}); new connections get it",
                        left(validity.not_after)
                    );
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    warn!(
                        "renewing the ACME certificate failed ({} in a row; next try in {}): {e}",
                        self.failures,
                        span(backoff(self.config.renew_check, self.failures))
                    );
                }
            }
        }
    }
}

/// Runs one order within the configured time, checks and stores what it gave.
async fn obtain(
    config: &AcmeConfig,
    dir: &Path,
    https: &Https,
    responder: &Responder,
) -> Result<Issued, AcmeError> {
    let wrap = |source| AcmeError::Obtain {
        domain: config.domain.clone(),
        directory: config.directory.clone(),
        source: Box::new(source),
    };
    info!(domain = %config.domain, directory = %config.directory, "getting a certificate over ACME");
    let obtained =
        tokio::time::timeout(config.timeout, order::obtain(config, dir, https, responder))
            .await
            .map_err(|_| wrap(AcmeError::Timeout(config.timeout)))?
            .map_err(wrap)?;
    let issued = Issued::parse(
        obtained.chain_pem.as_bytes(),
        obtained.key_pem.as_bytes(),
        &config.domain,
    )
    .map_err(|e| {
        wrap(AcmeError::Order(format!(
            "the issued certificate is not usable: {e}"
        )))
    })?;
    stored::save(
        dir,
        &obtained.chain_pem,
        &obtained.key_pem,
        &config.domain,
        &config.directory,
    )?;
    info!(domain = %config.domain, "got a certificate valid for {}", left(issued.validity.not_after));
    Ok(issued)
}

/// The wait before the next renewal check: `check`, or after failures a backoff that starts
/// at `check` (at most 5 minutes) and doubles up to [`MAX_BACKOFF`].
fn backoff(check: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return check;
    }
    let first = check.min(Duration::from_secs(300));
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF.max(check))
}

/// How long from now until `t`, for a log line.
fn left(t: SystemTime) -> String {
    span(
        t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A duration for a log line: days, hours or seconds.
fn span(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_names_are_domains() {
        assert_eq!(
            validate_domain("Relay.Example.org.").ok().as_deref(),
            Some("relay.example.org")
        );
        assert!(validate_domain("xn--bcher-kva.example").is_ok());
        assert!(validate_domain("a-b.c-d.example").is_ok());
        for (bad, says) in [
            ("192.0.2.1", "IP address"),
            ("::1", "IP address"),
            ("[2001:db8::1]", "IP address"),
            ("*.example.org", "wildcard"),
            ("relay.example.org:443", "port"),
            ("https://relay.example.org", "port"),
            ("localhost", "two labels"),
            ("", "1 to 253"),
            ("bücher.example", "ASCII"),
            ("-a.example", "label"),
            ("a..example", "label"),
            ("a_b.example", "label"),
            ("1.2.3.4.5", "numeric"),
        ] {
            let e = validate_domain(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(validate_domain(&long).is_err());
    }

    #[test]
    fn contacts_are_email_addresses() {
        assert!(validate_contact("ops@example.org").is_ok());
        for bad in [
            "",
            "ops",
            "ops@",
            "@example.org",
            "ops@localhost",
            "a b@example.org",
            "mailto:ops@example.org@x",
        ] {
            assert!(validate_contact(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_back_off_within_bounds() {
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(hour, 0), hour);
        assert_eq!(backoff(hour, 1), Duration::from_secs(300));
        assert_eq!(backoff(hour, 2), Duration::from_secs(600));
        assert_eq!(backoff(hour, 40), MAX_BACKOFF);
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 3), Duration::from_secs(4));
        assert_eq!(
            backoff(second, u32::MAX),
            MAX_BACKOFF.min(Duration::from_secs(1 << 16))
        );
    }
}
