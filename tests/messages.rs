//! Messages beside clips, end to end through a real relay on loopback: texts, pictures and
//! doodles delivered online and offline in the relay's order with clips, read receipts,
//! history by kind, ids bound to their sender, and every hostile upload refused with its
//! reason (invalid UTF-8, too long, truncated and bomb pictures, other formats, oversize
//! uploads, a doodle with a million points) while the relay goes on serving.

mod support;

use std::io::Cursor;

use support::*;
use walkie_client::{Client, ClientError, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_proto::message::{Content, Kind, MessageHeader, Parts, PictureFormat, doodle::Doodle};
use walkie_proto::received::ReceivedMessage;
use walkie_proto::wire::ErrorCode;
use walkie_relay::RelayConfig;
use walkie_store::Store;

/// Sends a short clip.
async fn clip(client: &Client, to: &str) -> ClipId {
    let pcm: Vec<f32> = (0..300 * 48)
        .map(|i| (i as f32 * 0.02).sin() * 0.3)
        .collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to: to.parse().expect("target"),
        started_at_ms: now_ms(),
        codec: clip.params,
    };
    client
        .send_clip(&header, &clip.packets, clip.samples)
        .await
        .expect("stored");
    header.id
}

/// Sends a message with a fresh id; its id, or the relay's refusal.
async fn message(
    client: &Client,
    to: &str,
    kind: Kind,
    payload: &[u8],
) -> Result<ClipId, ClientError> {
    let header = MessageHeader {
        id: ClipId::random(),
        to: to.parse().expect("target"),
        kind,
    };
    client
        .send_message(&header, payload)
        .await
        .map(|_| header.id)
}

