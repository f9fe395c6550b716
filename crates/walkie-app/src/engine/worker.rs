//! The loop on the engine thread. It owns the connection, the microphone and the speaker,
//! and turns commands, relay events and player events into a new [`Snapshot`]. Work that
//! needs the relay in the background (waveforms, audio for auto-play) goes one fetch at a
//! time between events, and gives way to any command.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::audio_clip::ClipAudio;
use super::book;
use super::demo::Demo;
use super::jobs::{Job, JobDone};
use super::mic::{MicMsg, Microphone};
use super::session::{self, Unplayed};
use super::settings::AppFile;
use super::speaker::Speaker;
use super::state::{Connection, Devices, Notice, NoticeKind, Snapshot};
use super::{Command, EngineOptions, Shared};
use walkie_client::outbox::Outbox;
use walkie_client::profile::Profile;
use walkie_client::{Client, ClientConfig, ClientError, Event, ops};
use walkie_proto::clip::{ClipId, Target};
use walkie_media::codec::EncoderConfig;
use walkie_proto::wire::MAX_HISTORY_PAGE;

/// How often player events are collected and reconnects tried.
const TICK: Duration = Duration::from_millis(40);
/// Pause before reconnecting after a lost connection (doubling up to 30 s).
const RECONNECT_FIRST: Duration = Duration::from_secs(1);

/// State that exists while connected.
pub(super) struct Session {
    pub cfg: ClientConfig,
    pub outbox: Outbox,
    pub unplayed: Unplayed,
}

/// The engine's state on its thread.
pub(super) struct Worker {
    pub opts: EngineOptions,
    shared: Arc<Shared>,
    pub snap: Snapshot,
    pub file: AppFile,
    pub session: Option<Session>,
    /// The profile to reconnect with after a lost connection.
    pub profile: Option<Profile>,
    pub reconnect: Option<(Instant, Duration)>,
    pub mic: Microphone,
    pub speaker: Speaker,
    pub audio: HashMap<ClipId, ClipAudio>,
    pub audio_order: VecDeque<ClipId>,
    pub jobs: VecDeque<Job>,
    /// Unplayed clips to auto-play once their audio is fetched.
    pub autoplay: HashSet<ClipId>,
    /// Clips to replay once their audio is fetched.
    pub replays: HashSet<ClipId>,
    /// Clips handed to the player and not yet played or abandoned.
    pub in_player: HashSet<ClipId>,
    /// Live clips of others in progress: where, who, last news.
    pub live: HashMap<ClipId, (Target, String, Instant)>,
    pub mic_tx: mpsc::UnboundedSender<MicMsg>,
    pub mic_test_id: Option<ClipId>,
    /// Commands that arrived while a clip was being recorded.
    pub deferred: VecDeque<Command>,
    pub demo: Option<Demo>,
}

/// What woke the loop.
enum Wake {
    Command(Option<Command>),
    Event(Option<Event>),
    Mic(MicMsg),
    Job(Job, Result<JobDone, ClientError>),
    Tick,
}

async fn next_event(client: &mut Option<Client>) -> Option<Event> {
    match client {
        Some(c) => c.next_event().await,
        None => std::future::pending().await,
    }
}

/// Runs the engine until [`Command::Shutdown`] or the app drops it.
pub(super) async fn run(opts: EngineOptions, shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let (mic_tx, mut mic_rx) = mpsc::unbounded_channel();
    let mut w = Worker {
        opts,
        shared,
        snap: Snapshot::default(),
        file: AppFile::default(),
        session: None,
        profile: None,
        reconnect: None,
        mic: Microphone::default(),
        speaker: Speaker::default(),
        audio: HashMap::new(),
        audio_order: VecDeque::new(),
        jobs: VecDeque::new(),
        autoplay: HashSet::new(),
        replays: HashSet::new(),
        in_player: HashSet::new(),
        live: HashMap::new(),
        mic_tx,
        mic_test_id: None,
        deferred: VecDeque::new(),
        demo: None,
    };
    let mut client: Option<Client> = None;
    w.begin(&mut client, &mut rx).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wake = if let Some(cmd) = w.deferred.pop_front() {
            Wake::Command(Some(cmd))
        } else if let (Some(c), Some(job)) = (client.as_ref(), w.jobs.front().cloned()) {
            // One piece of background work, unless a command comes first.
            let outcome = tokio::select! {
                biased;
                cmd = rx.recv() => Err(cmd),
                done = w.run_job(c, &job) => Ok(done),
            };
            match outcome {
                Err(cmd) => Wake::Command(cmd),
                Ok(done) => {
                    w.jobs.retain(|j| *j != job);
                    Wake::Job(job, done)
                }
            }
        } else {
            tokio::select! {
                cmd = rx.recv() => Wake::Command(cmd),
                e = next_event(&mut client) => Wake::Event(e),
                Some(m) = mic_rx.recv() => Wake::Mic(m),
                _ = tick.tick() => Wake::Tick,
            }
        };
        match wake {
            Wake::Command(None) | Wake::Command(Some(Command::Shutdown)) => break,
            Wake::Command(Some(cmd)) => w.command(cmd, &mut client, &mut rx).await,
            Wake::Event(Some(e)) => w.event(e, client.as_ref()).await,
            Wake::Event(None) => w.lost(&mut client).await,
            Wake::Mic(m) => w.mic_msg(m),
            Wake::Job(job, done) => w.job_done(job, done),
            Wake::Tick => w.tick(&mut client, &mut rx).await,
        }
        // The first conversation to appear (a clip, someone online) is shown.
        if w.snap.selected.is_none()
            && client.is_some()
            && let Some(first) = w.snap.conversations.first().map(|c| c.target.clone())
        {
            w.select(first);
        }
        w.publish();
    }
    w.speaker.stop();
    if let Some(c) = client.take() {
        c.close().await;
    }
    if let Some(d) = w.demo.take() {
        d.shutdown().await;
    }
}

