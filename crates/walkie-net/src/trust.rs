//! What a client trusts in the relay's certificate ([`Trust`]): one pinned fingerprint (a
//! private relay's self-signed certificate, the default), or a certificate issued for the
//! relay's host name by a CA the system trusts (through `rustls-platform-verifier`: on Linux
//! the system's CA bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set), plus any extra roots
//! given (a private CA). A pin, when there is one, wins: the CA check is not made at all.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{Fingerprint, NetError, SERVER_NAME};

/// What a client trusts in the relay's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Only the certificate with this fingerprint, whatever name or issuer it has.
    Pinned(Fingerprint),
    /// A certificate for the relay's host name (the HOST of `HOST:PORT`) that chains to one
    /// of the system's roots or to one of `extra`.
    Roots {
        /// Roots trusted besides the system's (a private CA's certificate).
        extra: Vec<CertificateDer<'static>>,
    },
}

impl Trust {
    /// The system's roots alone.
    pub fn system() -> Trust {
        Trust::Roots { extra: Vec::new() }
    }

    /// The pinned fingerprint, if this trust is a pin.
    pub fn pin(&self) -> Option<Fingerprint> {
        match self {
            Trust::Pinned(pin) => Some(*pin),
            Trust::Roots { .. } => None,
        }
    }

    /// The server name to ask the relay at `relay` (`HOST:PORT`) for: with a pin the constant
    /// [`SERVER_NAME`] (the name does not matter), otherwise the relay's host, which its
    /// certificate is checked against (an IP literal is checked as an IP address).
    pub fn server_name<'a>(&self, relay: &'a str) -> &'a str {
        match self {
            Trust::Pinned(_) => SERVER_NAME,
            Trust::Roots { .. } => relay_host(relay),
        }
    }

    /// The verifier of the relay's certificate for this trust.
    pub(crate) fn verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, NetError> {
        let algorithms = provider.signature_verification_algorithms;
        match self {
            Trust::Pinned(pin) => Ok(Arc::new(Verifier {
                check: Check::Pinned(*pin),
                algorithms,
            })),
            Trust::Roots { extra } => {
                // A broken extra root is the caller's mistake, said as such; after that, the
                // only failure left is a system with no roots at all, which each handshake
                // then reports (an untrusted relay, not a broken endpoint).
                let mut check = rustls::RootCertStore::empty();
                for root in extra {
                    check.add(root.clone()).map_err(|e| {
                        NetError::Tls(format!("a trusted root certificate is not usable: {e}"))
                    })?;
                }
                let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
                    extra.iter().cloned(),
                    provider.clone(),
                )
                .map_err(|e| {
                    format!(
                        "{e}: no CA certificate to check the relay's against (set SSL_CERT_FILE to a CA bundle, or pin the relay's certificate)"
                    )
                });
                Ok(Arc::new(Verifier {
                    check: Check::Platform(platform),
                    algorithms,
                }))
            }
        }
    }
}

impl From<Fingerprint> for Trust {
    fn from(pin: Fingerprint) -> Self {
        Trust::Pinned(pin)
    }
}

/// The HOST of `HOST:PORT` (`[::1]:7300` gives `::1`; a string without a port is all host).
pub fn relay_host(relay: &str) -> &str {
    let relay = relay.trim();
    if let Some(rest) = relay.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match relay.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((host, _)) if !host.contains(':') => host,
        _ => relay,
    }
}

/// Reads every certificate of a PEM file of CA certificates (a private CA's root), checked
/// to be usable as trust anchors.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let bytes = std::fs::read(path).map_err(|source| NetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |what: String| NetError::BadPem {
        path: path.to_path_buf(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("a certificate does not parse: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    let mut check = rustls::RootCertStore::empty();
    for cert in &certs {
        check
            .add(cert.clone())
            .map_err(|e| bad(format!("a certificate is not usable as a CA root: {e}")))?;
    }
    Ok(certs)
}

/// How the relay's certificate is checked.
#[derive(Debug)]
enum Check {
    /// It has this fingerprint.
    Pinned(Fingerprint),
    /// The platform's verifier accepts it for the relay's name; with no roots on the system
    /// (and none given), every certificate is refused with the reason.
    Platform(Result<rustls_platform_verifier::Verifier, String>),
}

/// A client's verifier: the certificate by [`Check`], the handshake's signatures by the
/// provider's algorithms, TLS 1.3 only.
#[derive(Debug)]
struct Verifier {
    check: Check,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Pinned(pin) => {
                let seen = Fingerprint::of(end_entity);
                if bool::from(subtle::ConstantTimeEq::ct_eq(&seen.0[..], &pin.0[..])) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "the relay's certificate {seen} does not match the pinned {pin}"
                    )))
                }
            }
            Check::Platform(Ok(platform)) => {
                platform.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Check::Platform(Err(why)) => Err(rustls::Error::General(why.clone())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not used by walkie".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_checked_is_the_relays_host() {
        for (relay, host) in [
            ("relay.example.org:7300", "relay.example.org"),
            ("127.0.0.1:7300", "127.0.0.1"),
            ("[::1]:7300", "::1"),
            ("relay.example.org", "relay.example.org"),
            ("::1", "::1"),
            (" h:1 ", "h"),
        ] {
            assert_eq!(relay_host(relay), host, "{relay}");
            assert_eq!(Trust::system().server_name(relay), host, "{relay}");
        }
        let pinned = Trust::from(Fingerprint([1; 32]));
        assert_eq!(pinned.server_name("relay.example.org:7300"), SERVER_NAME);
        assert_eq!(pinned.pin(), Some(Fingerprint([1; 32])));
        assert_eq!(Trust::system().pin(), None);
        // The hosts are names rustls takes: a DNS name, or an IP address for a literal.
        for host in ["relay.example.org", "127.0.0.1", "::1"] {
            assert!(ServerName::try_from(host).is_ok(), "{host}");
        }
        assert!(matches!(
            ServerName::try_from("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn ca_files_must_hold_usable_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).expect("ca");
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).expect("written");
        assert_eq!(
            load_ca_file(&good).expect("loads"),
            vec![ca.cert.der().clone()]
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").expect("written");
        let e = load_ca_file(&empty).expect_err("no certificate");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = load_ca_file(&dir.path().join("absent.pem")).expect_err("absent");
        assert!(matches!(e, NetError::Io { .. }), "{e}");
    }
}
