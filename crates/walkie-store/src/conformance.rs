//! The storage contract as one suite of tests that every backend runs: the SQLite store (in
//! its own tests), the fault-injecting store, and the NATS store (on a 3-node cluster, in the
//! workspace's `tests/nats_store.rs`). A backend's own tests add only what is its own (files
//! on disk, crash leftovers, an interrupted replicated commit).
//!
//! A backend hands the suite fresh stores through [`Backend`]; [`conformance_tests!`]
//! (`walkie_store::conformance_tests!`) expands to one `#[test]` per case, so each case
//! passes or fails under its own name.
//!
//! ```ignore
//! walkie_store::conformance_tests!(my_backend());
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use walkie_proto::clip::{ClipId, ClipMeta, CodecParams, Target};
use walkie_proto::message::{Content, PictureFormat};

use crate::{ChannelInfo, CommitOutcome, NewClip, PURGED_SENDER, Store, StoreError};

/// What the suite needs of a backend.
pub trait Backend {
    /// The store under test: fresh and empty when the backend was made.
    fn store(&self) -> &dyn Store;
    /// A second, independent handle on the same data (an admin command, another relay).
    fn another(&self) -> Arc<dyn Store>;
}

/// Expands to one `#[test]` per case of the suite, each on a fresh backend made by `$make`
/// (an expression whose value implements [`Backend`]).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            users_roundtrip_and_duplicates_are_refused,
            removing_a_user_drops_memberships_and_inbox,
            channels_need_existing_members,
            committed_clips_read_back_byte_equal_small_large_and_empty,
            a_resend_is_a_duplicate_and_another_sender_conflicts,
            a_batch_commits_each_clip_in_order,
            pending_is_oldest_first_per_recipient_and_ack_removes,
            channel_history_is_newest_last_with_limit_and_before,
            history_finds_old_clips_behind_many_newer_ones_elsewhere,
            direct_history_has_both_directions_and_nobody_else,
            readable_follows_current_membership_and_own_direct_clips,
            readable_pages_newest_last_with_limit_and_before,
            two_stores_see_each_others_writes_at_once,
            concurrent_commits_from_two_stores_get_unique_seqs,
            purge_deletes_the_users_audio_and_keeps_their_clips_anonymised,
            retention_deletes_old_clips_with_their_audio_and_inbox_entries,
            tokens_are_replaced_and_read_in_batches,
            history_of_a_name_covers_sent_and_direct_clips,
            stored_bytes_count_a_senders_audio_until_purged_or_expired,
            deleting_a_channel_deletes_its_clips_and_frees_the_name,
            records_are_written_with_compare_and_set,
            records_are_listed_by_whole_token_prefix,
            inboxes_are_keyed_by_delivery_key_and_cleared,
            messages_keep_their_content_through_every_read,
            a_recalled_item_loses_its_payload_and_is_queued_again,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let backend = $make;
                $crate::conformance::$case(&backend);
            }
        )*
    };
}

// ---- helpers, also for the backends' own tests ----

/// Names as owned strings.
pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Users alice, bob, carol (token hashes [0; 32], [1; 32], [2; 32]) and channel crew =
/// {alice, bob}.
pub fn populate(store: &dyn Store) {
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        store.add_user(user, &[i as u8; 32]).expect("user added");
    }
    store
        .add_channel("crew", &names(&["alice", "bob"]))
        .expect("channel added");
}

/// Metadata of a new clip from `from` to `to` ("crew" or "@bob"), with a random id.
pub fn meta(from: &str, to: &str) -> ClipMeta {
    ClipMeta {
        id: ClipId::random(),
        from: from.into(),
        to: to.parse().expect("a target"),
        started_at_ms: 1_700_000_000_000,
        duration_ms: 1234,
        packets: 62,
        bytes: 0,
        codec: CodecParams {
            frame_samples: 960,
            bitrate: 24_000,
            pre_skip: 312,
        },
        seq: 0,
        content: Default::default(),
    }
}

/// Bytes that tell every clip apart (the store never parses them).
pub fn audio(m: &ClipMeta) -> Vec<u8> {
    [b"OggS".as_slice(), &m.id.0, m.from.as_bytes()].concat()
}

/// Commits a clip from `from` to `to` ("crew" or "@bob"), queued for `recipients`; its
/// metadata as stored.
pub fn send(store: &dyn Store, from: &str, to: &str, recipients: &[&str]) -> ClipMeta {
    let mut m = meta(from, to);
    let ogg = audio(&m);
    let CommitOutcome::Stored(seq) = store
        .commit_clip(&m, &names(recipients), &ogg)
        .expect("committed")
    else {
        panic!("a new clip reported as a duplicate")
    };
    m.seq = seq;
    m.bytes = ogg.len() as u64;
    m
}

/// The ids of some clips.
pub fn ids(clips: &[ClipMeta]) -> Vec<ClipId> {
    clips.iter().map(|c| c.id).collect()
}

