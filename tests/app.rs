//! UI tests of the desktop app with egui_kittest: the real app over a real relay on loopback,
//! with the WAV file source as the microphone and the null sink as the speaker. Each test
//! drives the window the way a person would (mouse press and release on the talk button,
//! Space, Esc, clicks) and checks what the window shows and what the relay stored.
//!
//! Audio runs in real time, so a "hold" is a real hold: the harness steps while real time
//! passes. The app repaints while talking, so the harness runs fixed steps (`run_steps`).
//! `cargo test --test app -- --ignored screenshot` renders docs/app.png with wgpu.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use walkie_app::WalkieApp;
use walkie_app::engine::settings::AppFile;
use walkie_app::engine::{Command, Engine, EngineOptions, NoticeKind, Snapshot, Talk};
use walkie_client::profile::Profile;
use walkie_client::{Client, ClientConfig, Event};
use walkie_media::codec::{EncoderConfig, encode_pcm};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_relay::RelayConfig;

/// A relay with alice (the app) and bob (another client) in channel `crew`, and the app.
struct World {
    rt: tokio::runtime::Runtime,
    _relay: support::TestRelay,
    bob: ClientConfig,
    dirs: tempfile::TempDir,
}

fn crew() -> Target {
    Target::Channel("crew".into())
}

fn world() -> (World, Harness<'static, WalkieApp>) {
    let (world, app) = world_app();
    let harness = Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    (world, ready(harness))
}

/// Waits until the app is connected and shows crew.
fn ready(mut harness: Harness<'static, WalkieApp>) -> Harness<'static, WalkieApp> {
    let ready = harness
        .state()
        .engine()
        .wait_for(Duration::from_secs(15), |s| {
            s.connection.is_connected() && s.selected == Some(crew())
        });
    assert!(
        ready.is_some(),
        "the app connects and shows crew: {:?} {:?}",
        harness.state().engine().snapshot().connection,
        harness.state().engine().snapshot().notice
    );
    harness.run_steps(2);
    harness
}

fn world_app() -> (World, WalkieApp) {
    world_app_with(paused_talkers(), |_, _, _| {})
}

/// The relay's defaults, except that a talker may pause mid-clip (these tests hold bob's clip
/// open while they look at the screen; the 2 s floor gap is tested in the protocol core).
fn paused_talkers() -> RelayConfig {
    RelayConfig {
        floor_gap: Duration::from_secs(60),
        ..RelayConfig::default()
    }
}

/// Like [`world_app`], with the relay's settings, and `before` run (with alice's and bob's
/// configs) once the relay is up and before the app starts.
fn world_app_with(
    config: RelayConfig,
    before: impl FnOnce(&tokio::runtime::Runtime, &ClientConfig, &ClientConfig),
) -> (World, WalkieApp) {
    world_app_speaker(config, before, "null")
}

/// Like [`world_app_with`], with `output` as the speaker (`null`, or a device name).
fn world_app_speaker(
    config: RelayConfig,
    before: impl FnOnce(&tokio::runtime::Runtime, &ClientConfig, &ClientConfig),
    output: &str,
) -> (World, WalkieApp) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dirs = tempfile::tempdir().expect("tempdir");
    let relay = rt.block_on(support::start_relay(&dirs.path().join("relay"), config));
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    before(&rt, &alice, &bob);
    let config_dir = dirs.path().join("config");
    // No conversation saved: crew is listed because the relay names alice's channels.
    AppFile::default()
        .save(&AppFile::path(&config_dir))
        .expect("app settings");
    let profile = Profile {
        relay: Some(alice.relay.clone()),
        user: Some(alice.user.clone()),
        token: Some(alice.token.clone()),
        cert: None,
        fingerprint: alice.trust.pin().map(|p| p.to_string()),
        ca_file: None,
    };
    let opts = EngineOptions {
        config_dir,
        data_dir: dirs.path().join("data"),
        input: Some(format!(
            "wav:{}",
            support::sample_path("hello-crew.wav").display()
        )),
        output: Some(output.into()),
        profile: Some(profile),
        demo: false,
    };
    let app = WalkieApp::new(Engine::start(opts).expect("engine starts"));
    (
        World {
            rt,
            _relay: relay,
            bob,
            dirs,
        },
        app,
    )
}

/// Steps the UI while `real` time passes (audio and the network run in real time).
fn pass(harness: &mut Harness<'_, WalkieApp>, real: Duration) {
    let end = Instant::now() + real;
    while Instant::now() < end {
        harness.run_steps(1);
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// Steps the UI until the engine's snapshot satisfies `pred` (or fails after `secs`).
fn until(
    harness: &mut Harness<'_, WalkieApp>,
    secs: u64,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        harness.run_steps(1);
        let snap = harness.state().engine().snapshot();
        if pred(&snap) {
            harness.run_steps(2);
            return snap;
        }
        assert!(
            Instant::now() < end,
            "{what} within {secs} s; state: talk {:?}, notice {:?}",
            snap.talk,
            snap.notice
        );
        std::thread::sleep(Duration::from_millis(40));
    }
}

fn clips_in_crew(s: &Snapshot) -> usize {
    s.conversation(&crew()).map_or(0, |c| c.clips.len())
}

fn talking(s: &Snapshot) -> bool {
    matches!(s.talk, Talk::Talking { .. })
}

fn talk_button_center(harness: &Harness<'_, WalkieApp>) -> egui::Pos2 {
    harness.get_by_label("Hold to talk").rect().center()
}

fn pointer(harness: &Harness<'_, WalkieApp>, pos: egui::Pos2, pressed: bool) {
    harness.event(egui::Event::PointerMoved(pos));
    harness.event(egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::default(),
    });
}

/// Labels of the clip bubbles on screen from `sender`.
fn bubbles(harness: &Harness<'_, WalkieApp>, sender: &str) -> Vec<String> {
    let needle = format!("clip from {sender}");
    harness
        .query_all_by_label_contains(&needle)
        .map(|n| n.accesskit_node().label().unwrap_or_default())
        .collect()
}

/// What the relay holds for crew, read by bob.
fn stored(world: &World) -> Vec<walkie_proto::clip::ClipMeta> {
    world.rt.block_on(async {
        let bob = Client::connect(&world.bob).await.expect("bob connects");
        let h = bob.history(Some(crew()), 50, None).await.expect("history");
        bob.close().await;
        h
    })
}

