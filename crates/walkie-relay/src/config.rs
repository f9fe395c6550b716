//! The relay's settings ([`RelayConfig`], with its defaults) and its configuration file (TOML,
//! `walkie-relay --config PATH`): every limit with its documented default. Command-line flags
//! override the file.
//!
//! ```toml
//! listen = "[::]:7300"        # UDP address
//! # metrics = "127.0.0.1:9300"  # TCP address of the metrics and health listener (off unless set)
//! max_clip_secs = 60          # longest clip accepted
//! idle_timeout_secs = 30      # a silent connection is closed
//! stream_idle_secs = 10       # a clip stream with no audio for this long is dropped
//! floor_gap_ms = 2000         # a talker whose audio falls this far behind the clock loses the floor
//! max_connections = 10000     # authenticated connections at once; more get "busy, retry after"
//! max_handshakes = 128        # TLS handshakes in progress at once (CPU-bound admission)
//! max_pending_handshakes = 4096  # connection attempts not yet authenticated; more are refused
//! max_unauthenticated_per_source = 64  # of those, from one IP address
//! retry_above_handshakes = 16  # handshakes in progress above which unvalidated addresses get a QUIC Retry
//! max_sessions_per_user = 16  # sessions one user may have open at once
//! max_streams_per_conn = 32   # clip streams a client may have open at once
//! clips_per_minute = 60       # per user; more get "busy, retry after"
//! bytes_per_second = 65536    # per user upload rate (bursts of 1 MiB); faster senders are slowed down
//! message_bytes_per_second = 524288  # per user upload rate of pictures and doodles (bursts of 16 MiB)
//! recall_window_secs = 120    # how long after sending a sender may recall a message or clip
//! retention_days = 0          # delete clips older than this; 0 keeps them forever
//! quota_mib_per_user = 1024   # audio one user may have stored; more is refused (quota-exceeded); 0: no quota
//! busy_retry_ms = 1000        # the retry delay suggested to refused clients
//! open_signup = false         # anyone who can reach the relay may make an account (no invite)
//! signups_per_source_per_hour = 20  # sign-up attempts (and wrong invite codes) from one IP address
//! channel_create = "anyone"   # who may make channels: "anyone" or "admins" (walkie-relay channel add)
//! direct_from = "anyone"      # who may send a user direct clips until they choose: "anyone" or "contacts"
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use walkie_proto::people::DirectFrom;
use walkie_proto::upload::UploadLimits;

use crate::people::ChannelCreate;

