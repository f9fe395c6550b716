//! Backups of a running relay through the real binary: `walkie-relay backup` while clips keep
//! arriving, `walkie-relay restore` into a new data dir, and a second relay on it with the
//! same certificate, history and audio bytes for every clip acknowledged before the backup
//! began; and the refusals: a hostile, truncated or damaged backup file, a data dir that is
//! not empty, a backup file that exists, a NATS store. Loopback only, bounded in time.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_relay::RelayConfig;

const RELAY: &str = env!("CARGO_BIN_EXE_walkie-relay");

/// Most clips the sender sends, whatever happens.
const MAX_CLIPS: usize = 300;

/// Runs `walkie-relay --data-dir DATA ARGS...`.
fn relay_cli(data: &Path, args: &[&OsStr]) -> Output {
    Command::new(RELAY)
        .env("RUST_LOG", "warn")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("walkie-relay runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A short tone clip, its pitch set by `i` so that every clip's audio differs.
fn tone_clip(i: usize) -> (walkie_proto::clip::CodecParams, Vec<Vec<u8>>, u64) {
    let step = 0.01 + 0.002 * (i % 50) as f32;
    let pcm: Vec<f32> = (0..240 * 48)
        .map(|n| (n as f32 * step).sin() * 0.3)
        .collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    (clip.params, clip.packets, clip.samples)
}

fn crew() -> Target {
    Target::Channel("crew".into())
}

fn config() -> RelayConfig {
    RelayConfig {
        clips_per_minute: 100_000,
        bytes_per_second: 64 << 20,
        ..RelayConfig::default()
    }
}

/// Waits until `acked` holds at least `n` clips.
async fn until_acked(acked: &Mutex<Vec<ClipId>>, n: usize) {
    within(60, "clips acknowledged", async {
        while acked.lock().expect("lock").len() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_steady_sends_restores_to_a_relay_with_the_same_identity_history_and_audio()
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = start_relay(&data, config()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);

    // Alice sends clips one after another; each acknowledged one (stored durably) is noted.
    let acked = Arc::new(Mutex::new(Vec::<ClipId>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let alice_c = relay.connect(&alice).await;
    let sender = tokio::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        async move {
            for i in 0..MAX_CLIPS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (params, packets, samples) = tone_clip(i);
                let header = ClipHeader {
                    id: ClipId::random(),
                    to: crew(),
                    started_at_ms: now_ms(),
                    codec: params,
                };
                alice_c
                    .send_clip(&header, &packets, samples)
                    .await
                    .expect("the relay stores every clip");
                acked.lock().expect("lock").push(header.id);
            }
        }
    });

    until_acked(&acked, 20).await;
    let before: Vec<ClipId> = acked.lock().expect("lock").clone();
    let out = tmp.path().join("relay.backup");
    let backup = {
        let (data, out) = (data.clone(), out.clone());
        tokio::task::spawn_blocking(move || {
            relay_cli(
                &data,
                &["backup".as_ref(), "--out".as_ref(), out.as_os_str()],
            )
        })
    };
    let backup = within(120, "the backup", backup).await.expect("joined");
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    let said = text(&backup.stdout);
    let line = said.lines().last().expect("a line");
    let prefix = format!("backup {}: ", out.display());
    let counts = line.strip_prefix(&prefix).expect("the summary line");
    let (clips, bytes) = counts.split_once(" clips, ").expect("N clips, M bytes");
    let clips: usize = clips.parse().expect("a count");
    let bytes: u64 = bytes
        .strip_suffix(" bytes")
        .expect("bytes")
        .parse()
        .expect("a size");
    assert!(clips >= before.len(), "{line}");
    assert_eq!(bytes, std::fs::metadata(&out).expect("the backup").len());
    assert!(!tmp.path().join("relay.backup.partial").exists());

    // The sends went on while the backup ran and after it.
    let after_backup = acked.lock().expect("lock").len();
    eprintln!(
        "{} clips acknowledged when the backup began, {after_backup} when it ended; {clips} in it",
        before.len()
    );
    until_acked(&acked, after_backup + 3).await;
    stop.store(true, Ordering::Relaxed);
    within(30, "the sender", sender)
        .await
        .expect("the sender ends");
    let sent: Vec<ClipId> = acked.lock().expect("lock").clone();
    assert!(sent.len() > before.len());

    // What the first relay serves, for every clip sent.
    let bob_1 = relay.connect(&bob).await;
    let mut served = std::collections::HashMap::new();
    for id in &sent {
        let (meta, audio) = bob_1.fetch(*id).await.expect("fetch");
        served.insert(*id, (meta, audio));
    }

    let restored = tmp.path().join("restored");
    let out_arg = out.clone();
    let restore = tokio::task::spawn_blocking({
        let restored = restored.clone();
        move || relay_cli(&restored, &["restore".as_ref(), out_arg.as_os_str()])
    });
    let restore = within(120, "the restore", restore).await.expect("joined");
    assert!(restore.status.success(), "{}", text(&restore.stderr));
    assert_eq!(
        text(&restore.stdout).trim(),
        format!("restored {clips} clips into {}", restored.display())
    );

    // A second relay on the restored dir: the same certificate, the same token hashes.
    let second = start_relay(&restored, config()).await;
    assert_eq!(
        second.handle.fingerprint, relay.handle.fingerprint,
        "clients' pins still hold"
    );
    let bob_2 = second.connect(&second.config_for("bob", &bob.token)).await;
    let history = bob_2
        .history(Some(crew()), 500, None)
        .await
        .expect("history");
    assert_eq!(
        history.len(),
        clips,
        "the backup's clips, no more, no fewer"
    );
    let in_history: std::collections::HashSet<ClipId> = history.iter().map(|m| m.id).collect();
    for id in &before {
        assert!(
            in_history.contains(id),
            "clip {id}, acknowledged before the backup began, is in the restored history"
        );
    }
    for meta in &history {
        let (first_meta, first_audio) = served
            .get(&meta.id)
            .unwrap_or_else(|| panic!("clip {} was sent", meta.id));
        assert_eq!(meta, first_meta);
        let (_, audio) = bob_2
            .fetch(meta.id)
            .await
            .expect("fetch from the restored relay");
        assert_eq!(
            &audio, first_audio,
            "clip {}'s audio is byte for byte what the first relay serves",
            meta.id
        );
    }
    // The clips came in order: the restored ones are the first ones sent.
    let order: Vec<ClipId> = history.iter().map(|m| m.id).collect();
    assert_eq!(order, sent[..clips]);

    second.handle.shutdown().await;
    relay.handle.shutdown().await;
}

/// A backup of a small relay's data dir, made through the binary; its path.
fn small_backup(dir: &Path) -> PathBuf {
    let data = dir.join("relay");
    let store = walkie_store::sqlite::SqliteStore::open(&data).expect("store");
    walkie_store::conformance::populate(&store);
    for _ in 0..3 {
        walkie_store::conformance::send(&store, "alice", "crew", &["bob"]);
    }
    drop(store);
    let out = dir.join("small.backup");
    let made = relay_cli(
        &data,
        &["backup".as_ref(), "--out".as_ref(), out.as_os_str()],
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    out
}

/// Restores `file` into `DIR/restored` through the binary; asserts it is refused with a
/// message holding `why` and that nothing was made (no `restored`, no partial dir).
fn refused(dir: &Path, file: &Path, why: &str) {
    let before = entries(dir);
    let target = dir.join("restored");
    let out = relay_cli(&target, &["restore".as_ref(), file.as_os_str()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot restore") && err.contains(why), "{err}");
    assert!(!target.exists(), "{err}");
    assert_eq!(entries(dir), before, "nothing left beside it: {err}");
}

/// The names in a dir, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A tar whose entries are written with raw headers, so that any path goes in.
fn forge(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, *data).expect("appended");
    }
    b.into_inner().expect("tar")
}

#[test]
fn hostile_truncated_or_damaged_backups_are_refused_and_make_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good_path = small_backup(tmp.path());
    let good = std::fs::read(&good_path).expect("backup");
    let cases = tmp.path().join("cases");
    std::fs::create_dir(&cases).expect("dir");
    let case = |name: &str, bytes: &[u8]| {
        let path = cases.join(name);
        std::fs::write(&path, bytes).expect("written");
        path
    };

    // A path out of the data dir.
    let evil: &[u8] = b"pwned";
    let manifest = serde_json::json!({
        "format": 1, "created_at_ms": 0, "created_by": "forger", "clips": 0,
        "files": [
            {"path": "../evil", "size": evil.len(), "sha256": "00".repeat(32)},
            {"path": "walkie.db", "size": 0, "sha256": "00".repeat(32)},
        ],
    })
    .to_string();
    let file = case(
        "evil.backup",
        &forge(&[
            ("walkie-backup.json", manifest.as_bytes()),
            ("../evil", evil),
        ]),
    );
    refused(&cases, &file, "\"../evil\", which is no file of a data dir");
    assert!(!tmp.path().join("evil").exists());

    // Cut short.
    let file = case("short.backup", &good[..good.len() * 2 / 3]);
    refused(&cases, &file, "truncated");

    // One byte of a clip segment changed.
    let mut archive = tar::Archive::new(std::io::Cursor::new(&good));
    let seg_at = archive
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| e.path_bytes().starts_with(b"clips/seg/"))
        .expect("a segment")
        .raw_file_position() as usize;
    let mut flipped = good.clone();
    flipped[seg_at + 10] ^= 0x20;
    let file = case("flipped.backup", &flipped);
    refused(&cases, &file, "does not match its SHA-256");

    // Not a backup at all.
    let file = case("junk.backup", b"junk");
    refused(&cases, &file, "not a walkie backup");

    // The good one still restores.
    let target = cases.join("restored");
    let out = relay_cli(&target, &["restore".as_ref(), good_path.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("restored 3 clips into {}", target.display())
    );
}

#[test]
fn restore_into_a_dir_in_use_and_backup_over_a_file_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backup = small_backup(tmp.path());
    let kept = std::fs::read(&backup).expect("backup");

    // Restore into a data dir that holds something.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).expect("dir");
    std::fs::write(busy.join("notes.txt"), b"mine").expect("written");
    let out = relay_cli(&busy, &["restore".as_ref(), backup.as_os_str()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not an empty directory"), "{err}");
    assert_eq!(entries(&busy), ["notes.txt"]);

    // Back up over an existing file.
    let data = tmp.path().join("relay");
    let out = relay_cli(
        &data,
        &["backup".as_ref(), "--out".as_ref(), backup.as_os_str()],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read(&backup).expect("backup"), kept);

    // Back up a dir that holds no relay data (a mistyped --data-dir).
    let nothing = tmp.path().join("nothing");
    let out = relay_cli(
        &nothing,
        &[
            "backup".as_ref(),
            "--out".as_ref(),
            tmp.path().join("x").as_os_str(),
        ],
    );
    assert!(text(&out.stderr).contains("holds no relay data"));
    assert!(!nothing.exists() && !tmp.path().join("x").exists());

    // A NATS store is backed up with the cluster's tools, refused before connecting.
    let out = Command::new(RELAY)
        .args(["--store", "nats://127.0.0.1:9", "--data-dir"])
        .arg(&data)
        .args(["backup", "--out"])
        .arg(tmp.path().join("nats.backup"))
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nats stream backup"), "{err}");
}
