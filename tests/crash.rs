//! Crash safety: while 100 senders upload clips concurrently, the relay process is killed
//! with SIGKILL 20 times and restarted on the same data dir. Each kill waits for its moment
//! instead of hoping for it: the restarted relay has acknowledged a clip (it is serving) and
//! clips are queued that are not acknowledged yet (uploads are in flight); then it lands at a
//! random point within the next 40 ms. The clients' outboxes retry with the same clip ids.
//! Afterwards every clip is stored exactly once, intact (decodes to its full length) and
//! delivered; nothing half-written is ever served.

mod support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use support::within;
use walkie_client::outbox::Outbox;
use walkie_client::{Client, ClientConfig, ops};
use walkie_media::codec::{self, EncoderConfig};
use walkie_net::Fingerprint;
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_relay::auth;
use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

const SENDERS: usize = 100;
const KILLS: usize = 20;
/// Senders keep sending while the killing goes on, up to this many clips each, so that
/// uploads are in flight at every kill however fast the machine is.
const MAX_CLIPS_PER_SENDER: usize = 20;

struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    fn start(data: &Path, config: &Path, port: u16) -> (RelayProcess, Fingerprint) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
            .arg("--data-dir")
            .arg(data)
            .arg("--config")
            .arg(config)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("relay starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let listening = lines.next().expect("a line").expect("utf-8");
        assert!(listening.starts_with("listening on"), "{listening}");
        let fp = lines
            .next()
            .expect("a line")
            .expect("utf-8")
            .replace("fingerprint ", "");
        std::thread::spawn(move || for _ in lines {});
        (
            RelayProcess { child },
            Fingerprint::parse(&fp).expect("fingerprint"),
        )
    }

    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A distinct short clip: a tone whose pitch depends on `n`, 0.4 to 1 s long.
