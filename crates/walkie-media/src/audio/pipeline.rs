//! The capture pipeline between the device ring and the encoder, without threads or devices:
//! interleaved samples at the device rate in, 20 ms frames of 48 kHz mono out, each stamped
//! with when its last sample was captured.
//!
//! Steps: mix to mono (average), resample to 48 kHz ([`StreamResampler`]), optionally remove
//! noise ([`Denoiser`]), cut 960-sample frames. Every step compensates its own delay, so
//! output sample `j` is input sample `j * rate / 48000` and the timestamps stay exact.

use std::time::{Duration, Instant};

use super::AudioError;
use super::denoise::Denoiser;
use super::frames::Framer;
use super::source::{FRAME_SAMPLES, Frame, RATE};
use super::stream_resample::StreamResampler;

/// Device audio in, 48 kHz mono frames out.
pub struct CapturePipeline {
    channels: usize,
    rate: u32,
    resampler: StreamResampler,
    denoiser: Option<Denoiser>,
    framer: Framer,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    cleaned: Vec<f32>,
    /// 48 kHz samples handed out in frames so far.
    emitted: u64,
    next_index: u64,
}

impl CapturePipeline {
    /// A pipeline for a device delivering `channels` interleaved channels at `rate` Hz.
    pub fn new(
        rate: u32,
        channels: u16,
        noise_suppression: bool,
    ) -> Result<CapturePipeline, AudioError> {
        if channels == 0 {
            return Err(AudioError::Unsupported {
                name: "capture".into(),
                reason: "the device has no channels".into(),
            });
        }
        Ok(CapturePipeline {
            channels: usize::from(channels),
            rate,
            resampler: StreamResampler::new(rate, RATE)?,
            denoiser: noise_suppression.then(Denoiser::new),
            framer: Framer::new(FRAME_SAMPLES),
            mono: Vec::new(),
            resampled: Vec::new(),
            cleaned: Vec::new(),
            emitted: 0,
            next_index: 0,
        })
    }

    /// Processes interleaved samples (a trailing partial frame is dropped). `clock` is the
    /// device's latest `(frames delivered, when the newest of them was captured)`; without
    /// it frames are stamped with the current time. Calls `emit` for every finished frame.
    pub fn push(
        &mut self,
        interleaved: &[f32],
        clock: Option<(u64, Instant)>,
        mut emit: impl FnMut(Frame),
    ) -> Result<(), AudioError> {
        self.mono.clear();
        let scale = 1.0 / self.channels as f32;
        self.mono.extend(
            interleaved
                .chunks_exact(self.channels)
                .map(|f| f.iter().sum::<f32>() * scale),
        );
        self.resampled.clear();
        self.resampler.process(&self.mono, &mut self.resampled)?;
        let out = match &mut self.denoiser {
            Some(d) => {
                self.cleaned.clear();
                d.process(&self.resampled, &mut self.cleaned);
                &self.cleaned
            }
            None => &self.resampled,
        };
        self.framer.push(out);
        while let Some(samples) = self.framer.pop() {
            self.emitted += FRAME_SAMPLES as u64;
            let captured_at = stamp_of(self.emitted, self.rate, clock);
            emit(Frame {
                index: self.next_index,
                samples: samples.to_vec(),
                captured_at,
            });
            self.next_index += 1;
        }
        Ok(())
    }
}

/// When the 48 kHz sample count `end` (exclusive) was reached on the device, from the
/// device's latest `(frames, instant)` stamp.
fn stamp_of(end: u64, rate: u32, clock: Option<(u64, Instant)>) -> Instant {
    let Some((frames, at)) = clock else {
        return Instant::now();
    };
    let device_end =
        u64::try_from(u128::from(end) * u128::from(rate) / u128::from(RATE)).unwrap_or(u64::MAX);
    let behind = frames.saturating_sub(device_end);
    let ago = Duration::from_nanos(
        u64::try_from(u128::from(behind) * 1_000_000_000 / u128::from(rate.max(1)))
            .unwrap_or(u64::MAX),
    );
    at.checked_sub(ago).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_44k1_becomes_aligned_48k_mono_frames() {
        let rate = 44_100;
        let mut p = CapturePipeline::new(rate, 2, false).unwrap();
        // One second of stereo: a click at 0.25 s in the left channel only.
        let mut input = vec![0.0f32; 2 * rate as usize];
        input[2 * 11_025] = 1.0;
        let mut frames = Vec::new();
        for piece in input.chunks(2 * 441) {
            p.push(piece, None, |f| frames.push(f)).unwrap();
        }
        assert!(frames.len() >= 48, "{} frames", frames.len());
        assert!(
            frames
                .iter()
                .enumerate()
                .all(|(i, f)| f.index == i as u64 && f.samples.len() == FRAME_SAMPLES)
        );
        let out: Vec<f32> = frames
            .iter()
            .flat_map(|f| f.samples.iter().copied())
            .collect();
        let peak = (0..out.len())
            .max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs()))
            .unwrap();
        assert!(peak.abs_diff(12_000) <= 1, "click at {peak}");
        assert!(
            (out[peak] - 0.5 * 48_000.0 / 44_100.0).abs() < 0.15,
            "mixed level {}",
            out[peak]
        );
    }

    #[test]
    fn frames_are_stamped_from_the_device_clock() {
        let mut p = CapturePipeline::new(48_000, 1, false).unwrap();
        let t = Instant::now();
        let mut frames = Vec::new();
        // The device has delivered 2000 frames, the newest captured at t.
        p.push(&[0.0; 2_000], Some((2_000, t)), |f| frames.push(f))
            .unwrap();
        assert_eq!(frames.len(), 2);
        // Frame 0 ends at sample 960: 1040 samples (21.67 ms) before the newest.
        assert_eq!(
            t - frames[0].captured_at,
            Duration::from_nanos(1_040 * 1_000_000_000 / 48_000)
        );
        assert_eq!(
            t - frames[1].captured_at,
            Duration::from_nanos(80 * 1_000_000_000 / 48_000)
        );
    }

    #[test]
    fn noise_suppression_keeps_the_frame_count_flowing() {
        let mut p = CapturePipeline::new(16_000, 1, true).unwrap();
        let mut n = 0;
        for _ in 0..50 {
            p.push(&[0.01; 320], None, |_| n += 1).unwrap();
        }
        assert!((47..=50).contains(&n), "{n} frames from 1 s");
        assert!(CapturePipeline::new(16_000, 0, true).is_err());
    }
}