#[test]
fn holding_the_talk_button_with_the_mouse_sends_a_clip_the_relay_stores() {
    let (world, mut harness) = world();
    let center = talk_button_center(&harness);
    pointer(&harness, center, true);
    harness.run_steps(1);
    until(&mut harness, 5, "talking after the press", talking);
    // Held for longer than egui's click duration (0.8 s): still talking.
    pass(&mut harness, Duration::from_millis(1_500));
    assert!(
        talking(&harness.state().engine().snapshot()),
        "a hold over 1 s keeps talking"
    );
    assert!(
        harness.query_by_label_contains("input level").is_some(),
        "the level meter shows while talking"
    );
    pointer(&harness, center, false);
    let snap = until(&mut harness, 20, "the clip stored and shown", |s| {
        matches!(s.talk, Talk::Idle) && clips_in_crew(s) == 1
    });
    let clip = &snap.conversation(&crew()).expect("crew").clips[0];
    assert!(clip.mine && clip.duration_ms >= 1_400, "{clip:?}");
    assert_eq!(
        bubbles(&harness, "alice").len(),
        1,
        "the new clip is on screen"
    );
    let at_relay = stored(&world);
    assert_eq!(at_relay.len(), 1);
    assert_eq!(
        (at_relay[0].id, at_relay[0].from.as_str()),
        (clip.id, "alice")
    );
    assert!(
        at_relay[0].duration_ms >= 1_400,
        "{} ms stored",
        at_relay[0].duration_ms
    );
    // Export the conversation to a folder of .opus files.
    let out = world.dirs.path().join("export");
    harness.get_by_label("to folder").focus();
    harness.run_steps(1);
    harness
        .get_by_label("to folder")
        .type_text(&out.display().to_string());
    harness.run_steps(1);
    harness.get_by_label("Export").click();
    until(&mut harness, 15, "the export", |s| {
        s.notice
            .as_ref()
            .is_some_and(|n| n.text.starts_with("Exported 1 clip"))
    });
    let files: Vec<String> = std::fs::read_dir(&out)
        .expect("export dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let opus: Vec<&String> = files.iter().filter(|f| f.ends_with(".opus")).collect();
    assert_eq!(opus.len(), 1, "{files:?}");
    assert!(
        opus[0].contains(&format!("-alice-{}", clip.id)),
        "{files:?}"
    );
    assert!(files.contains(&"index.json".to_string()));
    let bytes = std::fs::read(out.join(opus[0])).expect("opus file");
    assert_eq!(&bytes[..4], b"OggS", "a standard Ogg Opus file");
}

#[test]
fn holding_space_sends_and_esc_or_dragging_off_cancels() {
    let (world, mut harness) = world();
    // Space held over a second, then released: one clip.
    harness.key_down(egui::Key::Space);
    harness.run_steps(1);
    until(&mut harness, 5, "talking after Space", talking);
    pass(&mut harness, Duration::from_millis(1_200));
    assert!(talking(&harness.state().engine().snapshot()));
    harness.key_up(egui::Key::Space);
    until(&mut harness, 20, "the Space clip stored", |s| {
        matches!(s.talk, Talk::Idle) && clips_in_crew(s) == 1
    });
    assert_eq!(bubbles(&harness, "alice").len(), 1);

    // Esc while holding the button: cancelled, nothing sent, even when the mouse lets go.
    let center = talk_button_center(&harness);
    pointer(&harness, center, true);
    harness.run_steps(1);
    until(&mut harness, 5, "talking again", talking);
    pass(&mut harness, Duration::from_millis(600));
    harness.key_down(egui::Key::Escape);
    harness.run_steps(1);
    harness.key_up(egui::Key::Escape);
    pointer(&harness, center, false);
    let snap = until(&mut harness, 10, "the clip cancelled", |s| {
        matches!(s.talk, Talk::Idle)
            && s.notice
                .as_ref()
                .is_some_and(|n| n.text.starts_with("Cancelled"))
    });
    assert_eq!(clips_in_crew(&snap), 1, "a cancelled clip is not shown");

    // Press, drag off the button, let go there: cancelled too.
    pointer(&harness, center, true);
    harness.run_steps(1);
    until(&mut harness, 5, "talking a third time", talking);
    pass(&mut harness, Duration::from_millis(400));
    let away = center + egui::vec2(0.0, -250.0);
    harness.event(egui::Event::PointerMoved(away));
    harness.run_steps(1);
    assert!(
        harness
            .query_by_label_contains("Let go here to cancel")
            .is_some(),
        "off the button, letting go cancels"
    );
    pointer(&harness, away, false);
    let snap = until(&mut harness, 10, "the dragged-off clip cancelled", |s| {
        matches!(s.talk, Talk::Idle)
    });
    assert_eq!(clips_in_crew(&snap), 1);
    pass(&mut harness, Duration::from_millis(500));
    assert_eq!(
        stored(&world).len(),
        1,
        "the relay stored only the Space clip"
    );
}

/// Bob says the first `ms` of the sample to crew, a packet every 20 ms as a person talking
/// would (a burst is live audio arriving late, which the jitter buffer drops); returns its id.
fn bob_sends(world: &World, bob: &Client, ms: usize) -> ClipId {
    bob_sends_to(world, bob, ms, crew())
}

/// Like [`bob_sends`], to `to`.
fn bob_sends_to(world: &World, bob: &Client, ms: usize, to: Target) -> ClipId {
    let pcm = support::sample_48k("hello-crew.wav");
    let enc = encode_pcm(&pcm[..ms * 48], &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to,
        started_at_ms: now_ms(),
        codec: enc.params,
    };
    world.rt.block_on(async {
        let mut up = bob.start_clip(&header).await.expect("bob starts");
        for p in &enc.packets {
            up.packet(p.clone()).await.expect("packet");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        up.finish(enc.samples).await.expect("bob's clip stored");
    });
    header.id
}

#[test]
fn a_clip_from_another_client_shows_unplayed_then_plays_and_sends_a_receipt() {
    let (world, mut harness) = world();
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    // alice looks at another conversation while bob talks in crew: his clip waits, unplayed
    // (played live, it could end before the test looks at it).
    let bob_dm = Target::User("bob".into());
    harness
        .state()
        .engine()
        .send(Command::Select(bob_dm.clone()));
    until(&mut harness, 5, "@bob on screen", |s| {
        s.selected.as_ref() == Some(&bob_dm)
    });
    let id = bob_sends(&world, &bob, 2_000);
    let snap = until(&mut harness, 10, "bob's clip shown", |s| {
        clips_in_crew(s) == 1
    });
    let clip = &snap.conversation(&crew()).expect("crew").clips[0];
    assert_eq!(
        (clip.id, clip.from.as_str(), clip.played),
        (id, "bob", false)
    );
    assert!(
        harness.query_by_label_contains("1 unread").is_some(),
        "the list counts it unread"
    );
    // Opening crew plays it (2 s in real time): meanwhile it shows unplayed or playing.
    harness.get_by_label_contains("# crew  1 unread").click();
    until(&mut harness, 5, "crew on screen", |s| {
        s.selected == Some(crew())
    });
    let label = bubbles(&harness, "bob").pop().expect("bob's bubble");
    assert!(
        label.contains("unplayed") || label.contains("playing"),
        "{label}"
    );
    // Auto-play: the null sink plays in real time; then it is marked played.
    until(&mut harness, 15, "bob's clip played", |s| {
        s.conversation(&crew())
            .is_some_and(|c| c.clips[0].played && c.unread == 0)
    });
    let label = bubbles(&harness, "bob").pop().expect("bob's bubble");
    assert!(label.ends_with(", played"), "{label}");
    assert!(harness.query_by_label_contains("unread").is_none());
    // Bob hears about it.
    let receipt = world.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match bob.next_event().await {
                    Some(Event::PlayedBy(clip, user)) => return Some((clip, user)),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
    });
    assert_eq!(receipt.ok().flatten(), Some((id, "alice".to_string())));
    // Click to replay.
    harness.get_by_label_contains("clip from bob").click();
    until(&mut harness, 10, "the replay starts", |s| {
        s.playing == Some(id)
    });
    world.rt.block_on(bob.close());
}

#[test]
fn someone_else_holding_the_floor_shows_who_talks_and_a_busy_notice() {
    let (world, mut harness) = world();
    let bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let pcm = support::sample_48k("hello-crew.wav");
    let enc = encode_pcm(&pcm[..48_000], &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to: crew(),
        started_at_ms: now_ms(),
        codec: enc.params,
    };
    let mut upload = world
        .rt
        .block_on(bob.start_clip(&header))
        .expect("bob starts talking");
    for p in &enc.packets[..10] {
        world.rt.block_on(upload.packet(p.clone())).expect("packet");
    }
    until(&mut harness, 10, "bob shown talking", |s| {
        s.conversation(&crew())
            .is_some_and(|c| c.talking.as_deref() == Some("bob"))
    });
    assert!(harness.query_by_label_contains("bob is talking").is_some());
    // Alice tries to talk over him.
    harness.key_down(egui::Key::Space);
    harness.run_steps(1);
    let snap = until(&mut harness, 10, "the busy notice", |s| {
        s.notice
            .as_ref()
            .is_some_and(|n| n.kind == NoticeKind::Busy)
    });
    let notice = snap.notice.clone().expect("notice");
    assert!(notice.text.contains("bob is talking"), "{}", notice.text);
    assert!(
        harness
            .query_by_label_contains("Busy: bob is talking")
            .is_some(),
        "the notice is on screen"
    );
    harness.key_up(egui::Key::Space);
    harness.run_steps(2);
    upload.cancel();
    world.rt.block_on(bob.close());
    assert!(stored(&world).is_empty(), "nothing was stored");
}

/// The app with no profile (so on its connect screen), its settings and data under `dir`,
/// with silent audio.
fn connect_screen(dir: &Path) -> Harness<'static, WalkieApp> {
    let opts = EngineOptions {
        config_dir: dir.join("config"),
        data_dir: dir.join("data"),
        input: Some("null".into()),
        output: Some("null".into()),
        ..Default::default()
    };
    let app = WalkieApp::new(Engine::start(opts).expect("engine"));
    let mut harness = Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    harness.run_steps(2);
    harness
}

