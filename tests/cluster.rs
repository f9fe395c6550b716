//! Several relays over one NATS JetStream cluster (issue 7), seen from real clients over
//! loopback QUIC: live fan-out from a talker on one relay to a listener on another, inbox
//! delivery through another relay, floor control across relays (and a crashed relay's lease
//! freeing itself), `kill -9` of a NATS node during a run of sends, and `kill -9` of a relay
//! process whose clients fail over to the other relay and deliver their outboxes. The last
//! test (`#[ignore]`, run with `--ignored --nocapture`) prints ingest and fan-out figures
//! through the cluster next to the embedded store's.
//!
//! The cluster is `scripts/nats-cluster.sh` with its own dir and ports (client 25222-25224,
//! cluster 27222-27224, monitor 29222-29224; below Linux's ephemeral range, 32768-60999, so no client socket holds
//! one), so these tests and `tests/nats_store.rs` never
//! share nodes; it is started on first use and stopped by the script's watcher once this test
//! process has exited (`NATS_OWNER_PID`). Each test uses its own random prefix and deletes its
//! streams at the end. Without `nats-server` the tests fail, saying how to install it.
//! Relays of one deployment share one certificate: the tests copy relay 1's `cert.pem` and
//! `key.pem` into the other relays' data dirs, as an operator does.
// The RwLock guards are held across awaits on purpose: they serialise tests around the
// shared NATS cluster (a test that stops a node must run alone).
#![allow(clippy::await_holding_lock)]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use walkie_client::outbox::Outbox;
use walkie_client::{Client, ClientConfig, ClientError, Event, ReceivedClip, ops};
use walkie_media::codec::{self, EncodedClip, EncoderConfig};
use walkie_net::Fingerprint;
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::wire::ErrorCode;
use walkie_relay::cluster::nats::NatsCluster;
use walkie_relay::cluster::{Cluster, FloorError};
use walkie_relay::{self as relay, RelayConfig, RelayHandle, auth};
use walkie_store::Store;
use walkie_store::nats::{NatsConfig, NatsStore};

const NATS: support::NatsTestCluster = support::NatsTestCluster {
    base_dir: "/tmp/walkie-nats-cluster-test",
    client_port: 25222,
    cluster_port: 27222,
    monitor_port: 29222,
};
const RELAY_BIN: &str = env!("CARGO_BIN_EXE_walkie-relay");

// ---- the NATS cluster ----

fn servers() -> &'static [String] {
    static SERVERS: OnceLock<Vec<String>> = OnceLock::new();
    SERVERS.get_or_init(|| NATS.start())
}

/// `nats://HOST:PORT,HOST:PORT,...`, as `--store` takes it.
fn store_url() -> String {
    format!("nats://{}", servers().join(","))
}

/// Normal tests share the cluster; the node-kill test has it to itself (while a node is down,
/// creating 3-replica streams fails, so other tests must not start then).
static CLUSTER: RwLock<()> = RwLock::new(());

fn shared_cluster() -> RwLockReadGuard<'static, ()> {
    CLUSTER.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_cluster() -> RwLockWriteGuard<'static, ()> {
    CLUSTER.write().unwrap_or_else(|e| e.into_inner())
}

/// Restarts every stopped node when dropped, even if the test panicked.
struct RestartNodes;

impl Drop for RestartNodes {
    fn drop(&mut self) {
        NATS.script(&["start"]);
    }
}

// ---- a deployment: one prefix, relays, users ----

