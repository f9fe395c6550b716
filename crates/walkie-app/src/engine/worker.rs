//! The loop on the engine thread, and the one place its state comes together. The [`Worker`]
//! owns components that each keep their state private behind a small interface: the
//! [`Link`] to the relay (connected or reconnecting, the outbox, played marks), the
//! [`Fetches`] (background jobs and the audio cache), the [`Playout`] (the player, live
//! clips, the microphone test), the [`Microphone`]; and the [`Snapshot`] the app shows. It
//! turns commands, relay events, player events and finished jobs into calls on them, and
//! publishes a new snapshot after each. Work that needs the relay in the background goes one
//! fetch at a time between events, and gives way to any command.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;
use walkie_client::outbox::Outbox;
use walkie_client::profile::Profile;
use walkie_client::talk::{self, TalkControl, TalkOptions, TalkOutcome};
use walkie_client::{Client, ClientError, Event, ops};
use walkie_media::codec::EncoderConfig;
use walkie_proto::clip::{ClipId, ClipMeta, CodecParams, Target, now_ms};
use walkie_proto::wire::{ErrorCode, MAX_HISTORY_PAGE};

mod messages;

use super::audio_clip::ClipAudio;
use super::book;
use super::demo::Demo;
use super::export;
use super::fetches::{self, Fetches, Job, JobDone};
use super::link::{self, Link};
use super::mic::{self, MicMsg, Microphone};
use super::people;
use super::playout::{Heard, Playout};
use super::settings::AppFile;
use super::state::{Connection, Devices, Meter, Notice, NoticeKind, Snapshot, Talk};
use super::unplayed::Unplayed;
use super::{AppSettings, Command, EngineOptions, Shared};

/// How often player events are collected and reconnects tried.
const TICK: Duration = Duration::from_millis(40);
/// The longest clip recorded (the relay refuses clips over 60 s by default).
const MAX_CLIP: Duration = Duration::from_secs(59);

/// The engine's state on its thread.
pub(super) struct Worker {
    opts: EngineOptions,
    shared: Arc<Shared>,
    snap: Snapshot,
    file: AppFile,
    link: Link,
    fetches: Fetches,
    playout: Playout,
    mic: Microphone,
    mic_tx: mpsc::UnboundedSender<MicMsg>,
    /// Commands that arrived while a clip was being recorded or a connection attempted.
    deferred: VecDeque<Command>,
    demo: Option<Demo>,
    /// Clips this user played on another device (the relay says so), which may arrive here
    /// after the news: they come in played, and do not play again by themselves.
    played_elsewhere: std::collections::HashSet<ClipId>,
    /// Whether the app's window has the focus (messages are read, not notified).
    focused: bool,
}

