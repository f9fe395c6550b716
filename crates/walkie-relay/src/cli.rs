//! The `walkie-relay` command line: runs the relay and administers its users and channels
//! (a thin shell over the library). Both the relay crate's binary and the workspace's copy of
//! it call [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use walkie_proto::clip::{validate_name, validate_user_name};
use walkie_store::Store;
#[cfg(feature = "nats")]
use walkie_store::nats::{NatsConfig, NatsStore};
use walkie_store::sqlite::SqliteStore;

#[cfg(feature = "nats")]
use crate::cluster::nats::NatsCluster;
use crate::config::{RelayConfig, RelayFile};
use crate::{auth, people};
use walkie_proto::people::{Invite, InviteLink};

/// The walkie relay: stores voice clips durably and pushes them to their recipients.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Where the relay keeps its database, clips and certificate
    /// (default: the platform data dir, e.g. ~/.local/share/walkie-relay).
    #[arg(long, global = true, env = "WALKIE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where users, channels and clips live: `sqlite` (the embedded store in the data dir,
    /// the default) or `nats://HOST:PORT[,HOST:PORT...]`, a NATS JetStream cluster that
    /// several relays share (the data dir then holds only the certificate).
    #[arg(long, global = true, env = "WALKIE_STORE", value_name = "STORE")]
    store: Option<String>,
    /// Name prefix of the NATS store's streams, buckets and subjects: relays with the same
    /// servers and prefix share one store [default: walkie].
    #[arg(long, global = true, env = "WALKIE_STORE_PREFIX", value_name = "NAME")]
    store_prefix: Option<String>,
    /// A TOML file of relay limits (see the README's "Configuration"); flags override it.
    #[arg(long, global = true, env = "WALKIE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients; prints `listening on ADDR` and the certificate fingerprint.
    Serve {
        /// UDP address to listen on [default: [::]:7300, or the config file's].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Longest clip accepted, in seconds [default: 60, or the config file's].
        #[arg(long, value_name = "SECS")]
        max_clip_secs: Option<u32>,
        /// Serve metrics and health over HTTP on this TCP address: `/metrics` (Prometheus
        /// text), `/healthz` (the process answers), `/readyz` (the store takes writes). Off
        /// by default. Bind loopback or a private address (e.g. 127.0.0.1:9300): it needs no
        /// login. Prints `metrics on http://ADDR/metrics`.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// How log lines on stderr look: `text` (one readable line each, control characters
        /// escaped) or `json` (one JSON object per line, for a log collector). The lines on
        /// stdout stay as they are.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
        log_format: LogFormat,
        /// Present this CA-issued certificate chain (PEM, leaf first) instead of the relay's
        /// self-signed one: clients with no pin then check it against their system's roots
        /// and the relay's name. Read again when the files change (renewals need no restart).
        #[arg(long, value_name = "CHAIN.pem", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        #[command(flatten)]
        acme: AcmeArgs,
    },
    /// Show the relay on this data dir: whether it runs (pid, version, uptime), where it
    /// listens, its metrics address, sessions, users, channels, inbox items waiting and the
    /// storage it takes. One `key value` line each.
    Status,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage channels.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Invite people: an invite link signs a new user up with `walkie join LINK --name NAME`.
    #[command(subcommand)]
    Invite(InviteCmd),
    /// Back up the relay to one file, safe while it serves; prints `backup FILE: N clips, M bytes`.
    ///
    /// The file holds the database, every clip and message it points to, and the certificate
    /// and key (clients' pinned fingerprint holds after a restore). The backup is a consistent
    /// snapshot taken without stalling the relay's commits; a clip erased while it runs is in
    /// it as it is after. It never overwrites FILE. The embedded store only: back a NATS store
    /// up with its cluster's tools (`nats stream backup`).
    Backup {
        /// The file to write (refused if it exists; written as FILE.partial, then renamed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into a new data dir (--data-dir DIR); prints `restored N clips into DIR`.
    ///
    /// DIR must not exist, or be empty. Every file's size and SHA-256, the database's
    /// integrity and every clip's place in its file are checked before DIR appears; a refused
    /// restore leaves nothing. Then serve from DIR: same certificate, same users and tokens.
    Restore {
        /// A file written by `walkie-relay backup`.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum InviteCmd {
    /// Make an invite link; prints it alone on the last line:
    /// `walkie://HOST:PORT/join/CODE#sha256:FINGERPRINT`. It carries the pin of this relay's
    /// certificate, so whoever has it can sign up without anything else; send it privately.
    /// The code is shown once (only its hash is kept).
    Create {
        /// How many people may sign up with it.
        #[arg(long, default_value_t = 1, value_name = "N")]
        uses: u32,
        /// How long it works: a number with s, m, h, d or w (at most 365d).
        #[arg(long, default_value = "7d", value_name = "DURATION")]
        expires: String,
        /// A channel each new user joins.
        #[arg(long, value_name = "NAME")]
        channel: Option<String>,
        /// The address clients reach this relay at [default: this machine's host name and the
        /// configured port; set it for a relay behind NAT or DNS].
        #[arg(long, env = "WALKIE_PUBLIC_ADDRESS", value_name = "HOST:PORT")]
        address: Option<String>,
        /// For a relay with a CA-issued certificate (--tls-cert or --acme): the link carries
        /// no pin (`walkie://HOST:PORT/join/CODE`); clients check the certificate by name.
        #[arg(long)]
        no_pin: bool,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; prints their new token alone on the last line. A name that has history on
    /// this relay (clips sent by it or sent to it directly, from a removed user) is refused:
    /// a new user never inherits someone else's clips.
    Add {
        /// User name: 1-32 of a-z, 0-9, '.', '_', '-'.
        name: String,
    },
    /// Give a user a new token; prints it alone on the last line. The old token stops working
    /// and a running relay closes every session opened with it within 2 seconds.
    Token {
        /// User name.
        name: String,
    },
    /// List users.
    List,
    /// Remove a user (their memberships, profile, contacts and undelivered clips go too;
    /// channels they made pass to another member); a running relay closes their sessions
    /// within a second.
    Remove {
        /// User name.
        name: String,
    },
    /// Delete the audio of every clip a user sent (overwritten, then removed), anonymise
    /// those clips' metadata, and remove the user's display name. Export the user's history first with `walkie export`.
    Purge {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ChannelCmd {
    /// Create a channel with its members.
    Add {
        /// Channel name.
        name: String,
        /// Comma-separated member names (existing users).
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
    },
    /// List channels and their members.
    List,
    /// Show a channel's members, adding or removing some first.
    Members {
        /// Channel name.
        name: String,
        /// Users to add, comma-separated.
        #[arg(long, value_delimiter = ',')]
        add: Vec<String>,
        /// Users to remove, comma-separated.
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
    },
}

fn data_dir(cli: &Option<PathBuf>) -> Result<PathBuf, String> {
    match cli {
        Some(d) => Ok(d.clone()),
        None => directories::ProjectDirs::from("", "", "walkie-relay")
            .map(|d| d.data_dir().to_path_buf())
            .ok_or_else(|| "cannot find a data directory; pass --data-dir DIR".to_string()),
    }
}

fn check_names(names: &[String]) -> Result<(), String> {
    names
        .iter()
        .try_for_each(|n| validate_name(n).map_err(|e| e.to_string()))
}

/// How log lines on stderr look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// `serve`'s ACME flags.
#[derive(clap::Args)]
struct AcmeArgs {
    /// Get the relay's certificate for this DNS name from an ACME CA (Let's Encrypt unless
    /// --acme-directory says otherwise) before listening, and renew it while serving (no
    /// restart). Clients with no pin check it against their system's roots and the name.
    /// Port 80 of DOMAIN must reach --acme-http. Kept in DIR/acme. Using it accepts the CA's
    /// terms of service.
    #[arg(long, value_name = "DOMAIN", value_parser = acme_domain, requires = "acme_contact", conflicts_with_all = ["tls_cert", "tls_key"])]
    acme: Option<String>,
    /// The ACME CA's directory URL.
    #[arg(long, value_name = "URL", default_value = crate::acme::LETS_ENCRYPT, requires = "acme")]
    acme_directory: String,
    /// The email address the CA writes to about the account (expiry, policy changes).
    #[arg(long, value_name = "EMAIL", requires = "acme")]
    acme_contact: Option<String>,
    /// TCP address that answers the CA's HTTP-01 challenges: what port 80 of DOMAIN reaches.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "[::]:80",
        requires = "acme"
    )]
    acme_http: SocketAddr,
    /// Extra roots (PEM) for the ACME server's HTTPS, e.g. a test CA.
    #[arg(long, value_name = "PEM", requires = "acme")]
    acme_ca_file: Option<PathBuf>,
}

impl AcmeArgs {
    /// The ACME settings, when --acme is given.
    fn config(self) -> Option<crate::acme::AcmeConfig> {
        let (domain, contact) = (self.acme?, self.acme_contact?);
        Some(crate::acme::AcmeConfig {
            directory: self.acme_directory,
            http: self.acme_http,
            ca_file: self.acme_ca_file,
            ..crate::acme::AcmeConfig::new(&domain, &contact)
        })
    }
}

fn acme_domain(text: &str) -> Result<String, String> {
    crate::acme::validate_domain(text).map_err(|e| e.to_string())
}

/// Runs the command line given to this process; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let json = matches!(
        &cli.command,
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        }
    );
    if json {
        // A panic's report is one JSON line too, like every other line on stderr.
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            json_line("ERROR", &format!("panicked at {at}: {what}"));
        }));
    }
    match &cli.command {
        Command::Serve {
            log_format: LogFormat::Json,
            ..
        } => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            // JSON strings escape every control character themselves.
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        _ => tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Plain text, every line escaped: peers choose some of what is logged.
            .with_writer(crate::logwriter::EscapedStderr)
            .with_ansi(false)
            .init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            json_line("ERROR", &format!("error: {e}"));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes one line on stderr as the JSON log format writes its lines (level, message,
/// target), whatever the log filter says: what ends the process is always reported.
fn json_line(level: &str, message: &str) {
    let line = serde_json::json!({
        "level": level,
        "fields": { "message": message },
        "target": "walkie_relay",
    });
    eprintln!("{line}");
}

/// Which store `--store` names.
enum StoreChoice {
    /// The embedded SQLite store in the data dir.
    Sqlite,
    /// A NATS JetStream cluster.
    #[cfg(feature = "nats")]
    Nats(NatsConfig),
}

fn store_choice(cli: &Cli) -> Result<StoreChoice, String> {
    let spec = cli.store.as_deref().map(str::trim).unwrap_or("sqlite");
    if spec.is_empty() || spec == "sqlite" {
        if cli.store_prefix.is_some() {
            return Err(
                "--store-prefix applies to a NATS store only (--store nats://HOST:PORT,...)".into(),
            );
        }
        return Ok(StoreChoice::Sqlite);
    }
    if !spec.starts_with("nats://") {
        return Err(format!(
            "--store {spec:?} is not `sqlite` nor `nats://HOST:PORT[,HOST:PORT...]`"
        ));
    }
    nats_choice(spec, cli.store_prefix.as_deref())
}

#[cfg(feature = "nats")]
fn nats_choice(spec: &str, prefix: Option<&str>) -> Result<StoreChoice, String> {
    let mut config = NatsConfig::new(&[spec.to_string()]);
    if let Some(prefix) = prefix {
        config.prefix = prefix.to_string();
    }
    Ok(StoreChoice::Nats(config))
}

#[cfg(not(feature = "nats"))]
fn nats_choice(_spec: &str, _prefix: Option<&str>) -> Result<StoreChoice, String> {
    Err("this walkie-relay was built without NATS support: build it with the `nats` feature (`cargo install --path crates/walkie-relay --features nats`)".into())
}

fn open_store(choice: &StoreChoice, dir: &std::path::Path) -> Result<Arc<dyn Store>, String> {
    match choice {
        StoreChoice::Sqlite => SqliteStore::open(dir)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("cannot open the relay's data in {}: {e}", dir.display())),
        #[cfg(feature = "nats")]
        StoreChoice::Nats(config) => NatsStore::connect_with(config.clone())
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| {
                format!(
                    "cannot open the NATS store at {}: {e}",
                    config.servers.join(",")
                )
            }),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let choice = store_choice(&cli)?;
    let dir = data_dir(&cli.data_dir)?;
    // Before a store is opened: opening one creates the data dir restore must make.
    match (&cli.command, &choice) {
        #[cfg(feature = "nats")]
        (Command::Backup { .. } | Command::Restore { .. }, StoreChoice::Nats(_)) => {
            return Err(crate::backup::NATS_REFUSED.into());
        }
        (Command::Backup { out }, _) => {
            return crate::backup::backup(&dir, out).map_err(|e| e.to_string());
        }
        (Command::Restore { file }, _) => {
            return crate::backup::restore(file, &dir).map_err(|e| e.to_string());
        }
        (Command::Status, StoreChoice::Sqlite)
            if !walkie_store::sqlite::backup::has_store(&dir) =>
        {
            return Err(format!(
                "no relay data in {}: pass the --data-dir the relay serves from",
                dir.display()
            ));
        }
        _ => {}
    }
    let store = open_store(&choice, &dir)?;
    match cli.command {
        Command::Serve {
            listen,
            max_clip_secs,
            metrics,
            log_format: _,
            tls_cert,
            tls_key,
            acme,
        } => {
            let mut config = match &cli.config {
                Some(path) => RelayFile::load(path)
                    .map_err(|e| e.to_string())?
                    .apply(RelayConfig::default()),
                None => RelayConfig::default(),
            };
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(secs) = max_clip_secs {
                config.max_clip_ms = secs.saturating_mul(1000);
            }
            if metrics.is_some() {
                config.metrics = metrics;
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.cert = crate::tls::CertSource::Files { cert, key };
            }
            if let Some(acme) = acme.config() {
                config.cert = crate::tls::CertSource::Acme(acme);
            }
            serve(config, dir, store, choice)
        }
        // Done above, before the store was opened.
        Command::Backup { .. } | Command::Restore { .. } => Ok(()),
        Command::Status => {
            let sqlite = matches!(choice, StoreChoice::Sqlite);
            print!("{}", crate::status::report(&dir, store.as_ref(), sqlite)?);
            Ok(())
        }
        Command::User(cmd) => user(store.as_ref(), cmd),
        Command::Channel(cmd) => channel(store.as_ref(), cmd),
        Command::Invite(InviteCmd::Create {
            uses,
            expires,
            channel,
            address,
            no_pin,
        }) => {
            let config = match &cli.config {
                Some(path) => RelayFile::load(path)
                    .map_err(|e| e.to_string())?
                    .apply(RelayConfig::default()),
                None => RelayConfig::default(),
            };
            let addr = match address {
                Some(a) => a,
                None => {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_string())
                        .unwrap_or_default();
                    let host = if host.is_empty() {
                        "localhost".to_string()
                    } else {
                        host
                    };
                    let guess = format!("{host}:{}", config.listen.port());
                    eprintln!(
                        "note: the link points at {guess}; pass --address HOST:PORT if clients reach this relay elsewhere"
                    );
                    guess
                }
            };
            let ttl = parse_duration(&expires)?;
            if uses == 0 {
                return Err("--uses must be at least 1".into());
            }
            if let Some(c) = &channel {
                validate_name(c).map_err(|e| e.to_string())?;
            }
            let fingerprint = if no_pin {
                None
            } else {
                let identity = walkie_net::RelayIdentity::load_or_create(&dir).map_err(|e| {
                    format!(
                        "cannot read the relay's certificate in {}: {e}",
                        dir.display()
                    )
                })?;
                Some(identity.fingerprint().to_string())
            };
            let now = walkie_proto::clip::now_ms();
            let invite = Invite {
                uses_left: uses,
                expires_ms: now.saturating_add(ttl),
                channel: channel.clone(),
                created_by: None,
                device_of: None,
            };
            let code = people::create_invite(store.as_ref(), &invite).map_err(|e| e.to_string())?;
            let link = InviteLink {
                addr,
                code: Some(code),
                fingerprint,
            };
            link.to_string()
                .parse::<InviteLink>()
                .map_err(|e| format!("--address: {e}"))?;
            let until = chrono_free_utc(invite.expires_ms);
            let to = channel
                .map(|c| format!(", joining channel {c}"))
                .unwrap_or_default();
            println!(
                "invite for {uses} sign-up{} until {until}{to}:",
                if uses == 1 { "" } else { "s" }
            );
            println!("{link}");
            Ok(())
        }
    }
}

