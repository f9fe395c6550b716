//! End-to-end over loopback QUIC: a real relay with a temp data dir, real clients, real
//! Opus and real files; checks what a user would: audio quality, durations, who gets what.

mod support;

use std::time::Duration;

use support::*;
use walkie_client::ops::{self, ListenOptions};
use walkie_client::outbox::Outbox;
use walkie_client::{Client, ClientError, ReceivedClip};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_proto::wire::ErrorCode;
use walkie_relay::RelayConfig;
use walkie_store::Store;

const SAMPLE: &str = "hello-crew.wav";

fn crew() -> Target {
    Target::Channel("crew".into())
}

/// Queues `sample` for `to` in a fresh outbox under `dir` and sends it; returns the id.
async fn send_sample(
    cfg: &walkie_client::ClientConfig,
    dir: &std::path::Path,
    sample: &str,
    to: Target,
) -> ClipId {
    let outbox = Outbox::open(&dir.join(format!("outbox-{}", cfg.user))).expect("outbox");
    let (header, _) = ops::queue_wav(&outbox, &sample_path(sample), to, &EncoderConfig::default())
        .expect("queues");
    let report = within(
        30,
        "send",
        ops::flush_with_retry(cfg, &outbox, Some(header.id), Duration::from_secs(10)),
    )
    .await
    .expect("sent");
    assert_eq!(
        report.stored.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![header.id]
    );
    assert!(report.rejected.is_empty());
    assert!(
        outbox.pending().expect("lists").is_empty(),
        "an acknowledged clip leaves the outbox"
    );
    header.id
}

/// Receives exactly `n` clips (or fails after `secs`).
async fn receive(client: &mut Client, n: usize, secs: u64) -> Vec<ReceivedClip> {
    let mut got = Vec::new();
    let opts = ListenOptions {
        save_dir: None,
        count: Some(n),
        timeout: Some(Duration::from_secs(secs)),
    };
    ops::listen(client, &opts, |c| got.push(c.clone()))
        .await
        .expect("clips arrive");
    got
}

/// Asserts nothing arrives within `secs`.
async fn receive_nothing(client: &mut Client, secs: u64) {
    let opts = ListenOptions {
        save_dir: None,
        count: Some(1),
        timeout: Some(Duration::from_secs(secs)),
    };
    let mut got = Vec::new();
    let r = ops::listen(client, &opts, |c| got.push(c.header.id)).await;
    assert!(
        matches!(r, Err(ClientError::Timeout(_))),
        "expected nothing, got {got:?} / {r:?}"
    );
}

