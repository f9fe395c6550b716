//! Tests of backups and restores against real temp dirs: a round trip (segments, an older
//! per-clip file, extra files, inboxes), clips erased while a backup runs, and hostile or
//! damaged backup files, each refused with nothing left behind.

use std::path::Path;

use walkie_proto::message::Content;

use super::*;
use crate::Store;
use crate::conformance::{audio, populate, send};

const EXTRAS: &[&str] = &["cert.pem", "key.pem"];

/// A store with users alice, bob, carol and channel crew = {alice, bob}, and a cert.pem.
fn setup() -> (tempfile::TempDir, SqliteStore) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = SqliteStore::open(&data).unwrap();
    populate(&store);
    fs::write(data.join("cert.pem"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
    (tmp, store)
}

/// Turns a stored clip into one stored by an older build: its own file, no offset.
fn as_old_layout(data: &Path, m: &walkie_proto::clip::ClipMeta) {
    let hex = m.id.to_string();
    let rel = format!("{}/{hex}.opus", &hex[..2]);
    let path = data.join("clips").join(&rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, audio(m)).unwrap();
    Connection::open(data.join(DB))
        .unwrap()
        .execute(
            "UPDATE clips SET file = ?1, audio_at = NULL WHERE id = ?2",
            params![rel, m.id.0],
        )
        .unwrap();
}

/// Every file under `dir`, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The entries of a tar, in order, with their bytes.
fn entries_of(file: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(File::open(file).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (path, bytes)
        })
        .collect()
}

#[test]
fn a_backup_restores_every_clip_inbox_and_extra_file_byte_for_byte() {
    let (tmp, store) = setup();
    let data = tmp.path().join("data");
    let clips: Vec<_> = (0..5)
        .map(|i| send(&store, ["alice", "bob"][i % 2], "crew", &["alice", "bob"]))
        .chain([send(&store, "carol", "@bob", &["bob"])])
        .collect();
    as_old_layout(&data, &clips[1]);
    let out = tmp.path().join("relay.backup");
    let summary = store.backup(&out, EXTRAS, "walkie test").unwrap();
    assert_eq!(summary.clips, 6);
    assert_eq!(summary.erased_meanwhile, 0);
    assert_eq!(
        summary.files, 4,
        "cert.pem, one segment, one old file, the database"
    );
    assert_eq!(summary.bytes, fs::metadata(&out).unwrap().len());
    assert!(!with_suffix(&out, ".partial").exists());
    assert!(!with_suffix(&out, ".partial-db").exists());

    // The manifest comes first and lists every other entry with its size and checksum.
    let entries = entries_of(&out);
    assert_eq!(entries[0].0, MANIFEST);
    let manifest: Manifest = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!((manifest.format, manifest.clips), (FORMAT, 6));
    assert_eq!(manifest.created_by, "walkie test");
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let held: Vec<&str> = entries[1..].iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(listed, held);
    assert_eq!(held.first(), Some(&"cert.pem"));
    assert_eq!(held.last(), Some(&DB));
    for (f, (_, bytes)) in manifest.files.iter().zip(&entries[1..]) {
        assert_eq!(f.size, bytes.len() as u64);
        assert_eq!(f.sha256, hex::encode(Sha256::digest(bytes)));
    }

    let target = tmp.path().join("restored");
    let restored = restore(&out, &target, EXTRAS).unwrap();
    assert_eq!(restored.clips, 6);
    assert_eq!(restored.created_by, "walkie test");
    assert_eq!(
        fs::read(target.join("cert.pem")).unwrap(),
        fs::read(data.join("cert.pem")).unwrap()
    );
    assert!(
        !target.join("key.pem").exists(),
        "a missing extra stays missing"
    );
    let again = SqliteStore::open(&target).unwrap();
    for m in &clips {
        assert_eq!(again.clip(&m.id).unwrap(), store.clip(&m.id).unwrap());
        assert_eq!(again.clip_audio(&m.id).unwrap(), audio(m));
    }
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            again.pending(user, 0, 100).unwrap(),
            store.pending(user, 0, 100).unwrap()
        );
        assert_eq!(
            again.token_hash(user).unwrap(),
            store.token_hash(user).unwrap()
        );
    }
    assert_eq!(again.channels().unwrap(), store.channels().unwrap());
    // The restored store takes new clips after the old ones.
    let next = send(&again, "alice", "crew", &["bob"]);
    assert!(next.seq > clips.iter().map(|m| m.seq).max().unwrap());

    // Into an empty dir that exists, too.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert_eq!(restore(&out, &empty, EXTRAS).unwrap().clips, 6);
    assert_eq!(
        SqliteStore::open(&empty)
            .unwrap()
            .clip_audio(&clips[1].id)
            .unwrap(),
        audio(&clips[1])
    );

    // Neither overwrites.
    assert!(matches!(
        store.backup(&out, EXTRAS, "t"),
        Err(BackupError::OutExists(_))
    ));
    assert!(matches!(
        restore(&out, &target, EXTRAS),
        Err(RestoreError::NotEmpty(_))
    ));
}

