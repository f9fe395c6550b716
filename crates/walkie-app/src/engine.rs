//! The app's engine: everything the desktop app does, without any UI, so it can
//! be driven and tested on its own.
//!
//! [`Engine::start`] runs a tokio runtime on a thread of its own. That thread owns the
//! [`Client`](super::Client), the outbox, the microphone (kept open between clips so no
//! first syllable is lost) and a [`Player`](super::player::Player). The app sends it
//! [`Command`]s and reads a [`Snapshot`] that is replaced whole whenever something changes;
//! [`Engine::on_change`] asks for a repaint then.
//!
//! | file | owns |
//! |---|---|
//! | `engine.rs` | [`Engine`], [`Command`], [`EngineOptions`] |
//! | `engine/worker.rs` | the loop on the engine thread: the one place the state below comes together |
//! | `engine/state.rs` | the [`Snapshot`] and what is in it |
//! | `engine/book.rs` | conversations, clips in order, played marks, unread counts, presence |
//! | `engine/link.rs` | the link to the relay: connecting (errors in words), the outbox, reconnecting |
//! | `engine/unplayed.rs` | the played marks kept across restarts |
//! | `engine/fetches.rs` | background fetches (history pages, clip audio) and the audio cache |
//! | `engine/playout.rs` | the player and what it plays (auto-play, live clips, replays, the mic test) |
//! | `engine/mic.rs` | the microphone kept open, and the microphone test |
//! | `engine/people.rs` | display names, avatars, contacts, channels; joining with an invite link |
//! | `engine/export.rs` | a conversation to a folder of `.opus` files |
//! | `engine/settings.rs` | `app.toml`: settings and remembered profiles |
//! | `engine/audio_clip.rs` | a clip's packets and waveform |
//! | `engine/demo.rs` | `walkie app --demo`: bob, a second client, on the demo relay |
//!
//! Each component keeps its state private behind a small interface; only the worker calls
//! more than one of them.

mod audio_clip;
mod book;
mod demo;
mod export;
mod fetches;
mod link;
mod mic;
pub mod notify;
pub mod people;
mod playout;
pub mod settings;
pub mod state;
mod unplayed;
mod worker;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use audio_clip::{PEAKS, peaks};
pub use people::{AvatarPixels, PeopleView, PersonView};
pub use settings::{AppSettings, BITRATE_RANGE};
pub use state::{
    Body, ClipView, Connection, Conversation, Devices, Meter, Notice, NoticeKind, Pixels, Snapshot,
    Talk,
};

use walkie_client::ClientError;
use walkie_client::profile::Profile;
use walkie_proto::clip::{ClipId, Target};

/// What the app asks the engine to do.
#[derive(Clone, Debug)]
pub enum Command {
    /// Connect with these settings (and remember them once they work).
    Connect(Profile),
    /// Disconnect and show the connect screen.
    Disconnect,
    /// Show this conversation (loads its history and waveforms).
    Select(Target),
    /// Add a channel or contact to the list by hand.
    AddConversation(Target),
    /// The talk key went down: start a live clip to this conversation.
    TalkStart(Target),
    /// The talk key went up: send the clip.
    TalkRelease,
    /// Abandon the clip being recorded.
    TalkCancel,
    /// Play (or replay) a clip; it plays after whatever is playing.
    Play(ClipId),
    /// Stop a clip that plays or waits to play (it stays unplayed).
    Stop(ClipId),
    /// Fetch the page of history before the oldest clip shown.
    LoadOlder(Target),
    /// Write every clip of a conversation to `dir` as `.opus` files plus `index.json`.
    Export {
        /// The conversation.
        target: Target,
        /// The folder (created if missing).
        dir: PathBuf,
    },
    /// Apply and save new settings.
    SetSettings(AppSettings),
    /// List the audio devices again.
    RefreshDevices,
    /// Record a few seconds from the microphone and play them back.
    MicTest,
    /// Hide the notice.
    DismissNotice,
    /// Make an account with an invite link (or sign this device in with a device link), then
    /// connect with it.
    Join {
        /// The link.
        link: String,
        /// The login name wanted (empty for a device link).
        name: String,
        /// The display name.
        display: Option<String>,
    },
    /// Ask, accept, remove or block someone.
    Contact {
        /// Their login name.
        user: String,
        /// What to do.
        action: walkie_proto::people::ContactAction,
    },
    /// Make, invite into, leave, rename or delete a channel.
    Group {
        /// The channel.
        channel: String,
        /// What to do.
        action: walkie_proto::people::GroupAction,
    },
    /// Set your display name.
    SetDisplayName(String),
    /// Set your avatar from a picture file.
    SetAvatar(PathBuf),
    /// Ask for people you may know.
    Suggest,
    /// Be visible nearby at this place (`LAT,LON` or a city) for an hour and list who is near;
    /// `None` stops being visible.
    Nearby(Option<String>),
    /// Send a text to a conversation.
    SendText {
        /// The conversation.
        to: Target,
        /// The text.
        text: String,
    },
    /// Send a picture file to a conversation (checked, scaled, metadata dropped).
    SendPicture {
        /// The conversation.
        to: Target,
        /// The file.
        path: PathBuf,
    },
    /// Send a doodle drawn in the app.
    SendDoodle {
        /// The conversation.
        to: Target,
        /// The strokes.
        doodle: walkie_proto::message::doodle::Doodle,
    },
    /// Take back one of your messages or clips (within the relay's recall window).
    Recall(ClipId),
    /// Mute (or unmute) a conversation's desktop notifications.
    SetMuted {
        /// The conversation.
        target: Target,
        /// Muted or not.
        muted: bool,
    },
    /// The window gained (`true`) or lost focus: messages arriving unfocused notify, and
    /// are read only once the window is focused.
    SetFocused(bool),
    /// Demo only: make bob say something on the channel.
    DemoPeerTalk,
    /// Stop the engine.
    Shutdown,
}