impl Worker {
    /// Sends the snapshot to the app.
    pub fn publish(&self) {
        self.shared.publish(self.snap.clone());
    }

    pub fn notice(&mut self, kind: NoticeKind, text: impl Into<String>) {
        self.snap.notice = Some(Notice { kind, text: text.into() });
    }

    fn app_file_path(&self) -> PathBuf {
        AppFile::path(&self.opts.config_dir)
    }

    pub(super) fn save_file(&mut self) {
        if let Err(e) = self.file.save(&self.app_file_path()) {
            self.notice(NoticeKind::Error, format!("Cannot save the settings: {e}"));
        }
    }

    pub(super) fn input_spec(&self) -> Option<String> {
        self.opts.input.clone().or_else(|| self.snap.settings.input_device.clone())
    }

    pub(super) fn output_spec(&self) -> Option<String> {
        self.opts.output.clone().or_else(|| self.snap.settings.output_device.clone())
    }

    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig { bitrate: self.snap.settings.bitrate, ..EncoderConfig::default() }
    }

    /// Start-up: the demo relay, the settings file, the devices, and the first connection.
    async fn begin(&mut self, client: &mut Option<Client>, rx: &mut mpsc::UnboundedReceiver<Command>) {
        if self.opts.demo {
            match Demo::start().await {
                Ok(d) => {
                    self.opts.config_dir = d.dir.join("config");
                    self.opts.data_dir = d.dir.join("data");
                    self.opts.profile = Some(d.alice.clone());
                    self.snap.demo = true;
                    self.demo = Some(d);
                }
                Err(e) => self.notice(NoticeKind::Error, format!("The demo relay did not start: {e}")),
            }
        }
        match AppFile::load(&self.app_file_path()) {
            Ok(f) => self.file = f,
            Err(e) => self.notice(NoticeKind::Error, format!("{e}; using default settings")),
        }
        self.snap.settings = self.file.settings.clone();
        self.snap.profiles = self.file.profiles.clone();
        self.mic.configure(self.input_spec(), self.snap.settings.noise_suppression);
        self.list_devices();
        let given = self.opts.profile.clone().filter(|p| p.client_config().is_ok());
        let start = given.or_else(|| self.file.profiles.first().cloned().filter(|p| p.client_config().is_ok()));
        self.publish();
        if let Some(p) = start {
            self.connect(p, client, rx).await;
        }
    }

    pub(super) fn list_devices(&mut self) {
        self.snap.devices = match walkie_media::audio::cpal::list_devices() {
            Ok(list) => Devices {
                inputs: list.inputs.into_iter().map(|d| d.name).collect(),
                outputs: list.outputs.into_iter().map(|d| d.name).collect(),
                error: None,
            },
            Err(e) => Devices { error: Some(e.to_string()), ..Devices::default() },
        };
    }

    /// Connects (a new command cancels the attempt), then loads the conversations.
    pub(super) async fn connect(&mut self, profile: Profile, client: &mut Option<Client>, rx: &mut mpsc::UnboundedReceiver<Command>) {
        self.disconnect(client).await;
        let relay = profile.relay.clone().unwrap_or_default();
        self.snap.connection = Connection::Connecting(relay);
        self.publish();
        let attempt = tokio::select! {
            r = session::connect(&profile) => r,
            cmd = rx.recv() => {
                // Anything asked meanwhile replaces the attempt.
                self.snap.connection = Connection::Disconnected;
                self.deferred.push_back(cmd.unwrap_or(Command::Shutdown));
                return;
            }
        };
        let (c, cfg) = match attempt {
            Ok(ok) => ok,
            Err(message) => {
                self.snap.connection = match self.reconnect {
                    Some(_) => Connection::Lost(message),
                    None => Connection::Failed(message),
                };
                return;
            }
        };
        self.reconnect = None;
        self.profile = Some(profile.clone());
        if !self.snap.demo || self.file.profiles.is_empty() {
            self.file.remember(profile);
            self.snap.profiles = self.file.profiles.clone();
            self.save_file();
        }
        let outbox = match Outbox::open(&self.opts.data_dir.join("outbox").join(&cfg.user)) {
            Ok(o) => o,
            Err(e) => {
                self.snap.connection = Connection::Failed(format!("Cannot open the outbox: {e}"));
                c.close().await;
                return;
            }
        };
        self.snap.connection = Connection::Connected { user: cfg.user.clone(), relay: cfg.relay.clone() };
        let unplayed = Unplayed::load(&self.opts.data_dir, &cfg.user);
        self.session = Some(Session { cfg, outbox, unplayed });
        self.start_audio();
        self.load_conversations(&c).await;
        *client = Some(c);
    }

    /// Opens the speaker and (for a device) the microphone.
    pub(super) fn start_audio(&mut self) {
        let Some(me) = self.snap.me().map(str::to_string) else { return };
        let mut problems = Vec::new();
        if let Err(p) = self.speaker.start(self.output_spec().as_deref(), &me) {
            problems.push(p);
        }
        if let Err(e) = self.mic.warm_up() {
            match &self.demo {
                // The demo can be tried without a microphone: you "say" the bundled sample.
                Some(d) if self.opts.input.is_none() => {
                    self.opts.input = Some(format!("wav:{}", d.sample.display()));
                    self.mic.configure(self.input_spec(), self.snap.settings.noise_suppression);
                    problems.push(format!("microphone: {e}; the demo talks with a bundled sample instead"));
                }
                _ => problems.push(format!("microphone: {e}")),
            }
        }
        self.snap.audio_problem = (!problems.is_empty()).then(|| problems.join("; "));
    }

    /// After connecting: send what the outbox holds, list conversations from history, and
    /// queue what was never played.
    async fn load_conversations(&mut self, client: &Client) {
        let Some(s) = &self.session else { return };
        let me = s.cfg.user.clone();
        match ops::flush(client, &s.outbox).await {
            Ok(report) if !report.stored.is_empty() => {
                let n = report.stored.len();
                for (id, _) in report.stored {
                    book::set_queued(&mut self.snap.conversations, id, false);
                }
                self.notice(NoticeKind::Info, format!("Sent {n} clip(s) that waited in the outbox."));
            }
            Ok(_) => {}
            Err(e) => self.notice(NoticeKind::Error, format!("The outbox could not be sent: {e}")),
        }
        for name in self.snap.settings.conversations.clone() {
            if let Ok(t) = name.parse::<Target>() {
                book::ensure(&mut self.snap.conversations, &t);
            }
        }
        match client.history(None, MAX_HISTORY_PAGE.min(200), None).await {
            Ok(clips) => {
                for meta in &clips {
                    let played = !self.session.as_ref().is_some_and(|s| s.unplayed.contains(&meta.id));
                    book::add_clip(&mut self.snap.conversations, &me, meta, played);
                }
            }
            Err(e) => self.notice(NoticeKind::Error, format!("Cannot load the history: {e}")),
        }
        let waiting: Vec<ClipId> = self.session.as_ref().map(|s| s.unplayed.ids().copied().collect()).unwrap_or_default();
        for id in waiting {
            if book::find(&self.snap.conversations, id).is_some() {
                self.autoplay.insert(id);
                self.jobs.push_front(Job::Audio(id));
            }
        }
        let selected = self.snap.selected.clone().filter(|t| self.snap.conversation(t).is_some());
        match selected.or_else(|| self.snap.conversations.first().map(|c| c.target.clone())) {
            Some(t) => self.select(t),
            None => self.snap.selected = None,
        }
    }

    pub(super) async fn disconnect(&mut self, client: &mut Option<Client>) {
        if let Some(c) = client.take() {
            c.close().await;
        }
        self.speaker.stop();
        self.session = None;
        self.jobs.clear();
        self.autoplay.clear();
        self.live.clear();
        self.snap.conversations.clear();
        self.snap.playing = None;
        self.snap.connection = Connection::Disconnected;
    }

    pub(super) async fn lost(&mut self, client: &mut Option<Client>) {
        let why = client.as_ref().and_then(Client::close_reason).unwrap_or_else(|| "the relay closed the connection".into());
        if let Some(c) = client.take() {
            c.close().await;
        }
        self.speaker.stop();
        self.session = None;
        self.jobs.clear();
        self.live.clear();
        for c in &mut self.snap.conversations {
            c.talking = None;
        }
        self.snap.connection = Connection::Lost(format!("Connection lost ({why}); reconnecting…"));
        self.reconnect = Some((Instant::now() + RECONNECT_FIRST, RECONNECT_FIRST));
    }
}
