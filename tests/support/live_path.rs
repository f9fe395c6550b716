//! One live clip through the impairing proxy, measured: alice talks recorded speech (a
//! `wav:` source, paced in real time) to channel crew through [`ImpairProxy`] (loss, delay
//! and jitter on every datagram, both ways, for her and for bob); bob's client hands what
//! arrives, by stream and as datagrams, to the player (adaptive jitter buffer, in-band FEC,
//! concealment) playing into bob's speaker. The two ends are an [`Ends`]: a WAV file and a
//! paced recording sink ([`WavEnds`]: `tests/lossy.rs`, `benches/lossy.rs`), or the
//! PulseAudio devices (`tests/devices.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use super::impair::{ImpairProxy, Impairment};
use walkie_client::outbox::Outbox;
use walkie_client::talk::{self, TalkControl, TalkOptions, TalkOutcome};
use walkie_client::{Client, ClientConfig, Event};
use walkie_media::audio::null::NullSink;
use walkie_media::audio::open::{CaptureConfig, open_source};
use walkie_media::audio::sink::AudioSink;
use walkie_media::audio::source::AudioSource;
use walkie_media::jitter::JitterStats;
use walkie_media::player::{self, Player, PlayerConfig, PlayerEvent, PlayerInput};
use walkie_proto::clip::Target;
use walkie_proto::received::Via;
use walkie_relay::RelayConfig;

/// How both clients carry live clips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carriage {
    /// Datagrams beside the stream, repeats and in-band FEC (the default).
    Resilient,
    /// The reliable stream only, no FEC ([`Client::connect_stream_only`]): how live audio
    /// travelled before datagrams.
    StreamOnly,
}

impl Carriage {
    async fn connect(self, cfg: &ClientConfig) -> Client {
        match self {
            Carriage::Resilient => Client::connect(cfg).await,
            Carriage::StreamOnly => Client::connect_stream_only(cfg).await,
        }
        .expect("connects through the proxy")
    }
}

/// Where alice's speech comes from and where bob's player puts it out.
pub trait Ends {
    /// Bob's speaker.
    type Sink: AudioSink + Send + 'static;
    /// Opens bob's speaker.
    fn speaker(&mut self) -> Self::Sink;
    /// Opens alice's microphone with the speech going into it; and when the speech's first
    /// sample went in, where that is known (for mouth to ear).
    fn microphone(&mut self) -> (Box<dyn AudioSource>, Option<Instant>);
    /// How much longer than the speech alice keeps talking.
    fn tail(&self) -> Duration {
        Duration::from_millis(200)
    }
    /// What came out of bob's speaker, from within 50 ms before the speech (PESQ aligns
    /// the rest), and when its first sample came out, where that is known.
    fn heard(&mut self, speaker: Self::Sink) -> (Vec<f32>, Option<Instant>);
}

/// A paced WAV file as the microphone, a paced recording null sink as the speaker.
pub struct WavEnds<'a> {
    /// The speech.
    pub wav: &'a Path,
}

impl Ends for WavEnds<'_> {
    type Sink = NullSink;

    fn speaker(&mut self) -> NullSink {
        NullSink::realtime().recording()
    }

    fn microphone(&mut self) -> (Box<dyn AudioSource>, Option<Instant>) {
        // The paced source's clock starts when it opens: sample j of the speech goes into
        // the microphone at `spoken + j / 48 kHz`.
        let spoken = Instant::now();
        let source = open_source(
            Some(&format!("wav:{}", self.wav.display())),
            CaptureConfig::default(),
        )
        .expect("wav source");
        (source, Some(spoken))
    }

    fn heard(&mut self, speaker: NullSink) -> (Vec<f32>, Option<Instant>) {
        (speaker.recorded().to_vec(), speaker.first_out())
    }
}

/// What one talk through the proxy gave.
pub struct Run {
    pub pesq: f32,
    /// The stored clip's PESQ-WB: the codec alone (with whatever FEC the encoder put in).
    pub stored_pesq: f32,
    pub stats: JitterStats,
    /// Packets whose first copy bob got in a datagram, of `packets`.
    pub datagram_first: usize,
    pub packets: usize,
    /// The stored clip's packets are the ones alice's encoder made.
    pub stored_exact: bool,
    /// UDP payload bytes through the proxy, both clients together, each way.
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub seconds: f64,
    /// Mouth to ear, in ms, for each 400 ms window of speech found in bob's audio
    /// ([`mouth_to_ear_ms`]).
    pub mouth_to_ear: Vec<f64>,
}

