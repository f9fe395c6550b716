//! Shared test helpers: a real relay on 127.0.0.1:0 with a temp data dir, users and
//! channels, speech samples, the raw-libopus baseline, wide-band PESQ scoring and quantiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use walkie_client::{Client, ClientConfig, Event};

pub mod impair;
pub mod live_path;
use walkie_relay::{self as relay, RelayConfig, RelayHandle, auth};
use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

/// A relay running in this process on loopback.
pub struct TestRelay {
    pub handle: RelayHandle,
    pub data: PathBuf,
    pub store: Arc<SqliteStore>,
}

/// Starts a relay on `127.0.0.1:0` with its data in `data`.
pub async fn start_relay(data: &Path, config: RelayConfig) -> TestRelay {
    let store = Arc::new(SqliteStore::open(data).expect("store opens"));
    let config = RelayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..config
    };
    let handle = relay::start(config, data, store.clone())
        .await
        .expect("relay starts");
    TestRelay {
        handle,
        data: data.to_path_buf(),
        store,
    }
}

/// Starts a relay on `127.0.0.1:0` serving `data` through the fault-injecting store (its
/// disk can be made "full"); users and channels are added to the store underneath.
pub async fn start_faulty_relay(
    data: &Path,
    config: RelayConfig,
) -> (TestRelay, Arc<walkie_store::faulty::FaultyStore>) {
    let store = Arc::new(SqliteStore::open(data).expect("store opens"));
    let faulty = Arc::new(walkie_store::faulty::FaultyStore::new(store.clone()));
    let config = RelayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..config
    };
    let handle = relay::start(config, data, faulty.clone())
        .await
        .expect("relay starts");
    let relay = TestRelay {
        handle,
        data: data.to_path_buf(),
        store,
    };
    (relay, faulty)
}

impl TestRelay {
    /// Adds a user and returns their connection config.
    pub fn add_user(&self, name: &str) -> ClientConfig {
        let token = auth::new_token();
        self.store
            .add_user(name, &auth::hash_token(&token))
            .expect("user added");
        self.config_for(name, &token)
    }

    /// A connection config for `name` with `token`.
    pub fn config_for(&self, name: &str, token: &str) -> ClientConfig {
        ClientConfig {
            relay: self.handle.addr.to_string(),
            user: name.into(),
            token: token.into(),
            trust: self.handle.fingerprint.into(),
        }
    }

    /// Creates a channel.
    pub fn add_channel(&self, name: &str, members: &[&str]) {
        let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        self.store
            .add_channel(name, &members)
            .expect("channel added");
    }

    /// Connects a client.
    pub async fn connect(&self, cfg: &ClientConfig) -> Client {
        Client::connect(cfg).await.expect("client connects")
    }
}

/// A `walkie` command with its own home under `home` and none of this process's environment
/// (no connection settings, SSL_CERT_FILE or SSL_CERT_DIR but what it is given or saved).
pub fn walkie_at_home(home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_walkie"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"));
    cmd
}

/// Path of a committed sample.
pub fn sample_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

/// A sample at 48 kHz mono through walkie's WAV path.
pub fn sample_48k(name: &str) -> Vec<f32> {
    walkie_media::audio::load_wav_48k_mono(&sample_path(name)).expect("sample loads")
}

/// The recorded human voice used for speech over lossy paths: the eight channel-name
/// announcements of Debian's alsa-utils (`/usr/share/sounds/alsa/Front_Left.wav` and the
/// others but `Noise.wav`; 48 kHz mono recordings, 11.4 s together), one after another.
/// Written as one 48 kHz WAV in `dir` for a `wav:` audio source; returns its path and audio.
pub fn recorded_speech(dir: &Path) -> (PathBuf, Vec<f32>) {
    const PARTS: [&str; 8] = [
        "Front_Left",
        "Front_Center",
        "Front_Right",
        "Rear_Left",
        "Rear_Center",
        "Rear_Right",
        "Side_Left",
        "Side_Right",
    ];
    let mut pcm = Vec::new();
    for part in PARTS {
        let path = Path::new("/usr/share/sounds/alsa").join(format!("{part}.wav"));
        let audio = walkie_media::audio::load_wav_48k_mono(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (recorded speech comes from Debian's alsa-utils: bash scripts/install-deps.sh)",
                path.display()
            )
        });
        pcm.extend(audio);
    }
    let path = dir.join("recorded-speech.wav");
    walkie_media::audio::wav::write_wav_mono16(&path, 48_000, &pcm).expect("speech WAV written");
    (path, pcm)
}

/// The same audio straight through the `opus` crate (raw libopus), no walkie code: VOIP,
/// VBR, the given bitrate and complexity, 20 ms frames; decoded with the lookahead dropped.
pub fn raw_libopus(pcm: &[f32], bitrate: i32, complexity: i32) -> Vec<f32> {
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
    enc.set_vbr(true).expect("vbr");
    enc.set_bitrate(opus::Bitrate::Bits(bitrate))
        .expect("bitrate");
    enc.set_complexity(complexity).expect("complexity");
    let lookahead = enc.get_lookahead().expect("lookahead") as usize;
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let mut padded = pcm.to_vec();
    padded.resize(pcm.len().div_ceil(960) * 960 + 960, 0.0);
    let mut out = Vec::with_capacity(padded.len());
    let mut buf = [0f32; 960];
    for frame in padded.chunks(960) {
        let packet = enc.encode_vec_float(frame, 4000).expect("encodes");
        let n = dec.decode_float(&packet, &mut buf, false).expect("decodes");
        out.extend_from_slice(&buf[..n]);
    }
    out.drain(..lookahead.min(out.len()));
    out.truncate(pcm.len());
    out
}

