//! Live push-to-talk: frames from an audio source stream to the relay as one clip while the
//! key is held, packet by packet as the encoder makes them; on release a short tail is kept
//! so the last word is not clipped, the clip is written to the outbox, and the end marker
//! asks the relay to store it. Cancelling abandons the clip everywhere.
//!
//! The source is read on a thread of its own (its `next_frame` blocks); the async side only
//! forwards packets. The source is handed back at the end so the device stays open between
//! clips and the next press loses no first syllable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use walkie_media::audio::source::{AudioSource, FRAME_SAMPLES, Pull};
use walkie_media::codec::opus::Encoder;
use walkie_media::codec::{EncodedClip, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, Target, now_ms};
use walkie_proto::live::Resilience;

use crate::outbox::Outbox;
use crate::{Client, ClientError};

/// Settings of a live clip.
#[derive(Clone, Debug)]
pub struct TalkOptions {
    /// Channel or user.
    pub to: Target,
    /// Encoder settings.
    pub encoder: EncoderConfig,
    /// Audio from just before the key went down that is included (default 100 ms).
    pub preroll: Duration,
    /// Audio kept after the key is released (default 200 ms).
    pub tail: Duration,
}

impl TalkOptions {
    /// Defaults for `to`.
    pub fn new(to: Target) -> Self {
        Self {
            to,
            encoder: EncoderConfig::default(),
            preroll: Duration::from_millis(100),
            tail: Duration::from_millis(200),
        }
    }
}

const TALKING: u8 = 0;
const RELEASED: u8 = 1;
const CANCELLED: u8 = 2;

/// Controls a clip in progress and shows its progress (for a level meter and a clock).
#[derive(Debug, Default)]
pub struct TalkControl {
    state: AtomicU8,
    released_at_ms: AtomicU64,
    frames: AtomicU64,
    level: AtomicU32,
    /// The loss the encoder is tuned to, in percent (0: in-band FEC off).
    expected_loss: AtomicU8,
}

impl TalkControl {
    /// A control for a new clip.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The key went up: keep the tail, then send.
    pub fn release(&self) {
        self.released_at_ms
            .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::SeqCst);
        let _ = self
            .state
            .compare_exchange(TALKING, RELEASED, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Abandon the clip: nothing is stored or played.
    pub fn cancel(&self) {
        self.state.store(CANCELLED, Ordering::SeqCst);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::SeqCst) == CANCELLED
    }

    /// Audio captured so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.frames.load(Ordering::Relaxed) * 20)
    }

    /// RMS level (0..1) of the latest frame.
    pub fn level(&self) -> f32 {
        f32::from_bits(self.level.load(Ordering::Relaxed))
    }

    /// Tunes the encoder to a path that loses `percent` of its packets, from the next frame.
    pub fn expect_loss(&self, percent: u8) {
        self.expected_loss.store(percent, Ordering::Relaxed);
    }

    /// The loss the encoder is tuned to, in percent.
    pub fn expected_loss(&self) -> u8 {
        self.expected_loss.load(Ordering::Relaxed)
    }
}

/// How a clip ended.
#[derive(Debug)]
pub enum TalkOutcome {
    /// Stored by the relay.
    Stored {
        /// The clip.
        id: ClipId,
        /// Its storage sequence number.
        seq: u64,
        /// Its length.
        duration: Duration,
        /// What was encoded and sent, packet by packet.
        encoded: EncodedClip,
    },
    /// The live upload failed after the clip was complete; it waits in the outbox.
    Queued {
        /// The clip.
        id: ClipId,
        /// Why it could not be sent now.
        reason: ClientError,
    },
    /// Cancelled: nothing was stored.
    Cancelled,
}

enum Produced {
    Packet(Vec<u8>),
    Done { samples: u64 },
    Failed(String),
}