/// Relay settings, with the defaults documented on each field.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// UDP address to listen on (default `[::]:7300`).
    pub listen: SocketAddr,
    /// TCP address of the operators' HTTP listener (`/metrics`, `/healthz`, `/readyz`);
    /// none by default. Meant for loopback or a private network.
    pub metrics: Option<SocketAddr>,
    /// The certificate the relay presents (default: its own self-signed one, pinned).
    pub cert: crate::tls::CertSource,
    /// How often certificate files are checked for a renewal (default 30 s).
    pub cert_check: Duration,
    /// Longest clip accepted, in milliseconds (default 60 000, like WeChat).
    pub max_clip_ms: u32,
    /// A connection silent this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// A clip stream with no frame for this long is aborted (default 10 s).
    pub stream_idle: Duration,
    /// The floor follows the audio: a channel talker whose audio falls this far behind the
    /// time since the floor was granted loses it, and the clip ends there (default 2 s).
    pub floor_gap: Duration,
    /// Time allowed for the hello after the handshake (default 5 s).
    pub hello_timeout: Duration,
    /// Most unidirectional streams a client may have open at once (default 32).
    pub max_streams_per_conn: u32,
    /// Frames queued per live recipient before its live stream is dropped (default 256,
    /// about 5 s of audio); the recipient still gets the stored clip from its inbox.
    pub live_queue: usize,
    /// Authenticated sessions at once; more are told "busy, retry after" (default 10 000).
    /// Connections that have not authenticated do not count (they have caps of their own).
    pub max_connections: usize,
    /// TLS handshakes in progress at once (default 128): handshakes are CPU-bound, so this
    /// decides how a connection storm is absorbed.
    pub max_handshakes: usize,
    /// Connection attempts not yet authenticated (in a handshake, waiting for one, or before
    /// their hello); beyond it they are refused at once and the client retries (default 4096).
    pub max_pending_handshakes: usize,
    /// Of those, from one IP address (default 64): one source cannot fill the relay.
    pub max_unauthenticated_per_source: usize,
    /// With this many handshakes in progress, an attempt from an address QUIC has not
    /// validated is answered with a Retry first (default 16), so floods of bare or spoofed
    /// Initial packets cost no state.
    pub retry_above_handshakes: usize,
    /// Sessions one user may have open at once (default 16): one user's devices or scripts
    /// cannot take every connection.
    pub max_sessions_per_user: usize,
    /// Clips one user may send per minute (default 60).
    pub clips_per_minute: u32,
    /// Upload bytes per second per user, with bursts of 1 MiB (default 64 KiB/s, eight
    /// times Opus's highest bitrate); faster senders are slowed down, not refused.
    pub bytes_per_second: u64,
    /// Per-user upload rate of messages (pictures, doodles, texts) in bytes per second, after
    /// a burst of 16 MiB (so a photo goes at once); faster senders are slowed down.
    pub message_bytes_per_second: u64,
    /// How long after sending its sender may recall a message or clip.
    pub recall_window: Duration,
    /// Clips older than this are deleted (default: kept forever).
    pub retention: Option<Duration>,
    /// Bytes of audio one user may have stored (default 1 GiB, about 90 hours at 24 kb/s);
    /// a clip sent beyond it is refused with `quota-exceeded`. `None`: no quota.
    pub quota_bytes_per_user: Option<u64>,
    /// The retry delay suggested with a "busy" refusal (default 1000 ms).
    pub busy_retry_ms: u32,
    /// Whether anyone who can reach the relay may make an account without an invite
    /// (default: no, invite links only).
    pub open_signup: bool,
    /// Sign-up attempts from one IP address per hour, wrong invite codes included (default 20).
    pub signups_per_source_per_hour: u32,
    /// Who may make channels (default: every user).
    pub channel_create: ChannelCreate,
    /// Who may send a user direct clips until the user chooses (default: anyone, as before
    /// contacts existed).
    pub direct_from: DirectFrom,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0u16; 8], 7300)),
            metrics: None,
            cert: crate::tls::CertSource::SelfSigned,
            cert_check: crate::tls::FILES_CHECK,
            max_clip_ms: 60_000,
            idle_timeout: Duration::from_secs(30),
            stream_idle: Duration::from_secs(10),
            floor_gap: walkie_proto::upload::DEFAULT_FLOOR_GAP,
            hello_timeout: Duration::from_secs(5),
            max_streams_per_conn: 32,
            live_queue: 256,
            max_connections: 10_000,
            max_handshakes: 128,
            max_pending_handshakes: 4096,
            max_unauthenticated_per_source: 64,
            retry_above_handshakes: 16,
            max_sessions_per_user: 16,
            clips_per_minute: 60,
            bytes_per_second: 64 * 1024,
            message_bytes_per_second: 512 * 1024,
            recall_window: Duration::from_secs(120),
            retention: None,
            quota_bytes_per_user: Some(1024 * 1024 * 1024),
            busy_retry_ms: 1000,
            open_signup: false,
            signups_per_source_per_hour: 20,
            channel_create: ChannelCreate::Anyone,
            direct_from: DirectFrom::Anyone,
        }
    }
}

impl RelayConfig {
    /// The limits each upload is held to.
    pub fn upload_limits(&self) -> UploadLimits {
        let mut limits =
            UploadLimits::new(self.max_clip_ms, self.stream_idle, self.clips_per_minute);
        limits.floor_gap = self.floor_gap;
        limits
    }

    /// How long a talker may hold a floor or a clip stream: the maximum clip plus a grace.
    pub fn max_hold(&self) -> Duration {
        self.upload_limits().max_hold
    }
}

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, from the TOML parser.
        message: String,
    },
}

/// The file's settings; absent keys keep [`RelayConfig::default`]'s values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    listen: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    max_clip_secs: Option<u32>,
    idle_timeout_secs: Option<u64>,
    stream_idle_secs: Option<u64>,
    floor_gap_ms: Option<u64>,
    max_connections: Option<usize>,
    max_handshakes: Option<usize>,
    max_pending_handshakes: Option<usize>,
    max_unauthenticated_per_source: Option<usize>,
    retry_above_handshakes: Option<usize>,
    max_sessions_per_user: Option<usize>,
    max_streams_per_conn: Option<u32>,
    clips_per_minute: Option<u32>,
    bytes_per_second: Option<u64>,
    message_bytes_per_second: Option<u64>,
    recall_window_secs: Option<u64>,
    retention_days: Option<u32>,
    quota_mib_per_user: Option<u64>,
    busy_retry_ms: Option<u32>,
    open_signup: Option<bool>,
    signups_per_source_per_hour: Option<u32>,
    channel_create: Option<ChannelCreate>,
    direct_from: Option<DirectFromSetting>,
}

