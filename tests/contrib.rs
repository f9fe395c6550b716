//! What `contrib/` ships for running the relay in production: the systemd unit (its hardening,
//! its command line, and `systemd-analyze verify` on it) and the container recipe (built from
//! the relay crate alone, run as a non-root user with UDP 7300 exposed). Neither is started
//! here: no systemd as PID 1, no container engine, no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const RELAY: &str = env!("CARGO_BIN_EXE_walkie-relay");
/// Where the unit and the image put the binary.
const INSTALLED: &str = "/usr/local/bin/walkie-relay";
const UNIT_NAME: &str = "walkie-relay.service";
const EXEC_START: &str =
    "/usr/local/bin/walkie-relay --data-dir /var/lib/walkie-relay serve --listen [::]:7300";

fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Joins lines that end in a backslash with the next one (systemd and Containerfiles both
/// continue lines that way) and drops blank lines and whole-line comments (`comment` starts
/// them), keeping each logical line's 1-based starting line number.
fn logical_lines(text: &str, comment: &[char]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with(comment) || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (start, mut line) = pending.take().unwrap_or((i + 1, String::new()));
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                line.push_str(head);
                line.push(' ');
                pending = Some((start, line));
            }
            None => {
                line.push_str(trimmed);
                out.push((start, line));
            }
        }
    }
    assert!(pending.is_none(), "the file ends inside a continued line");
    out
}

/// A unit file's assignments, per section and key, in order (a list-valued key may repeat).
type Unit = BTreeMap<(String, String), Vec<String>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for (n, line) in logical_lines(text, &['#', ';']) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {n} is neither a section nor KEY=VALUE: {line}"));
        assert!(!section.is_empty(), "line {n} comes before any section");
        unit.entry((section.clone(), key.trim().to_string()))
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

/// The value of a key that must be set exactly once in `[Service]` (a second assignment
/// would override the first, or add to it, behind a reader's back).
fn once<'a>(unit: &'a Unit, key: &str) -> &'a str {
    let values = unit
        .get(&("Service".to_string(), key.to_string()))
        .unwrap_or_else(|| panic!("[Service] has no {key}="));
    assert_eq!(
        values.len(),
        1,
        "[Service] sets {key}= more than once: {values:?}"
    );
    &values[0]
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks that `walkie-relay ARGS` parses (every flag known, every value valid) by running it
/// with `--help` appended: clap rejects an unknown flag or a bad value before it prints the
/// help, and prints the help without starting anything. Also checks that each `--flag` of ARGS
/// is listed in `walkie-relay serve --help`.
fn relay_accepts(args: &[&str], source: &str) {
    let relay = || {
        let mut command = Command::new(RELAY);
        for var in [
            "WALKIE_DATA_DIR",
            "WALKIE_STORE",
            "WALKIE_STORE_PREFIX",
            "WALKIE_CONFIG",
        ] {
            command.env_remove(var);
        }
        command
    };
    let parsed = run(relay().args(args).arg("--help"));
    assert!(
        parsed.status.success(),
        "{source}: `walkie-relay {}` does not parse:\n{}",
        args.join(" "),
        text(&parsed.stderr)
    );
    assert!(
        text(&parsed.stdout).contains("Usage: walkie-relay serve"),
        "{source}: `walkie-relay {}` is not a serve command:\n{}",
        args.join(" "),
        text(&parsed.stdout)
    );
    let help = run(relay().args(["serve", "--help"]));
    assert!(help.status.success(), "walkie-relay serve --help fails");
    let help = text(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")),
            "{source}: {flag} is not in `walkie-relay serve --help`:\n{help}"
        );
    }
}

/// How `systemd-analyze verify` judged one unit file: its exit status and every output line
/// (stdout, then stderr) that names the file.
struct Verdict {
    ok: bool,
    about_unit: Vec<String>,
}

