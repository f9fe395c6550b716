//! The command-line contract, driven through the real binaries: `walkie-relay serve`, user
//! and channel admin while it runs, and every `walkie` subcommand with its output format
//! and exit codes.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use support::walkie_at_home;

const WALKIE: &str = env!("CARGO_BIN_EXE_walkie");
const RELAY: &str = env!("CARGO_BIN_EXE_walkie-relay");

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

struct Served {
    child: Child,
    addr: String,
    fingerprint: String,
    data: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path) -> Served {
    let mut child = Command::new(RELAY)
        .args(["--data-dir"])
        .arg(data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("relay starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    let second = lines.next().expect("a line").expect("utf-8");
    let addr = first
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let fingerprint = second
        .strip_prefix("fingerprint ")
        .expect("fingerprint line")
        .to_string();
    assert!(
        fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 64,
        "{fingerprint}"
    );
    // Keep draining stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served {
        child,
        addr,
        fingerprint,
        data: data.to_path_buf(),
    }
}

fn admin(data: &Path, args: &[&str]) -> Output {
    Command::new(RELAY)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("runs")
}

fn ok_stdout(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn add_user(data: &Path, name: &str) -> String {
    let out = ok_stdout(admin(data, &["user", "add", name]));
    out.lines().last().expect("token line").trim().to_string()
}

/// A `walkie` command for `user`, with its own home (profile, outbox) under `home`.
fn walkie(relay: &Served, home: &Path, user: &str, token: &str) -> Command {
    let mut cmd = Command::new(WALKIE);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env("WALKIE_RELAY", &relay.addr)
        .env("WALKIE_USER", user)
        .env("WALKIE_TOKEN", token)
        .env("WALKIE_CERT", relay.data.join("cert.pem"));
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn full_cli_contract_over_a_real_relay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = serve(&data);
    assert!(data.join("cert.pem").exists());

    // Admin commands work while the relay runs, and it sees them without a restart.
    let alice = add_user(&data, "alice");
    let bob = add_user(&data, "bob");
    let carol = add_user(&data, "carol");
    assert_eq!(alice.len(), 64);
    assert_eq!(
        ok_stdout(admin(&data, &["user", "list"])),
        "alice\nbob\ncarol\n"
    );
    ok_stdout(admin(
        &data,
        &["channel", "add", "crew", "--members", "alice,bob"],
    ));
    assert_eq!(
        ok_stdout(admin(
            &data,
            &["channel", "members", "crew", "--add", "carol"]
        )),
        "alice\nbob\ncarol\n"
    );
    assert_eq!(
        ok_stdout(admin(&data, &["channel", "list"])),
        "crew alice,bob,carol\n"
    );
    let dup = admin(&data, &["user", "add", "alice"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("already exists"), "{}", stderr(&dup));
    let bad = admin(&data, &["user", "add", "../evil"]);
    assert_eq!(bad.status.code(), Some(1));

    let homes = tmp.path().join("homes");
    // bob listens in the background; alice sends with the fingerprint instead of the cert.
    let save = tmp.path().join("bob-saved");
    let bob_listen = walkie(&relay, &homes.join("bob"), "bob", &bob)
        .args(["listen", "--count", "1", "--timeout", "60", "--save-dir"])
        .arg(&save)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen starts");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sent = walkie(&relay, &homes.join("alice"), "alice", &alice)
        .env_remove("WALKIE_CERT")
        .env("WALKIE_FINGERPRINT", &relay.fingerprint)
        .args(["send", "--to", "crew"])
        .arg(sample("hello-crew.wav"))
        .output()
        .expect("send runs");
    let id = ok_stdout(sent).lines().last().expect("id line").to_string();
    assert_eq!(id.len(), 32, "clip id on the last line: {id}");

    let listened = bob_listen.wait_with_output().expect("listen ends");
    let line = ok_stdout(listened);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..3], &[id.as_str(), "alice", "crew"], "{line}");
    let duration: u64 = fields[3].parse().expect("duration");
    assert!(duration.abs_diff(7394) <= 20, "duration {duration}");
    let wav = hound::WavReader::open(save.join(format!("{id}.wav"))).expect("saved wav");
    assert_eq!(
        (
            wav.spec().sample_rate,
            wav.spec().channels,
            wav.spec().bits_per_sample
        ),
        (48_000, 1, 16)
    );
    assert!(save.join(format!("{id}.opus")).exists());

    // carol was offline: her listen gets the backlog.
    let carol_out = walkie(&relay, &homes.join("carol"), "carol", &carol)
        .args(["listen", "--count", "1", "--timeout", "30"])
        .output()
        .expect("runs");
    assert!(ok_stdout(carol_out).starts_with(&id));

    // history, text and JSON.
    let text = ok_stdout(
        walkie(&relay, &homes.join("bob"), "bob", &bob)
            .args(["history", "crew"])
            .output()
            .expect("runs"),
    );
    assert!(text.starts_with(&format!("{id} alice crew ")), "{text}");
    let json = ok_stdout(
        walkie(&relay, &homes.join("bob"), "bob", &bob)
            .args(["history", "crew", "--json"])
            .output()
            .expect("runs"),
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let first = &v.as_array().expect("array")[0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["from"], "alice");
    assert_eq!(first["to"], "crew");
    assert!(
        chrono::DateTime::parse_from_rfc3339(first["started_at"].as_str().expect("string")).is_ok()
    );
    assert!(first["duration_ms"].as_u64().expect("number") > 7000);
    assert!(first["bytes"].as_u64().expect("number") > 10_000);

    // fetch: .opus is the stored file (opusinfo-clean), .wav decodes.
    let fetched = tmp.path().join("fetched.opus");
    ok_stdout(
        walkie(&relay, &homes.join("bob"), "bob", &bob)
            .args(["fetch", &id, "--out"])
            .arg(&fetched)
            .output()
            .expect("runs"),
    );
    let info = Command::new("opusinfo")
        .arg(&fetched)
        .output()
        .expect("opusinfo is installed (opus-tools)");
    assert!(
        info.status.success() && !String::from_utf8_lossy(&info.stdout).contains("WARNING"),
        "{info:?}"
    );
    let fetched_wav = tmp.path().join("fetched.wav");
    ok_stdout(
        walkie(&relay, &homes.join("bob"), "bob", &bob)
            .args(["fetch", &id, "--out"])
            .arg(&fetched_wav)
            .output()
            .expect("runs"),
    );
    assert_eq!(
        hound::WavReader::open(&fetched_wav)
            .expect("wav")
            .duration(),
        354_891
    );
    let bad_ext = walkie(&relay, &homes.join("bob"), "bob", &bob)
        .args(["fetch", &id, "--out", "x.mp3"])
        .output()
        .expect("runs");
    assert_eq!(bad_ext.status.code(), Some(2));

    // export: every readable clip plus index.json.
    let export = tmp.path().join("export");
    ok_stdout(
        walkie(&relay, &homes.join("bob"), "bob", &bob)
            .args(["export", "--out"])
            .arg(&export)
            .output()
            .expect("runs"),
    );
    assert!(export.join(format!("{id}.opus")).exists());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index.as_array().expect("array").len(), 1);

    // A listen with nothing to receive times out with status 1 and a sentence.
    let idle = walkie(&relay, &homes.join("bob"), "bob", &bob)
        .args(["listen", "--count", "1", "--timeout", "1"])
        .output()
        .expect("runs");
    assert_eq!(idle.status.code(), Some(1));
    assert!(stderr(&idle).contains("within 1 s"), "{}", stderr(&idle));

    // A wrong token is refused with a clear message and status 1.
    let wrong = walkie(&relay, &homes.join("bob"), "bob", &carol)
        .args(["history", "crew"])
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("wrong token"), "{}", stderr(&wrong));

    // login saves a profile that later commands use without flags or environment.
    ok_stdout(
        walkie(&relay, &homes.join("dave"), "bob", &bob)
            .arg("login")
            .output()
            .expect("runs"),
    );
    let from_profile = walkie(&relay, &homes.join("dave"), "bob", &bob)
        .env_remove("WALKIE_RELAY")
        .env_remove("WALKIE_USER")
        .env_remove("WALKIE_TOKEN")
        .env_remove("WALKIE_CERT")
        .args(["history", "crew"])
        .output()
        .expect("runs");
    assert!(ok_stdout(from_profile).starts_with(&id));

    // Removing a user refuses their next connection.
    ok_stdout(admin(&data, &["user", "remove", "carol"]));
    let gone = walkie(&relay, &homes.join("carol"), "carol", &carol)
        .args(["history", "crew"])
        .output()
        .expect("runs");
    assert_eq!(gone.status.code(), Some(1));
}

