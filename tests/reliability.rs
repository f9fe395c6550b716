//! Reliability and security promises, each with a test that fails if the promise breaks:
//! disk trouble, rate and connection limits, revocation, purge, tokens kept out of logs,
//! and bad input from raw QUIC peers (wrong ALPN, huge lengths, truncated and garbage
//! frames, clips that never end, floods of streams). Loopback only, bounded in time.

mod support;

use std::time::Duration;

use support::*;
use walkie_client::ops;
use walkie_client::outbox::Outbox;
use walkie_client::{Client, ClientError, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_net::{self, read_frame, write_frame};
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::wire::{ErrorCode, MAX_CONTROL_FRAME, MAX_STREAM_FRAME, ServerMsg, StreamFrame};
use walkie_relay::{RelayConfig, auth};
use walkie_store::sqlite::SqliteStore;
use walkie_store::{PURGED_SENDER, Store};

fn tone_clip(ms: usize) -> (CodecParams, Vec<Vec<u8>>, u64) {
    let pcm: Vec<f32> = (0..ms * 48)
        .map(|i| (i as f32 * 0.02).sin() * 0.3)
        .collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    (clip.params, clip.packets, clip.samples)
}

fn header(to: Target, codec: CodecParams) -> ClipHeader {
    ClipHeader {
        id: ClipId::random(),
        to,
        started_at_ms: now_ms(),
        codec,
    }
}

fn crew() -> Target {
    Target::Channel("crew".into())
}

fn refusal(e: ClientError) -> walkie_proto::wire::ErrorMsg {
    match e {
        ClientError::Refused(m) => m,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_clips_keeps_serving_reads_and_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (relay, faulty) =
        start_faulty_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    relay.add_channel("crew", &["alice", "bob"]);
    let alice_c = Client::connect(&alice).await.expect("connects");
    let (params, packets, samples) = tone_clip(400);
    let first = header(crew(), params);
    alice_c
        .send_clip(&first, &packets, samples)
        .await
        .expect("stored while the disk has space");

    faulty.set_disk_full(true);
    let e = refusal(
        alice_c
            .send_clip(&header(crew(), params), &packets, samples)
            .await
            .expect_err("refused"),
    );
    assert_eq!(e.code, ErrorCode::Storage);
    assert!(
        e.message.contains("No space left on device"),
        "{}",
        e.message
    );
    // Reads keep working: history, fetch, delivery of what is stored.
    assert_eq!(
        alice_c
            .history(Some(crew()), 10, None)
            .await
            .expect("history")
            .len(),
        1
    );
    alice_c.fetch(first.id).await.expect("fetch");
    let mut bob_c = Client::connect(&bob).await.expect("connects");
    let got = within(10, "delivery", async {
        loop {
            if let Some(Event::Clip(c)) = bob_c.next_event().await {
                return c;
            }
        }
    })
    .await;
    assert_eq!(got.header.id, first.id);

    // The outbox keeps the refused clip and delivers it once space returns.
    let outbox = Outbox::open(&tmp.path().join("outbox")).expect("outbox");
    let wav = tmp.path().join("tone.wav");
    walkie_media::audio::wav::write_wav_mono16(&wav, 48_000, &vec![0.2f32; 9_600]).expect("wav");
    let (queued, _) =
        ops::queue_wav(&outbox, &wav, crew(), &EncoderConfig::default()).expect("queued");
    let retry = tokio::spawn({
        let (alice, outbox) = (alice.clone(), outbox.clone());
        async move {
            ops::flush_with_retry(&alice, &outbox, Some(queued.id), Duration::from_secs(30)).await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        faulty.refused_writes() >= 2,
        "the retries met the full disk"
    );
    assert_eq!(
        outbox.pending().expect("pending").len(),
        1,
        "still queued while the disk is full"
    );
    faulty.set_disk_full(false);
    let report = within(40, "retry", retry)
        .await
        .expect("joined")
        .expect("sent after recovery");
    assert_eq!(
        report.stored.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![queued.id]
    );
    assert!(relay.store.clip(&queued.id).expect("store").is_some());
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_busy_with_a_retry_delay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        max_connections: 2,
        clips_per_minute: 2,
        busy_retry_ms: 250,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let a = relay.connect(&alice).await;
    let (params, packets, samples) = tone_clip(200);
    for _ in 0..2 {
        a.send_clip(&header(crew(), params), &packets, samples)
            .await
            .expect("within the rate");
    }
    let e = refusal(
        a.send_clip(&header(crew(), params), &packets, samples)
            .await
            .expect_err("third refused"),
    );
    let ErrorCode::Busy { retry_after_ms } = e.code else {
        panic!("expected busy, got {e:?}")
    };
    assert!(
        retry_after_ms > 20_000 && retry_after_ms <= 30_000,
        "a token refills in 30 s: {retry_after_ms}"
    );
    assert!(e.message.starts_with("busy, retry after "), "{}", e.message);
    assert!(
        e.message.contains("at most 2 clips per minute"),
        "{}",
        e.message
    );

    // Connection limit: the third connection is told to come back later.
    let _b = relay.connect(&bob).await;
    let e = refusal(
        Client::connect(&bob)
            .await
            .err()
            .expect("third connection refused"),
    );
    assert_eq!(
        e.code,
        ErrorCode::Busy {
            retry_after_ms: 250
        }
    );
    assert_eq!(e.message, "busy, retry after 250 ms");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_closes_their_session_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    relay.add_user("alice");
    let bob = relay.add_user("bob");
    let mut bob_c = relay.connect(&bob).await;
    // An admin in another process removes bob (a second store on the same data dir).
    let admin = SqliteStore::open(&relay.data).expect("admin store");
    assert!(admin.remove_user("bob").expect("removed"));
    let ended = within(10, "revocation", async {
        while bob_c.next_event().await.is_some() {}
    })
    .await;
    let () = ended;
    assert!(
        bob_c.close_reason().expect("closed").contains("removed"),
        "{:?}",
        bob_c.close_reason()
    );
    let e = refusal(Client::connect(&bob).await.err().expect("refused"));
    assert_eq!(e.code, ErrorCode::Unauthorized);
    relay.handle.shutdown().await;
}

/// Every regular file under `dir`, recursively.
fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_leaves_no_byte_of_the_users_audio_in_the_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let a = relay.connect(&alice).await;
    let b = relay.connect(&bob).await;
    let speech = sample_48k("hello-crew.wav");
    let clip = codec::encode_pcm(&speech, &EncoderConfig::default()).expect("encodes");
    let alice_clip = header(crew(), clip.params);
    a.send_clip(&alice_clip, &clip.packets, clip.samples)
        .await
        .expect("stored");
    let other = codec::encode_pcm(&sample_48k("status-report.wav"), &EncoderConfig::default())
        .expect("encodes");
    let bob_clip = header(crew(), other.params);
    b.send_clip(&bob_clip, &other.packets, other.samples)
        .await
        .expect("stored");
    // alice takes her history with her first.
    let export = tmp.path().join("export");
    assert_eq!(ops::export(&a, &export).await.expect("export"), 2);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
        .arg("--data-dir")
        .arg(&relay.data)
        .args(["user", "purge", "alice"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("purged the audio of 1 clips sent by alice")
    );

    // No distinctive packet of alice's audio remains in any file of the data dir.
    let files: Vec<Vec<u8>> = all_files(&relay.data)
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let distinctive: Vec<&Vec<u8>> = clip.packets.iter().filter(|p| p.len() >= 40).collect();
    assert!(distinctive.len() > 100);
    for p in &distinctive {
        assert!(
            !files
                .iter()
                .any(|f| f.windows(p.len()).any(|w| w == p.as_slice())),
            "a packet of the purged audio remains"
        );
    }
    // bob's audio is still there, and the metadata is anonymised.
    let bob_packet = other
        .packets
        .iter()
        .find(|p| p.len() >= 40)
        .expect("a packet");
    assert!(files.iter().any(|f| {
        f.windows(bob_packet.len())
            .any(|w| w == bob_packet.as_slice())
    }));
    let history = b.history(Some(crew()), 10, None).await.expect("history");
    assert_eq!(
        history.iter().map(|m| m.from.as_str()).collect::<Vec<_>>(),
        vec![PURGED_SENDER, "bob"]
    );
    assert_eq!(
        refusal(b.fetch(alice_clip.id).await.expect_err("gone")).code,
        ErrorCode::NotFound
    );
    b.fetch(bob_clip.id).await.expect("bob's clip still served");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_the_relays_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let token = {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
            .arg("--data-dir")
            .arg(&data)
            .args(["user", "add", "alice"])
            .output()
            .expect("runs");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .last()
            .expect("token")
            .to_string()
    };
    let log = tmp.path().join("relay.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-relay"))
        .env("RUST_LOG", "trace")
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("relay starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let addr = lines
        .next()
        .expect("line")
        .expect("utf-8")
        .replace("listening on ", "");
    let fp = lines
        .next()
        .expect("line")
        .expect("utf-8")
        .replace("fingerprint ", "");
    let pin = walkie_net::Fingerprint::parse(&fp).expect("fingerprint");
    let good = walkie_client::ClientConfig {
        relay: addr.clone(),
        user: "alice".into(),
        token: token.clone(),
        trust: pin.into(),
    };
    let wrong_token = auth::new_token();
    let bad = walkie_client::ClientConfig {
        token: wrong_token.clone(),
        ..good.clone()
    };
    Client::connect(&good)
        .await
        .expect("connects")
        .close()
        .await;
    assert!(Client::connect(&bad).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("session opened"),
        "the log was captured: {} bytes",
        text.len()
    );
    assert!(text.contains("refused"), "the refusal was logged");
    assert!(!text.contains(&token), "the token leaked into the log");
    assert!(
        !text.contains(&wrong_token),
        "a wrong token leaked into the log"
    );
    let stored = std::fs::read(data.join("walkie.db")).expect("db");
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token is stored only hashed"
    );
}

/// Reads control messages until an error arrives.
async fn next_error(recv: &mut quinn::RecvStream) -> walkie_proto::wire::ErrorMsg {
    within(15, "an error on the control stream", async {
        loop {
            match read_frame::<ServerMsg>(recv, MAX_CONTROL_FRAME)
                .await
                .expect("reads")
                .expect("open")
            {
                ServerMsg::Error(e) => return e,
                _ => continue,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_the_offending_stream_or_connection() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        stream_idle: Duration::from_secs(1),
        max_clip_ms: 2_000,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let mut bob_c = relay.connect(&bob).await;
    let (params, packets, samples) = tone_clip(300);

    // A wrong ALPN (another protocol version) fails the handshake.
    let ep = walkie_net::client_endpoint_with_alpn(
        alice.trust.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        b"walkie/0",
    )
    .expect("endpoint");
    let err = ep
        .connect(relay.handle.addr, walkie_net::SERVER_NAME)
        .expect("connect")
        .await
        .expect_err("refused");
    assert!(
        err.to_string().to_lowercase().contains("alpn") || err.to_string().contains("120"),
        "{err}"
    );

    // A hello announcing a 4 GiB frame: refused before allocating, connection closed.
    {
        let ep =
            walkie_net::client_endpoint(alice.trust.clone(), "127.0.0.1:0".parse().expect("addr"))
                .expect("endpoint");
        let conn = ep
            .connect(relay.handle.addr, walkie_net::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .expect("write");
        let e = match read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(ServerMsg::Error(e))) => e,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("exceeds the limit"), "{}", e.message);
        within(5, "close", conn.closed()).await;
    }
    // A truncated hello.
    {
        let ep =
            walkie_net::client_endpoint(alice.trust.clone(), "127.0.0.1:0".parse().expect("addr"))
                .expect("endpoint");
        let conn = ep
            .connect(relay.handle.addr, walkie_net::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(&[0, 0, 0, 40, 0, 5]).await.expect("write");
        send.finish().expect("finish");
        let e = match read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(ServerMsg::Error(e))) => e,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    let (_ep, conn, _send, mut recv) = raw_session(&alice).await;
    // Clip streams: an oversize length, garbage, a truncated frame, garbage Opus.
    let h = header(crew(), params);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff]),
        ("garbage body", vec![0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]),
        ("truncated frame", vec![0, 0, 1, 0, 1, 2]),
    ];
    for (what, bytes) in cases {
        let mut s = conn.open_uni().await.expect("stream");
        s.write_all(&bytes).await.expect("write");
        let _ = s.finish();
        let e = next_error(&mut recv).await;
        assert_eq!(e.code, ErrorCode::BadRequest, "{what}: {e:?}");
    }
    let mut s = conn.open_uni().await.expect("stream");
    write_frame(&mut s, &StreamFrame::Upload(h.clone()), MAX_STREAM_FRAME)
        .await
        .expect("header");
    write_frame(
        &mut s,
        &StreamFrame::Packet(vec![0xff, 0xff, 0xff]),
        MAX_STREAM_FRAME,
    )
    .await
    .expect("packet");
    let e = next_error(&mut recv).await;
    assert_eq!(
        (e.code, e.clip),
        (ErrorCode::BadRequest, Some(h.id)),
        "{e:?}"
    );
    assert!(e.message.contains("not valid Opus"), "{}", e.message);

    // A clip that never ends: dropped after the stream idle timeout.
    let idle = header(crew(), params);
    let mut s = conn.open_uni().await.expect("stream");
    write_frame(&mut s, &StreamFrame::Upload(idle.clone()), MAX_STREAM_FRAME)
        .await
        .expect("header");
    write_frame(
        &mut s,
        &StreamFrame::Packet(packets[0].clone()),
        MAX_STREAM_FRAME,
    )
    .await
    .expect("packet");
    let e = next_error(&mut recv).await;
    assert_eq!(
        (e.code, e.clip),
        (ErrorCode::Timeout, Some(idle.id)),
        "{e:?}"
    );

    // A clip longer than the maximum (2 s here).
    let long =
        codec::encode_pcm(&vec![0.1f32; 48 * 3_000], &EncoderConfig::default()).expect("encodes");
    let too_long = header(crew(), long.params);
    let mut s = conn.open_uni().await.expect("stream");
    write_frame(
        &mut s,
        &StreamFrame::Upload(too_long.clone()),
        MAX_STREAM_FRAME,
    )
    .await
    .expect("header");
    for p in &long.packets {
        if write_frame(&mut s, &StreamFrame::Packet(p.clone()), MAX_STREAM_FRAME)
            .await
            .is_err()
        {
            break;
        }
    }
    let e = next_error(&mut recv).await;
    assert_eq!(
        (e.code, e.clip),
        (ErrorCode::TooLong, Some(too_long.id)),
        "{e:?}"
    );

    // A flood of streams: each junk stream is refused; the relay never holds more than its
    // stream limit open for this client, and keeps serving.
    let flood = async {
        for _ in 0..2_000 {
            let Ok(mut s) = conn.open_uni().await else {
                break;
            };
            let _ = s.write_all(&[0, 0, 0, 1, 0xee]).await;
            let _ = s.finish();
        }
    };
    within(60, "stream flood", flood).await;

    // The same connection still sends a valid clip, and others were never disturbed.
    let ok = header(crew(), params);
    let mut s = conn.open_uni().await.expect("stream");
    write_frame(&mut s, &StreamFrame::Upload(ok.clone()), MAX_STREAM_FRAME)
        .await
        .expect("header");
    for p in &packets {
        write_frame(&mut s, &StreamFrame::Packet(p.clone()), MAX_STREAM_FRAME)
            .await
            .expect("packet");
    }
    write_frame(
        &mut s,
        &StreamFrame::End {
            packets: packets.len() as u32,
            samples,
        },
        MAX_STREAM_FRAME,
    )
    .await
    .expect("end");
    s.finish().expect("finish");
    within(30, "ack after the flood", async {
        loop {
            match read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME)
                .await
                .expect("reads")
                .expect("open")
            {
                ServerMsg::ClipStored { id, .. } if id == ok.id => return,
                _ => continue,
            }
        }
    })
    .await;
    let got = within(20, "delivery to bob", async {
        loop {
            if let Some(Event::Clip(c)) = bob_c.next_event().await {
                return c;
            }
        }
    })
    .await;
    assert_eq!(got.header.id, ok.id, "bob got only the valid clip");
    relay.handle.shutdown().await;
}

/// A client whose application takes none of its events (a busy UI, or a test that only
/// fetches) still gets the answer to its own fetch: the inbox streams that wait for the
/// application never hold up the stream that carries a fetched file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_events_still_gets_its_fetches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let _alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    // More inbox items than the client's event queue holds (256), stored while bob is away.
    let (params, packets, samples) = tone_clip(20);
    let ogg = walkie_proto::ogg::write_ogg(&params, &packets, samples, 7).expect("ogg");
    let clips: Vec<walkie_store::NewClip> = (0..300)
        .map(|_| walkie_store::NewClip {
            meta: walkie_proto::clip::ClipMeta {
                id: ClipId::random(),
                from: "alice".into(),
                to: Target::User("bob".into()),
                started_at_ms: now_ms(),
                duration_ms: 20,
                packets: packets.len() as u32,
                bytes: ogg.len() as u64,
                codec: params,
                seq: 0,
                content: Default::default(),
            },
            recipients: vec!["bob".into()],
            payload: ogg.clone(),
        })
        .collect();
    let last = clips.last().expect("clips").meta.id;
    for outcome in relay.store.commit_clips(clips) {
        outcome.expect("stored");
    }
    let b = relay.connect(&bob).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (meta, file) = within(10, "a fetch behind a full event queue", b.fetch(last))
        .await
        .expect("fetched");
    assert_eq!(meta.id, last);
    assert_eq!(file, ogg);
    relay.handle.shutdown().await;
}
