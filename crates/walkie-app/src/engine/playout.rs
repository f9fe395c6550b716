//! What the engine plays: a [`Player`] on its own thread, fed with clips to auto-play, live
//! clips as they arrive, replays (under a fresh id, since the queue plays each id once) and
//! the microphone test; which clips are in it and which live clips are being talked; its
//! events mapped back to the clips on screen.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use walkie_media::audio::null::NullSink;
use walkie_media::audio::open::open_sink;
use walkie_media::audio::sink::AudioSink;
use walkie_media::jitter::JitterStats;
use walkie_media::player::{self, Player, PlayerConfig, PlayerEvent, PlayerHandle, PlayerInput};
use walkie_proto::clip::{ClipId, CodecParams, Target, now_ms};
use walkie_proto::received::{LivePacket, ReceivedClip, Via};
use walkie_proto::wire::DeliverHeader;

/// A live clip with no news for this long is no longer shown as talking.
const LIVE_STALE: Duration = Duration::from_secs(6);

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

/// A live clip of someone else's being talked: where, who, last news.
struct LiveClip {
    target: Target,
    from: String,
    last: Instant,
    /// False for a live clip of a conversation that does not play by itself: shown as
    /// "talking", not heard.
    heard: bool,
}

/// Live clips whose jitter-buffer counts are kept for the debug view.
const LIVE_STATS_KEPT: usize = 8;

/// The player, the ids it plays under, and what it is busy with.
#[derive(Default)]
pub struct Playout {
    handle: Option<PlayerHandle<Box<dyn AudioSink>>>,
    /// Player id → the clip it stands for (replays), or `None` (the microphone test).
    aliases: HashMap<ClipId, Option<ClipId>>,
    /// Clips handed to the player and not yet played or abandoned.
    in_player: HashSet<ClipId>,
    /// Live clips of others in progress.
    live: HashMap<ClipId, LiveClip>,
    /// The microphone test's clip while it runs.
    mic_test: Option<ClipId>,
    /// What the network did to the latest live clips heard (the debug view shows them).
    live_stats: std::collections::VecDeque<(ClipId, JitterStats)>,
    /// The next packet's index in the microphone test.
    mic_test_next: u32,
    /// True when the player plays into an output device (or the `null` sink asked for by
    /// name); false for the silent stand-in after a device failed to open: then nothing is
    /// heard, so nothing counts as played.
    audible: bool,
}

