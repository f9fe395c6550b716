//! What the engine does when the relay, the player, the microphone test or the clock speaks:
//! new clips (live and stored), presence, receipts, played marks, reconnecting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Command;
use super::audio_clip::ClipAudio;
use super::book;
use super::mic::{self, MicMsg};
use super::speaker::Heard;
use super::state::{Meter, NoticeKind};
use super::worker::Worker;
use walkie_client::{Client, Event};
use walkie_proto::clip::ClipId;

/// A live clip with no news for this long is no longer shown as talking.
const LIVE_STALE: Duration = Duration::from_secs(6);
/// Longest pause between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

impl Worker {
    /// Something the relay pushed.
    pub(super) async fn event(&mut self, event: Event, client: Option<&Client>) {
        let me = self.snap.me().unwrap_or_default().to_string();
        match event {
            Event::LiveStarted(h) => {
                if h.from != me {
                    let target = book::conversation_of(&h.to, &h.from, &me);
                    book::ensure(&mut self.snap.conversations, &target).talking = Some(h.from.clone());
                    self.live.insert(h.id, (target, h.from.clone(), Instant::now()));
                    self.in_player.insert(h.id);
                    self.speaker.live_start(h);
                }
            }
            Event::LivePacket(id, p) => {
                if let Some(l) = self.live.get_mut(&id) {
                    l.2 = Instant::now();
                    self.speaker.live_packet(id, p);
                }
            }
            Event::Clip(clip) => {
                let id = clip.header.id;
                let live = self.live.remove(&id);
                if let Some((target, _, _)) = &live {
                    self.stop_talking(target);
                }
                let meta = clip.meta();
                let mine = clip.header.from == me;
                let (_, new) = book::add_clip(&mut self.snap.conversations, &me, &meta, mine);
                let audio = ClipAudio::of_received(&clip);
                if live.is_some() {
                    self.speaker.live_end(id, clip.samples);
                } else if new && !mine {
                    self.in_player.insert(id);
                    self.speaker.queue(clip);
                }
                if new && !mine {
                    self.set_unplayed(id, true);
                }
                self.got_audio(id, audio);
                if let Some(c) = client {
                    let _ = c.ack(id).await;
                }
            }
            Event::Aborted(e) => {
                if let Some(id) = e.clip {
                    if let Some((target, _, _)) = self.live.remove(&id) {
                        self.stop_talking(&target);
                    }
                    self.speaker.live_abort(id);
                }
            }
            // About an upload that did not finish (one you cancelled is reset, and the relay
            // says so): the clip's own outcome was already reported by the talk.
            Event::Error(e) if e.clip.is_some_and(|id| book::find(&self.snap.conversations, id).is_none()) => {
                tracing::debug!("relay error about an unfinished upload: {}", e.message);
            }
            Event::Error(e) => self.notice(NoticeKind::Error, format!("The relay reported: {}", e.message)),
            Event::Channels(names) => {
                for name in names {
                    book::ensure(&mut self.snap.conversations, &walkie_proto::clip::Target::Channel(name));
                }
            }
            Event::Online(users) => book::set_online(&mut self.snap.conversations, &me, &users),
            Event::Presence(user, online) => book::set_presence(&mut self.snap.conversations, &me, &user, online),
            Event::PlayedBy(id, user) => book::add_receipt(&mut self.snap.conversations, id, &user),
        }
    }

    fn stop_talking(&mut self, target: &walkie_proto::clip::Target) {
        let still = self.live.values().find(|(t, _, _)| t == target).map(|(_, who, _)| who.clone());
        if let Some(c) = self.snap.conversations.iter_mut().find(|c| &c.target == target) {
            c.talking = still;
        }
    }

    /// Every tick: player events, stale live clips, reconnecting.
    pub(super) async fn tick(&mut self, client: &mut Option<Client>, rx: &mut mpsc::UnboundedReceiver<Command>) {
        self.player_events(client.as_ref()).await;
        let now = Instant::now();
        let stale: Vec<ClipId> = self.live.iter().filter(|(_, l)| now - l.2 > LIVE_STALE).map(|(id, _)| *id).collect();
        for id in stale {
            if let Some((target, _, _)) = self.live.remove(&id) {
                self.stop_talking(&target);
            }
        }
        if let Some((at, wait)) = self.reconnect
            && now >= at
            && client.is_none()
            && let Some(p) = self.profile.clone()
        {
            self.reconnect = Some((now + wait, (wait * 2).min(RECONNECT_MAX)));
            self.connect(p, client, rx).await;
        }
    }

    /// What the player did: what plays now, played marks and receipts.
    pub(super) async fn player_events(&mut self, client: Option<&Client>) {
        for heard in self.speaker.poll() {
            match heard {
                Heard::Started(id) => self.snap.playing = Some(id),
                Heard::Played(id) => {
                    self.in_player.remove(&id);
                    if self.snap.playing == Some(id) {
                        self.snap.playing = None;
                    }
                    if book::mark_played(&mut self.snap.conversations, id) {
                        self.set_unplayed(id, false);
                        if let Some(c) = client {
                            let _ = c.played(id).await;
                        }
                    }
                }
                Heard::Abandoned(id) => {
                    self.in_player.remove(&id);
                    if self.snap.playing == Some(id) {
                        self.snap.playing = None;
                    }
                }
                Heard::Failed(message) => {
                    self.in_player.clear();
                    self.snap.playing = None;
                    self.snap.audio_problem = Some(format!("playback stopped: {message}"));
                }
            }
        }
    }

    /// Starts the microphone test.
    pub(super) fn mic_test(&mut self) {
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
        if self.session.is_none() {
            let me = "you".to_string();
            if let Err(p) =
                self.speaker.start(self.opts.output.clone().or_else(|| self.snap.settings.output_device.clone()).as_deref(), &me)
            {
                self.snap.audio_problem = Some(p);
            }
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
                self.mic_test_id = Some(self.speaker.test_start(codec));
                self.snap.mic_test = Some(meter);
            }
            Err(e) => {
                self.mic.give_back(None);
                self.notice(NoticeKind::Error, format!("Microphone test: {e}"));
            }
        }
    }

    /// A packet or the end of the microphone test.
    pub(super) fn mic_msg(&mut self, m: MicMsg) {
        let Some(id) = self.mic_test_id else { return };
        match m {
            MicMsg::Packet(p) => self.speaker.live_packet(id, p),
            MicMsg::Done(samples, source, failure) => {
                self.speaker.live_end(id, samples);
                self.mic.give_back(Some(source));
                self.mic_test_id = None;
                self.snap.mic_test = None;
                if let Some(f) = failure {
                    self.notice(NoticeKind::Error, format!("Microphone test: {f}"));
                }
            }
        }
    }
}