fn refused(e: ClientError) -> (ErrorCode, String) {
    match e {
        ClientError::Refused(m) => (m.code, m.message),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// A photo-like picture with an EXIF segment holding a GPS marker.
fn photo_with_exif(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 120])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encodes");
    let jpeg = out.into_inner();
    let secret = b"Exif\0\0GPS-SECRET-48.8584N";
    let mut app1 = vec![0xff, 0xe1];
    app1.extend_from_slice(&((secret.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(secret);
    [&jpeg[..2], &app1, &jpeg[2..]].concat()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 50, 255]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

const DOODLE: &str = r##"{"width": 200, "height": 100, "strokes": [
    {"color": "#d03030", "width": 5, "points": [[10, 50, 0], [100, 50, 120], [190, 20, 300]]},
    {"color": "#3030d0", "width": 3, "points": [[20, 80, 500], [60, 90, 560]]}]}"##;

/// The next message pushed to `client`.
async fn next_message(client: &mut Client) -> ReceivedMessage {
    wait_for(client, 10, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_reaches_members_online_and_offline_in_the_relays_order_with_read_receipts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    relay.add_channel("crew", &["alice", "bob"]);
    let mut alice_c = relay.connect(&alice).await;

    // Bob is offline: a clip, a text, a picture and a doodle wait in his inbox.
    let voice = clip(&alice_c, "crew").await;
    let text = "Meet at 5 — 北门 🚪\n\"bring\" the map";
    let text_id = message(&alice_c, "crew", Kind::Text, text.as_bytes())
        .await
        .expect("text stored");
    let prepared = walkie_client::picture::prepare(&photo_with_exif(1200, 800)).expect("prepared");
    let picture_id = message(&alice_c, "crew", Kind::Picture, &prepared)
        .await
        .expect("picture stored");
    let doodle_id = message(&alice_c, "crew", Kind::Doodle, DOODLE.as_bytes())
        .await
        .expect("doodle stored");

    let mut bob_c = relay.connect(&bob).await;
    let mut order = Vec::new();
    let mut got = Vec::new();
    within(10, "the backlog", async {
        while order.len() < 4 {
            match bob_c.next_event().await.expect("connected") {
                Event::Clip(c) => order.push(c.header.id),
                Event::Message(m) => {
                    order.push(m.header.id);
                    got.push(m);
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(
        order,
        vec![voice, text_id, picture_id, doodle_id],
        "one conversation, the relay's order"
    );
    assert_eq!(got[0].parts(), Ok(Parts::Text(text)));
    assert_eq!(
        got[0].header.content,
        Content::Text {
            chars: text.chars().count() as u32
        }
    );
    let Content::Picture {
        width: 1200,
        height: 800,
        format: PictureFormat::Jpeg,
        ..
    } = got[1].header.content
    else {
        panic!("{:?}", got[1].header.content)
    };
    let Ok(Parts::Picture { full, thumb }) = got[1].parts() else {
        panic!("a picture")
    };
    let (f, t) = (
        image::load_from_memory(full).expect("decodes"),
        image::load_from_memory(thumb).expect("decodes"),
    );
    assert_eq!(
        (f.width(), f.height(), t.width(), t.height()),
        (1200, 800, 320, 213)
    );
    assert!(
        !got[1].payload.windows(10).any(|w| w == b"GPS-SECRET"),
        "no EXIF reaches a recipient"
    );
    let Ok(Parts::Doodle { strokes, png }) = got[2].parts() else {
        panic!("a doodle")
    };
    assert_eq!(Doodle::parse(strokes).expect("strokes").points(), 5);
    let drawn = image::load_from_memory(png).expect("a PNG").to_rgba8();
    assert_eq!(
        drawn.get_pixel(55, 50).0,
        [0xd0, 0x30, 0x30, 255],
        "drawn by the relay where the stroke goes"
    );
    assert_eq!(got[2].detail(), "2");
    for id in &order {
        bob_c.ack(*id).await.expect("acked");
    }

    // Bob online: the next text arrives at once; reading it tells Alice.
    let later = message(&alice_c, "crew", Kind::Text, b"are you there?")
        .await
        .expect("stored");
    let m = next_message(&mut bob_c).await;
    assert_eq!(
        (m.header.id, m.detail()),
        (later, "\"are you there?\"".to_string())
    );
    bob_c.played(later).await.expect("read");
    let receipt = wait_for(&mut alice_c, 10, |e| match e {
        Event::PlayedBy(id, user) => Some((id, user)),
        _ => None,
    })
    .await;
    assert_eq!(receipt, (later, "bob".to_string()));

    // History lists every kind in order; a direct text to a non-member works.
    let history = bob_c
        .history(Some(Target::Channel("crew".into())), 10, None)
        .await
        .expect("history");
    let kinds: Vec<&str> = history.iter().map(|m| m.content.name()).collect();
    assert_eq!(kinds, ["voice", "text", "picture", "doodle", "text"]);
    assert_eq!(
        bob_c.fetch(text_id).await.expect("fetched").1,
        text.as_bytes()
    );
    bob_c.close().await;
    alice_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_follow_membership_and_ids_stay_bound_to_their_sender() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob, carol) = (
        relay.add_user("alice"),
        relay.add_user("bob"),
        relay.add_user("carol"),
    );
    relay.add_channel("crew", &["alice", "bob"]);
    let (alice_c, mut bob_c, carol_c) = (
        relay.connect(&alice).await,
        relay.connect(&bob).await,
        relay.connect(&carol).await,
    );

    let (code, why) = refused(
        message(&carol_c, "crew", Kind::Text, b"let me in")
            .await
            .expect_err("not a member"),
    );
    assert_eq!(code, ErrorCode::Forbidden, "{why}");
    let direct = message(&carol_c, "@bob", Kind::Text, b"hi bob")
        .await
        .expect("a direct text");
    let m = next_message(&mut bob_c).await;
    assert_eq!(
        (m.header.id, m.header.from.as_str(), m.header.to.clone()),
        (direct, "carol", Target::User("bob".into()))
    );

    // A resend is acknowledged again, stored once; another sender cannot take the id.
    let header = MessageHeader {
        id: ClipId::random(),
        to: Target::Channel("crew".into()),
        kind: Kind::Text,
    };
    let (seq, dup) = alice_c
        .send_message(&header, b"once")
        .await
        .expect("stored");
    assert_eq!(
        alice_c
            .send_message(&header, b"once")
            .await
            .expect("resent"),
        (seq, true)
    );
    assert!(!dup);
    let (code, _) = refused(
        bob_c
            .send_message(&header, b"hijack")
            .await
            .expect_err("not bob's id"),
    );
    assert_eq!(code, ErrorCode::NotFound);
    let crew = relay
        .store
        .history("alice", &Target::Channel("crew".into()), 10, None)
        .expect("history");
    assert_eq!(crew.len(), 1);
    assert_eq!(
        relay.store.clip_audio(&header.id).expect("payload"),
        b"once"
    );
    for c in [alice_c, bob_c, carol_c] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_refused_with_reasons_and_the_relay_goes_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(
        &tmp.path().join("relay"),
        RelayConfig {
            clips_per_minute: 600,
            ..RelayConfig::default()
        },
    )
    .await;
    let alice = relay.add_user("alice");
    relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let alice_c = relay.connect(&alice).await;
    let try_send = |kind: Kind, payload: Vec<u8>| {
        let c = &alice_c;
        async move {
            refused(
                message(c, "crew", kind, &payload)
                    .await
                    .expect_err("refused"),
            )
        }
    };

    let (code, why) = try_send(Kind::Text, vec![b'h', 0xff, 0xfe, b'i']).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(why.contains("UTF-8"), "{why}");
    let (_, why) = try_send(Kind::Text, "字".repeat(4001).into_bytes()).await;
    assert!(why.contains("at most 4000 characters"), "{why}");
    let (code, why) = try_send(Kind::Text, vec![b'a'; 20_000]).await;
    assert_eq!(code, ErrorCode::TooLarge, "{why}");
    let (_, why) = try_send(Kind::Text, b"\x1b]0;owned\x07".to_vec()).await;
    assert!(why.contains("control character"), "{why}");

    let whole = png(300, 200);
    let (code, why) = try_send(Kind::Picture, whole[..whole.len() / 2].to_vec()).await;
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(why.contains("cannot be read"), "{why}");
    // A small PNG whose header claims 100,000 × 100,000 pixels.
    let mut bomb = png(64, 64);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let (code, why) = try_send(Kind::Picture, bomb.clone()).await;
    assert_eq!(code, ErrorCode::BadRequest, "{why}");
    let e = walkie_client::picture::prepare(&bomb).expect_err("the client refuses it too");
    assert!(
        e.contains("too large") || e.contains("not a readable"),
        "{e}"
    );
    let (_, why) = try_send(
        Kind::Picture,
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
    )
    .await;
    assert!(why.contains("JPEG or PNG"), "{why}");
    let (code, why) = try_send(Kind::Picture, vec![0xff; 10 * 1024 * 1024 + 1]).await;
    assert_eq!(code, ErrorCode::TooLarge, "{why}");

    // A doodle with a million points: past the size cap long before it is parsed.
    let million = format!(
        r##"{{"width": 100, "height": 100, "strokes": [{{"color": "#000000", "width": 1, "points": [{}]}}]}}"##,
        vec!["[1,1,0]"; 1_000_000].join(",")
    );
    let (code, why) = try_send(Kind::Doodle, million.into_bytes()).await;
    assert_eq!(code, ErrorCode::TooLarge, "{why}");
    let (_, why) = try_send(
        Kind::Doodle,
        br#"{"width": 100, "height": 100, "strokes": [{"color": 1}]}"#.to_vec(),
    )
    .await;
    assert!(why.contains("not a doodle"), "{why}");
    let (_, why) = try_send(Kind::Doodle, br##"{"width": 100, "height": 100, "strokes": [{"color": "#000000", "width": 1, "points": [[500, 1, 0]]}]}"##.to_vec()).await;
    assert!(why.contains("outside"), "{why}");

    // A GIF with 10,000 frames: the client sends its first frame as a picture.
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let frames = (0..10_000u32).map(|i| {
            image::Frame::new(image::RgbaImage::from_pixel(
                8,
                8,
                image::Rgba([(i % 256) as u8, 0, 0, 255]),
            ))
        });
        enc.encode_frames(frames).expect("encodes");
    }
    let first = walkie_client::picture::prepare(&gif).expect("first frame taken");
    let id = message(&alice_c, "crew", Kind::Picture, &first)
        .await
        .expect("stored");

    // Nothing refused was stored; the relay still takes a text.
    let ok = message(&alice_c, "crew", Kind::Text, b"still here")
        .await
        .expect("stored");
    let kept: Vec<ClipId> = relay
        .store
        .history("alice", &Target::Channel("crew".into()), 50, None)
        .expect("history")
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(kept, vec![id, ok]);
    alice_c.close().await;
}

/// Every file under `dir`, read whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_reaches_online_and_offline_recipients_and_leaves_no_byte_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = start_relay(&data, RelayConfig::default()).await;
    let (alice, bob, carol) = (
        relay.add_user("alice"),
        relay.add_user("bob"),
        relay.add_user("carol"),
    );
    relay.add_channel("crew", &["alice", "bob", "carol"]);
    let (alice_c, mut bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);

    let secret = "the door code is 4471-SECRET-9930";
    let id = message(&alice_c, "crew", Kind::Text, secret.as_bytes())
        .await
        .expect("stored");
    let got = next_message(&mut bob_c).await;
    assert_eq!(got.parts(), Ok(Parts::Text(secret)));
    bob_c.ack(id).await.expect("acked");

    // Only the sender, only within the window.
    let (code, why) = refused(bob_c.recall(id).await.expect_err("not bob's"));
    assert_eq!(code, ErrorCode::Forbidden, "{why}");
    assert!(why.contains("only its sender"), "{why}");
    let old = {
        let pcm: Vec<f32> = (0..4800).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let c = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
        let header = ClipHeader {
            id: ClipId::random(),
            to: Target::Channel("crew".into()),
            started_at_ms: now_ms() - 600_000,
            codec: c.params,
        };
        alice_c
            .send_clip(&header, &c.packets, c.samples)
            .await
            .expect("stored");
        header.id
    };
    let (code, why) = refused(alice_c.recall(old).await.expect_err("ten minutes old"));
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(why.contains("within 120 s"), "{why}");
    let (code, _) = refused(alice_c.recall(ClipId::random()).await.expect_err("unknown"));
    assert_eq!(code, ErrorCode::NotFound);

    alice_c.recall(id).await.expect("recalled");
    alice_c
        .recall(id)
        .await
        .expect("recalling again is harmless");
    let told = next_message(&mut bob_c).await;
    assert_eq!(
        (told.header.id, told.header.content, told.payload.len()),
        (id, Content::Recalled, 0),
        "the online recipient is told"
    );
    assert!(matches!(
        relay.store.clip_audio(&id),
        Err(walkie_store::StoreError::NotFound { .. })
    ));
    let leaks: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|(_, b)| b.windows(6).any(|w| w == b"SECRET"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        leaks,
        Vec::<std::path::PathBuf>::new(),
        "no byte of the text is left on disk"
    );

    // Carol was offline: she gets the old clip and only the news of the recall, never the text.
    let mut carol_c = relay.connect(&carol).await;
    let mut seen = Vec::new();
    within(10, "carol's backlog", async {
        while seen.len() < 2 {
            match carol_c.next_event().await.expect("connected") {
                Event::Clip(c) => seen.push((c.header.id, Content::Voice, 0)),
                Event::Message(m) => seen.push((m.header.id, m.header.content, m.payload.len())),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(
        seen,
        vec![(id, Content::Recalled, 0), (old, Content::Voice, 0)]
    );
    let history = carol_c
        .history(Some(Target::Channel("crew".into())), 10, None)
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|m| m.content.name()).collect::<Vec<_>>(),
        ["recalled", "voice"]
    );
    for c in [alice_c, bob_c, carol_c] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_leaves_no_byte_of_a_picture_or_doodle() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = start_relay(&data, RelayConfig::default()).await;
    let (alice, _) = (relay.add_user("alice"), relay.add_user("bob"));
    relay.add_channel("crew", &["alice", "bob"]);
    let alice_c = relay.connect(&alice).await;
    let prepared = walkie_client::picture::prepare(&photo_with_exif(800, 600)).expect("prepared");
    let picture = message(&alice_c, "crew", Kind::Picture, &prepared)
        .await
        .expect("stored");
    let doodle = message(&alice_c, "crew", Kind::Doodle, DOODLE.as_bytes())
        .await
        .expect("stored");
    let stored: Vec<Vec<u8>> = [picture, doodle]
        .iter()
        .map(|id| relay.store.clip_audio(id).expect("payload"))
        .collect();
    alice_c.close().await;
    assert_eq!(relay.store.purge_user("alice").expect("purged"), 2);
    // Any 64-byte window of either payload (pictures, thumbnails, strokes, renderings).
    let probes: Vec<&[u8]> = stored
        .iter()
        .flat_map(|p| p.chunks(64).filter(|c| c.len() == 64).step_by(7))
        .collect();
    assert!(probes.len() > 20);
    for (path, bytes) in files_under(&data) {
        for probe in &probes {
            assert!(
                !bytes.windows(64).any(|w| w == *probe),
                "{} still holds a piece of a purged message",
                path.display()
            );
        }
    }
}