/// `direct_from` as the file spells it.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectFromSetting {
    Anyone,
    Contacts,
}

impl RelayFile {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<RelayFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Applies the file's settings on top of `base`.
    pub fn apply(&self, base: RelayConfig) -> RelayConfig {
        let secs = Duration::from_secs;
        RelayConfig {
            listen: self.listen.unwrap_or(base.listen),
            metrics: self.metrics.or(base.metrics),
            cert: base.cert,
            cert_check: base.cert_check,
            max_clip_ms: self
                .max_clip_secs
                .map_or(base.max_clip_ms, |s| s.saturating_mul(1000)),
            idle_timeout: self.idle_timeout_secs.map_or(base.idle_timeout, secs),
            stream_idle: self.stream_idle_secs.map_or(base.stream_idle, secs),
            floor_gap: self
                .floor_gap_ms
                .map_or(base.floor_gap, Duration::from_millis),
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_handshakes: self.max_handshakes.unwrap_or(base.max_handshakes),
            max_pending_handshakes: self
                .max_pending_handshakes
                .unwrap_or(base.max_pending_handshakes),
            max_unauthenticated_per_source: self
                .max_unauthenticated_per_source
                .unwrap_or(base.max_unauthenticated_per_source),
            retry_above_handshakes: self
                .retry_above_handshakes
                .unwrap_or(base.retry_above_handshakes),
            max_sessions_per_user: self
                .max_sessions_per_user
                .unwrap_or(base.max_sessions_per_user),
            max_streams_per_conn: self
                .max_streams_per_conn
                .unwrap_or(base.max_streams_per_conn),
            clips_per_minute: self.clips_per_minute.unwrap_or(base.clips_per_minute),
            bytes_per_second: self.bytes_per_second.unwrap_or(base.bytes_per_second),
            message_bytes_per_second: self
                .message_bytes_per_second
                .unwrap_or(base.message_bytes_per_second),
            recall_window: self.recall_window_secs.map_or(base.recall_window, secs),
            retention: self.retention_days.map_or(base.retention, |d| {
                (d > 0).then(|| secs(u64::from(d) * 86_400))
            }),
            quota_bytes_per_user: self
                .quota_mib_per_user
                .map_or(base.quota_bytes_per_user, |m| {
                    (m > 0).then(|| m.saturating_mul(1024 * 1024))
                }),
            busy_retry_ms: self.busy_retry_ms.unwrap_or(base.busy_retry_ms),
            open_signup: self.open_signup.unwrap_or(base.open_signup),
            signups_per_source_per_hour: self
                .signups_per_source_per_hour
                .unwrap_or(base.signups_per_source_per_hour),
            channel_create: self.channel_create.unwrap_or(base.channel_create),
            direct_from: match self.direct_from {
                Some(DirectFromSetting::Anyone) => DirectFrom::Anyone,
                Some(DirectFromSetting::Contacts) => DirectFrom::Contacts,
                None => base.direct_from,
            },
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
            .collect();
        let file: RelayFile = toml::from_str(&example).expect("the documented example parses");
        let from_file = file.apply(RelayConfig::default());
        let defaults = RelayConfig::default();
        assert_eq!(
            format!("{from_file:?}"),
            format!("{defaults:?}"),
            "the doc's values are the defaults"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "max_conections = 5\n").expect("write");
        let e = RelayFile::load(&path).expect_err("typo refused");
        assert!(e.to_string().contains("max_conections"), "{e}");
        std::fs::write(&path, "max_clip_secs = \"long\"\n").expect("write");
        assert!(RelayFile::load(&path).is_err());
        std::fs::write(&path, "max_clip_secs = 5\nretention_days = 7\n").expect("write");
        let cfg = RelayFile::load(&path)
            .expect("parses")
            .apply(RelayConfig::default());
        assert_eq!(cfg.max_clip_ms, 5000);
        assert_eq!(cfg.retention, Some(Duration::from_secs(7 * 86_400)));
    }
}