/// What bob heard: his speaker, the jitter counts, and how many packets' first copy came in
/// a datagram (their own, or repeated in a later one).
pub struct Heard<S> {
    pub speaker: S,
    pub stats: JitterStats,
    pub datagram_first: usize,
}

/// Bob hears one live clip through the player into `speaker`.
pub async fn bob_hears<S: AudioSink + Send + 'static>(mut bob: Client, speaker: S) -> Heard<S> {
    let handle =
        player::spawn(Player::new(speaker, "bob", PlayerConfig::default())).expect("player starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stats = None;
    let mut played = false;
    let mut firsts = std::collections::HashSet::new();
    let mut datagram_first = 0;
    while !played && Instant::now() < deadline {
        while let Ok(ev) = handle.events().try_recv() {
            match ev.expect("playback works") {
                PlayerEvent::LiveStats { stats: s, .. } => stats = Some(s),
                PlayerEvent::Played { .. } => played = true,
                PlayerEvent::Abandoned { id } => panic!("bob's player abandoned {id}"),
                PlayerEvent::Started { .. } => {}
            }
        }
        let Ok(event) = tokio::time::timeout(Duration::from_millis(10), bob.next_event()).await
        else {
            continue;
        };
        match event.expect("bob stays connected") {
            Event::LiveStarted(h) => {
                handle.send(PlayerInput::Offer(h));
            }
            Event::LivePacket(id, p) => {
                if firsts.insert(p.index) && p.via != Via::Stream {
                    datagram_first += 1;
                }
                handle.send(PlayerInput::Packet(id, p));
            }
            Event::Clip(clip) => {
                assert!(clip.header.live, "bob hears the clip live");
                handle.send(PlayerInput::End(clip.header.id, clip.samples));
                bob.ack(clip.header.id).await.expect("acks");
            }
            _ => {}
        }
    }
    assert!(played, "bob's player finished the clip within 60 s");
    let (sink, _) = handle.finish();
    bob.close().await;
    Heard {
        speaker: sink.expect("the player hands its sink back"),
        stats: stats.expect("a live clip reports its jitter counts"),
        datagram_first,
    }
}

/// Alice talks the speech at `wav` to crew through a proxy impairing both ways with `path`;
/// with `rebind`, her client moves to a new socket that far into the clip.
pub async fn talk_through(
    dir: &Path,
    path: Impairment,
    seed: u64,
    rebind: Option<Duration>,
    wav: &Path,
    speech: &[f32],
    carriage: Carriage,
) -> Run {
    talk_between(
        &mut WavEnds { wav },
        dir,
        path,
        seed,
        rebind,
        speech,
        carriage,
    )
    .await
}

