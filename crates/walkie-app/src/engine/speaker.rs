//! The speaker: a [`Player`] on its own thread, fed with clips to auto-play, live clips as
//! they arrive, replays (under a fresh id, since the queue plays each id once) and the
//! microphone test; its events are mapped back to the clips on screen.

use std::collections::HashMap;

use walkie_media::audio::open::open_sink;
use walkie_media::audio::sink::AudioSink;
use walkie_proto::clip::ReceivedClip;
use walkie_media::player::{self, Player, PlayerConfig, PlayerEvent, PlayerHandle, PlayerInput};
use walkie_proto::clip::{ClipId, CodecParams, Target, now_ms};
use walkie_proto::wire::DeliverHeader;

/// What the engine learns from the player.
#[derive(Debug, PartialEq, Eq)]
pub enum Heard {
    /// This clip started playing.
    Started(ClipId),
    /// This clip played to its end (mark it played, send the receipt).
    Played(ClipId),
    /// This clip stopped part way.
    Abandoned(ClipId),
    /// The player stopped with this error.
    Failed(String),
}

/// The player and the ids it plays under.
#[derive(Default)]
pub struct Speaker {
    handle: Option<PlayerHandle<Box<dyn AudioSink>>>,
    /// Player id → the clip it stands for (replays), or `None` (the microphone test).
    aliases: HashMap<ClipId, Option<ClipId>>,
}

impl Speaker {
    /// Starts a player for `me` on the sink `spec`; if the device cannot be opened, audio
    /// goes nowhere and the error is returned for the user to see.
    pub fn start(&mut self, spec: Option<&str>, me: &str) -> Result<(), String> {
        self.stop();
        let (sink, problem) = match open_sink(spec) {
            Ok(s) => (s, None),
            Err(e) => (Box::new(walkie_media::audio::null::NullSink::realtime()) as Box<dyn AudioSink>, Some(format!("speaker: {e}"))),
        };
        let handle = player::spawn(Player::new(sink, me, PlayerConfig::default())).map_err(|e| format!("cannot start the player: {e}"))?;
        self.handle = Some(handle);
        match problem {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Stops the player (what it was playing is cut off).
    pub fn stop(&mut self) {
        self.handle = None;
        self.aliases.clear();
    }

    fn send(&self, input: PlayerInput) {
        if let Some(h) = &self.handle {
            h.send(input);
        }
    }

    /// Queues a complete clip to auto-play (in the relay's order among the others).
    pub fn queue(&self, clip: ReceivedClip) {
        self.send(PlayerInput::Complete(clip));
    }

    /// A live clip starts (it plays while it is still being recorded).
    pub fn live_start(&self, header: DeliverHeader) {
        self.send(PlayerInput::Offer(header));
    }

    /// The next packet of a live clip.
    pub fn live_packet(&self, id: ClipId, packet: Vec<u8>) {
        self.send(PlayerInput::Packet(id, packet));
    }

    /// A live clip ended with this decoded length.
    pub fn live_end(&self, id: ClipId, samples: u64) {
        self.send(PlayerInput::End(id, samples));
    }

    /// A live clip was abandoned.
    pub fn live_abort(&self, id: ClipId) {
        self.send(PlayerInput::Abort(id));
    }

    /// Plays a clip again (or one of your own), under a fresh id.
    pub fn replay(&mut self, id: ClipId, mut clip: ReceivedClip) {
        let alias = ClipId::random();
        self.aliases.insert(alias, Some(id));
        clip.header.id = alias;
        clip.header.seq = u64::MAX;
        clip.header.from = format!("replay of {}", clip.header.from);
        self.queue(clip);
    }

    /// Starts the microphone test's live clip; returns its id.
    pub fn test_start(&mut self, codec: CodecParams) -> ClipId {
        let id = ClipId::random();
        self.aliases.insert(id, None);
        let header = DeliverHeader {
            id,
            from: "microphone test".into(),
            to: Target::Channel("test".into()),
            started_at_ms: now_ms(),
            codec,
            live: true,
            seq: 0,
        };
        self.live_start(header);
        id
    }

    /// What happened since the last call.
    pub fn poll(&mut self) -> Vec<Heard> {
        let Some(h) = &self.handle else { return Vec::new() };
        let mut out = Vec::new();
        let mut failed = false;
        while let Ok(event) = h.events().try_recv() {
            let (id, make): (ClipId, fn(ClipId) -> Heard) = match event {
                Ok(PlayerEvent::Started { id, .. }) => (id, Heard::Started),
                Ok(PlayerEvent::Played { id }) => (id, Heard::Played),
                Ok(PlayerEvent::Abandoned { id }) => (id, Heard::Abandoned),
                Err(message) => {
                    out.push(Heard::Failed(message));
                    failed = true;
                    continue;
                }
            };
            let ended = !matches!(make(id), Heard::Started(_));
            match self.aliases.get(&id).copied() {
                None => out.push(make(id)),
                Some(real) => {
                    if ended {
                        self.aliases.remove(&id);
                    }
                    // A replay stands for its clip; the microphone test for nothing.
                    if let Some(real) = real {
                        out.push(make(real));
                    }
                }
            }
        }
        if failed {
            self.handle = None;
        }
        out
    }
}