#[test]
fn the_connect_screen_shows_without_a_profile_and_explains_a_wrong_token() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dirs = tempfile::tempdir().expect("tempdir");
    let relay = rt.block_on(support::start_relay(
        &dirs.path().join("relay"),
        RelayConfig::default(),
    ));
    let alice = relay.add_user("alice");
    let mut harness = connect_screen(dirs.path());
    // The five fields wait behind "Advanced"; an invite link is the first way in.
    assert!(harness.query_by_label("Invite link").is_some());
    assert!(harness.query_by_label("Token").is_none());
    harness
        .get_by_label("Advanced: connect with a user name and token")
        .click();
    harness.run_steps(3);
    for (label, text) in [
        ("Relay", alice.relay.clone()),
        ("User", "alice".into()),
        ("Token", "0".repeat(64)),
        (
            "Fingerprint",
            alice.trust.pin().expect("pinned").to_string(),
        ),
    ] {
        harness.get_by_label(label).focus();
        harness.run_steps(1);
        harness.get_by_label(label).type_text(&text);
        harness.run_steps(1);
    }
    harness.get_by_label("Connect").click();
    let snap = until(&mut harness, 15, "the refusal", |s| {
        matches!(s.connection, walkie_app::engine::Connection::Failed(_))
    });
    assert!(
        format!("{:?}", snap.connection).contains("Wrong user name or token"),
        "{:?}",
        snap.connection
    );
    assert!(
        harness
            .query_by_label_contains("Wrong user name or token")
            .is_some()
    );
    // The right token connects, and the profile is remembered.
    harness.get_by_label("Token").focus();
    harness.run_steps(1);
    harness.key_down_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.run_steps(1);
    harness.get_by_label("Token").type_text(&alice.token);
    harness.run_steps(1);
    harness.get_by_label("Connect").click();
    until(&mut harness, 15, "connected", |s| {
        s.connection.is_connected()
    });
    let saved = AppFile::load(&AppFile::path(&dirs.path().join("config"))).expect("app.toml");
    assert_eq!(
        saved
            .profiles
            .first()
            .and_then(|p| p.user.clone())
            .as_deref(),
        Some("alice")
    );
    drop(relay);
}