#[test]
fn clips_erased_while_a_backup_runs_are_in_it_as_they_are_after_without_a_byte_of_payload() {
    let (tmp, store) = setup();
    let from_alice = send(&store, "alice", "crew", &["bob"]);
    let recalled = send(&store, "bob", "crew", &["alice"]);
    let kept = send(&store, "bob", "crew", &["alice"]);
    let direct = send(&store, "carol", "@bob", &["bob"]);
    let out = tmp.path().join("during.backup");
    let summary = store
        .backup_with(&out, EXTRAS, "t", || {
            // After the snapshot, before the copy: the rows change, then the bytes go.
            assert_eq!(store.purge_user("alice").unwrap(), 1);
            store
                .recall_clip(&recalled.id, &["alice".to_string()])
                .unwrap()
                .unwrap();
        })
        .unwrap();
    assert_eq!(summary.erased_meanwhile, 2);
    assert_eq!(summary.clips, 4);

    let target = tmp.path().join("restored");
    restore(&out, &target, EXTRAS).unwrap();
    let again = SqliteStore::open(&target).unwrap();
    let crew = "crew".parse().unwrap();
    assert_eq!(
        again.history("bob", &crew, 10, None).unwrap(),
        store.history("bob", &crew, 10, None).unwrap(),
        "the erased clips as they are now, the others as they were"
    );
    let purged = again.clip(&from_alice.id).unwrap().unwrap();
    assert_eq!(purged.from, crate::PURGED_SENDER);
    assert!(again.clip_audio(&from_alice.id).is_err());
    assert_eq!(
        again.clip(&recalled.id).unwrap().unwrap().content,
        Content::Recalled
    );
    assert!(again.clip_audio(&recalled.id).is_err());
    assert_eq!(
        again.pending("alice", 0, 10).unwrap(),
        store.pending("alice", 0, 10).unwrap(),
        "the recall's notice is queued as it is live"
    );
    assert_eq!(again.clip_audio(&kept.id).unwrap(), audio(&kept));
    assert_eq!(again.clip_audio(&direct.id).unwrap(), audio(&direct));
    for (path, bytes) in all_files(&target.join("clips")) {
        for gone in [&from_alice, &recalled] {
            assert!(
                !contains(&bytes, &audio(gone)),
                "{} holds an erased payload",
                path.display()
            );
        }
    }
}

#[test]
fn clips_committed_while_a_backup_runs_are_not_in_it_nor_a_byte_of_them() {
    let (tmp, store) = setup();
    let early: Vec<_> = (0..3)
        .map(|_| send(&store, "alice", "crew", &["bob"]))
        .collect();
    let out = tmp.path().join("busy.backup");
    let mut late = Vec::new();
    let summary = store
        .backup_with(&out, EXTRAS, "t", || {
            // Appended to the same segment as the early ones, after the snapshot.
            late = (0..3)
                .map(|_| send(&store, "bob", "crew", &["alice"]))
                .collect();
        })
        .unwrap();
    assert_eq!((summary.clips, summary.erased_meanwhile), (3, 0));
    let backup = fs::read(&out).unwrap();
    for m in &late {
        assert!(!contains(&backup, &audio(m)), "a later clip's payload");
    }
    let target = tmp.path().join("restored");
    restore(&out, &target, EXTRAS).unwrap();
    let again = SqliteStore::open(&target).unwrap();
    for m in &early {
        assert_eq!(again.clip_audio(&m.id).unwrap(), audio(m));
    }
    for m in &late {
        assert_eq!(again.clip(&m.id).unwrap(), None);
    }
    // The restored store appends after what it holds, to a segment of its own.
    let next = send(&again, "bob", "crew", &["alice"]);
    assert_eq!(again.clip_audio(&next.id).unwrap(), audio(&next));
}