#[test]
fn relay_shuts_down_gracefully_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut relay = serve(&tmp.path().join("relay"));
    let pid = relay.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = relay.child.wait().expect("relay exits");
    assert!(exit.success(), "relay exit status after SIGTERM: {exit:?}");
}

#[test]
fn offline_codec_commands_and_their_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opus = tmp.path().join("out.opus");
    let wav = tmp.path().join("out.wav");
    let run = |args: &[&std::ffi::OsStr]| Command::new(WALKIE).args(args).output().expect("runs");
    let out = run(&[
        "encode".as_ref(),
        sample("status-report.wav").as_os_str(),
        opus.as_os_str(),
        "--bitrate".as_ref(),
        "16000".as_ref(),
    ]);
    ok_stdout(out);
    let info = Command::new("opusinfo")
        .arg(&opus)
        .output()
        .expect("opusinfo is installed (opus-tools)");
    assert!(info.status.success(), "{info:?}");
    let dec = Command::new("opusdec")
        .args(["--rate", "48000"])
        .arg(&opus)
        .arg(tmp.path().join("c.wav"))
        .output()
        .expect("opusdec is installed");
    assert!(dec.status.success(), "{dec:?}");
    assert_eq!(
        hound::WavReader::open(tmp.path().join("c.wav"))
            .expect("wav")
            .duration(),
        302_058
    );
    ok_stdout(run(&["decode".as_ref(), opus.as_os_str(), wav.as_os_str()]));
    assert_eq!(
        hound::WavReader::open(&wav).expect("wav").duration(),
        302_058
    );

    // A corrupt Ogg file: one clear sentence, status 1, no panic.
    let corrupt = tmp.path().join("corrupt.opus");
    let mut bytes = std::fs::read(&opus).expect("read");
    bytes.truncate(bytes.len() / 3);
    for b in bytes.iter_mut().skip(200).step_by(7) {
        *b ^= 0x5a;
    }
    std::fs::write(&corrupt, &bytes).expect("write");
    let out = run(&["decode".as_ref(), corrupt.as_os_str(), wav.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("corrupt.opus") && !err.contains("panicked"),
        "{err}"
    );
    let not_ogg = run(&[
        "decode".as_ref(),
        sample("hello-crew.wav").as_os_str(),
        wav.as_os_str(),
    ]);
    assert_eq!(not_ogg.status.code(), Some(1));
    assert!(!stderr(&not_ogg).contains("panicked"));

    // Usage errors exit with 2; bad settings with 1 and a sentence.
    assert_eq!(run(&["encode".as_ref()]).status.code(), Some(2));
    assert_eq!(
        run(&[
            "send".as_ref(),
            "--to".as_ref(),
            "../x".as_ref(),
            "a.wav".as_ref()
        ])
        .status
        .code(),
        Some(2)
    );
    let bad_rate = run(&[
        "encode".as_ref(),
        sample("hello-crew.wav").as_os_str(),
        opus.as_os_str(),
        "--frame-ms".as_ref(),
        "7".as_ref(),
    ]);
    assert_eq!(bad_rate.status.code(), Some(1));
    let missing = run(&[
        "encode".as_ref(),
        "/nonexistent.wav".as_ref(),
        opus.as_os_str(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/nonexistent.wav"),
        "{}",
        stderr(&missing)
    );
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory under `dir` (none when `dir` does not exist).
fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = if dir.exists() {
        vec![dir.to_path_buf()]
    } else {
        Vec::new()
    };
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir)
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect()
}

/// True if `path` sits directly in a directory named `name`.
fn parent_is(path: &Path, name: &str) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == name)
}

