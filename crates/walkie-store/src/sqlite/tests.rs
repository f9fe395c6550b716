//! Tests of [`super::SqliteStore`] against real temp dirs: the conformance suite every store
//! runs (`crate::conformance`), then what is the embedded store's own: segments, clips of
//! the old file-per-clip layout, erasing, crash leftovers, reopening, corrupt rows, group
//! commits of clips and acks.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::conformance::{Backend, audio, meta, names, populate, send};

/// A fresh store in a temp dir, for the conformance suite.
struct Dir {
    dir: tempfile::TempDir,
    store: SqliteStore,
}

impl Backend for Dir {
    fn store(&self) -> &dyn Store {
        &self.store
    }
    fn another(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(self.dir.path()).unwrap())
    }
}

fn fresh() -> Dir {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    Dir { dir, store }
}

crate::conformance_tests!(fresh());

/// A store with users alice, bob, carol and channel crew = {alice, bob}.
fn setup() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    populate(&store);
    (dir, store)
}

/// Files of the old layout (one per clip in `clips/<ab>/`).
fn clip_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir.join("clips")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().unwrap().len() == 2 {
            out.extend(fs::read_dir(shard).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

/// The segments under `clips/seg/`.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir.join("clips/seg")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Bytes in every segment.
fn segment_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn make_old(path: &Path) {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
}

/// Turns a stored clip into one stored by an older build: its own file, no offset.
fn as_old_layout(dir: &Path, m: &ClipMeta) -> PathBuf {
    let hex = m.id.to_string();
    let rel = format!("{}/{hex}.opus", &hex[..2]);
    let path = dir.join("clips").join(&rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, audio(m)).unwrap();
    let raw = Connection::open(dir.join("walkie.db")).unwrap();
    raw.execute(
        "UPDATE clips SET file = ?1, audio_at = NULL WHERE id = ?2",
        params![rel, m.id.0],
    )
    .unwrap();
    path
}

#[test]
fn a_committed_clip_is_a_range_of_a_segment_and_no_other_file_is_written() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    let n = send(&store, "bob", "crew", &["alice"]);
    assert_eq!(store.clip(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
    assert_eq!(store.clip_audio(&n.id).unwrap(), audio(&n));
    let segs = segment_files(dir.path());
    assert_eq!(segs.len(), 1, "one segment takes both");
    let bytes = fs::read(&segs[0]).unwrap();
    assert_eq!(bytes, [audio(&m), audio(&n)].concat());
    // Parts: from an offset, capped, and past the end.
    let whole = audio(&n);
    assert_eq!(store.clip_audio_part(&n.id, 3, 4).unwrap(), whole[3..7]);
    assert_eq!(
        store.clip_audio_part(&n.id, 2, 1 << 20).unwrap(),
        whole[2..]
    );
    assert!(
        store
            .clip_audio_part(&n.id, whole.len() as u64, 10)
            .unwrap()
            .is_empty()
    );
    let unknown = ClipId::random();
    assert_eq!(store.clip(&unknown).unwrap(), None);
    assert!(matches!(
        store.clip_audio(&unknown),
        Err(StoreError::NotFound { kind: "clip", .. })
    ));
    assert!(clip_files(dir.path()).is_empty());
    assert!(
        fs::read_dir(dir.path().join("clips/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temp file"
    );
}

#[test]
fn a_resend_or_a_conflict_writes_nothing() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    let again = store
        .commit_clip(&m, &names(&["bob"]), b"different bytes")
        .unwrap();
    assert_eq!(again, CommitOutcome::Duplicate(m.seq));
    let mut forged = m.clone();
    forged.from = "carol".into();
    assert!(
        matches!(store.commit_clip(&forged, &[], b"x"), Err(StoreError::IdConflict(id)) if id == m.id)
    );
    assert_eq!(store.pending("bob", 0, 10).unwrap().len(), 1);
    assert_eq!(segment_bytes(dir.path()), audio(&m).len() as u64);
    assert_eq!(
        store.clip_audio(&m.id).unwrap(),
        audio(&m),
        "neither retry touched the payload"
    );
}

#[test]
fn clips_of_an_older_build_are_read_and_erased_in_place() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    let old = as_old_layout(dir.path(), &m);
    let kept = send(&store, "bob", "crew", &["alice"]);
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
    assert_eq!(store.clip_audio_part(&m.id, 1, 2).unwrap(), audio(&m)[1..3]);
    assert_eq!(store.purge_user("alice").unwrap(), 1);
    assert!(!old.exists(), "the old file is shredded and removed");
    assert_eq!(store.clip_audio(&kept.id).unwrap(), audio(&kept));
}

#[test]
fn erasing_leaves_no_byte_of_a_payload_in_its_segment() {
    let (dir, store) = setup();
    let purged = send(&store, "alice", "crew", &["bob"]);
    let recalled = send(&store, "bob", "crew", &["alice"]);
    let kept = send(&store, "carol", "crew", &[]);
    let seg = segment_files(dir.path()).remove(0);
    for m in [&purged, &recalled, &kept] {
        assert!(contains(&fs::read(&seg).unwrap(), &audio(m)));
    }
    assert_eq!(store.purge_user("alice").unwrap(), 1);
    assert!(store.recall_clip(&recalled.id, &[]).unwrap().is_some());
    let bytes = fs::read(&seg).unwrap();
    assert!(
        !contains(&bytes, &audio(&purged)),
        "the purged payload is gone"
    );
    assert!(!contains(&bytes, &audio(&recalled)), "the recalled one too");
    assert_eq!(store.clip_audio(&kept.id).unwrap(), audio(&kept));
    assert!(matches!(
        store.clip_audio(&purged.id),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn a_segment_no_row_points_to_goes_but_never_the_one_in_use() {
    let (dir, store) = setup();
    let first = send(&store, "alice", "crew", &[]);
    let seg = segment_files(dir.path()).remove(0);
    // Retention deletes the only clip; the segment is still this store's, so it stays.
    assert_eq!(store.delete_clips_before(i64::MAX).unwrap(), 1);
    make_old(&seg);
    assert_eq!(store.remove_dead_segments(LEFTOVER_MIN_AGE).unwrap(), 0);
    assert!(seg.exists());
    // Another process's open removes it (old, no row) ...
    drop(SqliteStore::open(dir.path()).unwrap());
    assert!(!seg.exists(), "swept by another store's open");
    // ... and this store notices and starts a new one instead of writing into the void.
    let next = send(&store, "alice", "crew", &["bob"]);
    assert_eq!(store.clip_audio(&next.id).unwrap(), audio(&next));
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.clip_audio(&next.id).unwrap(), audio(&next));
    assert_ne!(first.id, next.id);
}

#[test]
fn acks_ride_the_group_commit_with_clips() {
    let (_dir, store) = setup();
    let store = Arc::new(store);
    let early: Vec<ClipMeta> = (0..40)
        .map(|_| send(store.as_ref(), "alice", "crew", &["bob"]))
        .collect();
    // Four threads ack bob's backlog while four send more to him, all at once.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, early) = (Arc::clone(&store), early.clone());
            std::thread::spawn(move || {
                if t < 4 {
                    for m in early.iter().skip(t).step_by(4) {
                        store.ack("bob", &m.id).unwrap();
                    }
                    Vec::new()
                } else {
                    (0..10)
                        .map(|_| send(store.as_ref(), "alice", "crew", &["bob"]).id)
                        .collect()
                }
            })
        })
        .collect();
    let late: HashSet<ClipId> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let pending: HashSet<ClipId> = store
        .pending("bob", 0, 1000)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(pending, late, "every ack applied, every new clip queued");
    // An ack of something not in the inbox is harmless.
    store.ack("bob", &ClipId::random()).unwrap();
    store.ack("carol", &early[0].id).unwrap();
}

#[test]
fn everything_survives_a_reopen() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.users().unwrap(), names(&["alice", "bob", "carol"]));
    assert_eq!(store.token_hash("carol").unwrap(), Some([2; 32]));
    assert_eq!(
        store.members("crew").unwrap(),
        Some(names(&["alice", "bob"]))
    );
    assert_eq!(store.clip(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
    assert_eq!(store.pending("bob", 0, 10).unwrap(), vec![m.clone()]);
    assert_eq!(
        store.commit_clip(&m, &[], &audio(&m)).unwrap(),
        CommitOutcome::Duplicate(m.seq)
    );
    assert!(send(&store, "bob", "crew", &[]).seq > m.seq);
}

#[test]
fn open_sweeps_old_leftovers_only() {
    let (dir, store) = setup();
    let kept = send(&store, "alice", "crew", &[]);
    let committed_file = segment_files(dir.path()).remove(0);
    make_old(&committed_file);
    let dead_segment = dir.path().join("clips/seg/00000000000000ff.seg");
    fs::write(&dead_segment, b"bytes of a commit that never happened").unwrap();
    make_old(&dead_segment);
    let young_segment = dir.path().join("clips/seg/00000000000000fe.seg");
    fs::write(&young_segment, b"another process's first clip, in flight").unwrap();
    let partial = dir.path().join("clips/tmp/x.opus.0123.partial");
    fs::write(&partial, b"half").unwrap();
    make_old(&partial);
    let orphan_path = |id: ClipId| {
        let hex = id.to_string();
        let shard = dir.path().join("clips").join(&hex[..2]);
        fs::create_dir_all(&shard).unwrap();
        let path = shard.join(format!("{hex}.opus"));
        fs::write(&path, b"OggS orphan").unwrap();
        path
    };
    let old_orphan = orphan_path(ClipId::random());
    make_old(&old_orphan);
    let fresh_orphan = orphan_path(ClipId::random());
    let fresh_partial = dir.path().join("clips/tmp/y.opus.4567.partial");
    fs::write(&fresh_partial, b"in progress elsewhere").unwrap();
    drop(store);

    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(
        !partial.exists() && !old_orphan.exists() && !dead_segment.exists(),
        "old leftovers are removed"
    );
    assert!(
        fresh_partial.exists() && fresh_orphan.exists() && young_segment.exists(),
        "young files may belong to another process"
    );
    assert!(committed_file.exists());
    assert_eq!(store.clip_audio(&kept.id).unwrap(), audio(&kept));
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &[]);
    let file = segment_files(dir.path()).remove(0);
    fs::remove_file(&file).unwrap();
    assert!(matches!(store.clip_audio(&m.id), Err(StoreError::Io { path, .. }) if path == file));
    // A segment cut short is corrupt, not a short read.
    let n = send(&store, "alice", "crew", &[]);
    let file = segment_files(dir.path()).remove(0);
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert!(matches!(
        store.clip_audio(&n.id),
        Err(StoreError::Corrupt(_))
    ));
    let old = as_old_layout(dir.path(), &n);
    fs::remove_file(&old).unwrap();
    assert!(matches!(store.clip_audio(&n.id), Err(StoreError::Io { path, .. }) if path == old));
}

#[test]
fn corrupt_rows_and_newer_schemas_are_errors() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &[]);
    let raw = Connection::open(dir.path().join("walkie.db")).unwrap();
    raw.execute_batch("PRAGMA ignore_check_constraints = 1; UPDATE clips SET target_kind = 'x';")
        .unwrap();
    assert!(matches!(store.clip(&m.id), Err(StoreError::Corrupt(_))));
    raw.execute_batch("UPDATE clips SET target_kind = 'c', duration_ms = -5;")
        .unwrap();
    assert!(matches!(
        store.history("alice", &"crew".parse().unwrap(), 5, None),
        Err(StoreError::Corrupt(_))
    ));
    raw.execute_batch("UPDATE clips SET duration_ms = 5, audio_at = -1;")
        .unwrap();
    assert!(matches!(
        store.clip_audio(&m.id),
        Err(StoreError::Corrupt(_))
    ));
    raw.execute_batch("UPDATE clips SET audio_at = 0, file = '../../walkie.db';")
        .unwrap();
    assert!(matches!(
        store.clip_audio(&m.id),
        Err(StoreError::Corrupt(_))
    ));
    raw.execute_batch("PRAGMA user_version = 99;").unwrap();
    drop((raw, store));
    assert!(matches!(
        SqliteStore::open(dir.path()),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn concurrent_commits_from_two_stores_each_fill_their_own_segment() {
    let (dir, store) = setup();
    let stores = [
        Arc::new(store),
        Arc::new(SqliteStore::open(dir.path()).unwrap()),
    ];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = Arc::clone(&stores[t % 2]);
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| send(store.as_ref(), "alice", "crew", &["bob"]).seq)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(seqs.len(), 200);
    assert_eq!(seqs.iter().collect::<HashSet<_>>().len(), 200);
    let stored = stores[0]
        .history("alice", &"crew".parse().unwrap(), 1000, None)
        .unwrap();
    assert_eq!(stored.len(), 200);
    assert_eq!(stores[1].pending("bob", 0, 1000).unwrap().len(), 200);
    assert_eq!(segment_files(dir.path()).len(), 2, "one per store");
    let payloads: u64 = stored.iter().map(|m| audio(m).len() as u64).sum();
    assert_eq!(segment_bytes(dir.path()), payloads, "each payload once");
    for m in &stored {
        assert_eq!(
            stores[(m.seq % 2) as usize].clip_audio(&m.id).unwrap(),
            audio(m)
        );
    }
}

#[test]
fn a_failed_metadata_commit_leaves_no_payload() {
    let (dir, store) = setup();
    let raw = Connection::open(dir.path().join("walkie.db")).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER full BEFORE INSERT ON clips BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    let m = meta("alice", "crew");
    assert!(matches!(
        store.commit_clip(&m, &names(&["bob"]), &audio(&m)),
        Err(StoreError::Database(_))
    ));
    for seg in segment_files(dir.path()) {
        assert!(
            !contains(&fs::read(&seg).unwrap(), &audio(&m)),
            "the payload appended for the failed group is erased"
        );
    }
    assert_eq!(store.clip(&m.id).unwrap(), None);
    raw.execute_batch("DROP TRIGGER full;").unwrap();
    assert!(matches!(
        store.commit_clip(&m, &[], &audio(&m)).unwrap(),
        CommitOutcome::Stored(_)
    ));
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
}

#[test]
fn a_group_commit_keeps_each_clip_once_and_tells_duplicates_from_conflicts() {
    let (dir, store) = setup();
    let store = Arc::new(store);
    // 8 threads, 25 clips each; every clip is also sent again by its sender and by a thief,
    // all at once, so groups hold new clips, resends and conflicting ids together.
    let clips: Vec<ClipMeta> = (0..200).map(|_| meta("alice", "crew")).collect();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, clips) = (Arc::clone(&store), clips.clone());
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for m in clips.iter().skip(t % 2).step_by(2) {
                    let mine = if t < 4 {
                        m.clone()
                    } else {
                        ClipMeta {
                            from: "mallory".into(),
                            ..m.clone()
                        }
                    };
                    outcomes.push((
                        m.id,
                        t < 4,
                        store.commit_clip(&mine, &names(&["bob"]), &audio(m)),
                    ));
                }
                outcomes
            })
        })
        .collect();
    // Per id: (stored by alice, stored by mallory, duplicates of alice, of mallory, conflicts).
    let mut per_id: std::collections::HashMap<ClipId, [u32; 5]> = std::collections::HashMap::new();
    let mut seqs = HashSet::new();
    for (id, alice, outcome) in threads.into_iter().flat_map(|t| t.join().unwrap()) {
        let c = per_id.entry(id).or_default();
        match outcome {
            Ok(CommitOutcome::Stored(seq)) => {
                c[usize::from(!alice)] += 1;
                assert!(seqs.insert(seq), "seq {seq} given twice");
            }
            Ok(CommitOutcome::Duplicate(_)) => c[2 + usize::from(!alice)] += 1,
            Err(StoreError::IdConflict(_)) => c[4] += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // Each id is stored once, by whoever came first; that sender's resend is a duplicate and
    // both sends of the other sender are conflicts.
    for (id, c) in &per_id {
        assert!(
            *c == [1, 0, 1, 0, 2] || *c == [0, 1, 0, 1, 2],
            "{id}: {c:?}"
        );
    }
    assert_eq!(per_id.len(), 200);
    let payloads: u64 = clips.iter().map(|m| audio(m).len() as u64).sum();
    assert_eq!(segment_bytes(dir.path()), payloads, "each payload once");
    for m in &clips {
        assert_eq!(store.clip_audio(&m.id).unwrap(), audio(m));
    }
    assert_eq!(store.pending("bob", 0, 1000).unwrap().len(), 200);
}
