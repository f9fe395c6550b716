//! `walkie demo`: a relay in-process on loopback with a temporary data dir, two users and a
//! channel; alice sends a bundled speech sample, bob receives it, and the received audio is
//! written as a WAV. Every stage is timed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walkie_client::ops::{self, ListenOptions};
use walkie_client::outbox::Outbox;
use walkie_client::{Client, ClientConfig, ClientError};
use walkie_media::audio::DEMO_SPEECH;
use walkie_media::codec::EncoderConfig;
use walkie_proto::clip::Target;
use walkie_relay::RelayError;
use walkie_relay::demo::DemoRelay;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up the temporary files failed.
    #[error("{path}: {source}")]
    Io {
        /// Which path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A client step failed.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the demo did.
#[derive(Debug)]
pub struct DemoReport {
    /// The relay's address.
    pub relay: std::net::SocketAddr,
    /// Where the received clip was written (WAV and Opus).
    pub received_wav: PathBuf,
    /// The received Ogg Opus file.
    pub received_opus: PathBuf,
    /// Duration of the clip in milliseconds.
    pub duration_ms: u64,
    /// How bob's client shows the two users: display name and login name.
    pub people: Vec<String>,
    /// Stage name and time taken.
    pub stages: Vec<(&'static str, Duration)>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "relay listening on {} (in-process, temporary data dir)",
            self.relay
        )?;
        let [alice, bob] = [0, 1].map(|i| self.people.get(i).map_or("?", String::as_str));
        writeln!(
            f,
            "{alice} sent a {} ms clip to channel crew; {bob} received it",
            self.duration_ms
        )?;
        for (stage, took) in &self.stages {
            writeln!(f, "  {stage:<42} {:>8.1} ms", took.as_secs_f64() * 1000.0)?;
        }
        writeln!(f, "received audio: {}", self.received_wav.display())?;
        writeln!(f, "received Opus:  {}", self.received_opus.display())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the demo; received files go to `out` (default: a new directory under the system
/// temporary directory, kept after the demo).
pub async fn run(out: Option<&Path>) -> Result<DemoReport, DemoError> {
    let mut stages = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name: &'static str, stages: &mut Vec<(&'static str, Duration)>| {
        stages.push((name, clock.elapsed()));
        clock = Instant::now();
    };
    let work = tempfile::Builder::new()
        .prefix("walkie-demo-")
        .tempdir()
        .map_err(io(Path::new("temporary dir")))?;
    let out_dir = match out {
        Some(d) => d.to_path_buf(),
        None => tempfile::Builder::new()
            .prefix("walkie-demo-out-")
            .tempdir()
            .map_err(io(Path::new("temporary dir")))?
            .keep(),
    };
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;

    let relay = DemoRelay::start().await?;
    lap("start relay (store, certificate, users)", &mut stages);

    let cfg = |i: usize| ClientConfig {
        relay: relay.handle.addr.to_string(),
        user: relay.users[i].0.clone(),
        token: relay.users[i].1.clone(),
        trust: relay.handle.fingerprint.into(),
    };
    let mut bob = Client::connect(&cfg(1)).await?;
    lap("bob connects (QUIC + TLS 1.3 + hello)", &mut stages);

    let wav = work.path().join("hello-crew.wav");
    std::fs::write(&wav, DEMO_SPEECH).map_err(io(&wav))?;
    let outbox = Outbox::open(&work.path().join("outbox"))?;
    let (header, clip) = ops::queue_wav(
        &outbox,
        &wav,
        Target::Channel("crew".into()),
        &EncoderConfig::default(),
    )?;
    lap("alice encodes the WAV to Opus (24 kb/s)", &mut stages);

    let report =
        ops::flush_with_retry(&cfg(0), &outbox, Some(header.id), Duration::from_secs(10)).await?;
    if let Some((_, err)) = report.rejected.into_iter().next() {
        return Err(err.into());
    }
    lap("alice connects, uploads, relay stores + acks", &mut stages);

    let opts = ListenOptions {
        save_dir: Some(out_dir.clone()),
        count: Some(1),
        timeout: Some(Duration::from_secs(10)),
    };
    ops::listen(&mut bob, &opts, |_| {}).await?;
    lap("bob receives, decodes, writes WAV + Opus", &mut stages);
    let profiles = bob
        .profiles(relay.users.iter().map(|(u, _)| u.clone()).collect())
        .await?;
    let people = profiles
        .into_iter()
        .map(|p| match p.display {
            Some(d) => format!("{d} (@{})", p.user),
            None => format!("@{}", p.user),
        })
        .collect();
    lap("bob looks up their display names", &mut stages);
    bob.close().await;
    let relay_addr = relay.handle.addr;
    relay.shutdown().await;
    lap("shut down", &mut stages);

    Ok(DemoReport {
        relay: relay_addr,
        received_wav: out_dir.join(format!("{}.wav", header.id)),
        received_opus: out_dir.join(format!("{}.opus", header.id)),
        duration_ms: (clip.samples + 24) / 48,
        people,
        stages,
    })
}
