//! Tests of [`super::SqliteStore`] against real temp dirs: the conformance suite every store
//! runs (`crate::conformance`), then what is the embedded store's own: the file per clip,
//! crash leftovers, reopening, corrupt rows, group commits.

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

fn clip_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(dir.join("clips")).unwrap() {
        let shard = shard.unwrap().path();
        if shard.file_name().unwrap() != "tmp" {
            out.extend(fs::read_dir(shard).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
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

#[test]
fn a_committed_clip_is_its_own_file_and_no_temp_file_stays() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    assert_eq!(store.clip(&m.id).unwrap(), Some(m.clone()));
    assert_eq!(store.clip_audio(&m.id).unwrap(), audio(&m));
    let hex = m.id.to_string();
    let on_disk = dir
        .path()
        .join("clips")
        .join(&hex[..2])
        .join(format!("{hex}.opus"));
    assert_eq!(fs::read(on_disk).unwrap(), audio(&m));
    let unknown = ClipId::random();
    assert_eq!(store.clip(&unknown).unwrap(), None);
    assert!(matches!(
        store.clip_audio(&unknown),
        Err(StoreError::NotFound { kind: "clip", .. })
    ));
    assert!(
        fs::read_dir(dir.path().join("clips/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temp file left"
    );
}

#[test]
fn a_resend_or_a_conflict_writes_no_second_file() {
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
    assert_eq!(clip_files(dir.path()).len(), 1);
    assert_eq!(
        store.clip_audio(&m.id).unwrap(),
        audio(&m),
        "neither retry touched the file"
    );
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
    let committed_file = clip_files(dir.path()).remove(0);
    make_old(&committed_file);
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
        !partial.exists() && !old_orphan.exists(),
        "old leftovers are removed"
    );
    assert!(
        fresh_partial.exists() && fresh_orphan.exists(),
        "young files may belong to another process"
    );
    assert!(committed_file.exists());
    assert_eq!(store.clip_audio(&kept.id).unwrap(), audio(&kept));
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let (dir, store) = setup();
    let m = send(&store, "alice", "crew", &[]);
    let file = clip_files(dir.path()).remove(0);
    fs::remove_file(&file).unwrap();
    assert!(matches!(store.clip_audio(&m.id), Err(StoreError::Io { path, .. }) if path == file));
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
    raw.execute_batch("UPDATE clips SET duration_ms = 5, file = '../../walkie.db';")
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
fn concurrent_commits_from_two_stores_write_one_file_each() {
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
    assert_eq!(clip_files(dir.path()).len(), 200);
}

#[test]
fn a_failed_metadata_commit_leaves_no_file() {
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
    assert_eq!(clip_files(dir.path()), Vec::<PathBuf>::new());
    assert!(
        fs::read_dir(dir.path().join("clips/tmp"))
            .unwrap()
            .next()
            .is_none()
    );
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
    assert_eq!(clip_files(dir.path()).len(), 200);
    assert!(
        fs::read_dir(dir.path().join("clips/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temp file left"
    );
    for m in &clips {
        assert_eq!(store.clip_audio(&m.id).unwrap(), audio(m));
    }
    assert_eq!(store.pending("bob", 0, 1000).unwrap().len(), 200);
}
