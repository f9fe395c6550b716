//! Live voice over a bad network, in process: alice talks recorded speech (a `wav:` source,
//! paced in real time) to channel crew through the impairing proxy of
//! `tests/support/impair.rs` (loss, delay and jitter on every datagram, both ways, for her and
//! for bob); bob's client hands what arrives, by stream and as datagrams, to the player
//! (adaptive jitter buffer, in-band FEC, concealment) playing into a recording sink. His audio
//! is scored with wide-band PESQ against the speech; the stored clip must be exactly what
//! alice's encoder made, also when her address changes in the middle of the clip.

mod support;

use std::time::Duration;

use support::impair::{ImpairProxy, Impairment};
use support::live_path::{Carriage, mouth_to_ear_ms, talk_through};
use support::quantile;
use tokio::net::UdpSocket;
use walkie_client::{Client, ClientConfig, Event};
use walkie_proto::clip::Target;
use walkie_relay::RelayConfig;

/// At 10% random loss each way with 30 ms ± 20 ms of delay (the acceptance path),
/// with alice's client moving to a new socket half way through: the stored clip is exactly
/// what alice encoded, bob hears the clip live to its end, datagrams carry the first copy of
/// many packets, and his audio stays intelligible.
///
/// The bound: live PESQ-WB within 0.5 of the loss-free run. The jitter buffer holds the
/// delay a clip starts with and conceals late packets in place (see `walkie_media::jitter`);
/// runs score 4.2 to 4.3 against 4.31 without loss (BENCHMARKS.md section 13).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_survives_ten_percent_loss_each_way_and_a_rebind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (wav, speech) = support::recorded_speech(dir.path());
    let clean_dir = dir.path().join("clean");
    let clean = talk_through(
        &clean_dir,
        Impairment::NONE,
        1,
        None,
        &wav,
        &speech,
        Carriage::Resilient,
    )
    .await;
    let lossy_dir = dir.path().join("lossy");
    let lossy = talk_through(
        &lossy_dir,
        Impairment::new(0.10, 30, 20),
        2,
        Some(Duration::from_secs(5)),
        &wav,
        &speech,
        Carriage::Resilient,
    )
    .await;
    for (name, run) in [("clean", &clean), ("10% loss, 30 ± 20 ms", &lossy)] {
        println!(
            "{name}: PESQ-WB {:.2} live, {:.2} stored; mouth to ear p50 {:.0} ms, p95 {:.0} ms; {}/{} packets first by datagram; {:?}; {:.0} + {:.0} bytes/s up + down through the proxy",
            run.pesq,
            run.stored_pesq,
            quantile(&run.mouth_to_ear, 0.5),
            quantile(&run.mouth_to_ear, 0.95),
            run.datagram_first,
            run.packets,
            run.stats,
            run.up_bytes as f64 / run.seconds,
            run.down_bytes as f64 / run.seconds
        );
    }
    assert!(
        clean.stored_exact && lossy.stored_exact,
        "stored clips are exactly what was encoded"
    );
    assert!(
        clean.pesq > 3.7,
        "the loss-free live run scores {:.2}",
        clean.pesq
    );
    assert!(
        lossy.stored_pesq > 4.0,
        "the stored clip is the codec's quality: {:.2}",
        lossy.stored_pesq
    );
    assert!(
        lossy.datagram_first * 10 >= lossy.packets,
        "datagrams brought the first copy of only {} of {} packets",
        lossy.datagram_first,
        lossy.packets
    );
    assert!(
        lossy.pesq >= clean.pesq - 0.5,
        "10% loss: PESQ-WB {:.2} against {:.2} without loss ({:?})",
        lossy.pesq,
        clean.pesq,
        lossy.stats
    );
    assert_eq!(
        clean.stats.skipped + clean.stats.recovered,
        0,
        "{:?}",
        clean.stats
    );
}

/// A stream-only connection (`Client::connect_stream_only`, the benchmark's "before")
/// neither sends nor takes datagrams: every first copy bob gets came by the stream, the clip
/// is stored exactly, and on a clean path it sounds as it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_only_client_sends_and_takes_no_datagrams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (wav, speech) = support::recorded_speech(dir.path());
    let run = talk_through(
        &dir.path().join("run"),
        Impairment::NONE,
        3,
        None,
        &wav,
        &speech,
        Carriage::StreamOnly,
    )
    .await;
    assert_eq!(run.datagram_first, 0, "no datagram reached bob");
    assert!(run.stored_exact, "the stored clip is what alice encoded");
    assert!(run.pesq > 4.0, "PESQ-WB {:.2}", run.pesq);
    assert_eq!(
        run.stats.skipped + run.stats.recovered,
        0,
        "{:?}",
        run.stats
    );
    // Without datagram copies the wire carries about the stream alone: less than the
    // resilient run's 12 + 15 kB/s on this path (BENCHMARKS.md section 12: 7 + 10).
    let (up, down) = (
        run.up_bytes as f64 / run.seconds,
        run.down_bytes as f64 / run.seconds,
    );
    assert!(
        up < 10_000.0 && down < 13_000.0,
        "{up:.0} + {down:.0} bytes/s"
    );
}

