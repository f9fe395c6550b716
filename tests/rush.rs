//! The rush, smaller: most of a 300-member channel comes online at once while one member
//! talks to it. Every member connects (nothing refuses them), every member ends up with the
//! whole clip, the listeners who were there from the start hear it live, and every member's
//! view of who is online (one list, then batched changes) ends exact. Correctness only: the
//! costs are measured by `cargo bench --bench relay -- rush`.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::{start_relay, within};
use tokio::sync::watch;
use walkie_client::{Client, ClientConfig, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_relay::RelayConfig;

const MEMBERS: usize = 300;
/// Members online before the talker starts.
const EARLY: usize = 40;
/// The clip: 5 s of audio in 20 ms packets.
const FRAMES: usize = 250;

/// What one member saw.
#[derive(Debug, Default)]
struct Seen {
    online: BTreeSet<String>,
    live_packets: usize,
    clip_packets: Option<usize>,
}

/// Reads a member's events until told to stop (events must be read, or the relay's control
/// stream to them backs up).
async fn follow(
    mut client: Client,
    clip: ClipId,
    mut stop: watch::Receiver<bool>,
    seen: watch::Sender<Seen>,
) -> Client {
    loop {
        tokio::select! {
            event = client.next_event() => {
                let Some(event) = event else { break };
                seen.send_modify(|s| match event {
                    Event::Online(users) => s.online = users.into_iter().collect(),
                    Event::Presence(user, true) => { s.online.insert(user); }
                    Event::Presence(user, false) => { s.online.remove(&user); }
                    // Stream copies: every packet once (datagram copies may be lost or repeated).
                    Event::LivePacket(id, p) if id == clip && p.via == walkie_proto::received::Via::Stream => s.live_packets += 1,
                    Event::Clip(c) if c.header.id == clip => s.clip_packets = Some(c.packets.len()),
                    _ => {}
                });
            }
            _ = stop.changed() => break,
        }
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_channel_comes_online_at_once_while_one_member_talks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Every client here comes from 127.0.0.1: the per-source cap (meant for one attacker's
    // address) is lifted so that only the relay-wide admission control applies.
    let config = RelayConfig {
        max_unauthenticated_per_source: 4_096,
        clips_per_minute: 1_000,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let mut names: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:03}")).collect();
    names.push("talker".into());
    let cfgs: Vec<ClientConfig> = names.iter().map(|n| relay.add_user(n)).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    relay.add_channel("all", &members);

    let pcm: Vec<f32> = (0..48 * 20 * FRAMES)
        .map(|i| (i as f32 * 0.03).sin() * 0.3)
        .collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    let packets = clip.packets.len();
    assert!(packets >= FRAMES);
    let header = ClipHeader {
        id: ClipId::random(),
        to: Target::Channel("all".into()),
        started_at_ms: now_ms(),
        codec: clip.params,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut followers = Vec::new();
    let mut views = Vec::new();
    let clip_id = header.id;
    let connect = |cfg: ClientConfig| {
        let (stop, id) = (stop_rx.clone(), clip_id);
        async move {
            let client = Client::connect(&cfg)
                .await
                .map_err(|e| format!("{}: {e}", cfg.user))?;
            let (tx, rx) = watch::channel(Seen::default());
            Ok::<_, String>((tokio::spawn(follow(client, id, stop, tx)), rx))
        }
    };
    // The talker and the first listeners are online before the clip starts.
    let talker = Client::connect(&cfgs[MEMBERS])
        .await
        .expect("talker connects");
    for cfg in &cfgs[..EARLY] {
        let (task, view) = connect(cfg.clone()).await.expect("connects");
        followers.push(task);
        views.push(view);
    }

    // The talker talks in real time while everyone else rushes in.
    let talk = tokio::spawn({
        let packets = clip.packets.clone();
        async move {
            // The talker reads none of its events (a `walkie send` does not): hundreds of
            // presence changes must not hold up its `ClipStored`.
            let mut upload = talker.start_clip(&header).await.expect("clip starts");
            let start = Instant::now();
            for (n, p) in packets.into_iter().enumerate() {
                tokio::time::sleep_until((start + Duration::from_millis(20 * n as u64)).into())
                    .await;
                upload.packet(p).await.expect("packet");
            }
            upload.finish(clip.samples).await.expect("stored");
            talker
        }
    });
    let started = Instant::now();
    let rush: Vec<_> = cfgs[EARLY..MEMBERS].iter().cloned().map(connect).collect();
    let rushed = within(120, "the rush connects", futures::future::join_all(rush)).await;
    let rush_secs = started.elapsed().as_secs_f64();
    let refused: Vec<&String> = rushed.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "nobody is refused: {refused:?}");
    for (task, view) in rushed.into_iter().flatten() {
        followers.push(task);
        views.push(view);
    }
    let talker = within(60, "the clip is stored", talk)
        .await
        .expect("talker task");

    // Every member ends up with the whole clip and an exact list of who is online.
    let everyone: BTreeSet<String> = names.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wrong: Vec<String> = views
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                let v = v.borrow();
                let mut expected = everyone.clone();
                expected.remove(&names[*i]);
                v.clip_packets != Some(packets) || v.online != expected
            })
            .map(|(i, _)| names[i].clone())
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} members still lack the clip or the right online list, e.g. {:?}",
            wrong.len(),
            views[names.iter().position(|n| *n == wrong[0]).unwrap_or(0)].borrow()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for view in &views[..EARLY] {
        assert_eq!(
            view.borrow().live_packets,
            packets,
            "a listener there from the start hears every packet live"
        );
    }
    eprintln!(
        "rush: {} members connected in {rush_secs:.2} s while the talker talked; all settled {:.2} s after the rush began",
        MEMBERS - EARLY,
        started.elapsed().as_secs_f64()
    );

    // Going offline is told too: the early listeners leave, the rest see it.
    stop_tx.send(true).expect("stop");
    let mut clients = Vec::new();
    for task in followers {
        clients.push(task.await.expect("follower"));
    }
    let mut watcher = clients.pop().expect("the last member");
    futures::future::join_all(clients.drain(..EARLY).map(Client::close)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = BTreeSet::new();
    while left.len() < EARLY {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "only {} of {EARLY} departures were told",
            left.len()
        );
        if let Ok(Some(Event::Presence(user, false))) =
            tokio::time::timeout(remaining, watcher.next_event()).await
        {
            left.insert(user);
        }
    }
    assert_eq!(
        left,
        names[..EARLY].iter().cloned().collect::<BTreeSet<_>>()
    );
    drop(clients);
    watcher.close().await;
    talker.close().await;
}
