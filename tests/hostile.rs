//! Hostile clients against a relay process: raw quinn connections that do what an attacker
//! would (never say hello and write all they can, ask for a big clip a thousand times and read
//! nothing, flood bare QUIC Initial packets, forge log lines through the hello), each checked
//! by what it costs the relay (its resident memory from /proc) or what legitimate users still
//! get. Attackers use other loopback addresses (127.0.0.2 and up) than the legitimate client
//! (127.0.0.1), as they would come from other hosts.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walkie_client::{Client, ClientConfig};
use walkie_net::{Fingerprint, read_frame, write_frame};
use walkie_proto::clip::{ClipId, ClipMeta, CodecParams, Target, now_ms};
use walkie_proto::wire::{ClientMsg, MAX_CONTROL_FRAME, ServerMsg};
use walkie_relay::auth;
use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

/// A relay process on 127.0.0.1, killed when dropped.
struct RelayProcess {
    child: Child,
    addr: SocketAddr,
    pin: Fingerprint,
}

impl RelayProcess {
    fn start(data: &Path, log: &Path) -> RelayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
            .env("RUST_LOG", "info")
            .arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("relay starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = lines
            .next()
            .expect("a line")
            .expect("utf-8")
            .replace("listening on ", "")
            .parse()
            .expect("address");
        let pin = Fingerprint::parse(
            &lines
                .next()
                .expect("a line")
                .expect("utf-8")
                .replace("fingerprint ", ""),
        )
        .expect("fingerprint");
        std::thread::spawn(move || for _ in lines {});
        RelayProcess { child, addr, pin }
    }

    /// Resident memory now, in bytes.
    fn rss(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The highest resident memory seen while sampling every 50 ms for `window`.
    async fn peak_rss(&self, window: Duration) -> u64 {
        let end = Instant::now() + window;
        let mut peak = self.rss();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(self.rss());
        }
        peak
    }

