//! Tests of the NATS JetStream store against a real 3-node cluster on loopback: the
//! conformance suite every store runs (`walkie_store::conformance`), then what is the NATS
//! store's own: concurrent and interrupted commits of one clip, replicas, purge and retention
//! checked in the raw streams, and `kill -9` of a node during a run of commits.
//!
//! The cluster is `scripts/nats-cluster.sh` with its own dir and ports (client 24222-24224,
//! cluster 26222-26224, monitor 28222-28224), started on first use and stopped by the script's
//! watcher once this test process has exited (`NATS_OWNER_PID`). Each test uses its own random
//! name prefix and deletes its streams at the end. Without `nats-server` installed the tests fail, saying how to install it.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use walkie_proto::clip::{ClipMeta, Target};
use walkie_store::conformance::{audio, meta, names, populate, send};
use walkie_store::nats::{CommitStep, NatsConfig, NatsStore};
use walkie_store::{CommitOutcome, PURGED_SENDER, Store, StoreError};

const NATS: support::NatsTestCluster = support::NatsTestCluster {
    base_dir: "/tmp/walkie-nats-test",
    client_port: 24222,
    cluster_port: 26222,
    monitor_port: 28222,
};

// ---- the cluster ----

fn servers() -> &'static [String] {
    static SERVERS: OnceLock<Vec<String>> = OnceLock::new();
    SERVERS.get_or_init(|| NATS.start())
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

// ---- a store with its own prefix ----

/// A store on a fresh prefix; deletes every stream of that prefix when dropped.
struct Fixture {
    prefix: String,
    store: NatsStore,
}

impl Fixture {
    fn new() -> Fixture {
        let prefix = format!("t{:08x}", rand::random::<u32>());
        let store = open_store(&prefix);
        assert_eq!(store.replicas(), 3);
        Fixture { prefix, store }
    }

    /// A second, independent store on the same data (another relay, or an admin command).
    fn another(&self) -> NatsStore {
        open_store(&self.prefix)
    }
}

fn open_store(prefix: &str) -> NatsStore {
    let config = NatsConfig {
        prefix: prefix.to_string(),
        replicas: Some(3),
        ..NatsConfig::new(servers())
    };
    NatsStore::connect_with(config).expect("the NATS store opens")
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let urls: Vec<async_nats::ServerAddr> = servers()
            .iter()
            .filter_map(|s| format!("nats://{s}").parse().ok())
            .collect();
        let prefix = self.prefix.clone();
        rt.block_on(async move {
            let client = match async_nats::connect(urls).await {
                Ok(client) => client,
                Err(e) => return eprintln!("cleanup: cannot connect: {e}"),
            };
            let js = async_nats::jetstream::new(client);
            // The streams of one store (see the layout in src/store/nats.rs).
            let streams = ["clips", "audio", "inbox"].map(|s| format!("{prefix}_{s}"));
            let buckets = ["users", "channels", "clipids", "purged", "records"]
                .map(|b| format!("KV_{prefix}_{b}"));
            for name in streams.iter().chain(&buckets) {
                if let Err(e) = js.delete_stream(name).await {
                    eprintln!("cleanup: deleting stream {name}: {e}");
                }
            }
        });
    }
}

// ---- the conformance suite ----

/// A fresh store on its own prefix, holding the cluster shared while it runs.
struct Conformance {
    _guard: RwLockReadGuard<'static, ()>,
    fx: Fixture,
}

impl walkie_store::conformance::Backend for Conformance {
    fn store(&self) -> &dyn Store {
        &self.fx.store
    }
    fn another(&self) -> Arc<dyn Store> {
        Arc::new(self.fx.another())
    }
}

fn conformance() -> Conformance {
    let _guard = shared_cluster();
    Conformance {
        _guard,
        fx: Fixture::new(),
    }
}

walkie_store::conformance_tests!(conformance());

// ---- helpers for the NATS store's own tests ----

/// Users alice, bob, carol and channel crew = {alice, bob}.
fn setup() -> (RwLockReadGuard<'static, ()>, Fixture) {
    let guard = shared_cluster();
    let fx = Fixture::new();
    populate(&fx.store);
    (guard, fx)
}