/// Everything `user` may read, paged through the store.
pub fn readable_all(store: &dyn Store, user: &str) -> Vec<ClipMeta> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store.readable(user, 100, before).expect("readable");
        let Some(first) = page.first() else { break };
        before = Some(first.seq);
        let full = page.len() == 100;
        all.splice(0..0, page);
        if !full {
            break;
        }
    }
    all
}

/// Users are added once, listed sorted, looked up by name and removed.
pub fn users_roundtrip_and_duplicates_are_refused(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    assert_eq!(store.users().unwrap(), names(&["alice", "bob", "carol"]));
    assert_eq!(store.token_hash("bob").unwrap(), Some([1; 32]));
    assert_eq!(store.token_hash("nobody").unwrap(), None);
    assert!(matches!(
        store.add_user("bob", &[9; 32]),
        Err(StoreError::Exists { kind: "user", .. })
    ));
    assert_eq!(
        store.token_hash("bob").unwrap(),
        Some([1; 32]),
        "a refused add changes nothing"
    );
    assert!(store.remove_user("bob").unwrap());
    assert!(!store.remove_user("bob").unwrap());
    assert_eq!(store.users().unwrap(), names(&["alice", "carol"]));
    assert_eq!(store.token_hash("bob").unwrap(), None);
}

/// A removed user leaves their channels and inbox behind; the same name added again starts
/// with neither.
pub fn removing_a_user_drops_memberships_and_inbox(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    send(store, "alice", "crew", &["alice", "bob"]);
    assert!(store.remove_user("bob").unwrap());
    assert_eq!(store.members("crew").unwrap(), Some(names(&["alice"])));
    store.add_user("bob", &[7; 32]).unwrap();
    assert_eq!(store.pending("bob", 0, 10).unwrap(), vec![]);
    assert_eq!(store.members("crew").unwrap(), Some(names(&["alice"])));
    assert_eq!(store.pending("alice", 0, 10).unwrap().len(), 1);
}

/// Channels are made of existing users; refused changes change nothing.
pub fn channels_need_existing_members(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let err = store
        .add_channel("ops", &names(&["alice", "mallory"]))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", ref name } if name == "mallory"),
        "{err}"
    );
    assert_eq!(
        store.members("ops").unwrap(),
        None,
        "a refused channel is not half-created"
    );
    assert!(matches!(
        store.add_channel("crew", &[]),
        Err(StoreError::Exists {
            kind: "channel",
            ..
        })
    ));
    store.add_channel("empty", &[]).unwrap();
    assert_eq!(store.members("empty").unwrap(), Some(vec![]));
    assert_eq!(
        store.channels().unwrap(),
        vec![
            ChannelInfo {
                name: "crew".into(),
                members: names(&["alice", "bob"])
            },
            ChannelInfo {
                name: "empty".into(),
                members: vec![]
            },
        ]
    );
    let err = store
        .update_members("crew", &names(&["carol", "mallory"]), &[])
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", .. }),
        "{err}"
    );
    assert_eq!(
        store.members("crew").unwrap(),
        Some(names(&["alice", "bob"])),
        "a refused update changes nothing"
    );
    assert!(matches!(
        store.update_members("nope", &[], &[]),
        Err(StoreError::NotFound {
            kind: "channel",
            ..
        })
    ));
    let now = store
        .update_members(
            "crew",
            &names(&["carol", "carol"]),
            &names(&["alice", "ghost"]),
        )
        .unwrap();
    assert_eq!(now, names(&["bob", "carol"]));
    assert_eq!(store.members("crew").unwrap(), Some(now));
    store
        .update_members("empty", &names(&["carol"]), &[])
        .unwrap();
    assert_eq!(
        store.channels_of("carol").unwrap(),
        names(&["crew", "empty"]),
        "a member's channels, sorted"
    );
    assert_eq!(
        store.channels_of("alice").unwrap(),
        Vec::<String>::new(),
        "removed from crew"
    );
    assert_eq!(store.channels_of("nobody").unwrap(), Vec::<String>::new());
}

