//! What the engine shows the app: one [`Snapshot`] of everything on screen, replaced whole
//! whenever something changes, so a view reads it without locks or waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::settings::AppSettings;
use walkie_client::profile::Profile;
use walkie_client::talk::TalkControl;
use walkie_proto::clip::{ClipId, Target};
use walkie_proto::message::Content;
use walkie_proto::message::doodle::Doodle;

/// Where the connection to the relay stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Connection {
    /// Not connected and not trying (the connect screen shows).
    #[default]
    Disconnected,
    /// Connecting to this relay.
    Connecting(String),
    /// Connected and authenticated.
    Connected {
        /// Your user name.
        user: String,
        /// The relay's address.
        relay: String,
    },
    /// Connecting failed: one sentence saying why and what to check.
    Failed(String),
    /// The connection was lost after it worked; the engine reconnects by itself, and the
    /// conversations stay on screen (clips recorded meanwhile wait in the outbox).
    Lost {
        /// Your user name.
        user: String,
        /// What happened, in one sentence.
        why: String,
    },
}

impl Connection {
    /// True once connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, Connection::Connected { .. })
    }

    /// True while the conversations are shown: connected, or reconnecting after a blip.
    pub fn shows_conversations(&self) -> bool {
        matches!(self, Connection::Connected { .. } | Connection::Lost { .. })
    }
}

/// One clip or message in a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipView {
    /// The clip.
    pub id: ClipId,
    /// Who sent it.
    pub from: String,
    /// True for clips you sent.
    pub mine: bool,
    /// When it started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Its length.
    pub duration_ms: u64,
    /// The relay's sequence number (0 until known).
    pub seq: u64,
    /// The waveform ([`super::audio_clip::PEAKS`] bars in 0..1), empty until computed.
    pub peaks: Vec<f32>,
    /// False for a clip someone sent you that you have not heard yet.
    pub played: bool,
    /// Who has played it (for your own clips: read receipts).
    pub played_by: Vec<String>,
    /// Your clip is recorded but waits in the outbox for the relay.
    pub queued: bool,
    /// Voice, or the kind of message (text, picture, doodle, recalled). For a message,
    /// `played` means read and `played_by` who read it.
    pub content: Content,
    /// What a message shows, once its payload is here (`None` for voice, and until then).
    pub body: Option<Body>,
}

/// What a message shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A text.
    Text(String),
    /// A picture: its thumbnail's pixels, and the stored picture's bytes (JPEG or PNG) to
    /// open full size.
    Picture {
        /// The thumbnail, decoded.
        thumb: Arc<Pixels>,
        /// The stored picture, encoded.
        full: Arc<Vec<u8>>,
    },
    /// A doodle's strokes, drawn by the view (as they were drawn, the first time).
    Doodle(Arc<Doodle>),
}

/// Decoded pixels of a picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    /// Width and height.
    pub size: [usize; 2],
    /// `size[0] * size[1] * 4` bytes of RGBA.
    pub rgba: Vec<u8>,
}

/// A channel or a contact, with its clips.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// The channel, or the other user.
    pub target: Target,
    /// For a contact: whether they are online now (`None` for a channel).
    pub online: Option<bool>,
    /// Clips not yet played.
    pub unread: usize,
    /// The clips loaded so far, oldest first.
    pub clips: Vec<ClipView>,
    /// True while older clips may exist at the relay (history not fully loaded).
    pub has_older: bool,
    /// True while a history page is being fetched.
    pub loading: bool,
    /// Who is talking here right now, live.
    pub talking: Option<String>,
}

impl Conversation {
    /// An empty conversation.
    pub fn new(target: Target) -> Conversation {
        let online = matches!(target, Target::User(_)).then_some(false);
        Conversation {
            target,
            online,
            unread: 0,
            clips: Vec::new(),
            has_older: true,
            loading: false,
            talking: None,
        }
    }

    /// How the list shows it: `crew` or `@bob`.
    pub fn label(&self) -> String {
        self.target.to_string()
    }
}

