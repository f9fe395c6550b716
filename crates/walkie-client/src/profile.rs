//! Where the client keeps its state (profile in the config dir, outbox in the data dir) and
//! how settings combine: command-line flag, then environment variable, then saved profile.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use walkie_net::{self as net, Fingerprint, Trust};

use crate::{ClientConfig, ClientError};

/// Connection settings; every field may be missing until they are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// `HOST:PORT` of the relay.
    pub relay: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Secret token.
    pub token: Option<String>,
    /// PEM certificate of the relay to trust.
    pub cert: Option<PathBuf>,
    /// `sha256:HEX` fingerprint of the relay's certificate.
    pub fingerprint: Option<String>,
    /// With neither `cert` nor `fingerprint`: a PEM file of CA certificates trusted besides
    /// the system's (a private CA).
    pub ca_file: Option<PathBuf>,
}

fn dirs() -> Result<directories::ProjectDirs, ClientError> {
    directories::ProjectDirs::from("", "", "walkie").ok_or_else(|| {
        ClientError::Config("cannot find a home directory for walkie's settings; set HOME".into())
    })
}

/// `CONFIG_DIR/profile.toml`.
pub fn profile_path() -> Result<PathBuf, ClientError> {
    Ok(dirs()?.config_dir().join("profile.toml"))
}

/// The outbox directory of `user`: `DATA_DIR/outbox/USER`.
pub fn outbox_dir(user: &str) -> Result<PathBuf, ClientError> {
    Ok(dirs()?.data_dir().join("outbox").join(user))
}