    fn config(&self, user: &str, token: &str) -> ClientConfig {
        ClientConfig {
            relay: self.addr.to_string(),
            user: user.into(),
            token: token.into(),
            trust: self.pin.into(),
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw QUIC connection to the relay from `from` (an attacker's own endpoint).
async fn raw_connection(
    relay: &RelayProcess,
    from: [u8; 4],
) -> (quinn::Endpoint, quinn::Connection) {
    let bind = SocketAddr::from((from, 0));
    let endpoint = walkie_net::client_endpoint(relay.pin, bind).expect("endpoint");
    let conn = endpoint
        .connect(relay.addr, walkie_net::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, conn)
}

fn users(data: &Path, names: &[&str]) -> Vec<String> {
    let store = SqliteStore::open(data).expect("store");
    names
        .iter()
        .map(|n| {
            let token = auth::new_token();
            store.add_user(n, &auth::hash_token(&token)).expect("user");
            token
        })
        .collect()
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_that_never_say_hello_park_almost_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = RelayProcess::start(&tmp.path().join("relay"), &tmp.path().join("relay.log"));
    let before = relay.rss();
    let mut attackers = Vec::new();
    for i in 0..100u8 {
        // Five attacking hosts, 20 connections each.
        let (endpoint, conn) = raw_connection(&relay, [127, 0, 0, 10 + i % 5]).await;
        let writer = conn.clone();
        let task = tokio::spawn(async move {
            let junk = vec![0x5au8; MIB as usize];
            let mut streams = Vec::new();
            // The control stream: a frame claiming the largest hello, then everything it can.
            if let Ok((mut send, _recv)) = writer.open_bi().await {
                let mut claim = (4096u32).to_be_bytes().to_vec();
                claim.extend_from_slice(&junk);
                streams.push(tokio::spawn(async move {
                    let _ = send.write_all(&claim).await;
                    Some(send)
                }));
            }
            // And clip streams, which an unauthenticated peer is not granted.
            for _ in 0..32 {
                let (writer, junk) = (writer.clone(), junk.clone());
                streams.push(tokio::spawn(async move {
                    // Waits for credit that never comes, until the relay closes the connection.
                    let mut send = writer.open_uni().await.ok()?;
                    let _ = send.write_all(&junk).await;
                    Some(send)
                }));
            }
            for s in streams {
                let _ = s.await;
            }
        });
        attackers.push((endpoint, conn, task));
    }
    let peak = relay.peak_rss(Duration::from_secs(3)).await;
    let rise = peak.saturating_sub(before);
    eprintln!(
        "100 unauthenticated writers: relay RSS {} -> {} MiB (peak), rise {:.1} MiB",
        before / MIB,
        peak / MIB,
        rise as f64 / MIB as f64
    );
    assert!(
        rise <= 100 * MIB,
        "100 unauthenticated connections raised the relay's memory by {rise} bytes"
    );
    // The relay closes them when their hello does not come (5 s).
    let closed = tokio::time::timeout(Duration::from_secs(10), attackers[0].1.closed()).await;
    assert!(
        closed.is_ok(),
        "an unauthenticated connection was not closed"
    );
    for (_, _, task) in attackers {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fetches_of_a_big_clip_that_are_never_read_cost_the_relay_little() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let tokens = users(&data, &["alice", "mallory"]);
    let id = ClipId::random();
    {
        let store = SqliteStore::open(&data).expect("store");
        store
            .add_channel("crew", &["alice".into(), "mallory".into()])
            .expect("channel");
        // 1 MB of stored "audio" (fetches send the stored bytes as they are).
        let ogg: Vec<u8> = (0..MIB as usize).map(|i| (i * 31 % 251) as u8).collect();
        let meta = ClipMeta {
            id,
            from: "alice".into(),
            to: Target::Channel("crew".into()),
            started_at_ms: now_ms(),
            duration_ms: 60_000,
            packets: 3_000,
            bytes: ogg.len() as u64,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 128_000,
                pre_skip: 312,
            },
            seq: 0,
            content: Default::default(),
        };
        store.commit_clip(&meta, &[], &ogg).expect("stored");
    }
    let relay = RelayProcess::start(&data, &tmp.path().join("relay.log"));
    let (_endpoint, conn) = raw_connection(&relay, [127, 0, 0, 2]).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let hello = ClientMsg::Hello {
        user: "mallory".into(),
        token: tokens[1].clone(),
        client: "hostile".into(),
    };
    write_frame(&mut send, &hello, MAX_CONTROL_FRAME)
        .await
        .expect("hello");
    let welcome = read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME)
        .await
        .expect("welcome");
    assert!(
        matches!(welcome, Some(ServerMsg::Welcome { .. })),
        "{welcome:?}"
    );
    let before = relay.rss();
    // 1,000 fetches in one go; mallory never accepts a stream nor reads a reply.
    let mut burst = Vec::new();
    for req in 0..1000u64 {
        burst.extend_from_slice(
            &walkie_proto::wire::encode_frame(&ClientMsg::Fetch { req, id }, MAX_CONTROL_FRAME)
                .expect("frame"),
        );
    }
    let writing = tokio::spawn(async move {
        let _ = send.write_all(&burst).await;
        send
    });
    let peak = relay.peak_rss(Duration::from_secs(8)).await;
    let rise = peak.saturating_sub(before);
    eprintln!(
        "1,000 unread fetches of a 1 MiB clip: relay RSS {} -> {} MiB (peak), rise {:.1} MiB",
        before / MIB,
        peak / MIB,
        rise as f64 / MIB as f64
    );
    assert!(
        rise <= 16 * MIB,
        "unread fetches raised the relay's memory by {rise} bytes"
    );
    writing.abort();
    // alice is not held up by mallory's fetches.
    let alice = tokio::time::timeout(
        Duration::from_secs(10),
        Client::connect(&relay.config("alice", &tokens[0])),
    )
    .await
    .expect("alice connects in time")
    .expect("alice connects");
    let (meta, bytes) = alice.fetch(id).await.expect("alice fetches");
    assert_eq!((meta.id, bytes.len() as u64), (id, MIB));
}

/// `n` distinct QUIC Initial packets as a real client sends them (each opens a handshake with
/// its own connection id), captured on a socket of our own instead of reaching any server.
async fn capture_initials(pin: Fingerprint, n: usize) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.2:0")
        .await
        .expect("sink");
    let target = sink.local_addr().expect("addr");
    let endpoint =
        walkie_net::client_endpoint(pin, "127.0.0.2:0".parse().expect("addr")).expect("endpoint");
    let mut packets = Vec::with_capacity(n);
    let mut buf = vec![0u8; 2048];
    while packets.len() < n {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                endpoint
                    .connect(target, walkie_net::SERVER_NAME)
                    .expect("connect")
            })
            .collect();
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_millis(500), sink.recv(&mut buf)).await {
                Ok(Ok(len)) => packets.push(buf[..len].to_vec()),
                _ => break,
            }
        }
        drop(batch);
    }
    packets.truncate(n);
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bare_initials_from_one_source_does_not_lock_anyone_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let tokens = users(&data, &["alice"]);
    let relay = RelayProcess::start(&data, &tmp.path().join("relay.log"));
    const PER_SECOND: usize = 1_000;
    const TRIES: usize = 20;
    let initials = capture_initials(relay.pin, 12 * PER_SECOND).await;
    assert!(
        initials
            .iter()
            .all(|p| p.len() >= 1200 && p[0] & 0xf0 == 0xc0),
        "long-header Initial packets"
    );
    let target = relay.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = stop.clone();
    // One UDP socket, 1,000 bare Initials a second, never answering anything.
    let flood = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.2:0").expect("attacker socket");
        let start = Instant::now();
        let mut sent = 0usize;
        for (i, p) in initials.iter().cycle().enumerate() {
            if flooding.load(std::sync::atomic::Ordering::Relaxed)
                || start.elapsed() > Duration::from_secs(60)
            {
                break;
            }
            let due = start + Duration::from_micros(1_000_000 * i as u64 / PER_SECOND as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if socket.send_to(p, target).is_ok() {
                sent += 1;
            }
        }
        (sent, start.elapsed())
    });
    // Let the flood take hold, then try to get in as alice, one try after another.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cfg = relay.config("alice", &tokens[0]);
    let mut times = Vec::new();
    for _ in 0..TRIES {
        let started = Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), Client::connect(&cfg)).await {
            Ok(Ok(client)) => {
                times.push(started.elapsed());
                client.close().await;
            }
            Ok(Err(e)) => eprintln!("a try failed: {e}"),
            Err(_) => eprintln!("a try took over 2 s"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, took) = flood.join().expect("flood thread");
    let rate = sent as f64 / took.as_secs_f64();
    times.sort();
    eprintln!(
        "flood of {sent} Initials at {rate:.0}/s: {} of {TRIES} connects within 2 s, median {:?}, slowest {:?}",
        times.len(),
        times.get(times.len() / 2),
        times.last()
    );
    assert!(
        rate >= 0.9 * PER_SECOND as f64,
        "the flood ran at {rate:.0} packets a second"
    );
    assert!(
        times.len() * 100 >= TRIES * 95,
        "only {} of {TRIES} connects made it within 2 s",
        times.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_cannot_forge_or_colour_a_log_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let log = tmp.path().join("relay.log");
    let tokens = users(&data, &["alice"]);
    let relay = RelayProcess::start(&data, &log);
    let (_endpoint, conn) = raw_connection(&relay, [127, 0, 0, 2]).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("control stream");
    let forged = "cli\n2026-11-29T10:00:00.000000Z  INFO walkie_relay: user removed user=admin\x1b[2J\u{202e}";
    let hello = ClientMsg::Hello {
        user: "alice".into(),
        token: tokens[0].clone(),
        client: forged.into(),
    };
    write_frame(&mut send, &hello, MAX_CONTROL_FRAME)
        .await
        .expect("hello");
    let welcome = read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME)
        .await
        .expect("welcome");
    assert!(
        matches!(welcome, Some(ServerMsg::Welcome { .. })),
        "{welcome:?}"
    );
    // And a refused hello whose user name carries the same.
    let (_e2, conn2) = raw_connection(&relay, [127, 0, 0, 2]).await;
    let (mut send2, mut recv2) = conn2.open_bi().await.expect("control stream");
    let bad = ClientMsg::Hello {
        user: forged.into(),
        token: "00".into(),
        client: forged.into(),
    };
    write_frame(&mut send2, &bad, MAX_CONTROL_FRAME)
        .await
        .expect("hello");
    let _ = read_frame::<ServerMsg>(&mut recv2, MAX_CONTROL_FRAME).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (text.contains("session opened") && text.contains("refused"))
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("session opened") && text.contains("refused"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "raw escapes reached the log: {text:?}"
    );
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-11-29T10:00:00"),
            "a forged line: {line:?}"
        );
    }
    assert!(
        text.contains("\\u{a}2026-11-29T10:00:00"),
        "the forgery is visible, escaped: {text}"
    );
}