fn nats_config(prefix: &str) -> NatsConfig {
    NatsConfig {
        prefix: prefix.to_string(),
        replicas: Some(3),
        ..NatsConfig::new(servers())
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task runs")
}

async fn open_store(prefix: &str) -> Arc<NatsStore> {
    let config = nats_config(prefix);
    Arc::new(
        blocking(move || NatsStore::connect_with(config))
            .await
            .expect("the NATS store opens"),
    )
}

/// Everything of one test: a fresh prefix (its streams are deleted on drop), an admin store,
/// data dirs, and the relays running in this process.
struct Deployment {
    prefix: String,
    admin: Arc<NatsStore>,
    tmp: tempfile::TempDir,
    relays: Vec<RelayHandle>,
    tokens: HashMap<String, String>,
}

impl Deployment {
    /// A fresh prefix with `relays` relays started on it, all with relay 1's certificate.
    async fn new(relays: usize, config: RelayConfig) -> Deployment {
        let prefix = format!("c{:08x}", rand::random::<u32>());
        let admin = open_store(&prefix).await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut d = Deployment {
            prefix,
            admin,
            tmp,
            relays: Vec::new(),
            tokens: HashMap::new(),
        };
        for _ in 0..relays {
            let handle = d.start_relay(config.clone()).await;
            d.relays.push(handle);
        }
        d
    }

    /// The data dir of relay `i`, with relay 1's certificate once relay 1 exists.
    fn data_dir(&self, i: usize) -> PathBuf {
        let dir = self.tmp.path().join(format!("relay{}", i + 1));
        std::fs::create_dir_all(&dir).expect("data dir");
        if i > 0 {
            share_cert(&self.tmp.path().join("relay1"), &dir);
        }
        dir
    }

    /// Starts one more relay in this process on the deployment's prefix.
    async fn start_relay(&self, config: RelayConfig) -> RelayHandle {
        let data = self.data_dir(self.relays.len());
        let store = open_store(&self.prefix).await;
        let cluster = NatsCluster::connect(&nats_config(&self.prefix))
            .await
            .expect("the relay links to the cluster");
        let config = RelayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..config
        };
        let handle = relay::start_with(config, &data, store, Arc::new(cluster))
            .await
            .expect("relay starts");
        if let Some(first) = self.relays.first() {
            assert_eq!(
                handle.fingerprint, first.fingerprint,
                "relays of one deployment share the certificate"
            );
        }
        handle
    }

    /// Adds a user through the admin store; returns their config for relay `i`.
    async fn add_user(&mut self, name: &str, relay: usize) -> ClientConfig {
        let token = auth::new_token();
        let (admin, n, hash) = (
            self.admin.clone(),
            name.to_string(),
            auth::hash_token(&token),
        );
        blocking(move || admin.add_user(&n, &hash))
            .await
            .expect("user added");
        self.tokens.insert(name.to_string(), token);
        self.config(name, relay)
    }

    /// A config for an existing user on relay `i`.
    fn config(&self, name: &str, relay: usize) -> ClientConfig {
        ClientConfig {
            relay: self.relays[relay].addr.to_string(),
            user: name.into(),
            token: self.tokens[name].clone(),
            trust: self.relays[0].fingerprint.into(),
        }
    }

    async fn add_channel(&self, name: &str, members: &[&str]) {
        let admin = self.admin.clone();
        let (name, members): (String, Vec<String>) =
            (name.into(), members.iter().map(|m| m.to_string()).collect());
        blocking(move || admin.add_channel(&name, &members))
            .await
            .expect("channel added");
    }

    async fn shutdown(self) {
        for r in self.relays {
            r.shutdown().await;
        }
        delete_streams(&self.prefix);
    }
}

/// Copies relay 1's certificate and key into `to` (the relays of one deployment present the
/// same certificate, so clients pin one fingerprint for all of them).
fn share_cert(from: &Path, to: &Path) {
    for file in ["cert.pem", "key.pem"] {
        if from.join(file).exists() && !to.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).expect("certificate copied");
        }
    }
}

/// Deletes every stream of `prefix` (store and relay link), on a thread of its own so that it
/// works from async code too.
fn delete_streams(prefix: &str) {
    let prefix = prefix.to_string();
    let urls: Vec<async_nats::ServerAddr> = servers()
        .iter()
        .filter_map(|s| format!("nats://{s}").parse().ok())
        .collect();
    let cleanup = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let client = match async_nats::connect(urls).await {
                Ok(client) => client,
                Err(e) => return eprintln!("cleanup: cannot connect: {e}"),
            };
            let js = async_nats::jetstream::new(client);
            let streams = ["clips", "audio", "inbox"].map(|s| format!("{prefix}_{s}"));
            let buckets = [
                "users", "channels", "clipids", "purged", "floors", "records",
            ]
            .map(|b| format!("KV_{prefix}_{b}"));
            for name in streams.iter().chain(&buckets) {
                if let Err(e) = js.delete_stream(name).await {
                    eprintln!("cleanup: deleting stream {name}: {e}");
                }
            }
        });
    });
    let _ = cleanup.join();
}

// ---- clips and events ----

fn tone(ms: usize) -> EncodedClip {
    let pcm: Vec<f32> = (0..ms * 48)
        .map(|i| (i as f32 * 0.02).sin() * 0.3)
        .collect();
    codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes")
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
/// the other relay's listeners see (the 2 s floor gap itself is tested in the protocol core).
fn paused_talkers() -> RelayConfig {
    RelayConfig {
        floor_gap: Duration::from_secs(60),
        ..RelayConfig::default()
    }
}

fn crew() -> Target {
    Target::Channel("crew".into())
}

/// Runs `fut` with a deadline so a hung test fails instead of blocking CI.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {secs} s"))
}