impl Playout {
    /// Starts a player for `me` on the sink `spec`; if the device cannot be opened, audio
    /// goes nowhere and the error is returned for the user to see.
    pub fn start(&mut self, spec: Option<&str>, me: &str) -> Result<(), String> {
        self.stop();
        let (sink, problem) = match open_sink(spec) {
            Ok(s) => (s, None),
            Err(e) => (
                Box::new(NullSink::realtime()) as Box<dyn AudioSink>,
                Some(format!(
                    "speaker: {e}; clips are not played (nor marked played) until a speaker works"
                )),
            ),
        };
        self.audible = problem.is_none();
        let handle = player::spawn(Player::new(sink, me, PlayerConfig::default()))
            .map_err(|e| format!("cannot start the player: {e}"))?;
        self.handle = Some(handle);
        match problem {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Stored clips play at `percent` of real time (100, 150, 200), the pitch kept; live
    /// clips always at real time.
    pub fn set_speed(&mut self, percent: u32) {
        self.send(PlayerInput::Speed(percent as f32 / 100.0));
    }

    /// Stops the player (what it was playing is cut off) and forgets the live clips.
    pub fn stop(&mut self) {
        self.handle = None;
        self.aliases.clear();
        self.live.clear();
        self.in_player.clear();
        self.audible = false;
    }

    /// True when what plays reaches an output: only then is a clip marked played.
    pub fn audible(&self) -> bool {
        self.handle.is_some() && self.audible
    }

    /// Stops `id` if it plays or waits to play (as itself or as a replay): the player
    /// abandons it, and it is not marked played.
    pub fn stop_clip(&mut self, id: ClipId) {
        let mut ids: Vec<ClipId> = self
            .aliases
            .iter()
            .filter(|(_, real)| **real == Some(id))
            .map(|(alias, _)| *alias)
            .collect();
        ids.push(id);
        for player_id in ids {
            self.send(PlayerInput::Abort(player_id));
        }
        // A clip that waited is dropped without an event; one that played says "abandoned".
        self.in_player.remove(&id);
    }

    /// True while `id` is in the player (queued or playing).
    pub fn has(&self, id: ClipId) -> bool {
        self.in_player.contains(&id)
    }

    fn send(&self, input: PlayerInput) {
        if let Some(h) = &self.handle {
            h.send(input);
        }
    }

    /// Queues a complete clip to auto-play (in the relay's order among the others).
    pub fn autoplay(&mut self, clip: ReceivedClip) {
        self.in_player.insert(clip.header.id);
        self.send(PlayerInput::Complete(clip));
    }

    /// Someone's live clip started to `target`: when `heard`, it plays while it is still
    /// being recorded; either way its talker shows as talking until it ends.
    pub fn live_started(&mut self, header: DeliverHeader, target: Target, heard: bool) {
        self.live.insert(
            header.id,
            LiveClip {
                target,
                from: header.from.clone(),
                last: Instant::now(),
                heard,
            },
        );
        if heard {
            self.in_player.insert(header.id);
            self.send(PlayerInput::Offer(header));
        }
    }

    /// A copy of a live clip's packet (by its stream or as a datagram).
    pub fn live_packet(&mut self, id: ClipId, packet: LivePacket) {
        if let Some(l) = self.live.get_mut(&id) {
            l.last = Instant::now();
            if l.heard {
                self.send(PlayerInput::Packet(id, packet));
            }
        }
    }

    /// A clip arrived complete: if it was live, its end (with this decoded length); returns
    /// the conversation it was being talked in, and whether it was heard live.
    pub fn live_ended(&mut self, id: ClipId, samples: u64) -> Option<(Target, bool)> {
        let live = self.live.remove(&id)?;
        if live.heard {
            self.send(PlayerInput::End(id, samples));
        }
        Some((live.target, live.heard))
    }

    /// A live clip was abandoned; returns the conversation it was being talked in.
    pub fn live_aborted(&mut self, id: ClipId) -> Option<Target> {
        self.send(PlayerInput::Abort(id));
        self.live.remove(&id).map(|l| l.target)
    }

    /// Who is still talking in `target`, if anyone.
    pub fn talking_in(&self, target: &Target) -> Option<String> {
        self.live
            .values()
            .find(|l| &l.target == target)
            .map(|l| l.from.clone())
    }

    /// Drops live clips with no news for a while; returns their conversations.
    pub fn drop_stale(&mut self, now: Instant) -> Vec<Target> {
        let stale: Vec<ClipId> = self
            .live
            .iter()
            .filter(|(_, l)| now - l.last > LIVE_STALE)
            .map(|(id, _)| *id)
            .collect();
        stale
            .into_iter()
            .filter_map(|id| self.live.remove(&id))
            .map(|l| l.target)
            .collect()
    }

    /// Plays a clip again (or one of your own), under a fresh id.
    pub fn replay(&mut self, id: ClipId, mut clip: ReceivedClip) {
        self.in_player.insert(id);
        let alias = ClipId::random();
        self.aliases.insert(alias, Some(id));
        clip.header.id = alias;
        clip.header.seq = u64::MAX;
        clip.header.from = format!("replay of {}", clip.header.from);
        self.send(PlayerInput::Complete(clip));
    }

    /// Starts the microphone test's live clip.
    pub fn test_start(&mut self, codec: CodecParams) {
        let id = ClipId::random();
        self.aliases.insert(id, None);
        self.mic_test = Some(id);
        self.mic_test_next = 0;
        let header = DeliverHeader {
            id,
            from: "microphone test".into(),
            to: Target::Channel("test".into()),
            started_at_ms: now_ms(),
            codec,
            live: true,
            seq: 0,
            content: Default::default(),
        };
        self.send(PlayerInput::Offer(header));
    }

    /// The jitter buffer's counts of the latest live clips heard, oldest first.
    pub fn live_stats(&self) -> impl Iterator<Item = &(ClipId, JitterStats)> {
        self.live_stats.iter()
    }

    /// True while the microphone test plays.
    pub fn testing(&self) -> bool {
        self.mic_test.is_some()
    }

    /// The next packet of the microphone test.
    pub fn test_packet(&mut self, packet: Vec<u8>) {
        if let Some(id) = self.mic_test {
            let packet = LivePacket {
                index: self.mic_test_next,
                data: packet,
                via: Via::Stream,
            };
            self.mic_test_next = self.mic_test_next.saturating_add(1);
            self.send(PlayerInput::Packet(id, packet));
        }
    }

    /// The microphone test's recording ended with this length.
    pub fn test_end(&mut self, samples: u64) {
        if let Some(id) = self.mic_test.take() {
            self.send(PlayerInput::End(id, samples));
        }
    }

    /// What happened since the last call.
    pub fn poll(&mut self) -> Vec<Heard> {
        let Some(h) = &self.handle else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut failed = false;
        while let Ok(event) = h.events().try_recv() {
            let (id, make): (ClipId, fn(ClipId) -> Heard) = match event {
                Ok(PlayerEvent::Started { id, .. }) => (id, Heard::Started),
                Ok(PlayerEvent::Played { id }) => (id, Heard::Played),
                Ok(PlayerEvent::Abandoned { id }) => (id, Heard::Abandoned),
                Ok(PlayerEvent::LiveStats { id, stats }) => {
                    if self.live_stats.len() == LIVE_STATS_KEPT {
                        self.live_stats.pop_front();
                    }
                    self.live_stats.push_back((id, stats));
                    continue;
                }
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
        for heard in &out {
            match heard {
                Heard::Played(id) | Heard::Abandoned(id) => {
                    self.in_player.remove(id);
                }
                Heard::Failed(_) => self.in_player.clear(),
                Heard::Started(_) => {}
            }
        }
        out
    }
}
