//! The player: drives an audio sink from the [`PlaybackQueue`] with the Opus decoder, and
//! reports when each clip starts and when it has actually been played.
//!
//! [`Player::pump`] keeps the sink about `lead` ahead (40 ms by default), taking one 20 ms
//! step from the queue at a time, so the jitter buffer decides as late as possible. Each
//! clip gets a fresh decoder; its pre-skip is dropped and, when its length is known, its
//! tail trimmed. A clip counts as played once the sink has handed its last sample to the
//! device. [`spawn`] runs a player on its own thread, fed through a channel.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walkie_proto::clip::ClipId;
use walkie_proto::received::{LivePacket, ReceivedClip};
use walkie_proto::wire::DeliverHeader;

use crate::audio::sink::AudioSink;
use crate::codec::CodecError;
use crate::codec::opus::Decoder;
use crate::jitter::JitterStats;
use crate::pause::QuietFrames;
use crate::playback_queue::{PlaybackQueue, QueueConfig, Step};

/// Tolerance when matching sink positions (a resampling sink rounds): 1 ms.
const SLACK: u64 = 48;
/// How often the player thread pumps.
const TICK: Duration = Duration::from_millis(5);

/// Player settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlayerConfig {
    /// The queue and jitter buffer settings.
    pub queue: QueueConfig,
    /// How far ahead of the device the sink is kept filled.
    pub lead: Duration,
}

impl Default for PlayerConfig {
    fn default() -> Self {
        PlayerConfig {
            queue: QueueConfig::default(),
            lead: Duration::from_millis(40),
        }
    }
}

/// Something the player did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlayerEvent {
    /// A clip started playing.
    Started {
        /// The clip.
        id: ClipId,
        /// Who sent it.
        from: String,
        /// The sink position (48 kHz samples written before it) of its first sample.
        at_sample: u64,
    },
    /// A clip has been played to its end (send the receipt).
    Played {
        /// The clip.
        id: ClipId,
    },
    /// A clip stopped part way (aborted or stalled) and is not played.
    Abandoned {
        /// The clip.
        id: ClipId,
    },
    /// A clip played live through the jitter buffer finished: what the network did to it
    /// (late, concealed, recovered from FEC data, dropped), for the logs and the app's view.
    LiveStats {
        /// The clip.
        id: ClipId,
        /// The jitter buffer's counts.
        stats: JitterStats,
    },
}

/// Decoding state of the clip being played.
struct Playing {
    decoder: Decoder,
    frame: usize,
    skip: usize,
    /// Samples still to play, when the clip's length is known.
    remaining: Option<u64>,
    /// A stored clip played faster than real time: its audio goes through the time-stretcher
    /// (the pitch kept). Live clips always play at 1x.
    stretch: Option<wsola::TimeStretch>,
    /// The level of what was decoded, told to the jitter buffer.
    quiet: QuietFrames,
}

/// Plays the queue into a sink.
pub struct Player<S: AudioSink> {
    queue: PlaybackQueue,
    sink: S,
    lead_ms: u32,
    playing: Option<Playing>,
    /// Clips finished in the queue, with the sink position of their end.
    finishing: VecDeque<(ClipId, u64)>,
    flushed: bool,
    /// How fast stored clips play (1.0, 1.5, 2.0).
    speed: f32,
}

impl<S: AudioSink> Player<S> {
    /// A player for user `me` (whose own clips are skipped) into `sink`.
    pub fn new(sink: S, me: &str, cfg: PlayerConfig) -> Player<S> {
        let mut queue = cfg.queue;
        queue.jitter.lead = cfg.lead;
        Player {
            queue: PlaybackQueue::new(me, queue),
            sink,
            lead_ms: u32::try_from(cfg.lead.as_millis()).unwrap_or(u32::MAX),
            playing: None,
            finishing: VecDeque::new(),
            flushed: true,
            speed: 1.0,
        }
    }

