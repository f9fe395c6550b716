//! `walkie`: the client command line (thin shell: parse, call the library, print).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use walkie::live;
use walkie_client::ops::{self, ListenOptions};
use walkie_client::outbox::Outbox;
use walkie_client::profile::{self, Profile};
use walkie_client::{Client, ClientConfig, ClientError};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipError, ClipId, Target};
use walkie_proto::message::Kind;
use walkie_proto::ogg;
use walkie_proto::people::{ContactAction, GroupAction, InviteLink};
use walkie_proto::wire::GroupInfo;

/// walkie: push-to-talk voice messages over QUIC.
///
/// Connection settings come from flags, then environment variables, then the profile saved
/// by `walkie login`. With --cert or --fingerprint the relay's certificate is pinned; without
/// either, it must be issued for the HOST of --relay by a CA this system trusts (its CA
/// bundle, or SSL_CERT_FILE; --ca-file adds one).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConnArgs {
    /// Relay address.
    #[arg(long, global = true, env = "WALKIE_RELAY", value_name = "HOST:PORT")]
    relay: Option<String>,
    /// Your user name.
    #[arg(long, global = true, env = "WALKIE_USER", value_name = "NAME")]
    user: Option<String>,
    /// Your secret token (from `walkie-relay user add`).
    #[arg(
        long,
        global = true,
        env = "WALKIE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The relay's certificate to trust (its DATA_DIR/cert.pem). Without it or
    /// --fingerprint, the relay's certificate must be CA-issued for the HOST of --relay.
    #[arg(long, global = true, env = "WALKIE_CERT", value_name = "PATH")]
    cert: Option<PathBuf>,
    /// The relay's certificate fingerprint to trust, as printed by `walkie-relay serve`.
    /// Without it or --cert, the relay's certificate must be CA-issued for the HOST of --relay.
    #[arg(
        long,
        global = true,
        env = "WALKIE_FINGERPRINT",
        value_name = "sha256:HEX"
    )]
    fingerprint: Option<String>,
    /// With neither --cert nor --fingerprint: CA certificates (PEM) to trust besides the
    /// system's, for a relay whose certificate a private CA issued.
    #[arg(long, global = true, env = "WALKIE_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct EncodeArgs {
    /// Opus bitrate in bits per second (6000-510000).
    #[arg(long, default_value_t = 24_000, value_name = "BPS")]
    bitrate: u32,
    /// Encoder complexity, 0 (fastest) to 10 (best).
    #[arg(long, default_value_t = 10, value_name = "N")]
    complexity: u8,
    /// Frame length in milliseconds: 10, 20, 40 or 60.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    frame_ms: u32,
}

