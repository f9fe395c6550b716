//! A WAV file (or any 48 kHz mono buffer) as an audio source: its 20 ms frames in real time,
//! like a microphone, or as fast as the caller takes them; then the end.

use std::path::Path;
use std::time::Duration;

use super::pacer::Pacer;
use super::source::{AudioSource, FRAME_SAMPLES, Frame, Pull, rms};
use super::{AudioError, load_wav_48k_mono};

/// Frames of a recording, the last one zero-padded.
#[derive(Clone, Debug)]
pub struct WavSource {
    pcm: Vec<f32>,
    pacer: Pacer,
    level: f32,
}

impl WavSource {
    /// Reads a WAV file (any supported rate, mono or stereo) and serves it at 48 kHz mono.
    pub fn open(path: &Path, realtime: bool) -> Result<WavSource, AudioError> {
        Ok(WavSource::from_pcm(load_wav_48k_mono(path)?, realtime))
    }

    /// Serves 48 kHz mono samples.
    pub fn from_pcm(pcm: Vec<f32>, realtime: bool) -> WavSource {
        WavSource {
            pcm,
            pacer: Pacer::new(realtime),
            level: 0.0,
        }
    }

    /// Number of frames the source holds.
    pub fn frames(&self) -> u64 {
        self.pcm.len().div_ceil(FRAME_SAMPLES) as u64
    }
}

impl AudioSource for WavSource {
    fn next_frame(&mut self, timeout: Duration) -> Result<Pull, AudioError> {
        let Some(index) = self.pacer.wait_next(timeout) else {
            return Ok(Pull::Timeout);
        };
        let start = usize::try_from(index)
            .unwrap_or(usize::MAX)
            .saturating_mul(FRAME_SAMPLES);
        if start >= self.pcm.len() {
            return Ok(Pull::Ended);
        }
        let mut samples = self.pcm[start..(start + FRAME_SAMPLES).min(self.pcm.len())].to_vec();
        samples.resize(FRAME_SAMPLES, 0.0);
        self.level = rms(&samples);
        Ok(Pull::Frame(Frame {
            index,
            samples,
            captured_at: self.pacer.captured_at(index),
        }))
    }

    fn start_clip(&mut self, preroll: Duration) {
        self.pacer.start_clip(preroll);
    }

    fn level(&self) -> f32 {
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_every_frame_then_ends() {
        let pcm: Vec<f32> = (0..2_000).map(|i| i as f32 / 2_000.0).collect();
        let mut src = WavSource::from_pcm(pcm.clone(), false);
        assert_eq!(src.frames(), 3);
        let mut got = Vec::new();
        while let Pull::Frame(f) = src.next_frame(Duration::ZERO).unwrap() {
            assert_eq!(f.index as usize, got.len() / FRAME_SAMPLES);
            got.extend(f.samples);
        }
        assert_eq!(got.len(), 3 * FRAME_SAMPLES);
        assert_eq!(&got[..2_000], &pcm[..]);
        assert!(got[2_000..].iter().all(|&s| s == 0.0));
        assert_eq!(src.next_frame(Duration::ZERO).unwrap(), Pull::Ended);
    }

    #[test]
    fn reads_a_sample_file_and_reports_its_level() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/hello-crew.wav");
        let mut src = WavSource::open(&path, false).unwrap();
        assert!(src.frames() > 300);
        let mut loudest = 0.0f32;
        while let Pull::Frame(_) = src.next_frame(Duration::ZERO).unwrap() {
            loudest = loudest.max(src.level());
        }
        assert!(loudest > 0.05, "{loudest}");
    }
}
