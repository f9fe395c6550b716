//! The certificate a relay presents, swappable while it serves: [`ServerCert`] answers every
//! handshake with the current chain and key, and [`ServerCert::replace`] puts a renewed one
//! in place (an ACME renewal, or an operator's new files) without a restart. Connections
//! already open keep the certificate they were made with.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{Fingerprint, NetError, RelayIdentity, provider};

/// The relay's current certificate chain and key.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

/// Checks a chain and key and makes them one [`CertifiedKey`]: the key must be one rustls
/// can sign with and must belong to the chain's first (leaf) certificate.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, NetError> {
    if chain.is_empty() {
        return Err(NetError::Tls("the certificate chain is empty".into()));
    }
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| NetError::Tls(format!("the private key is not usable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| NetError::Tls(format!("the private key is not the certificate's: {e}")))?;
    Ok(Arc::new(certified))
}

/// Reads a PEM chain (leaf first) and a PEM private key.
pub fn read_pem_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), NetError> {
    let bytes = std::fs::read(cert).map_err(|source| NetError::Io {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NetError::BadPem {
            path: cert.to_path_buf(),
            what: format!("a certificate does not parse: {e}"),
        })?;
    if chain.is_empty() {
        return Err(NetError::BadPem {
            path: cert.to_path_buf(),
            what: "no PEM certificate in the file".into(),
        });
    }
    let key_bytes = std::fs::read(key).map_err(|source| NetError::Io {
        path: key.to_path_buf(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| NetError::BadPem {
        path: key.to_path_buf(),
        what: format!("no private key: {e}"),
    })?;
    Ok((chain, key))
}

impl ServerCert {
    /// A chain (leaf first) and its key, checked to belong together.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<ServerCert>, NetError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(certified(chain, key)?),
        }))
    }

    /// The relay's self-signed identity from its data dir.
    pub fn from_identity(identity: &RelayIdentity) -> Result<Arc<ServerCert>, NetError> {
        ServerCert::new(vec![identity.cert.clone()], identity.key.clone_key())
    }

    /// A chain and key from PEM files (an operator's CA-issued certificate).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Arc<ServerCert>, NetError> {
        let (chain, key) = read_pem_pair(cert, key)?;
        ServerCert::new(chain, key)
    }

    /// Puts a new chain and key in place for the handshakes from now on; the old ones stay
    /// if the new ones do not check out.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), NetError> {
        let new = certified(chain, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The leaf certificate's fingerprint (what a client would pin).
    pub fn fingerprint(&self) -> Fingerprint {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .cert
            .first()
            .map(|leaf| Fingerprint::of(leaf))
            .unwrap_or(Fingerprint([0; 32]))
    }

    /// The leaf certificate, DER.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.cert.first().cloned()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("made");
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).expect("key");
        (vec![made.cert.der().clone()], key)
    }

    #[test]
    fn a_key_from_another_certificate_is_refused_and_the_old_pair_stays() {
        let (chain, key) = pair("a.example");
        let cert = ServerCert::new(chain.clone(), key).expect("a pair");
        let before = cert.fingerprint();
        assert_eq!(before, Fingerprint::of(&chain[0]));
        let (other_chain, other_key) = pair("b.example");
        let err = cert
            .replace(chain.clone(), other_key.clone_key())
            .expect_err("mismatch");
        assert!(err.to_string().contains("not the certificate's"), "{err}");
        assert_eq!(cert.fingerprint(), before);
        cert.replace(other_chain.clone(), other_key)
            .expect("a new pair");
        assert_eq!(cert.fingerprint(), Fingerprint::of(&other_chain[0]));
        assert!(ServerCert::new(Vec::new(), pair("c").1).is_err());
    }
}