#[cfg(unix)]
#[test]
fn relay_data_is_private_and_locked_and_names_are_never_rebound_to_old_history() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    // A data dir left open by an older build or a loose umask.
    std::fs::create_dir_all(&data).expect("dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(data.join("notes.txt"), "x").expect("file");
    std::fs::set_permissions(
        data.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let relay = serve(&data);
    assert_eq!(
        (
            mode(&data),
            mode(&data.join("notes.txt")),
            mode(&data.join("cert.pem"))
        ),
        (0o700, 0o600, 0o600)
    );

    // A second relay on the same data dir refuses to start.
    let second = Command::new(RELAY)
        .arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("in use by another walkie-relay"),
        "{}",
        stderr(&second)
    );

    let alice = add_user(&data, "alice");
    add_user(&data, "bob");
    let carol = add_user(&data, "carol");
    ok_stdout(admin(
        &data,
        &["channel", "add", "crew", "--members", "alice,carol"],
    ));
    let homes = tmp.path().join("homes");
    for to in ["@bob", "crew"] {
        let sent = walkie(&relay, &homes.join("alice"), "alice", &alice)
            .args(["send", "--to", to])
            .arg(sample("hello-crew.wav"))
            .output()
            .expect("runs");
        ok_stdout(sent);
    }
    for file in files_under(&data)
        .iter()
        .chain([data.join("walkie.db")].iter())
    {
        assert_eq!(mode(file), 0o600, "{} is not private", file.display());
    }

    // bob leaves; his name is not given to someone else with his direct clips.
    ok_stdout(admin(&data, &["user", "remove", "bob"]));
    let again = admin(&data, &["user", "add", "bob"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("was used before"),
        "{}",
        stderr(&again)
    );
    let reserved = admin(&data, &["user", "add", "purged-user"]);
    assert_eq!(reserved.status.code(), Some(1));
    assert!(
        stderr(&reserved).contains("reserved"),
        "{}",
        stderr(&reserved)
    );

    // alice's audio is purged: carol's export lists her clip as purged and still completes.
    ok_stdout(admin(&data, &["user", "purge", "alice"]));
    let export = tmp.path().join("export");
    let out = walkie(&relay, &homes.join("carol"), "carol", &carol)
        .args(["export", "--out"])
        .arg(&export)
        .output()
        .expect("runs");
    ok_stdout(out);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(export.join("index.json")).expect("index"))
            .expect("json");
    let entries = index.as_array().expect("array");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(
        (entries[0]["purged"].as_bool(), entries[0]["from"].as_str()),
        (Some(true), Some("purged-user")),
        "{index}"
    );
    assert!(
        !files_under(&export)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "opus")),
        "no audio of a purged clip"
    );
}

