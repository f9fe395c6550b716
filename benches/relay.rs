//! Relay load benchmark: a real `walkie-relay serve` in a child process on 127.0.0.1 and a
//! load generator in this process that multiplexes many QUIC connections over a few client
//! endpoints.
//!
//! * fan-out: one talker (the real [`Client`] API, paced at 20 ms per packet) streams a 10 s
//!   clip live to N listeners of one channel; each listener is a bare connection (hello on
//!   a control stream, then the relay's unidirectional streams read with
//!   `walkie_net::read_frame`) that records when each packet index arrives. Delay = receive
//!   instant − the talker's send instant of the same index (one clock: same process).
//! * ingest: M talkers (real clients) on M channels send 5 s clips back to back, each as soon
//!   as the previous one is acknowledged (durable): clips/s and ack latency (end marker
//!   written → `ClipStored`).
//! * idle: K authenticated connections held past the idle timeout (keep-alives only), then
//!   pinged: how many hold, and the relay's RSS growth per connection.
//! * fan-out baseline: at each N, right after walkie's fan-out, the same through quinn alone
//!   (this binary re-run as a child server, `--raw-quinn-server`, on walkie's endpoint
//!   settings), by stream and by datagram: walkie/raw delay and CPU per delivered packet.
//! * rush: K members of channels of S members (S = 10, 1,000, 2,000) connect at once: relay
//!   CPU per connect against S, and the control messages the members receive (presence).
//!
//! Relay CPU comes from `/proc/PID/stat` (utime+stime) and RSS from `/proc/PID/status`, so
//! the load generator's own work is not counted. `cargo bench --bench relay` runs the full
//! plan (about 4 minutes); `cargo bench --bench relay -- fanout` runs the sections whose
//! name contains the filter; without `--bench` (as `cargo test --benches` runs it) a tiny
//! smoke plan checks that everything works. Results: markdown on stdout and in
//! `target/walkie-bench/relay.md`, the chart in `target/walkie-bench/fanout-delay.png`.
//! Environment overrides: `WALKIE_BENCH_FANOUT=10,100,1000`, `WALKIE_BENCH_INGEST=1,10,100`,
//! `WALKIE_BENCH_IDLE=1000,10000`, `WALKIE_BENCH_RUSH=10,1000,2000`, `WALKIE_BENCH_RUSH_K=2000`,
//! `WALKIE_BENCH_HOLD_SECS=35`, `WALKIE_BENCH_OUT=DIR`, `WALKIE_BENCH_RELAY=PATH` and
//! `WALKIE_BENCH_ALPN=walkie/2` (run another build of the relay, for a before/after),
//! `WALKIE_BENCH_SCHEMA=4` (its data dir at schema 4, from before clip segments),
//! `WALKIE_BENCH_NICE=-10`: the bench and the relay it starts run at this nice value (root
//! only; `0` leaves it), so compile jobs sharing the machine do not set the delays;
//! `WALKIE_BENCH_RELAY_CPUS=0`: the relay (and the raw-quinn server) run on these CPUs only
//! (`taskset -c` syntax), for scaling from one core to two.

/// Where the reports go.
#[path = "support/out.rs"]
mod out;

/// Shared by the benchmarks; each draws one kind of chart.
#[allow(dead_code)]
#[path = "support/chart.rs"]
mod chart;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use walkie_client::{Client, ClientConfig};
use walkie_media::codec::{self, EncoderConfig};
use walkie_net::{self, Fingerprint, read_frame, write_frame};
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::wire::{ClientMsg, MAX_CONTROL_FRAME, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use walkie_relay::auth;
use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

/// Connections per client endpoint (one UDP socket and one driver task each).
const CONNS_PER_ENDPOINT: usize = 100;
/// Handshakes the load generator keeps in flight.
const CONNECT_CONCURRENCY: usize = 64;
/// Users the idle connections log in as (each holds several sessions).
const IDLE_USERS: usize = 1_000;
/// Control-stream messages (and their bytes) every bare session received, in all.
static CONTROL_MSGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static CONTROL_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What to run.
#[derive(Clone, Debug)]
struct Plan {
    fanout: Vec<usize>,
    ingest: Vec<usize>,
    idle: Vec<usize>,
    /// Channel sizes of the rush, and how many members connect.
    rush: Vec<usize>,
    rush_k: usize,
    hold: Duration,
    fanout_clip_s: usize,
    ingest_clip_s: usize,
    ingest_for: Duration,
    filter: Option<String>,
}

impl Plan {
    fn from_env(full: bool, filter: Option<String>) -> Plan {
        let list = |var: &str, default: &[usize]| -> Vec<usize> {
            std::env::var(var)
                .ok()
                .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_else(|| default.to_vec())
        };
        let secs = |var: &str, default: u64| {
            Duration::from_secs(
                std::env::var(var)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default),
            )
        };
        if full {
            Plan {
                fanout: list("WALKIE_BENCH_FANOUT", &[10, 100, 1000, 2000]),
                ingest: list("WALKIE_BENCH_INGEST", &[1, 10, 100]),
                idle: list("WALKIE_BENCH_IDLE", &[1000, 10_000]),
                rush: list("WALKIE_BENCH_RUSH", &[10, 1000, 2000]),
                rush_k: list("WALKIE_BENCH_RUSH_K", &[2000])
                    .first()
                    .copied()
                    .unwrap_or(2000),
                hold: secs("WALKIE_BENCH_HOLD_SECS", 35),
                fanout_clip_s: 10,
                ingest_clip_s: 5,
                ingest_for: Duration::from_secs(10),
                filter,
            }
        } else {
            Plan {
                fanout: vec![3],
                ingest: vec![2],
                idle: vec![10],
                rush: vec![2, 6],
                rush_k: 6,
                hold: Duration::from_secs(1),
                fanout_clip_s: 1,
                ingest_clip_s: 1,
                ingest_for: Duration::from_secs(1),
                filter,
            }
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| section.contains(f))
    }
}

// ---------------------------------------------------------------------------------------
// The relay process.

/// Clock ticks per second of /proc/PID/stat.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime+stime of a process in seconds.
fn cpu_secs(pid: &str, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / ticks
}

/// Resident set size of a process in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The relay binary to run: this build's, or `WALKIE_BENCH_RELAY` (another build of walkie,
/// to compare before and after in one sitting; `WALKIE_BENCH_ALPN` then names its protocol).
fn relay_binary() -> PathBuf {
    std::env::var_os("WALKIE_BENCH_RELAY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_walkie-relay")),
        PathBuf::from,
    )
}

struct Relay {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    pin: Fingerprint,
    pid: String,
    ticks: f64,
}

impl Relay {
    /// Starts `walkie-relay serve` on 127.0.0.1:0 with `data_dir` and the bench config file.
    fn start(data_dir: &Path, config: Option<&Path>, log: &Path, ticks: f64) -> Relay {
        let mut cmd = Command::new(relay_binary());
        cmd.arg("--data-dir").arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        Relay::spawn(cmd, log, ticks)
    }

    /// Starts this bench as the raw-quinn fan-out server (see [`raw::serve`]) with its
    /// certificate in `dir`.
    fn start_raw(dir: &Path, log: &Path, ticks: f64) -> Relay {
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
        cmd.arg(raw::SERVE_ARG).arg(dir);
        Relay::spawn(cmd, log, ticks)
    }