/// The lag (in samples) of `degraded` against `reference` that maximises their
/// cross-correlation, searched within ±`max_lag`.
pub fn best_lag(reference: &[f32], degraded: &[f32], max_lag: usize) -> isize {
    let n = reference.len().min(degraded.len());
    let step = 4; // coarse search over every 4th sample is ample at 48 kHz for speech
    let mut best = (0isize, f64::MIN);
    for lag in -(max_lag as isize)..=(max_lag as isize) {
        let mut acc = 0f64;
        let mut i = 0usize;
        while i < n {
            let j = i as isize + lag;
            if j >= 0 && (j as usize) < degraded.len() {
                acc += f64::from(reference[i]) * f64::from(degraded[j as usize]);
            }
            i += step;
        }
        if acc > best.1 {
            best = (lag, acc);
        }
    }
    best.0
}

/// Shifts `degraded` by `lag` samples (dropping its first `lag` samples, or padding).
pub fn align(degraded: &[f32], lag: isize) -> Vec<f32> {
    if lag >= 0 {
        degraded[(lag as usize).min(degraded.len())..].to_vec()
    } else {
        let mut v = vec![0.0; (-lag) as usize];
        v.extend_from_slice(degraded);
        v
    }
}

fn to_16k_i16(pcm48: &[f32]) -> Vec<i16> {
    walkie_media::audio::resample::from_48k(pcm48, 16_000)
        .expect("resamples")
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

/// Wide-band PESQ (P.862.2 MOS-LQO) of `degraded` against `reference`, both 48 kHz mono,
/// after aligning the delay (±50 ms search) and scoring at 16 kHz.
pub fn pesq_wb(reference: &[f32], degraded: &[f32]) -> f32 {
    let lag = best_lag(reference, degraded, 2400);
    let aligned = align(degraded, lag);
    let n = reference.len().min(aligned.len());
    pesq::pesq_wb(&to_16k_i16(&reference[..n]), &to_16k_i16(&aligned[..n])).expect("pesq scores")
}

/// Runs `fut` with a deadline so a hung test fails instead of blocking CI.
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs} s"))
}

/// A 3-node NATS JetStream cluster on loopback run by `scripts/nats-cluster.sh`, with its own
/// base dir and first ports, so test files that use one do not disturb each other.
pub struct NatsTestCluster {
    pub base_dir: &'static str,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
}

impl NatsTestCluster {
    /// Runs `scripts/nats-cluster.sh ARGS BASE_DIR` with this cluster's ports; its stdout.
    pub fn script(&self, args: &[&str]) -> String {
        self.try_script(args)
            .unwrap_or_else(|e| panic!("scripts/nats-cluster.sh {args:?} failed:\n{e}"))
    }

    /// Runs the script; its stdout, or its stderr if it failed.
    fn try_script(&self, args: &[&str]) -> Result<String, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats-cluster.sh");
        let out = std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .arg(self.base_dir)
            .env("NATS_CLIENT_PORT", self.client_port.to_string())
            .env("NATS_CLUSTER_PORT", self.cluster_port.to_string())
            .env("NATS_MONITOR_PORT", self.monitor_port.to_string())
            // The script stops the cluster once this test process has exited.
            .env("NATS_OWNER_PID", std::process::id().to_string())
            .output()
            .expect("bash runs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts the nodes that are not running and returns the servers (`HOST:PORT`).
    pub fn start(&self) -> Vec<String> {
        let installed = std::process::Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            installed,
            "nats-server is not installed: these tests need it. Install it with scripts/install-deps.sh \
             (or `apt-get install -y nats-server`), then run them again"
        );
        // A fresh cluster once stayed without a healthy meta leader for 30 s on a fresh CI
        // machine (never reproduced; the script now prints each node's answer and log when
        // that happens). Stopping it and starting it once more is what an operator would do.
        let out = match self.try_script(&["start"]) {
            Ok(out) => out,
            Err(first) => {
                eprintln!(
                    "the NATS test cluster did not start; stopping it and trying again:\n{first}"
                );
                let _ = self.try_script(&["stop"]);
                self.script(&["start"])
            }
        };
        let list = out.lines().last().unwrap_or_default();
        let list = list.strip_prefix("nats://").unwrap_or(list);
        list.split(',').map(str::to_string).collect()
    }
}

/// Waits for the first event `pick` takes, skipping others.
pub async fn wait_for<T>(
    client: &mut Client,
    secs: u64,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    within(secs, "an expected event", async {
        loop {
            let e = client.next_event().await.expect("connection stays up");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
}

/// A raw QUIC connection to the relay, authenticated as `cfg`'s user.
pub async fn raw_session(
    cfg: &walkie_client::ClientConfig,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let ep = walkie_net::client_endpoint(cfg.trust.clone(), "127.0.0.1:0".parse().expect("addr"))
        .expect("endpoint");
    let conn = ep
        .connect(cfg.relay.parse().expect("addr"), walkie_net::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let hello = walkie_proto::wire::ClientMsg::Hello {
        user: cfg.user.clone(),
        token: cfg.token.clone(),
        client: "raw".into(),
    };
    walkie_net::write_frame(&mut send, &hello, walkie_proto::wire::MAX_CONTROL_FRAME)
        .await
        .expect("hello");
    let welcome = walkie_net::read_frame::<walkie_proto::wire::ServerMsg>(
        &mut recv,
        walkie_proto::wire::MAX_CONTROL_FRAME,
    )
    .await
    .expect("reads")
    .expect("a message");
    assert!(
        matches!(welcome, walkie_proto::wire::ServerMsg::Welcome { .. }),
        "{welcome:?}"
    );
    (ep, conn, send, recv)
}

/// The `q` quantile (0..=1) of `values`, by nearest rank; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[k]
}
