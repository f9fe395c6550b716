//! The live commands of the CLI as library calls: `walkie talk` (scripted for N seconds, or
//! interactive push-to-talk in the terminal with a level meter) and `walkie listen --play`
//! (clips played as they come, live ones before they end, one after another).

use std::io::Write;
use std::time::{Duration, Instant};

use walkie_client::ops::{self, ListenOptions};
use walkie_client::outbox::Outbox;
use walkie_client::talk::{self, TalkControl, TalkOptions, TalkOutcome};
use walkie_client::{Client, ClientConfig, ClientError, Event, profile};
use walkie_media::audio::AudioError;
use walkie_media::audio::open::{CaptureConfig, open_sink, open_source};
use walkie_media::audio::source::AudioSource;
use walkie_media::codec::EncoderConfig;
use walkie_media::player::{self, Player, PlayerConfig, PlayerEvent, PlayerInput};
use walkie_proto::clip::Target;

/// What `walkie talk` was asked to do.
#[derive(Clone, Debug)]
pub struct TalkArgs {
    /// Channel or user.
    pub target: Target,
    /// Encoder settings.
    pub encoder: EncoderConfig,
    /// Input device (`None`: the default; `wav:PATH`, `null` also work).
    pub device: Option<String>,
    /// Scripted mode: capture this many seconds.
    pub seconds: Option<f64>,
    /// Remove background noise.
    pub noise_suppression: bool,
}

fn audio_err(e: AudioError) -> ClientError {
    ClientError::Config(format!("audio device: {e}"))
}

/// Runs `walkie talk`: connects, keeps the microphone open, and sends live clips.
pub async fn talk(cfg: &ClientConfig, args: TalkArgs) -> Result<(), ClientError> {
    let capture = CaptureConfig {
        noise_suppression: args.noise_suppression,
        ..CaptureConfig::default()
    };
    let source = open_source(args.device.as_deref(), capture).map_err(audio_err)?;
    let outbox = Outbox::open(&profile::outbox_dir(&cfg.user)?)?;
    let client = Client::connect(cfg).await?;
    // What earlier runs left behind goes first.
    ops::flush(&client, &outbox).await?;
    let opts = TalkOptions {
        encoder: args.encoder,
        ..TalkOptions::new(args.target.clone())
    };
    let result = match args.seconds {
        Some(secs) => {
            scripted(
                &client,
                &outbox,
                source,
                &opts,
                Duration::from_secs_f64(secs),
            )
            .await
        }
        None => console::run(&client, &outbox, source, &opts).await,
    };
    client.close().await;
    result
}

async fn scripted(
    client: &Client,
    outbox: &Outbox,
    source: Box<dyn AudioSource>,
    opts: &TalkOptions,
    secs: Duration,
) -> Result<(), ClientError> {
    let control = TalkControl::new();
    // The tail is part of the asked-for length here: capture exactly `secs`.
    let opts = TalkOptions {
        tail: Duration::ZERO,
        preroll: Duration::ZERO,
        ..opts.clone()
    };
    eprintln!("talking to {} for {:.1} s", opts.to, secs.as_secs_f64());
    let (outcome, _source) =
        talk::talk(Some(client), outbox, source, &opts, control, Some(secs)).await?;
    report(&outcome)
}

/// Prints how a clip ended: the clip id alone on the last line when it was stored.
fn report(outcome: &TalkOutcome) -> Result<(), ClientError> {
    match outcome {
        TalkOutcome::Stored { id, duration, .. } => {
            eprintln!("sent {} ms", duration.as_millis());
            println!("{id}");
            Ok(())
        }
        TalkOutcome::Queued { id, reason } => Err(ClientError::Config(format!(
            "clip {id} was recorded but not acknowledged ({reason}); it stays in the outbox and the next `walkie send`, `talk` or `listen` sends it"
        ))),
        TalkOutcome::Cancelled => {
            eprintln!("cancelled; nothing was sent");
            Ok(())
        }
    }
}

mod console {
    //! Interactive push-to-talk in a terminal (crossterm raw mode).
    use super::*;
    use crossterm::event::{
        self, Event as TermEvent, KeyCode, KeyEventKind, KeyboardEnhancementFlags,
    };
    use crossterm::{execute, terminal};

    /// Restores the terminal however the session ends.
    struct Raw {
        enhanced: bool,
    }