// ---- the SQLite store's behaviours ----

#[test]
fn concurrent_commits_of_one_clip_store_it_once() {
    let (_g, fx) = setup();
    let stores: Vec<Arc<NatsStore>> = (0..3).map(|_| Arc::new(fx.another())).collect();
    for _ in 0..5 {
        let m = meta("alice", "crew");
        let threads: Vec<_> = stores
            .iter()
            .map(|store| {
                let (store, m) = (Arc::clone(store), m.clone());
                std::thread::spawn(move || {
                    store.commit_clip(&m, &names(&["bob"]), &audio(&m)).unwrap()
                })
            })
            .collect();
        let outcomes: Vec<CommitOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let seqs: HashSet<u64> = outcomes
            .iter()
            .map(|o| match o {
                CommitOutcome::Stored(s) | CommitOutcome::Duplicate(s) => *s,
            })
            .collect();
        assert_eq!(seqs.len(), 1, "one seq for one clip: {outcomes:?}");
        assert_eq!(fx.store.clip_audio(&m.id).unwrap(), audio(&m));
    }
    let history = fx
        .store
        .history("bob", &"crew".parse().unwrap(), 100, None)
        .unwrap();
    assert_eq!(history.len(), 5, "each clip stored once");
    assert_eq!(
        fx.store.pending("bob", 0, 100).unwrap().len(),
        5,
        "and queued once"
    );
}