/// Streams one live clip from `source` until `control` is released (or cancelled), or
/// until `max` of audio when given. Returns the outcome and the source, still open. With no
/// `client` (the relay is away) the clip is recorded all the same and waits in the outbox
/// ([`TalkOutcome::Queued`]).
pub async fn talk(
    client: Option<&Client>,
    outbox: &Outbox,
    source: Box<dyn AudioSource>,
    opts: &TalkOptions,
    control: Arc<TalkControl>,
    max: Option<Duration>,
) -> Result<(TalkOutcome, Box<dyn AudioSource>), ClientError> {
    let encoder = Encoder::new(&opts.encoder)?;
    let header = ClipHeader {
        id: ClipId::random(),
        to: opts.to.clone(),
        started_at_ms: now_ms(),
        codec: encoder.params(),
    };
    let (tx, mut rx) = mpsc::channel::<Produced>(64);
    let producer = {
        let (control, preroll, tail) = (control.clone(), opts.preroll, opts.tail);
        std::thread::Builder::new()
            .name("walkie-talk".into())
            .spawn(move || produce(source, encoder, control, preroll, tail, max, tx))
            .map_err(|e| ClientError::Config(format!("cannot start the capture thread: {e}")))?
    };
    let (mut upload, mut live_error) = match client {
        Some(c) => (Some(c.start_clip(&header).await?), None),
        None => (
            None,
            Some(ClientError::Closed("not connected to the relay".into())),
        ),
    };
    let mut packets = Vec::new();
    let mut samples = None;
    while let Some(item) = rx.recv().await {
        match item {
            Produced::Packet(p) => {
                if let Some(up) = upload.as_mut().filter(|up| up.resilient()) {
                    // The encoder follows the loss left after the datagrams' repeats: on the
                    // way to the relay (measured here) and on to the listeners (the relay's).
                    let fec =
                        Resilience::fec_percent(up.loss_permille(), up.listeners_loss_permille());
                    control.expect_loss(fec);
                }
                if let Some(up) = upload.as_mut()
                    && let Err(e) = up.packet(p.clone()).await
                {
                    if matches!(e, ClientError::Refused(_)) {
                        // Refused (floor taken, not a member): stop capturing at once.
                        control.cancel();
                        live_error = Some(e);
                        break;
                    }
                    // A network failure: keep recording; the outbox sends it later.
                    upload = None;
                    live_error = Some(e);
                }
                packets.push(p);
            }
            Produced::Done { samples: n } => samples = Some(n),
            Produced::Failed(message) => {
                control.cancel();
                live_error = Some(ClientError::Config(format!(
                    "the microphone failed: {message}"
                )));
            }
        }
    }
    let source = producer
        .join()
        .map_err(|_| ClientError::Config("the capture thread panicked".into()))?;
    let samples = match (samples, live_error) {
        (_, Some(e @ ClientError::Refused(_))) => {
            if let Some(up) = upload {
                up.cancel();
            }
            return Err(e);
        }
        (Some(n), e) if !control.is_cancelled() && n > 0 => {
            live_error = e;
            n
        }
        (_, e) => {
            if let Some(up) = upload {
                up.cancel();
            }
            return match e {
                Some(e) if !control.is_cancelled() => Err(e),
                _ => Ok((TalkOutcome::Cancelled, source)),
            };
        }
    };
    // Durable before the end marker: if the ack never comes, the outbox resends the clip.
    let clip = EncodedClip {
        params: header.codec,
        packets,
        samples,
    };
    outbox.add(&header, &clip)?;
    let result = match (upload, live_error) {
        (Some(up), None) => up.finish(samples).await,
        (_, Some(e)) => Err(e),
        (None, None) => Err(ClientError::Closed("the live upload stopped".into())),
    };
    let outcome = match result {
        Ok((seq, _)) => {
            outbox.remove(&header.id)?;
            TalkOutcome::Stored {
                id: header.id,
                seq,
                duration: Duration::from_millis((samples + 24) / 48),
                encoded: clip,
            }
        }
        Err(e) if e.is_transient() => TalkOutcome::Queued {
            id: header.id,
            reason: e,
        },
        Err(e) => {
            let _ = outbox.reject(&header.id, &e.to_string());
            return Err(e);
        }
    };
    Ok((outcome, source))
}

/// The capture thread: pulls frames, encodes them, and sends packets until the clip ends.
fn produce(
    mut source: Box<dyn AudioSource>,
    mut encoder: Encoder,
    control: Arc<TalkControl>,
    preroll: Duration,
    tail: Duration,
    max: Option<Duration>,
    tx: mpsc::Sender<Produced>,
) -> Box<dyn AudioSource> {
    source.start_clip(preroll);
    let max_frames = max.map(|m| (m.as_millis() / 20) as u64);
    let started = Instant::now();
    let mut frames = 0u64;
    let mut tail_frames: Option<u64> = None;
    let send = |p: Produced| tx.blocking_send(p).is_ok();
    let mut tuned = 0u8;
    loop {
        let loss = control.expected_loss();
        if loss != tuned && encoder.set_expected_loss(loss).is_ok() {
            tuned = loss;
        }
        match control.state.load(Ordering::SeqCst) {
            CANCELLED => return source,
            RELEASED if tail_frames.is_none() => {
                tail_frames = Some(frames + (tail.as_millis() / 20) as u64)
            }
            _ => {}
        }
        if tail_frames.is_some_and(|t| frames >= t) || max_frames.is_some_and(|m| frames >= m) {
            break;
        }
        let frame = match source.next_frame(Duration::from_millis(100)) {
            Ok(Pull::Frame(f)) => f,
            Ok(Pull::Timeout) if started.elapsed() < Duration::from_secs(5) || frames > 0 => {
                continue;
            }
            Ok(Pull::Timeout) => {
                send(Produced::Failed(
                    "no audio arrived from the input device for 5 s".into(),
                ));
                return source;
            }
            Ok(Pull::Ended) => break,
            Err(e) => {
                send(Produced::Failed(e.to_string()));
                return source;
            }
        };
        control
            .level
            .store(frame.rms().to_bits(), Ordering::Relaxed);
        let packet = match encoder.encode(&frame.samples) {
            Ok(p) => p,
            Err(e) => {
                send(Produced::Failed(e.to_string()));
                return source;
            }
        };
        if !send(Produced::Packet(packet)) {
            return source;
        }
        frames += 1;
        control.frames.store(frames, Ordering::Relaxed);
    }
    // One frame of silence flushes the encoder's lookahead, so the real end decodes fully.
    if frames > 0
        && let Ok(p) = encoder.encode(&[0.0; FRAME_SAMPLES])
    {
        send(Produced::Packet(p));
    }
    send(Produced::Done {
        samples: frames * FRAME_SAMPLES as u64,
    });
    source
}