fn refusal_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Refused(m) => m.code,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_clip_reaches_online_and_offline_members_with_codec_quality() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let carol = relay.add_user("carol");
    relay.add_channel("crew", &["alice", "bob", "carol"]);

    let mut bob_client = relay.connect(&bob).await;
    let id = send_sample(&alice, tmp.path(), SAMPLE, crew()).await;

    // bob was online: he gets it at once.
    let got = receive(&mut bob_client, 1, 20).await;
    let clip = &got[0];
    assert_eq!(
        (clip.header.id, clip.header.from.as_str(), &clip.header.to),
        (id, "alice", &crew())
    );

    // The received audio is the codec's output and nothing worse.
    let original = sample_48k(SAMPLE);
    let received = walkie_media::codec::decode_clip(clip).expect("decodes");
    assert!(
        received.len().abs_diff(original.len()) <= 960,
        "duration {} vs {}",
        received.len(),
        original.len()
    );
    assert_eq!(
        received.len(),
        original.len(),
        "end trimming restores the exact length"
    );
    let raw = raw_libopus(&original, 24_000, 10);
    let pesq_raw = pesq_wb(&original, &raw);
    let pesq_pipeline = pesq_wb(&original, &received);
    println!("PESQ-WB {SAMPLE}: raw libopus {pesq_raw:.3}, walkie relay path {pesq_pipeline:.3}");
    assert!(
        pesq_raw > 3.0,
        "baseline PESQ {pesq_raw} is implausibly low"
    );
    assert!(
        (pesq_pipeline - pesq_raw).abs() <= 0.1,
        "pipeline {pesq_pipeline:.3} vs raw {pesq_raw:.3}"
    );

    // carol was offline: she gets it from her inbox when she connects, byte for byte.
    let mut carol_client = relay.connect(&carol).await;
    let late = receive(&mut carol_client, 1, 20).await;
    assert_eq!(late[0].header.id, id);
    assert_eq!(late[0].packets, clip.packets);
    assert_eq!(late[0].samples, clip.samples);

    // Acknowledged clips are not delivered again.
    bob_client.close().await;
    let mut bob_again = relay.connect(&bob).await;
    receive_nothing(&mut bob_again, 1).await;

    // The sender does not get her own clip back, and history lists it once.
    let mut alice_client = relay.connect(&alice).await;
    receive_nothing(&mut alice_client, 1).await;
    let history = alice_client
        .history(Some(crew()), 10, None)
        .await
        .expect("history");
    assert_eq!(history.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(
        u64::from(history[0].duration_ms),
        (original.len() as u64 + 24) / 48
    );
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_relay_still_serves_history_and_inboxes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = start_relay(&data, RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let carol = relay.add_user("carol");
    relay.add_channel("crew", &["alice", "carol"]);
    let id = send_sample(&alice, tmp.path(), "status-report.wav", crew()).await;
    let before = {
        let c = relay.connect(&alice).await;
        let (_, bytes) = c.fetch(id).await.expect("fetch");
        c.close().await;
        bytes
    };
    let fingerprint = relay.handle.fingerprint;
    relay.handle.shutdown().await;
    drop(relay.store);

    let relay = start_relay(&data, RelayConfig::default()).await;
    assert_eq!(
        relay.handle.fingerprint, fingerprint,
        "the certificate is kept in the data dir"
    );
    let alice = relay.config_for("alice", &alice.token);
    let carol = relay.config_for("carol", &carol.token);
    let c = relay.connect(&alice).await;
    let history = c.history(Some(crew()), 10, None).await.expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].id, id);
    let (meta, after) = c.fetch(id).await.expect("fetch after restart");
    assert_eq!(after, before, "the stored Ogg file is served byte for byte");
    assert_eq!(meta.bytes, after.len() as u64);
    let parsed = walkie_proto::ogg::read_ogg(&after).expect("valid Ogg Opus");
    assert_eq!(parsed.samples, sample_48k("status-report.wav").len() as u64);
    let mut carol_client = relay.connect(&carol).await;
    assert_eq!(receive(&mut carol_client, 1, 20).await[0].header.id, id);
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_cannot_send_listen_or_fetch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let dave = relay.add_user("dave");
    relay.add_channel("crew", &["alice"]);
    let mut dave_client = relay.connect(&dave).await;
    let id = send_sample(&alice, tmp.path(), SAMPLE, crew()).await;

    // dave hears nothing of crew, live or stored.
    receive_nothing(&mut dave_client, 1).await;
    let e = dave_client
        .history(Some(crew()), 10, None)
        .await
        .expect_err("history refused");
    assert_eq!(refusal_code(e), ErrorCode::Forbidden);
    let e = dave_client.fetch(id).await.expect_err("fetch refused");
    assert_eq!(refusal_code(e), ErrorCode::NotFound);
    let everything = dave_client
        .history(None, 100, None)
        .await
        .expect("own history");
    assert!(
        everything.is_empty(),
        "dave may read nothing, got {everything:?}"
    );

    // dave cannot send to crew; his clip is refused, not stored, and leaves his send queue.
    let outbox = Outbox::open(&tmp.path().join("outbox-dave")).expect("outbox");
    let (header, _) = ops::queue_wav(
        &outbox,
        &sample_path(SAMPLE),
        crew(),
        &EncoderConfig::default(),
    )
    .expect("queues");
    let report = ops::flush(&dave_client, &outbox).await.expect("flushes");
    assert_eq!(report.rejected.len(), 1);
    assert!(
        report.rejected[0].1.to_string().contains("not a member"),
        "{}",
        report.rejected[0].1
    );
    assert!(outbox.pending().expect("lists").is_empty());
    assert!(relay.store.clip(&header.id).expect("store").is_none());
    // Sending to a channel that does not exist tells nothing more.
    let unknown = ClipHeader {
        id: ClipId::random(),
        to: Target::Channel("nope".into()),
        ..header
    };
    let (packets, samples) = outbox_packets();
    let e = dave_client
        .send_clip(&unknown, &packets, samples)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(e), ErrorCode::Forbidden);
    relay.handle.shutdown().await;
}