/// Bob's next event that `pick` accepts, within 10 s.
fn bob_waits<T>(world: &World, bob: &mut Client, pick: impl Fn(Event) -> Option<T>) -> Option<T> {
    world.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = bob.next_event().await {
                if let Some(t) = pick(e) {
                    return Some(t);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    })
}

#[test]
#[ignore = "renders docs/app.png with wgpu; run by hand: cargo test --test app -- --ignored screenshot"]
fn screenshot() {
    let (world, app) = world_app();
    let harness = Harness::builder()
        .with_size([1000.0, 640.0])
        .wgpu()
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    bob_sends(&world, &bob, 2_600);
    until(&mut harness, 15, "bob's clip played", |s| {
        s.conversation(&crew())
            .is_some_and(|c| c.unread == 0 && c.clips.len() == 1)
    });
    // Alice answers; bob plays it, so it shows "played by bob".
    harness.key_down(egui::Key::Space);
    pass(&mut harness, Duration::from_millis(1_800));
    harness.key_up(egui::Key::Space);
    until(&mut harness, 20, "alice's clip stored", |s| {
        matches!(s.talk, Talk::Idle) && clips_in_crew(s) == 2
    });
    let id = bob_waits(&world, &mut bob, |e| match e {
        Event::Clip(c) if c.header.from == "alice" => Some(c.header.id),
        _ => None,
    })
    .expect("bob receives alice's clip");
    world.rt.block_on(bob.played(id)).expect("receipt");
    until(&mut harness, 10, "the receipt", |s| {
        s.conversation(&crew())
            .is_some_and(|c| c.clips.iter().any(|c| !c.played_by.is_empty()))
    });
    // Two more from bob: the first plays, the second waits its turn (unplayed).
    bob_sends(&world, &bob, 1_400);
    bob_sends(&world, &bob, 1_200);
    until(&mut harness, 10, "bob's next clips", |s| {
        clips_in_crew(s) == 4
    });
    // Bob talks live now.
    let pcm = support::sample_48k("status-report.wav");
    let enc = encode_pcm(&pcm[..48_000], &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to: crew(),
        started_at_ms: now_ms(),
        codec: enc.params,
    };
    let mut upload = world
        .rt
        .block_on(bob.start_clip(&header))
        .expect("bob talks");
    for p in &enc.packets[..20] {
        world.rt.block_on(upload.packet(p.clone())).expect("packet");
    }
    until(&mut harness, 10, "bob talking", |s| {
        s.someone_talking().is_some()
    });
    pass(&mut harness, Duration::from_millis(200));
    let image = harness.render().expect("renders with wgpu");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/app.png");
    std::fs::create_dir_all(out.parent().expect("docs dir")).expect("docs dir");
    image.save(&out).expect("saves the png");
    upload.cancel();
    world.rt.block_on(bob.close());
}

#[test]
fn load_older_clips_pages_back_through_the_history() {
    // 215 short clips from bob that alice has already heard (acknowledged): the app shows the
    // newest 200 it loads on connect, and "Load older clips" fetches the rest from the relay.
    const CLIPS: usize = 215;
    let config = RelayConfig {
        clips_per_minute: 10_000,
        ..RelayConfig::default()
    };
    let (world, app) = world_app_with(config, |rt, alice, bob| {
        rt.block_on(async {
            let bob = Client::connect(bob).await.expect("bob connects");
            let enc = encode_pcm(&[0.0; 960], &EncoderConfig::default()).expect("encodes");
            for _ in 0..CLIPS {
                let header = ClipHeader {
                    id: ClipId::random(),
                    to: crew(),
                    started_at_ms: now_ms(),
                    codec: enc.params,
                };
                bob.send_clip(&header, &enc.packets, enc.samples)
                    .await
                    .expect("stored");
            }
            bob.close().await;
            let mut alice = Client::connect(alice).await.expect("alice connects");
            let opts = walkie_client::ops::ListenOptions {
                save_dir: None,
                count: Some(CLIPS),
                timeout: Some(Duration::from_secs(60)),
            };
            walkie_client::ops::listen(&mut alice, &opts, |_| {})
                .await
                .expect("alice hears them all");
            alice.close().await;
        });
    });
    let harness = Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let snap = until(&mut harness, 15, "the history on screen", |s| {
        clips_in_crew(s) >= 200
    });
    assert!(
        clips_in_crew(&snap) < CLIPS,
        "not everything is loaded at first: {}",
        clips_in_crew(&snap)
    );
    let mut clicks = 0;
    while clips_in_crew(&harness.state().engine().snapshot()) < CLIPS {
        assert!(clicks < 5, "Load older clips did not bring the history in");
        // The button is at the top of the conversation: scroll up to it with the mouse wheel,
        // as a person would, then click it.
        let over = harness
            .query_all_by_label_contains("clip from bob")
            .last()
            .expect("a clip")
            .rect()
            .center();
        harness.event(egui::Event::PointerMoved(over));
        for _ in 0..20 {
            harness.event(egui::Event::MouseWheel {
                unit: egui::MouseWheelUnit::Point,
                delta: egui::vec2(0.0, 2_000.0),
                modifiers: egui::Modifiers::default(),
                phase: egui::TouchPhase::Move,
                source: egui::MouseWheelSource::Wheel,
            });
            harness.run_steps(1);
        }
        harness.get_by_label("Load older clips").click();
        clicks += 1;
        let before = clips_in_crew(&harness.state().engine().snapshot());
        until(&mut harness, 15, "an older page", |s| {
            clips_in_crew(s) > before
        });
    }
    let snap = until(&mut harness, 15, "the end of the history", |s| {
        s.conversation(&crew())
            .is_some_and(|c| !c.has_older && !c.loading)
    });
    assert_eq!(clips_in_crew(&snap), CLIPS, "every clip once");
    assert!(
        harness.query_by_label("Load older clips").is_none(),
        "no more to load"
    );
    drop(world);
}