/// Clips remembered as played elsewhere, at most.
const PLAYED_ELSEWHERE_KEPT: usize = 4096;

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
pub(super) async fn run(
    opts: EngineOptions,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let (mic_tx, mut mic_rx) = mpsc::unbounded_channel();
    let mut w = Worker {
        opts,
        shared,
        snap: Snapshot::default(),
        file: AppFile::default(),
        link: Link::default(),
        fetches: Fetches::default(),
        playout: Playout::default(),
        mic: Microphone::default(),
        mic_tx,
        deferred: VecDeque::new(),
        demo: None,
        played_elsewhere: Default::default(),
        focused: true,
    };
    let mut client: Option<Client> = None;
    w.begin(&mut client, &mut rx).await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let wake = if let Some(cmd) = w.deferred.pop_front() {
            Wake::Command(Some(cmd))
        } else if let (Some(c), Some(job)) = (client.as_ref(), w.fetches.next()) {
            // One piece of background work, unless a command comes first.
            let before = match &job {
                Job::Page { target, .. } => w.snap.conversation(target).and_then(book::oldest_seq),
                Job::Audio(_) | Job::Message(..) => None,
            };
            let cached = match &job {
                Job::Audio(id) => w.fetches.cached(*id),
                Job::Page { .. } | Job::Message(..) => None,
            };
            tokio::select! {
                biased;
                cmd = rx.recv() => Wake::Command(cmd),
                done = fetches::run(c, &job, before, cached) => Wake::Job(job, done),
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
            Wake::Job(job, done) => {
                w.job_done(job, done);
                w.read_messages_on_screen(client.as_ref()).await;
            }
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
    w.playout.stop();
    if let Some(c) = client.take() {
        c.close().await;
    }
    if let Some(d) = w.demo.take() {
        d.shutdown().await;
    }
}

impl Worker {
    // ---- the snapshot and settings ----

    /// Sends the snapshot to the app.
    fn publish(&self) {
        self.shared.publish(self.snap.clone());
    }

    fn notice(&mut self, kind: NoticeKind, text: impl Into<String>) {
        self.snap.notice = Some(Notice {
            kind,
            text: text.into(),
        });
    }

    fn app_file_path(&self) -> PathBuf {
        AppFile::path(&self.opts.config_dir)
    }

    fn save_file(&mut self) {
        if let Err(e) = self.file.save(&self.app_file_path()) {
            self.notice(NoticeKind::Error, format!("Cannot save the settings: {e}"));
        }
    }

    fn input_spec(&self) -> Option<String> {
        self.opts
            .input
            .clone()
            .or_else(|| self.snap.settings.input_device.clone())
    }

    fn output_spec(&self) -> Option<String> {
        self.opts
            .output
            .clone()
            .or_else(|| self.snap.settings.output_device.clone())
    }

    fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            bitrate: self.snap.settings.bitrate,
            ..EncoderConfig::default()
        }
    }

    fn list_devices(&mut self) {
        self.snap.devices = match walkie_media::audio::cpal::list_devices() {
            Ok(list) => Devices {
                inputs: list.inputs.into_iter().map(|d| d.name).collect(),
                outputs: list.outputs.into_iter().map(|d| d.name).collect(),
                error: None,
            },
            Err(e) => Devices {
                error: Some(e.to_string()),
                ..Devices::default()
            },
        };
    }

    fn apply_settings(&mut self, s: AppSettings) {
        let old = std::mem::replace(&mut self.snap.settings, s);
        self.file.settings = self.snap.settings.clone();
        self.save_file();
        let new = &self.snap.settings;
        if new.input_device != old.input_device || new.noise_suppression != old.noise_suppression {
            self.mic
                .configure(self.input_spec(), self.snap.settings.noise_suppression);
            if self.link.is_connected() {
                self.start_audio();
            }
        } else if new.output_device != old.output_device && self.link.is_connected() {
            self.start_audio();
        }
        self.playout.set_speed(self.snap.settings.speed_percent);
    }

    // ---- start-up and the connection ----

    /// Start-up: the demo relay, the settings file, the devices, and the first connection.
    async fn begin(
        &mut self,
        client: &mut Option<Client>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        if self.opts.demo {
            match Demo::start().await {
                Ok(d) => {
                    self.opts.config_dir = d.dir.join("config");
                    self.opts.data_dir = d.dir.join("data");
                    self.opts.profile = Some(d.alice.clone());
                    self.snap.demo = true;
                    self.demo = Some(d);
                }
                Err(e) => self.notice(
                    NoticeKind::Error,
                    format!("The demo relay did not start: {e}"),
                ),
            }
        }
        match AppFile::load(&self.app_file_path()) {
            Ok(f) => self.file = f,
            Err(e) => self.notice(NoticeKind::Error, format!("{e}; using default settings")),
        }
        self.snap.settings = self.file.settings.clone();
        self.snap.profiles = self.file.profiles.clone();
        self.mic
            .configure(self.input_spec(), self.snap.settings.noise_suppression);
        self.list_devices();
        let given = self
            .opts
            .profile
            .clone()
            .filter(|p| p.client_config().is_ok());
        let start = given.or_else(|| {
            self.file
                .profiles
                .first()
                .cloned()
                .filter(|p| p.client_config().is_ok())
        });
        self.publish();
        if let Some(p) = start {
            self.connect(p, client, rx).await;
        }
    }

    /// Connects (a new command cancels the attempt), then loads the conversations. After a
    /// lost connection (reconnecting) the conversations stay on screen meanwhile.
    async fn connect(
        &mut self,
        profile: Profile,
        client: &mut Option<Client>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        let resuming = self.link.reconnecting() && client.is_none() && self.snap.me().is_some();
        let me = self.snap.me().unwrap_or_default().to_string();
        if resuming {
            self.snap.connection = Connection::Lost {
                user: me.clone(),
                why: "Reconnecting to the relay…".into(),
            };
        } else {
            self.disconnect(client).await;
            self.snap.connection =
                Connection::Connecting(profile.relay.clone().unwrap_or_default());
        }
        self.publish();
        let attempt = {
            let attempt = link::connect(&profile);
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    cmd = rx.recv() => {
                        // The window's focus changing is only noted.
                        if let Some(Command::SetFocused(focused)) = cmd {
                            self.focused = focused;
                            continue;
                        }
                        // Anything else asked meanwhile replaces the attempt (a reconnect is tried
                        // again later).
                        if !resuming {
                            self.snap.connection = Connection::Disconnected;
                        }
                        self.deferred.push_back(cmd.unwrap_or(Command::Shutdown));
                        return;
                    }
                }
            }
        };
        let (c, cfg) = match attempt {
            Ok(ok) => ok,
            Err(message) => {
                self.snap.connection = if resuming {
                    Connection::Lost {
                        user: me,
                        why: message,
                    }
                } else {
                    Connection::Failed(message)
                };
                return;
            }
        };
        if !self.snap.demo || self.file.profiles.is_empty() {
            self.file.remember(profile.clone());
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
        self.snap.connection = Connection::Connected {
            user: cfg.user.clone(),
            relay: cfg.relay.clone(),
        };
        let unplayed = Unplayed::load(&self.opts.data_dir, &cfg.user);
        self.link.connected(profile, outbox, unplayed);
        self.start_audio();
        self.load_conversations(&c).await;
        self.refresh_people(&c).await;
        *client = Some(c);
    }

    /// Opens the speaker and (for a device) the microphone.
    fn start_audio(&mut self) {
        let Some(me) = self.snap.me().map(str::to_string) else {
            return;
        };
        let mut problems = Vec::new();
        if let Err(p) = self.playout.start(self.output_spec().as_deref(), &me) {
            problems.push(p);
        }
        self.playout.set_speed(self.snap.settings.speed_percent);
        if let Err(e) = self.mic.warm_up() {
            match &self.demo {
                // The demo can be tried without a microphone: you "say" the bundled sample.
                Some(d) if self.opts.input.is_none() => {
                    self.opts.input = Some(format!("wav:{}", d.sample.display()));
                    self.mic
                        .configure(self.input_spec(), self.snap.settings.noise_suppression);
                    problems.push(format!(
                        "microphone: {e}; the demo talks with a bundled sample instead"
                    ));
                }
                _ => problems.push(format!("microphone: {e}")),
            }
        }
        self.snap.audio_problem = (!problems.is_empty()).then(|| problems.join("; "));
    }

    /// After connecting: send what the outbox holds, list conversations from history, and
    /// queue what was never played.
    async fn load_conversations(&mut self, client: &Client) {
        let Some(outbox) = self.link.outbox().cloned() else {
            return;
        };
        let me = self.snap.me().unwrap_or_default().to_string();
        match ops::flush(client, &outbox).await {
            Ok(report) if !report.stored.is_empty() => {
                let n = report.stored.len();
                for (id, _) in report.stored {
                    book::set_queued(&mut self.snap.conversations, id, false);
                }
                self.notice(
                    NoticeKind::Info,
                    format!("Sent {n} clip(s) that waited in the outbox."),
                );
            }
            Ok(_) => {}
            Err(e) => self.notice(
                NoticeKind::Error,
                format!("The outbox could not be sent: {e}"),
            ),
        }
        for name in self.snap.settings.conversations.clone() {
            if let Ok(t) = name.parse::<Target>() {
                book::ensure(&mut self.snap.conversations, &t);
            }
        }
        match client.history(None, MAX_HISTORY_PAGE.min(200), None).await {
            Ok(clips) => {
                for meta in &clips {
                    let played = !self.link.is_unplayed(&meta.id);
                    book::add_clip(&mut self.snap.conversations, &me, meta, played);
                }
            }
            Err(e) => self.notice(NoticeKind::Error, format!("Cannot load the history: {e}")),
        }
        // The conversation on screen plays what waited in it when it is selected below;
        // every other conversation only with the setting.
        if self.snap.settings.autoplay_everywhere {
            for id in self.link.unplayed() {
                if book::find(&self.snap.conversations, id)
                    .is_some_and(|(_, c)| c.content.is_voice())
                {
                    self.autoplay_when_fetched(id);
                }
            }
        }
        let selected = self
            .snap
            .selected
            .clone()
            .filter(|t| self.snap.conversation(t).is_some());
        match selected.or_else(|| self.snap.conversations.first().map(|c| c.target.clone())) {
            Some(t) => self.select(t),
            None => self.snap.selected = None,
        }
    }

    async fn disconnect(&mut self, client: &mut Option<Client>) {
        if let Some(c) = client.take() {
            c.close().await;
        }
        self.playout.stop();
        self.link.drop_connection();
        self.fetches.drop_jobs(false);
        self.snap.conversations.clear();
        self.snap.people = Default::default();
        self.snap.playing = None;
        self.snap.connection = Connection::Disconnected;
    }

    async fn lost(&mut self, client: &mut Option<Client>) {
        let why = client
            .as_ref()
            .and_then(Client::close_reason)
            .unwrap_or_else(|| "the relay closed the connection".into());
        if let Some(c) = client.take() {
            c.close().await;
        }
        self.playout.stop();
        self.link.lost();
        self.fetches.drop_jobs(true);
        for c in &mut self.snap.conversations {
            c.talking = None;
        }
        let user = self.snap.me().unwrap_or_default().to_string();
        self.snap.connection = Connection::Lost {
            user,
            why: format!("Connection lost ({why}); reconnecting…"),
        };
    }

    // ---- commands from the app ----

    async fn command(
        &mut self,
        cmd: Command,
        client: &mut Option<Client>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        match cmd {
            Command::Connect(p) => {
                self.link.stop_reconnecting();
                self.connect(p, client, rx).await;
            }
            Command::Disconnect => {
                self.link.forget();
                self.disconnect(client).await;
            }
            Command::Select(t) => {
                self.select(t);
                self.read_messages_on_screen(client.as_ref()).await;
            }
            Command::AddConversation(t) => {
                let name = t.to_string();
                if !self.snap.settings.conversations.contains(&name) {
                    self.snap.settings.conversations.push(name);
                    self.file.settings = self.snap.settings.clone();
                    self.save_file();
                }
                if client.is_some() {
                    self.select(t);
                }
            }
            Command::TalkStart(to) => {
                if client.is_some() || self.link.outbox().is_some() {
                    // Offline (reconnecting), the clip is recorded into the outbox.
                    self.talk(client.as_ref(), to, rx).await;
                } else {
                    self.notice(
                        NoticeKind::Error,
                        "Not connected: the clip cannot be sent now.",
                    );
                }
            }
            // Release and cancel outside a clip: the clip already ended (refused or too long).
            Command::TalkRelease | Command::TalkCancel => {}
            Command::SendText { to, text } => self.send_text(client.as_ref(), to, text).await,
            Command::SendPicture { to, path } => self.send_picture(client.as_ref(), to, path).await,
            Command::SendDoodle { to, doodle } => {
                self.send_doodle(client.as_ref(), to, doodle).await
            }
            Command::Recall(id) => self.recall(client.as_ref(), id).await,
            Command::SetMuted { target, muted } => {
                let name = target.to_string();
                self.snap.settings.muted.retain(|m| *m != name);
                if muted {
                    self.snap.settings.muted.push(name);
                }
                self.file.settings = self.snap.settings.clone();
                self.save_file();
            }
            Command::SetFocused(focused) => {
                self.focused = focused;
                self.read_messages_on_screen(client.as_ref()).await;
            }
            Command::Play(id) => self.play(id),
            Command::Stop(id) => self.playout.stop_clip(id),
            Command::LoadOlder(t) => {
                if let Some(c) = self.snap.conversations.iter_mut().find(|c| c.target == t) {
                    c.loading = true;
                }
                self.fetches.older_page(t);
            }
            Command::Export { target, dir } => match client.as_ref() {
                Some(c) => {
                    self.notice(
                        NoticeKind::Info,
                        format!("Exporting {target} to {}…", dir.display()),
                    );
                    self.publish();
                    match export::export(c, &target, &dir).await {
                        Ok(n) => self.notice(
                            NoticeKind::Info,
                            format!("Exported {n} clip(s) of {target} to {}.", dir.display()),
                        ),
                        Err(e) => self.notice(NoticeKind::Error, format!("Export failed: {e}")),
                    }
                }
                None => self.notice(NoticeKind::Error, "Not connected: export needs the relay."),
            },
            Command::SetSettings(s) => self.apply_settings(s),
            Command::RefreshDevices => self.list_devices(),
            Command::MicTest => self.mic_test(),
            Command::DismissNotice => self.snap.notice = None,
            Command::Join {
                link,
                name,
                display,
            } => {
                self.snap.connection =
                    Connection::Connecting("joining with the invite link".into());
                self.publish();
                match people::join(&link, &name, display.as_deref()).await {
                    Ok(profile) => {
                        // Kept at once: the token is shown only this once.
                        self.file.remember(profile.clone());
                        self.snap.profiles = self.file.profiles.clone();
                        self.save_file();
                        self.link.stop_reconnecting();
                        self.connect(profile, client, rx).await;
                    }
                    Err(why) => {
                        self.snap.connection = Connection::Failed(format!("Joining failed: {why}"))
                    }
                }
            }
            cmd @ (Command::Contact { .. }
            | Command::Group { .. }
            | Command::SetDisplayName(_)
            | Command::SetAvatar(_)
            | Command::Suggest
            | Command::Nearby(_)) => self.people_command(cmd, client.as_ref()).await,
            Command::DemoPeerTalk => match &self.demo {
                Some(d) => d.bob_talks(),
                None => self.notice(NoticeKind::Error, "Only the demo has a simulated bob."),
            },
            Command::Shutdown => {}
        }
    }

    /// Shows a conversation and queues its history and waveforms.
    fn select(&mut self, target: Target) {
        book::ensure(&mut self.snap.conversations, &target);
        self.snap.selected = Some(target.clone());
        // What waited unplayed in the conversation now on screen plays, oldest first.
        if let Some(conv) = self.snap.conversation(&target) {
            let waiting: Vec<ClipId> = conv
                .clips
                .iter()
                .filter(|c| {
                    c.content.is_voice() && !c.played && !c.mine && self.link.is_unplayed(&c.id)
                })
                .map(|c| c.id)
                .collect();
            for id in waiting {
                self.autoplay_when_fetched(id);
            }
        }
        self.fetches.page(target);
    }

    /// Queues `id` to play by itself once its audio is here, unless it is in the player or
    /// queued already.
    fn autoplay_when_fetched(&mut self, id: ClipId) {
        if !self.playout.has(id) && !self.fetches.waits_to_autoplay(id) {
            self.fetches.autoplay_when_fetched(id);
        }
    }

    /// True if new clips of `target` play by themselves: the conversation on screen, or every
    /// conversation when the setting says so.
    fn autoplays(&self, target: &Target) -> bool {
        self.snap.settings.autoplay_everywhere || self.snap.selected.as_ref() == Some(target)
    }

    /// Plays a clip (again): now if its audio is here, else once fetched. An unplayed clip
    /// already waiting for its turn is left to play then.
    fn play(&mut self, id: ClipId) {
        let Some((conv, clip)) = book::find(&self.snap.conversations, id) else {
            return;
        };
        if self.playout.has(id) || self.fetches.waits_to_autoplay(id) {
            return;
        }
        match self
            .fetches
            .cached(id)
            .map(|a| a.to_received(id, &clip.from, conv.target.clone(), clip.started_at_ms))
        {
            Some(rc) => self.playout.replay(id, rc),
            None => self.fetches.replay_when_fetched(id),
        }
    }

    /// Records and streams a clip to `to` until released or cancelled. While it records, the
    /// loop keeps serving release and cancel, the player and relay events (clips, presence,
    /// receipts keep arriving while you talk); other commands are done right after.
    async fn talk(
        &mut self,
        client: Option<&Client>,
        to: Target,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        if self.mic.is_lent() {
            self.notice(
                NoticeKind::Error,
                "The microphone is busy with the microphone test; try again in a moment.",
            );
            return;
        }
        let Some(outbox) = self.link.outbox().cloned() else {
            return;
        };
        let source = match self.mic.take() {
            Ok(s) => s,
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("Microphone: {e}"));
                return;
            }
        };
        let control = TalkControl::new();
        let opts = TalkOptions {
            encoder: self.encoder(),
            ..TalkOptions::new(to.clone())
        };
        self.snap.talk = Talk::Talking {
            to: to.clone(),
            control: control.clone(),
        };
        if matches!(
            self.snap.notice.as_ref().map(|n| n.kind),
            Some(NoticeKind::Busy)
        ) {
            self.snap.notice = None;
        }
        self.publish();
        let started_at_ms = now_ms();
        let clip = talk::talk(
            client,
            &outbox,
            source,
            &opts,
            control.clone(),
            Some(MAX_CLIP),
        );
        tokio::pin!(clip);
        let mut tick = tokio::time::interval(TICK);
        // A lost connection ends the talk with its error; until then, events are served.
        let mut events_open = client.is_some();
        let result = loop {
            tokio::select! {
                r = &mut clip => break r,
                e = async { client?.next_event_shared().await }, if events_open => match e {
                    Some(e) => {
                        self.event(e, client).await;
                        self.publish();
                    }
                    None => events_open = false,
                },
                cmd = rx.recv() => match cmd {
                    Some(Command::TalkRelease) => {
                        control.release();
                        self.snap.talk = Talk::Sending { to: to.clone() };
                        self.publish();
                    }
                    Some(Command::TalkCancel) => control.cancel(),
                    Some(Command::TalkStart(_)) => {}
                    Some(other) => self.deferred.push_back(other),
                    None => {
                        control.cancel();
                        self.deferred.push_back(Command::Shutdown);
                    }
                },
                _ = tick.tick() => {
                    self.player_events(client).await;
                    self.publish();
                }
            }
        };
        self.snap.talk = Talk::Idle;
        let me = self.snap.me().unwrap_or_default().to_string();
        let meta = |id, seq, duration_ms| ClipMeta {
            id,
            from: me.clone(),
            to: to.clone(),
            started_at_ms,
            duration_ms,
            packets: 0,
            bytes: 0,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: opts.encoder.bitrate,
                pre_skip: 0,
            },
            seq,
            content: Default::default(),
        };
        match result {
            Ok((outcome, source)) => {
                self.mic.give_back(Some(source));
                match outcome {
                    TalkOutcome::Stored {
                        id, seq, duration, ..
                    } => {
                        let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
                        book::add_clip(&mut self.snap.conversations, &me, &meta(id, seq, ms), true);
                        self.fetches.audio(id);
                    }
                    TalkOutcome::Queued { id, reason } => {
                        book::add_clip(&mut self.snap.conversations, &me, &meta(id, 0, 0), true);
                        book::set_queued(&mut self.snap.conversations, id, true);
                        self.notice(
                            NoticeKind::Info,
                            format!("Recorded, but not sent yet ({reason}): it waits in the outbox and goes when the relay is back."),
                        );
                    }
                    TalkOutcome::Cancelled => {
                        self.notice(NoticeKind::Info, "Cancelled: nothing was sent.")
                    }
                }
            }
            Err(ClientError::Refused(e)) if e.code == ErrorCode::FloorTaken => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Busy, busy_text(&e.message));
            }
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("The clip was not sent: {e}"));
            }
        }
    }

    /// Starts the microphone test.
    fn mic_test(&mut self) {
        if self.snap.mic_test.is_some() || self.mic.is_lent() {
            return;
        }
        let source = match self.mic.take() {
            Ok(s) => s,
            Err(e) => {
                self.notice(NoticeKind::Error, format!("Microphone: {e}"));
                return;
            }
        };
        if !self.link.is_connected()
            && let Err(p) = self.playout.start(self.output_spec().as_deref(), "you")
        {
            self.snap.audio_problem = Some(p);
        }
        let encoder = self.encoder();
        let codec = match walkie_media::codec::opus::Encoder::new(&encoder) {
            Ok(e) => e.params(),
            Err(e) => {
                self.mic.give_back(Some(source));
                self.notice(NoticeKind::Error, format!("Microphone test: {e}"));
                return;
            }
        };
        let meter = Arc::new(Meter::default());
        match mic::spawn_test(source, &encoder, meter.clone(), self.mic_tx.clone()) {
            Ok(()) => {
                self.playout.test_start(codec);
                self.snap.mic_test = Some(meter);
            }
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("Microphone test: {e}"));
            }
        }
    }

    // ---- what the relay, the microphone test, the jobs and the clock say ----

    /// Something the relay pushed.
    async fn event(&mut self, event: Event, client: Option<&Client>) {
        let me = self.snap.me().unwrap_or_default().to_string();
        match event {
            Event::LiveStarted(h) => {
                if h.from != me {
                    let target = book::conversation_of(&h.to, &h.from, &me);
                    book::ensure(&mut self.snap.conversations, &target).talking =
                        Some(h.from.clone());
                    let heard = self.autoplays(&target);
                    self.playout.live_started(h, target, heard);
                }
            }
            Event::LivePacket(id, p) => self.playout.live_packet(id, p),
            Event::Message(m) => self.got_message(m, client).await,
            Event::Clip(clip) => {
                let id = clip.header.id;
                let was_live = self.playout.live_ended(id, clip.samples);
                if let Some((target, _)) = &was_live {
                    self.stop_talking(target);
                }
                let heard_live = was_live.is_some_and(|(_, heard)| heard);
                let meta = clip.meta();
                let mine = clip.header.from == me;
                let (target, new) = book::add_clip(&mut self.snap.conversations, &me, &meta, mine);
                if meta.seq == 0 {
                    // Heard live: the relay's seq (its place among messages) comes with the
                    // conversation's next history page.
                    self.fetches.page(target.clone());
                }
                let audio = ClipAudio::of_received(&clip);
                let elsewhere = self.played_elsewhere.contains(&id);
                if elsewhere {
                    book::mark_played(&mut self.snap.conversations, id);
                }
                if !heard_live && new && !mine && !elsewhere && self.autoplays(&target) {
                    self.playout.autoplay(clip);
                }
                if new && !mine && !elsewhere {
                    self.link.set_unplayed(id, true);
                }
                self.got_audio(id, audio);
                if let Some(c) = client {
                    let _ = c.ack(id).await;
                    self.learn(c, vec![meta.from.clone()]).await;
                }
            }
            Event::Aborted(e) => {
                if let Some(target) = e.clip.and_then(|id| self.playout.live_aborted(id)) {
                    self.stop_talking(&target);
                }
            }
            // About an upload that did not finish (one you cancelled is reset, and the relay
            // says so): the clip's own outcome was already reported by the talk.
            Event::Error(e)
                if e.clip
                    .is_some_and(|id| book::find(&self.snap.conversations, id).is_none()) =>
            {
                tracing::debug!("relay error about an unfinished upload: {}", e.message);
            }
            Event::Error(e) => self.notice(
                NoticeKind::Error,
                format!("The relay reported: {}", e.message),
            ),
            Event::Channels(names) => {
                for name in names {
                    book::ensure(&mut self.snap.conversations, &Target::Channel(name));
                }
                // The list changes when a channel is made, joined, left or deleted.
                if let Some(c) = client
                    && let Ok(groups) = c.groups().await
                {
                    self.snap.people.groups = groups;
                    let members = self
                        .snap
                        .people
                        .groups
                        .iter()
                        .flat_map(|g| g.members.clone())
                        .collect();
                    self.learn(c, members).await;
                }
            }
            Event::Online(users) => {
                book::set_online(&mut self.snap.conversations, &me, &users);
                if let Some(c) = client {
                    self.learn(c, users).await;
                }
            }
            Event::Presence(user, online) => {
                book::set_presence(&mut self.snap.conversations, &me, &user, online);
                if let Some(c) = client {
                    self.learn(c, vec![user]).await;
                }
            }
            Event::PlayedBy(id, user) if user == me => {
                if self.played_elsewhere.len() >= PLAYED_ELSEWHERE_KEPT {
                    self.played_elsewhere.clear();
                }
                self.played_elsewhere.insert(id);
                if book::mark_played(&mut self.snap.conversations, id) {
                    self.link.set_unplayed(id, false);
                }
            }
            Event::PlayedBy(id, user) => book::add_receipt(&mut self.snap.conversations, id, &user),
            Event::ContactChanged(entry) => {
                let who = entry.display.clone().map_or_else(
                    || format!("@{}", entry.user),
                    |d| format!("{d} (@{})", entry.user),
                );
                match entry.state {
                    Some(walkie_proto::people::ContactState::Incoming) => {
                        self.notice(
                            NoticeKind::Info,
                            format!("{who} asks to be your contact (People: Accept)"),
                        );
                    }
                    Some(walkie_proto::people::ContactState::Contact) => {
                        self.notice(NoticeKind::Info, format!("{who} is now your contact"))
                    }
                    _ => {}
                }
                let user = entry.user.clone();
                people::contact_changed(&mut self.snap.people, entry);
                if let Some(c) = client {
                    self.learn(c, vec![user]).await;
                }
            }
        }
    }

    // ---- people ----

    /// Reads the profiles (display name, avatar) of people not seen yet.
    async fn learn(&mut self, client: &Client, names: Vec<String>) {
        if let Err(e) = people::learn(client, &mut self.snap.people, names, false).await {
            tracing::debug!("cannot read profiles: {e}");
        }
    }

    /// After connecting: your profile, contacts and channels, and everyone in the conversations.
    async fn refresh_people(&mut self, client: &Client) {
        let mut names: Vec<String> = Vec::new();
        for c in &self.snap.conversations {
            if let Target::User(u) = &c.target {
                names.push(u.clone());
            }
            names.extend(c.clips.iter().map(|clip| clip.from.clone()));
        }
        if let Err(e) = people::refresh(client, &mut self.snap.people, names).await {
            self.notice(
                NoticeKind::Error,
                format!("Cannot read your contacts and channels: {e}"),
            );
        }
    }

    /// A people command: needs the relay; its outcome becomes the notice.
    async fn people_command(&mut self, cmd: Command, client: Option<&Client>) {
        let Some(c) = client else {
            self.notice(NoticeKind::Error, "Not connected: that needs the relay.");
            return;
        };
        let view = &mut self.snap.people;
        let done = match cmd {
            Command::Contact { user, action } => people::contact(c, view, &user, action).await,
            Command::Group { channel, action } => people::group(c, view, &channel, action).await,
            Command::SetDisplayName(name) => people::set_display(c, view, &name).await,
            Command::SetAvatar(path) => people::set_avatar(c, view, &path).await,
            Command::Suggest => c.suggest().await.map(|list| {
                let n = list.len();
                view.suggestions = list;
                if n == 0 {
                    "Nobody to suggest yet: people come with shared contacts and channels.".into()
                } else {
                    format!("{n} people you may know.")
                }
            }),
            Command::Nearby(place) => {
                let at = match place
                    .as_deref()
                    .map(walkie_proto::people::parse_place)
                    .transpose()
                {
                    Ok(at) => at,
                    Err(e) => {
                        self.notice(NoticeKind::Error, e.to_string());
                        return;
                    }
                };
                c.nearby(at).await.map(|(list, _)| {
                    let n = list.len();
                    view.nearby = list;
                    match at {
                        Some(_) => format!("{n} people nearby. You are visible to them for an hour (only a ~5 km square is shared)."),
                        None => "You are no longer visible to people nearby.".into(),
                    }
                })
            }
            _ => return,
        };
        match done {
            Ok(said) => self.notice(NoticeKind::Info, said),
            Err(e) => self.notice(NoticeKind::Error, e.to_string()),
        }
        let also: Vec<String> = self
            .snap
            .people
            .suggestions
            .iter()
            .map(|s| s.user.clone())
            .chain(self.snap.people.nearby.iter().map(|n| n.user.clone()))
            .collect();
        self.learn(c, also).await;
    }

    /// Shows who still talks in `target` once a live clip there ended.
    fn stop_talking(&mut self, target: &Target) {
        let still = self.playout.talking_in(target);
        if let Some(c) = self
            .snap
            .conversations
            .iter_mut()
            .find(|c| &c.target == target)
        {
            c.talking = still;
        }
    }

    /// A packet or the end of the microphone test.
    fn mic_msg(&mut self, m: MicMsg) {
        if !self.playout.testing() {
            return;
        }
        match m {
            MicMsg::Packet(p) => self.playout.test_packet(p),
            MicMsg::Done(samples, source, failure) => {
                self.playout.test_end(samples);
                self.mic.give_back(Some(source));
                self.snap.mic_test = None;
                if let Some(f) = failure {
                    self.notice(NoticeKind::Error, format!("Microphone test: {f}"));
                }
            }
        }
    }

    fn job_done(&mut self, job: Job, done: Result<JobDone, ClientError>) {
        self.fetches.finished(&job, done.is_ok());
        match done {
            Ok(JobDone::Page {
                target,
                clips,
                more,
                older,
            }) => {
                let me = self.snap.me().unwrap_or_default().to_string();
                for meta in &clips {
                    let played = !self.link.is_unplayed(&meta.id);
                    book::add_clip(&mut self.snap.conversations, &me, meta, played);
                }
                let conv = book::ensure(&mut self.snap.conversations, &target);
                conv.loading = false;
                if older || conv.clips.len() <= clips.len() {
                    conv.has_older = more;
                }
                // Waveforms for the conversation's clips that have none, newest first.
                let missing: Vec<ClipId> = conv
                    .clips
                    .iter()
                    .rev()
                    .filter(|c| c.content.is_voice() && c.peaks.is_empty() && !c.queued)
                    .map(|c| c.id)
                    .collect();
                // What the conversation's messages show, newest first.
                let bodies: Vec<(ClipId, walkie_proto::message::Content)> = conv
                    .clips
                    .iter()
                    .rev()
                    .filter(|c| {
                        !c.content.is_voice()
                            && c.content != walkie_proto::message::Content::Recalled
                            && c.body.is_none()
                            && !c.queued
                    })
                    .map(|c| (c.id, c.content))
                    .collect();
                for id in missing {
                    self.fetches.audio(id);
                }
                for (id, content) in bodies {
                    self.fetches.message(id, content);
                }
            }
            Ok(JobDone::Audio(id, audio)) => self.got_audio(id, audio),
            Ok(JobDone::Message(id, content, payload)) => {
                self.got_message_payload(id, content, payload)
            }
            Err(e) => {
                warn!("background {job:?} failed: {e}");
                if let Job::Page { target, .. } = job {
                    if let Some(c) = self
                        .snap
                        .conversations
                        .iter_mut()
                        .find(|c| c.target == target)
                    {
                        c.loading = false;
                    }
                    self.notice(
                        NoticeKind::Error,
                        format!("Cannot load the history of {target}: {e}"),
                    );
                }
            }
        }
    }

    /// Keeps a clip's audio, sets its waveform, and plays it if it waited for its audio.
    fn got_audio(&mut self, id: ClipId, audio: ClipAudio) {
        if let Ok(p) = audio.peaks() {
            book::set_peaks(&mut self.snap.conversations, id, p);
        }
        if let Some((conv, clip)) = book::find(&self.snap.conversations, id) {
            let mut rc = audio.to_received(id, &clip.from, conv.target.clone(), clip.started_at_ms);
            rc.header.seq = clip.seq;
            let played = clip.played;
            match self.fetches.take_waiting(id) {
                (true, _) if !played => self.playout.autoplay(rc),
                (_, true) => self.playout.replay(id, rc),
                _ => {}
            }
        }
        self.fetches.keep(id, audio);
    }

    /// Every tick: player events, stale live clips, reconnecting.
    async fn tick(
        &mut self,
        client: &mut Option<Client>,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        self.player_events(client.as_ref()).await;
        let now = Instant::now();
        for target in self.playout.drop_stale(now) {
            self.stop_talking(&target);
        }
        if client.is_none()
            && let Some(p) = self.link.reconnect_due(now)
        {
            self.connect(p, client, rx).await;
        }
    }

    /// What the player did: what plays now, played marks and receipts.
    async fn player_events(&mut self, client: Option<&Client>) {
        let heard_now = self.playout.poll();
        let live: Vec<_> = self.playout.live_stats().copied().collect();
        if live != self.snap.live_stats {
            self.snap.live_stats = live;
        }
        for heard in heard_now {
            match heard {
                Heard::Started(id) => self.snap.playing = Some(id),
                Heard::Played(id) => {
                    if self.snap.playing == Some(id) {
                        self.snap.playing = None;
                    }
                    // Into the silent stand-in for a speaker that failed, nobody heard it.
                    if self.playout.audible() && book::mark_played(&mut self.snap.conversations, id)
                    {
                        self.link.set_unplayed(id, false);
                        if let Some(c) = client {
                            let _ = c.played(id).await;
                        }
                    }
                }
                Heard::Abandoned(id) => {
                    if self.snap.playing == Some(id) {
                        self.snap.playing = None;
                    }
                }
                Heard::Failed(message) => {
                    self.snap.playing = None;
                    self.snap.audio_problem = Some(format!("playback stopped: {message}"));
                }
            }
        }
    }
}

/// The busy notice: the relay's sentence names who is talking.
fn busy_text(message: &str) -> String {
    let m = message.strip_prefix("busy: ").unwrap_or(message);
    let mut text = format!("Busy: {m}");
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_busy_notice_names_the_talker() {
        assert_eq!(
            super::busy_text("busy: bob is talking on crew; try again when they finish"),
            "Busy: bob is talking on crew; try again when they finish."
        );
    }
}