#[test]
fn a_new_token_ends_the_old_tokens_sessions_within_two_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = serve(&data);
    let old = add_user(&data, "alice");
    let homes = tmp.path().join("homes");
    let mut listening = walkie(&relay, &homes.join("alice"), "alice", &old)
        .args(["listen", "--count", "1", "--timeout", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listen starts");
    // The session is open once a history request with the same token works (and listen has
    // had a moment to connect).
    std::thread::sleep(std::time::Duration::from_millis(800));
    let rotated = ok_stdout(admin(&data, &["user", "token", "alice"]));
    let new = rotated
        .lines()
        .last()
        .expect("token line")
        .trim()
        .to_string();
    assert_eq!(new.len(), 64, "{rotated}");
    assert_ne!(new, old);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = listening.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the old token's session is still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let ended = started.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut listening.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        ended <= std::time::Duration::from_millis(2500),
        "ended after {ended:?}"
    );
    assert!(err.contains("token"), "{err}");
    let with_old = walkie(&relay, &homes.join("alice"), "alice", &old)
        .args(["history", "@alice"])
        .output()
        .expect("runs");
    assert_eq!(with_old.status.code(), Some(1));
    ok_stdout(
        walkie(&relay, &homes.join("alice"), "alice", &new)
            .args(["history", "@alice"])
            .output()
            .expect("runs"),
    );
    let unknown = admin(&data, &["user", "token", "nobody"]);
    assert_eq!(unknown.status.code(), Some(1));
}

/// The outbox directories under a `walkie` home, by user name.
fn outboxes(home: &Path) -> Vec<String> {
    entries_under(home)
        .into_iter()
        .filter(|p| p.is_dir() && parent_is(p, "outbox"))
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect()
}

#[test]
fn permanent_send_failures_fail_at_once_and_are_never_delivered_later() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = serve(&data);
    let alice = add_user(&data, "alice");
    let bob = add_user(&data, "bob");
    ok_stdout(admin(
        &data,
        &["channel", "add", "crew", "--members", "alice,bob"],
    ));
    ok_stdout(admin(&data, &["channel", "add", "ops", "--members", "bob"]));
    let home = tmp.path().join("alice");
    let send = |user: &str, token: &str, to: &str, file: &Path| {
        let started = Instant::now();
        let out = walkie(&relay, &home, user, token)
            .args(["send", "--to", to])
            .arg(file)
            .output()
            .expect("runs");
        (out, started.elapsed())
    };
    let wav = sample("hello-crew.wav");
    let fast = Duration::from_secs(5);

    // A wrong token or a mistyped name: status 1 at once, the reason, and no outbox left.
    let (out, took) = send("alice", &bob, "crew", &wav);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took < fast
            && stderr(&out).contains("wrong token")
            && !stderr(&out).contains("not acknowledged"),
        "{took:?} {}",
        stderr(&out)
    );
    let (out, _) = send("alicee", &alice, "crew", &wav);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        outboxes(&home).is_empty(),
        "outboxes left behind: {:?}",
        outboxes(&home)
    );

    // A refusal (not a member): status 1, the clip moved to failed/ with its reason.
    ok_stdout(send("alice", &alice, "crew", &wav).0);
    let (out, took) = send("alice", &alice, "ops", &wav);
    assert_eq!(out.status.code(), Some(1));
    assert!(took < fast, "{took:?}");
    // The reasons beside the clips in the outbox's failed/ folder.
    let reasons: Vec<String> = files_under(&home)
        .into_iter()
        .filter(|p| parent_is(p, "failed") && p.extension().is_some_and(|x| x == "txt"))
        .map(|p| std::fs::read_to_string(p).expect("reason"))
        .collect();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].contains("not a member"), "{reasons:?}");

    // A relay that is not the pinned one: status 1 at once, never retried.
    let wrong_pin = format!("sha256:{}", "ab".repeat(32));
    let started = Instant::now();
    let out = walkie(&relay, &home, "alice", &alice)
        .env_remove("WALKIE_CERT")
        .env("WALKIE_FINGERPRINT", &wrong_pin)
        .args(["send", "--to", "crew"])
        .arg(&wav)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        started.elapsed() < fast,
        "a certificate mismatch was retried: {:?}",
        started.elapsed()
    );
    // Given both a certificate and a fingerprint, both must match.
    let out = walkie(&relay, &home, "alice", &alice)
        .env("WALKIE_FINGERPRINT", &wrong_pin)
        .args(["send", "--to", "crew"])
        .arg(&wav)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("fingerprint"), "{}", stderr(&out));

    // A WAV longer than the relay's 60 s, refused from its header, at once.
    let long = tmp.path().join("two-hours.wav");
    let mut bytes = std::fs::read(&wav).expect("sample");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let data_at = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("data chunk");
    let claim = 2 * 3600 * rate * 2;
    bytes[data_at + 4..data_at + 8].copy_from_slice(&claim.to_le_bytes());
    std::fs::write(&long, &bytes).expect("written");
    let (out, took) = send("alice", &alice, "crew", &long);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        took < fast && stderr(&out).contains("at most 60 s"),
        "{took:?} {}",
        stderr(&out)
    );

    // Nothing that failed is delivered by a later good send: crew holds the two good clips.
    ok_stdout(send("alice", &alice, "crew", &wav).0);
    let history = ok_stdout(
        walkie(&relay, &home, "bob", &bob)
            .args(["history", "crew"])
            .output()
            .expect("runs"),
    );
    assert_eq!(history.lines().count(), 2, "{history}");
}

fn failed_with(out: Output, code: i32, says: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout {}\nstderr {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(says),
        "expected {says:?} in: {}",
        stderr(&out)
    );
}

/// A JPEG photo whose EXIF block (an APP1 segment right after the start marker) holds a GPS
/// position, as phones write them.
fn jpeg_with_gps(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, 77])
    });
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )
    .expect("encodes");
    let exif = b"Exif\0\0MM\0*GPSLatitude 48.8584 N GPSLongitude 2.2945 E";
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(exif);
    [&jpeg[..2], &app1, &jpeg[2..]].concat()
}