    /// Runs `cmd` and reads the `listening on` and `fingerprint` lines it prints.
    fn spawn(mut cmd: Command, log: &Path, ticks: f64) -> Relay {
        cmd.env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("relay log file"));
        let mut child = cmd.spawn().expect("walkie-relay starts");
        let mut out = BufReader::new(child.stdout.take().expect("relay stdout"));
        let (mut addr, mut pin) = (None, None);
        let mut line = String::new();
        while addr.is_none() || pin.is_none() {
            line.clear();
            if out.read_line(&mut line).expect("relay stdout readable") == 0 {
                let _ = child.kill();
                panic!(
                    "walkie-relay exited before listening; see {}",
                    log.display()
                );
            }
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                addr = Some(a.parse::<SocketAddr>().expect("relay address"));
            } else if let Some(f) = line.trim().strip_prefix("fingerprint ") {
                pin = Some(Fingerprint::parse(f).expect("relay fingerprint"));
            }
        }
        let pid = child.id().to_string();
        if let Some(cpus) = relay_cpus() {
            // Every thread the server has by now (it listens, so its runtime and commit
            // thread run); threads it starts later inherit the mask from their parent.
            let pinned = Command::new("taskset")
                .args(["-a", "-p", "-c", &cpus, &pid])
                .stdout(Stdio::null())
                .status();
            if !pinned.is_ok_and(|s| s.success()) {
                let _ = child.kill();
                panic!("cannot pin the server to CPUs {cpus} with taskset (util-linux)");
            }
        }
        Relay {
            child,
            _stdout: out,
            addr: addr.expect("address"),
            pin: pin.expect("pin"),
            pid,
            ticks,
        }
    }

    fn cpu(&self) -> f64 {
        cpu_secs(&self.pid, self.ticks)
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(&self.pid)
    }

    /// Waits until the relay uses under 5% of a core over two 250 ms windows (at most `max`).
    async fn settle(&self, max: Duration) {
        let end = Instant::now() + max;
        let mut quiet = 0;
        while quiet < 2 && Instant::now() < end {
            let c0 = self.cpu();
            sleep(Duration::from_millis(250)).await;
            quiet = if self.cpu() - c0 < 0.0125 {
                quiet + 1
            } else {
                0
            };
        }
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid]).status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn self_cpu(ticks: f64) -> f64 {
    cpu_secs("self", ticks)
}

/// Datagrams the kernel dropped because the receive buffer of a UDP socket bound to one of
/// `ports` was full (the `drops` column of /proc/net/udp): on loopback, the only loss.
fn udp_drops(ports: &[u16]) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            ports
                .contains(&port)
                .then(|| f.last()?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// Receive-buffer drops of the relay's socket and of the load generator's sockets (when known).
#[derive(Clone, Copy, Default)]
struct Drops {
    relay: u64,
    load_gen: Option<u64>,
}

impl Drops {
    fn read(relay: &Relay, load_gen: Option<&[u16]>) -> Drops {
        Drops {
            relay: udp_drops(&[relay.addr.port()]),
            load_gen: load_gen.map(udp_drops),
        }
    }

    fn since(self, before: Drops) -> Drops {
        Drops {
            relay: self.relay - before.relay,
            load_gen: self.load_gen.zip(before.load_gen).map(|(a, b)| a - b),
        }
    }
}

impl std::fmt::Display for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.load_gen {
            Some(g) => write!(f, "{} / {}", self.relay, g),
            None => write!(f, "{} / -", self.relay),
        }
    }
}

/// Local ports of the load generator's endpoints.
fn ports(eps: &[quinn::Endpoint]) -> Vec<u16> {
    eps.iter()
        .filter_map(|e| e.local_addr().ok())
        .map(|a| a.port())
        .collect()
}

/// The machine's 1-minute load average (other work on the machine shows here).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// Bare sessions: the control stream only, with a task draining what the relay says on it.

struct Session {
    conn: quinn::Connection,
    send: quinn::SendStream,
    pongs: mpsc::UnboundedReceiver<u64>,
}