/// `30s`, `15m`, `12h`, `7d`, `2w` as milliseconds (at most 365 days).
fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "--expires {text:?}: use a number followed by s, m, h, d or w (7d, 12h), at most 365d"
        )
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: i64 = t[..split].parse().map_err(|_| bad())?;
    let unit = match &t[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n
        .checked_mul(unit)
        .filter(|s| *s > 0 && *s <= 365 * 86_400)
        .ok_or_else(bad)?;
    Ok(secs * 1000)
}

/// `YYYY-MM-DD HH:MM UTC` of milliseconds since the epoch (civil-from-days, no time crate).
fn chrono_free_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn serve(
    config: RelayConfig,
    dir: PathBuf,
    store: Arc<dyn Store>,
    choice: StoreChoice,
) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        // Handlers first, so a signal that arrives right after the "listening" line is caught.
        let stop = stop_signal()?;
        let handle = match &choice {
            StoreChoice::Sqlite => crate::start(config, &dir, store).await,
            #[cfg(feature = "nats")]
            StoreChoice::Nats(nats) => {
                let cluster = NatsCluster::connect(nats)
                    .await
                    .map_err(|e| format!("cannot link to the other relays over NATS: {e}"))?;
                crate::start_with(config, &dir, store, Arc::new(cluster)).await
            }
        }
        .map_err(|e| e.to_string())?;
        println!("listening on {}", handle.addr);
        println!("fingerprint {}", handle.fingerprint);
        println!("certificate {}", handle.cert_path.display());
        if let Some(at) = handle.metrics_addr {
            println!("metrics on http://{at}/metrics");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        stop.await;
        tracing::info!("shutting down");
        handle.shutdown().await;
        Ok(())
    })
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed when it is made.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn user(store: &dyn Store, cmd: UserCmd) -> Result<(), String> {
    match cmd {
        UserCmd::Add { name } => {
            validate_user_name(&name).map_err(|e| e.to_string())?;
            if store
                .token_hash(&name)
                .map_err(|e| e.to_string())?
                .is_none()
                && store.has_history(&name).map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "the name {name:?} was used before on this relay and its clips are still stored; a new user would inherit them, so choose another name"
                ));
            }
            let token = auth::new_token();
            store
                .add_user(&name, &auth::hash_token(&token))
                .map_err(|e| e.to_string())?;
            println!("added user {name}; their token (shown once, keep it secret):");
            println!("{token}");
        }
        UserCmd::Token { name } => {
            let token = auth::new_token();
            if !store
                .set_token(&name, &auth::hash_token(&token))
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "there is no user {name:?}; `walkie-relay user list` shows who exists"
                ));
            }
            println!(
                "new token for {name} (shown once, keep it secret); sessions opened with the old one are closed:"
            );
            println!("{token}");
        }
        UserCmd::List => {
            for u in store.users().map_err(|e| e.to_string())? {
                println!("{u}");
            }
        }
        UserCmd::Remove { name } => {
            if !store.remove_user(&name).map_err(|e| e.to_string())? {
                return Err(format!(
                    "there is no user {name:?}; `walkie-relay user list` shows who exists"
                ));
            }
            people::forget(store, &name).map_err(|e| format!("removed user {name}, but not yet from others' contacts ({e}); run the command again"))?;
            println!("removed user {name}");
        }
        UserCmd::Purge { name } => {
            validate_name(&name).map_err(|e| e.to_string())?;
            let n = store.purge_user(&name).map_err(|e| e.to_string())?;
            if store
                .token_hash(&name)
                .map_err(|e| e.to_string())?
                .is_some()
            {
                people::clear_profile(store, &name).map_err(|e| e.to_string())?;
            }
            println!("purged the audio of {n} clips sent by {name}");
        }
    }
    Ok(())
}