#[test]
fn invite_links_sign_up_and_people_commands_keep_their_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = serve(&data);
    let alice = add_user(&data, "alice");
    ok_stdout(admin(
        &data,
        &["channel", "add", "crew", "--members", "alice"],
    ));

    let made = ok_stdout(admin(
        &data,
        &[
            "invite",
            "create",
            "--channel",
            "crew",
            "--address",
            &relay.addr,
        ],
    ));
    assert!(
        made.lines()
            .next()
            .expect("first line")
            .starts_with("invite for 1 sign-up until "),
        "{made}"
    );
    let link = made.lines().last().expect("link line").to_string();
    assert!(
        link.starts_with(&format!("walkie://{}/join/", relay.addr))
            && link.ends_with(&format!("#{}", relay.fingerprint)),
        "{link}"
    );
    failed_with(
        admin(
            &data,
            &["invite", "create", "--uses", "0", "--address", &relay.addr],
        ),
        1,
        "--uses",
    );
    failed_with(
        admin(
            &data,
            &[
                "invite",
                "create",
                "--expires",
                "1y",
                "--address",
                &relay.addr,
            ],
        ),
        1,
        "--expires",
    );
    failed_with(
        admin(
            &data,
            &[
                "invite",
                "create",
                "--channel",
                "nope",
                "--address",
                &relay.addr,
            ],
        ),
        1,
        "no channel",
    );

    // Sign-up needs nothing but the link; the profile it saves works on its own.
    let zoe_home = tmp.path().join("zoe");
    let joined = ok_stdout(
        walkie_at_home(&zoe_home)
            .args(["join", &link, "--name", "zoe", "--display", "Zoë 张"])
            .output()
            .expect("runs"),
    );
    assert_eq!(joined.lines().last(), Some("zoe"), "{joined}");
    assert!(joined.contains("member of channel crew"), "{joined}");
    let zoe = |args: &[&str]| walkie_at_home(&zoe_home).args(args).output().expect("runs");
    assert_eq!(
        ok_stdout(zoe(&["profile"])),
        "user zoe\ndisplay Zoë 张\navatar -\ndirect-from anyone\nsuggestions on\n"
    );
    failed_with(
        walkie_at_home(&tmp.path().join("x"))
            .args(["join", &link, "--name", "xia"])
            .output()
            .expect("runs"),
        1,
        "already used",
    );
    failed_with(
        walkie_at_home(&tmp.path().join("x"))
            .args(["join", "walkie://nowhere", "--name", "xia"])
            .output()
            .expect("runs"),
        2,
        "not an invite link",
    );
    assert_eq!(
        ok_stdout(zoe(&["profile", "set", "--direct-from", "contacts"])),
        "user zoe\ndisplay Zoë 张\navatar -\ndirect-from contacts\nsuggestions on\n"
    );
    failed_with(
        zoe(&["profile", "set"]),
        2,
        "--display, --avatar, --no-avatar, --direct-from or --suggestions",
    );
    failed_with(
        zoe(&["profile", "set", "--display", ""]),
        1,
        "cannot be empty",
    );

    // An avatar from a photo with its GPS position in EXIF: only pixels reach anyone.
    let photo = tmp.path().join("photo.jpg");
    std::fs::write(&photo, jpeg_with_gps(800, 600)).expect("written");
    let set = ok_stdout(zoe(&[
        "profile",
        "set",
        "--avatar",
        photo.to_str().expect("utf-8"),
    ]));
    let tag = set
        .lines()
        .find_map(|l| l.strip_prefix("avatar "))
        .expect("avatar line")
        .to_string();
    assert_eq!(tag.len(), 16, "{set}");
    for (args, side) in [(vec![], 256), (vec!["--small"], 64)] {
        let out = tmp.path().join(format!("zoe-{side}.png"));
        let mut cmd = vec!["avatar", "@zoe", "--out", out.to_str().expect("utf-8")];
        cmd.extend(args);
        ok_stdout(
            walkie(&relay, &tmp.path().join("alice"), "alice", &alice)
                .args(&cmd)
                .output()
                .expect("runs"),
        );
        let png = std::fs::read(&out).expect("saved");
        let img =
            image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("a PNG");
        assert_eq!((img.width(), img.height()), (side, side));
        assert!(
            !png.windows(3).any(|w| w == b"GPS") && !png.windows(4).any(|w| w == b"Exif"),
            "no metadata survives"
        );
    }
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "not a picture").expect("written");
    failed_with(
        zoe(&["profile", "set", "--avatar", text.to_str().expect("utf-8")]),
        1,
        "not a PNG, JPEG or WebP",
    );
    let big = tmp.path().join("big.jpg");
    std::fs::write(&big, vec![0xFF; 2 * 1024 * 1024 + 1]).expect("written");
    failed_with(
        zoe(&["profile", "set", "--avatar", big.to_str().expect("utf-8")]),
        1,
        "at most 2 MB",
    );
    // A 300-byte PNG that claims 60 000 × 60 000 pixels (14 GB decoded): refused from its header.
    let bomb = tmp.path().join("bomb.png");
    let mut bytes = Vec::new();
    image::RgbImage::new(8, 8)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encodes");
    bytes[16..24].copy_from_slice(&[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60]);
    std::fs::write(&bomb, &bytes).expect("written");
    let out = zoe(&["profile", "set", "--avatar", bomb.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("too large") || stderr(&out).contains("not a readable"),
        "{}",
        stderr(&out)
    );
    assert!(
        ok_stdout(zoe(&["profile"])).contains(&format!("avatar {tag}\n")),
        "the avatar stays after refusals"
    );

    // Contacts: zoe asks, alice sees and accepts.
    let alice_cmd = |args: &[&str]| {
        walkie(&relay, &tmp.path().join("alice"), "alice", &alice)
            .args(args)
            .output()
            .expect("runs")
    };
    assert_eq!(
        ok_stdout(zoe(&["contact", "add", "@alice"])),
        "alice requested\n"
    );
    assert_eq!(
        ok_stdout(alice_cmd(&["contacts"])),
        "zoe incoming offline Zoë 张\n"
    );
    assert_eq!(
        ok_stdout(alice_cmd(&["contact", "accept", "zoe"])),
        "zoe contact\n"
    );
    assert_eq!(ok_stdout(zoe(&["contacts"])), "alice contact offline -\n");
    failed_with(zoe(&["contact", "accept", "nobody"]), 1, "no user @nobody");
    assert_eq!(
        ok_stdout(alice_cmd(&["suggest"])),
        "",
        "zoe is already a contact"
    );

    // People nearby: a place or coordinates; only the coarse cell leaves the machine.
    let seen = zoe(&["nearby", "--at", "48.8584,2.2945"]);
    assert!(
        stderr(&seen).contains("visible to people nearby until"),
        "{}",
        stderr(&seen)
    );
    assert_eq!(ok_stdout(seen), "");
    let near = ok_stdout(alice_cmd(&["nearby", "--at", "Paris"]));
    assert!(
        near.starts_with("zoe ") && near.ends_with(" Zoë 张\n") && near.lines().count() == 1,
        "{near}"
    );
    failed_with(
        alice_cmd(&["nearby", "--at", "Atlantis"]),
        2,
        "give coordinates",
    );
    assert_eq!(ok_stdout(zoe(&["nearby", "--off"])), "");
    assert_eq!(ok_stdout(alice_cmd(&["nearby", "--at", "Paris"])), "");

    // Channels users make.
    assert_eq!(
        ok_stdout(zoe(&["channel", "create", "team"])),
        "team zoe zoe -\n"
    );
    assert_eq!(
        ok_stdout(zoe(&["channel", "invite", "team", "@alice"])),
        "team zoe alice,zoe -\n"
    );
    assert_eq!(
        ok_stdout(zoe(&["channel", "rename", "team", "Team Zoë"])),
        "team zoe alice,zoe Team Zoë\n"
    );
    assert_eq!(
        ok_stdout(alice_cmd(&["channel", "list"])),
        "crew - alice,zoe -\nteam zoe alice,zoe Team Zoë\n"
    );
    failed_with(
        alice_cmd(&["channel", "delete", "team"]),
        1,
        "only the owner",
    );
    let sent = ok_stdout(alice_cmd(&[
        "send",
        "--to",
        "team",
        sample("hello-crew.wav").to_str().expect("utf-8"),
    ]));
    assert_eq!(sent.trim().len(), 32);
    // Export carries the person too.
    let export = tmp.path().join("zoe-export");
    let said = ok_stdout(zoe(&["export", "--out", export.to_str().expect("utf-8")]));
    assert!(
        said.starts_with("exported your profile with its avatar, 1 contacts and 2 channels to "),
        "{said}"
    );
    assert!(
        said.lines()
            .last()
            .expect("a line")
            .starts_with("exported 1 clips to "),
        "{said}"
    );
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(export.join(name)).expect("written")).expect("JSON")
    };
    let profile = json("profile.json");
    assert_eq!(
        (
            profile["user"].as_str(),
            profile["display"].as_str(),
            profile["avatar"].as_str()
        ),
        (Some("zoe"), Some("Zoë 张"), Some("avatar.png"))
    );
    assert_eq!(
        image::open(export.join("avatar.png"))
            .expect("a picture")
            .width(),
        256
    );
    assert_eq!(
        json("contacts.json"),
        serde_json::json!([{ "user": "alice", "display": null, "state": "contact" }])
    );
    let channels = json("channels.json");
    assert_eq!(channels[1]["title"].as_str(), Some("Team Zoë"));
    assert_eq!(json("devices.json")[0]["id"].as_str(), Some("main"));
    assert_eq!(
        ok_stdout(zoe(&["channel", "delete", "team"])),
        "deleted channel team and its clips\n"
    );
    assert_eq!(
        ok_stdout(alice_cmd(&["channel", "leave", "crew"])),
        "left channel crew\n"
    );
    assert_eq!(ok_stdout(alice_cmd(&["channel", "list"])), "");
    assert_eq!(ok_stdout(admin(&data, &["channel", "list"])), "crew zoe\n");

    // A second device: a link from the first, `walkie join` on the second, listed, removed.
    let made = ok_stdout(zoe(&["device", "link"]));
    let device_link = made.lines().last().expect("link").to_string();
    assert!(
        device_link.starts_with(&format!("walkie://{}/join/", relay.addr)),
        "{made}"
    );
    let laptop_home = tmp.path().join("zoe-laptop");
    let joined = ok_stdout(
        walkie_at_home(&laptop_home)
            .args(["join", &device_link, "--display", "Zoë's laptop"])
            .output()
            .expect("runs"),
    );
    assert_eq!(joined.lines().last(), Some("zoe"), "{joined}");
    let listed = ok_stdout(
        walkie_at_home(&laptop_home)
            .args(["device", "list"])
            .output()
            .expect("runs"),
    );
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert_eq!(lines[0], "main first_device - offline");
    let laptop: Vec<&str> = lines[1].split(' ').collect();
    assert_eq!((laptop[1], laptop[3]), ("Zoë's_laptop", "this"), "{listed}");
    let removed = ok_stdout(zoe(&["device", "remove", laptop[0]]));
    assert_eq!(
        removed,
        format!("removed device {}\nmain first_device - this\n", laptop[0])
    );
    failed_with(
        walkie_at_home(&laptop_home)
            .args(["device", "list"])
            .output()
            .expect("runs"),
        1,
        "wrong token",
    );

    // A purge takes the display name and the avatar with the audio.
    ok_stdout(admin(&data, &["user", "purge", "zoe"]));
    assert_eq!(
        ok_stdout(zoe(&["profile"])),
        "user zoe\ndisplay -\navatar -\ndirect-from contacts\nsuggestions on\n"
    );
}