/// Mouth to ear is read off where each window of speech lands in what was heard: speech
/// heard 137 ms after it went in (the sink's first sample 90 ms after the speech's first),
/// with a stretch of silence, is found 137 ms late wherever there is speech.
#[test]
fn mouth_to_ear_is_found_where_the_speech_lands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, speech) = support::recorded_speech(dir.path());
    let lead = 47 * 48; // heard sample r is speech sample r - 47 ms: 90 + 47 = 137 ms
    let mut heard = vec![0.0f32; lead];
    heard.extend_from_slice(&speech);
    let found = mouth_to_ear_ms(&speech, &heard, 90.0);
    assert!(found.len() >= 20, "{} windows of speech", found.len());
    assert!(found.iter().all(|&d| (d - 137.0).abs() <= 1.0), "{found:?}");
    // Nothing is found in silence.
    assert!(mouth_to_ear_ms(&speech, &vec![0.0; speech.len()], 90.0).is_empty());
}

/// The proxy itself: seeded loss and jittered delay each way, counted.
#[tokio::test]
async fn the_proxy_drops_and_delays_as_asked_in_each_direction() {
    // An echo server stands in for the relay.
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let proxy = ImpairProxy::start(
        echo_addr,
        Impairment::new(0.2, 30, 20),
        Impairment::new(0.2, 30, 20),
        7,
    )
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = 500u32;
    let start = tokio::time::Instant::now();
    for i in 0..sent {
        client.send_to(&i.to_le_bytes(), proxy.addr).await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await
    {
        assert_eq!(n, 4);
        got.push((
            u32::from_le_bytes(buf[..4].try_into().unwrap()),
            start.elapsed(),
        ));
    }
    // 20% each way: about 64% come back, none faster than the two minimum delays.
    let back = got.len() as f64 / f64::from(sent);
    assert!((0.55..0.73).contains(&back), "{back}");
    assert!(got.iter().all(|(_, t)| *t >= Duration::from_millis(20)));
    assert!(got.windows(2).any(|w| w[1].0 < w[0].0), "jitter reorders");
    let (fwd, dropped, bytes) = proxy.up().get();
    assert_eq!(fwd + dropped, u64::from(sent));
    assert_eq!(bytes, fwd * 4);
    assert_eq!(proxy.clients(), 1);
}

/// The header of a clip `id` of 20 ms packets to channel crew.
fn crew_header(id: walkie_proto::clip::ClipId) -> walkie_proto::clip::ClipHeader {
    walkie_proto::clip::ClipHeader {
        id,
        to: Target::Channel("crew".into()),
        started_at_ms: walkie_proto::clip::now_ms(),
        codec: walkie_proto::clip::CodecParams {
            frame_samples: 960,
            bitrate: 24_000,
            pre_skip: 312,
        },
    }
}

/// A 20 ms Opus packet (TOC 0xf8: CELT, one frame) tagged with `k` and a `fill` byte.
fn fake_packet(k: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![0xf8];
    p.extend_from_slice(&k.to_le_bytes());
    p.extend(std::iter::repeat_n(fill, 40));
    p
}

/// Hostile datagrams: a talker whose datagrams carry other audio than its stream is cut off
/// (listeners would hear something else than what is stored), and datagrams naming another
/// user's upload stream (by its id, which is the same number on every connection) reach
/// nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_unlike_the_stream_or_naming_others_streams_are_refused() {
    use walkie_net::write_frame;
    use walkie_proto::clip::ClipId;
    use walkie_proto::wire::{LiveBody, MAX_STREAM_FRAME, StreamFrame};
    use walkie_store::Store;

    let dir = tempfile::tempdir().expect("temp dir");
    let relay = support::start_relay(dir.path(), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let mallory = relay.add_user("mallory");
    relay.add_channel("crew", &["alice", "bob", "mallory"]);
    let mut bob_c = relay.connect(&bob).await;

    // 1. Mallory's datagrams say one thing, her stream another.
    let (_ep, conn, _send, mut control) = support::raw_session(&mallory).await;
    let forged = ClipId::random();
    let mut up = conn.open_uni().await.expect("stream");
    let stream = u64::from(up.id());
    write_frame(
        &mut up,
        &StreamFrame::Upload(crew_header(forged)),
        MAX_STREAM_FRAME,
    )
    .await
    .expect("header");
    for k in 0..3 {
        write_frame(
            &mut up,
            &StreamFrame::Packet(fake_packet(k, 1)),
            MAX_STREAM_FRAME,
        )
        .await
        .expect("packet");
    }
    // Bob hears the clip start before the datagrams go.
    support::wait_for(&mut bob_c, 10, |e| match e {
        Event::LiveStarted(h) if h.id == forged => Some(()),
        _ => None,
    })
    .await;
    for k in 3..6 {
        let body = LiveBody::new([(k, &fake_packet(k, 2)[..])]).expect("body");
        conn.send_datagram(body.for_stream(stream).into())
            .expect("datagram");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for k in 3..6 {
        let _ = write_frame(
            &mut up,
            &StreamFrame::Packet(fake_packet(k, 1)),
            MAX_STREAM_FRAME,
        )
        .await;
    }
    let aborted = support::wait_for(&mut bob_c, 10, |e| match e {
        Event::Aborted(e) if e.clip == Some(forged) => Some(e),
        _ => None,
    })
    .await;
    assert!(aborted.message.contains("differs"), "{aborted:?}");
    let refusal = support::within(10, "mallory's refusal", async {
        loop {
            match walkie_net::read_frame::<walkie_proto::wire::ServerMsg>(
                &mut control,
                walkie_proto::wire::MAX_CONTROL_FRAME,
            )
            .await
            {
                Ok(Some(walkie_proto::wire::ServerMsg::Error(e))) if e.clip == Some(forged) => {
                    return e;
                }
                Ok(Some(_)) => continue,
                other => panic!("mallory's control stream: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(refusal.code.name(), "bad-request");
    assert!(
        relay.store.committed(&forged).expect("store").is_none(),
        "not stored"
    );

    // 2. Alice talks; Mallory sends datagrams naming alice's stream id on her own connection.
    let alice_c = relay.connect(&alice).await;
    let mine = ClipId::random();
    let mut upload = alice_c
        .start_clip(&crew_header(mine))
        .await
        .expect("starts");
    let flood = {
        let conn = conn.clone();
        tokio::spawn(async move {
            for round in 0..50u32 {
                for k in 0..5 {
                    let body =
                        LiveBody::new([(round + k, &fake_packet(round + k, 9)[..])]).expect("body");
                    // Alice's first uni stream has the id of mallory's first: 2.
                    let _ = conn.send_datagram(body.for_stream(2).into());
                    let _ = conn.send_datagram(body.for_stream(stream + 4).into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    for k in 0..20 {
        upload.packet(fake_packet(k, 5)).await.expect("packet");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upload.finish(20 * 960 - 312).await.expect("stored");
    flood.abort();
    let mut heard = Vec::new();
    let clip = support::wait_for(&mut bob_c, 10, |e| match e {
        Event::LivePacket(id, p) if id == mine => {
            heard.push(p.data);
            None
        }
        Event::Clip(c) if c.header.id == mine => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(clip.packets.len(), 20);
    assert!(
        clip.packets.iter().all(|p| p[5] == 5),
        "the stored clip is alice's"
    );
    assert!(heard.len() >= 20);
    assert!(
        heard.iter().all(|p| p[5] == 5),
        "nothing of mallory's reached bob as alice's clip"
    );
}

/// The relay measures the loss on the way to each listener and tells a talker the worst of
/// its clip's listeners when the clip starts; the talker's FEC follows it. Bob listens
/// through a proxy losing 30% of what the relay sends him; alice talks directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_talker_learns_its_listeners_loss_from_the_relay() {
    use walkie_proto::clip::ClipId;
    use walkie_proto::live::Resilience;

    let dir = tempfile::tempdir().expect("temp dir");
    let relay = support::start_relay(dir.path(), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let proxy = ImpairProxy::start(
        relay.handle.addr,
        Impairment::NONE,
        Impairment::new(0.30, 5, 0),
        3,
    )
    .await;
    let mut bob_c = Client::connect(&ClientConfig {
        relay: proxy.addr.to_string(),
        ..bob
    })
    .await
    .expect("bob connects through the proxy");
    let alice_c = relay.connect(&alice).await;
    // Bob reads everything that comes, so the relay keeps sending to him.
    let reading = tokio::spawn(async move {
        let mut clips = 0;
        while clips < 2 {
            match bob_c.next_event().await {
                Some(Event::Clip(c)) => {
                    clips += 1;
                    let _ = bob_c.ack(c.header.id).await;
                }
                Some(_) => {}
                None => break,
            }
        }
        clips
    });
    // Two clips of 3 s: the first lets the relay measure bob's path (its first estimate
    // needs 100 packets), the second starts with the figure.
    let mut told = Vec::new();
    for _ in 0..2 {
        let h = crew_header(ClipId::random());
        let mut up = alice_c.start_clip(&h).await.expect("starts");
        for k in 0..150 {
            up.packet(fake_packet(k, 3)).await.expect("packet");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        told.push(up.listeners_loss_permille());
        up.finish(150 * 960 - 312).await.expect("stored");
    }
    let clips = support::within(30, "bob's clips", reading)
        .await
        .expect("bob's task");
    assert_eq!(clips, 2, "bob got both clips");
    println!("listeners' loss told to alice: {told:?} permille");
    assert!(
        (150..=450).contains(&told[1]),
        "the relay measured bob's 30% loss: {told:?}"
    );
    assert!(Resilience::fec_percent(0, told[1]) > 0, "alice's FEC is on");
}
