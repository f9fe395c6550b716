//! Relay policies seen from clients over loopback: live forwarding while the talker talks,
//! floor control (one talker per channel), presence, and played receipts.

mod support;

use std::time::Duration;

use support::*;
use walkie_client::{Client, ClientError, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::wire::ErrorCode;
use walkie_relay::RelayConfig;
use walkie_store::Store;

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

/// The relay's defaults, except that a talker may pause mid-clip while a test checks what
/// others see (the 2 s floor gap itself is tested in the protocol core).
fn paused_talkers() -> RelayConfig {
    RelayConfig {
        floor_gap: Duration::from_secs(60),
        ..RelayConfig::default()
    }
}

fn crew() -> Target {
    Target::Channel("crew".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_reach_listeners_while_the_talker_still_talks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), paused_talkers()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let mut bob_c = relay.connect(&bob).await;
    let alice_c = relay.connect(&alice).await;
    let (params, packets, samples) = tone_clip(1000);
    let h = header(crew(), params);
    let mut up = alice_c.start_clip(&h).await.expect("starts");
    for p in &packets[..10] {
        up.packet(p.clone()).await.expect("sends");
    }
    // bob hears of the clip before alice has finished it.
    let live = wait_for(&mut bob_c, 10, |e| match e {
        Event::LiveStarted(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(
        (live.id, live.from.as_str(), live.live),
        (h.id, "alice", true)
    );
    for p in &packets[10..] {
        up.packet(p.clone()).await.expect("sends");
    }
    up.finish(samples).await.expect("stored");
    let clip = wait_for(&mut bob_c, 10, |e| match e {
        Event::Clip(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(clip.packets, packets);
    assert_eq!(clip.samples, samples);
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_talker_per_channel_and_the_floor_frees_when_the_clip_ends_or_the_talker_leaves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Talkers here pause between packets while the test checks things: the floor may not
    // follow the audio's 2 s gap.
    let relay = start_relay(&tmp.path().join("relay"), paused_talkers()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let carol = relay.add_user("carol");
    relay.add_channel("crew", &["alice", "bob", "carol"]);
    let alice_c = relay.connect(&alice).await;
    let bob_c = relay.connect(&bob).await;
    // carol listens: a clip reaching her live means its talker holds the floor.
    let mut carol_c = relay.connect(&carol).await;
    let (params, packets, samples) = tone_clip(500);
    let live_from =
        |id: ClipId| move |e: Event| matches!(e, Event::LiveStarted(h) if h.id == id).then_some(());

    let h = header(crew(), params);
    let mut up = alice_c.start_clip(&h).await.expect("starts");
    up.packet(packets[0].clone()).await.expect("sends");
    wait_for(&mut carol_c, 10, live_from(h.id)).await;
    let e = bob_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect_err("busy");
    let ClientError::Refused(m) = e else {
        panic!("expected a refusal, got {e}")
    };
    assert_eq!(m.code, ErrorCode::FloorTaken);
    assert!(
        m.message.contains("alice is talking on crew"),
        "{}",
        m.message
    );
    // Direct clips are not floor-controlled.
    bob_c
        .send_clip(
            &header(Target::User("carol".into()), params),
            &packets,
            samples,
        )
        .await
        .expect("direct clip goes through");
    // When alice's clip ends, bob may talk.
    for p in &packets[1..] {
        up.packet(p.clone()).await.expect("sends");
    }
    up.finish(samples).await.expect("stored");
    bob_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect("floor is free again");

    // A talker who disconnects mid-clip frees the floor too.
    let hb = header(crew(), params);
    let mut up = bob_c.start_clip(&hb).await.expect("starts");
    up.packet(packets[0].clone()).await.expect("sends");
    wait_for(&mut carol_c, 10, live_from(hb.id)).await;
    assert!(
        alice_c
            .send_clip(&header(crew(), params), &packets, samples)
            .await
            .is_err(),
        "bob holds the floor"
    );
    drop(up);
    bob_c.close().await;
    // The relay notices the closed connection on its own time: poll, with a deadline.
    let freed = within(10, "floor release", async {
        loop {
            match alice_c
                .send_clip(&header(crew(), params), &packets, samples)
                .await
            {
                Ok(_) => return true,
                Err(ClientError::Refused(m)) if m.code == ErrorCode::FloorTaken => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    })
    .await;
    assert!(freed);
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_members_see_who_is_online() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let dave = relay.add_user("dave");
    relay.add_channel("crew", &["alice", "bob"]);
    relay.add_channel("solo", &["dave"]);
    let mut bob_c = relay.connect(&bob).await;
    let first = wait_for(&mut bob_c, 10, |e| match e {
        Event::Online(u) => Some(u),
        _ => None,
    })
    .await;
    assert!(first.is_empty(), "nobody else online yet: {first:?}");
    let dave_c = relay.connect(&dave).await;
    let mut alice_c = relay.connect(&alice).await;
    let came = wait_for(&mut bob_c, 10, |e| match e {
        Event::Presence(u, on) => Some((u, on)),
        _ => None,
    })
    .await;
    assert_eq!(
        came,
        ("alice".to_string(), true),
        "dave shares no channel with bob, so bob hears only of alice"
    );
    let online = wait_for(&mut alice_c, 10, |e| match e {
        Event::Online(u) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(online, vec!["bob".to_string()]);
    alice_c.close().await;
    let went = wait_for(&mut bob_c, 10, |e| match e {
        Event::Presence(u, on) => Some((u, on)),
        _ => None,
    })
    .await;
    assert_eq!(went, ("alice".to_string(), false));
    dave_c.close().await;
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_learns_who_played_their_clip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let dave = relay.add_user("dave");
    relay.add_channel("crew", &["alice", "bob"]);
    let mut alice_c = relay.connect(&alice).await;
    let bob_c = relay.connect(&bob).await;
    let dave_c = relay.connect(&dave).await;
    let (params, packets, samples) = tone_clip(300);
    let h = header(crew(), params);
    alice_c
        .send_clip(&h, &packets, samples)
        .await
        .expect("stored");
    // dave may not read it: his "played" is ignored. bob's is reported.
    dave_c.played(h.id).await.expect("sent");
    // The relay answers a session's control messages in order: once this reply is back,
    // dave's receipt has been handled (and ignored) before bob's is sent.
    dave_c.history(None, 1, Some(0)).await.expect("a barrier");
    bob_c.played(h.id).await.expect("sent");
    let receipt = wait_for(&mut alice_c, 10, |e| match e {
        Event::PlayedBy(id, u) => Some((id, u)),
        _ => None,
    })
    .await;
    assert_eq!(receipt, (h.id, "bob".to_string()));
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_clip_is_dropped_by_listeners_and_nothing_is_stored_or_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), paused_talkers()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let mut bob_c = relay.connect(&bob).await;
    let mut alice_c = relay.connect(&alice).await;
    let (params, packets, samples) = tone_clip(600);
    let h = header(crew(), params);
    let mut up = alice_c.start_clip(&h).await.expect("starts");
    for p in &packets[..10] {
        up.packet(p.clone()).await.expect("sends");
    }
    let live = wait_for(&mut bob_c, 10, |e| match e {
        Event::LiveStarted(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(live.id, h.id);
    // Esc: the client resets the stream.
    up.cancel();
    let abort = wait_for(&mut bob_c, 10, |e| match e {
        Event::Aborted(m) => Some(m),
        Event::Clip(c) => panic!("a cancelled clip was delivered: {}", c.header.id),
        _ => None,
    })
    .await;
    assert_eq!(
        (abort.clip, abort.code),
        (Some(h.id), ErrorCode::Cancelled),
        "{}",
        abort.message
    );
    assert!(
        abort.message.contains("alice cancelled"),
        "{}",
        abort.message
    );
    // The talker is not told off for cancelling: no error event reaches alice. The relay
    // would have queued it on her control stream when it aborted bob's copy, so it comes
    // before the reply to any request she makes now.
    alice_c.history(None, 1, Some(0)).await.expect("a barrier");
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, alice_c.next_event()).await {
        assert!(
            !matches!(event, Event::Error(_)),
            "alice got an error for her own cancel: {event:?}"
        );
    }
    assert!(
        relay.store.clip(&h.id).expect("store").is_none(),
        "nothing stored"
    );
    // The floor is free again at once.
    alice_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect("the next clip goes through");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_hijack_a_live_clip_by_its_id_nor_probe_ids_for_free() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        clips_per_minute: 4,
        ..paused_talkers()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let mallory = relay.add_user("mallory");
    relay.add_channel("crew", &["alice", "bob", "mallory"]);
    let mut bob_c = relay.connect(&bob).await;
    let mut mallory_c = relay.connect(&mallory).await;
    let alice_c = relay.connect(&alice).await;
    let (params, packets, samples) = tone_clip(1000);
    let h = header(crew(), params);
    let mut up = alice_c.start_clip(&h).await.expect("starts");
    for p in &packets[..10] {
        up.packet(p.clone()).await.expect("sends");
    }
    // mallory learns the id from the live header, as every member does.
    let seen = wait_for(&mut mallory_c, 10, |e| match e {
        Event::LiveStarted(h) => Some(h.id),
        _ => None,
    })
    .await;
    assert_eq!(seen, h.id);
    // Her own audio under alice's id, while alice holds the floor: refused, and answered
    // word for word as a fetch of the id is.
    let (_, noise, noise_samples) = tone_clip(300);
    let forged = ClipHeader {
        id: h.id,
        ..header(crew(), params)
    };
    let ClientError::Refused(upload_answer) = mallory_c
        .send_clip(&forged, &noise, noise_samples)
        .await
        .expect_err("refused")
    else {
        panic!("expected a refusal")
    };
    let ClientError::Refused(fetch_answer) =
        mallory_c.fetch(h.id).await.expect_err("not stored yet")
    else {
        panic!("expected a refusal")
    };
    assert_eq!(
        (upload_answer.code, &upload_answer.message),
        (fetch_answer.code, &fetch_answer.message)
    );
    assert_eq!(upload_answer.code, ErrorCode::NotFound);
    // alice goes on and her clip is stored whole, as she talked it.
    for p in &packets[10..] {
        up.packet(p.clone()).await.expect("sends");
    }
    up.finish(samples).await.expect("alice's clip is stored");
    let clip = wait_for(&mut bob_c, 10, |e| match e {
        Event::Clip(c) if c.header.id == h.id => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(
        (clip.header.from.as_str(), &clip.packets),
        ("alice", &packets),
        "bob hears alice's audio only"
    );
    assert_eq!(
        relay.store.clip(&h.id).expect("store").map(|m| m.from),
        Some("alice".to_string())
    );
    // Probing stored ids costs the rate limit: after 3 more probes (4 clips a minute, one
    // spent above) the next is refused as busy.
    for _ in 0..3 {
        let e = mallory_c
            .send_clip(&forged, &noise, noise_samples)
            .await
            .expect_err("refused");
        assert!(
            matches!(e, ClientError::Refused(ref m) if m.code == ErrorCode::NotFound),
            "{e}"
        );
    }
    let e = mallory_c
        .send_clip(&forged, &noise, noise_samples)
        .await
        .expect_err("refused");
    assert!(
        matches!(e, ClientError::Refused(ref m) if matches!(m.code, ErrorCode::Busy { .. })),
        "{e}"
    );
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_storage_quota_is_refused_with_its_code_and_others_are_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A quota smaller than one clip: the first clip fits (nothing stored yet), the next not.
    let config = RelayConfig {
        quota_bytes_per_user: Some(1),
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let alice_c = relay.connect(&alice).await;
    let bob_c = relay.connect(&bob).await;
    let (params, packets, samples) = tone_clip(300);
    alice_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect("the first clip fits");
    let e = alice_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect_err("over the quota");
    let ClientError::Refused(m) = &e else {
        panic!("expected a refusal, got {e}")
    };
    assert_eq!(m.code, ErrorCode::QuotaExceeded, "{}", m.message);
    assert!(m.message.contains("limit per user"), "{}", m.message);
    assert!(!e.is_transient(), "a full quota is not retried");
    bob_c
        .send_clip(&header(crew(), params), &packets, samples)
        .await
        .expect("bob has his own quota");
    relay.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_session_and_others_still_get_in() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        max_sessions_per_user: 2,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    let first = relay.connect(&alice).await;
    let second = relay.connect(&alice).await;
    let third = Client::connect(&alice)
        .await
        .map(|_| ())
        .expect_err("a third session is refused");
    let ClientError::Refused(m) = &third else {
        panic!("expected a refusal, got {third}")
    };
    assert!(
        matches!(m.code, ErrorCode::Busy { .. }) && m.message.contains("2 sessions open"),
        "{}",
        m.message
    );
    let bob_c = relay.connect(&bob).await;
    // A session that ends gives its slot back.
    first.close().await;
    let again = within(10, "a slot back", async {
        loop {
            match Client::connect(&alice).await {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    again.close().await;
    second.close().await;
    bob_c.close().await;
    relay.handle.shutdown().await;
}
