//! The relay side of the engine: connecting with errors a person can act on, history pages,
//! fetching a clip's audio, and the played marks kept across restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::audio_clip::ClipAudio;
use walkie_client::profile::Profile;
use walkie_client::{Client, ClientConfig, ClientError};
use walkie_proto::clip::{ClipId, ClipMeta, Target};
use walkie_net::NetError;
use walkie_proto::wire::ErrorCode;

/// Clips per history page.
pub const PAGE: u32 = 30;
/// How long a background fetch may take before it is given up (and tried again later).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with `profile`; the error is one sentence saying what to check.
pub async fn connect(profile: &Profile) -> Result<(Client, ClientConfig), String> {
    let cfg = profile.client_config().map_err(|e| e.to_string())?;
    match Client::connect(&cfg).await {
        Ok(c) => Ok((c, cfg)),
        Err(e) => Err(explain(&e, &cfg)),
    }
}

/// A connection error in words: unreachable relay, wrong token, unknown certificate.
pub fn explain(e: &ClientError, cfg: &ClientConfig) -> String {
    match e {
        ClientError::Refused(r) if r.code == ErrorCode::Unauthorized => {
            format!("Wrong user name or token: the relay at {} refused {} ({}).", cfg.relay, cfg.user, r.message)
        }
        ClientError::Net(NetError::Connect { reason, .. }) if reason.contains("does not match the pinned") => format!(
            "Unknown certificate: the relay at {} is not the one you trust ({reason}). Check the fingerprint that walkie-relay serve prints, or its cert.pem.",
            cfg.relay
        ),
        ClientError::Net(NetError::Connect { reason, .. }) => {
            format!("Cannot reach the relay at {}: {reason}. Is it running, and is the address right?", cfg.relay)
        }
        ClientError::Resolve(_) => format!("Cannot reach the relay: {e}."),
        other => format!("Cannot connect to {}: {other}.", cfg.relay),
    }
}

/// A history page of `target` before `before_seq`, oldest first, and whether older clips may
/// remain.
pub async fn page(client: &Client, target: &Target, before_seq: Option<u64>) -> Result<(Vec<ClipMeta>, bool), ClientError> {
    let clips = client.history(Some(target.clone()), PAGE, before_seq).await?;
    let more = clips.len() as u32 >= PAGE;
    Ok((clips, more))
}

/// A stored clip's audio.
pub async fn fetch_audio(client: &Client, id: ClipId) -> Result<ClipAudio, ClientError> {
    let (_, bytes) = tokio::time::timeout(FETCH_TIMEOUT, client.fetch(id)).await.map_err(|_| ClientError::Timeout(FETCH_TIMEOUT))??;
    Ok(ClipAudio::from_ogg(&bytes)?)
}

/// The clips someone sent `user` that they have not played yet, kept in
/// `DATA_DIR/app/USER/unplayed.txt` (one id a line).
pub struct Unplayed {
    path: PathBuf,
    ids: BTreeSet<ClipId>,
}

impl Unplayed {
    /// Loads the list (unreadable lines are skipped; a missing file is an empty list).
    pub fn load(data_dir: &Path, user: &str) -> Unplayed {
        let path = data_dir.join("app").join(user).join("unplayed.txt");
        let ids =
            std::fs::read_to_string(&path).map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default();
        Unplayed { path, ids }
    }

    /// True if `id` is waiting to be played.
    pub fn contains(&self, id: &ClipId) -> bool {
        self.ids.contains(id)
    }

    /// Every id waiting.
    pub fn ids(&self) -> impl Iterator<Item = &ClipId> {
        self.ids.iter()
    }

    /// Adds or removes `id` and saves the list.
    pub fn set(&mut self, id: ClipId, unplayed: bool) -> Result<(), ClientError> {
        let changed = if unplayed { self.ids.insert(id) } else { self.ids.remove(&id) };
        if !changed {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ClientError::Io { path: dir.to_path_buf(), source })?;
        }
        let text: String = self.ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(&self.path, text).map_err(|source| ClientError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplayed_marks_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut u = Unplayed::load(dir.path(), "ann");
        u.set(ClipId([1; 16]), true).expect("saves");
        u.set(ClipId([2; 16]), true).expect("saves");
        u.set(ClipId([1; 16]), false).expect("saves");
        let again = Unplayed::load(dir.path(), "ann");
        assert_eq!(again.ids().copied().collect::<Vec<_>>(), vec![ClipId([2; 16])]);
        assert!(!Unplayed::load(dir.path(), "bob").contains(&ClipId([2; 16])));
    }

    #[test]
    fn connection_errors_say_what_to_check() {
        let cfg = ClientConfig { relay: "h:1".into(), user: "ann".into(), token: "t".into(), pin: walkie_net::Fingerprint([0; 32]) };
        let refused = ClientError::Refused(walkie_proto::wire::ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Unauthorized,
            message: "unknown user or wrong token".into(),
        });
        assert!(explain(&refused, &cfg).starts_with("Wrong user name or token"));
        let pin = ClientError::Net(NetError::Connect {
            addr: "h:1".into(),
            reason: "the relay's certificate sha256:aa does not match the pinned sha256:bb".into(),
        });
        assert!(explain(&pin, &cfg).starts_with("Unknown certificate"));
        let gone = ClientError::Net(NetError::Connect { addr: "h:1".into(), reason: "no answer within 10 s".into() });
        assert!(explain(&gone, &cfg).starts_with("Cannot reach the relay at h:1"));
    }
}