fn verify(unit_path: &Path) -> Verdict {
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit_path)
        // Warnings are what is looked for: make sure a caller's environment does not hide
        // them (or drown them in debug lines).
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0"));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let file_name = unit_path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("the unit's file name is UTF-8");
    let about_unit: Vec<String> = all
        .lines()
        .filter(|l| l.contains(file_name))
        .map(str::to_string)
        .collect();
    let other: Vec<&str> = all.lines().filter(|l| !l.contains(file_name)).collect();
    if !other.is_empty() {
        eprintln!(
            "systemd-analyze verify {} also said (not about the unit):\n{}",
            unit_path.display(),
            other.join("\n")
        );
    }
    Verdict {
        ok: out.status.success(),
        about_unit,
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let shipped = read(&contrib(UNIT_NAME));
    let unit = parse_unit(&shipped);

    // Who runs it, where its state lives, and how it is restarted.
    assert_eq!(once(&unit, "ExecStart"), EXEC_START);
    assert_eq!(once(&unit, "User"), "walkie-relay");
    assert!(
        !unit.contains_key(&("Service".to_string(), "DynamicUser".to_string())),
        "the unit runs as a dedicated user (its comments say why), not DynamicUser"
    );
    assert_eq!(once(&unit, "StateDirectory"), "walkie-relay");
    assert_eq!(once(&unit, "Restart"), "on-failure");
    assert_eq!(once(&unit, "LimitNOFILE"), "65536");
    assert_eq!(once(&unit, "Environment"), "RUST_LOG=info");
    // The hardening, each with its required value. The capability sets are empty: the relay
    // needs no privilege at all (port 7300 is above 1024).
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(once(&unit, key), value, "[Service] {key}=");
    }
    // SystemCallFilter= may repeat (an allow list, then `~...` taken out of it), but it starts
    // from @system-service and is never reset by an empty assignment.
    let filters = unit
        .get(&("Service".to_string(), "SystemCallFilter".to_string()))
        .expect("[Service] has SystemCallFilter=");
    assert_eq!(filters[0], "@system-service", "{filters:?}");
    assert!(
        filters[1..].iter().all(|f| f.starts_with('~')),
        "after @system-service, SystemCallFilter= may only take calls away: {filters:?}"
    );
    assert_eq!(
        unit.get(&("Install".to_string(), "WantedBy".to_string())),
        Some(&vec!["multi-user.target".to_string()])
    );

    // Its command line is one the relay accepts.
    let exec_args: Vec<&str> = EXEC_START.split_whitespace().collect();
    assert_eq!(exec_args[0], INSTALLED);
    relay_accepts(&exec_args[1..], UNIT_NAME);

    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) => assert!(out.status.success(), "systemd-analyze --version fails"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "systemd-analyze is not installed, and CI must run it: \
                     scripts/install-deps.sh installs the `systemd` package"
                );
            }
            println!(
                "skipped: systemd-analyze verify of contrib/{UNIT_NAME} (systemd-analyze is not \
                 installed: apt-get install systemd)"
            );
            return;
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }

    // A copy whose ExecStart names the binary built here: verify checks that the command is an
    // executable file, and nothing is installed in /usr/local/bin on a build machine.
    assert!(
        !RELAY.contains(|c: char| c.is_whitespace() || "%\"'\\".contains(c)),
        "the built relay's path needs quoting in a unit file: {RELAY}"
    );
    let prefix = format!("ExecStart={INSTALLED} ");
    let mut rewritten = 0;
    let copy: String = shipped
        .lines()
        .map(|line| match line.strip_prefix(&prefix) {
            Some(rest) => {
                rewritten += 1;
                format!("ExecStart={RELAY} {rest}\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(
        rewritten, 1,
        "one ExecStart= line to point at the built relay"
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let good = tmp.path().join(UNIT_NAME);
    std::fs::write(&good, &copy).expect("write the unit's copy");

    let verdict = verify(&good);
    assert!(
        verdict.ok && verdict.about_unit.is_empty(),
        "systemd-analyze verify --man=no {} (exit ok: {}):\n{}",
        good.display(),
        verdict.ok,
        verdict.about_unit.join("\n")
    );

    // The check can fail: the same copy with a key systemd does not know gets a warning that
    // names the file (exit status 0: an unknown key is only ignored, hence the look at the
    // output).
    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir(&bad_dir).expect("mkdir bad");
    let bad = bad_dir.join(UNIT_NAME);
    let broken = copy.replacen("\nExecStart=", "\nNoSuchDirective=yes\nExecStart=", 1);
    assert_ne!(broken, copy);
    std::fs::write(&bad, broken).expect("write the broken copy");
    let verdict = verify(&bad);
    assert!(
        verdict
            .about_unit
            .iter()
            .any(|l| l.contains("NoSuchDirective")),
        "systemd-analyze verify did not flag an unknown key: {:?}",
        verdict.about_unit
    );
}

/// One build stage of a Containerfile: its FROM line's arguments and its instructions
/// (upper-cased keyword, arguments).
struct Stage {
    from: String,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn all<'a>(&'a self, keyword: &str) -> impl Iterator<Item = &'a str> + 'a {
        let keyword = keyword.to_string();
        self.instructions
            .iter()
            .filter(move |(k, _)| *k == keyword)
            .map(|(_, args)| args.as_str())
    }

    /// The last of an instruction that only its last use counts for (USER, ENTRYPOINT, CMD).
    fn last(&self, keyword: &str) -> &str {
        self.all(keyword)
            .last()
            .unwrap_or_else(|| panic!("the stage FROM {} has no {keyword}", self.from))
    }
}

fn parse_containerfile(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for (n, line) in logical_lines(text, &['#']) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (keyword, args) = (keyword.to_ascii_uppercase(), args.trim().to_string());
        if keyword == "FROM" {
            stages.push(Stage {
                from: args,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .unwrap_or_else(|| panic!("line {n}: {keyword} before any FROM"))
                .instructions
                .push((keyword, args));
        }
    }
    stages
}

/// An exec-form (JSON array) ENTRYPOINT or CMD: the shell form would put `sh -c` in front and
/// keep SIGTERM from reaching the relay.
fn exec_form(args: &str, keyword: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{keyword} is not an exec-form JSON array ({e}): {args}"))
}

#[test]
fn the_container_recipe_builds_the_relay_crate_alone() {
    let stages = parse_containerfile(&read(&contrib("Containerfile")));
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let (runtime, builds) = stages.split_last().expect("stages");

    // The build: the relay crate alone, from the lock file, with its default features, and
    // with cmake and pkg-config stubbed out as scripts/check-relay-alone.sh does.
    let build_run = builds
        .iter()
        .flat_map(|s| s.all("RUN"))
        .find(|r| r.contains("cargo build"))
        .expect("a RUN with cargo build in a build stage");
    let cargo: Vec<&str> = build_run
        .split("cargo build")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .expect("cargo build's arguments")
        .split_whitespace()
        .collect();
    assert!(
        cargo.windows(2).any(|w| w == ["-p", "walkie-relay"]),
        "cargo build -p walkie-relay: {cargo:?}"
    );
    for flag in ["--release", "--locked"] {
        assert!(cargo.contains(&flag), "cargo build {flag}: {cargo:?}");
    }
    for flag in ["--workspace", "--all", "--features", "--all-features", "-F"] {
        assert!(
            !cargo.contains(&flag),
            "cargo build without {flag}: {cargo:?}"
        );
    }
    for tool in ["cmake", "pkg-config"] {
        assert!(
            build_run.contains(tool) && build_run.contains("exit 1"),
            "the build stubs out {tool} with a script that fails: {build_run}"
        );
    }

    // The runtime stage: Debian slim, the binary copied from a build stage, not root.
    assert!(
        runtime.from.contains("debian:bookworm-slim"),
        "runtime stage FROM {}",
        runtime.from
    );
    let user = runtime.last("USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(
        !name.is_empty() && name != "root" && name != "0",
        "the runtime stage runs as a non-root USER, not {user:?}"
    );
    assert!(
        runtime
            .all("EXPOSE")
            .flat_map(str::split_whitespace)
            .any(|p| p == "7300/udp"),
        "EXPOSE 7300/udp"
    );
    assert!(
        runtime
            .all("VOLUME")
            .any(|v| v.contains("/var/lib/walkie-relay")),
        "VOLUME /var/lib/walkie-relay"
    );

    // What it runs: ENTRYPOINT then CMD, a serve command with the data dir on the volume, the
    // binary the image copied in, and flags the relay knows.
    let mut argv = exec_form(runtime.last("ENTRYPOINT"), "ENTRYPOINT");
    argv.extend(exec_form(runtime.last("CMD"), "CMD"));
    assert_eq!(argv[0], INSTALLED, "{argv:?}");
    assert!(
        runtime
            .all("COPY")
            .any(|c| c.starts_with("--from=") && c.split_whitespace().last() == Some(INSTALLED)),
        "the runtime stage copies the built binary to {INSTALLED}"
    );
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--data-dir", "/var/lib/walkie-relay"]),
        "--data-dir /var/lib/walkie-relay: {args:?}"
    );
    assert!(args.contains(&"serve"), "{args:?}");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--listen" && w[1].ends_with(":7300")),
        "--listen on port 7300: {args:?}"
    );
    relay_accepts(&args, "contrib/Containerfile");
}