#[test]
fn clips_deleted_while_a_backup_runs_are_not_in_it() {
    let (tmp, store) = setup();
    for _ in 0..3 {
        send(&store, "alice", "crew", &["bob"]);
    }
    let out = tmp.path().join("retention.backup");
    let summary = store
        .backup_with(&out, EXTRAS, "t", || {
            assert_eq!(store.delete_clips_before(i64::MAX).unwrap(), 3);
        })
        .unwrap();
    assert_eq!(summary.erased_meanwhile, 3);
    assert_eq!(summary.clips, 0);
    assert_eq!(summary.files, 2, "cert.pem and the database: no segment");
    let target = tmp.path().join("restored");
    assert_eq!(restore(&out, &target, EXTRAS).unwrap().clips, 0);
    assert!(
        SqliteStore::open(&target)
            .unwrap()
            .pending("bob", 0, 10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_payload_gone_while_its_row_points_at_it_fails_the_backup() {
    let (tmp, store) = setup();
    let m = send(&store, "alice", "crew", &["bob"]);
    let data = tmp.path().join("data");
    for (path, _) in all_files(&data.join("clips/seg")) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(3)
            .unwrap();
    }
    let out = tmp.path().join("damaged.backup");
    let e = store.backup(&out, EXTRAS, "t").unwrap_err();
    assert!(matches!(e, BackupError::PayloadMissing { .. }), "{e}");
    assert!(!out.exists() && !with_suffix(&out, ".partial").exists());
    assert!(store.clip(&m.id).unwrap().is_some());
}

/// A tar of `(path, data)` entries, with raw headers so that any path goes in.
fn forge(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = header(data.len() as u64, 0);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A manifest listing `files` with their true sizes and checksums.
fn manifest_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    serde_json::to_vec(&Manifest {
        format: FORMAT,
        created_at_ms: 0,
        created_by: "forger".into(),
        clips: 0,
        files: files
            .iter()
            .map(|(path, data)| FileEntry {
                path: path.to_string(),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            })
            .collect(),
    })
    .unwrap()
}

/// Restores `bytes` (written as a file) into a new dir; the error, after checking that
/// nothing was made beside it.
fn refused(bytes: &[u8]) -> RestoreError {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("in.backup");
    fs::write(&file, bytes).unwrap();
    let target = tmp.path().join("restored");
    let e = restore(&file, &target, EXTRAS).unwrap_err();
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["in.backup"], "{e}: nothing else is left");
    e
}

#[test]
fn hostile_or_damaged_backups_are_refused_and_leave_nothing() {
    let (tmp, store) = setup();
    send(&store, "alice", "crew", &["bob"]);
    let out = tmp.path().join("good.backup");
    store.backup(&out, EXTRAS, "t").unwrap();
    let good = fs::read(&out).unwrap();

    // Cut short: in the middle of an entry, and at an entry's end.
    let e = refused(&good[..good.len() / 2]);
    assert!(matches!(e, RestoreError::Truncated(_)), "{e}");
    let entries = entries_of(&out);
    let first_two: Vec<(&str, &[u8])> = entries[..2]
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let e = refused(&forge(&first_two));
    assert!(matches!(e, RestoreError::Truncated(_)), "{e}");

    // One byte changed inside the database's entry.
    let mut archive = tar::Archive::new(std::io::Cursor::new(&good));
    let db_at = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path_bytes().as_ref() == DB.as_bytes())
        .unwrap()
        .raw_file_position() as usize;
    let mut flipped = good.clone();
    flipped[db_at + 100] ^= 0x55;
    let e = refused(&flipped);
    assert!(matches!(e, RestoreError::Checksum(ref p) if p == DB), "{e}");

    // Paths out of the data dir: listed in the manifest, or only held.
    let evil: &[u8] = b"pwned";
    let e = refused(&forge(&[
        (MANIFEST, &manifest_of(&[("../evil", evil), (DB, b"x")])),
        ("../evil", evil),
    ]));
    assert!(
        matches!(e, RestoreError::UnsafePath(ref p) if p == "../evil"),
        "{e}"
    );
    let e = refused(&forge(&[
        (MANIFEST, &manifest_of(&[(DB, b"x")])),
        ("../evil", evil),
    ]));
    assert!(matches!(e, RestoreError::UnsafePath(_)), "{e}");
    let e = refused(&forge(&[(
        MANIFEST,
        &manifest_of(&[("/etc/evil", evil), (DB, b"x")]),
    )]));
    assert!(matches!(e, RestoreError::UnsafePath(_)), "{e}");

    // A symbolic link where a file should be.
    let mut b = tar::Builder::new(Vec::new());
    let manifest = manifest_of(&[(DB, b"")]);
    b.append_data(
        &mut header(manifest.len() as u64, 0),
        MANIFEST,
        &manifest[..],
    )
    .unwrap();
    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, DB, "/etc/passwd").unwrap();
    let e = refused(&b.into_inner().unwrap());
    assert!(matches!(e, RestoreError::NotRegular { .. }), "{e}");

    // More than the disk holds, refused before a byte is written.
    let mut huge: Manifest = serde_json::from_slice(&manifest_of(&[(DB, b"")])).unwrap();
    huge.files[0].size = 1 << 62;
    let e = refused(&forge(&[(MANIFEST, &serde_json::to_vec(&huge).unwrap())]));
    assert!(matches!(e, RestoreError::NoSpace { .. }), "{e}");

    // Checksums right, but the database is no database.
    let junk: &[u8] = &[7u8; 4096];
    let e = refused(&forge(&[
        (MANIFEST, &manifest_of(&[(DB, junk)])),
        (DB, junk),
    ]));
    assert!(matches!(e, RestoreError::Integrity(_)), "{e}");

    // Not a backup at all.
    let e = refused(b"hello, this is not a tar file at all; it is much too short");
    assert!(
        matches!(e, RestoreError::NotABackup(_) | RestoreError::Damaged(_)),
        "{e}"
    );
}