/// Waits for the first event matching `pick`, skipping others.
async fn wait_for<T>(
    client: &mut Client,
    secs: u64,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    within(secs, what, async {
        loop {
            let e = client.next_event().await.expect("the connection stays up");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
}

fn clip_event(e: Event) -> Option<ReceivedClip> {
    match e {
        Event::Clip(c) => Some(c),
        _ => None,
    }
}

/// Receives clips on `client` (acknowledging each) until every id of `want` has arrived or
/// `secs` pass; returns how often each id arrived.
async fn receive_all(
    client: &mut Client,
    want: &HashSet<ClipId>,
    secs: u64,
) -> HashMap<ClipId, usize> {
    let mut got: HashMap<ClipId, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !want.iter().all(|id| got.contains_key(id)) {
        match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(Event::Clip(c))) => {
                *got.entry(c.header.id).or_default() += 1;
                client.ack(c.header.id).await.expect("ack sent");
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    got
}

// ---- live fan-out and inboxes across relays ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_another_relay_hears_the_talker_live_and_an_offline_member_gets_it_later() {
    let _g = shared_cluster();
    let mut d = Deployment::new(2, paused_talkers()).await;
    let alice = d.add_user("alice", 0).await;
    let bob = d.add_user("bob", 1).await;
    let carol = d.add_user("carol", 1).await;
    d.add_channel("crew", &["alice", "bob", "carol"]).await;
    let mut bob_c = Client::connect(&bob)
        .await
        .expect("bob connects to relay 2");
    let alice_c = Client::connect(&alice)
        .await
        .expect("alice connects to relay 1");

    let clip = tone(1000);
    let h = header(crew(), clip.params);
    let mut up = alice_c.start_clip(&h).await.expect("alice starts talking");
    for p in &clip.packets[..10] {
        up.packet(p.clone()).await.expect("sends");
    }
    // bob, on the other relay, hears of the clip and its first packet while alice talks.
    let live = wait_for(&mut bob_c, 20, "bob's live start", |e| match e {
        Event::LiveStarted(h) => Some(h),
        _ => None,
    })
    .await;
    assert_eq!(
        (live.id, live.from.as_str(), live.live, live.to.clone()),
        (h.id, "alice", true, crew())
    );
    let first = wait_for(&mut bob_c, 20, "bob's first live packet", |e| match e {
        Event::LivePacket(id, p) => Some((id, p.index, p.data)),
        _ => None,
    })
    .await;
    assert_eq!(
        first,
        (h.id, 0, clip.packets[0].clone()),
        "packets arrive in order, while alice still talks"
    );
    for p in &clip.packets[10..] {
        up.packet(p.clone()).await.expect("sends");
    }
    let (seq, duplicate) = up.finish(clip.samples).await.expect("stored");
    assert!(!duplicate);
    let heard = wait_for(&mut bob_c, 20, "bob's live clip end", clip_event).await;
    assert!(heard.header.live, "bob got it live");
    assert_eq!(
        (heard.header.id, &heard.packets, heard.samples),
        (h.id, &clip.packets, clip.samples)
    );
    bob_c.ack(h.id).await.expect("ack");

    // carol was offline: she connects to relay 2 and gets the stored clip from her inbox.
    let mut carol_c = Client::connect(&carol)
        .await
        .expect("carol connects to relay 2");
    let stored = wait_for(&mut carol_c, 20, "carol's inbox clip", clip_event).await;
    assert!(!stored.header.live);
    assert_eq!(
        (
            stored.header.id,
            stored.header.seq,
            &stored.packets,
            stored.samples
        ),
        (h.id, seq, &clip.packets, clip.samples)
    );
    carol_c.ack(h.id).await.expect("ack");

    // bob's live copy counted as delivered: his pump does not send the stored one again.
    let again = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match bob_c.next_event().await {
                Some(Event::Clip(c)) => return c.header.id,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(again.is_err(), "bob got a second copy of {:?}", again.ok());
    // Both acks reached the shared store through relay 2.
    let admin = d.admin.clone();
    let inboxes = within(10, "empty inboxes", async {
        loop {
            let a = admin.clone();
            let left = blocking(move || {
                (
                    a.pending("bob", 0, 10).expect("pending"),
                    a.pending("carol", 0, 10).expect("pending"),
                )
            })
            .await;
            if left.0.is_empty() && left.1.is_empty() {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(inboxes.0.is_empty() && inboxes.1.is_empty());
    alice_c.close().await;
    bob_c.close().await;
    carol_c.close().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_direct_clips_cross_relays() {
    let _g = shared_cluster();
    let mut d = Deployment::new(2, RelayConfig::default()).await;
    let alice = d.add_user("alice", 0).await;
    let bob = d.add_user("bob", 1).await;
    d.add_channel("crew", &["alice", "bob"]).await;
    let mut alice_c = Client::connect(&alice).await.expect("connects");
    let mut bob_c = Client::connect(&bob).await.expect("connects");
    // bob comes online on relay 2: alice on relay 1 hears of it... or saw him in her
    // online list, depending on who connected first.
    let clip = tone(300);
    let h = header(Target::User("bob".into()), clip.params);
    alice_c
        .send_clip(&h, &clip.packets, clip.samples)
        .await
        .expect("stored");
    let got = wait_for(&mut bob_c, 20, "bob's direct clip", clip_event).await;
    assert_eq!(got.header.id, h.id);
    bob_c.played(h.id).await.expect("sent");
    let receipt = wait_for(&mut alice_c, 20, "alice's receipt", |e| match e {
        Event::PlayedBy(id, u) => Some((id, u)),
        _ => None,
    })
    .await;
    assert_eq!(
        receipt,
        (h.id, "bob".to_string()),
        "the receipt crossed from relay 2 to relay 1"
    );
    bob_c.close().await;
    let went = wait_for(&mut alice_c, 20, "bob's presence", |e| match e {
        Event::Presence(u, false) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(went, "bob");
    alice_c.close().await;
    d.shutdown().await;
}

/// People on a NATS store: an invite made by the administrator signs up on relay 1, a
/// contact request from relay 1 reaches relay 2 at once, a channel one user makes on relay 2
/// is listed on relay 1, and a block set on relay 2 stops a clip sent through relay 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_contacts_and_channels_work_across_relays_on_a_nats_store() {
    use walkie_proto::people::{ContactAction, ContactState, GroupAction, Invite, InviteLink};
    let _g = shared_cluster();
    let mut d = Deployment::new(2, RelayConfig::default()).await;
    let bob = d.add_user("bob", 1).await;
    d.add_channel("crew", &["bob"]).await;
    let admin = d.admin.clone();
    let invite = Invite {
        uses_left: 1,
        expires_ms: now_ms() + 60_000,
        channel: Some("crew".into()),
        created_by: None,
        device_of: None,
    };
    let code = blocking(move || walkie_relay::people::create_invite(admin.as_ref(), &invite))
        .await
        .expect("invite made");
    let link = InviteLink {
        addr: d.relays[0].addr.to_string(),
        code: Some(code),
        fingerprint: Some(d.relays[0].fingerprint.to_string()),
    };
    let joined = walkie_client::people::join(&link, "zoe", Some("Zoë"))
        .await
        .expect("joins on relay 1");
    assert_eq!(joined.channel.as_deref(), Some("crew"));
    let again = walkie_client::people::join(&link, "zed", None)
        .await
        .expect_err("single use");
    assert!(again.to_string().contains("already used"), "{again}");
    d.tokens.insert("zoe".into(), joined.token.clone());
    let zoe = d.config("zoe", 0);
    let zoe_c = Client::connect(&zoe)
        .await
        .expect("zoe signs in on relay 1");
    let mut bob_c = Client::connect(&bob).await.expect("bob on relay 2");

    assert_eq!(
        zoe_c
            .contact("bob", ContactAction::Add)
            .await
            .expect("asks")
            .state,
        Some(ContactState::Requested)
    );
    let heard = wait_for(&mut bob_c, 20, "the request on relay 2", |e| match e {
        Event::ContactChanged(entry) => Some(entry),
        _ => None,
    })
    .await;
    assert_eq!(
        (heard.user.as_str(), heard.display.as_deref(), heard.state),
        ("zoe", Some("Zoë"), Some(ContactState::Incoming))
    );
    assert_eq!(
        bob_c
            .contact("zoe", ContactAction::Accept)
            .await
            .expect("accepts")
            .state,
        Some(ContactState::Contact)
    );

    let made = bob_c
        .group(
            "pair",
            GroupAction::Create {
                members: vec!["zoe".into()],
            },
        )
        .await
        .expect("bob makes a channel");
    assert_eq!(made.map(|g| g.owner), Some(Some("bob".to_string())));
    let listed = zoe_c.groups().await.expect("lists");
    assert_eq!(
        listed.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["crew", "pair"]
    );

    bob_c
        .contact("zoe", ContactAction::Block)
        .await
        .expect("blocks");
    let clip = tone(300);
    let h = header(Target::User("bob".into()), clip.params);
    let refused = zoe_c
        .send_clip(&h, &clip.packets, clip.samples)
        .await
        .expect_err("blocked across relays");
    assert!(refused.to_string().contains("contacts only"), "{refused}");
    bob_c
        .group("pair", GroupAction::Delete)
        .await
        .expect("deletes");
    assert_eq!(zoe_c.groups().await.expect("lists").len(), 1);
    zoe_c.close().await;
    bob_c.close().await;
    d.shutdown().await;
}

// ---- floor control across relays ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_talker_on_the_other_relay_finds_the_floor_taken() {
    let _g = shared_cluster();
    let mut d = Deployment::new(2, paused_talkers()).await;
    let alice = d.add_user("alice", 0).await;
    let bob = d.add_user("bob", 1).await;
    d.add_user("carol", 1).await;
    d.add_channel("crew", &["alice", "bob", "carol"]).await;
    let alice_c = Client::connect(&alice).await.expect("connects");
    let mut bob_c = Client::connect(&bob).await.expect("connects");
    let clip = tone(500);

    let h = header(crew(), clip.params);
    let mut up = alice_c.start_clip(&h).await.expect("starts");
    up.packet(clip.packets[0].clone()).await.expect("sends");
    // Once bob hears alice live, her floor is certainly taken (it is taken before the start).
    wait_for(&mut bob_c, 20, "alice live on relay 2", |e| {
        matches!(e, Event::LiveStarted(_)).then_some(())
    })
    .await;
    let e = bob_c
        .send_clip(&header(crew(), clip.params), &clip.packets, clip.samples)
        .await
        .expect_err("floor taken");
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
            &header(Target::User("carol".into()), clip.params),
            &clip.packets,
            clip.samples,
        )
        .await
        .expect("direct clip");
    for p in &clip.packets[1..] {
        up.packet(p.clone()).await.expect("sends");
    }
    up.finish(clip.samples).await.expect("stored");
    // The release travels through the cluster; bob gets the floor once it lands.
    let mut refusals = 0;
    within(20, "the floor freed across relays", async {
        loop {
            match bob_c
                .send_clip(&header(crew(), clip.params), &clip.packets, clip.samples)
                .await
            {
                Ok(_) => return,
                Err(ClientError::Refused(m))
                    if m.code == ErrorCode::FloorTaken && refusals < 100 =>
                {
                    refusals += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    })
    .await;
    alice_c.close().await;
    bob_c.close().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_on_another_relay_can_hijack_a_live_clip_by_its_id() {
    let _g = shared_cluster();
    let mut d = Deployment::new(2, paused_talkers()).await;
    let alice = d.add_user("alice", 0).await;
    let mallory = d.add_user("mallory", 1).await;
    d.add_channel("crew", &["alice", "mallory"]).await;
    let alice_c = Client::connect(&alice)
        .await
        .expect("alice connects to relay 1");
    let mut mallory_c = Client::connect(&mallory)
        .await
        .expect("mallory connects to relay 2");
    let clip = tone(1000);
    let h = header(crew(), clip.params);
    let mut up = alice_c.start_clip(&h).await.expect("alice starts talking");
    for p in &clip.packets[..10] {
        up.packet(p.clone()).await.expect("sends");
    }
    let seen = wait_for(&mut mallory_c, 20, "alice live on relay 2", |e| match e {
        Event::LiveStarted(live) => Some(live.id),
        _ => None,
    })
    .await;
    assert_eq!(seen, h.id);
    // mallory's own audio under alice's id, from the other relay: to the channel and to alice
    // directly (no floor involved there); both refused as a fetch of the id is.
    let short = tone(200);
    for to in [crew(), Target::User("alice".into())] {
        let forged = ClipHeader {
            id: h.id,
            ..header(to, short.params)
        };
        let e = mallory_c
            .send_clip(&forged, &short.packets, short.samples)
            .await
            .expect_err("refused");
        let ClientError::Refused(m) = e else {
            panic!("expected a refusal, got {e}")
        };
        assert_eq!(m.code, ErrorCode::NotFound, "{}", m.message);
    }
    for p in &clip.packets[10..] {
        up.packet(p.clone()).await.expect("sends");
    }
    up.finish(clip.samples)
        .await
        .expect("alice's clip is stored");
    let got = wait_for(&mut mallory_c, 20, "alice's stored clip", |e| match e {
        Event::Clip(c) if c.header.id == h.id => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(
        (got.header.from.as_str(), &got.packets),
        ("alice", &clip.packets),
        "alice's audio, whole"
    );
    alice_c.close().await;
    mallory_c.close().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_relays_floor_frees_itself_when_its_lease_expires() {
    let _g = shared_cluster();
    let prefix = format!("c{:08x}", rand::random::<u32>());
    let one = NatsCluster::connect(&nats_config(&prefix))
        .await
        .expect("links");
    let two = NatsCluster::connect(&nats_config(&prefix))
        .await
        .expect("links");
    let (a, b) = (ClipId::random(), ClipId::random());
    let hold = Duration::from_millis(1500);
    one.take_floor("ops", "dave", a, hold)
        .await
        .expect("dave takes the floor on relay 1");
    assert_eq!(
        two.take_floor("ops", "erin", b, Duration::from_secs(60))
            .await,
        Err(FloorError::Taken {
            user: "dave".into(),
            channel: "ops".into()
        })
    );
    one.take_floor("ops", "dave", a, hold)
        .await
        .expect("a retry of the same clip keeps it");
    // Relay 1 "crashes": it never releases. The lease runs out and erin gets the floor.
    drop(one);
    let taken = within(20, "the lease expiry", async {
        let mut refused = 0;
        loop {
            match two
                .take_floor("ops", "erin", b, Duration::from_secs(60))
                .await
            {
                Ok(()) => return refused,
                Err(FloorError::Taken { .. }) if refused < 200 => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    })
    .await;
    assert!(taken > 0, "the floor was held until the lease ran out");
    // A late release by the old holder does not free erin's floor (released through the
    // store's link, which says when it is done, instead of a relay's fire-and-forget).
    let three = NatsCluster::connect(&nats_config(&prefix))
        .await
        .expect("links");
    let (events, _) = tokio::sync::mpsc::channel(1);
    let late = walkie_store::nats::link::NatsLink::connect(&nats_config(&prefix), 3, events)
        .await
        .expect("links");
    late.release_floor("ops", "dave", a)
        .await
        .expect("the late release is applied");
    // Nor does a release naming erin's clip id from someone else.
    late.release_floor("ops", "frank", b)
        .await
        .expect("applied");
    assert_eq!(
        three.take_floor("ops", "frank", b, hold).await,
        Err(FloorError::Taken {
            user: "erin".into(),
            channel: "ops".into()
        }),
        "erin's clip id does not take her floor for frank"
    );
    assert_eq!(
        three
            .take_floor("ops", "frank", ClipId::random(), hold)
            .await,
        Err(FloorError::Taken {
            user: "erin".into(),
            channel: "ops".into()
        })
    );
    two.release_floor("ops", "erin", b);
    let freed = within(10, "erin's release", async {
        loop {
            if three
                .take_floor("ops", "frank", ClipId::random(), hold)
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(freed);
    delete_streams(&prefix);
}

// ---- a NATS node dies ----

/// The node (1..3) that leads stream `name` now.
async fn leader_of(name: &str) -> usize {
    let urls: Vec<async_nats::ServerAddr> = servers()
        .iter()
        .filter_map(|s| format!("nats://{s}").parse().ok())
        .collect();
    let client = async_nats::connect(urls).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let info = stream.info().await.expect("stream info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap_or_default();
    leader
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=3).contains(n))
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_clip_survives_a_nats_node_kill_and_the_relays_keep_working() {
    let _g = exclusive_cluster();
    let restart = RestartNodes;
    let mut d = Deployment::new(
        2,
        RelayConfig {
            clips_per_minute: 1000,
            ..RelayConfig::default()
        },
    )
    .await;
    let alice = d.add_user("alice", 0).await;
    let bob = d.add_user("bob", 1).await;
    d.add_channel("crew", &["alice", "bob"]).await;
    let mut bob_c = Client::connect(&bob).await.expect("bob listens on relay 2");
    let outbox_dir = d.tmp.path().join("alice-outbox");
    let outbox = Outbox::open(&outbox_dir).expect("outbox");
    let clip = tone(400);
    const CLIPS: usize = 24;
    const KILL_AT: usize = 6;
    let victim = leader_of(&format!("{}_clips", d.prefix)).await;
    let mut acked: Vec<ClipId> = Vec::new();
    let mut acked_after_kill = 0;
    let mut killer = None;
    let t0 = Instant::now();
    for i in 0..CLIPS {
        if i == KILL_AT {
            killer = Some(std::thread::spawn(move || {
                NATS.script(&["kill", &victim.to_string()]);
                Instant::now()
            }));
        }
        let h = header(crew(), clip.params);
        outbox.add(&h, &clip).expect("queued");
        let report = ops::flush_with_retry(&alice, &outbox, Some(h.id), Duration::from_secs(60))
            .await
            .expect("the outbox flushes");
        for (id, _) in &report.stored {
            acked.push(*id);
            if killer
                .as_ref()
                .is_some_and(|k: &std::thread::JoinHandle<Instant>| k.is_finished())
            {
                acked_after_kill += 1;
            }
        }
        assert!(
            report.rejected.is_empty(),
            "nothing refused for good: {:?}",
            report.rejected
        );
    }
    let killed_at = killer
        .map(|k| k.join().expect("node killed"))
        .expect("the kill ran");
    eprintln!(
        "node kill: n{victim} (leader of the clip stream) died {:?} into {CLIPS} sends; {acked_after_kill} acked after",
        killed_at - t0
    );
    assert_eq!(acked.len(), CLIPS, "every clip acked in the end");
    assert!(
        acked_after_kill > 0,
        "the relays kept storing clips on the remaining two nodes"
    );

    // Every acked clip reaches bob on relay 2 (live or from his inbox), while the node is
    // still down.
    let want: HashSet<ClipId> = acked.iter().copied().collect();
    let got = receive_all(&mut bob_c, &want, 60).await;
    let missing: Vec<&ClipId> = want.iter().filter(|id| !got.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "bob misses {} acked clips: {missing:?}",
        missing.len()
    );

    // With the node back, the store holds each acked clip exactly once.
    drop(restart);
    let admin = d.admin.clone();
    let history =
        blocking(move || admin.history("alice", &Target::Channel("crew".into()), 1000, None))
            .await
            .expect("history");
    assert_eq!(history.len(), CLIPS, "no clip stored twice");
    assert_eq!(history.iter().map(|c| c.id).collect::<HashSet<_>>(), want);
    bob_c.close().await;
    d.shutdown().await;
}

// ---- a relay dies: its clients fail over ----

/// A `walkie-relay` process.
struct RelayProcess {
    child: Child,
    addr: String,
    fingerprint: String,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `walkie-relay --store nats://... --store-prefix P ARGS`.
fn relay_cmd(prefix: &str) -> Command {
    let mut cmd = Command::new(RELAY_BIN);
    cmd.args(["--store", &store_url(), "--store-prefix", prefix]);
    cmd
}

fn ok_stdout(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "walkie-relay failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn serve(prefix: &str, data: &Path) -> RelayProcess {
    let mut child = relay_cmd(prefix)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("walkie-relay starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let second = lines.next().expect("a line").expect("utf-8");
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("not a listening line: {first}"))
        .to_string();
    let fingerprint = second
        .strip_prefix("fingerprint ")
        .expect("fingerprint line")
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    RelayProcess {
        child,
        addr,
        fingerprint,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_relay_fail_over_to_the_other_and_deliver_their_outboxes() {
    let _g = shared_cluster();
    let prefix = format!("c{:08x}", rand::random::<u32>());
    let tmp = tempfile::tempdir().expect("tempdir");
    // Admin commands against the NATS store, with --store before and after the subcommand
    // and from the environment.
    let token_of = |out: String| out.lines().last().expect("token line").trim().to_string();
    let alice_token = token_of(ok_stdout(
        relay_cmd(&prefix)
            .args(["user", "add", "alice"])
            .output()
            .expect("runs"),
    ));
    let bob_token = token_of(ok_stdout(
        Command::new(RELAY_BIN)
            .args([
                "user",
                "add",
                "bob",
                "--store",
                &store_url(),
                "--store-prefix",
                &prefix,
            ])
            .output()
            .expect("runs"),
    ));
    let out = Command::new(RELAY_BIN)
        .args(["channel", "add", "crew", "--members", "alice,bob"])
        .env("WALKIE_STORE", store_url())
        .env("WALKIE_STORE_PREFIX", &prefix)
        .output()
        .expect("runs");
    ok_stdout(out);
    assert_eq!(
        ok_stdout(
            relay_cmd(&prefix)
                .args(["user", "list"])
                .output()
                .expect("runs")
        ),
        "alice\nbob\n"
    );
    assert_eq!(
        ok_stdout(
            relay_cmd(&prefix)
                .args(["channel", "list"])
                .output()
                .expect("runs")
        ),
        "crew alice,bob\n"
    );

    // Two relay processes; the second has the first one's certificate.
    let (d1, d2) = (tmp.path().join("r1"), tmp.path().join("r2"));
    let mut r1 = serve(&prefix, &d1);
    std::fs::create_dir_all(&d2).expect("dir");
    share_cert(&d1, &d2);
    let r2 = serve(&prefix, &d2);
    assert_eq!(r1.fingerprint, r2.fingerprint);
    let pin = Fingerprint::parse(&r1.fingerprint).expect("fingerprint");
    let relays = format!("{},{}", r1.addr, r2.addr);
    let alice = ClientConfig {
        relay: relays.clone(),
        user: "alice".into(),
        token: alice_token,
        trust: pin.into(),
    };
    let bob = ClientConfig {
        relay: relays,
        user: "bob".into(),
        token: bob_token,
        trust: pin.into(),
    };

    // alice's outbox holds 8 clips; she flushes them through relay 1, which dies mid-way.
    let outbox = Outbox::open(&tmp.path().join("alice-outbox")).expect("outbox");
    let clip = tone(300);
    let mut queued = HashSet::new();
    for _ in 0..8 {
        let h = header(crew(), clip.params);
        outbox.add(&h, &clip).expect("queued");
        queued.insert(h.id);
    }
    let flush = {
        let (alice, outbox) = (
            alice.clone(),
            Outbox::open(&tmp.path().join("alice-outbox")).expect("outbox"),
        );
        tokio::spawn(async move {
            ops::flush_with_retry(&alice, &outbox, None, Duration::from_secs(120)).await
        })
    };
    within(60, "the first acks through relay 1", async {
        while outbox.pending().expect("outbox").len() > 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    r1.child.kill().expect("kill -9 relay 1");
    let _ = r1.child.wait();
    let report = within(150, "the outbox flush after the failover", flush)
        .await
        .expect("joins")
        .expect("the outbox flushes through relay 2");
    let stored: HashSet<ClipId> = report.stored.iter().map(|(id, _)| *id).collect();
    assert_eq!(stored, queued, "every queued clip acknowledged");
    assert!(outbox.pending().expect("outbox").is_empty());

    // bob connects with the same list: relay 1 is down, he lands on relay 2 and gets all 8.
    let mut bob_c = within(30, "bob's failover", Client::connect(&bob))
        .await
        .expect("bob connects to relay 2");
    let got = receive_all(&mut bob_c, &queued, 60).await;
    assert_eq!(
        got.keys().copied().collect::<HashSet<_>>(),
        queued,
        "bob got every clip"
    );
    let history = bob_c
        .history(Some(crew()), 100, None)
        .await
        .expect("history");
    assert_eq!(history.len(), 8, "each clip stored once: {history:?}");
    bob_c.close().await;
    drop(r2);
    delete_streams(&prefix);
}

// ---- figures (run with --ignored --nocapture) ----

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Two relays (cluster) or one (embedded): where talkers and listeners connect.
struct Bench {
    talkers: Vec<ClientConfig>,
    listeners: Vec<ClientConfig>,
}

/// Ingest: `talkers` clients each send `per` clips of `clip` to their own direct peer as fast as
/// acks come back; returns (acks per second, ack latency p50, p99).
async fn ingest(
    configs: &[ClientConfig],
    per: usize,
    clip: &EncodedClip,
) -> (f64, Duration, Duration) {
    let mut clients = Vec::new();
    for c in configs {
        clients.push(Client::connect(c).await.expect("connects"));
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let clip = clip.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for _ in 0..per {
                    let h = header(Target::User("sink".into()), clip.params);
                    let t = Instant::now();
                    c.send_clip(&h, &clip.packets, clip.samples)
                        .await
                        .expect("stored");
                    lat.push(t.elapsed());
                }
                c.close().await;
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("joins"));
    }
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, percentile(&lat, 0.5), percentile(&lat, 0.99))
}

/// Fan-out: one talker sends `rounds` clips to `crew`, packet by packet at 20 ms; every
/// listener notes when each clip's first live packet arrives. Returns the p50 and p99 of the
/// delay from the talker's send of the first packet to a listener's receipt.
async fn fanout(
    talker: &ClientConfig,
    listeners: &[ClientConfig],
    rounds: usize,
    clip: &EncodedClip,
) -> (Duration, Duration) {
    let talker = Client::connect(talker).await.expect("connects");
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(listeners.len().max(1));
    for l in listeners {
        let mut c = Client::connect(l).await.expect("connects");
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ready.send(()).await;
            let mut firsts: HashMap<ClipId, Instant> = HashMap::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while firsts.len() < rounds {
                match tokio::time::timeout_at(deadline, c.next_event()).await {
                    Ok(Some(Event::LivePacket(id, _))) => {
                        firsts.entry(id).or_insert_with(Instant::now);
                    }
                    Ok(Some(Event::Clip(clip))) => {
                        let _ = c.ack(clip.header.id).await;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            c.close().await;
            firsts
        }));
    }
    for _ in listeners {
        ready_rx.recv().await;
    }
    let mut sent: HashMap<ClipId, Instant> = HashMap::new();
    for _ in 0..rounds {
        let h = header(crew(), clip.params);
        let mut up = talker.start_clip(&h).await.expect("starts");
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for (i, p) in clip.packets.iter().enumerate() {
            tick.tick().await;
            if i == 0 {
                sent.insert(h.id, Instant::now());
            }
            up.packet(p.clone()).await.expect("sends");
        }
        up.finish(clip.samples).await.expect("stored");
    }
    let mut delays = Vec::new();
    for t in tasks {
        for (id, at) in t.await.expect("joins") {
            if let Some(s) = sent.get(&id) {
                delays.push(at.saturating_duration_since(*s));
            }
        }
    }
    talker.close().await;
    delays.sort();
    (percentile(&delays, 0.5), percentile(&delays, 0.99))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints figures; run with --ignored --nocapture"]
async fn figures_ingest_and_fanout_cluster_vs_embedded() {
    let _g = exclusive_cluster();
    const TALKERS: usize = 8;
    const PER_TALKER: usize = 10;
    const LISTENERS: usize = 20;
    const ROUNDS: usize = 5;
    let config = RelayConfig {
        clips_per_minute: 100_000,
        bytes_per_second: 1 << 30,
        ..RelayConfig::default()
    };
    let ingest_clip = tone(2000);
    let fan_clip = tone(1000);
    let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();

    // Embedded: one relay with the SQLite store.
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("embedded");
    let sqlite = Arc::new(walkie_store::sqlite::SqliteStore::open(&data).expect("opens"));
    let handle = relay::start(
        RelayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..config.clone()
        },
        &data,
        sqlite.clone(),
    )
    .await
    .expect("starts");
    let mut embedded = Bench {
        talkers: Vec::new(),
        listeners: Vec::new(),
    };
    let add = |store: &dyn Store, name: &str, relay: &str, pin: Fingerprint| {
        let token = auth::new_token();
        store
            .add_user(name, &auth::hash_token(&token))
            .expect("user");
        ClientConfig {
            relay: relay.to_string(),
            user: name.into(),
            token,
            trust: pin.into(),
        }
    };
    add(
        sqlite.as_ref(),
        "sink",
        &handle.addr.to_string(),
        handle.fingerprint,
    );
    for n in names("t", TALKERS) {
        embedded.talkers.push(add(
            sqlite.as_ref(),
            &n,
            &handle.addr.to_string(),
            handle.fingerprint,
        ));
    }
    let talker = add(
        sqlite.as_ref(),
        "talker",
        &handle.addr.to_string(),
        handle.fingerprint,
    );
    for n in names("l", LISTENERS) {
        embedded.listeners.push(add(
            sqlite.as_ref(),
            &n,
            &handle.addr.to_string(),
            handle.fingerprint,
        ));
    }
    let mut crew_members = names("l", LISTENERS);
    crew_members.push("talker".into());
    sqlite.add_channel("crew", &crew_members).expect("channel");
    let e_ingest = ingest(&embedded.talkers, PER_TALKER, &ingest_clip).await;
    let e_fan = fanout(&talker, &embedded.listeners, ROUNDS, &fan_clip).await;
    handle.shutdown().await;

    // Cluster: two relays on the 3-node NATS cluster; talkers on relay 1, listeners on relay 2.
    let d = Deployment::new(2, config.clone()).await;
    let admin = d.admin.clone();
    let (r1, r2, pin) = (
        d.relays[0].addr.to_string(),
        d.relays[1].addr.to_string(),
        d.relays[0].fingerprint,
    );
    let cluster = blocking(move || {
        let mut b = Bench {
            talkers: Vec::new(),
            listeners: Vec::new(),
        };
        add(admin.as_ref(), "sink", &r2, pin);
        for n in names("t", TALKERS) {
            b.talkers.push(add(admin.as_ref(), &n, &r1, pin));
        }
        let talker = add(admin.as_ref(), "talker", &r1, pin);
        for n in names("l", LISTENERS) {
            b.listeners.push(add(admin.as_ref(), &n, &r2, pin));
        }
        admin.add_channel("crew", &crew_members).expect("channel");
        (b, talker)
    })
    .await;
    let (c_bench, c_talker) = cluster;
    let c_ingest = ingest(&c_bench.talkers, PER_TALKER, &ingest_clip).await;
    let c_fan = fanout(&c_talker, &c_bench.listeners, ROUNDS, &fan_clip).await;
    d.shutdown().await;

    println!("ingest: {TALKERS} talkers x {PER_TALKER} clips of 2 s, each waiting for its ack");
    println!(
        "  embedded (SQLite, 1 relay):    {:6.1} clips/s, ack p50 {}, p99 {}",
        e_ingest.0,
        ms(e_ingest.1),
        ms(e_ingest.2)
    );
    println!(
        "  cluster (NATS R3, 2 relays):   {:6.1} clips/s, ack p50 {}, p99 {}",
        c_ingest.0,
        ms(c_ingest.1),
        ms(c_ingest.2)
    );
    println!(
        "fan-out: 1 talker, {LISTENERS} listeners, {ROUNDS} clips; delay of the first live packet"
    );
    println!(
        "  embedded (same relay):         p50 {}, p99 {}",
        ms(e_fan.0),
        ms(e_fan.1)
    );
    println!(
        "  cluster (talker relay 1, listeners relay 2): p50 {}, p99 {}",
        ms(c_fan.0),
        ms(c_fan.1)
    );
}