    /// Plays stored clips this much faster (0.5 to 3; 1 is real time), the pitch kept; from
    /// the next clip on.
    pub fn set_speed(&mut self, speed: f32) {
        self.speed = if speed.is_finite() {
            speed.clamp(0.5, 3.0)
        } else {
            1.0
        };
    }

    /// The queue, to feed clips and packets into.
    pub fn queue(&mut self) -> &mut PlaybackQueue {
        &mut self.queue
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Gives the sink back.
    pub fn into_sink(self) -> S {
        self.sink
    }

    /// True when nothing is queued, playing, or waiting to be reported played.
    pub fn is_idle(&self) -> bool {
        self.queue.is_idle() && self.finishing.is_empty()
    }

    /// Tops the sink up to the lead and reports what happened. Call every few milliseconds.
    pub fn pump(&mut self, now: Instant) -> Result<Vec<PlayerEvent>, CodecError> {
        let mut events = Vec::new();
        while self.sink.queued_ms() < self.lead_ms {
            let Some(step) = self.queue.next(now) else {
                if self.queue.is_idle() && !self.flushed {
                    self.sink.flush()?;
                    self.flushed = true;
                }
                break;
            };
            match step {
                Step::Start {
                    id,
                    from,
                    codec,
                    samples,
                } => {
                    // A stored clip's length is known when it starts; a live one's is not.
                    let stretch = (samples.is_some() && (self.speed - 1.0).abs() > 0.01)
                        .then(|| wsola::TimeStretch::new(48_000, 1).ok())
                        .flatten()
                        .map(|mut t| {
                            t.set_tempo(self.speed);
                            t
                        });
                    self.playing = Some(Playing {
                        decoder: Decoder::new()?,
                        frame: codec.frame_samples as usize,
                        skip: usize::from(codec.pre_skip),
                        remaining: samples,
                        stretch,
                        quiet: QuietFrames::new(),
                    });
                    events.push(PlayerEvent::Started {
                        id,
                        from,
                        at_sample: self.sink.written(),
                    });
                }
                Step::Packet(p) => {
                    if let Some(pl) = &mut self.playing {
                        // A packet that does not decode is concealed rather than ending the clip.
                        let pcm = match pl.decoder.decode(&p) {
                            Ok(pcm) => pcm,
                            Err(_) => pl.decoder.conceal(pl.frame)?,
                        };
                        self.play(&pcm)?;
                    }
                }
                Step::Conceal => {
                    if let Some(pl) = &mut self.playing {
                        let pcm = pl.decoder.conceal(pl.frame)?;
                        self.play(&pcm)?;
                    }
                }
                Step::Recover(next) => {
                    if let Some(pl) = &mut self.playing {
                        let pcm = match pl.decoder.recover(&next, pl.frame) {
                            Ok(pcm) => pcm,
                            Err(_) => pl.decoder.conceal(pl.frame)?,
                        };
                        self.play(&pcm)?;
                    }
                }
                Step::Finished { id, .. } => {
                    if let Some(tail) = self
                        .playing
                        .as_mut()
                        .and_then(|pl| pl.stretch.as_mut())
                        .map(wsola::TimeStretch::flush)
                        && !tail.is_empty()
                    {
                        self.sink.play(&tail)?;
                    }
                    self.playing = None;
                    self.finishing.push_back((id, self.sink.written()));
                    if let Some((id, stats)) = self.queue.take_live_stats() {
                        tracing::info!(
                            clip = %id,
                            played = stats.played,
                            late = stats.late,
                            concealed = stats.skipped + stats.expanded,
                            fec_recovered = stats.recovered,
                            dropped = stats.drained + stats.overflowed,
                            "live clip played"
                        );
                        events.push(PlayerEvent::LiveStats { id, stats });
                    }
                }
                Step::Abandoned { id } => {
                    self.playing = None;
                    events.push(PlayerEvent::Abandoned { id });
                }
            }
        }
        let played = self.sink.played_up_to().map_or(0, |p| p.samples);
        while let Some(&(id, end)) = self.finishing.front() {
            if end > played + SLACK {
                break;
            }
            self.finishing.pop_front();
            events.push(PlayerEvent::Played { id });
        }
        Ok(events)
    }

    /// Plays decoded audio of the current clip, dropping pre-skip and trimming the tail.
    fn play(&mut self, pcm: &[f32]) -> Result<(), CodecError> {
        let Some(pl) = &mut self.playing else {
            return Ok(());
        };
        self.queue.heard(pl.quiet.is_quiet(pcm));
        let drop = pl.skip.min(pcm.len());
        pl.skip -= drop;
        let mut pcm = &pcm[drop..];
        if let Some(rem) = &mut pl.remaining {
            let keep = usize::try_from(*rem).unwrap_or(usize::MAX).min(pcm.len());
            pcm = &pcm[..keep];
            *rem -= keep as u64;
        }
        if pcm.is_empty() {
            return Ok(());
        }
        self.flushed = false;
        match &mut pl.stretch {
            Some(t) => {
                t.push(pcm);
                let out = t.pull(t.available());
                if !out.is_empty() {
                    self.sink.play(&out)?;
                }
            }
            None => self.sink.play(pcm)?,
        }
        Ok(())
    }
}

/// What a player thread is fed.
#[derive(Clone, Debug)]
pub enum PlayerInput {
    /// A live clip starts ([`PlaybackQueue::offer`]).
    Offer(DeliverHeader),
    /// A copy of a live clip's packet (by stream or datagram).
    Packet(ClipId, LivePacket),
    /// A live clip is complete, with its decoded length.
    End(ClipId, u64),
    /// A live clip was abandoned.
    Abort(ClipId),
    /// A complete clip ([`PlaybackQueue::offer_complete`]).
    Complete(ReceivedClip),
    /// Stored clips play this much faster from the next one on ([`Player::set_speed`]).
    Speed(f32),
}

/// A player running on its own thread.
pub struct PlayerHandle<S: AudioSink + 'static> {
    tx: Option<Sender<PlayerInput>>,
    events: Receiver<Result<PlayerEvent, String>>,
    thread: Option<JoinHandle<S>>,
}