#[test]
fn the_demo_sends_a_clip_between_two_people_shown_by_their_display_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let output = walkie_at_home(&tmp.path().join("home"))
        .args(["demo", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("WARN"),
        "the demo warns of nothing: {stderr}"
    );
    let report = ok_stdout(output);
    assert!(report.contains("Alice Liddell (@alice) sent a 7394 ms clip to channel crew; Bob 鲍勃 (@bob) received it"), "{report}");
    let wav = report
        .lines()
        .find_map(|l| l.strip_prefix("received audio: "))
        .expect("the WAV line");
    let wav = hound::WavReader::open(wav).expect("a WAV");
    assert_eq!(wav.spec().sample_rate, 48_000);
    assert!(wav.duration() > 48 * 7000, "{} samples", wav.duration());
}

#[test]
fn texts_pictures_and_doodles_through_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("relay");
    let relay = serve(&data);
    let (alice, bob) = (add_user(&data, "alice"), add_user(&data, "bob"));
    ok_stdout(admin(
        &data,
        &["channel", "add", "crew", "--members", "alice,bob"],
    ));
    let homes = tmp.path().join("homes");
    let as_alice = || walkie(&relay, &homes.join("alice"), "alice", &alice);
    let as_bob = || walkie(&relay, &homes.join("bob"), "bob", &bob);
    let id_of = |out: Output| {
        let text = ok_stdout(out);
        let id = text.lines().last().expect("an id line").to_string();
        assert_eq!(id.len(), 32, "{text}");
        id
    };

    let text = "hello \"world\"\nline two \u{1b}[31m? no: 你好";
    let refused = as_alice()
        .args(["say", "--to", "crew", text])
        .output()
        .expect("runs");
    failed_with(refused, 1, "control character U+001B");
    let text = "hello \"world\"\nline two: 你好";
    let said = id_of(
        as_alice()
            .args(["say", "--to", "crew", text])
            .output()
            .expect("runs"),
    );
    // A picture is told from a WAV file by its content: this one has no extension.
    let photo = tmp.path().join("photo-from-phone");
    std::fs::write(&photo, jpeg_with_gps(640, 480)).expect("written");
    let pictured = id_of(
        as_alice()
            .args(["send", "--to", "crew"])
            .arg(&photo)
            .output()
            .expect("runs"),
    );
    let doodle = tmp.path().join("d.json");
    std::fs::write(&doodle, r##"{"width": 64, "height": 64, "strokes": [{"color": "#102030", "width": 4, "points": [[4, 4, 0], [60, 60, 90]]}, {"color": "#ff0000", "width": 2, "points": [[30, 30, 200]]}]}"##).expect("written");
    let doodled = id_of(
        as_alice()
            .args(["send", "--to", "crew", "--doodle"])
            .arg(&doodle)
            .output()
            .expect("runs"),
    );
    let clip = id_of(
        as_alice()
            .args(["send", "--to", "crew"])
            .arg(sample("hello-crew.wav"))
            .output()
            .expect("runs"),
    );

    // Bob's listen prints every kind in order and saves each as its files.
    let saved = tmp.path().join("saved");
    let heard = ok_stdout(
        as_bob()
            .args(["listen", "--count", "4", "--timeout", "30", "--save-dir"])
            .arg(&saved)
            .output()
            .expect("runs"),
    );
    let lines: Vec<&str> = heard.lines().collect();
    assert_eq!(
        lines[0],
        format!(r#"{said} alice crew text "hello \"world\"\nline two: 你好""#)
    );
    let picture_bytes = std::fs::metadata(saved.join(format!("{pictured}.jpg")))
        .expect("saved picture")
        .len();
    assert_eq!(
        lines[1],
        format!("{pictured} alice crew picture 640x480 {picture_bytes}")
    );
    assert_eq!(lines[2], format!("{doodled} alice crew doodle 2"));
    assert!(
        lines[3].starts_with(&format!("{clip} alice crew ")),
        "{}",
        lines[3]
    );
    assert_eq!(
        std::fs::read_to_string(saved.join(format!("{said}.txt"))).expect("saved text"),
        text
    );
    let jpeg = std::fs::read(saved.join(format!("{pictured}.jpg"))).expect("saved");
    assert!(
        !jpeg.windows(11).any(|w| w == b"GPSLatitude"),
        "the position was dropped"
    );
    assert_eq!(
        image::load_from_memory(&jpeg).expect("decodes").width(),
        640
    );
    let png = image::load_from_memory(
        &std::fs::read(saved.join(format!("{doodled}.png"))).expect("saved"),
    )
    .expect("decodes")
    .to_rgba8();
    assert_eq!(png.get_pixel(32, 32).0, [0x10, 0x20, 0x30, 255]);
    assert!(
        std::fs::read_to_string(saved.join(format!("{doodled}.doodle.json")))
            .expect("saved")
            .contains("#ff0000")
    );

    // History in JSON names each kind with its fields; export writes every kind's files.
    let history: serde_json::Value = serde_json::from_str(&ok_stdout(
        as_alice()
            .args(["history", "crew", "--json"])
            .output()
            .expect("runs"),
    ))
    .expect("JSON");
    let kinds: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["text", "picture", "doodle", "voice"]);
    assert_eq!(history[0]["text"], text);
    assert_eq!(
        (
            history[1]["width"].as_u64(),
            history[1]["height"].as_u64(),
            history[1]["format"].as_str()
        ),
        (Some(640), Some(480), Some("jpg"))
    );
    assert_eq!(history[2]["strokes"].as_u64(), Some(2));
    let out = tmp.path().join("export");
    ok_stdout(
        as_bob()
            .args(["export", "--out"])
            .arg(&out)
            .output()
            .expect("runs"),
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).expect("index"))
            .expect("JSON");
    let listed: Vec<(String, String)> = index
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_string(),
                e["file"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("text".to_string(), format!("{said}.txt")),
            ("picture".to_string(), format!("{pictured}.jpg")),
            ("doodle".to_string(), format!("{doodled}.doodle.json")),
            ("voice".to_string(), format!("{clip}.opus")),
        ]
    );
    for file in [
        format!("{said}.txt"),
        format!("{pictured}.jpg"),
        format!("{doodled}.doodle.json"),
        format!("{doodled}.png"),
        format!("{clip}.opus"),
    ] {
        assert!(out.join(&file).exists(), "{file} exported");
    }

    // A recall: bob's listen shows it in place of the text, whose saved file it deletes.
    let oops = id_of(
        as_alice()
            .args(["say", "--to", "crew", "wrong chat"])
            .output()
            .expect("runs"),
    );
    let heard = ok_stdout(
        as_bob()
            .args(["listen", "--count", "1", "--timeout", "30", "--save-dir"])
            .arg(&saved)
            .output()
            .expect("runs"),
    );
    assert_eq!(heard, format!("{oops} alice crew text \"wrong chat\"\n"));
    assert!(saved.join(format!("{oops}.txt")).exists());
    assert_eq!(
        ok_stdout(as_alice().args(["recall", &oops]).output().expect("runs")),
        format!("{oops} recalled\n")
    );
    failed_with(
        as_bob().args(["recall", &said]).output().expect("runs"),
        1,
        "only its sender",
    );
    let after = as_bob()
        .args(["listen", "--timeout", "3", "--save-dir"])
        .arg(&saved)
        .output()
        .expect("runs");
    assert_eq!(
        String::from_utf8_lossy(&after.stdout),
        format!("{oops} alice crew recalled -\n")
    );
    assert!(
        !saved.join(format!("{oops}.txt")).exists(),
        "the recalled text's file is gone"
    );

    // Clear refusals, nothing queued behind the user's back.
    let truncated = tmp.path().join("cut.png");
    let whole = std::fs::read(saved.join(format!("{doodled}.png"))).expect("png");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("written");
    failed_with(
        as_alice()
            .args(["send", "--to", "crew"])
            .arg(&truncated)
            .output()
            .expect("runs"),
        1,
        "not a readable picture",
    );
    std::fs::write(&doodle, "{\"width\": 64}").expect("written");
    failed_with(
        as_alice()
            .args(["send", "--to", "crew", "--doodle"])
            .arg(&doodle)
            .output()
            .expect("runs"),
        1,
        "not a doodle",
    );
    failed_with(
        as_alice()
            .args(["say", "--to", "crew", "  "])
            .output()
            .expect("runs"),
        1,
        "must not be empty",
    );
    failed_with(
        as_alice()
            .args(["say", "--to", "nowhere", "hi"])
            .output()
            .expect("runs"),
        1,
        "cannot send the text",
    );
    failed_with(
        as_bob()
            .args(["fetch", &said, "--out"])
            .arg(tmp.path().join("x.opus"))
            .output()
            .expect("runs"),
        1,
        "is a text message, not a clip",
    );
}