/// A level meter shared with a thread that measures (the mic test).
#[derive(Debug, Default)]
pub struct Meter {
    level: AtomicU32,
    elapsed_ms: AtomicU32,
}

impl Meter {
    /// Sets the latest RMS level and the time so far.
    pub fn set(&self, level: f32, elapsed: Duration) {
        self.level.store(level.to_bits(), Ordering::Relaxed);
        self.elapsed_ms.store(
            u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    /// RMS level of the latest frame, 0..1.
    pub fn level(&self) -> f32 {
        f32::from_bits(self.level.load(Ordering::Relaxed))
    }

    /// Time measured so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms.load(Ordering::Relaxed).into())
    }
}

/// Your push-to-talk.
#[derive(Clone, Debug, Default)]
pub enum Talk {
    /// Not talking.
    #[default]
    Idle,
    /// Recording and streaming live; the control shows the level and elapsed time.
    Talking {
        /// Where it goes.
        to: Target,
        /// Level, elapsed time, release and cancel.
        control: Arc<TalkControl>,
    },
    /// Released: the tail is being recorded and the relay asked to store the clip.
    Sending {
        /// Where it goes.
        to: Target,
    },
}

/// How a notice looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// Something worked (export done, clip queued).
    Info,
    /// The floor is taken: someone else is talking.
    Busy,
    /// Something failed.
    Error,
}

/// A message for the user, shown until replaced or dismissed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// How it looks.
    pub kind: NoticeKind,
    /// One sentence.
    pub text: String,
}

/// The audio devices the settings offer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    /// Input device names, the default first.
    pub inputs: Vec<String>,
    /// Output device names, the default first.
    pub outputs: Vec<String>,
    /// Why listing failed, if it did.
    pub error: Option<String>,
}

/// Everything the app shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The connection.
    pub connection: Connection,
    /// Profiles used before, the latest first (the connect screen offers them).
    pub profiles: Vec<Profile>,
    /// Channels and contacts.
    pub conversations: Vec<Conversation>,
    /// The conversation on screen (and where the talk button sends).
    pub selected: Option<Target>,
    /// Your push-to-talk.
    pub talk: Talk,
    /// The latest notice.
    pub notice: Option<Notice>,
    /// The settings in force.
    pub settings: AppSettings,
    /// The devices to choose from.
    pub devices: Devices,
    /// The microphone test in progress (its level and time).
    pub mic_test: Option<Arc<Meter>>,
    /// The clip playing now.
    pub playing: Option<ClipId>,
    /// Why the microphone or speaker cannot be used, if so.
    pub audio_problem: Option<String>,
    /// True in `walkie app --demo` (the "simulate bob talking" button shows).
    pub demo: bool,
    /// Display names, avatars, contacts and channels.
    pub people: super::people::PeopleView,
    /// The latest desktop notification raised: its conversation and text.
    pub last_notification: Option<(Target, String)>,
    /// What the network did to the latest live clips heard, oldest first (the settings'
    /// network view shows them).
    pub live_stats: Vec<(ClipId, walkie_media::jitter::JitterStats)>,
}

impl Snapshot {
    /// The conversation for `target`, if listed.
    pub fn conversation(&self, target: &Target) -> Option<&Conversation> {
        self.conversations.iter().find(|c| &c.target == target)
    }

    /// The selected conversation.
    pub fn selected_conversation(&self) -> Option<&Conversation> {
        self.selected.as_ref().and_then(|t| self.conversation(t))
    }

    /// Someone talking live anywhere: `(who, where)`.
    pub fn someone_talking(&self) -> Option<(&str, &Target)> {
        self.conversations
            .iter()
            .find_map(|c| c.talking.as_deref().map(|who| (who, &c.target)))
    }

    /// Your user name once connected.
    pub fn me(&self) -> Option<&str> {
        match &self.connection {
            Connection::Connected { user, .. } | Connection::Lost { user, .. } => Some(user),
            _ => None,
        }
    }
}