/// [`talk_through`] between any [`Ends`]: `speech` is what goes into the microphone.
pub async fn talk_between<E: Ends>(
    ends: &mut E,
    dir: &Path,
    path: Impairment,
    seed: u64,
    rebind: Option<Duration>,
    speech: &[f32],
    carriage: Carriage,
) -> Run {
    let relay = super::start_relay(&dir.join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    let bob = relay.add_user("bob");
    relay.add_channel("crew", &["alice", "bob"]);
    let proxy = ImpairProxy::start(relay.handle.addr, path, path, seed).await;
    let via = |c: ClientConfig| ClientConfig {
        relay: proxy.addr.to_string(),
        ..c
    };
    let bob_c = carriage.connect(&via(bob)).await;
    let listening = tokio::spawn(bob_hears(bob_c, ends.speaker()));
    let alice_c = carriage.connect(&via(alice)).await;
    let outbox = Outbox::open(&dir.join("outbox")).expect("outbox");
    let (source, spoken) = ends.microphone();
    let opts = TalkOptions {
        preroll: Duration::ZERO,
        tail: Duration::ZERO,
        ..TalkOptions::new(Target::Channel("crew".into()))
    };
    let length = Duration::from_secs_f64(speech.len() as f64 / 48_000.0) + ends.tail();
    let started = Instant::now();
    let talking = talk::talk(
        Some(&alice_c),
        &outbox,
        source,
        &opts,
        TalkControl::new(),
        Some(length),
    );
    let moving = async {
        if let Some(after) = rebind {
            tokio::time::sleep(after).await;
            let before = proxy.clients();
            alice_c.rebind().expect("alice moves to a new socket");
            Some(before)
        } else {
            None
        }
    };
    let (talked, before) =
        super::within(90, "alice's talk", async { tokio::join!(talking, moving) }).await;
    let (outcome, _source) = talked.expect("the clip is sent");
    let TalkOutcome::Stored { id, encoded, .. } = outcome else {
        panic!("the clip was not stored: {outcome:?}")
    };
    let seconds = started.elapsed().as_secs_f64();
    if let Some(before) = before {
        assert!(
            proxy.clients() > before,
            "alice's datagrams came from a new address after the rebind"
        );
    }
    let (meta, ogg) = alice_c.fetch(id).await.expect("the stored clip is fetched");
    let stored = walkie_proto::ogg::read_ogg(&ogg).expect("stored Ogg reads");
    let stored_exact = stored.packets == encoded.packets && meta.id == id;
    let stored_pcm =
        walkie_media::codec::decode_packets(&stored.params, &stored.packets, stored.samples)
            .expect("the stored clip decodes");
    let stored_pesq = super::pesq_wb(speech, &stored_pcm);
    let heard = super::within(90, "bob's listening", listening)
        .await
        .expect("bob's task");
    alice_c.close().await;
    let (audio, first_out) = ends.heard(heard.speaker);
    let pesq = super::pesq_wb(speech, &audio);
    let mouth_to_ear = match (spoken, first_out) {
        (Some(spoken), Some(out)) => {
            let offset = out.saturating_duration_since(spoken).as_secs_f64() * 1e3;
            mouth_to_ear_ms(speech, &audio, offset)
        }
        _ => Vec::new(),
    };
    let (stats, datagram_first) = (heard.stats, heard.datagram_first);
    let packets = encoded.packets.len();
    let (up_bytes, down_bytes) = (proxy.up().get().2, proxy.down().get().2);
    Run {
        pesq,
        stored_pesq,
        stats,
        datagram_first,
        packets,
        stored_exact,
        up_bytes,
        down_bytes,
        seconds,
        mouth_to_ear,
    }
}

/// Envelope resolution of [`mouth_to_ear_ms`]: 1 ms.
const BLOCK: usize = 48;
/// Window of speech located in the recording.
const WINDOW_BLOCKS: usize = 400;
/// Windows start this far apart.
const HOP_BLOCKS: usize = 200;

/// Mean absolute level per 1 ms block.
fn envelope(x: &[f32]) -> Vec<f32> {
    x.chunks(BLOCK)
        .map(|c| c.iter().map(|s| s.abs()).sum::<f32>() / c.len() as f32)
        .collect()
}

/// Mouth to ear, in ms, for each 400 ms window of `speech` (every 200 ms) that carries
/// speech: where the window's envelope best matches `heard` (normalised correlation over
/// 0-1 s of delay, at 1 ms), plus `offset_ms`, how much later the first sample of `heard`
/// came out than the first of `speech` went in. Windows that match nowhere well (correlation
/// under 0.7: concealed or dropped audio) are left out.
pub fn mouth_to_ear_ms(speech: &[f32], heard: &[f32], offset_ms: f64) -> Vec<f64> {
    let (s, h) = (envelope(speech), envelope(heard));
    let loudest = s
        .windows(WINDOW_BLOCKS)
        .step_by(HOP_BLOCKS)
        .map(|w| w.iter().sum::<f32>())
        .fold(0f32, f32::max);
    let offset = offset_ms.round() as isize;
    let mut out = Vec::new();
    for w0 in (0..s.len().saturating_sub(WINDOW_BLOCKS - 1)).step_by(HOP_BLOCKS) {
        let w = &s[w0..w0 + WINDOW_BLOCKS];
        if w.iter().sum::<f32>() < 0.25 * loudest {
            continue;
        }
        let (wm, wn) = centred(w);
        let mut best = (f64::MIN, 0isize);
        // Speech block j goes in at `spoken + j` ms and, d ms later, comes out as heard
        // block `j + d - offset`.
        let from = w0 as isize - offset;
        for d in 0..=1000isize {
            let start = from + d;
            if start < 0 || start as usize + WINDOW_BLOCKS > h.len() {
                continue;
            }
            let x = &h[start as usize..start as usize + WINDOW_BLOCKS];
            let (xm, xn) = centred(x);
            if xn == 0.0 || wn == 0.0 {
                continue;
            }
            let dot: f64 = w
                .iter()
                .zip(x)
                .map(|(a, b)| (f64::from(*a) - wm) * (f64::from(*b) - xm))
                .sum();
            let r = dot / (wn * xn);
            if r > best.0 {
                best = (r, d);
            }
        }
        if best.0 >= 0.7 {
            out.push(best.1 as f64);
        }
    }
    out
}

/// Mean and centred norm of `x`.
fn centred(x: &[f32]) -> (f64, f64) {
    let mean = x.iter().map(|v| f64::from(*v)).sum::<f64>() / x.len() as f64;
    let norm = x
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        .sqrt();
    (mean, norm)
}
