//! `walkie app --demo`: a relay in-process on loopback with users alice and bob and the
//! channel `crew`. The app connects as alice; bob is a second in-process client that greets
//! the channel once, talks again (live, the bundled speech sample) whenever asked, and plays
//! every clip alice sends so her clips get "played by bob" receipts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;
use walkie_client::outbox::Outbox;
use walkie_client::profile::Profile;
use walkie_client::talk::{self, TalkControl, TalkOptions};
use walkie_client::{Client, ClientConfig, ClientError, Event};
use walkie_media::audio::wav_source::WavSource;
use walkie_proto::clip::{ClipId, Target};
use walkie_relay::demo::DemoRelay;

/// The running demo.
pub struct Demo {
    /// The profile the app connects with (alice).
    pub alice: Profile,
    /// Where the app keeps its settings and data during the demo.
    pub dir: PathBuf,
    /// The bundled speech sample, the demo's microphone when there is no real one.
    pub sample: PathBuf,
    relay: Option<DemoRelay>,
    bob: mpsc::UnboundedSender<()>,
    _work: tempfile::TempDir,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClientError + '_ {
    move |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Demo {
    /// Starts the relay and bob.
    pub async fn start() -> Result<Demo, ClientError> {
        let work = tempfile::Builder::new()
            .prefix("walkie-app-demo-")
            .tempdir()
            .map_err(io(Path::new("temporary dir")))?;
        let relay = DemoRelay::start()
            .await
            .map_err(|e| ClientError::Config(format!("demo relay: {e}")))?;
        let token = |user: &str| relay.token(user).unwrap_or_default().to_string();
        let (addr, pin) = (relay.handle.addr, relay.handle.fingerprint);
        let alice = Profile {
            relay: Some(addr.to_string()),
            user: Some("alice".into()),
            token: Some(token("alice")),
            cert: None,
            fingerprint: Some(pin.to_string()),
            ca_file: None,
        };
        let bob_cfg = ClientConfig {
            relay: addr.to_string(),
            user: "bob".into(),
            token: token("bob"),
            trust: pin.into(),
        };
        let sample = work.path().join("hello-crew.wav");
        std::fs::write(&sample, walkie_media::audio::DEMO_SPEECH).map_err(io(&sample))?;
        let outbox = Outbox::open(&work.path().join("bob-outbox"))?;
        let (bob, asks) = mpsc::unbounded_channel();
        let bob_sample = sample.clone();
        tokio::spawn(async move {
            if let Err(e) = run_bob(bob_cfg, bob_sample, outbox, asks).await {
                warn!("demo: bob stopped: {e}");
            }
        });
        let dir = work.path().join("app");
        Ok(Demo {
            alice,
            dir,
            sample,
            relay: Some(relay),
            bob,
            _work: work,
        })
    }

    /// Asks bob to say something on `crew`.
    pub fn bob_talks(&self) {
        let _ = self.bob.send(());
    }

    /// Stops the relay.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.relay.take() {
            r.shutdown().await;
        }
    }
}

/// Bob: greets once, then talks when asked and plays alice's clips.
async fn run_bob(
    cfg: ClientConfig,
    sample: PathBuf,
    outbox: Outbox,
    mut asks: mpsc::UnboundedReceiver<()>,
) -> Result<(), ClientError> {
    let mut client = Client::connect(&cfg).await?;
    let mut to_play: Vec<(Instant, ClipId)> = Vec::new();
    let mut greet = Some(tokio::time::Instant::now() + Duration::from_secs(2));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        enum Next {
            Talk,
            Event(Option<Event>),
            Tick,
        }
        let next = tokio::select! {
            ask = asks.recv() => match ask { Some(()) => Next::Talk, None => return Ok(()) },
            () = async { match greet { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                greet = None;
                Next::Talk
            }
            e = client.next_event() => Next::Event(e),
            _ = tick.tick() => Next::Tick,
        };
        match next {
            Next::Talk => {
                let source = Box::new(
                    WavSource::open(&sample, true)
                        .map_err(|e| ClientError::Config(e.to_string()))?,
                );
                let opts = TalkOptions::new(Target::Channel("crew".into()));
                match talk::talk(
                    Some(&client),
                    &outbox,
                    source,
                    &opts,
                    TalkControl::new(),
                    None,
                )
                .await
                {
                    Ok(_) => {}
                    Err(e) => warn!("demo: bob could not talk: {e}"),
                }
            }
            Next::Event(None) => return Ok(()),
            Next::Event(Some(Event::Clip(clip))) => {
                client.ack(clip.header.id).await?;
                if clip.header.from != "bob" {
                    to_play.push((
                        Instant::now() + Duration::from_millis(clip.duration_ms()),
                        clip.header.id,
                    ));
                }
            }
            Next::Event(Some(_)) => {}
            Next::Tick => {
                let now = Instant::now();
                for (_, id) in to_play.iter().filter(|(at, _)| *at <= now) {
                    client.played(*id).await?;
                }
                to_play.retain(|(at, _)| *at > now);
            }
        }
    }
}