impl Session {
    async fn connect(
        ep: quinn::Endpoint,
        addr: SocketAddr,
        user: String,
        token: String,
    ) -> Result<Session, String> {
        let connecting = ep
            .connect(addr, walkie_net::SERVER_NAME)
            .map_err(|e| format!("connect: {e}"))?;
        let conn = timeout(Duration::from_secs(30), connecting)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("open control: {e}"))?;
        let hello = ClientMsg::Hello {
            user,
            token,
            client: "walkie-bench".into(),
        };
        write_frame(&mut send, &hello, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        match timeout(
            Duration::from_secs(30),
            read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME),
        )
        .await
        {
            Ok(Ok(Some(ServerMsg::Welcome { .. }))) => {}
            Ok(Ok(Some(ServerMsg::Error(e)))) => {
                return Err(format!("refused: {} ({})", e.message, e.code.name()));
            }
            Ok(Ok(other)) => return Err(format!("unexpected reply to hello: {other:?}")),
            Ok(Err(e)) => return Err(format!("welcome: {e}")),
            Err(_) => return Err("no welcome within 30 s".into()),
        }
        let (tx, pongs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Raw frames, so that a relay of another protocol version (WALKIE_BENCH_RELAY) is
            // drained and counted too; only pongs need decoding.
            let mut len = [0u8; 4];
            while recv.read_exact(&mut len).await.is_ok() {
                let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
                if recv.read_exact(&mut frame).await.is_err() {
                    break;
                }
                CONTROL_MSGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                CONTROL_BYTES
                    .fetch_add(frame.len() as u64 + 4, std::sync::atomic::Ordering::Relaxed);
                if let Ok(ServerMsg::Pong { nonce }) = postcard::from_bytes::<ServerMsg>(&frame) {
                    let _ = tx.send(nonce);
                }
            }
        });
        Ok(Session { conn, send, pongs })
    }

    /// A ping answered within `wait`. The relay handles control messages in order, so a pong
    /// also means every earlier message (an ack) was processed.
    async fn ping(&mut self, nonce: u64, wait: Duration) -> bool {
        if write_frame(
            &mut self.send,
            &ClientMsg::Ping { nonce },
            MAX_CONTROL_FRAME,
        )
        .await
        .is_err()
        {
            return false;
        }
        let end = Instant::now() + wait;
        loop {
            match timeout_at(end, self.pongs.recv()).await {
                Ok(Some(n)) if n == nonce => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    }

    fn close(&self) {
        self.conn.close(0u32.into(), b"bench done");
    }
}

fn endpoints(pin: Fingerprint, conns: usize) -> Vec<quinn::Endpoint> {
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("bind address");
    (0..conns.div_ceil(CONNS_PER_ENDPOINT).max(1))
        .map(|_| {
            let alpn = std::env::var("WALKIE_BENCH_ALPN")
                .unwrap_or_else(|_| String::from_utf8_lossy(walkie_proto::wire::ALPN).into_owned());
            walkie_net::client_endpoint_with_alpn(pin, bind, alpn.as_bytes())
                .expect("client endpoint")
        })
        .collect()
}

/// Connects one session per user name, `CONNECT_CONCURRENCY` handshakes at a time. Returns
/// the sessions in order (errors where a connection failed) and the time it took.
async fn connect_many(
    eps: &[quinn::Endpoint],
    addr: SocketAddr,
    users: Vec<String>,
    token: &str,
) -> (Vec<Result<Session, String>>, Duration) {
    let (eps, users, token) = (eps.to_vec(), Arc::new(users), token.to_string());
    gated(users.len(), move |i| {
        Session::connect(
            eps[i % eps.len()].clone(),
            addr,
            users[i].clone(),
            token.clone(),
        )
    })
    .await
}

/// Runs `connect(i)` for each i below `n`, [`CONNECT_CONCURRENCY`] at a time. Returns the
/// results in order and the time it took.
async fn gated<T, F>(n: usize, connect: impl Fn(usize) -> F) -> (Vec<T>, Duration)
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (gate, connecting) = (gate.clone(), connect(i));
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (i, connecting.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(r) = tasks.join_next().await {
        let (i, t) = r.expect("connect task");
        out[i] = Some(t);
    }
    (
        out.into_iter()
            .map(|t| t.expect("every slot filled"))
            .collect(),
        start.elapsed(),
    )
}

/// Each packet's delay in ms (arrival minus the talker's send instant), for the packets that
/// arrived.
fn delays_ms(arrived: &[Option<Instant>], sent: &[Instant]) -> Vec<f64> {
    arrived
        .iter()
        .zip(sent)
        .filter_map(|(got, sent)| {
            got.map(|g| g.saturating_duration_since(*sent).as_secs_f64() * 1e3)
        })
        .collect()
}

fn tally_errors<'a>(errors: impl Iterator<Item = &'a String>) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for e in errors {
        *by.entry(e.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(e, n)| format!("{n}× {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn close_all(sessions: impl IntoIterator<Item = Session>, eps: &[quinn::Endpoint]) {
    for s in sessions {
        s.close();
    }
    for ep in eps {
        let _ = timeout(Duration::from_secs(3), ep.wait_idle()).await;
    }
}

// ---------------------------------------------------------------------------------------
// Statistics.

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

// ---------------------------------------------------------------------------------------
// Fixtures.

/// `secs` seconds of speech from samples/ as Opus packets (walkie's default settings).
fn speech_clip(secs: usize) -> (CodecParams, Vec<Vec<u8>>, u64) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("samples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    names.sort();
    let speech: Vec<f32> = names
        .iter()
        .flat_map(|p| walkie_media::audio::load_wav_48k_mono(p).expect("sample loads"))
        .collect();
    let pcm: Vec<f32> = speech.iter().copied().cycle().take(secs * 48_000).collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    (clip.params, clip.packets, clip.samples)
}

struct Setup {
    _root: tempfile::TempDir,
    data: PathBuf,
    config: Option<PathBuf>,
    logs: PathBuf,
    token: String,
    ticks: f64,
}

/// With `WALKIE_BENCH_SCHEMA=4`, takes the fresh data dir back to schema 4 (before clip
/// segments) for a relay built before them: it holds no clip yet, so dropping the one column
/// added since is the whole difference.
fn older_schema(data: &std::path::Path) {
    let Some(want) = std::env::var("WALKIE_BENCH_SCHEMA").ok() else {
        return;
    };
    assert_eq!(want, "4", "WALKIE_BENCH_SCHEMA: only 4 is known");
    let db = rusqlite::Connection::open(data.join("walkie.db")).expect("open walkie.db");
    db.execute_batch("ALTER TABLE clips DROP COLUMN audio_at; PRAGMA user_version = 4;")
        .expect("back to schema 4");
}

impl Setup {
    /// Users: `talker`, `l0..` (listeners, in channels `fan{N}`), `t0..` (ingest talkers, each
    /// in `in{i}` with the offline user `offline`), `i0..` (idle, in no channel). One token for all.
    fn new(plan: &Plan) -> Setup {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("relay");
        let logs = root.path().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let token = auth::new_token();
        let hash = auth::hash_token(&token);
        let t = std::time::Instant::now();
        let store = SqliteStore::open(&data).expect("store opens");
        let listeners = plan.fanout.iter().copied().max().unwrap_or(0);
        let talkers = plan.ingest.iter().copied().max().unwrap_or(0);
        let idle = plan.idle.iter().copied().max().unwrap_or(0).min(IDLE_USERS);
        let mut users = vec!["talker".to_string(), "offline".to_string()];
        users.extend((0..listeners).map(|i| format!("l{i}")));
        users.extend((0..talkers).map(|i| format!("t{i}")));
        users.extend((0..idle).map(|i| format!("i{i}")));
        for &size in &plan.rush {
            users.extend((0..plan.rush_k).map(|i| format!("r{size}-{i}")));
        }
        for u in &users {
            store.add_user(u, &hash).expect("add user");
        }
        // The rush: for each channel size S, rush_k users of their own in channels of S.
        for &size in &plan.rush {
            let names: Vec<String> = (0..plan.rush_k).map(|i| format!("r{size}-{i}")).collect();
            for (j, group) in names.chunks(size.max(1)).enumerate() {
                store
                    .add_channel(&format!("rush{size}-{j}"), group)
                    .expect("add channel");
            }
        }
        for &n in &plan.fanout {
            let mut members = vec!["talker".to_string()];
            members.extend((0..n).map(|i| format!("l{i}")));
            store
                .add_channel(&format!("fan{n}"), &members)
                .expect("add channel");
        }
        for i in 0..talkers {
            store
                .add_channel(&format!("in{i}"), &[format!("t{i}"), "offline".into()])
                .expect("add channel");
        }
        drop(store);
        older_schema(&data);
        eprintln!(
            "setup: {} users in {:.1} s",
            users.len(),
            t.elapsed().as_secs_f64()
        );
        // Lift the per-user rate limits, quotas and connection caps (every bench client comes from
        // 127.0.0.1): this measures capacity, not policy.
        let config = root.path().join("relay.toml");
        std::fs::write(
            &config,
            "max_connections = 50000\nclips_per_minute = 1000000\nbytes_per_second = 1073741824\nmax_streams_per_conn = 64\n\
             max_unauthenticated_per_source = 100000\nretry_above_handshakes = 100000\nmax_sessions_per_user = 100000\nquota_mib_per_user = 0\n",
        )
        .expect("config file");
        let help = Command::new(relay_binary())
            .arg("--help")
            .output()
            .expect("walkie-relay --help");
        let config = if String::from_utf8_lossy(&help.stdout).contains("--config") {
            Some(config)
        } else {
            eprintln!("note: this walkie-relay has no --config; running with its default limits");
            None
        };
        Setup {
            data,
            config,
            logs,
            token,
            ticks: clock_ticks(),
            _root: root,
        }
    }

    fn relay(&self, name: &str) -> Relay {
        Relay::start(
            &self.data,
            self.config.as_deref(),
            &self.logs.join(format!("{name}.log")),
            self.ticks,
        )
    }

    fn client_config(&self, relay: &Relay, user: &str) -> ClientConfig {
        ClientConfig {
            relay: relay.addr.to_string(),
            user: user.into(),
            token: self.token.clone(),
            trust: relay.pin.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fan-out.

/// What one listener heard.
struct Heard {
    at: Vec<Option<Instant>>,
    ended: bool,
    acked: bool,
}

async fn listen(
    mut s: Session,
    clip: ClipId,
    packets: usize,
    done: mpsc::UnboundedSender<()>,
    deadline: Instant,
) -> (Session, Heard) {
    let mut heard = Heard {
        at: vec![None; packets],
        ended: false,
        acked: false,
    };
    loop {
        let Ok(Ok(mut recv)) = timeout_at(deadline, s.conn.accept_uni()).await else {
            break;
        };
        match timeout_at(
            deadline,
            read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME),
        )
        .await
        {
            Ok(Ok(Some(StreamFrame::Deliver(h)))) if h.id == clip => {
                let mut i = 0;
                while let Ok(Ok(Some(frame))) = timeout_at(
                    deadline,
                    read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME),
                )
                .await
                {
                    match frame {
                        StreamFrame::Packet(_) => {
                            if let Some(slot) = heard.at.get_mut(i) {
                                *slot = Some(Instant::now());
                            }
                            i += 1;
                        }
                        StreamFrame::End { .. } => {
                            heard.ended = true;
                            break;
                        }
                        _ => break,
                    }
                }
                break;
            }
            Ok(Ok(Some(StreamFrame::Deliver(h)))) => {
                // A clip from an earlier run still in this user's inbox: take it and ack it.
                while let Ok(Ok(Some(_))) = timeout_at(
                    deadline,
                    read_frame::<StreamFrame>(&mut recv, MAX_STREAM_FRAME),
                )
                .await
                {}
                let _ =
                    write_frame(&mut s.send, &ClientMsg::Ack { id: h.id }, MAX_CONTROL_FRAME).await;
            }
            _ => {}
        }
    }
    let _ = done.send(());
    if heard.ended
        && write_frame(&mut s.send, &ClientMsg::Ack { id: clip }, MAX_CONTROL_FRAME)
            .await
            .is_ok()
    {
        heard.acked = s.ping(1, Duration::from_secs(60)).await;
    }
    (s, heard)
}

struct FanoutRow {
    n: usize,
    connected: usize,
    connect_s: f64,
    connect_cpu_s: f64,
    load: f64,
    udp_drops: Drops,
    packets: usize,
    complete: usize,
    lost: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    worst_listener_p99: f64,
    median_listener_p99: f64,
    relay_cpu_s: f64,
    audio_s: f64,
    gen_cpu_s: f64,
    talker_ack_ms: f64,
    acks_s: f64,
    acked: usize,
    errors: String,
}

async fn fanout(setup: &Setup, n: usize, clip_s: usize) -> FanoutRow {
    let (params, packets, samples) = speech_clip(clip_s);
    let npk = packets.len();
    let relay = setup.relay(&format!("fanout-{n}"));
    let load = loadavg();
    let cpu_start = relay.cpu();
    let eps = endpoints(relay.pin, n);
    let users = (0..n).map(|i| format!("l{i}")).collect();
    let (sessions, connect) = connect_many(&eps, relay.addr, users, &setup.token).await;
    let errors = tally_errors(sessions.iter().filter_map(|s| s.as_ref().err()));
    let sessions: Vec<Session> = sessions.into_iter().filter_map(Result::ok).collect();
    let connected = sessions.len();
    let talker = Client::connect(&setup.client_config(&relay, "talker"))
        .await
        .expect("talker connects");
    relay.settle(Duration::from_secs(30)).await;
    let connect_cpu_s = relay.cpu() - cpu_start;

    let clip = ClipId::random();
    let header = ClipHeader {
        id: clip,
        to: Target::Channel(format!("fan{n}")),
        started_at_ms: now_ms(),
        codec: params,
    };
    let deadline = Instant::now() + Duration::from_secs(clip_s as u64 + 60);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for s in sessions {
        tasks.spawn(listen(s, clip, npk, done_tx.clone(), deadline));
    }
    drop(done_tx);

    let gen_ports = ports(&eps);
    let (cpu0, gen0, drops0) = (
        relay.cpu(),
        self_cpu(setup.ticks),
        Drops::read(&relay, Some(&gen_ports)),
    );
    let mut up = talker.start_clip(&header).await.expect("clip starts");
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut sent = Vec::with_capacity(npk);
    for (i, p) in packets.iter().enumerate() {
        sleep_until(t0 + Duration::from_millis(20 * i as u64)).await;
        sent.push(Instant::now());
        up.packet(p.clone()).await.expect("packet sent");
    }
    let fin = Instant::now();
    up.finish(samples).await.expect("clip acknowledged");
    let talker_ack_ms = fin.elapsed().as_secs_f64() * 1e3;
    let mut ended = 0;
    while ended < connected
        && timeout_at(deadline, done_rx.recv())
            .await
            .ok()
            .flatten()
            .is_some()
    {
        ended += 1;
    }
    let ends_at = Instant::now();
    let (cpu1, gen1, drops1) = (
        relay.cpu(),
        self_cpu(setup.ticks),
        Drops::read(&relay, Some(&gen_ports)),
    );

    let mut all = Vec::with_capacity(connected * npk);
    let mut listener_p99 = Vec::with_capacity(connected);
    let (mut complete, mut received, mut acked) = (0, 0, 0);
    let mut back = Vec::with_capacity(connected);
    while let Some(r) = tasks.join_next().await {
        let (s, heard) = r.expect("listener task");
        let delays = delays_ms(&heard.at, &sent);
        received += delays.len();
        if delays.len() == npk && heard.ended {
            complete += 1;
        }
        acked += usize::from(heard.acked);
        listener_p99.push(pct(&sorted(delays.clone()), 99.0));
        all.extend(delays);
        back.push(s);
    }
    let acks_s = ends_at.elapsed().as_secs_f64();
    let all = sorted(all);
    let listener_p99 = sorted(listener_p99);
    talker.close().await;
    close_all(back, &eps).await;
    relay.stop();
    FanoutRow {
        n,
        connected,
        connect_s: connect.as_secs_f64(),
        connect_cpu_s,
        load,
        udp_drops: drops1.since(drops0),
        packets: npk,
        complete,
        lost: connected * npk - received,
        p50: pct(&all, 50.0),
        p99: pct(&all, 99.0),
        p999: pct(&all, 99.9),
        max: all.last().copied().unwrap_or(f64::NAN),
        worst_listener_p99: listener_p99.last().copied().unwrap_or(f64::NAN),
        median_listener_p99: pct(&listener_p99, 50.0),
        relay_cpu_s: cpu1 - cpu0,
        audio_s: received as f64 * 0.020,
        gen_cpu_s: gen1 - gen0,
        talker_ack_ms,
        acks_s,
        acked,
        errors,
    }
}

// ---------------------------------------------------------------------------------------
// The baseline: the same fan-out through quinn alone, no walkie code on the path.

mod raw {
    //! A fan-out server of quinn alone, run as a child process of this bench (so its CPU is
    //! its own), on walkie's endpoint settings (`walkie_net::server_endpoint`, then
    //! `open_session` as a relay does after a hello), with the same tokio runtime shape as
    //! the relay. A connection names its role in one byte on a bidirectional stream:
    //! `S`/`D` a listener by stream/datagram, `T`/`G` the talker by stream/datagram. Each
    //! packet the talker sends goes to every listener of its kind as it comes: on one
    //! unidirectional stream per listener fed by a task with a bounded queue (as walkie's
    //! live sinks), or as a datagram.

    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    /// The argument that makes this bench binary the server.
    pub const SERVE_ARG: &str = "--raw-quinn-server";
    /// Queue of one stream listener, in packets (walkie's `live_queue` default is the same).
    const QUEUE: usize = 64;

    #[derive(Default)]
    struct Listeners {
        streams: Vec<mpsc::Sender<Bytes>>,
        datagrams: Vec<quinn::Connection>,
    }

    pub fn serve(dir: &Path) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let identity = walkie_net::RelayIdentity::load_or_create(dir).expect("identity");
            let ep = walkie_net::server_endpoint(
                "127.0.0.1:0".parse().expect("addr"),
                &identity,
                std::time::Duration::from_secs(30),
            )
            .expect("endpoint");
            println!("listening on {}", ep.local_addr().expect("bound"));
            println!("fingerprint {}", identity.fingerprint());
            let listeners = Arc::new(Mutex::new(Listeners::default()));
            while let Some(incoming) = ep.accept().await {
                let listeners = listeners.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    walkie_net::open_session(&conn, 64);
                    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                        return;
                    };
                    let mut role = [0u8; 1];
                    if recv.read_exact(&mut role).await.is_err() {
                        return;
                    }
                    let lock = || listeners.lock().unwrap_or_else(|p| p.into_inner());
                    match role[0] {
                        b'S' => {
                            let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
                            let Ok(mut uni) = conn.open_uni().await else {
                                return;
                            };
                            lock().streams.push(tx);
                            let _ = send.write_all(b"k").await;
                            while let Some(b) = rx.recv().await {
                                if uni.write_chunk(b).await.is_err() {
                                    break;
                                }
                            }
                        }
                        b'D' => {
                            lock().datagrams.push(conn.clone());
                            let _ = send.write_all(b"k").await;
                            conn.closed().await;
                        }
                        b'T' => {
                            let _ = send.write_all(b"k").await;
                            let Ok(mut uni) = conn.accept_uni().await else {
                                return;
                            };
                            let mut len = [0u8; 2];
                            while uni.read_exact(&mut len).await.is_ok() {
                                let mut frame = vec![0u8; 2 + usize::from(u16::from_be_bytes(len))];
                                frame[..2].copy_from_slice(&len);
                                if uni.read_exact(&mut frame[2..]).await.is_err() {
                                    break;
                                }
                                let frame = Bytes::from(frame);
                                for tx in &lock().streams {
                                    let _ = tx.try_send(frame.clone());
                                }
                            }
                        }
                        b'G' => {
                            let _ = send.write_all(b"k").await;
                            while let Ok(d) = conn.read_datagram().await {
                                for c in &lock().datagrams {
                                    let _ = c.send_datagram(d.clone());
                                }
                            }
                        }
                        _ => {}
                    }
                    let _ = send.shutdown().await;
                });
            }
        });
    }
}