/// Bob's events until a request round trip: anything the relay sent him before is in.
fn bob_events_so_far(world: &World, bob: &mut Client) -> Vec<Event> {
    world.rt.block_on(async {
        bob.history(None, 1, Some(0)).await.expect("a barrier");
        let mut seen = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(50), bob.next_event()).await
        {
            seen.push(e);
        }
        seen
    })
}

#[test]
fn with_no_working_speaker_nothing_is_marked_played_and_no_receipt_is_sent() {
    let (world, app) = world_app_speaker(
        RelayConfig::default(),
        |_, _, _| {},
        "no-such-speaker-device",
    );
    let harness = Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let snap = harness.state().engine().snapshot();
    assert!(
        snap.audio_problem
            .as_deref()
            .is_some_and(|p| p.contains("speaker")),
        "{:?}",
        snap.audio_problem
    );
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let id = bob_sends(&world, &bob, 1_000);
    until(&mut harness, 10, "bob's clip shown", |s| {
        clips_in_crew(s) == 1
    });
    // Long enough for the clip to have "played" into the silent stand-in.
    pass(&mut harness, Duration::from_millis(3_000));
    let snap = harness.state().engine().snapshot();
    let clip = &snap.conversation(&crew()).expect("crew").clips[0];
    assert_eq!((clip.id, clip.played), (id, false), "nobody heard it");
    assert!(
        !bob_events_so_far(&world, &mut bob)
            .iter()
            .any(|e| matches!(e, Event::PlayedBy(..))),
        "no receipt for audio nobody heard"
    );
    world.rt.block_on(bob.close());
}

#[test]
fn only_the_conversation_on_screen_plays_by_itself_and_stop_stops() {
    let (world, mut harness) = world();
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let bob_dm = Target::User("bob".into());
    // A direct clip while crew is on screen: shown, not played.
    let direct = bob_sends_to(&world, &bob, 1_000, Target::User("alice".into()));
    until(&mut harness, 10, "bob's direct clip shown", |s| {
        s.conversation(&bob_dm).is_some_and(|c| c.clips.len() == 1)
    });
    pass(&mut harness, Duration::from_millis(2_500));
    let snap = harness.state().engine().snapshot();
    assert_eq!(snap.playing, None);
    assert!(
        !snap.conversation(&bob_dm).expect("@bob").clips[0].played,
        "a conversation never opened does not play by itself"
    );

    // A long clip in crew plays (live) by itself; replayed, a click on it stops it at once.
    let long = bob_sends(&world, &bob, 6_000);
    until(&mut harness, 20, "bob's crew clip played", |s| {
        s.playing.is_none()
            && s.conversation(&crew())
                .is_some_and(|c| c.clips.iter().any(|c| c.id == long && c.played))
    });
    harness.get_by_label_contains("clip from bob").click();
    until(&mut harness, 10, "the replay plays", |s| {
        s.playing == Some(long)
    });
    harness
        .get_by_label_contains("playing (click to stop)")
        .click();
    until(
        &mut harness,
        2,
        "the replay stops well before its 6 s end",
        |s| s.playing.is_none(),
    );
    pass(&mut harness, Duration::from_millis(1_000));
    assert_eq!(
        harness.state().engine().snapshot().playing,
        None,
        "it did not start again"
    );

    // Opening @bob plays what waited there, and only then bob hears of it.
    harness.get_by_label_contains("@bob  1 unread").click();
    until(&mut harness, 15, "the direct clip played", |s| {
        s.conversation(&bob_dm).is_some_and(|c| c.clips[0].played)
    });
    let receipt = bob_waits(&world, &mut bob, |e| match e {
        Event::PlayedBy(id, user) if id == direct => Some((id, user)),
        _ => None,
    });
    assert_eq!(receipt, Some((direct, "alice".to_string())));
    world.rt.block_on(bob.close());
}

#[test]
fn a_network_blip_keeps_the_conversation_records_into_the_outbox_and_delivers_on_return() {
    let (world, mut harness) = world();
    let World {
        rt,
        _relay: relay,
        bob,
        dirs,
    } = world;
    let support::TestRelay {
        handle,
        data,
        store: _,
    } = relay;
    let addr = handle.addr;
    // One clip before the blip.
    harness.key_down(egui::Key::Space);
    harness.run_steps(1);
    until(&mut harness, 5, "talking", talking);
    pass(&mut harness, Duration::from_millis(1_000));
    harness.key_up(egui::Key::Space);
    until(&mut harness, 20, "the first clip stored", |s| {
        matches!(s.talk, Talk::Idle) && clips_in_crew(s) == 1
    });

    // The relay goes away: the conversation stays on screen, with a banner.
    rt.block_on(handle.shutdown());
    until(&mut harness, 10, "the blip noticed", |s| {
        !s.connection.is_connected() && s.connection.shows_conversations()
    });
    assert!(
        harness.query_by_label_contains("reconnecting").is_some()
            || harness.query_by_label_contains("Reconnecting").is_some(),
        "a banner says so"
    );
    assert!(
        harness.query_by_label("Hold to talk").is_some(),
        "the talk button stays"
    );
    assert_eq!(
        clips_in_crew(&harness.state().engine().snapshot()),
        1,
        "history stays shown"
    );

    // Talking meanwhile records into the outbox.
    harness.key_down(egui::Key::Space);
    harness.run_steps(1);
    until(&mut harness, 5, "talking offline", talking);
    pass(&mut harness, Duration::from_millis(1_000));
    harness.key_up(egui::Key::Space);
    let snap = until(&mut harness, 20, "the offline clip queued", |s| {
        matches!(s.talk, Talk::Idle)
            && s.conversation(&crew())
                .is_some_and(|c| c.clips.len() == 2 && c.clips.iter().any(|c| c.queued))
    });
    assert!(!snap.connection.is_connected());

    // The relay comes back on the same address: the app reconnects and delivers the clip.
    let store = Arc::new(walkie_store::sqlite::SqliteStore::open(&data).expect("store"));
    let back = rt
        .block_on(walkie_relay::start(
            walkie_relay::RelayConfig {
                listen: addr,
                ..RelayConfig::default()
            },
            &data,
            store.clone(),
        ))
        .expect("relay back");
    until(&mut harness, 40, "reconnected and delivered", |s| {
        s.connection.is_connected()
            && s.conversation(&crew())
                .is_some_and(|c| c.clips.len() == 2 && c.clips.iter().all(|c| !c.queued))
    });
    let stored =
        walkie_store::Store::history(store.as_ref(), "bob", &crew(), 10, None).expect("history");
    assert_eq!(stored.len(), 2, "both clips are on the relay");
    let _ = bob;
    rt.block_on(back.shutdown());
    drop(dirs);
}