/// Where the engine keeps things and which audio it uses.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    /// Where `app.toml` (settings and profiles) lives.
    pub config_dir: PathBuf,
    /// Where outboxes (`outbox/USER`) and played marks (`app/USER/`) live.
    pub data_dir: PathBuf,
    /// An audio source spec that overrides the settings (`wav:PATH`, `null`, a device).
    pub input: Option<String>,
    /// An audio sink spec that overrides the settings (`null`, a device).
    pub output: Option<String>,
    /// Connect with this profile at start-up when it is complete (else the last one used).
    pub profile: Option<Profile>,
    /// Run an in-process relay with two users and connect to it (`walkie app --demo`).
    pub demo: bool,
}

impl EngineOptions {
    /// The standard directories (those `walkie login` and `walkie send` use).
    pub fn standard() -> Result<EngineOptions, ClientError> {
        let dirs = directories::ProjectDirs::from("", "", "walkie").ok_or_else(|| {
            ClientError::Config(
                "cannot find a home directory for walkie's settings; set HOME".into(),
            )
        })?;
        Ok(EngineOptions {
            config_dir: dirs.config_dir().to_path_buf(),
            data_dir: dirs.data_dir().to_path_buf(),
            ..Default::default()
        })
    }
}

type Waker = Box<dyn Fn() + Send + Sync>;

/// The snapshot, shared between the engine thread and the app.
#[derive(Default)]
struct Shared {
    snapshot: Mutex<Arc<Snapshot>>,
    changed: Condvar,
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn publish(&self, snap: Snapshot) {
        *lock(&self.snapshot) = Arc::new(snap);
        self.changed.notify_all();
        if let Some(wake) = lock(&self.waker).as_ref() {
            wake();
        }
    }
}

/// A running engine. Dropping it stops the engine thread (closing the connection politely).
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread; it connects at once when the options hold a complete profile
    /// (or a remembered one), or starts the demo relay.
    pub fn start(opts: EngineOptions) -> Result<Engine, ClientError> {
        let shared = Arc::new(Shared::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walkie-engine")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the engine's runtime: {e}")))?;
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("walkie-engine".into())
            .spawn(move || {
                runtime.block_on(worker::run(opts, worker_shared, rx));
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| ClientError::Config(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands,
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a command.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        lock(&self.shared.snapshot).clone()
    }

    /// Calls `wake` (from the engine thread) after every change, e.g. to request a repaint.
    pub fn on_change(&self, wake: impl Fn() + Send + Sync + 'static) {
        *lock(&self.shared.waker) = Some(Box::new(wake));
    }

    /// Waits up to `timeout` for a snapshot that satisfies `pred`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Option<Arc<Snapshot>> {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.shared.snapshot);
        loop {
            if pred(&guard) {
                return Some(guard.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = self
                .shared
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
