//! What `DIR/acme/` holds: the chain served under `--acme` (`cert.pem`, leaf first) and its
//! key (`key.pem`), `state.json` (the domain and ACME directory they were issued for, so a
//! change of either gets a new certificate), and `account.json` (the ACME account's
//! credentials and its directory). Every file is private (0600) and written atomically: a
//! temporary file beside it, fsync, rename. A crash between the key and the chain leaves a
//! pair that does not match, which [`load`] refuses, and the relay gets a new certificate.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use instant_acme::AccountCredentials;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use walkie_net::ServerCert;

use super::AcmeError;
use super::validity::Validity;

/// The chain, PEM, leaf first.
pub(crate) const CERT: &str = "cert.pem";
/// Its private key, PEM.
pub(crate) const KEY: &str = "key.pem";
const STATE: &str = "state.json";
const ACCOUNT: &str = "account.json";

/// What the stored certificate was issued for.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    domain: String,
    directory: String,
}

/// The account file: credentials are good for one ACME directory only.
#[derive(Serialize, Deserialize)]
struct Account {
    directory: String,
    credentials: AccountCredentials,
}

/// A certificate chain and key, checked: they match, the leaf names the domain, and its
/// validity parses.
pub(crate) struct Issued {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's validity.
    pub validity: Validity,
}

impl Issued {
    /// Checks a chain and key (PEM) for `domain`.
    pub(crate) fn parse(chain_pem: &[u8], key_pem: &[u8], domain: &str) -> Result<Issued, String> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the chain")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("no private key: {e}"))?;
        let validity = Validity::of(leaf).ok_or("the certificate's validity does not parse")?;
        let parsed = rustls::server::ParsedCertificate::try_from(leaf)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let name = ServerName::try_from(domain.to_string()).map_err(|e| e.to_string())?;
        rustls::client::verify_server_name(&parsed, &name)
            .map_err(|e| format!("the certificate is not for {domain}: {e}"))?;
        // Only to check that the key is the leaf's.
        ServerCert::new(chain.clone(), key.clone_key()).map_err(|e| e.to_string())?;
        Ok(Issued {
            chain,
            key,
            validity,
        })
    }

    /// A certificate to serve with.
    pub(crate) fn server_cert(&self) -> Result<Arc<ServerCert>, AcmeError> {
        ServerCert::new(self.chain.clone(), self.key.clone_key())
            .map_err(|e| AcmeError::Tls(e.to_string()))
    }
}

/// The stored certificate for `domain` from `directory`: `Ok(None)` when there is none,
/// `Err` saying why the files cannot be used.
pub(crate) fn load(dir: &Path, domain: &str, directory: &str) -> Result<Option<Issued>, String> {
    let (cert, key) = (dir.join(CERT), dir.join(KEY));
    if !cert.exists() {
        return Ok(None);
    }
    let state: State = read_json(&dir.join(STATE))?;
    if state.domain != domain || state.directory != directory {
        return Err(format!(
            "it was issued for {} by {}",
            state.domain, state.directory
        ));
    }
    let read = |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    Issued::parse(&read(&cert)?, &read(&key)?, domain).map(Some)
}

/// Stores a new chain and key for `domain` from `directory`.
pub(crate) fn save(
    dir: &Path,
    chain_pem: &str,
    key_pem: &str,
    domain: &str,
    directory: &str,
) -> Result<(), AcmeError> {
    let state = State {
        domain: domain.to_string(),
        directory: directory.to_string(),
    };
    let state = serde_json::to_vec_pretty(&state).map_err(|e| AcmeError::Order(e.to_string()))?;
    write_atomic(dir, KEY, key_pem.as_bytes())?;
    write_atomic(dir, CERT, chain_pem.as_bytes())?;
    write_atomic(dir, STATE, &state)
}

/// The stored account's credentials, if it is an account of `directory`.
pub(crate) fn load_account(dir: &Path, directory: &str) -> Option<AccountCredentials> {
    let path = dir.join(ACCOUNT);
    if !path.exists() {
        return None;
    }
    match read_json::<Account>(&path) {
        Ok(account) if account.directory == directory => Some(account.credentials),
        Ok(account) => {
            tracing::info!(
                "the stored ACME account is one of {}; making one with {directory}",
                account.directory
            );
            None
        }
        Err(e) => {
            tracing::warn!("the stored ACME account cannot be read ({e}); making a new one");
            None
        }
    }
}

/// Stores an account's credentials (its private key: the file is private).
pub(crate) fn save_account(
    dir: &Path,
    directory: &str,
    credentials: AccountCredentials,
) -> Result<(), AcmeError> {
    let account = Account {
        directory: directory.to_string(),
        credentials,
    };
    let bytes = serde_json::to_vec_pretty(&account).map_err(|e| AcmeError::Order(e.to_string()))?;
    write_atomic(dir, ACCOUNT, &bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `dir/name` through a private temporary file in `dir`, synced, then renamed.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AcmeError> {
    let path = dir.join(name);
    let io = |source| AcmeError::Io {
        path: path.clone(),
        source,
    };
    // tempfile creates its files 0600.
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(&path).map_err(|e| io(e.error))?;
    // The rename itself, durable.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("made");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    #[test]
    fn a_saved_pair_loads_for_its_domain_and_directory_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert!(matches!(load(dir, "a.example", "https://ca/dir"), Ok(None)));
        let (cert, key) = pair(&["a.example"]);
        save(dir, &cert, &key, "a.example", "https://ca/dir").expect("saved");
        let issued = load(dir, "a.example", "https://ca/dir")
            .expect("usable")
            .expect("stored");
        assert_eq!(issued.chain.len(), 1);
        let other = load(dir, "b.example", "https://ca/dir")
            .err()
            .expect("another domain");
        assert!(other.contains("a.example"), "{other}");
        assert!(load(dir, "a.example", "https://other/dir").is_err());
        #[cfg(unix)]
        for name in [CERT, KEY, STATE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(name))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_mismatched_or_misnamed_pair_is_refused() {
        let (cert, _) = pair(&["a.example"]);
        let (_, other_key) = pair(&["a.example"]);
        let e = Issued::parse(cert.as_bytes(), other_key.as_bytes(), "a.example")
            .err()
            .expect("mismatch");
        assert!(e.contains("not the certificate's"), "{e}");
        let (cert, key) = pair(&["b.example"]);
        let e = Issued::parse(cert.as_bytes(), key.as_bytes(), "a.example")
            .err()
            .expect("wrong name");
        assert!(e.contains("not for a.example"), "{e}");
        assert!(Issued::parse(b"", key.as_bytes(), "b.example").is_err());
        assert!(Issued::parse(cert.as_bytes(), b"junk", "b.example").is_err());
    }
}