// ---- people ----

/// Types `text` into the field labelled `label`.
fn type_into(harness: &mut Harness<'_, WalkieApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run_steps(1);
    harness.get_by_label(label).type_text(text);
    harness.run_steps(1);
}

#[test]
fn a_new_user_joins_from_an_invite_link_with_a_display_name() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dirs = tempfile::tempdir().expect("tempdir");
    let relay = rt.block_on(support::start_relay(
        &dirs.path().join("relay"),
        RelayConfig::default(),
    ));
    relay.add_user("alice");
    relay.add_channel("crew", &["alice"]);
    let invite = walkie_proto::people::Invite {
        uses_left: 1,
        expires_ms: now_ms() + 60_000,
        channel: Some("crew".into()),
        created_by: None,
        device_of: None,
    };
    let code = walkie_relay::people::create_invite(relay.store.as_ref(), &invite).expect("invite");
    let link = walkie_proto::people::InviteLink {
        addr: relay.handle.addr.to_string(),
        code: Some(code),
        fingerprint: Some(relay.handle.fingerprint.to_string()),
    };
    let mut harness = connect_screen(dirs.path());
    type_into(&mut harness, "Invite link", &link.to_string());
    type_into(&mut harness, "Login name", "zoe");
    type_into(&mut harness, "Display name", "Zoë 张");
    harness.get_by_label("Join").click();
    let snap = until(&mut harness, 20, "joined and connected", |s| {
        s.connection.is_connected()
            && s.people.me.as_ref().is_some_and(|m| m.display.is_some())
            && s.conversation(&crew()).is_some()
    });
    assert_eq!(snap.me(), Some("zoe"));
    assert_eq!(
        snap.people.me.as_ref().and_then(|m| m.display.as_deref()),
        Some("Zoë 张")
    );
    assert_eq!(
        walkie_store::Store::members(relay.store.as_ref(), "crew").expect("reads"),
        Some(vec!["alice".to_string(), "zoe".into()]),
        "the invite's channel"
    );
    let saved = AppFile::load(&AppFile::path(&dirs.path().join("config"))).expect("app.toml");
    assert_eq!(
        saved
            .profiles
            .first()
            .and_then(|p| p.user.clone())
            .as_deref(),
        Some("zoe"),
        "the new account is remembered"
    );
    assert!(harness.query_by_label_contains("zoe at").is_some());
    drop(relay);
}