struct RawRow {
    n: usize,
    datagrams: bool,
    connected: usize,
    complete: usize,
    lost: usize,
    p50: f64,
    p99: f64,
    server_cpu_s: f64,
    delivered: usize,
    load: f64,
}

/// Opens a raw connection in `role` and waits for the server's ready byte.
async fn raw_connect(
    ep: quinn::Endpoint,
    addr: SocketAddr,
    role: u8,
) -> Result<quinn::Connection, String> {
    let conn = timeout(
        Duration::from_secs(30),
        ep.connect(addr, walkie_net::SERVER_NAME)
            .map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&[role]).await.map_err(|e| e.to_string())?;
    let mut ok = [0u8; 1];
    timeout(Duration::from_secs(30), recv.read_exact(&mut ok))
        .await
        .map_err(|_| "no ready".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// One listener: when each packet index arrived (the index is the packet's first 4 bytes).
async fn raw_listen(
    conn: quinn::Connection,
    datagrams: bool,
    packets: usize,
    deadline: Instant,
) -> Vec<Option<Instant>> {
    let mut at = vec![None; packets];
    let mut mark = |p: &[u8]| {
        if let Some(i) = p
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            && let Some(slot) = at.get_mut(i)
        {
            *slot = Some(Instant::now());
            return i + 1 == packets;
        }
        false
    };
    if datagrams {
        while let Ok(Ok(d)) = timeout_at(deadline, conn.read_datagram()).await {
            if mark(&d) {
                break;
            }
        }
    } else if let Ok(Ok(mut uni)) = timeout_at(deadline, conn.accept_uni()).await {
        let mut len = [0u8; 2];
        while let Ok(Ok(())) = timeout_at(deadline, uni.read_exact(&mut len)).await {
            let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if !matches!(
                timeout_at(deadline, uni.read_exact(&mut p)).await,
                Ok(Ok(()))
            ) || mark(&p)
            {
                break;
            }
        }
    }
    conn.close(0u32.into(), b"done");
    at
}

/// The fan-out of `fanout` through quinn alone: one talker, N listeners, 70-byte packets
/// every 20 ms for `clip_s` seconds, by stream or by datagram.
async fn raw_fanout(setup: &Setup, n: usize, clip_s: usize, datagrams: bool) -> RawRow {
    let dir = setup.logs.join(format!("raw-{n}-{datagrams}"));
    std::fs::create_dir_all(&dir).expect("raw dir");
    let server = Relay::start_raw(
        &dir,
        &setup.logs.join(format!("raw-{n}-{datagrams}.log")),
        setup.ticks,
    );
    let npk = clip_s * 50;
    let eps = endpoints(server.pin, n + 1);
    let (listen_role, talk_role) = if datagrams {
        (b'D', b'G')
    } else {
        (b'S', b'T')
    };
    let addr = server.addr;
    let (conns, _) = gated(n, |i| {
        raw_connect(eps[i % eps.len()].clone(), addr, listen_role)
    })
    .await;
    let conns: Vec<quinn::Connection> = conns.into_iter().filter_map(Result::ok).collect();
    let connected = conns.len();
    let talker = raw_connect(eps[n % eps.len()].clone(), server.addr, talk_role)
        .await
        .expect("raw talker connects");
    server.settle(Duration::from_secs(30)).await;
    let load = loadavg();
    let deadline = Instant::now() + Duration::from_secs(clip_s as u64 + 30);
    let mut tasks = JoinSet::new();
    for c in conns {
        tasks.spawn(raw_listen(c, datagrams, npk, deadline));
    }
    let cpu0 = server.cpu();
    let mut up = if datagrams {
        None
    } else {
        Some(talker.open_uni().await.expect("talker stream"))
    };
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut sent = Vec::with_capacity(npk);
    for i in 0..npk {
        sleep_until(t0 + Duration::from_millis(20 * i as u64)).await;
        let mut p = vec![0x5au8; 70];
        p[..4].copy_from_slice(&(i as u32).to_be_bytes());
        sent.push(Instant::now());
        match &mut up {
            Some(s) => {
                let mut frame = (p.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&p);
                s.write_all(&frame).await.expect("talker writes");
            }
            None => talker
                .send_datagram(bytes::Bytes::from(p))
                .expect("talker datagram"),
        }
    }
    let mut all = Vec::new();
    let (mut complete, mut delivered) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let at = r.expect("raw listener");
        let delays = delays_ms(&at, &sent);
        delivered += delays.len();
        complete += usize::from(delays.len() == npk);
        all.extend(delays);
    }
    let server_cpu_s = server.cpu() - cpu0;
    talker.close(0u32.into(), b"done");
    for ep in &eps {
        let _ = timeout(Duration::from_secs(3), ep.wait_idle()).await;
    }
    server.stop();
    let all = sorted(all);
    RawRow {
        n,
        datagrams,
        connected,
        complete,
        lost: connected * npk - delivered,
        p50: pct(&all, 50.0),
        p99: pct(&all, 99.0),
        server_cpu_s,
        delivered,
        load,
    }
}

/// A report's heading and table header, the separator row counted from the header.
fn table_head(md: &mut String, title: &str, header: &str) {
    let columns = header.matches('|').count().saturating_sub(1);
    let _ = writeln!(md, "\n## {title}\n\n{header}\n|{}", "---|".repeat(columns));
}

fn report_baseline(walkie: &[FanoutRow], raw: &[RawRow], md: &mut String) {
    table_head(
        md,
        "Fan-out against quinn alone, in the same run (70-byte packets every 20 ms; walkie's are speech at 24 kb/s)",
        "| N | walkie p50 / p99 | raw streams p50 / p99 | raw datagrams p50 / p99 | walkie / raw streams, p50 and p99 | server CPU µs per delivered packet: walkie / raw streams / raw datagrams | walkie / raw streams, CPU | listeners complete: walkie / streams / datagrams | packets lost: walkie / streams / datagrams | load |",
    );
    for w in walkie {
        let find = |d: bool| raw.iter().find(|r| r.n == w.n && r.datagrams == d);
        let (Some(s), Some(d)) = (find(false), find(true)) else {
            continue;
        };
        let w_pkts = (w.audio_s / 0.020).max(1.0);
        let per = |cpu: f64, n: f64| cpu / n.max(1.0) * 1e6;
        let (wc, sc, dc) = (
            per(w.relay_cpu_s, w_pkts),
            per(s.server_cpu_s, s.delivered as f64),
            per(d.server_cpu_s, d.delivered as f64),
        );
        let _ = writeln!(
            md,
            "| {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2}x / {:.2}x | {:.1} / {:.1} / {:.1} | {:.2}x | {}/{} / {}/{} / {}/{} | {} / {} / {} | {:.1} |",
            w.n,
            w.p50,
            w.p99,
            s.p50,
            s.p99,
            d.p50,
            d.p99,
            w.p50 / s.p50,
            w.p99 / s.p99,
            wc,
            sc,
            dc,
            wc / sc,
            w.complete,
            w.connected,
            s.complete,
            s.connected,
            d.complete,
            d.connected,
            w.lost,
            s.lost,
            d.lost,
            s.load.max(d.load)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Ingest.

struct IngestRow {
    m: usize,
    load: f64,
    udp_drops: Drops,
    acked: usize,
    failed: usize,
    elapsed_s: f64,
    ack_p50: f64,
    ack_p99: f64,
    upload_p50: f64,
    relay_cpu_s: f64,
    audio_s: f64,
    errors: String,
}

async fn ingest(setup: &Setup, m: usize, clip_s: usize, run_for: Duration) -> IngestRow {
    let (params, packets, samples) = speech_clip(clip_s);
    let packets = Arc::new(packets);
    let relay = setup.relay(&format!("ingest-{m}"));
    let mut connecting = JoinSet::new();
    for i in 0..m {
        let cfg = setup.client_config(&relay, &format!("t{i}"));
        connecting.spawn(async move {
            (
                i,
                Client::connect(&cfg).await.expect("ingest talker connects"),
            )
        });
    }
    let mut clients = Vec::new();
    while let Some(r) = connecting.join_next().await {
        clients.push(r.expect("connect task"));
    }
    relay.settle(Duration::from_secs(10)).await;

    let (cpu0, load, drops0) = (relay.cpu(), loadavg(), Drops::read(&relay, None));
    let start = Instant::now();
    let stop_at = start + run_for;
    let mut tasks = JoinSet::new();
    for (i, client) in clients {
        let packets = packets.clone();
        tasks.spawn(async move {
            let mut acks = Vec::new();
            let mut uploads = Vec::new();
            let mut errors = Vec::new();
            let mut last = start;
            while Instant::now() < stop_at {
                let header = ClipHeader {
                    id: ClipId::random(),
                    to: Target::Channel(format!("in{i}")),
                    started_at_ms: now_ms(),
                    codec: params,
                };
                let t_start = Instant::now();
                let sent = async {
                    let mut up = client.start_clip(&header).await?;
                    // As `walkie send` does: a recorded clip's packets all at once.
                    up.packets(packets.iter().cloned()).await?;
                    Ok::<_, walkie_client::ClientError>(up)
                }
                .await;
                let result = match sent {
                    Ok(up) => {
                        let t_end = Instant::now();
                        uploads.push((t_end - t_start).as_secs_f64() * 1e3);
                        up.finish(samples).await.map(|_| t_end.elapsed())
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(lat) => {
                        acks.push(lat.as_secs_f64() * 1e3);
                        last = Instant::now();
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            client.close().await;
            (acks, uploads, errors, last)
        });
    }
    let (mut acks, mut uploads, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = start;
    while let Some(r) = tasks.join_next().await {
        let (a, u, e, l) = r.expect("ingest task");
        acks.extend(a);
        uploads.extend(u);
        errors.extend(e);
        last = last.max(l);
    }
    let cpu1 = relay.cpu();
    let udp_drops = Drops::read(&relay, None).since(drops0);
    relay.stop();
    let acked = acks.len();
    let (acks, uploads) = (sorted(acks), sorted(uploads));
    IngestRow {
        m,
        load,
        udp_drops,
        acked,
        failed: errors.len(),
        elapsed_s: (last - start).as_secs_f64(),
        ack_p50: pct(&acks, 50.0),
        ack_p99: pct(&acks, 99.0),
        upload_p50: pct(&uploads, 50.0),
        relay_cpu_s: cpu1 - cpu0,
        audio_s: (acked * clip_s) as f64,
        errors: tally_errors(errors.iter()),
    }
}

// ---------------------------------------------------------------------------------------
// Idle connections.

struct IdleRow {
    k: usize,
    load: f64,
    udp_drops: Drops,
    connected: usize,
    connect_s: f64,
    alive: usize,
    ponged: usize,
    rss0_mib: f64,
    rss_mib: f64,
    per_conn_kib: f64,
    gen_per_conn_kib: f64,
    hold_s: f64,
    hold_cpu_pct: f64,
    connect_cpu_s: f64,
    errors: String,
}

async fn idle(setup: &Setup, k: usize, hold: Duration) -> IdleRow {
    let relay = setup.relay(&format!("idle-{k}"));
    relay.settle(Duration::from_secs(5)).await;
    let eps = endpoints(relay.pin, k);
    let gen_ports = ports(&eps);
    let (rss0, gen_rss0, cpu0, load, drops0) = (
        relay.rss_kib(),
        rss_kib("self"),
        relay.cpu(),
        loadavg(),
        Drops::read(&relay, Some(&gen_ports)),
    );
    let users = (0..k).map(|i| format!("i{}", i % IDLE_USERS)).collect();
    let (sessions, connect) = connect_many(&eps, relay.addr, users, &setup.token).await;
    let errors = tally_errors(sessions.iter().filter_map(|s| s.as_ref().err()));
    let mut sessions: Vec<Session> = sessions.into_iter().filter_map(Result::ok).collect();
    let connected = sessions.len();
    relay.settle(Duration::from_secs(30)).await;
    let cpu1 = relay.cpu();
    let t_hold = Instant::now();
    sleep(hold).await;
    let hold_s = t_hold.elapsed().as_secs_f64();
    let cpu2 = relay.cpu();
    let (rss1, gen_rss1) = (relay.rss_kib(), rss_kib("self"));
    let alive = sessions
        .iter()
        .filter(|s| s.conn.close_reason().is_none())
        .count();
    let mut pings = JoinSet::new();
    for (i, mut s) in sessions.drain(..).enumerate() {
        pings.spawn(async move {
            let ok = s.ping(i as u64 + 7, Duration::from_secs(30)).await;
            (s, ok)
        });
    }
    let mut ponged = 0;
    let mut back = Vec::with_capacity(connected);
    while let Some(r) = pings.join_next().await {
        let (s, ok) = r.expect("ping task");
        ponged += usize::from(ok);
        back.push(s);
    }
    let udp_drops = Drops::read(&relay, Some(&gen_ports)).since(drops0);
    close_all(back, &eps).await;
    relay.stop();
    let per = |a: u64, b: u64| (b as f64 - a as f64) / connected.max(1) as f64;
    IdleRow {
        k,
        load,
        udp_drops,
        connected,
        connect_s: connect.as_secs_f64(),
        alive,
        ponged,
        rss0_mib: rss0 as f64 / 1024.0,
        rss_mib: rss1 as f64 / 1024.0,
        per_conn_kib: per(rss0, rss1),
        gen_per_conn_kib: per(gen_rss0, gen_rss1),
        hold_s,
        hold_cpu_pct: (cpu2 - cpu1) / hold_s * 100.0,
        connect_cpu_s: cpu1 - cpu0,
        errors,
    }
}

// ---------------------------------------------------------------------------------------
// The rush: K members of channels of S connect at once.

struct RushRow {
    size: usize,
    k: usize,
    load: f64,
    connected: usize,
    connect_s: f64,
    relay_cpu_s: f64,
    control_msgs: u64,
    control_bytes: u64,
    errors: String,
}

async fn rush(setup: &Setup, size: usize, k: usize) -> RushRow {
    let relay = setup.relay(&format!("rush-{size}"));
    relay.settle(Duration::from_secs(5)).await;
    let eps = endpoints(relay.pin, k);
    let (cpu0, load) = (relay.cpu(), loadavg());
    let (msgs0, bytes0) = (
        CONTROL_MSGS.load(std::sync::atomic::Ordering::Relaxed),
        CONTROL_BYTES.load(std::sync::atomic::Ordering::Relaxed),
    );
    let users = (0..k).map(|i| format!("r{size}-{i}")).collect();
    let (sessions, connect) = connect_many(&eps, relay.addr, users, &setup.token).await;
    let errors = tally_errors(sessions.iter().filter_map(|s| s.as_ref().err()));
    let sessions: Vec<Session> = sessions.into_iter().filter_map(Result::ok).collect();
    let connected = sessions.len();
    // Presence batches and the sessions' first work end within a second or two.
    relay.settle(Duration::from_secs(30)).await;
    let cpu1 = relay.cpu();
    let (msgs1, bytes1) = (
        CONTROL_MSGS.load(std::sync::atomic::Ordering::Relaxed),
        CONTROL_BYTES.load(std::sync::atomic::Ordering::Relaxed),
    );
    close_all(sessions, &eps).await;
    relay.stop();
    RushRow {
        size,
        k,
        load,
        connected,
        connect_s: connect.as_secs_f64(),
        relay_cpu_s: cpu1 - cpu0,
        control_msgs: msgs1 - msgs0,
        control_bytes: bytes1 - bytes0,
        errors,
    }
}

/// The rush with a talker: the first `listeners` members of one channel of `size` are online
/// and hearing a live clip while the other members connect at once.
struct RushLiveRow {
    size: usize,
    listeners: usize,
    complete: usize,
    p50: f64,
    p99: f64,
    max: f64,
    rushed: usize,
    connected: usize,
    connect_s: f64,
    load: f64,
    errors: String,
}

async fn rush_live(setup: &Setup, size: usize, k: usize, clip_s: usize) -> RushLiveRow {
    let (params, packets, samples) = speech_clip(clip_s);
    let npk = packets.len();
    let relay = setup.relay(&format!("rush-live-{size}"));
    let listeners = 100.min(size.saturating_sub(1)).min(k.saturating_sub(1));
    let eps = endpoints(relay.pin, k);
    let early = (1..=listeners).map(|i| format!("r{size}-{i}")).collect();
    let (sessions, _) = connect_many(
        &eps[..1.max(listeners.div_ceil(CONNS_PER_ENDPOINT))],
        relay.addr,
        early,
        &setup.token,
    )
    .await;
    let sessions: Vec<Session> = sessions.into_iter().filter_map(Result::ok).collect();
    // The talker is a bare session too (the upload frames on a stream of its own), so that
    // the same bench drives a relay of another protocol version (WALKIE_BENCH_RELAY).
    let (mut talker, _) = connect_many(
        &eps[..1],
        relay.addr,
        vec![format!("r{size}-0")],
        &setup.token,
    )
    .await;
    let talker = talker.pop().expect("one").expect("talker connects");
    relay.settle(Duration::from_secs(30)).await;
    let load = loadavg();
    let clip = ClipId::random();
    let header = ClipHeader {
        id: clip,
        to: Target::Channel(format!("rush{size}-0")),
        started_at_ms: now_ms(),
        codec: params,
    };
    let deadline = Instant::now() + Duration::from_secs(clip_s as u64 + 90);
    let (done_tx, _done_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    for s in sessions {
        tasks.spawn(listen(s, clip, npk, done_tx.clone(), deadline));
    }
    let talk = tokio::spawn(async move {
        let mut up = talker.conn.open_uni().await.expect("clip stream");
        write_frame(&mut up, &StreamFrame::Upload(header), MAX_STREAM_FRAME)
            .await
            .expect("header");
        let t0 = Instant::now() + Duration::from_millis(20);
        let mut sent = Vec::with_capacity(npk);
        for (i, p) in packets.iter().enumerate() {
            sleep_until(t0 + Duration::from_millis(20 * i as u64)).await;
            sent.push(Instant::now());
            write_frame(&mut up, &StreamFrame::Packet(p.clone()), MAX_STREAM_FRAME)
                .await
                .expect("packet sent");
        }
        let end = StreamFrame::End {
            packets: npk as u32,
            samples,
        };
        write_frame(&mut up, &end, MAX_STREAM_FRAME)
            .await
            .expect("end sent");
        let _ = up.finish();
        (talker, sent)
    });
    // The rush starts a second into the clip. The crowd stands for other machines: it runs on
    // a runtime of its own whose threads have a lower priority (nice 10) than the listeners
    // and the relay, so that its client-side handshakes do not stand in the listeners' queue.
    sleep(Duration::from_secs(1)).await;
    let rest: Vec<String> = (listeners + 1..k).map(|i| format!("r{size}-{i}")).collect();
    let rushed = rest.len();
    let crowd_rt = crowd_runtime();
    let (addr, pin, token) = (relay.addr, relay.pin, setup.token.clone());
    let (crowd, connect, rush_eps) = crowd_rt
        .spawn(async move {
            let eps = endpoints(pin, rushed);
            let (crowd, connect) = connect_many(&eps, addr, rest, &token).await;
            (crowd, connect, eps)
        })
        .await
        .expect("crowd task");
    let errors = tally_errors(crowd.iter().filter_map(|s| s.as_ref().err()));
    let crowd: Vec<Session> = crowd.into_iter().filter_map(Result::ok).collect();
    let connected = crowd.len();
    let (talker, sent) = talk.await.expect("talker task");
    let mut all = Vec::new();
    let mut complete = 0;
    let mut back = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (s, heard) = r.expect("listener task");
        let delays = delays_ms(&heard.at, &sent);
        complete += usize::from(delays.len() == npk && heard.ended);
        all.extend(delays);
        back.push(s);
    }
    let all = sorted(all);
    close_all(back.into_iter().chain([talker]), &eps).await;
    let _ = crowd_rt
        .spawn(async move { close_all(crowd, &rush_eps).await })
        .await;
    crowd_rt.shutdown_background();
    relay.stop();
    RushLiveRow {
        size,
        listeners,
        complete,
        p50: pct(&all, 50.0),
        p99: pct(&all, 99.0),
        max: all.last().copied().unwrap_or(f64::NAN),
        rushed,
        connected,
        connect_s: connect.as_secs_f64(),
        load,
        errors,
    }
}

/// A runtime for load that stands for other machines: 2 workers at nice 10 (each thread
/// renices itself as it starts; Linux priorities are per thread).
fn crowd_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| {
            if let Ok(me) = std::fs::read_link("/proc/thread-self")
                && let Some(tid) = me.file_name().and_then(|t| t.to_str())
            {
                let _ = Command::new("renice")
                    .args(["-n", "10", "-p", tid])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        })
        .build()
        .expect("crowd runtime")
}

fn report_rush_live(rows: &[RushLiveRow], md: &mut String) {
    table_head(
        md,
        "The rush while one member talks: early listeners' live delay as the rest of the channel connects",
        "| S (channel size) | listeners online before | complete listeners | live delay p50 | p99 | max | members rushing in: connected (time) | machine load |",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {}/{} | {:.1} ms | {:.1} ms | {:.1} ms | {}/{} ({:.1} s) | {:.1} |",
            r.size,
            r.listeners,
            r.complete,
            r.listeners,
            r.p50,
            r.p99,
            r.max,
            r.connected,
            r.rushed,
            r.connect_s,
            r.load
        );
        if !r.errors.is_empty() {
            let _ = writeln!(md, "\nS={} connection errors: {}\n", r.size, r.errors);
        }
    }
}

fn report_rush(rows: &[RushRow], md: &mut String) {
    table_head(
        md,
        &format!(
            "The rush: K members of channels of S members connect at once ({CONNECT_CONCURRENCY} handshakes in flight)"
        ),
        "| S (channel size) | K connected (time) | relay CPU s | relay CPU ms per connect | ratio to the smallest S | control messages received (per member) | control bytes per member | machine load |",
    );
    let base = rows
        .first()
        .map(|r| r.relay_cpu_s / r.connected.max(1) as f64);
    for r in rows {
        let per = r.relay_cpu_s / r.connected.max(1) as f64;
        let _ = writeln!(
            md,
            "| {} | {}/{} ({:.1} s) | {:.2} | {:.2} | {:.2}x | {} ({:.1}) | {:.0} | {:.1} |",
            r.size,
            r.connected,
            r.k,
            r.connect_s,
            r.relay_cpu_s,
            per * 1e3,
            base.map_or(f64::NAN, |b| per / b),
            r.control_msgs,
            r.control_msgs as f64 / r.connected.max(1) as f64,
            r.control_bytes as f64 / r.connected.max(1) as f64,
            r.load
        );
        if !r.errors.is_empty() {
            let _ = writeln!(md, "\nS={} connection errors: {}\n", r.size, r.errors);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Report.

fn report_fanout(rows: &[FanoutRow], md: &mut String) {
    table_head(
        md,
        &format!(
            "Fan-out: one talker, a {} s clip paced at 20 ms/packet, N listeners",
            rows.first().map_or(0, |r| r.packets / 50)
        ),
        "| N | connected (time, relay CPU s) | complete listeners | packets lost | delay p50 | p99 | p99.9 | max | listener p99: median / worst | relay CPU s per delivered audio-s | relay CPU % (of one core) | load-gen CPU s | UDP drops, relay / load-gen sockets | talker ack after end | listener acks stored | machine load |",
    );
    for r in rows {
        let window = r.packets as f64 * 0.020;
        let _ = writeln!(
            md,
            "| {} | {} ({:.1} s, {:.1} s) | {}/{} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {:.2} / {:.2} ms | {:.5} | {:.0}% | {:.1} | {} | {:.0} ms | {} in {:.1} s | {:.1} |",
            r.n,
            r.connected,
            r.connect_s,
            r.connect_cpu_s,
            r.complete,
            r.n,
            r.lost,
            r.p50,
            r.p99,
            r.p999,
            r.max,
            r.median_listener_p99,
            r.worst_listener_p99,
            r.relay_cpu_s / r.audio_s.max(1e-9),
            r.relay_cpu_s / window * 100.0,
            r.gen_cpu_s,
            r.udp_drops,
            r.talker_ack_ms,
            r.acked,
            r.acks_s,
            r.load
        );
        if !r.errors.is_empty() {
            let _ = writeln!(md, "\nN={} connection errors: {}\n", r.n, r.errors);
        }
    }
}

fn report_ingest(rows: &[IngestRow], md: &mut String) {
    table_head(
        md,
        &format!(
            "Ingest: M talkers on M channels, back-to-back {} s clips, each after the previous ack",
            rows.first()
                .map_or(0, |r| (r.audio_s / r.acked.max(1) as f64).round() as usize)
        ),
        "| M | clips acked | in | clips/s | audio ingested (x real time) | ack p50 | ack p99 | upload p50 (packets into the send buffer) | relay CPU s per audio-s | relay CPU % (of one core) | UDP drops, relay / load-gen sockets | failures | machine load |",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} s | {:.1} | {:.0}x | {:.1} ms | {:.1} ms | {:.1} ms | {:.5} | {:.0}% | {} | {} | {:.1} |",
            r.m,
            r.acked,
            r.elapsed_s,
            r.acked as f64 / r.elapsed_s,
            r.audio_s / r.elapsed_s,
            r.ack_p50,
            r.ack_p99,
            r.upload_p50,
            r.relay_cpu_s / r.audio_s.max(1e-9),
            r.relay_cpu_s / r.elapsed_s * 100.0,
            r.udp_drops,
            if r.failed == 0 {
                "0".to_string()
            } else {
                format!("{}: {}", r.failed, r.errors)
            },
            r.load
        );
    }
}

fn report_idle(rows: &[IdleRow], md: &mut String) {
    table_head(
        md,
        "Idle authenticated connections (keep-alive only)",
        "| K | connected (time) | relay CPU s to accept | alive after hold | answered a ping | relay RSS before → after | relay RSS per connection | load-gen RSS per connection | relay CPU while idle | UDP drops, relay / load-gen sockets | machine load |",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} ({:.1} s, {:.0}/s) | {:.1} | {} after {:.0} s | {} | {:.1} → {:.1} MiB | {:.1} KiB | {:.1} KiB | {:.1}% | {} | {:.1} |",
            r.k,
            r.connected,
            r.connect_s,
            r.connected as f64 / r.connect_s,
            r.connect_cpu_s,
            r.alive,
            r.hold_s,
            r.ponged,
            r.rss0_mib,
            r.rss_mib,
            r.per_conn_kib,
            r.gen_per_conn_kib,
            r.hold_cpu_pct,
            r.udp_drops,
            r.load
        );
        if !r.errors.is_empty() {
            let _ = writeln!(md, "\nK={} connection errors: {}\n", r.k, r.errors);
        }
    }
}

fn chart(rows: &[FanoutRow], raw: &[RawRow], dir: &Path) {
    let line = |name: &str, f: &dyn Fn(&FanoutRow) -> f64| chart::Series {
        name: name.into(),
        points: rows
            .iter()
            .map(|r| (r.n as f64, f(r)))
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .collect(),
        dashed: false,
        color: None,
    };
    let mut series = vec![
        line("p50", &|r| r.p50),
        line("p99", &|r| r.p99),
        line("max", &|r| r.max),
    ];
    // Quinn alone, measured in the same run.
    for (datagrams, name) in [
        (false, "p99, quinn alone, streams (same run)"),
        (true, "p99, quinn alone, datagrams (same run)"),
    ] {
        series.push(chart::Series {
            name: name.into(),
            points: raw
                .iter()
                .filter(|r| r.datagrams == datagrams && r.p99.is_finite() && r.p99 > 0.0)
                .map(|r| (r.n as f64, r.p99))
                .collect(),
            dashed: true,
            color: None,
        });
    }
    let path = dir.join("fanout-delay.png");
    match chart::fanout_png(
        &path,
        "walkie relay fan-out: frame delay vs listeners (2 vCPU, loopback)",
        &series,
        (900, 560),
    ) {
        Ok(()) => println!("chart: {}", path.display()),
        Err(e) => eprintln!("no chart: {e}"),
    }
}

/// `WALKIE_BENCH_RELAY_CPUS` (a `taskset -c` list such as `0` or `0,1`): the CPUs the relay
/// (and the raw-quinn server) may run on, for scaling from one core to two.
fn relay_cpus() -> Option<String> {
    std::env::var("WALKIE_BENCH_RELAY_CPUS")
        .ok()
        .filter(|c| !c.trim().is_empty())
}

/// Renices this (still single-threaded) process, so every thread and child made later
/// inherits the value; returns the nice value in force.
fn renice() -> i32 {
    let want: i32 = std::env::var("WALKIE_BENCH_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-10);
    if want != 0 {
        let pid = std::process::id().to_string();
        let ok = Command::new("renice")
            .args(["-n", &want.to_string(), "-p", &pid])
            .stdout(Stdio::null())
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            eprintln!("note: cannot renice to {want} (not root?); running at the default priority");
            return 0;
        }
    }
    want
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir] = args.as_slice()
        && flag == raw::SERVE_ARG
    {
        raw::serve(Path::new(dir));
        return;
    }
    let nice = renice();
    let full = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let plan = Plan::from_env(full, filter);
    let load_at_start = loadavg();
    let setup = Setup::new(&plan);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = out::out_dir();
    std::fs::create_dir_all(&dir).expect("output dir");
    let mut md = String::new();
    rt.block_on(async {
        if plan.wants("fanout") {
            let mut rows = Vec::new();
            let mut raw_rows = Vec::new();
            for &n in &plan.fanout {
                // Back to back at each N: walkie, then quinn alone by stream and by datagram.
                eprintln!("fan-out N={n} ...");
                rows.push(fanout(&setup, n, plan.fanout_clip_s).await);
                for datagrams in [false, true] {
                    eprintln!(
                        "fan-out N={n}, quinn alone ({}) ...",
                        if datagrams { "datagrams" } else { "streams" }
                    );
                    raw_rows.push(raw_fanout(&setup, n, plan.fanout_clip_s, datagrams).await);
                }
            }
            report_fanout(&rows, &mut md);
            report_baseline(&rows, &raw_rows, &mut md);
            if full {
                chart(&rows, &raw_rows, &dir);
            }
        }
        if plan.wants("ingest") {
            let mut rows = Vec::new();
            for &m in &plan.ingest {
                eprintln!("ingest M={m} ...");
                rows.push(ingest(&setup, m, plan.ingest_clip_s, plan.ingest_for).await);
            }
            report_ingest(&rows, &mut md);
        }
        if plan.wants("rush") {
            let mut rows = Vec::new();
            for &size in &plan.rush {
                eprintln!("rush S={size} K={} ...", plan.rush_k);
                rows.push(rush(&setup, size, plan.rush_k).await);
            }
            report_rush(&rows, &mut md);
            if let Some(&biggest) = plan.rush.iter().max() {
                eprintln!("rush with a talker, S={biggest} ...");
                let row = rush_live(&setup, biggest, plan.rush_k, plan.fanout_clip_s.max(2)).await;
                report_rush_live(&[row], &mut md);
            }
        }
        if plan.wants("idle") {
            let mut rows = Vec::new();
            for &k in &plan.idle {
                eprintln!("idle K={k} ...");
                rows.push(idle(&setup, k, plan.hold).await);
            }
            report_idle(&rows, &mut md);
        }
    });
    let header = format!(
        "Relay: `walkie-relay serve` child process (RUST_LOG=warn); load generator: this process, tokio with 2 workers, {CONNS_PER_ENDPOINT} connections per client endpoint, {CONNECT_CONCURRENCY} handshakes in flight; nice {nice} for both{}. Machine: {} cores, load average at start {:.1}.\n",
        relay_cpus().map_or(String::new(), |c| format!(
            "; relay pinned to CPUs {c} (taskset)"
        )),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_at_start
    );
    let md = format!("{header}{md}");
    println!("{md}");
    if full {
        let path = dir.join("relay.md");
        std::fs::write(&path, &md).expect("write relay.md");
        println!("results: {}", path.display());
    }
}