impl Profile {
    /// Loads the saved profile; an absent file is an empty profile.
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                ClientError::Config(format!(
                    "{}: not a valid profile: {e}; run `walkie login` again",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
            Err(source) => Err(ClientError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Saves the profile (mode 0600: it holds a token).
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        save_private_toml(path, self)
    }
}

/// Writes `value` as TOML to `path` with mode 0600 (it may hold a token), creating its
/// directory: the profile, and the app's settings with the profiles used before.
pub fn save_private_toml<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), ClientError> {
    let text = toml::to_string(value).map_err(|e| ClientError::Config(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(path)
        .and_then(|mut f| {
            // A file that existed keeps its mode on open: made 0600 before the token is written.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
            f.set_len(0)?;
            f.write_all(text.as_bytes())
        })
        .map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl Profile {
    /// Fields of `self` where set, otherwise those of `fallback`. Trust settings go together:
    /// a cert, fingerprint or CA file given here replaces all of those given there.
    pub fn or(self, fallback: Profile) -> Profile {
        let trust_here =
            self.cert.is_some() || self.fingerprint.is_some() || self.ca_file.is_some();
        Profile {
            relay: self.relay.or(fallback.relay),
            user: self.user.or(fallback.user),
            token: self.token.or(fallback.token),
            cert: if trust_here { self.cert } else { fallback.cert },
            fingerprint: if trust_here {
                self.fingerprint
            } else {
                fallback.fingerprint
            },
            ca_file: if trust_here {
                self.ca_file
            } else {
                fallback.ca_file
            },
        }
    }

    /// How the relay's certificate is checked: pinned to the certificate file or fingerprint
    /// when one is given (a pin wins over a CA file); otherwise against the system's roots,
    /// and the CA file's, for the relay's host name.
    pub fn trust(&self) -> Result<Trust, ClientError> {
        if let Some(pin) = self.pin()? {
            return Ok(Trust::Pinned(pin));
        }
        let extra = match &self.ca_file {
            Some(path) => net::load_ca_file(path)?,
            None => Vec::new(),
        };
        Ok(Trust::Roots { extra })
    }

    /// The pinned fingerprint: from the certificate file, else the fingerprint; `None` when
    /// neither is given.
    pub fn pin(&self) -> Result<Option<Fingerprint>, ClientError> {
        match (&self.cert, &self.fingerprint) {
            (Some(cert), Some(fp)) => {
                // Both given: both must name the same certificate.
                let (of_cert, given) = (
                    Fingerprint::of(&net::load_cert(cert)?),
                    Fingerprint::parse(fp)?,
                );
                if of_cert != given {
                    return Err(ClientError::Config(format!(
                        "the certificate {} has fingerprint {of_cert}, not the {given} given with --fingerprint",
                        cert.display()
                    )));
                }
                Ok(Some(of_cert))
            }
            (Some(cert), None) => Ok(Some(Fingerprint::of(&net::load_cert(cert)?))),
            (None, Some(fp)) => Ok(Some(Fingerprint::parse(fp)?)),
            (None, None) => Ok(None),
        }
    }

    /// A complete connection config, or a sentence naming what is missing.
    pub fn client_config(&self) -> Result<ClientConfig, ClientError> {
        let missing = |what: &str, flag: &str, env: &str| {
            ClientError::Config(format!(
                "no {what} given: pass {flag}, set {env}, or save a profile with `walkie login`"
            ))
        };
        let relay = self
            .relay
            .clone()
            .ok_or_else(|| missing("relay address", "--relay HOST:PORT", "WALKIE_RELAY"))?;
        let user = self
            .user
            .clone()
            .ok_or_else(|| missing("user name", "--user NAME", "WALKIE_USER"))?;
        let token = self
            .token
            .clone()
            .ok_or_else(|| missing("token", "--token TOKEN", "WALKIE_TOKEN"))?;
        walkie_proto::clip::validate_name(&user).map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(ClientConfig {
            relay,
            user,
            token,
            trust: self.trust()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_saved_profile() {
        let saved = Profile {
            relay: Some("a:1".into()),
            user: Some("bob".into()),
            token: Some("t".into()),
            cert: Some("/x.pem".into()),
            fingerprint: None,
            ca_file: None,
        };
        let flags = Profile {
            user: Some("alice".into()),
            fingerprint: Some("sha256:00".into()),
            ..Profile::default()
        };
        let merged = flags.or(saved);
        assert_eq!(merged.user.as_deref(), Some("alice"));
        assert_eq!(merged.relay.as_deref(), Some("a:1"));
        assert_eq!(merged.cert, None);
        assert_eq!(merged.fingerprint.as_deref(), Some("sha256:00"));
    }

    #[test]
    fn profiles_roundtrip_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        let p = Profile {
            relay: Some("h:7300".into()),
            user: Some("bob".into()),
            ..Profile::default()
        };
        p.save(&path).expect("saves");
        assert_eq!(Profile::load(&path).expect("loads"), p);
        assert_eq!(
            Profile::load(&dir.path().join("none.toml")).expect("absent"),
            Profile::default()
        );
        assert!(Profile::default().client_config().is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_profile_that_existed_world_readable_is_made_private_before_the_token_is_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("profile.toml");
        std::fs::write(&path, "relay = \"old:1\"\n").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let p = Profile {
            token: Some("ab".repeat(32)),
            ..Profile::default()
        };
        p.save(&path).expect("saves");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            Profile::load(&path).expect("loads"),
            p,
            "the old content is gone"
        );
    }

    #[test]
    fn without_a_pin_the_system_roots_are_trusted_and_a_pin_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = net::RelayIdentity::load_or_create(dir.path()).expect("identity");
        let base = Profile {
            relay: Some("relay.example.org:7300".into()),
            user: Some("ann".into()),
            token: Some("t".into()),
            ..Profile::default()
        };
        let cfg = base.client_config().expect("no pin is fine");
        assert_eq!(cfg.trust, Trust::system());
        // A CA file adds its roots.
        let with_ca = Profile {
            ca_file: Some(identity.cert_path.clone()),
            ..base.clone()
        };
        assert_eq!(
            with_ca.trust().expect("ca file"),
            Trust::Roots {
                extra: vec![identity.cert.clone()]
            }
        );
        // A pin wins over a CA file.
        let pinned = Profile {
            fingerprint: Some(identity.fingerprint().to_string()),
            ..with_ca.clone()
        };
        assert_eq!(
            pinned.trust().expect("pin"),
            Trust::Pinned(identity.fingerprint())
        );
        // A CA file given as a flag replaces a saved pin, not only adds to it.
        let flags = Profile {
            ca_file: Some(identity.cert_path.clone()),
            ..Profile::default()
        };
        assert_eq!(
            flags.or(pinned.clone()).trust().expect("ca"),
            with_ca.trust().expect("ca")
        );
        let missing = Profile {
            ca_file: Some(dir.path().join("absent.pem")),
            ..base
        };
        assert!(missing.client_config().is_err());
    }

    #[test]
    fn a_certificate_and_a_fingerprint_must_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = net::RelayIdentity::load_or_create(dir.path()).expect("identity");
        let right = identity.fingerprint().to_string();
        let both = |fp: &str| Profile {
            cert: Some(identity.cert_path.clone()),
            fingerprint: Some(fp.into()),
            ..Profile::default()
        };
        assert_eq!(
            both(&right).pin().expect("agree"),
            Some(identity.fingerprint())
        );
        let wrong = format!("sha256:{}", "00".repeat(32));
        let e = both(&wrong)
            .pin()
            .expect_err("a wrong fingerprint is not ignored");
        assert!(e.to_string().contains("not the"), "{e}");
    }
}