/// A 256 px PNG (what a client sends as an avatar).
fn avatar_png() -> Vec<u8> {
    let img = image::RgbaImage::from_fn(256, 256, |x, y| {
        image::Rgba([x as u8, 255 - y as u8, 140, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encodes");
    out.into_inner()
}

#[test]
fn a_received_clip_shows_its_senders_avatar_and_display_name() {
    let (world, app) = world_app_with(paused_talkers(), |rt, _, bob| {
        rt.block_on(async {
            let c = Client::connect(bob).await.expect("bob connects");
            c.set_profile(Some("Bob 鲍勃".into()), None)
                .await
                .expect("named");
            c.set_avatar(Some(avatar_png())).await.expect("avatar");
            c.close().await;
        });
    });
    let harness = Harness::builder()
        .with_size([1000.0, 700.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let pcm: Vec<f32> = (0..48 * 600)
        .map(|i| (i as f32 * 0.03).sin() * 0.3)
        .collect();
    let clip = encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    let header = ClipHeader {
        id: ClipId::random(),
        to: crew(),
        started_at_ms: now_ms(),
        codec: clip.params,
    };
    world
        .rt
        .block_on(bob.send_clip(&header, &clip.packets, clip.samples))
        .expect("stored");
    let snap = until(&mut harness, 15, "bob's clip with his avatar", |s| {
        clips_in_crew(s) == 1
            && s.people
                .persons
                .get("bob")
                .is_some_and(|p| p.avatar.is_some())
    });
    let bob_seen = &snap.people.persons["bob"];
    assert_eq!(bob_seen.display.as_deref(), Some("Bob 鲍勃"));
    assert_eq!(
        bob_seen.avatar.as_ref().map(|a| a.size),
        Some([64, 64]),
        "the small avatar, decoded"
    );
    // Drawn beside his clip: an avatar on the clip's row, just left of it.
    let clip = harness.get_by_label_contains("clip from bob").rect();
    let beside = harness
        .query_all_by_label("avatar of bob")
        .map(|n| n.rect())
        .any(|a| {
            a.center().y >= clip.top()
                && a.center().y <= clip.bottom()
                && a.right() <= clip.left() + 1.0
                && clip.left() - a.right() < 40.0
        });
    assert!(beside, "an avatar of bob left of the clip at {clip:?}");
    world.rt.block_on(bob.close());
}

#[test]
fn a_contact_request_is_accepted_and_a_channel_made_with_a_member_added() {
    let (world, app) = world_app();
    let harness = Harness::builder()
        .with_size([1200.0, 800.0])
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    world
        .rt
        .block_on(bob.contact("alice", walkie_proto::people::ContactAction::Add))
        .expect("bob asks");
    until(&mut harness, 15, "bob's request", |s| {
        s.people.contact_state("bob") == Some(walkie_proto::people::ContactState::Incoming)
    });
    harness.get_by_label("People (1 asking)").click();
    harness.run_steps(3);
    harness.get_by_label("Accept bob").click();
    until(&mut harness, 15, "bob a contact", |s| {
        s.people.contact_state("bob") == Some(walkie_proto::people::ContactState::Contact)
    });
    let heard = bob_waits(&world, &mut bob, |e| match e {
        Event::ContactChanged(entry) if entry.user == "alice" => entry.state,
        _ => None,
    });
    assert_eq!(
        heard,
        Some(walkie_proto::people::ContactState::Contact),
        "bob hears the answer"
    );

    type_into(&mut harness, "New channel", "team");
    harness.get_by_label("Create channel").click();
    until(&mut harness, 15, "the new channel", |s| {
        s.people.groups.iter().any(|g| g.name == "team")
    });
    type_into(&mut harness, "Add to team", "@bob");
    harness.get_by_label("Add member to team").click();
    let snap = until(&mut harness, 15, "bob in team", |s| {
        s.people
            .groups
            .iter()
            .any(|g| g.name == "team" && g.members.len() == 2)
    });
    let team = snap
        .people
        .groups
        .iter()
        .find(|g| g.name == "team")
        .expect("team");
    assert_eq!(
        (team.owner.as_deref(), team.members.clone()),
        (Some("alice"), vec!["alice".to_string(), "bob".into()])
    );
    assert!(
        snap.conversation(&Target::Channel("team".into())).is_some(),
        "listed as a conversation"
    );
    let channels = bob_waits(&world, &mut bob, |e| match e {
        Event::Channels(c) if c.contains(&"team".to_string()) => Some(c),
        _ => None,
    });
    assert_eq!(
        channels,
        Some(vec!["crew".to_string(), "team".into()]),
        "bob is told at once"
    );
    world.rt.block_on(bob.close());
}

/// True if some node's label contains `text`.
fn shows(harness: &Harness<'_, WalkieApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// A JPEG photo of `w`×`h`, prepared as a client sends it.
fn photo(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 140])
    });
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .expect("encodes");
    walkie_client::picture::prepare(&jpeg).expect("prepared")
}

/// The items of crew with their body, as the engine shows them.
fn crew_items(s: &Snapshot) -> Vec<walkie_app::engine::ClipView> {
    s.conversation(&crew())
        .map(|c| c.clips.clone())
        .unwrap_or_default()
}

#[test]
fn texts_pictures_and_doodles_are_sent_shown_opened_read_and_recalled_in_the_app() {
    use walkie_app::engine::Body;
    use walkie_proto::message::{Content, Kind, MessageHeader};
    let (world, mut harness) = world();
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");

    // Type a text; Enter sends it.
    type_into(&mut harness, "Message", "meet at the north gate");
    // A character no installed font has (another person's emoji) is drawn as a box.
    let header = walkie_proto::message::MessageHeader {
        id: ClipId::random(),
        to: crew(),
        kind: Kind::Text,
    };
    world
        .rt
        .block_on(bob.send_message(&header, "👇 \u{1F9FF} 𓀀".as_bytes()))
        .expect("stored");
    until(&mut harness, 10, "bob's emoji text shown", |s| {
        crew_items(s)
            .iter()
            .any(|c| c.id == header.id && c.body.is_some())
    });
    harness.key_press(egui::Key::Enter);
    let snap = until(&mut harness, 10, "the text stored", |s| {
        crew_items(s).iter().any(|c| {
            c.mine && c.seq > 0 && c.body == Some(Body::Text("meet at the north gate".into()))
        })
    });
    let text_id = crew_items(&snap).iter().find(|c| c.mine).expect("mine").id;
    assert!(shows(
        &harness,
        "text \"meet at the north gate\" from alice"
    ));
    assert!(shows(&harness, ", sent"), "one tick until read");
    let got = bob_waits(&world, &mut bob, |e| match e {
        Event::Message(m) => Some((m.header.id, m.detail())),
        _ => None,
    });
    assert_eq!(
        got,
        Some((text_id, "\"meet at the north gate\"".to_string()))
    );
    // Bob reads it: two ticks.
    world.rt.block_on(bob.played(text_id)).expect("read");
    until(&mut harness, 10, "the read tick", |s| {
        crew_items(s)
            .iter()
            .any(|c| c.id == text_id && c.played_by == ["bob"])
    });
    assert!(shows(&harness, "read by bob"));

    // Bob sends a picture: its thumbnail shows, opens full size, and counts as read.
    let header = MessageHeader {
        id: ClipId::random(),
        to: crew(),
        kind: Kind::Picture,
    };
    world
        .rt
        .block_on(bob.send_message(&header, &photo(640, 480)))
        .expect("stored");
    until(&mut harness, 10, "the picture shown", |s| {
        crew_items(s)
            .iter()
            .any(|c| c.id == header.id && matches!(c.body, Some(Body::Picture { .. })))
    });
    assert!(shows(&harness, "picture 640x480 from bob"));
    harness.get_by_label("open picture from bob").click();
    harness.run_steps(2);
    assert!(
        shows(&harness, "full size 640×480"),
        "the picture opens full size"
    );
    harness.get_by_label("Close picture").click();
    harness.run_steps(1);
    let receipt = bob_waits(&world, &mut bob, |e| match e {
        Event::PlayedBy(id, user) if id == header.id => Some(user),
        _ => None,
    });
    assert_eq!(
        receipt.as_deref(),
        Some("alice"),
        "seen on screen, it is read"
    );

    // A doodle drawn with pointer drags, then sent.
    harness.get_by_label("Doodle").click();
    harness.run_steps(2);
    let canvas = harness.get_by_label("doodle canvas").rect();
    let points = [
        canvas.min + egui::vec2(40.0, 40.0),
        canvas.min + egui::vec2(120.0, 90.0),
        canvas.min + egui::vec2(220.0, 60.0),
        canvas.min + egui::vec2(300.0, 200.0),
    ];
    harness.hover_at(points[0]);
    harness.run_steps(1);
    harness.drag_at(points[0]);
    harness.run_steps(1);
    for p in &points[1..] {
        harness.hover_at(*p);
        harness.run_steps(1);
    }
    harness.drop_at(points[3]);
    harness.run_steps(2);
    assert!(shows(&harness, "1 strokes"), "one stroke drawn");
    harness.get_by_label("Send doodle").click();
    let snap = until(&mut harness, 10, "the doodle stored", |s| {
        crew_items(s)
            .iter()
            .any(|c| c.mine && c.seq > 0 && matches!(c.content, Content::Doodle { .. }))
    });
    let doodle = crew_items(&snap)
        .into_iter()
        .find(|c| c.mine && matches!(c.content, Content::Doodle { .. }))
        .expect("doodle");
    let at_relay = stored(&world);
    let kept = at_relay
        .iter()
        .find(|m| m.id == doodle.id)
        .expect("at the relay");
    let Content::Doodle {
        strokes: 1, points, ..
    } = kept.content
    else {
        panic!("{:?}", kept.content)
    };
    assert!(points >= 3, "{points} points");

    // Recall the text: gone from the relay and from bob's conversation.
    harness
        .get_by_label_contains("text \"meet at the north gate\"")
        .scroll_to_me();
    harness.run_steps(1);
    harness
        .query_all_by_label("Recall")
        .next()
        .expect("a Recall button on alice's text")
        .click();
    until(&mut harness, 10, "the recall", |s| {
        crew_items(s)
            .iter()
            .any(|c| c.id == text_id && c.content == Content::Recalled)
    });
    assert!(shows(&harness, "message recalled"));
    let told = bob_waits(&world, &mut bob, |e| match e {
        Event::Message(m) if m.header.id == text_id => Some(m.header.content),
        _ => None,
    });
    assert_eq!(told, Some(Content::Recalled));
    world.rt.block_on(bob.close());
}

#[test]
fn a_message_arriving_unfocused_notifies_unless_muted_and_is_read_on_focus() {
    use walkie_proto::message::{Kind, MessageHeader};
    let (world, mut harness) = world();
    let mut bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let say = |bob: &Client, text: &str| {
        let header = MessageHeader {
            id: ClipId::random(),
            to: crew(),
            kind: Kind::Text,
        };
        world
            .rt
            .block_on(bob.send_message(&header, text.as_bytes()))
            .expect("stored");
        header.id
    };
    harness.input_mut().focused = false;
    harness.run_steps(2);
    let ping = say(&bob, "ping");
    let snap = until(&mut harness, 10, "the notification", |s| {
        s.last_notification.is_some()
    });
    assert_eq!(
        snap.last_notification,
        Some((crew(), "bob in #crew: ping".to_string()))
    );
    assert!(
        crew_items(&snap).iter().any(|c| c.id == ping && !c.played),
        "unread while the window is not focused"
    );
    harness.input_mut().focused = true;
    until(&mut harness, 10, "read once focused", |s| {
        crew_items(s).iter().any(|c| c.id == ping && c.played)
    });
    let receipt = bob_waits(&world, &mut bob, |e| match e {
        Event::PlayedBy(id, _) if id == ping => Some(id),
        _ => None,
    });
    assert_eq!(receipt, Some(ping));

    // Muted: no notification.
    harness.get_by_label("Mute").click();
    until(&mut harness, 5, "crew muted", |s| {
        s.settings.muted == ["crew"]
    });
    harness.input_mut().focused = false;
    harness.run_steps(2);
    let quiet = say(&bob, "quiet one");
    let snap = until(&mut harness, 10, "the muted message shown", |s| {
        crew_items(s).iter().any(|c| c.id == quiet)
    });
    assert_eq!(
        snap.last_notification,
        Some((crew(), "bob in #crew: ping".to_string())),
        "no notification for a muted conversation"
    );
    world.rt.block_on(bob.close());
}

#[test]
#[ignore = "renders docs/messages.png with wgpu; run by hand: cargo test --test app -- --ignored screenshot_of_every_kind"]
fn screenshot_of_every_kind() {
    use walkie_proto::message::{Kind, MessageHeader};
    let (world, app) = world_app();
    let harness = Harness::builder()
        .with_size([1000.0, 900.0])
        .wgpu()
        .build_ui_state(|ui, app: &mut WalkieApp| app.ui(ui), app);
    let mut harness = ready(harness);
    let bob = world
        .rt
        .block_on(Client::connect(&world.bob))
        .expect("bob connects");
    let send = |kind: Kind, payload: &[u8]| {
        let header = MessageHeader {
            id: ClipId::random(),
            to: crew(),
            kind,
        };
        world
            .rt
            .block_on(bob.send_message(&header, payload))
            .expect("stored");
    };
    bob_sends(&world, &bob, 1_800);
    until(&mut harness, 15, "bob's clip played and placed", |s| {
        s.conversation(&crew())
            .is_some_and(|c| c.unread == 0 && c.clips.len() == 1 && c.clips[0].seq > 0)
    });
    send(
        Kind::Text,
        "Found the north gate. It's locked — photo below 👇".as_bytes(),
    );
    let landscape = image::RgbImage::from_fn(960, 540, |x, y| {
        let sky = y < 300;
        let hill = (y as f32) > 300.0 + 60.0 * ((x as f32) / 150.0).sin();
        match (sky, hill) {
            (true, _) => image::Rgb([120, 170, (230 - y / 4) as u8]),
            (false, true) => image::Rgb([60, (120 + (x % 40)) as u8, 70]),
            _ => image::Rgb([150, 140, 110]),
        }
    });
    let mut jpeg = Vec::new();
    landscape
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .expect("encodes");
    send(
        Kind::Picture,
        &walkie_client::picture::prepare(&jpeg).expect("prepared"),
    );
    let doodle = r##"{"width": 480, "height": 320, "strokes": [
        {"color": "#d03030", "width": 8, "points": [[60, 250, 0], [120, 120, 80], [180, 250, 160], [90, 190, 240], [150, 190, 300]]},
        {"color": "#3060d0", "width": 6, "points": [[240, 120, 500], [240, 250, 600], [300, 250, 700]]},
        {"color": "#2e9e5b", "width": 10, "points": [[380, 150, 900], [420, 110, 960], [450, 160, 1020], [410, 240, 1100], [380, 150, 1180]]}]}"##;
    send(Kind::Doodle, doodle.as_bytes());
    until(&mut harness, 10, "every kind shown", |s| {
        crew_items(s).iter().filter(|c| c.body.is_some()).count() == 3
    });
    type_into(&mut harness, "Message", "On my way, 5 minutes");
    harness.key_press(egui::Key::Enter);
    until(&mut harness, 10, "alice's text stored", |s| {
        crew_items(s).iter().any(|c| c.mine && c.seq > 0)
    });
    pass(&mut harness, Duration::from_millis(1_500));
    let image = harness.render().expect("renders with wgpu");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/messages.png");
    image.save(&out).expect("saves the png");
    world.rt.block_on(bob.close());
}