impl EncodeArgs {
    fn config(&self) -> Result<EncoderConfig, ClientError> {
        let cfg = EncoderConfig {
            bitrate: self.bitrate,
            complexity: self.complexity,
            frame_ms: self.frame_ms,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Save the connection settings given (flags or environment) as your profile.
    Login,
    /// Sign up with an invite link (`walkie://HOST:PORT/join/CODE#sha256:FINGERPRINT`, from
    /// `walkie-relay invite create` or a friend), or sign this device in with a link from
    /// `walkie device link`: saves the account as your profile as `walkie login` does, and
    /// prints your user name on the last line. A link without `#sha256:` is for a relay whose
    /// certificate is CA-issued for HOST: it is checked against this system's CA roots.
    Join {
        /// The invite link.
        link: String,
        /// Your login name: 1-32 of a-z, 0-9, '.', '_', '-' (others find you as @NAME);
        /// not needed with a device link.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The name people see beside your clips, in any script (1-64 characters); with a
        /// device link, this device's name.
        #[arg(long, value_name = "DISPLAY NAME")]
        display: Option<String>,
    },
    /// Your devices: link another one, list them, remove one. (`walkie devices` lists audio
    /// devices.)
    Device {
        #[command(subcommand)]
        action: DeviceCmd,
    },
    /// Show your profile, or change it with `walkie profile set`.
    Profile {
        #[command(subcommand)]
        action: Option<ProfileCmd>,
    },
    /// People you may know, who share contacts or channels with you, most first:
    /// `NAME MUTUAL DISPLAY_NAME` (MUTUAL counts shared contacts and shared channels).
    Suggest,
    /// See who is near you and be seen by them for one hour: `NAME KM DISPLAY_NAME`, nearest
    /// first, within about 10 km. Only a ~5 km square around the place you give leaves this
    /// machine, never the place itself; distances are rounded to whole kilometres.
    Nearby {
        /// Where you are: LAT,LON (like 48.86,2.35) or a city (like Paris).
        #[arg(
            long,
            value_name = "PLACE",
            required_unless_present = "off",
            allow_hyphen_values = true
        )]
        at: Option<String>,
        /// Stop being visible nearby now.
        #[arg(long, conflicts_with = "at")]
        off: bool,
    },
    /// Save someone's avatar (a PNG) to a file; exits 1 if they have none.
    Avatar {
        /// Their user name (`bob` or `@bob`).
        #[arg(value_name = "USER")]
        whose: String,
        /// The PNG file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The 64 px one instead of the 256 px one.
        #[arg(long)]
        small: bool,
    },
    /// Ask someone to be your contact, answer, remove or block them.
    Contact {
        #[command(subcommand)]
        action: ContactCmd,
    },
    /// List your contacts: `NAME STATE PRESENCE DISPLAY_NAME`, with STATE one of contact,
    /// requested (you asked), incoming (they asked) or blocked.
    Contacts,
    /// Make channels and manage the ones you own.
    Channel {
        #[command(subcommand)]
        action: ChannelCmd,
    },
    /// Send a WAV file as a clip, a picture, or (--doodle) a doodle; exits 0 once the relay
    /// has stored it, printing its id last.
    Send {
        /// A channel (`crew`) or a user (`@bob`).
        #[arg(long, value_name = "TARGET")]
        to: String,
        /// The file to send, told apart by its content: a WAV file (8-96 kHz, mono or stereo,
        /// 16/24-bit or float) is sent as a clip; a PNG, JPEG, WebP or GIF (first frame) of at
        /// most 10 MB as a picture, scaled to at most 2,560 px a side, its metadata dropped.
        #[arg(required_unless_present = "doodle", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Send this doodle (strokes as JSON; the format is in the README) instead of a file.
        #[arg(long, value_name = "FILE.json", conflicts_with = "file")]
        doodle: Option<PathBuf>,
        #[command(flatten)]
        encode: EncodeArgs,
        /// Keep retrying an unreachable relay for this long before giving up.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        retry_for: u64,
    },
    /// Send a text message (at most 4,000 characters); exits 0 once the relay has stored
    /// it, printing its id last.
    Say {
        /// A channel (`crew`) or a user (`@bob`).
        #[arg(long, value_name = "TARGET")]
        to: String,
        /// The text (quote it; newlines and tabs are kept).
        text: String,
        /// Keep retrying an unreachable relay for this long before giving up.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        retry_for: u64,
    },
    /// Take back one of your own messages or clips within the relay's recall window (2
    /// minutes by default): it is deleted from the relay and from every recipient's client,
    /// whose conversation shows "message recalled". Prints `ID recalled`.
    Recall {
        /// The id `send` or `say` printed.
        id: String,
    },
    /// List audio input and output devices (`*` marks the default).
    Devices,
    /// Talk live: hold Space (or Enter to start, Enter to send; Esc cancels), or with
    /// --seconds capture that long from the microphone and send it as one live clip.
    Talk {
        /// A channel (`crew`) or a user (`@bob`).
        #[arg(long, value_name = "TARGET")]
        to: String,
        /// Input device name (see `walkie devices`), `wav:PATH` to talk a file in real time,
        /// or `null` for silence.
        #[arg(long, value_name = "NAME")]
        input_device: Option<String>,
        /// Capture this many seconds and send them, without waiting for keys.
        #[arg(long, value_name = "S")]
        seconds: Option<f64>,
        /// Turn noise suppression off.
        #[arg(long)]
        no_noise_suppression: bool,
        #[command(flatten)]
        encode: EncodeArgs,
    },
    /// Receive clips and messages (the backlog first, then live ones), one line each: a clip
    /// as `CLIPID FROM TARGET DURATION_MS`; a message as `ID FROM TARGET KIND DETAIL`, KIND
    /// being `text` (DETAIL: the text as a JSON string), `picture` (`WIDTHxHEIGHT BYTES`),
    /// `doodle` (its stroke count) or `recalled` (`-`). Messages shown here are marked read
    /// for their senders.
    Listen {
        /// Play clips as they come (live ones start before they end), one after another.
        #[arg(long)]
        play: bool,
        /// Output device name (see `walkie devices`), or `null`.
        #[arg(long, value_name = "NAME", requires = "play")]
        output_device: Option<String>,
        /// Save each clip as DIR/CLIPID.opus and DIR/CLIPID.wav, a text as DIR/ID.txt, a
        /// picture as DIR/ID.jpg or DIR/ID.png, a doodle as DIR/ID.doodle.json and DIR/ID.png
        /// (a recalled message's files are deleted).
        #[arg(long, value_name = "DIR")]
        save_dir: Option<PathBuf>,
        /// Exit after this many clips and messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Exit with status 1 if this many seconds pass first.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Show a conversation, newest last: `CLIPID FROM TARGET STARTED_AT DURATION_MS BYTES`.
    History {
        /// A channel (`crew`) or a user (`@bob`).
        target: String,
        /// How many clips.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// Print a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Download a stored clip: `.opus` keeps the stored file, `.wav` decodes it.
    Fetch {
        /// The clip id.
        clip: String,
        /// Output file ending in .opus or .wav.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Export every clip you may read as DIR/CLIPID.opus plus DIR/index.json, and your
    /// profile, avatar, contacts, channels and devices (profile.json, avatar.png,
    /// contacts.json, channels.json, devices.json).
    Export {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Encode a WAV file to Ogg Opus (the same code path as live clips): `IN.wav OUT.opus`,
    /// or `--out-dir DIR IN.wav...` for many files at once on every core.
    Encode {
        /// `IN.wav OUT.opus`; with --out-dir, the input WAV files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Write DIR/NAME.opus for each input NAME.wav, encoding files in parallel.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        #[command(flatten)]
        encode: EncodeArgs,
    },
    /// Decode an Ogg Opus file to a 48 kHz mono 16-bit WAV: `IN.opus OUT.wav`, or
    /// `--out-dir DIR IN.opus...` for many files at once on every core.
    Decode {
        /// `IN.opus OUT.wav`; with --out-dir, the input .opus files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Write DIR/NAME.wav for each input NAME.opus, decoding files in parallel.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Run a relay in-process with two users, send a bundled sample and receive it.
    Demo {
        /// Where to write the received clip (default: a new temporary directory).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Open the desktop app: hold Space (or the talk button) to talk, release to send, Esc to
    /// cancel. Connects with the profile, flags or environment; else shows the connect screen.
    App {
        /// Start an in-process relay with users alice and bob and channel crew, and connect
        /// as alice (bob answers, and talks when asked).
        #[arg(long)]
        demo: bool,
    },
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Change your display name, avatar or who may send you direct clips; prints the profile
    /// after.
    Set {
        /// The name people see, in any script (1-64 characters).
        #[arg(long, value_name = "DISPLAY NAME")]
        display: Option<String>,
        /// A PNG, JPEG or WebP picture of at most 2 MB: its centre square becomes your avatar
        /// (256 px and 64 px; nothing of the file but its pixels is kept or sent).
        #[arg(long, value_name = "FILE", conflicts_with = "no_avatar")]
        avatar: Option<PathBuf>,
        /// Remove your avatar.
        #[arg(long)]
        no_avatar: bool,
        /// Whether `walkie suggest` may suggest you to others: on (the default) or off.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        suggestions: Option<String>,
        /// Who may send you direct clips: anyone, or contacts (blocked users never can).
        #[arg(long, value_name = "anyone|contacts")]
        direct_from: Option<walkie_proto::people::DirectFrom>,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Print a one-time link (valid 10 minutes) that signs another device in as you: run
    /// `walkie join LINK` there. Each device has its own token and gets every clip, even one
    /// another device already received.
    Link,
    /// List your devices: `ID NAME LINKED_AT STATE`, STATE one of this, online, offline.
    List,
    /// Remove a device: its sessions end within 2 seconds and its token stops working.
    Remove {
        /// The device's id (from `walkie device list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum ContactCmd {
    /// Ask NAME to be your contact (or accept, if they asked you); prints `NAME STATE`.
    Add {
        /// Their user name (`bob` or `@bob`).
        name: String,
    },
    /// Accept NAME's request; prints `NAME contact`.
    Accept {
        /// Their user name.
        name: String,
    },
    /// End the contact (or your request, or your block) on both sides.
    Remove {
        /// Their user name.
        name: String,
    },
    /// Block NAME: their direct clips, channel clips and requests no longer reach you. They
    /// are not told.
    Block {
        /// Their user name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Make a channel you own; prints `NAME OWNER MEMBERS TITLE`.
    Create {
        /// Channel name: 1-32 of a-z, 0-9, '.', '_', '-'.
        name: String,
        /// Other members, comma-separated (people who take direct clips from you).
        #[arg(long, value_delimiter = ',', value_name = "a,b")]
        members: Vec<String>,
    },
    /// Add USER to a channel you are a member of.
    Invite {
        /// Channel name.
        name: String,
        /// Who to add.
        #[arg(value_name = "USER")]
        member: String,
    },
    /// Leave a channel (a channel you own passes to another member).
    Leave {
        /// Channel name.
        name: String,
    },
    /// Give a channel you own a title people see (its name stays its address).
    Rename {
        /// Channel name.
        name: String,
        /// The new title, in any script (1-64 characters).
        title: String,
    },
    /// Delete a channel you own, with every clip sent to it.
    Delete {
        /// Channel name.
        name: String,
    },
    /// List your channels: `NAME OWNER MEMBERS TITLE` (OWNER `-` for the administrator's).
    List,
}

/// An error with the exit code it maps to.
struct Failure(String, u8);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure(e.to_string(), 1)
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure(e, 1)
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), 2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The certificate verifier logs each refusal as an error of its own; our error
            // line says the same with the relay's address, so it is not repeated.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rustls_platform_verifier=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The (input, output) pairs of `walkie encode`/`decode`: `IN OUT`, or with `--out-dir DIR`
/// every FILE to `DIR/STEM.EXT`. Refuses two inputs that would write the same output.
fn codec_jobs(
    files: Vec<PathBuf>,
    out_dir: Option<&Path>,
    cmd: &str,
    ext: &str,
) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    let Some(dir) = out_dir else {
        return match <[PathBuf; 2]>::try_from(files) {
            Ok([input, output]) => Ok(vec![(input, output)]),
            Err(files) => Err(usage(format!(
                "walkie {cmd} takes IN OUT ({} file(s) given), or --out-dir DIR followed by any number of inputs",
                files.len()
            ))),
        };
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut seen = std::collections::HashMap::new();
    let mut jobs = Vec::with_capacity(files.len());
    for input in files {
        let Some(stem) = input.file_stem() else {
            return Err(usage(format!("{}: not a file name", input.display())));
        };
        let output = dir.join(stem).with_extension(ext);
        if let Some(other) = seen.insert(output.clone(), input.clone()) {
            return Err(usage(format!(
                "{} and {} would both write {}; rename one or use two runs",
                other.display(),
                input.display(),
                output.display()
            )));
        }
        jobs.push((input, output));
    }
    Ok(jobs)
}

/// Runs `work` on every job, on as many threads as there are cores (never more than jobs),
/// then prints each result line in input order; failures go to stderr and make the exit
/// status 1 once every other file is done.
fn run_codec_jobs(
    jobs: &[(PathBuf, PathBuf)],
    work: impl Fn(&Path, &Path) -> Result<String, ClientError> + Sync,
) -> Result<(), Failure> {
    if let [(input, output)] = jobs {
        println!("{}", work(input, output)?);
        return Ok(());
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<String, ClientError>>> =
        (0..jobs.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((input, output)) = jobs.get(i) else {
                            break;
                        };
                        done.push((i, work(input, output)));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            // A panicking worker loses only its own files, which stay None below.
            for (i, r) in worker.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    let mut failed = 0;
    for (r, (input, _)) in results.into_iter().zip(jobs) {
        match r {
            Some(Ok(line)) => println!("{line}"),
            Some(Err(e)) => {
                failed += 1;
                eprintln!("error: {e}");
            }
            None => {
                failed += 1;
                eprintln!("error: {}: the worker handling it crashed", input.display());
            }
        }
    }
    if failed > 0 {
        return Err(Failure(
            format!("{failed} of {} files failed", jobs.len()),
            1,
        ));
    }
    Ok(())
}

fn settings(args: &ConnArgs) -> Result<Profile, ClientError> {
    let flags = Profile {
        relay: args.relay.clone(),
        user: args.user.clone(),
        token: args.token.clone(),
        cert: args.cert.clone(),
        fingerprint: args.fingerprint.clone(),
        ca_file: args.ca_file.clone(),
    };
    Ok(flags.or(Profile::load(&profile::profile_path()?)?))
}

fn client_config(args: &ConnArgs) -> Result<ClientConfig, ClientError> {
    settings(args)?.client_config()
}

/// True if `path` starts like a picture (PNG, JPEG, WebP, GIF): `walkie send` tells pictures
/// from WAV files by content, not by name.
fn sniff_picture(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 32];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    walkie_client::picture::is_picture(&head[..n])
}

/// Reads a file of at most `max` bytes (`what` names it in the error).
fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, Failure> {
    let len = std::fs::metadata(path)
        .map_err(|e| Failure(format!("cannot send {}: {e}", path.display()), 1))?
        .len();
    if len > max {
        return Err(Failure(
            format!(
                "cannot send {}: {:.1} MB is too large for {what} (at most {:.1} MB)",
                path.display(),
                len as f64 / 1e6,
                max as f64 / 1e6
            ),
            1,
        ));
    }
    std::fs::read(path).map_err(|e| Failure(format!("cannot send {}: {e}", path.display()), 1))
}

/// Sends a message through the outbox (connecting first, so wrong settings fail before
/// anything is queued) and prints its id once the relay stored it.
async fn send_message(
    conn: &ConnArgs,
    to: &str,
    kind: Kind,
    payload: Vec<u8>,
    retry_for: u64,
    what: &str,
) -> Result<(), Failure> {
    let target = parse_target(to)?;
    let cfg = client_config(conn)?;
    let first = match Client::connect(&cfg).await {
        Ok(client) => Some(client),
        Err(e) if !e.is_transient() => return Err(Failure(format!("cannot send {what}: {e}"), 1)),
        // The relay is away: the message waits in the outbox.
        Err(_) => None,
    };
    let outbox = Outbox::open(&profile::outbox_dir(&cfg.user)?)?;
    match ops::send_message(
        &cfg,
        first,
        &outbox,
        target,
        kind,
        &payload,
        Duration::from_secs(retry_for),
    )
    .await
    {
        Ok((id, _)) => {
            println!("{id}");
            Ok(())
        }
        Err(e) if e.is_transient() => Err(Failure(
            format!(
                "{what} was not acknowledged after {retry_for} s ({e}); it stays in the outbox {} and the next `walkie send`, `walkie say` or `walkie listen` retries it",
                outbox.dir().display()
            ),
            1,
        )),
        Err(e) => Err(Failure(
            format!(
                "cannot send {what}: {e}; it was moved to {}/failed",
                outbox.dir().display()
            ),
            1,
        )),
    }
}

fn parse_target(s: &str) -> Result<Target, Failure> {
    s.parse::<Target>().map_err(|e| {
        usage(format!(
            "--to/target {s:?}: {e}; use a channel name or @user"
        ))
    })
}

/// `ID NAME LINKED_AT STATE` per device.
fn device_lines(devices: Vec<walkie_proto::wire::DeviceInfo>) -> Vec<String> {
    devices
        .into_iter()
        .map(|d| {
            let state = if d.this {
                "this"
            } else if d.online {
                "online"
            } else {
                "offline"
            };
            let at = if d.created_ms > 0 {
                ops::rfc3339(d.created_ms)
            } else {
                "-".into()
            };
            format!("{} {} {at} {state}", d.id, d.name.replace(' ', "_"))
        })
        .collect()
}

/// One `walkie channel` command on a connected client; the lines to print.
async fn channel_command(client: &Client, action: ChannelCmd) -> Result<Vec<String>, Failure> {
    let line = |g: &GroupInfo| {
        format!(
            "{} {} {} {}",
            g.name,
            g.owner.as_deref().unwrap_or("-"),
            g.members.join(","),
            g.title.as_deref().unwrap_or("-")
        )
    };
    let user = |u: &str| u.trim_start_matches('@').to_string();
    let (name, action) = match action {
        ChannelCmd::List => return Ok(client.groups().await?.iter().map(line).collect()),
        ChannelCmd::Create { name, members } => (
            name,
            GroupAction::Create {
                members: members.iter().map(|m| user(m)).collect(),
            },
        ),
        ChannelCmd::Invite { name, member } => (
            name,
            GroupAction::Invite {
                user: user(&member),
            },
        ),
        ChannelCmd::Leave { name } => (name, GroupAction::Leave),
        ChannelCmd::Rename { name, title } => (name, GroupAction::Rename { title }),
        ChannelCmd::Delete { name } => (name, GroupAction::Delete),
    };
    let name = name.trim_start_matches('#').to_string();
    let done = match &action {
        GroupAction::Leave => Some(format!("left channel {name}")),
        GroupAction::Delete => Some(format!("deleted channel {name} and its clips")),
        _ => None,
    };
    let info = client.group(&name, action).await?;
    Ok(done.into_iter().chain(info.as_ref().map(line)).collect())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Login => {
            let mut p = settings(&cli.conn)?;
            if let Some(cert) = &p.cert {
                let abs =
                    std::path::absolute(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
                p.cert = Some(abs);
            }
            if let Some(ca) = &p.ca_file {
                let abs = std::path::absolute(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                p.ca_file = Some(abs);
            }
            let cfg = p.client_config()?;
            // Check the settings work before saving them.
            Client::connect(&cfg).await?.close().await;
            let path = profile::profile_path()?;
            p.save(&path)?;
            println!(
                "logged in as {} at {}; profile saved to {}",
                cfg.user,
                cfg.relay,
                path.display()
            );
        }
        Command::Join {
            link,
            name,
            display,
        } => {
            let link: InviteLink = link
                .parse()
                .map_err(|e: walkie_proto::people::LinkError| usage(e.to_string()))?;
            let name = name
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches('@')
                .to_string();
            // A link's pin wins; without one, --ca-file's roots are trusted too.
            let ca_file = match (&link.fingerprint, &cli.conn.ca_file) {
                (None, Some(ca)) => {
                    Some(std::path::absolute(ca).map_err(|e| format!("{}: {e}", ca.display()))?)
                }
                _ => None,
            };
            let extra = match &ca_file {
                Some(ca) => walkie_net::load_ca_file(ca).map_err(ClientError::from)?,
                None => Vec::new(),
            };
            let joined =
                walkie_client::people::join_with_roots(&link, extra, &name, display.as_deref())
                    .await?;
            let p = Profile {
                relay: Some(joined.relay.clone()),
                user: Some(joined.user.clone()),
                token: Some(joined.token.clone()),
                cert: None,
                fingerprint: joined.pin.map(|p| p.to_string()),
                ca_file,
            };
            // As `walkie login`: the settings are checked by signing in before they are saved.
            Client::connect(&p.client_config()?).await?.close().await;
            let path = profile::profile_path()?;
            if let Some(old) = Profile::load(&path)
                .ok()
                .filter(|o| o.user.is_some() && (o.user != p.user || o.relay != p.relay))
            {
                let backup = path
                    .with_extension(format!("{}.toml.bak", old.user.as_deref().unwrap_or("old")));
                old.save(&backup)?;
                eprintln!(
                    "note: your previous profile ({} at {}) was kept in {}",
                    old.user.as_deref().unwrap_or("?"),
                    old.relay.as_deref().unwrap_or("?"),
                    backup.display()
                );
            }
            p.save(&path)?;
            let channel = joined
                .channel
                .map(|c| format!("; member of channel {c}"))
                .unwrap_or_default();
            println!(
                "joined {} as {}{channel}; profile saved to {}",
                joined.relay,
                joined.user,
                path.display()
            );
            println!("{}", joined.user);
        }
        Command::Profile { action } => {
            let (display, direct_from, avatar, suggest) = match action {
                Some(ProfileCmd::Set {
                    display,
                    direct_from,
                    avatar,
                    no_avatar,
                    suggestions,
                }) => {
                    if display.is_none()
                        && direct_from.is_none()
                        && avatar.is_none()
                        && !no_avatar
                        && suggestions.is_none()
                    {
                        return Err(usage(
                            "walkie profile set needs --display, --avatar, --no-avatar, --direct-from or --suggestions",
                        ));
                    }
                    // The picture is checked and made into an avatar before anything is sent.
                    let avatar = match (avatar, no_avatar) {
                        (Some(path), _) => Some(Some(walkie_client::avatar::prepare(&path)?)),
                        (None, true) => Some(None),
                        (None, false) => None,
                    };
                    (display, direct_from, avatar, suggestions.map(|s| s == "on"))
                }
                None => (None, None, None, None),
            };
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let mut result = client.set_profile_with(display, direct_from, suggest).await;
            if let (Ok(_), Some(png)) = (&result, avatar) {
                result = client.set_avatar(png).await;
            }
            let user = client.user().to_string();
            client.close().await;
            let me = result?;
            println!("user {user}");
            println!("display {}", me.display.as_deref().unwrap_or("-"));
            println!("avatar {}", me.avatar.as_deref().unwrap_or("-"));
            println!("direct-from {}", me.direct_from);
            println!("suggestions {}", if me.suggest { "on" } else { "off" });
        }
        Command::Suggest => {
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = client.suggest().await;
            client.close().await;
            for s in result? {
                println!(
                    "{} {} {}",
                    s.user,
                    s.mutual,
                    s.display.as_deref().unwrap_or("-")
                );
            }
        }
        Command::Nearby { at, off } => {
            let at = match (at, off) {
                (_, true) => None,
                (Some(place), false) => Some(
                    walkie_proto::people::parse_place(&place).map_err(|e| usage(e.to_string()))?,
                ),
                (None, false) => return Err(usage("walkie nearby needs --at PLACE or --off")),
            };
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = client.nearby(at).await;
            client.close().await;
            let (people, until) = result?;
            if at.is_some() {
                eprintln!(
                    "you are visible to people nearby until {}; `walkie nearby --off` hides you now",
                    ops::rfc3339(until)
                );
            } else {
                eprintln!("you are no longer visible to people nearby");
            }
            for p in people {
                println!(
                    "{} {} {}",
                    p.user,
                    p.km,
                    p.display.as_deref().unwrap_or("-")
                );
            }
        }
        Command::Avatar { whose, out, small } => {
            let user = whose.trim_start_matches('@').to_string();
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let png = client.avatar(&user, small).await;
            client.close().await;
            let Some(png) = png? else {
                return Err(Failure(
                    format!("@{user} has no avatar (or there is no such user)"),
                    1,
                ));
            };
            std::fs::write(&out, &png).map_err(|e| format!("{}: {e}", out.display()))?;
            println!("{} bytes -> {}", png.len(), out.display());
        }
        Command::Contact { action } => {
            let (name, action) = match action {
                ContactCmd::Add { name } => (name, ContactAction::Add),
                ContactCmd::Accept { name } => (name, ContactAction::Accept),
                ContactCmd::Remove { name } => (name, ContactAction::Remove),
                ContactCmd::Block { name } => (name, ContactAction::Block),
            };
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = client.contact(name.trim_start_matches('@'), action).await;
            client.close().await;
            let entry = result?;
            println!(
                "{} {}",
                entry.user,
                entry.state.map_or("none", |s| s.name())
            );
        }
        Command::Contacts => {
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = client.contacts().await;
            client.close().await;
            for c in result? {
                let presence = if c.online { "online" } else { "offline" };
                println!(
                    "{} {} {presence} {}",
                    c.user,
                    c.state.map_or("none", |s| s.name()),
                    c.display.as_deref().unwrap_or("-")
                );
            }
        }
        Command::Device { action } => {
            let cfg = client_config(&cli.conn)?;
            let client = Client::connect(&cfg).await?;
            let result =
                match action {
                    DeviceCmd::Link => client.link_device(&cfg.relay, cfg.trust.pin()).await.map(
                        |(link, expires)| {
                            vec![
                                format!(
                                    "link for another device, valid until {} (once):",
                                    ops::rfc3339(expires)
                                ),
                                link.to_string(),
                            ]
                        },
                    ),
                    DeviceCmd::List => client.devices().await.map(device_lines),
                    DeviceCmd::Remove { id } => client.remove_device(&id).await.map(|left| {
                        let mut lines = vec![format!("removed device {id}")];
                        lines.extend(device_lines(left));
                        lines
                    }),
                };
            client.close().await;
            for line in result? {
                println!("{line}");
            }
        }
        Command::Channel { action } => {
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = channel_command(&client, action).await;
            client.close().await;
            for line in result? {
                println!("{line}");
            }
        }
        Command::Send {
            to,
            file: None,
            doodle: Some(path),
            retry_for,
            ..
        } => {
            let json = read_limited(
                &path,
                walkie_proto::message::doodle::MAX_JSON as u64,
                "a doodle",
            )?;
            walkie_proto::message::doodle::Doodle::parse(&json)
                .map_err(|e| Failure(format!("cannot send {}: {e}", path.display()), 1))?;
            send_message(
                &cli.conn,
                &to,
                Kind::Doodle,
                json,
                retry_for,
                &path.display().to_string(),
            )
            .await?;
        }
        Command::Send {
            to,
            file: Some(file),
            retry_for,
            ..
        } if sniff_picture(&file) => {
            let prepared = walkie_client::picture::prepare_file(&file)
                .map_err(|e| Failure(format!("cannot send {}: {e}", file.display()), 1))?;
            send_message(
                &cli.conn,
                &to,
                Kind::Picture,
                prepared,
                retry_for,
                &file.display().to_string(),
            )
            .await?;
        }
        Command::Send { file: None, .. } => {
            return Err(usage("give a FILE to send, or --doodle FILE.json"));
        }
        Command::Recall { id } => {
            let id: ClipId = id.parse().map_err(|e: ClipError| usage(e.to_string()))?;
            let client = Client::connect(&client_config(&cli.conn)?).await?;
            let result = client.recall(id).await;
            client.close().await;
            result?;
            println!("{id} recalled");
        }
        Command::Say {
            to,
            text,
            retry_for,
        } => {
            let text = text.replace("\r\n", "\n");
            walkie_proto::message::check_text(text.as_bytes())
                .map_err(|e| Failure(format!("cannot send the text: {e}"), 1))?;
            send_message(
                &cli.conn,
                &to,
                Kind::Text,
                text.into_bytes(),
                retry_for,
                "the text",
            )
            .await?;
        }
        Command::Send {
            to,
            file: Some(file),
            encode,
            retry_for,
            ..
        } => {
            let target = parse_target(&to)?;
            let enc = encode.config()?;
            let cfg = client_config(&cli.conn)?;
            // Connect first: a wrong user, token or certificate fails here, at once, before
            // anything is queued; and the relay's welcome says how long a clip may be.
            let (client, max_ms) = match Client::connect(&cfg).await {
                Ok(client) => {
                    let max = client.max_clip_ms();
                    (Some(client), max)
                }
                Err(e) if !e.is_transient() => {
                    return Err(Failure(format!("cannot send {}: {e}", file.display()), 1));
                }
                // The relay is away: the clip waits in the outbox.
                Err(_) => (None, ops::MAX_WAV_MS),
            };
            let outbox_dir = profile::outbox_dir(&cfg.user)?;
            let new_outbox = !outbox_dir.exists();
            let outbox = Outbox::open(&outbox_dir)?;
            let (header, _) = match ops::queue_wav_within(&outbox, &file, target, &enc, max_ms) {
                Ok(queued) => queued,
                Err(e) => {
                    if new_outbox {
                        let _ = std::fs::remove_dir_all(&outbox_dir);
                    }
                    return Err(Failure(format!("cannot send {}: {e}", file.display()), 1));
                }
            };
            let id = header.id;
            let mut report = ops::FlushReport::default();
            if let Some(client) = client {
                // An interruption here is retried below.
                if let Ok(r) = ops::flush(&client, &outbox).await {
                    report.absorb(r);
                }
                client.close().await;
            }
            if !report.settled(id) {
                match ops::flush_with_retry(&cfg, &outbox, Some(id), Duration::from_secs(retry_for))
                    .await
                {
                    Ok(more) => {
                        // flush_with_retry reports no interruption with Ok.
                        report.absorb(more);
                    }
                    // Refused for good before the clip was offered (the user or token is
                    // wrong, the relay is not the pinned one): retrying would not help, and a
                    // later send must not deliver it behind the user's back.
                    Err(e) if !e.is_transient() => {
                        if new_outbox {
                            // Most likely a mistyped user name: leave no outbox for it behind.
                            let _ = std::fs::remove_dir_all(&outbox_dir);
                            return Err(Failure(format!("cannot send {}: {e}", file.display()), 1));
                        }
                        let moved = outbox.reject(&id, &e.to_string());
                        let whereto = moved.map_or_else(
                            |m| format!("could not be moved aside: {m}"),
                            |p| format!("was moved to {}", p.display()),
                        );
                        return Err(Failure(
                            format!("cannot send {}: {e}; clip {id} {whereto}", file.display()),
                            1,
                        ));
                    }
                    Err(e) => {
                        return Err(Failure(
                            format!(
                                "clip {id} was not acknowledged after {retry_for} s ({e}); it stays in the outbox {} and the next `walkie send` or `walkie listen` retries it",
                                outbox.dir().display()
                            ),
                            1,
                        ));
                    }
                }
            }
            for (rid, err) in &report.rejected {
                if *rid == id {
                    return Err(Failure(
                        format!(
                            "the relay refused {}: {err}; the clip was moved to {}/failed",
                            file.display(),
                            outbox.dir().display()
                        ),
                        1,
                    ));
                }
                eprintln!(
                    "warning: an earlier clip {rid} was refused ({err}) and moved to {}/failed",
                    outbox.dir().display()
                );
            }
            for (sid, seq) in &report.stored {
                if *sid != id {
                    eprintln!("sent earlier clip {sid} from the outbox (seq {seq})");
                }
            }
            println!("{id}");
        }
        Command::Devices => {
            let list = walkie_media::audio::cpal::list_devices().map_err(|e| e.to_string())?;
            print!("{list}");
        }
        Command::Talk {
            to,
            input_device,
            seconds,
            no_noise_suppression,
            encode,
        } => {
            let target = parse_target(&to)?;
            let enc = encode.config()?;
            if seconds.is_some_and(|s| !(s > 0.0 && s <= 600.0)) {
                return Err(usage("--seconds must be between 0 and 600"));
            }
            let cfg = client_config(&cli.conn)?;
            let opts = live::TalkArgs {
                target,
                encoder: enc,
                device: input_device,
                seconds,
                noise_suppression: !no_noise_suppression,
            };
            live::talk(&cfg, opts).await?;
        }
        Command::Listen {
            play: true,
            output_device,
            save_dir,
            count,
            timeout,
        } => {
            let cfg = client_config(&cli.conn)?;
            let opts = ListenOptions {
                save_dir,
                count,
                timeout: timeout.map(Duration::from_secs),
            };
            live::listen_and_play(&cfg, output_device, opts).await?;
        }
        Command::Listen {
            play: false,
            save_dir,
            count,
            timeout,
            ..
        } => {
            let cfg = client_config(&cli.conn)?;
            let outbox = Outbox::open(&profile::outbox_dir(&cfg.user)?)?;
            let mut client = Client::connect(&cfg).await?;
            let report = ops::flush(&client, &outbox).await?;
            for (id, _) in &report.stored {
                eprintln!("sent queued clip {id} from the outbox");
            }
            let opts = ListenOptions {
                save_dir,
                count,
                timeout: timeout.map(Duration::from_secs),
            };
            let result = ops::listen_items(&mut client, &opts, |item| match item {
                ops::Item::Clip(clip) => println!(
                    "{} {} {} {}",
                    clip.header.id,
                    clip.header.from,
                    clip.header.to,
                    clip.duration_ms()
                ),
                ops::Item::Message(m) => println!("{}", ops::message_line(m)),
            })
            .await;
            client.close().await;
            match result {
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => {
                    let secs = timeout.unwrap_or_default();
                    return Err(Failure(
                        match count {
                            Some(n) => format!("fewer than {n} clips arrived within {secs} s"),
                            None => format!("stopped after {secs} s"),
                        },
                        1,
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::History {
            target,
            limit,
            json,
        } => {
            let target = parse_target(&target)?;
            let cfg = client_config(&cli.conn)?;
            let client = Client::connect(&cfg).await?;
            let clips = client.history(Some(target), limit, None).await;
            let clips = match clips {
                Ok(clips) => clips,
                Err(e) => {
                    client.close().await;
                    return Err(e.into());
                }
            };
            // The JSON form carries each text itself (fetched; texts are small).
            let mut all: Vec<_> = clips.iter().map(ops::history_json).collect();
            if json {
                for (entry, meta) in all.iter_mut().zip(&clips) {
                    if let walkie_proto::message::Content::Text { .. } = meta.content
                        && let Ok((_, bytes)) = client.fetch(meta.id).await
                    {
                        entry["text"] = String::from_utf8_lossy(&bytes).into_owned().into();
                    }
                }
            }
            client.close().await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?
                );
            } else {
                for c in clips {
                    println!(
                        "{} {} {} {} {} {}",
                        c.id,
                        c.from,
                        c.to,
                        ops::rfc3339(c.started_at_ms),
                        c.duration_ms,
                        c.bytes
                    );
                }
            }
        }
        Command::Fetch { clip, out } => {
            let id: ClipId = clip.parse().map_err(|e: ClipError| usage(e.to_string()))?;
            let ext = out
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            if !matches!(ext.as_deref(), Some("opus" | "wav")) {
                return Err(usage(format!(
                    "--out {}: the file must end in .opus or .wav",
                    out.display()
                )));
            }
            let cfg = client_config(&cli.conn)?;
            let client = Client::connect(&cfg).await?;
            let fetched = client.fetch(id).await;
            client.close().await;
            let (meta, bytes) = fetched?;
            if !meta.content.is_voice() {
                return Err(Failure(
                    format!(
                        "{id} is a {} message, not a clip: `walkie export` or `walkie listen --save-dir` write its files",
                        meta.content.name()
                    ),
                    1,
                ));
            }
            if ext.as_deref() == Some("wav") {
                let parsed = ogg::read_ogg(&bytes).map_err(ClientError::from)?;
                let pcm = codec::decode_packets(&parsed.params, &parsed.packets, parsed.samples)
                    .map_err(ClientError::from)?;
                walkie_media::audio::wav::write_wav_mono16(&out, 48_000, &pcm)
                    .map_err(|e| ClientError::from(codec::CodecError::from(e)))?;
            } else {
                std::fs::write(&out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
            }
            println!(
                "{} {} {} {} -> {}",
                meta.id,
                meta.from,
                meta.to,
                meta.duration_ms,
                out.display()
            );
        }
        Command::Export { out } => {
            let cfg = client_config(&cli.conn)?;
            let client = Client::connect(&cfg).await?;
            let people = ops::export_people(&client, &out).await;
            let n = ops::export(&client, &out).await;
            client.close().await;
            let people = people?;
            println!(
                "exported your profile{}, {} contacts and {} channels to {}",
                if people.avatar {
                    " with its avatar"
                } else {
                    ""
                },
                people.contacts,
                people.channels,
                out.display()
            );
            println!("exported {} clips to {}", n?, out.display());
        }
        Command::Encode {
            files,
            out_dir,
            encode,
        } => {
            let enc = encode.config()?;
            let jobs = codec_jobs(files, out_dir.as_deref(), "encode", "opus")?;
            run_codec_jobs(&jobs, |input, output| {
                let clip = codec::encode_file(input, output, &enc).map_err(ClientError::from)?;
                let bytes: usize = clip.packets.iter().map(Vec::len).sum();
                Ok(format!(
                    "{} -> {}: {} ms, {} packets, {} bytes of Opus",
                    input.display(),
                    output.display(),
                    (clip.samples + 24) / 48,
                    clip.packets.len(),
                    bytes
                ))
            })?;
        }
        Command::Decode { files, out_dir } => {
            let jobs = codec_jobs(files, out_dir.as_deref(), "decode", "wav")?;
            run_codec_jobs(&jobs, |input, output| {
                let samples = codec::decode_file(input, output).map_err(ClientError::from)?;
                Ok(format!(
                    "{} -> {}: {} ms at 48 kHz",
                    input.display(),
                    output.display(),
                    (samples + 24) / 48
                ))
            })?;
        }
        Command::Demo { out } => {
            let report = walkie::demo::run(out.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
        }
        Command::App { demo } => {
            let profile = settings(&cli.conn)?;
            // The window's event loop blocks this (main) thread until it closes.
            tokio::task::block_in_place(|| walkie_app::run(profile, demo))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_no_argument_shadows_a_global_one() {
        let cli = <Cli as clap::CommandFactory>::command();
        cli.clone().debug_assert();
        // clap lets a subcommand's own `user` argument share the global --user's id, and then
        // one silently fills the other: every argument id must differ from the globals'.
        let globals: Vec<String> = cli
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(|a| a.get_id().to_string())
            .collect();
        fn walk(cmd: &clap::Command, globals: &[String], path: &str) {
            for a in cmd.get_arguments() {
                assert!(
                    !globals.contains(&a.get_id().to_string()),
                    "`{path}` has an argument `{}` like a global one",
                    a.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                walk(sub, globals, &format!("{path} {}", sub.get_name()));
            }
        }
        for sub in cli.get_subcommands() {
            walk(sub, &globals, sub.get_name());
        }
    }
}
