//! The null backends: a source of silence and a sink that discards (or records) audio, each
//! either paced like a real device or as fast as the caller goes.

use std::time::{Duration, Instant};

use super::AudioError;
use super::pacer::Pacer;
use super::sink::{AudioSink, PlayedUpTo};
use super::source::{AudioSource, FRAME_SAMPLES, Frame, Pull, RATE};

/// Audio a paced sink buffers before `play` blocks.
const SINK_BUFFER: Duration = Duration::from_secs(1);

/// Endless silence, one frame every 20 ms (or at once).
#[derive(Clone, Debug)]
pub struct NullSource {
    pacer: Pacer,
}

impl NullSource {
    /// A silent source, paced like a microphone when `realtime`.
    pub fn new(realtime: bool) -> NullSource {
        NullSource {
            pacer: Pacer::new(realtime),
        }
    }
}

impl AudioSource for NullSource {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError> {
        Ok(match self.pacer.wait_next(timeout) {
            Some(index) => Pull::Frame(Frame {
                index,
                samples: vec![0.0; FRAME_SAMPLES],
                captured_at: self.pacer.captured_at(index),
            }),
            None => Pull::Timeout,
        })
    }

    fn start_clip(&mut self, preroll: Duration) {
        self.pacer.start_clip(preroll);
    }

    fn level(&self) -> f32 {
        0.0
    }
}

/// A sink that plays nothing: in real time (audio drains at 48 kHz, `play` blocks past a
/// second of backlog) or instantly; optionally keeping everything it was given.
#[derive(Clone, Debug)]
pub struct NullSink {
    realtime: bool,
    busy_until: Option<Instant>,
    written: u64,
    recording: Option<Vec<f32>>,
    /// When the first sample written was due to come out (a paced sink).
    first_out: Option<Instant>,
}

/// Duration of `n` samples at 48 kHz.
fn samples_duration(n: u64) -> Duration {
    Duration::from_nanos(n.saturating_mul(1_000_000_000) / u64::from(RATE))
}

impl NullSink {
    /// A sink paced like a speaker.
    pub fn realtime() -> NullSink {
        NullSink {
            realtime: true,
            busy_until: None,
            written: 0,
            recording: None,
            first_out: None,
        }
    }

    /// A sink that takes everything at once.
    pub fn instant() -> NullSink {
        NullSink {
            realtime: false,
            busy_until: None,
            written: 0,
            recording: None,
            first_out: None,
        }
    }

    /// Keeps a copy of everything played, for [`NullSink::recorded`].
    pub fn recording(mut self) -> NullSink {
        self.recording = Some(Vec::new());
        self
    }

    /// Everything played so far (empty unless made with [`NullSink::recording`]).
    pub fn recorded(&self) -> &[f32] {
        self.recording.as_deref().unwrap_or(&[])
    }

    /// When the first sample written came out of a paced sink (`None` before any, or for
    /// an instant sink): the time origin of [`NullSink::recorded`] while nothing underran.
    pub fn first_out(&self) -> Option<Instant> {
        self.first_out
    }

    fn queued(&self, now: Instant) -> Duration {
        self.busy_until
            .map_or(Duration::ZERO, |b| b.saturating_duration_since(now))
    }
}

impl AudioSink for NullSink {
    fn play(&mut self, pcm48: &[f32]) -> Result<(), AudioError> {
        if let Some(rec) = &mut self.recording {
            rec.extend_from_slice(pcm48);
        }
        self.written += pcm48.len() as u64;
        if self.realtime {
            let now = Instant::now();
            let excess = self.queued(now).saturating_sub(SINK_BUFFER);
            if !excess.is_zero() {
                std::thread::sleep(excess);
            }
            let from = self.busy_until.map_or(now, |b| b.max(now));
            self.first_out.get_or_insert(from);
            self.busy_until = Some(from + samples_duration(pcm48.len() as u64));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), AudioError> {
        Ok(())
    }

    fn queued_ms(&self) -> u32 {
        u32::try_from(self.queued(Instant::now()).as_millis()).unwrap_or(u32::MAX)
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn played_up_to(&self) -> Option<PlayedUpTo> {
        if self.written == 0 {
            return None;
        }
        let now = Instant::now();
        let queued = self.queued(now).as_nanos() * u128::from(RATE) / 1_000_000_000;
        let samples = self
            .written
            .saturating_sub(u64::try_from(queued).unwrap_or(u64::MAX));
        Some(PlayedUpTo {
            samples,
            handed_at: now,
            audible_at: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_silence_arrives_every_20_ms() {
        let t0 = Instant::now();
        let mut src = NullSource::new(true);
        let mut last = None;
        for want in 0..3 {
            match src.next_frame(Duration::from_secs(1)).unwrap() {
                Pull::Frame(f) => {
                    assert_eq!(f.index, want);
                    assert!(f.samples.iter().all(|&s| s == 0.0));
                    last = Some(f.captured_at);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(last.unwrap() >= t0 + Duration::from_millis(60));
        assert_eq!(src.next_frame(Duration::ZERO).unwrap(), Pull::Timeout);
        assert_eq!(src.level(), 0.0);
    }

    #[test]
    fn sinks_count_record_and_drain() {
        let mut fast = NullSink::instant().recording();
        fast.play(&[0.5; 960]).unwrap();
        assert_eq!(
            (fast.written(), fast.queued_ms(), fast.recorded().len()),
            (960, 0, 960)
        );
        assert_eq!(fast.played_up_to().unwrap().samples, 960);
        let mut slow = NullSink::realtime();
        assert!(slow.played_up_to().is_none());
        let before = Instant::now();
        slow.play(&[0.0; 4_800]).unwrap();
        assert!(
            slow.first_out()
                .is_some_and(|t| t >= before && t <= Instant::now())
        );
        assert_eq!(
            fast.first_out(),
            None,
            "an instant sink plays at no set time"
        );
        let q = slow.queued_ms();
        assert!((90..=100).contains(&q), "{q}");
        assert!(slow.played_up_to().unwrap().samples < 4_800);
        assert!(slow.wait_drained(Duration::from_secs(2)).unwrap());
        assert!(slow.played_up_to().unwrap().samples + 48 >= 4_800);
    }
}
