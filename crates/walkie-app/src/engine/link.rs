//! The engine's link to the relay: connecting with errors a person can act on, what exists
//! while connected (the connection's settings, the outbox, the played marks), and
//! reconnecting with backoff after a lost connection.

use std::time::{Duration, Instant};

use tracing::warn;
use walkie_client::outbox::Outbox;
use walkie_client::profile::Profile;
use walkie_client::{Client, ClientConfig, ClientError};
use walkie_net::NetError;
use walkie_proto::clip::ClipId;
use walkie_proto::wire::ErrorCode;

use super::unplayed::Unplayed;

/// Pause before reconnecting after a lost connection (doubling up to [`RECONNECT_MAX`]).
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// What exists while connected.
struct Connected {
    outbox: Outbox,
    unplayed: Unplayed,
}

/// The link's state: connected or not, and what to reconnect with. The outbox and played
/// marks stay while the link reconnects after a lost connection (clips recorded meanwhile wait
/// in the outbox); they go when the user disconnects.
#[derive(Default)]
pub(super) struct Link {
    connected: Option<Connected>,
    /// True while the relay is reachable (false while reconnecting).
    online: bool,
    /// The profile to reconnect with after a lost connection.
    profile: Option<Profile>,
    /// When to try again, and the pause after that.
    reconnect: Option<(Instant, Duration)>,
}

impl Link {
    /// Connected with `profile`.
    pub fn connected(&mut self, profile: Profile, outbox: Outbox, unplayed: Unplayed) {
        self.connected = Some(Connected { outbox, unplayed });
        self.online = true;
        self.profile = Some(profile);
        self.reconnect = None;
    }

    /// True while connected.
    pub fn is_connected(&self) -> bool {
        self.online && self.connected.is_some()
    }

    /// The outbox of the user, connected or reconnecting.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.connected.as_ref().map(|c| &c.outbox)
    }

    /// True if `id` waits to be played.
    pub fn is_unplayed(&self, id: &ClipId) -> bool {
        self.connected
            .as_ref()
            .is_some_and(|c| c.unplayed.contains(id))
    }

    /// Every clip waiting to be played.
    pub fn unplayed(&self) -> Vec<ClipId> {
        self.connected
            .as_ref()
            .map(|c| c.unplayed.ids().copied().collect())
            .unwrap_or_default()
    }

    /// Marks a clip unplayed or played, persistently.
    pub fn set_unplayed(&mut self, id: ClipId, unplayed: bool) {
        if let Some(c) = &mut self.connected
            && let Err(e) = c.unplayed.set(id, unplayed)
        {
            warn!("cannot save played marks: {e}");
        }
    }

    /// Disconnected on purpose: no reconnecting.
    pub fn forget(&mut self) {
        self.connected = None;
        self.online = false;
        self.profile = None;
        self.reconnect = None;
    }

    /// Not connected now (a new attempt is starting).
    pub fn drop_connection(&mut self) {
        self.connected = None;
        self.online = false;
    }

    /// The connection was lost: reconnect with backoff, keeping the outbox and played marks.
    pub fn lost(&mut self) {
        self.online = false;
        self.reconnect = Some((Instant::now() + RECONNECT_FIRST, RECONNECT_FIRST));
    }

    /// True while reconnecting after a lost connection.
    pub fn reconnecting(&self) -> bool {
        self.reconnect.is_some()
    }

    /// A connect the user asked for replaces any reconnecting.
    pub fn stop_reconnecting(&mut self) {
        self.reconnect = None;
    }

    /// The profile to reconnect with, when an attempt is due at `now` (the next waits longer).
    pub fn reconnect_due(&mut self, now: Instant) -> Option<Profile> {
        let (at, wait) = self.reconnect?;
        if now < at || self.online {
            return None;
        }
        self.reconnect = Some((now + wait, (wait * 2).min(RECONNECT_MAX)));
        self.profile.clone()
    }
}

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
            format!(
                "Wrong user name or token: the relay at {} refused {} ({}).",
                cfg.relay, cfg.user, r.message
            )
        }
        ClientError::Net(NetError::Untrusted { reason, .. }) if cfg.trust.pin().is_none() => {
            format!(
                "Untrusted certificate: the relay at {} has no certificate for that name from a CA this system trusts ({reason}). Check the address, or give the relay's fingerprint to pin it.",
                cfg.relay
            )
        }
        ClientError::Net(NetError::Untrusted { reason, .. }) => format!(
            "Unknown certificate: the relay at {} is not the one you trust ({reason}). Check the fingerprint that walkie-relay serve prints, or its cert.pem.",
            cfg.relay
        ),
        ClientError::Net(NetError::Connect { reason, .. }) => {
            format!(
                "Cannot reach the relay at {}: {reason}. Is it running, and is the address right?",
                cfg.relay
            )
        }
        ClientError::Resolve(_) => format!("Cannot reach the relay: {e}."),
        other => format!("Cannot connect to {}: {other}.", cfg.relay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_say_what_to_check() {
        let cfg = ClientConfig {
            relay: "h:1".into(),
            user: "ann".into(),
            token: "t".into(),
            trust: walkie_net::Fingerprint([0; 32]).into(),
        };
        let refused = ClientError::Refused(walkie_proto::wire::ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Unauthorized,
            message: "unknown user or wrong token".into(),
        });
        assert!(explain(&refused, &cfg).starts_with("Wrong user name or token"));
        let pin = ClientError::Net(NetError::Untrusted {
            addr: "h:1".into(),
            reason: "the relay's certificate sha256:aa does not match the pinned sha256:bb".into(),
        });
        assert!(explain(&pin, &cfg).starts_with("Unknown certificate"));
        let by_name = ClientConfig {
            trust: walkie_net::Trust::system(),
            ..cfg.clone()
        };
        assert!(explain(&pin, &by_name).starts_with("Untrusted certificate"));
        let gone = ClientError::Net(NetError::Connect {
            addr: "h:1".into(),
            reason: "no answer within 10 s".into(),
        });
        assert!(explain(&gone, &cfg).starts_with("Cannot reach the relay at h:1"));
    }
}