/// Runs `player` on a thread that pumps every 5 ms. Events (or the error that stopped it)
/// come out of [`PlayerHandle::events`].
pub fn spawn<S: AudioSink + 'static>(mut player: Player<S>) -> std::io::Result<PlayerHandle<S>> {
    let (tx, rx) = mpsc::channel::<PlayerInput>();
    let (etx, events) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("walkie-player".into())
        .spawn(move || {
            let mut open = true;
            loop {
                match rx.recv_timeout(TICK) {
                    Ok(input) => apply(&mut player, input),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
                while let Ok(input) = rx.try_recv() {
                    apply(&mut player, input);
                }
                match player.pump(Instant::now()) {
                    Ok(evs) => {
                        for e in evs {
                            let _ = etx.send(Ok(e));
                        }
                    }
                    Err(e) => {
                        let _ = etx.send(Err(e.to_string()));
                        break;
                    }
                }
                if !open && player.is_idle() {
                    let _ = player.sink.wait_drained(Duration::from_secs(5));
                    break;
                }
                if !open {
                    std::thread::sleep(TICK);
                }
            }
            player.into_sink()
        })?;
    Ok(PlayerHandle {
        tx: Some(tx),
        events,
        thread: Some(thread),
    })
}

fn apply<S: AudioSink>(player: &mut Player<S>, input: PlayerInput) {
    let now = Instant::now();
    let q = player.queue();
    match input {
        PlayerInput::Offer(h) => {
            q.offer(&h, now);
        }
        PlayerInput::Packet(id, p) => q.packet(id, p, now),
        PlayerInput::End(id, samples) => q.end(id, samples, now),
        PlayerInput::Abort(id) => {
            q.abort(id);
        }
        PlayerInput::Complete(clip) => {
            q.offer_complete(&clip, now);
        }
        PlayerInput::Speed(speed) => player.set_speed(speed),
    }
}