    impl Raw {
        fn enter() -> Result<Raw, ClientError> {
            terminal::enable_raw_mode().map_err(|e| {
                ClientError::Config(format!(
                    "interactive talk needs a terminal ({e}); use --seconds S in scripts"
                ))
            })?;
            let enhanced = matches!(terminal::supports_keyboard_enhancement(), Ok(true))
                && execute!(
                    std::io::stderr(),
                    event::PushKeyboardEnhancementFlags(
                        KeyboardEnhancementFlags::REPORT_EVENT_TYPES
                    )
                )
                .is_ok();
            Ok(Raw { enhanced })
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            if self.enhanced {
                let _ = execute!(std::io::stderr(), event::PopKeyboardEnhancementFlags);
            }
            let _ = terminal::disable_raw_mode();
            eprintln!();
        }
    }

    enum Key {
        Down,
        Up,
        Cancel,
        Quit,
    }

    /// Reads keys on a thread of its own (crossterm's reads block).
    fn keys(enhanced: bool) -> tokio::sync::mpsc::UnboundedReceiver<Key> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut talking = false;
            loop {
                let Ok(TermEvent::Key(k)) = event::read() else {
                    continue;
                };
                let key = match (k.code, k.kind) {
                    (KeyCode::Esc, KeyEventKind::Press) => Some(Key::Cancel),
                    (KeyCode::Char('q'), KeyEventKind::Press) if !talking => Some(Key::Quit),
                    (KeyCode::Char('c'), KeyEventKind::Press)
                        if k.modifiers.contains(event::KeyModifiers::CONTROL) =>
                    {
                        Some(Key::Quit)
                    }
                    // Hold Space where the terminal reports releases.
                    (KeyCode::Char(' '), KeyEventKind::Press) if enhanced && !talking => {
                        Some(Key::Down)
                    }
                    (KeyCode::Char(' '), KeyEventKind::Release) if enhanced && talking => {
                        Some(Key::Up)
                    }
                    // Otherwise Enter starts and Enter sends.
                    (KeyCode::Enter, KeyEventKind::Press) => {
                        Some(if talking { Key::Up } else { Key::Down })
                    }
                    _ => None,
                };
                if let Some(key) = key {
                    talking = matches!(key, Key::Down);
                    if tx.send(key).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    fn meter(level: f32) -> String {
        let db = 20.0 * level.max(1e-5).log10();
        let bars = (((db + 60.0) / 60.0).clamp(0.0, 1.0) * 30.0) as usize;
        format!("[{}{}]", "#".repeat(bars), " ".repeat(30 - bars))
    }

    pub(super) async fn run(
        client: &Client,
        outbox: &Outbox,
        mut source: Box<dyn AudioSource>,
        opts: &TalkOptions,
    ) -> Result<(), ClientError> {
        let raw = Raw::enter()?;
        let how = if raw.enhanced {
            "hold Space to talk"
        } else {
            "press Enter to talk, Enter again to send"
        };
        eprint!("talking to {}: {how}; Esc cancels; q quits\r\n", opts.to);
        let mut keys = keys(raw.enhanced);
        loop {
            match keys.recv().await {
                Some(Key::Down) => {}
                Some(Key::Quit) | None => return Ok(()),
                _ => continue,
            }
            let control = TalkControl::new();
            let clip = talk::talk(Some(client), outbox, source, opts, control.clone(), None);
            tokio::pin!(clip);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let (outcome, back) = loop {
                tokio::select! {
                    done = &mut clip => break done?,
                    key = keys.recv() => match key {
                        Some(Key::Up) => control.release(),
                        Some(Key::Cancel) | Some(Key::Quit) | None => control.cancel(),
                        Some(Key::Down) => {}
                    },
                    _ = tick.tick() => {
                        let e = control.elapsed();
                        eprint!("\r{} {:>3}.{} s  ", meter(control.level()), e.as_secs(), e.subsec_millis() / 100);
                        let _ = std::io::stderr().flush();
                    }
                }
            };
            source = back;
            eprint!("\r");
            match &outcome {
                TalkOutcome::Stored { id, duration, .. } => {
                    eprint!("sent {} ms as {id}{:30}\r\n", duration.as_millis(), "")
                }
                TalkOutcome::Queued { id, reason } => {
                    eprint!("{id} kept in the outbox: {reason}\r\n")
                }
                TalkOutcome::Cancelled => eprint!("cancelled{:40}\r\n", ""),
            }
        }
    }
}

/// Runs `walkie listen --play`: prints a line per clip like `walkie listen`, plays every
/// clip through `device`, sends "played" receipts, and with `count` exits once the N-th clip
/// has finished playing.
pub async fn listen_and_play(
    cfg: &ClientConfig,
    device: Option<String>,
    opts: ListenOptions,
) -> Result<(), ClientError> {
    let sink = open_sink(device.as_deref()).map_err(audio_err)?;
    let outbox = Outbox::open(&profile::outbox_dir(&cfg.user)?)?;
    let mut client = Client::connect(cfg).await?;
    ops::flush(&client, &outbox).await?;
    if let Some(dir) = &opts.save_dir {
        std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let handle = player::spawn(Player::new(sink, &cfg.user, PlayerConfig::default()))
        .map_err(|e| ClientError::Config(format!("cannot start the player: {e}")))?;
    eprintln!("listening as {}; clips play as they come", cfg.user);
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut played = 0usize;
    let mut seen = std::collections::HashSet::new();
    let result = loop {
        if opts.count.is_some_and(|n| played >= n) {
            break Ok(());
        }
        // Player events come through a std channel: poll it between network events.
        while let Ok(ev) = handle.events().try_recv() {
            match ev {
                Ok(PlayerEvent::Played { id }) => {
                    played += 1;
                    let _ = client.played(id).await;
                }
                Ok(PlayerEvent::LiveStats { id, stats }) => eprintln!(
                    "{id} live: {} played, {} late, {} concealed, {} recovered from FEC, {} dropped",
                    stats.played,
                    stats.late,
                    stats.skipped + stats.expanded,
                    stats.recovered,
                    stats.drained + stats.overflowed
                ),
                Ok(_) => {}
                Err(message) => {
                    return Err(ClientError::Config(format!("playback failed: {message}")));
                }
            }
        }
        if opts.count.is_some_and(|n| played >= n) {
            break Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Err(ClientError::Timeout(opts.timeout.unwrap_or_default()));
        }
        let event = match tokio::time::timeout(Duration::from_millis(20), client.next_event()).await
        {
            Err(_) => continue,
            Ok(None) => {
                break Err(ClientError::Closed(
                    client
                        .close_reason()
                        .unwrap_or_else(|| "the relay closed the connection".into()),
                ));
            }
            Ok(Some(e)) => e,
        };
        match event {
            Event::LiveStarted(h) => {
                handle.send(PlayerInput::Offer(h));
            }
            Event::LivePacket(id, p) => {
                handle.send(PlayerInput::Packet(id, p));
            }
            Event::Aborted(e) => {
                if let Some(id) = e.clip {
                    handle.send(PlayerInput::Abort(id));
                }
            }
            Event::Clip(clip) => {
                let id = clip.header.id;
                if seen.insert(id) {
                    if let Some(dir) = &opts.save_dir {
                        ops::save_clip(dir, &clip)?;
                    }
                    println!(
                        "{} {} {} {}",
                        id,
                        clip.header.from,
                        clip.header.to,
                        clip.duration_ms()
                    );
                    let _ = std::io::stdout().flush();
                    if clip.header.live {
                        handle.send(PlayerInput::End(id, clip.samples));
                    } else {
                        handle.send(PlayerInput::Complete(clip));
                    }
                }
                client.ack(id).await?;
            }
            Event::Message(m) => {
                let show = |m: &walkie_proto::received::ReceivedMessage| {
                    println!("{}", ops::message_line(m));
                    let _ = std::io::stdout().flush();
                };
                if ops::take_message(&client, opts.save_dir.as_deref(), &mut seen, &m, show).await?
                {
                    played += 1;
                }
            }
            Event::Error(e) => eprintln!("relay error: {} ({})", e.message, e.code.name()),
            Event::Channels(_) | Event::Online(_) | Event::Presence(..) => {}
            Event::PlayedBy(id, user) => eprintln!("{id} played by {user}"),
            Event::ContactChanged(e) => eprintln!(
                "@{} is now {} for you",
                e.user,
                e.state.map_or("gone", |s| s.name())
            ),
        }
    };
    let (_sink, _) = handle.finish();
    client.close().await;
    match result {
        Err(ClientError::Timeout(t)) => Err(ClientError::Config(match opts.count {
            Some(n) => format!("fewer than {n} clips were played within {} s", t.as_secs()),
            None => format!("stopped after {} s", t.as_secs()),
        })),
        other => other,
    }
}