fn outbox_packets() -> (Vec<Vec<u8>>, u64) {
    let pcm: Vec<f32> = (0..9600).map(|i| (i as f32 * 0.03).sin() * 0.3).collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    (clip.packets, clip.samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_and_unknown_users_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    for cfg in [
        relay.config_for("alice", &walkie_relay::auth::new_token()),
        relay.config_for("alice", ""),
        relay.config_for("mallory", &alice.token),
    ] {
        let e = Client::connect(&cfg).await.err().expect("refused");
        assert_eq!(refusal_code(e), ErrorCode::Unauthorized);
    }
    // A client pinning another certificate refuses the relay.
    let mut wrong_pin = alice.clone();
    wrong_pin.trust = walkie_net::Fingerprint([7; 32]).into();
    let e = Client::connect(&wrong_pin).await.err().expect("refused");
    assert!(e.to_string().contains("does not match the pinned"), "{e}");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_clips_are_refused_with_their_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(
        &tmp.path().join("relay"),
        RelayConfig {
            max_clip_ms: 3_000,
            ..RelayConfig::default()
        },
    )
    .await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let client = relay.connect(&alice).await;
    let outbox = Outbox::open(&tmp.path().join("outbox")).expect("outbox");
    let (header, _) = ops::queue_wav(
        &outbox,
        &sample_path(SAMPLE),
        crew(),
        &EncoderConfig::default(),
    )
    .expect("queues");
    let report = ops::flush(&client, &outbox).await.expect("flushes");
    let (rid, err) = &report.rejected[0];
    assert_eq!(*rid, header.id);
    assert!(
        err.to_string()
            .contains("longer than the relay's maximum of 3 s"),
        "{err}"
    );
    assert!(matches!(err, ClientError::Refused(m) if m.code == ErrorCode::TooLong));
    assert!(
        relay.store.clip(&header.id).expect("store").is_none(),
        "nothing stored"
    );

    // A packet bigger than any Opus packet can be is refused too.
    let h = ClipHeader {
        id: ClipId::random(),
        to: crew(),
        started_at_ms: now_ms(),
        codec: header.codec,
    };
    let e = client
        .send_clip(&h, &[vec![0x08; 10_000]], 960)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(e), ErrorCode::TooLarge);
    // Garbage that is not Opus is refused.
    let h = ClipHeader {
        id: ClipId::random(),
        ..h
    };
    let e = client
        .send_clip(&h, &[vec![]], 960)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(e), ErrorCode::BadRequest);
    // The same connection still works after the refusals: a short clip goes through.
    let mut bob_client = relay.connect(&bob).await;
    let (packets, samples) = outbox_packets();
    let ok = ClipHeader {
        id: ClipId::random(),
        ..h
    };
    client
        .send_clip(&ok, &packets, samples)
        .await
        .expect("a valid clip is stored");
    assert_eq!(receive(&mut bob_client, 1, 20).await[0].header.id, ok.id);
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_clip_is_acknowledged_again_and_stored_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let mallory = relay.add_user("mallory");
    relay.add_channel("crew", &["alice", "bob", "mallory"]);
    let client = relay.connect(&alice).await;
    let (packets, samples) = outbox_packets();
    let params = codec::encode_pcm(&[0.0; 960], &EncoderConfig::default())
        .expect("encodes")
        .params;
    let header = ClipHeader {
        id: ClipId::random(),
        to: crew(),
        started_at_ms: now_ms(),
        codec: params,
    };
    let (seq1, dup1) = client
        .send_clip(&header, &packets, samples)
        .await
        .expect("stored");
    let (seq2, dup2) = client
        .send_clip(&header, &packets, samples)
        .await
        .expect("acked again");
    assert_eq!((seq1, dup1, seq2, dup2), (seq1, false, seq1, true));
    let history = client
        .history(Some(crew()), 10, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    let mut bob_client = relay.connect(&bob).await;
    assert_eq!(
        receive(&mut bob_client, 1, 20).await[0].header.id,
        header.id
    );
    receive_nothing(&mut bob_client, 1).await;
    // Someone else reusing the id is refused as a fetch of an unreadable clip is (ids cannot
    // be probed), and the stored clip is untouched.
    let m = relay.connect(&mallory).await;
    let e = m
        .send_clip(&header, &packets, samples)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(e), ErrorCode::NotFound);
    assert_eq!(
        relay
            .store
            .clip(&header.id)
            .expect("store")
            .expect("kept")
            .from,
        "alice"
    );
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_clips_reach_only_their_recipient() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let carol = relay.add_user("carol");
    relay.add_channel("crew", &["alice", "bob", "carol"]);
    let mut carol_client = relay.connect(&carol).await;
    let id = send_sample(&alice, tmp.path(), SAMPLE, Target::User("bob".into())).await;
    let mut bob_client = relay.connect(&bob).await;
    let got = receive(&mut bob_client, 1, 20).await;
    assert_eq!(
        (got[0].header.id, got[0].header.to.to_string()),
        (id, "@bob".to_string())
    );
    receive_nothing(&mut carol_client, 1).await;
    assert_eq!(
        refusal_code(carol_client.fetch(id).await.expect_err("not hers")),
        ErrorCode::NotFound
    );
    let h = carol_client
        .history(Some(Target::User("alice".into())), 10, None)
        .await
        .expect("history");
    assert!(h.is_empty(), "carol sees none of alice's clips to bob");
    let h = bob_client
        .history(Some(Target::User("alice".into())), 10, None)
        .await
        .expect("history");
    assert_eq!(h.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);
    // Sending to a user who does not exist is refused.
    let (packets, samples) = outbox_packets();
    let params = codec::encode_pcm(&[0.0; 960], &EncoderConfig::default())
        .expect("encodes")
        .params;
    let header = ClipHeader {
        id: ClipId::random(),
        to: Target::User("nobody".into()),
        started_at_ms: now_ms(),
        codec: params,
    };
    let e = bob_client
        .send_clip(&header, &packets, samples)
        .await
        .expect_err("refused");
    assert_eq!(refusal_code(e), ErrorCode::NotFound);
    relay.handle.shutdown().await;
}