/// A committed clip reads back as it went in: its metadata (with the seq the store gave it
/// and the file's length) and its bytes, for a small clip, a 4 MiB one (60 s at the highest
/// bitrate; NATS chunks it) and an empty one.
pub fn committed_clips_read_back_byte_equal_small_large_and_empty(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let m = send(store, "alice", "crew", &["bob"]);
    assert_eq!(store.clip(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(store.committed(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
    let unknown = ClipId::random();
    assert_eq!(store.clip(&unknown).unwrap(), None);
    assert!(matches!(
        store.clip_audio(&unknown),
        Err(StoreError::NotFound { kind: "clip", .. })
    ));

    let mut big = meta("bob", "@alice");
    let ogg: Vec<u8> = (0..4 * 1024 * 1024 + 12_345)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let CommitOutcome::Stored(seq) = store.commit_clip(&big, &names(&["alice"]), &ogg).unwrap()
    else {
        panic!("a new clip reported as a duplicate")
    };
    (big.seq, big.bytes) = (seq, ogg.len() as u64);
    assert!(seq > m.seq, "seqs increase");
    assert_eq!(store.clip(&big.id).unwrap(), Some(big.clone()));
    assert!(
        store.clip_audio(&big.id).unwrap() == ogg,
        "the 4 MiB clip reads back byte-equal"
    );
    // Streamed in parts: the same bytes, a short last part, nothing past the end.
    let mut streamed = Vec::new();
    loop {
        let part = store
            .clip_audio_part(&big.id, streamed.len() as u64, 300_000)
            .unwrap();
        assert!(part.len() <= 300_000);
        if part.is_empty() {
            break;
        }
        streamed.extend_from_slice(&part);
    }
    assert!(streamed == ogg, "the parts make up the file");
    assert!(
        store
            .clip_audio_part(&big.id, u64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.clip_audio_part(&ClipId::random(), 0, 10),
        Err(StoreError::NotFound { .. })
    ));
    let empty = meta("alice", "crew");
    store.commit_clip(&empty, &[], &[]).unwrap();
    assert_eq!(store.clip_audio(&empty.id).unwrap(), Vec::<u8>::new());
}

/// The same id from the same sender is a duplicate (nothing rewritten); from another sender it
/// is a conflict.
pub fn a_resend_is_a_duplicate_and_another_sender_conflicts(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let m = send(store, "alice", "crew", &["bob"]);
    assert_eq!(
        store
            .commit_clip(&m, &names(&["bob"]), b"different bytes")
            .unwrap(),
        CommitOutcome::Duplicate(m.seq)
    );
    let forged = ClipMeta {
        from: "carol".into(),
        ..m.clone()
    };
    assert!(
        matches!(store.commit_clip(&forged, &[], b"x"), Err(StoreError::IdConflict(id)) if id == m.id)
    );
    assert_eq!(readable_all(store, "alice"), vec![m.clone()]);
    assert_eq!(store.pending("bob", 0, 10).unwrap().len(), 1);
    assert_eq!(
        store.clip_audio(&m.id).unwrap(),
        audio(&m),
        "neither resend touched the audio"
    );
}

/// `commit_clips` answers each clip of a batch in the batch's order, as `commit_clip` would:
/// new clips are stored, a known id is a duplicate or a conflict, an id repeated in the
/// batch is committed once; every stored clip reads back and is queued.
pub fn a_batch_commits_each_clip_in_order(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let old = send(store, "alice", "crew", &["bob"]);
    let fresh: Vec<ClipMeta> = (0..5).map(|_| meta("bob", "crew")).collect();
    let repeated = meta("alice", "@bob");
    let forged = ClipMeta {
        from: "carol".into(),
        ..old.clone()
    };
    let clip = |m: &ClipMeta, to: &[&str]| NewClip {
        meta: m.clone(),
        recipients: names(to),
        payload: audio(m),
    };
    let mut batch: Vec<NewClip> = fresh.iter().map(|m| clip(m, &["alice"])).collect();
    batch.insert(2, clip(&old, &["bob"]));
    batch.push(clip(&repeated, &["bob"]));
    batch.push(clip(&forged, &[]));
    batch.push(clip(&repeated, &["bob"]));
    let out = store.commit_clips(batch);
    assert_eq!(out.len(), 9);
    assert_eq!(
        out[2].as_ref().ok(),
        Some(&CommitOutcome::Duplicate(old.seq)),
        "a known id from its sender is a duplicate: {out:?}"
    );
    assert!(
        matches!(&out[7], Err(StoreError::IdConflict(id)) if *id == old.id),
        "a known id from another sender conflicts: {out:?}"
    );
    let seq_of = |r: &Result<CommitOutcome, StoreError>| match r {
        Ok(CommitOutcome::Stored(seq)) => *seq,
        other => panic!("a new clip of the batch was not stored: {other:?}"),
    };
    let new_seqs: Vec<u64> = [0, 1, 3, 4, 5, 6]
        .iter()
        .map(|&i| seq_of(&out[i]))
        .collect();
    let mut unique = new_seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 6, "every new clip has its own seq: {out:?}");
    assert!(new_seqs.iter().all(|&s| s > old.seq));
    assert_eq!(
        out[8].as_ref().ok(),
        Some(&CommitOutcome::Duplicate(new_seqs[5])),
        "an id repeated in the batch is committed once: {out:?}"
    );
    for m in fresh.iter().chain([&repeated]) {
        assert_eq!(store.clip_audio(&m.id).unwrap(), audio(m));
    }
    // Queued once each; in the order of their seqs, which a store that runs a batch's
    // commits at once (NATS) gives in the order they finish.
    let mut queued = ids(&store.pending("alice", 0, 10).unwrap());
    let mut want = ids(&fresh);
    queued.sort_unstable_by_key(|id| id.0);
    want.sort_unstable_by_key(|id| id.0);
    assert_eq!(queued, want, "queued once each");
    assert_eq!(
        ids(&store.pending("bob", 0, 10).unwrap()),
        vec![old.id, repeated.id]
    );
    assert!(store.commit_clips(Vec::new()).is_empty());
}

/// Each recipient's inbox holds what was queued for them, oldest first, until they ack it.
pub fn pending_is_oldest_first_per_recipient_and_ack_removes(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let a = send(store, "alice", "crew", &["alice", "bob"]);
    let b2 = send(store, "bob", "@alice", &["alice"]);
    let c = send(store, "bob", "crew", &["alice", "bob", "bob", "ghost"]);
    assert!(a.seq < b2.seq && b2.seq < c.seq);
    assert_eq!(
        store.pending("alice", 0, 10).unwrap(),
        vec![a.clone(), b2.clone(), c.clone()]
    );
    assert_eq!(ids(&store.pending("bob", 0, 10).unwrap()), vec![a.id, c.id]);
    assert_eq!(
        ids(&store.pending("alice", a.seq, 10).unwrap()),
        vec![b2.id, c.id]
    );
    assert_eq!(ids(&store.pending("alice", 0, 1).unwrap()), vec![a.id]);
    assert_eq!(store.pending("carol", 0, 10).unwrap(), vec![]);
    // The metrics' inbox depth, where a store counts it, is every entry not acknowledged.
    let entries = |store: &dyn Store| {
        ["alice", "bob", "ghost"]
            .iter()
            .map(|u| store.pending(u, 0, 100).unwrap().len() as u64)
            .sum::<u64>()
    };
    let depth = store.inbox_depth().unwrap();
    if let Some(depth) = depth {
        assert_eq!(depth, entries(store));
    }
    store.ack("alice", &a.id).unwrap();
    store.ack("alice", &ClipId::random()).unwrap();
    if let Some(before) = depth {
        assert_eq!(store.inbox_depth().unwrap(), Some(before - 1));
    }
    assert_eq!(
        ids(&store.pending("alice", 0, 10).unwrap()),
        vec![b2.id, c.id]
    );
    assert_eq!(
        ids(&store.pending("bob", 0, 10).unwrap()),
        vec![a.id, c.id],
        "bob's inbox is his own"
    );
}

/// A channel's history is a page of its newest clips, oldest first.
pub fn channel_history_is_newest_last_with_limit_and_before(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    store.add_channel("ops", &names(&["carol"])).unwrap();
    let crew: Vec<ClipMeta> = (0..5).map(|_| send(store, "alice", "crew", &[])).collect();
    send(store, "carol", "ops", &[]);
    send(store, "alice", "@bob", &[]);
    let target = Target::Channel("crew".into());
    assert_eq!(store.history("alice", &target, 10, None).unwrap(), crew);
    assert_eq!(store.history("alice", &target, 3, None).unwrap(), crew[2..]);
    assert_eq!(
        store
            .history("alice", &target, 2, Some(crew[3].seq))
            .unwrap(),
        crew[1..3]
    );
    assert_eq!(
        store
            .history("alice", &target, 10, Some(crew[0].seq))
            .unwrap(),
        vec![]
    );
    assert_eq!(store.history("alice", &target, 0, None).unwrap(), vec![]);
}

/// Old clips of a conversation are found behind many newer clips of other conversations.
pub fn history_finds_old_clips_behind_many_newer_ones_elsewhere(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    store.add_channel("ops", &names(&["carol"])).unwrap();
    let old: Vec<ClipMeta> = (0..3).map(|_| send(store, "alice", "crew", &[])).collect();
    for _ in 0..300 {
        send(store, "carol", "ops", &[]);
    }
    let newest = send(store, "bob", "crew", &[]);
    let target = Target::Channel("crew".into());
    let all: Vec<ClipMeta> = old.iter().cloned().chain([newest.clone()]).collect();
    assert_eq!(store.history("bob", &target, 10, None).unwrap(), all);
    assert_eq!(store.history("bob", &target, 2, None).unwrap(), all[2..]);
    assert_eq!(
        store.history("bob", &target, 2, Some(newest.seq)).unwrap(),
        old[1..]
    );
    assert_eq!(
        store
            .history("carol", &"ops".parse().unwrap(), 1000, None)
            .unwrap()
            .len(),
        300
    );
    assert_eq!(store.readable("alice", 10, None).unwrap(), all);
    assert_eq!(
        store.readable("alice", 2, Some(newest.seq)).unwrap(),
        old[1..]
    );
}

/// A direct conversation holds both directions between two users and nobody else's clips.
pub fn direct_history_has_both_directions_and_nobody_else(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let a1 = send(store, "alice", "@bob", &["bob"]);
    send(store, "carol", "@alice", &["alice"]);
    let b1 = send(store, "bob", "@alice", &["alice"]);
    send(store, "alice", "@carol", &["carol"]);
    send(store, "bob", "@carol", &["carol"]);
    send(store, "bob", "crew", &[]);
    let a2 = send(store, "alice", "@bob", &["bob"]);
    let dm = vec![a1, b1.clone(), a2.clone()];
    assert_eq!(
        store
            .history("alice", &Target::User("bob".into()), 10, None)
            .unwrap(),
        dm
    );
    assert_eq!(
        store
            .history("bob", &Target::User("alice".into()), 10, None)
            .unwrap(),
        dm
    );
    assert_eq!(
        store
            .history("alice", &Target::User("bob".into()), 2, None)
            .unwrap(),
        dm[1..]
    );
    assert_eq!(
        store
            .history("bob", &Target::User("alice".into()), 1, Some(a2.seq))
            .unwrap(),
        vec![b1]
    );
    let carol_bob = store
        .history("carol", &Target::User("bob".into()), 10, None)
        .unwrap();
    assert_eq!(carol_bob.len(), 1);
    assert_eq!(
        (carol_bob[0].from.as_str(), &carol_bob[0].to),
        ("bob", &Target::User("carol".into()))
    );
}

/// What a user may read: the channels they are in now, and direct clips to or from them.
pub fn readable_follows_current_membership_and_own_direct_clips(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    store.add_channel("ops", &names(&["bob", "carol"])).unwrap();
    let crew = send(store, "bob", "crew", &[]);
    send(store, "bob", "ops", &[]);
    let to_alice = send(store, "carol", "@alice", &[]);
    send(store, "bob", "@carol", &[]);
    let from_alice = send(store, "alice", "@bob", &[]);
    let to_self = send(store, "alice", "@alice", &[]);
    assert_eq!(
        readable_all(store, "alice"),
        vec![crew, to_alice.clone(), from_alice.clone(), to_self.clone()]
    );
    store
        .update_members("crew", &[], &names(&["alice"]))
        .unwrap();
    assert_eq!(
        readable_all(store, "alice"),
        vec![to_alice, from_alice, to_self]
    );
    assert_eq!(readable_all(store, "nobody"), vec![]);
}

/// Everything readable comes in pages, newest last, so a long history is never read whole.
pub fn readable_pages_newest_last_with_limit_and_before(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let mut mine = Vec::new();
    for i in 0..250 {
        mine.push(match i % 3 {
            0 => send(store, "bob", "crew", &[]),
            1 => send(store, "carol", "@alice", &[]),
            _ => send(store, "alice", "@bob", &[]),
        });
        send(store, "bob", "@carol", &[]);
    }
    let page = store.readable("alice", 100, None).unwrap();
    assert_eq!(page, mine[150..], "the newest 100, oldest first");
    let older = store.readable("alice", 100, Some(page[0].seq)).unwrap();
    assert_eq!(older, mine[50..150]);
    assert_eq!(
        store.readable("alice", 100, Some(older[0].seq)).unwrap(),
        mine[..50]
    );
    assert_eq!(store.readable("alice", 0, None).unwrap(), vec![]);
    assert_eq!(readable_all(store, "alice"), mine);
}

/// Two handles on one store (a relay and an admin command, or two relays) see each other's
/// writes at once, and a handle opened later sees everything.
pub fn two_stores_see_each_others_writes_at_once(b: &dyn Backend) {
    let relay = b.store();
    populate(relay);
    let admin = b.another();
    admin.add_user("dave", &[3; 32]).unwrap();
    assert_eq!(relay.token_hash("dave").unwrap(), Some([3; 32]));
    admin
        .update_members("crew", &names(&["dave"]), &[])
        .unwrap();
    assert_eq!(
        relay.members("crew").unwrap(),
        Some(names(&["alice", "bob", "dave"]))
    );
    let m = send(relay, "alice", "crew", &["dave"]);
    assert_eq!(admin.pending("dave", 0, 10).unwrap(), vec![m.clone()]);
    assert_eq!(admin.clip_audio(&m.id).unwrap(), audio(&m));
    assert_eq!(
        admin
            .history("dave", &"crew".parse().unwrap(), 10, None)
            .unwrap(),
        vec![m.clone()]
    );
    admin.ack("dave", &m.id).unwrap();
    assert_eq!(relay.pending("dave", 0, 10).unwrap(), vec![]);
    assert!(admin.remove_user("dave").unwrap());
    assert_eq!(relay.token_hash("dave").unwrap(), None);
    drop(admin);
    let later = b.another();
    assert_eq!(later.clip(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(
        later.commit_clip(&m, &[], &audio(&m)).unwrap(),
        CommitOutcome::Duplicate(m.seq)
    );
    assert!(send(later.as_ref(), "bob", "crew", &[]).seq > m.seq);
}

/// Commits from two handles at once on four threads: every clip stored once, every seq unique.
pub fn concurrent_commits_from_two_stores_get_unique_seqs(b: &dyn Backend) {
    populate(b.store());
    let stores = [b.another(), b.another()];
    let seqs: Vec<u64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = &stores[t % 2];
                scope.spawn(move || {
                    (0..25)
                        .map(|_| send(store.as_ref(), "alice", "crew", &["bob"]).seq)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a committing thread"))
            .collect()
    });
    assert_eq!(seqs.len(), 100);
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), 100);
    assert_eq!(
        b.store()
            .history("alice", &"crew".parse().unwrap(), 1000, None)
            .unwrap()
            .len(),
        100
    );
    assert_eq!(b.store().pending("bob", 0, 1000).unwrap().len(), 100);
}

/// A purge deletes the audio of every clip the user sent and drops those clips from every
/// inbox; the clips stay in their conversations, anonymised, with no audio.
pub fn purge_deletes_the_users_audio_and_keeps_their_clips_anonymised(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let theirs = [
        send(store, "bob", "crew", &["alice"]),
        send(store, "bob", "@alice", &["alice"]),
    ];
    let kept = send(store, "alice", "crew", &["bob"]);
    assert_eq!(store.purge_user("bob").unwrap(), 2);
    for m in &theirs {
        assert!(
            matches!(store.clip_audio(&m.id), Err(StoreError::NotFound { .. })),
            "{m:?}: audio gone"
        );
        let anon = store.clip(&m.id).unwrap().expect("the clip stays");
        assert_eq!(
            (anon.from.as_str(), anon.seq, anon.bytes),
            (PURGED_SENDER, m.seq, 0)
        );
    }
    assert_eq!(
        ids(&store.pending("alice", 0, 10).unwrap()),
        Vec::<ClipId>::new(),
        "purged clips leave every inbox"
    );
    assert_eq!(
        store.clip_audio(&kept.id).unwrap(),
        audio(&kept),
        "other senders' clips are untouched"
    );
    let crew = store
        .history("alice", &"crew".parse().unwrap(), 10, None)
        .unwrap();
    assert_eq!(
        crew.iter().map(|m| m.from.as_str()).collect::<Vec<_>>(),
        [PURGED_SENDER, "alice"]
    );
    assert_eq!(
        store.purge_user("bob").unwrap(),
        0,
        "a second purge finds nothing"
    );
}

/// Retention deletes clips stored before a time, with their audio and inbox entries, and
/// keeps the rest.
pub fn retention_deletes_old_clips_with_their_audio_and_inbox_entries(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let old = send(store, "alice", "crew", &["bob"]);
    assert_eq!(
        store.delete_clips_before(0).unwrap(),
        0,
        "nothing is older than 1970"
    );
    let cut = walkie_proto::clip::now_ms() + 1;
    assert_eq!(store.delete_clips_before(cut).unwrap(), 1);
    // The next clip must be stored after the cut: wait for the clock to pass it (at most 1 ms).
    while walkie_proto::clip::now_ms() < cut {
        std::thread::yield_now();
    }
    assert_eq!(store.clip(&old.id).unwrap(), None);
    assert!(matches!(
        store.clip_audio(&old.id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.pending("bob", 0, 10).unwrap(), vec![]);
    let fresh = send(store, "alice", "crew", &["bob"]);
    assert_eq!(
        store.delete_clips_before(cut).unwrap(),
        0,
        "a clip stored after the cut stays"
    );
    assert_eq!(store.pending("bob", 0, 10).unwrap(), vec![fresh]);
}

/// A rotated token replaces the old one; the batch read answers in order, `None` for unknown.
pub fn tokens_are_replaced_and_read_in_batches(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    assert!(store.set_token("bob", &[42; 32]).unwrap());
    assert!(!store.set_token("nobody", &[42; 32]).unwrap());
    assert_eq!(store.token_hash("bob").unwrap(), Some([42; 32]));
    assert_eq!(
        store
            .token_hashes(&names(&["carol", "nobody", "bob"]))
            .unwrap(),
        vec![Some([2; 32]), None, Some([42; 32])]
    );
}

/// A name that sent clips, or received direct ones, has history; a fresh name has none.
pub fn history_of_a_name_covers_sent_and_direct_clips(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    assert!(!store.has_history("bob").unwrap());
    send(store, "alice", "@bob", &["bob"]);
    assert!(store.has_history("bob").unwrap(), "received a direct clip");
    assert!(store.has_history("alice").unwrap(), "sent one");
    assert!(!store.has_history("carol").unwrap());
}

/// The quota's count: a sender's stored audio, less what was purged or expired.
pub fn stored_bytes_count_a_senders_audio_until_purged_or_expired(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    assert_eq!(store.stored_bytes_of("alice").unwrap(), Some(0));
    let a = send(store, "alice", "crew", &["bob"]);
    let d = send(store, "alice", "@bob", &["bob"]);
    let mut again = a.clone();
    again.bytes = 0;
    store
        .commit_clip(&again, &names(&["bob"]), &audio(&a))
        .unwrap();
    let c = send(store, "bob", "crew", &["alice"]);
    assert_eq!(
        store.stored_bytes_of("alice").unwrap(),
        Some(a.bytes + d.bytes),
        "a resend counts once"
    );
    assert_eq!(store.stored_bytes_of("bob").unwrap(), Some(c.bytes));
    store.purge_user("alice").unwrap();
    assert_eq!(
        store.stored_bytes_of("alice").unwrap(),
        Some(0),
        "purged audio no longer counts"
    );
    store.delete_clips_before(i64::MAX).unwrap();
    assert_eq!(
        store.stored_bytes_of("bob").unwrap(),
        Some(0),
        "expired audio no longer counts"
    );
}

/// Deleting a channel takes its clips (audio, inbox entries, purged ones too) and members
/// with it, leaves every other conversation alone, and a new channel of that name starts empty.
pub fn deleting_a_channel_deletes_its_clips_and_frees_the_name(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    store
        .add_channel("other", &names(&["alice", "bob"]))
        .unwrap();
    let gone = send(store, "alice", "crew", &["bob"]);
    let purged = send(store, "carol", "crew", &["bob"]);
    store.purge_user("carol").unwrap();
    let kept = send(store, "alice", "other", &["bob"]);
    let direct = send(store, "alice", "@bob", &["bob"]);
    assert_eq!(store.delete_channel("crew").unwrap(), Some(2));
    assert_eq!(store.delete_channel("crew").unwrap(), None, "gone");
    assert_eq!(store.members("crew").unwrap(), None);
    assert_eq!(store.clip(&gone.id).unwrap(), None);
    assert_eq!(store.clip(&purged.id).unwrap(), None);
    assert!(matches!(
        store.clip_audio(&gone.id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        ids(&store.pending("bob", 0, 10).unwrap()),
        vec![kept.id, direct.id]
    );
    assert_eq!(ids(&readable_all(store, "bob")), vec![kept.id, direct.id]);
    assert_eq!(
        store.stored_bytes_of("alice").unwrap(),
        Some(kept.bytes + direct.bytes)
    );
    store.add_channel("crew", &names(&["carol"])).unwrap();
    assert_eq!(
        store
            .history("carol", &Target::Channel("crew".into()), 10, None)
            .unwrap(),
        vec![]
    );
    assert_eq!(
        ids(&store
            .history("bob", &Target::Channel("other".into()), 10, None)
            .unwrap()),
        vec![kept.id]
    );
}

/// A record is created once, replaced only from the revision read, and deleted; a second
/// handle sees every write at once.
pub fn records_are_written_with_compare_and_set(b: &dyn Backend) {
    let store = b.store();
    let other = b.another();
    let key = ["user", "zoë"];
    assert_eq!(store.record(&key).unwrap(), None);
    let r1 = store.put_record(&key, b"one", 0).unwrap().expect("created");
    assert_eq!(
        store.put_record(&key, b"again", 0).unwrap(),
        None,
        "exists: a create loses"
    );
    let got = other
        .record(&key)
        .unwrap()
        .expect("visible to the other handle");
    assert_eq!((got.value.as_slice(), got.rev), (b"one".as_slice(), r1));
    let r2 = other
        .put_record(&key, b"two", r1)
        .unwrap()
        .expect("replaced from the revision read");
    assert_ne!(r1, r2);
    assert_eq!(
        store.put_record(&key, b"stale", r1).unwrap(),
        None,
        "a stale revision loses"
    );
    assert_eq!(store.record(&key).unwrap().expect("there").value, b"two");
    assert_eq!(
        store.put_record(&key, b"", r2).unwrap().map(|_| ()),
        Some(()),
        "empty values are values"
    );
    assert_eq!(store.record(&key).unwrap().expect("there").value, b"");
    store.delete_record(&key).unwrap();
    store.delete_record(&key).unwrap();
    assert_eq!(other.record(&key).unwrap(), None);
    assert!(
        store.put_record(&key, b"three", 0).unwrap().is_some(),
        "created again after a delete"
    );
    let big = vec![7u8; crate::records::MAX_RECORD + 1];
    assert!(store.put_record(&["big"], &big, 0).is_err(), "too large");
}

/// Keys list under a prefix of whole tokens, sorted, with odd bytes intact.
pub fn records_are_listed_by_whole_token_prefix(b: &dyn Backend) {
    let store = b.store();
    for key in [
        ["user", "b.c"],
        ["user", "a"],
        ["users", "x"],
        ["user", "张伟"],
        ["invite", "ff"],
    ] {
        store.put_record(&key, b"v", 0).unwrap().expect("created");
    }
    store
        .put_record(&["user"], b"v", 0)
        .unwrap()
        .expect("a key that is itself the prefix");
    let listed = store.record_keys(&["user"]).unwrap();
    let want: Vec<Vec<String>> = vec![
        names(&["user", "a"]),
        names(&["user", "b.c"]),
        names(&["user", "张伟"]),
    ];
    assert_eq!(listed, want);
    assert_eq!(
        store.record_keys(&["nothing"]).unwrap(),
        Vec::<Vec<String>>::new()
    );
}

/// An inbox may be named by any delivery key (a second device's `NAME/DEVICE`): it fills,
/// drains and is cleared on its own, beside the user's.
pub fn inboxes_are_keyed_by_delivery_key_and_cleared(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let one = send(store, "alice", "crew", &["bob", "bob/d1"]);
    let two = send(store, "alice", "@bob", &["bob", "bob/d1"]);
    store.ack("bob", &one.id).unwrap();
    assert_eq!(ids(&store.pending("bob", 0, 10).unwrap()), vec![two.id]);
    assert_eq!(
        ids(&store.pending("bob/d1", 0, 10).unwrap()),
        vec![one.id, two.id],
        "the device's inbox is its own"
    );
    store.clear_inbox("bob/d1").unwrap();
    assert_eq!(store.pending("bob/d1", 0, 10).unwrap(), vec![]);
    assert_eq!(
        ids(&store.pending("bob", 0, 10).unwrap()),
        vec![two.id],
        "the user's stays"
    );
    store.clear_inbox("nobody").unwrap();
}

/// A text and a picture are stored beside a clip: each keeps its content in every read
/// (clip, history, readable, pending), and its payload reads back byte-equal.
pub fn messages_keep_their_content_through_every_read(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let voice = send(store, "alice", "crew", &["bob"]);
    let mut text = meta("alice", "crew");
    text.content = Content::Text { chars: 5 };
    let mut picture = meta("bob", "crew");
    picture.content = Content::Picture {
        width: 640,
        height: 480,
        format: PictureFormat::Jpeg,
        thumb: 3,
    };
    for (m, payload) in [
        (&mut text, b"hello".to_vec()),
        (&mut picture, vec![7u8; 70_000]),
    ] {
        let CommitOutcome::Stored(seq) = store
            .commit_clip(m, &names(&["alice", "bob"]), &payload)
            .unwrap()
        else {
            panic!("new")
        };
        m.seq = seq;
        m.bytes = payload.len() as u64;
        assert_eq!(store.clip_audio(&m.id).unwrap(), payload);
    }
    let contents = |list: Vec<ClipMeta>| {
        list.into_iter()
            .map(|c| (c.id, c.content))
            .collect::<Vec<_>>()
    };
    let want = vec![
        (voice.id, Content::Voice),
        (text.id, text.content),
        (picture.id, picture.content),
    ];
    assert_eq!(
        contents(
            store
                .history("bob", &Target::Channel("crew".into()), 10, None)
                .unwrap()
        ),
        want
    );
    assert_eq!(contents(readable_all(store, "bob")), want);
    assert_eq!(contents(store.pending("bob", 0, 10).unwrap()), want);
    assert_eq!(store.clip(&picture.id).unwrap(), Some(picture));
}

/// A recall erases the payload, says "recalled" in every read, frees the sender's quota and
/// queues the item again for recipients who had acknowledged it.
pub fn a_recalled_item_loses_its_payload_and_is_queued_again(b: &dyn Backend) {
    let store = b.store();
    populate(store);
    let mut text = meta("alice", "crew");
    text.content = Content::Text { chars: 6 };
    let CommitOutcome::Stored(seq) = store
        .commit_clip(&text, &names(&["bob", "bob/d1"]), b"secret")
        .unwrap()
    else {
        panic!("new")
    };
    let kept = send(store, "alice", "crew", &["bob"]);
    store.ack("bob", &text.id).unwrap();
    store.ack("bob", &kept.id).unwrap();
    let before = store.stored_bytes_of("alice").unwrap();
    let recalled = store
        .recall_clip(&text.id, &names(&["bob", "bob/d1"]))
        .unwrap()
        .expect("recalled");
    assert_eq!(
        (
            recalled.id,
            recalled.seq,
            recalled.content,
            recalled.bytes,
            recalled.from.as_str()
        ),
        (text.id, seq, Content::Recalled, 0, "alice")
    );
    assert!(
        matches!(store.clip_audio(&text.id), Err(StoreError::NotFound { .. })),
        "the payload is gone"
    );
    assert_eq!(
        store.clip(&text.id).unwrap().map(|m| m.content),
        Some(Content::Recalled)
    );
    let pending = |key: &str| {
        store
            .pending(key, 0, 10)
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.content))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        pending("bob"),
        vec![(text.id, Content::Recalled)],
        "queued again for who had it"
    );
    assert_eq!(
        pending("bob/d1"),
        vec![(text.id, Content::Recalled)],
        "and for who had not acknowledged it"
    );
    let history = store
        .history("bob", &Target::Channel("crew".into()), 10, None)
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|m| (m.id, m.content))
            .collect::<Vec<_>>(),
        vec![(text.id, Content::Recalled), (kept.id, Content::Voice)]
    );
    if let (Some(before), Some(after)) = (before, store.stored_bytes_of("alice").unwrap()) {
        assert_eq!(before - after, 6, "the quota no longer counts it");
    }
    store.ack("bob", &text.id).unwrap();
    assert_eq!(pending("bob"), vec![]);
    assert_eq!(
        store
            .recall_clip(&ClipId::random(), &names(&["bob"]))
            .unwrap(),
        None
    );
    // Purging the sender leaves no name on what they recalled either.
    store.purge_user("alice").unwrap();
    let history = store
        .history("bob", &Target::Channel("crew".into()), 10, None)
        .unwrap();
    assert!(
        history.iter().all(|m| m.from == PURGED_SENDER),
        "{history:?}"
    );
    assert_eq!(
        store.clip(&text.id).unwrap().map(|m| (m.from, m.content)),
        Some((PURGED_SENDER.to_string(), Content::Recalled))
    );
}