impl<S: AudioSink + 'static> PlayerHandle<S> {
    /// Feeds the player; false if its thread has stopped.
    pub fn send(&self, input: PlayerInput) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(input).is_ok())
    }

    /// Another way in, for a task that feeds the player while this handle stays here (the
    /// player runs until every sender is gone, so drop it before [`PlayerHandle::finish`]).
    pub fn sender(&self) -> Option<Sender<PlayerInput>> {
        self.tx.clone()
    }

    /// Events as they happen; an `Err` is the error that stopped the player.
    pub fn events(&self) -> &Receiver<Result<PlayerEvent, String>> {
        &self.events
    }

    /// Lets everything queued play to the end, then returns the sink (`None` if the player
    /// thread panicked) and the events not yet taken.
    pub fn finish(mut self) -> (Option<S>, Vec<Result<PlayerEvent, String>>) {
        self.tx.take();
        let sink = self.thread.take().and_then(|t| t.join().ok());
        (sink, self.events.try_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::null::NullSink;
    use crate::codec::{EncoderConfig, encode_pcm};
    use walkie_proto::clip::{CodecParams, Target};

    fn tone(len: usize, freq: f32) -> Vec<f32> {
        (0..len)
            .map(|i| 0.3 * (std::f32::consts::TAU * freq * i as f32 / 48_000.0).sin())
            .collect()
    }

    fn clip(n: u8, from: &str, seq: u64, pcm: &[f32]) -> ReceivedClip {
        let enc = encode_pcm(pcm, &EncoderConfig::default()).unwrap();
        let header = DeliverHeader {
            id: ClipId([n; 16]),
            from: from.into(),
            to: Target::Channel("crew".into()),
            started_at_ms: 0,
            codec: enc.params,
            live: false,
            seq,
            content: Default::default(),
        };
        ReceivedClip {
            header,
            packets: enc.packets,
            samples: enc.samples,
        }
    }

    fn rms(x: &[f32]) -> f32 {
        crate::audio::source::rms(x)
    }

    #[test]
    fn stored_clips_play_back_to_back_exactly_and_are_reported_played() {
        let a = tone(9_600, 440.0);
        let b = tone(4_800, 880.0);
        let mut player = Player::new(
            NullSink::instant().recording(),
            "me",
            PlayerConfig::default(),
        );
        let now = Instant::now();
        player.queue().offer_complete(&clip(1, "ann", 1, &a), now);
        player.queue().offer_complete(&clip(2, "bob", 2, &b), now);
        player.queue().offer_complete(&clip(3, "me", 3, &b), now);
        let events = player.pump(now).unwrap();
        let started: Vec<(u8, u64)> = events
            .iter()
            .filter_map(|e| {
                if let PlayerEvent::Started { id, at_sample, .. } = e {
                    Some((id.0[0], *at_sample))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(started, vec![(1, 0), (2, 9_600)]);
        let played: Vec<u8> = events
            .iter()
            .filter_map(|e| {
                if let PlayerEvent::Played { id } = e {
                    Some(id.0[0])
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(played, vec![1, 2]);
        assert!(player.is_idle());
        let out = player.sink().recorded();
        assert_eq!(out.len(), 9_600 + 4_800, "pre-skip dropped, tails trimmed");
        // The audio is the tones, in order (compare away from the codec's onset).
        let err =
            |x: &[f32], y: &[f32]| rms(&x.iter().zip(y).map(|(p, q)| p - q).collect::<Vec<_>>());
        assert!(err(&out[2_000..9_000], &a[2_000..9_000]) < 0.1);
        assert!(err(&out[11_000..14_000], &b[1_400..4_400]) < 0.1);
    }

    /// Zero crossings per second of a signal (twice its frequency for a tone).
    fn crossings_per_second(x: &[f32]) -> f32 {
        let n = x
            .windows(2)
            .filter(|w| (w[0] <= 0.0) != (w[1] <= 0.0))
            .count();
        n as f32 / (x.len() as f32 / 48_000.0)
    }

    #[test]
    fn stored_clips_play_faster_with_their_pitch_kept_and_live_ones_at_real_time() {
        let a = tone(48_000, 300.0);
        for (speed, want) in [(2.0f32, 24_000usize), (1.5, 32_000)] {
            let mut player = Player::new(
                NullSink::instant().recording(),
                "me",
                PlayerConfig::default(),
            );
            player.set_speed(speed);
            let now = Instant::now();
            player.queue().offer_complete(&clip(1, "ann", 1, &a), now);
            let events = player.pump(now).unwrap();
            assert!(
                events.contains(&PlayerEvent::Played {
                    id: ClipId([1; 16])
                }),
                "{events:?}"
            );
            let out = player.sink().recorded();
            let len = out.len() as f32;
            assert!(
                (len - want as f32).abs() < want as f32 * 0.03,
                "{speed}x: {} samples, not about {want}",
                out.len()
            );
            // The pitch: a 300 Hz tone crosses zero 600 times a second, sped up or not.
            let rate = crossings_per_second(&out[4_000..out.len() - 4_000]);
            assert!(
                (rate - 600.0).abs() < 30.0,
                "{speed}x: {rate} crossings per second"
            );
        }
    }

    #[test]
    fn a_live_clip_plays_through_a_thread_and_bad_packets_are_concealed() {
        let pcm = tone(48_000 / 2, 500.0);
        let c = clip(7, "ann", 0, &pcm);
        let mut header = c.header.clone();
        header.live = true;
        let handle = spawn(Player::new(
            NullSink::realtime().recording(),
            "me",
            PlayerConfig::default(),
        ))
        .unwrap();
        assert!(handle.send(PlayerInput::Offer(header)));
        for (k, p) in c.packets.iter().enumerate() {
            let p = if k == 5 {
                vec![0xff, 0xff, 0xff]
            } else {
                p.clone()
            };
            let p = LivePacket {
                index: k as u32,
                data: p,
                via: walkie_proto::received::Via::Stream,
            };
            handle.send(PlayerInput::Packet(c.header.id, p));
            std::thread::sleep(Duration::from_millis(20));
        }
        handle.send(PlayerInput::End(c.header.id, c.samples));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match handle
                .events()
                .recv_timeout(Duration::from_secs(5))
                .expect("player events")
                .unwrap()
            {
                PlayerEvent::Started { id, .. } => seen.push(format!("started {}", id.0[0])),
                PlayerEvent::Played { id } => seen.push(format!("played {}", id.0[0])),
                PlayerEvent::LiveStats { id, stats } => {
                    assert_eq!(id, c.header.id);
                    assert_eq!(
                        stats.played + stats.skipped + stats.recovered + stats.drained,
                        c.packets.len() as u64
                    );
                    seen.push("stats".into());
                }
                e => panic!("{e:?}"),
            }
        }
        assert_eq!(seen, vec!["started 7", "stats", "played 7"]);
        let (sink, _) = handle.finish();
        let sink = sink.unwrap();
        let out = sink.recorded();
        // Live: no trimming, and waits for late packets are filled with concealment.
        assert!(
            out.len() + 960 >= pcm.len() && out.len() <= pcm.len() + 9_600,
            "{} samples for {}",
            out.len(),
            pcm.len()
        );
        assert!(rms(&out[4_800..]) > 0.1);
    }

    #[test]
    fn params_of_a_clip_with_odd_frames_still_decode() {
        let enc = encode_pcm(
            &tone(4_800, 300.0),
            &EncoderConfig {
                frame_ms: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            enc.params,
            CodecParams {
                frame_samples: 480,
                ..enc.params
            }
        );
        let mut c = clip(9, "ann", 5, &[]);
        c.packets = enc.packets;
        c.samples = enc.samples;
        c.header.codec = enc.params;
        let mut player = Player::new(
            NullSink::instant().recording(),
            "me",
            PlayerConfig::default(),
        );
        player.queue().offer_complete(&c, Instant::now());
        player.pump(Instant::now()).unwrap();
        assert_eq!(player.sink().recorded().len(), 4_800);
    }
}