#[test]
fn an_interrupted_commit_is_hidden_until_the_retry_completes_it() {
    let (_g, fx) = setup();
    let store = &fx.store;
    let steps = [
        CommitStep::Claim,
        CommitStep::Audio,
        CommitStep::Metadata,
        CommitStep::Seq,
        CommitStep::FirstInbox,
    ];
    let mut seqs = Vec::new();
    for step in steps {
        let m = meta("alice", "crew");
        let rcpt = names(&["alice", "bob"]);
        let err = store
            .commit_clip_interrupted(&m, &rcpt, &audio(&m), step)
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
        let committed = matches!(
            step,
            CommitStep::Metadata | CommitStep::Seq | CommitStep::FirstInbox
        );
        assert_eq!(
            store.clip(&m.id).unwrap().is_some(),
            committed,
            "after {step:?}: visible only once the metadata is stored"
        );
        // Another sender still conflicts with the claim.
        let forged = ClipMeta {
            from: "carol".into(),
            ..m.clone()
        };
        assert!(matches!(
            store.commit_clip(&forged, &[], b"x"),
            Err(StoreError::IdConflict(_))
        ));
        // So does the same id to another target: it is not a retry of this clip.
        let elsewhere = ClipMeta {
            to: "@bob".parse().unwrap(),
            ..m.clone()
        };
        assert!(matches!(
            store.commit_clip(&elsewhere, &[], b"x"),
            Err(StoreError::IdConflict(_))
        ));
        // The sender's retry, through another store (another relay), completes it.
        let CommitOutcome::Stored(seq) = fx.another().commit_clip(&m, &rcpt, &audio(&m)).unwrap()
        else {
            panic!("after {step:?}: the retry of an unfinished commit stores it")
        };
        assert_eq!(
            store.commit_clip(&m, &rcpt, &audio(&m)).unwrap(),
            CommitOutcome::Duplicate(seq)
        );
        assert_eq!(store.clip(&m.id).unwrap().map(|c| c.seq), Some(seq));
        assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
        seqs.push(seq);
    }
    let pending: Vec<u64> = store
        .pending("bob", 0, 100)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(
        pending, seqs,
        "every completed commit queued once, in order"
    );
    assert_eq!(store.pending("alice", 0, 100).unwrap().len(), 5);
    assert_eq!(
        store
            .history("bob", &"crew".parse().unwrap(), 100, None)
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn replicas_follow_the_cluster_size() {
    let _g = shared_cluster();
    let prefix = format!("t{:08x}", rand::random::<u32>());
    let config = NatsConfig {
        prefix: prefix.clone(),
        ..NatsConfig::new(servers())
    };
    let fx = Fixture {
        store: NatsStore::connect_with(config).expect("store opens"),
        prefix,
    };
    assert_eq!(fx.store.replicas(), 3, "3 replicas on a 3-node cluster");

    // A lone server without a cluster gets 1 replica, and works the same.
    let dir = tempfile::tempdir().unwrap();
    let server = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "24230", "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);
    let single = NatsStore::connect(&["nats://127.0.0.1:24230".to_string()])
        .expect("store opens on a lone server");
    assert_eq!(single.replicas(), 1);
    populate(&single);
    let m = send(&single, "alice", "crew", &["bob"]);
    assert_eq!(single.pending("bob", 0, 10).unwrap(), vec![m]);
}

// ---- purge and retention ----

/// Every message of stream `{prefix}_{name}` as (seq, subject, payload), read by sequence
/// straight from JetStream (not through the store).
fn raw_messages(prefix: &str, name: &str) -> Vec<(u64, String, Vec<u8>)> {
    let urls: Vec<async_nats::ServerAddr> = servers()
        .iter()
        .filter_map(|s| format!("nats://{s}").parse().ok())
        .collect();
    let stream_name = format!("{prefix}_{name}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = async_nats::connect(urls).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(&stream_name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = stream.get_raw_message(seq).await {
                out.push((seq, m.subject.to_string(), m.payload.to_vec()));
            }
        }
        out
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn anonymised(m: &ClipMeta) -> ClipMeta {
    ClipMeta {
        from: PURGED_SENDER.into(),
        packets: 0,
        bytes: 0,
        ..m.clone()
    }
}

#[test]
fn purge_erases_the_users_audio_and_keeps_their_clips_anonymised() {
    let (_g, fx) = setup();
    let store = &fx.store;
    let a1 = send(store, "alice", "crew", &["bob"]);
    let b1 = send(store, "bob", "crew", &["alice"]);
    let a2 = send(store, "alice", "@bob", &["bob"]);
    // A chunked one: three audio messages.
    let mut a3 = meta("alice", "crew");
    let big: Vec<u8> = audio(&a3).into_iter().cycle().take(1_200_000).collect();
    let CommitOutcome::Stored(seq) = store.commit_clip(&a3, &names(&["bob"]), &big).unwrap() else {
        panic!("stored")
    };
    (a3.seq, a3.bytes) = (seq, big.len() as u64);
    let crew: Target = "crew".parse().unwrap();

    assert_eq!(store.purge_user("alice").unwrap(), 3);
    for m in [&a1, &a2, &a3] {
        assert_eq!(store.clip(&m.id).unwrap(), Some(anonymised(m)));
        assert!(
            matches!(store.clip_audio(&m.id), Err(StoreError::NotFound { .. })),
            "the audio of {} is gone",
            m.id
        );
    }
    assert_eq!(
        store.clip_audio(&b1.id).unwrap(),
        audio(&b1),
        "bob's clip is untouched"
    );
    // The clips stay in their conversations, anonymised, in order.
    assert_eq!(
        store.history("bob", &crew, 10, None).unwrap(),
        vec![anonymised(&a1), b1.clone(), anonymised(&a3)]
    );
    assert_eq!(
        store.history("bob", &crew, 1, Some(b1.seq)).unwrap(),
        vec![anonymised(&a1)]
    );
    assert_eq!(
        store
            .history("bob", &"@alice".parse().unwrap(), 10, None)
            .unwrap(),
        vec![anonymised(&a2)]
    );
    assert_eq!(
        walkie_store::conformance::readable_all(store, "bob"),
        vec![
            anonymised(&a1),
            b1.clone(),
            anonymised(&a2),
            anonymised(&a3)
        ]
    );
    assert_eq!(
        store.pending("bob", 0, 10).unwrap(),
        vec![],
        "purged clips leave every inbox"
    );
    assert_eq!(store.pending("alice", 0, 10).unwrap(), vec![b1.clone()]);
    // Another relay's store sees the same at once.
    assert_eq!(fx.another().clip(&a2.id).unwrap(), Some(anonymised(&a2)));

    // In JetStream itself: no audio message of a purged clip, no byte of its audio, and no
    // metadata message naming alice.
    let audio_msgs = raw_messages(&fx.prefix, "audio");
    assert_eq!(
        audio_msgs.len(),
        1,
        "only bob's audio is left: {audio_msgs:?}"
    );
    for m in [&a1, &a2, &a3] {
        for (_, subject, payload) in &audio_msgs {
            assert!(!subject.contains(&m.id.to_string()) && !contains(payload, &m.id.0));
        }
    }
    let clip_msgs = raw_messages(&fx.prefix, "clips");
    assert_eq!(
        clip_msgs.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![b1.seq]
    );
    assert!(clip_msgs.iter().all(|(_, _, p)| !contains(p, b"\"alice\"")));

    // A resend of a purged clip is a conflict; a second purge finds nothing.
    assert!(matches!(
        store.commit_clip(&a1, &names(&["bob"]), &audio(&a1)),
        Err(StoreError::IdConflict(_))
    ));
    assert_eq!(store.purge_user("alice").unwrap(), 0);
    assert_eq!(store.purge_user("nobody").unwrap(), 0);
}

#[test]
fn retention_deletes_old_clips_with_their_audio_inbox_entries_and_claims() {
    let (_g, fx) = setup();
    let store = &fx.store;
    let old1 = send(store, "alice", "crew", &["bob"]);
    let old2 = send(store, "bob", "@alice", &["alice"]);
    let old3 = send(store, "carol", "@bob", &["bob"]);
    assert_eq!(store.purge_user("carol").unwrap(), 1);
    std::thread::sleep(Duration::from_millis(20));
    let cut = walkie_proto::clip::now_ms();
    std::thread::sleep(Duration::from_millis(20));
    let new1 = send(store, "alice", "crew", &["bob"]);
    let new2 = send(store, "bob", "@alice", &["alice"]);

    assert_eq!(
        store.delete_clips_before(cut).unwrap(),
        2,
        "two clips with audio deleted"
    );
    for m in [&old1, &old2, &old3] {
        assert_eq!(store.clip(&m.id).unwrap(), None);
        assert!(matches!(
            store.clip_audio(&m.id),
            Err(StoreError::NotFound { .. })
        ));
    }
    let crew: Target = "crew".parse().unwrap();
    assert_eq!(
        store.history("bob", &crew, 10, None).unwrap(),
        vec![new1.clone()]
    );
    assert_eq!(
        store
            .history("alice", &"@bob".parse().unwrap(), 10, None)
            .unwrap(),
        vec![new2.clone()]
    );
    assert_eq!(
        store
            .history("bob", &"@carol".parse().unwrap(), 10, None)
            .unwrap(),
        vec![],
        "the purged record went too"
    );
    assert_eq!(
        walkie_store::conformance::readable_all(store, "bob"),
        vec![new1.clone(), new2.clone()]
    );
    assert_eq!(store.pending("bob", 0, 10).unwrap(), vec![new1.clone()]);
    assert_eq!(store.pending("alice", 0, 10).unwrap(), vec![new2.clone()]);
    let audio_msgs = raw_messages(&fx.prefix, "audio");
    assert_eq!(audio_msgs.len(), 2, "only the new clips' audio is left");
    for m in [&old1, &old2, &old3] {
        assert!(
            audio_msgs
                .iter()
                .all(|(_, s, _)| !s.contains(&m.id.to_string()))
        );
    }
    assert_eq!(
        store.delete_clips_before(cut).unwrap(),
        0,
        "nothing more to delete"
    );
    // The claim went with the clip: a (very) late resend is stored anew.
    assert!(matches!(
        store.commit_clip(&old1, &names(&["bob"]), &audio(&old1)),
        Ok(CommitOutcome::Stored(_))
    ));
}

// ---- failure of a NATS node ----

/// One commit of the node-kill test: the clip, its audio, what the commit returned, how long it took.
type Attempt = (ClipMeta, Vec<u8>, Result<CommitOutcome, String>, Duration);

/// Restarts every stopped node when dropped, even if the test panicked.
struct RestartNodes;

impl Drop for RestartNodes {
    fn drop(&mut self) {
        NATS.script(&["start"]);
    }
}

#[test]
fn a_node_killed_during_commits_loses_and_duplicates_nothing() {
    let _g = exclusive_cluster();
    let fx = Fixture::new();
    populate(&fx.store);
    let restart = RestartNodes;
    const CLIPS: usize = 50;
    const KILL_AT: usize = 15;
    /// From this commit on, the node is certainly down.
    const DOWN_FROM: usize = 25;
    let mut results: Vec<Attempt> = Vec::new();
    let mut killer = None;
    let mut killed_at = None;
    let t0 = Instant::now();
    let mut started = Vec::new();
    for i in 0..CLIPS {
        if i == KILL_AT {
            // kill -9 the node on port 24224 while the next commits run.
            killer = Some(std::thread::spawn(|| {
                NATS.script(&["kill", "3"]);
                Instant::now()
            }));
        }
        if i == DOWN_FROM {
            killed_at = killer.take().map(|k| k.join().expect("node 3 killed"));
        }
        let m = meta("alice", "crew");
        let ogg: Vec<u8> = audio(&m).into_iter().cycle().take(20_000).collect();
        let start = Instant::now();
        started.push(start);
        let result = fx
            .store
            .commit_clip(&m, &names(&["bob"]), &ogg)
            .map_err(|e| e.to_string());
        results.push((m, ogg, result, start.elapsed()));
    }
    let killed_at = killed_at.expect("the kill finished");
    let failed: Vec<usize> = (0..CLIPS).filter(|&i| results[i].2.is_err()).collect();
    let mean = |r: &[Attempt]| r.iter().map(|r| r.3).sum::<Duration>() / r.len().max(1) as u32;
    let in_flight =
        (0..CLIPS).find(|&i| started[i] <= killed_at && killed_at <= started[i] + results[i].3);
    let (slowest_i, slowest) = results
        .iter()
        .enumerate()
        .map(|(i, r)| (i, r.3))
        .max_by_key(|x| x.1)
        .unwrap_or_default();
    eprintln!(
        "node kill: {} of {CLIPS} commits returned Ok, {} failed {:?}; node 3 died {:?} into the run, during commit #{in_flight:?}",
        CLIPS - failed.len(),
        failed.len(),
        failed.iter().map(|&i| &results[i].2).collect::<Vec<_>>(),
        killed_at - t0,
    );
    eprintln!(
        "node kill: mean commit {:?} before the kill, {:?} with node 3 down (#{DOWN_FROM}..); slowest #{slowest_i} {:?}",
        mean(&results[..KILL_AT]),
        mean(&results[DOWN_FROM..]),
        slowest
    );
    // The sender's outbox resends what failed, with the same ids; all of it lands.
    for &i in &failed {
        let (m, ogg, _, _) = &results[i];
        fx.store
            .commit_clip(m, &names(&["bob"]), ogg)
            .expect("the resend after a failed commit succeeds");
    }
    // Commits keep succeeding on the remaining two nodes.
    assert!(
        results[DOWN_FROM..].iter().all(|r| r.2.is_ok()),
        "every commit with node 3 down succeeds"
    );
    let extra = send(&fx.store, "bob", "crew", &["alice"]);

    // With node 3 back, a fresh store (another relay) reads every acked clip, once.
    drop(restart);
    let fresh = fx.another();
    let mut seqs = HashMap::new();
    for (m, ogg, result, _) in &results {
        let stored = fresh.clip(&m.id).unwrap().expect("every commit is stored");
        if let Ok(CommitOutcome::Stored(seq) | CommitOutcome::Duplicate(seq)) = result {
            assert_eq!(stored.seq, *seq, "the acked seq is the stored seq");
        }
        assert_eq!(&fresh.clip_audio(&m.id).unwrap(), ogg);
        assert!(
            seqs.insert(stored.seq, m.id).is_none(),
            "seq {} given twice",
            stored.seq
        );
    }
    let history = fresh
        .history("alice", &"crew".parse().unwrap(), 1000, None)
        .unwrap();
    assert_eq!(history.len(), CLIPS + 1, "no clip stored twice");
    assert_eq!(
        history.iter().map(|c| c.id).collect::<HashSet<_>>().len(),
        CLIPS + 1
    );
    let pending = fresh.pending("bob", 0, 1000).unwrap();
    assert_eq!(pending.len(), CLIPS, "each clip queued once for bob");
    assert_eq!(fresh.pending("alice", 0, 10).unwrap(), vec![extra]);
}