fn channel(store: &dyn Store, cmd: ChannelCmd) -> Result<(), String> {
    match cmd {
        ChannelCmd::Add { name, members } => {
            validate_name(&name).map_err(|e| e.to_string())?;
            check_names(&members)?;
            store
                .add_channel(&name, &members)
                .map_err(|e| e.to_string())?;
            println!("added channel {name} with members {}", members.join(","));
        }
        ChannelCmd::List => {
            for c in store.channels().map_err(|e| e.to_string())? {
                println!("{} {}", c.name, c.members.join(","));
            }
        }
        ChannelCmd::Members { name, add, remove } => {
            check_names(&add)?;
            check_names(&remove)?;
            let members = if add.is_empty() && remove.is_empty() {
                store
                    .members(&name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("there is no channel {name:?}"))?
            } else {
                store
                    .update_members(&name, &add, &remove)
                    .map_err(|e| e.to_string())?
            };
            for m in members {
                println!("{m}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates_read_as_people_write_them() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration("90m"), Ok(90 * 60_000));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse_duration("3"), Ok(3 * 86_400_000));
        for bad in ["", "0d", "d", "5y", "366d", "-1h", "99999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(chrono_free_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(
            chrono_free_utc(1_772_323_200_000 + 3_723_000),
            "2026-03-01 01:02 UTC"
        );
    }
}