fn clip_audio(n: usize) -> Vec<f32> {
    let len = 48 * (400 + (n * 37) % 600);
    let f = 0.01 + (n % 97) as f32 * 0.001;
    (0..len).map(|i| (i as f32 * f).sin() * 0.3).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_twenty_points_loses_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "clips_per_minute = 100000\nbusy_retry_ms = 100\n").expect("config");
    let tokens: Vec<(String, String)> = (0..10)
        .map(|i| (format!("s{i}"), auth::new_token()))
        .chain([("ear".into(), auth::new_token())])
        .collect();
    {
        let store = SqliteStore::open(&data).expect("store");
        for (u, t) in &tokens {
            store.add_user(u, &auth::hash_token(t)).expect("user");
        }
    }
    let port = free_udp_port();
    let (relay, pin) = RelayProcess::start(&data, &config, port);
    let cfg = |i: usize| ClientConfig {
        relay: format!("127.0.0.1:{port}"),
        user: tokens[i].0.clone(),
        token: tokens[i].1.clone(),
        trust: pin.into(),
    };

    // Senders: each queues and sends clips one after another while the relay is being killed.
    let killing = Arc::new(AtomicBool::new(true));
    let queued: Arc<Mutex<Vec<(ClipId, u64)>>> = Arc::default();
    let acked: Arc<Mutex<Vec<ClipId>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for n in 0..SENDERS {
        let (cfg, dir) = (cfg(n % 10), tmp.path().join(format!("outbox-{n}")));
        let (killing, queued, acked) = (killing.clone(), queued.clone(), acked.clone());
        senders.spawn(async move {
            let outbox = Outbox::open(&dir).expect("outbox");
            for k in 0..MAX_CLIPS_PER_SENDER {
                if k > 0 && !killing.load(Ordering::Relaxed) {
                    break;
                }
                let clip = codec::encode_pcm(
                    &clip_audio(n * MAX_CLIPS_PER_SENDER + k),
                    &EncoderConfig::default(),
                )
                .expect("encodes");
                let header = ClipHeader {
                    id: ClipId::random(),
                    to: Target::User("ear".into()),
                    started_at_ms: now_ms(),
                    codec: clip.params,
                };
                outbox.add(&header, &clip).expect("queued");
                queued.lock().expect("lock").push((header.id, clip.samples));
                let report =
                    ops::flush_with_retry(&cfg, &outbox, Some(header.id), Duration::from_secs(120))
                        .await
                        .expect("eventually acknowledged");
                assert!(
                    report.rejected.is_empty(),
                    "nothing is refused for good: {:?}",
                    report.rejected
                );
                acked
                    .lock()
                    .expect("lock")
                    .extend(report.stored.iter().map(|s| s.0));
            }
            assert!(
                outbox.pending().expect("pending").is_empty(),
                "the outbox drained"
            );
        });
    }

    // The killer: 20 SIGKILLs, each once the relay serves and uploads are in flight, at a
    // random point after that; each followed by a restart on the same dir.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut relay = relay;
    let started = Instant::now();
    let mut acked_before_kills = Vec::new();
    let mut in_flight_at_kills = Vec::new();
    for kill in 0..KILLS {
        let since_restart = acked.lock().expect("lock").len();
        let counts = || {
            (
                acked.lock().expect("lock").len(),
                queued.lock().expect("lock").len(),
            )
        };
        let (a, q) = within(
            120,
            &format!("kill {kill}: the relay acknowledges a clip while others are in flight"),
            async {
                loop {
                    let (a, q) = counts();
                    if a > since_restart && q > a {
                        // A random point from here on, as long as uploads are still in flight then.
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40u64))).await;
                        let (a, q) = counts();
                        if q > a {
                            return (a, q);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await;
        acked_before_kills.push(a);
        in_flight_at_kills.push(q - a);
        relay.kill9();
        let (r, fp) = RelayProcess::start(&data, &config, port);
        assert_eq!(
            fp, pin,
            "kill {kill}: the restarted relay keeps its certificate"
        );
        relay = r;
    }
    killing.store(false, Ordering::Relaxed);
    within(240, "all senders finish", async {
        while let Some(r) = senders.join_next().await {
            r.expect("a sender failed");
        }
    })
    .await;
    let queued = queued.lock().expect("lock").clone();
    let acked: Vec<ClipId> = acked.lock().expect("lock").clone();
    println!(
        "{KILLS} kills in {:.1} s; clips acked before each kill: {acked_before_kills:?}; queued and not yet acked at each kill: {in_flight_at_kills:?}; {} clips queued, {} acks",
        started.elapsed().as_secs_f64(),
        queued.len(),
        acked.len()
    );
    assert!(
        in_flight_at_kills.iter().all(|&n| n > 0),
        "every kill landed while uploads were in flight"
    );

    // Stored exactly once and intact.
    let store = SqliteStore::open(&data).expect("store");
    let stored = walkie_store::conformance::readable_all(&store, "ear");
    let stored_ids: HashSet<ClipId> = stored.iter().map(|m| m.id).collect();
    assert_eq!(stored.len(), stored_ids.len(), "no clip stored twice");
    assert_eq!(
        stored_ids,
        queued.iter().map(|q| q.0).collect::<HashSet<_>>(),
        "every clip stored, nothing else"
    );
    for (id, samples) in &queued {
        let bytes = store.clip_audio(id).expect("audio present");
        let ogg = walkie_proto::ogg::read_ogg(&bytes).expect("a complete Ogg Opus file");
        assert_eq!(ogg.samples, *samples, "clip {id} is intact");
        assert_eq!(
            codec::decode_packets(&ogg.params, &ogg.packets, ogg.samples)
                .expect("decodes")
                .len() as u64,
            *samples
        );
    }

    // Delivered: the listener gets every clip exactly once, each complete.
    let mut ear = Client::connect(&cfg(10)).await.expect("listener connects");
    let mut got = HashSet::new();
    let opts = ops::ListenOptions {
        save_dir: None,
        count: Some(queued.len()),
        timeout: Some(Duration::from_secs(120)),
    };
    let mut dups = 0;
    ops::listen(&mut ear, &opts, |c| {
        let expected = queued.iter().find(|q| q.0 == c.header.id).map(|q| q.1);
        assert_eq!(Some(c.samples), expected, "a delivered clip is complete");
        assert_eq!(
            walkie_media::codec::decode_clip(c).expect("decodes").len() as u64,
            c.samples
        );
        if !got.insert(c.header.id) {
            dups += 1;
        }
    })
    .await
    .expect("every clip delivered");
    assert_eq!(dups, 0);
    assert_eq!(got.len(), queued.len());
    ear.close().await;
    drop(relay);
    let _: PathBuf = data;
}
