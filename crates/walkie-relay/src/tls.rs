//! Which certificate the relay presents ([`CertSource`]): its own self-signed one, which
//! clients pin (the default: a private relay needs nothing else); an operator's CA-issued
//! chain and key from PEM files, read again when the files change (a renewal by certbot or
//! the like takes effect without a restart); or one obtained and renewed over ACME
//! ([`crate::acme`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{info, warn};
use walkie_net::{NetError, RelayIdentity, ServerCert};

/// Where the relay's certificate comes from.
#[derive(Clone, Debug, Default)]
pub enum CertSource {
    /// `DIR/cert.pem` and `DIR/key.pem`, made on first start; clients pin its fingerprint.
    #[default]
    SelfSigned,
    /// A CA-issued chain (leaf first) and its key, PEM; clients check it against their
    /// system's roots and the relay's name.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A certificate from an ACME CA (Let's Encrypt), obtained at start and renewed while
    /// the relay serves (`serve --acme DOMAIN`; see [`crate::acme`]).
    Acme(crate::acme::AcmeConfig),
}

/// How often certificate files are checked for a change.
pub(crate) const FILES_CHECK: Duration = Duration::from_secs(30);

/// The certificate to serve with, and the file it came from (for the `certificate` line).
pub(crate) fn load(
    source: &CertSource,
    data_dir: &Path,
) -> Result<(Arc<ServerCert>, PathBuf), NetError> {
    match source {
        CertSource::SelfSigned => {
            let identity = RelayIdentity::load_or_create(data_dir)?;
            Ok((ServerCert::from_identity(&identity)?, identity.cert_path))
        }
        CertSource::Files { cert, key } => {
            Ok((ServerCert::from_pem_files(cert, key)?, cert.clone()))
        }
        // Obtained asynchronously, before this is called: see `start_with`.
        CertSource::Acme(_) => Err(NetError::Tls(
            "an ACME certificate is obtained by acme::Acme::start".into(),
        )),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the certificate files again whenever either changes, until shutdown. A pair that
/// does not check out (half-written, a key of another certificate) is logged and the
/// current one kept; it is tried again at the next change.
pub(crate) async fn watch_files(
    cert: Arc<ServerCert>,
    files: (PathBuf, PathBuf),
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (cert_path, key_path) = files;
    let mut seen = (modified(&cert_path), modified(&key_path));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        let now = (modified(&cert_path), modified(&key_path));
        if now == seen {
            continue;
        }
        seen = now;
        match walkie_net::read_pem_pair(&cert_path, &key_path)
            .and_then(|(chain, key)| cert.replace(chain, key))
        {
            Ok(()) => info!(
                cert = %cert_path.display(),
                fingerprint = %cert.fingerprint(),
                "certificate reloaded"
            ),
            Err(e) => warn!(
                cert = %cert_path.display(),
                "the certificate files changed but cannot be used; still serving the old one: {e}"
            ),
        }
    }
}
