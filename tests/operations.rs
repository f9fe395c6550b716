//! Running a relay in production: the metrics and health listener (`serve --metrics`), scraped
//! while a clip is talked; JSON logs; `walkie-relay status`.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walkie_client::{Client, ClientError, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_relay::{RelayConfig, auth};

/// One HTTP/1.1 request on a fresh connection: the status and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut raw = Vec::new();
    within(10, "an HTTP answer", stream.read_to_end(&mut raw))
        .await
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample (`name` with its labels, exactly as exposed); 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes until `ok` holds of the exposition, for at most 10 s.
async fn scrape_until(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_a_send_does_and_readiness_follows_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        metrics: Some(([127, 0, 0, 1], 0).into()),
        ..RelayConfig::default()
    };
    let (relay, faulty) = start_faulty_relay(&tmp.path().join("relay"), config).await;
    let metrics = relay.handle.metrics_addr.expect("a metrics listener");
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    relay.add_channel("crew", &["alice", "bob"]);

    let before = scrape(metrics).await;
    for zero in [
        "walkie_clips_stored_total",
        "walkie_sessions",
        "walkie_live_listeners",
        "walkie_inbox_depth",
    ] {
        assert_eq!(sample(&before, zero), 0.0, "{zero} at start:\n{before}");
    }
    assert!(before.ends_with("# EOF\n"));

    let a = Client::connect(&alice).await.expect("alice connects");
    let mut b = Client::connect(&bob).await.expect("bob connects");
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        while let Some(event) = b.next_event().await {
            if let Event::Clip(clip) = event {
                b.ack(clip.header.id).await.expect("acked");
                let _ = heard_tx.send(clip.header.id);
            }
        }
    });
    scrape_until(metrics, "two sessions", |t| {
        sample(t, "walkie_sessions") == 2.0
            && sample(t, "walkie_connections{state=\"session\"}") == 2.0
    })
    .await;

    // A 2 s clip, talked in real time: scraped while it is live.
    let pcm: Vec<f32> = (0..96_000).map(|i| (i as f32 * 0.03).sin() * 0.3).collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to: Target::Channel("crew".into()),
        started_at_ms: now_ms(),
        codec: clip.params,
    };
    let mut up = a.start_clip(&header).await.expect("upload starts");
    let mut packets = clip.packets.iter();
    for p in packets.by_ref().take(25) {
        up.packet(p.clone()).await.expect("packet");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = scrape_until(metrics, "bob listening live while alice talks", |t| {
        sample(t, "walkie_live_listeners") == 1.0 && sample(t, "walkie_floors_held") == 1.0
    })
    .await;
    assert_eq!(sample(&during, "walkie_clips_stored_total"), 0.0);
    assert_eq!(sample(&during, "walkie_floor_grants_total"), 1.0);
    for p in packets {
        up.packet(p.clone()).await.expect("packet");
    }
    up.finish(clip.samples).await.expect("stored");
    let got = within(10, "bob hears the clip", heard.recv()).await;
    assert_eq!(got, Some(header.id));
    let (_, file) = a.fetch(header.id).await.expect("fetched");
    let history = a
        .history(Some(Target::Channel("crew".into())), 10, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);

    let after = scrape_until(metrics, "the clip's live copy done", |t| {
        sample(t, "walkie_live_listeners") == 0.0 && sample(t, "walkie_floors_held") == 0.0
    })
    .await;
    assert_eq!(sample(&after, "walkie_clips_stored_total"), 1.0);
    assert_eq!(
        sample(&after, "walkie_items_stored_total{kind=\"clip\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "walkie_stored_bytes_total"),
        file.len() as f64,
        "bytes stored are the stored file's"
    );
    assert!(sample(&after, "walkie_store_commit_seconds_count") >= 1.0);
    // Every packet and the end marker went to bob's live copy.
    assert!(
        sample(&after, "walkie_fanout_delay_seconds_count") >= clip.packets.len() as f64,
        "{after}"
    );
    assert_eq!(sample(&after, "walkie_sessions_opened_total"), 2.0);
    assert_eq!(
        sample(&after, "walkie_handshakes_total{reason=\"ok\"}"),
        2.0
    );
    assert_eq!(sample(&after, "walkie_requests_total{kind=\"fetch\"}"), 1.0);
    assert_eq!(
        sample(&after, "walkie_requests_total{kind=\"history\"}"),
        1.0
    );

    // A wrong token: one refusal, by its reason.
    let mut wrong = alice.clone();
    wrong.token = auth::new_token();
    match Client::connect(&wrong).await {
        Err(ClientError::Refused(_)) => {}
        other => panic!("a wrong token is refused, got {:?}", other.map(|_| ())),
    }
    scrape_until(metrics, "the refusal counted", |t| {
        sample(t, "walkie_refusals_total{reason=\"unauthorized\"}") == 1.0
    })
    .await;

    // bob goes away; a clip for him waits in his inbox.
    listener.abort();
    let _ = listener.await;
    scrape_until(metrics, "bob gone, his inbox empty", |t| {
        sample(t, "walkie_sessions") == 1.0 && sample(t, "walkie_inbox_depth") == 0.0
    })
    .await;
    let second = ClipHeader {
        id: ClipId::random(),
        ..header.clone()
    };
    a.send_clip(&second, &clip.packets, clip.samples)
        .await
        .expect("stored");
    let waiting = scrape(metrics).await;
    assert_eq!(sample(&waiting, "walkie_inbox_depth"), 1.0, "{waiting}");
    assert_eq!(sample(&waiting, "walkie_clips_stored_total"), 2.0);

    // Health and readiness; a store that cannot write is not ready.
    assert_eq!(http(metrics, "GET", "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        http(metrics, "GET", "/readyz").await,
        (200, "ready\n".into())
    );
    faulty.set_disk_full(true);
    let (status, body) = http(metrics, "GET", "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready:"), "{body}");
    assert_eq!(http(metrics, "GET", "/healthz").await.0, 200);
    faulty.set_disk_full(false);
    assert_eq!(http(metrics, "GET", "/readyz").await.0, 200);
    // Nothing else is served.
    assert_eq!(http(metrics, "GET", "/metrics/../etc").await.0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").await.0, 405);
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_scraper_holds_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(
        &tmp.path().join("relay"),
        RelayConfig {
            metrics: Some(([127, 0, 0, 1], 0).into()),
            ..RelayConfig::default()
        },
    )
    .await;
    let metrics = relay.handle.metrics_addr.expect("listener");
    // Connections from one source that send nothing, more than the listener serves at once:
    // it keeps half its slots at most for them and closes the rest at once.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(metrics)
                .await
                .expect("connects"),
        );
    }
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 12,
        "only {closed} of 20 idle connections were closed"
    );
    // Another source is served at once, while they hold their share.
    let other = tokio::net::TcpSocket::new_v4().expect("socket");
    other
        .bind(([127, 0, 0, 2], 0).into())
        .expect("a second loopback address");
    let mut stream = within(
        5,
        "a connection from another source",
        other.connect(metrics),
    )
    .await
    .expect("connects");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .expect("sent");
    let mut answer = Vec::new();
    within(
        5,
        "an answer beside the idle ones",
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // A head larger than the listener reads is refused, not buffered.
    let other = tokio::net::TcpSocket::new_v4().expect("socket");
    other.bind(([127, 0, 0, 3], 0).into()).expect("bind");
    let mut big = other.connect(metrics).await.expect("connects");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = within(
        10,
        "the oversized head's answer",
        big.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    // The silent ones lose their slots after the head deadline (5 s); scrapes from their
    // source then work again.
    let text = within(20, "a scrape behind silent connections", async {
        loop {
            let mut s = tokio::net::TcpStream::connect(metrics)
                .await
                .expect("connects");
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
                .await;
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw).await;
            if !raw.is_empty() {
                return String::from_utf8_lossy(&raw).into_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(text.contains("walkie_sessions"));
    drop(idle);
    relay.handle.shutdown().await;
}

/// Runs `walkie-relay --data-dir DIR ARGS...`; its stdout, or a panic with its stderr.
fn admin(data: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "walkie-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A relay process killed when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_relay_logs_json_lines_and_status_reports_it() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let token = admin(&data, &["user", "add", "alice"])
        .lines()
        .last()
        .expect("a token")
        .to_string();
    admin(&data, &["channel", "add", "crew", "--members", "alice"]);
    let log = tmp.path().join("relay.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
        .env("RUST_LOG", "info")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("relay starts");
    let stdout = child.stdout.take().expect("stdout");
    let relay = Served(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut next = || lines.next().expect("a line").expect("utf-8");
    let listening = next();
    let addr = listening
        .strip_prefix("listening on ")
        .expect("the listening line first")
        .to_string();
    let pin = walkie_net::Fingerprint::parse(
        next()
            .strip_prefix("fingerprint ")
            .expect("the fingerprint line"),
    )
    .expect("fingerprint");
    assert!(next().starts_with("certificate "));
    let metrics_line = next();
    let metrics = metrics_line
        .strip_prefix("metrics on http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .expect("the metrics line")
        .to_string();

    let a = Client::connect(&walkie_client::ClientConfig {
        relay: addr.clone(),
        user: "alice".into(),
        token: token.clone(),
        trust: pin.into(),
    })
    .await
    .expect("alice connects");
    a.history(Some(Target::Channel("crew".into())), 5, None)
        .await
        .expect("history");

    // The state file is written every 2 s: status sees alice's session within a few.
    let deadline = Instant::now() + Duration::from_secs(15);
    let report = loop {
        let report = admin(&data, &["status"]);
        if report.contains("sessions 1 ") || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{report}"))
            .to_string()
    };
    assert!(line("relay running (pid ").contains(&format!("pid {}", relay.0.id())));
    assert_eq!(line("listening on "), listening);
    assert_eq!(line("metrics on "), metrics_line);
    assert!(line("sessions ").starts_with("sessions 1 "), "{report}");
    assert_eq!(line("users "), "users 1");
    assert_eq!(line("channels "), "channels 1");
    let storage: u64 = line("storage ")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a byte count");
    assert!(storage > 0, "{report}");
    let (status, _) = http(metrics.parse().expect("address"), "GET", "/readyz").await;
    assert_eq!(status, 200);

    drop(a);
    drop(relay);
    let report = admin(&data, &["status"]);
    assert!(report.starts_with("relay not running\n"), "{report}");
    assert!(report.contains("users 1\n"), "{report}");

    // Every line on stderr is one JSON object; the session and each request have a line
    // naming the session and its user; the token is nowhere.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains(&token), "the token was logged");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{text}"))
    };
    let opened = find("session opened");
    assert_eq!(opened["span"]["user"], "alice", "{opened}");
    assert!(opened["span"]["session"].is_u64(), "{opened}");
    let request = find("request");
    assert_eq!(request["fields"]["request"], "history", "{request}");
    assert_eq!(request["fields"]["outcome"], "ok", "{request}");
    assert_eq!(request["span"]["user"], "alice", "{request}");
    assert_eq!(request["span"]["session"], opened["span"]["session"]);
}

/// A start that fails in JSON mode says why in JSON too: every stderr line stays an object.
#[test]
fn a_failed_start_in_json_mode_is_reported_as_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
        .env("RUST_LOG", "off")
        .arg("--data-dir")
        .arg(tmp.path().join("relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &addr,
            "--log-format",
            "json",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stderr).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a line, even with RUST_LOG=off");
    assert_eq!(last["level"], "ERROR");
    let message = last["fields"]["message"].as_str().expect("a message");
    assert!(
        message.starts_with("error: ") && message.contains(&addr),
        "{message}"
    );
}
