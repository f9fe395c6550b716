//! The microphone: a device stays open between clips (its recent audio is the next clip's
//! pre-roll); a `wav:` file is opened afresh for each clip, since it plays from the moment
//! it opens. Also the microphone test: a few seconds of capture, encoded as a clip would be,
//! streamed to the player so you hear yourself as others will.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::state::Meter;
use walkie_media::audio::AudioError;
use walkie_media::audio::open::{CaptureConfig, open_source};
use walkie_media::audio::source::{AudioSource, FRAME_SAMPLES, Pull};
use walkie_media::codec::EncoderConfig;
use walkie_media::codec::opus::Encoder;

/// How long the microphone test records.
pub const MIC_TEST: Duration = Duration::from_secs(3);

/// The microphone, open or not.
#[derive(Default)]
pub struct Microphone {
    spec: Option<String>,
    noise_suppression: bool,
    source: Option<Box<dyn AudioSource>>,
    /// True while the source is out (talking or testing).
    lent: bool,
}

impl Microphone {
    /// Uses `spec` (`None`: the default device) from now on, closing the old one if it changed.
    pub fn configure(&mut self, spec: Option<String>, noise_suppression: bool) {
        if spec != self.spec || noise_suppression != self.noise_suppression {
            self.source = None;
        }
        self.spec = spec;
        self.noise_suppression = noise_suppression;
    }

    fn is_file(&self) -> bool {
        self.spec.as_deref().is_some_and(|s| s.starts_with("wav:"))
    }

    fn open(&self) -> Result<Box<dyn AudioSource>, AudioError> {
        let cfg = CaptureConfig {
            noise_suppression: self.noise_suppression,
            ..CaptureConfig::default()
        };
        open_source(self.spec.as_deref(), cfg)
    }

    /// Opens a device now (not a file), so the first clip has its pre-roll.
    pub fn warm_up(&mut self) -> Result<(), AudioError> {
        if self.source.is_none() && !self.lent && !self.is_file() {
            self.source = Some(self.open()?);
        }
        Ok(())
    }

    /// Lends the source out for a clip or a test.
    pub fn take(&mut self) -> Result<Box<dyn AudioSource>, AudioError> {
        let source = match self.source.take() {
            Some(s) if !self.is_file() => s,
            _ => self.open()?,
        };
        self.lent = true;
        Ok(source)
    }

    /// Takes the source back (`None` if it was lost); a file is not kept.
    pub fn give_back(&mut self, source: Option<Box<dyn AudioSource>>) {
        self.lent = false;
        if !self.is_file() {
            self.source = source;
        }
    }

    /// True while the source is out.
    pub fn is_lent(&self) -> bool {
        self.lent
    }
}

/// What the microphone test thread reports.
pub enum MicMsg {
    /// The next encoded packet.
    Packet(Vec<u8>),
    /// Done: the decoded length in 48 kHz samples, the source, and an error if it failed.
    Done(u64, Box<dyn AudioSource>, Option<String>),
}

/// Records [`MIC_TEST`] from `source` on a thread, sending packets as they are encoded.
pub fn spawn_test(
    mut source: Box<dyn AudioSource>,
    encoder: &EncoderConfig,
    meter: Arc<Meter>,
    tx: mpsc::UnboundedSender<MicMsg>,
) -> std::io::Result<()> {
    let encoder = Encoder::new(encoder);
    std::thread::Builder::new()
        .name("walkie-mic-test".into())
        .spawn(move || {
            let mut encoder = match encoder {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(MicMsg::Done(0, source, Some(e.to_string())));
                    return;
                }
            };
            source.start_clip(Duration::ZERO);
            let started = Instant::now();
            let mut frames = 0u64;
            let mut failure = None;
            while started.elapsed() < MIC_TEST {
                match source.next_frame(Duration::from_millis(100)) {
                    Ok(Pull::Frame(f)) => {
                        meter.set(f.rms(), Duration::from_millis(frames * 20));
                        match encoder.encode(&f.samples) {
                            Ok(p) => {
                                frames += 1;
                                if tx.send(MicMsg::Packet(p)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                failure = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    Ok(Pull::Timeout) => {}
                    Ok(Pull::Ended) => break,
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            let samples =
                (frames * FRAME_SAMPLES as u64).saturating_sub(u64::from(encoder.pre_skip()));
            let _ = tx.send(MicMsg::Done(samples, source, failure));
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_opened_for_each_clip_and_the_test_streams_packets() {
        let wav =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/hello-crew.wav");
        let mut mic = Microphone::default();
        mic.configure(Some(format!("wav:{}", wav.display())), false);
        mic.warm_up().expect("nothing to open for a file");
        let source = mic.take().expect("opens the file");
        assert!(mic.is_lent());
        mic.give_back(Some(source));
        assert!(!mic.is_lent());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = Arc::new(Meter::default());
        spawn_test(
            mic.take().expect("opens again"),
            &EncoderConfig::default(),
            meter.clone(),
            tx,
        )
        .expect("thread");
        let mut packets = 0;
        loop {
            match rx.blocking_recv().expect("the test reports") {
                MicMsg::Packet(_) => packets += 1,
                MicMsg::Done(samples, _, failure) => {
                    assert_eq!(failure, None);
                    assert!(samples > 0);
                    break;
                }
            }
        }
        assert!(packets >= 100, "{packets} packets in 3 s");
        assert!(meter.level() >= 0.0 && meter.elapsed() > Duration::from_secs(2));
    }
}
