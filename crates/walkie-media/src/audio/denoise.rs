//! Noise suppression for 48 kHz mono speech with nnnoiseless (a Rust port of RNNoise).
//!
//! RNNoise works on 480-sample (10 ms) blocks of 16-bit-scaled samples and delays its output
//! by one block. [`Denoiser`] takes samples in any amount, scales them to and from the i16
//! range, and drops the first block of output so that its output lines up with its input.

use nnnoiseless::DenoiseState;

/// Samples per RNNoise block (10 ms at 48 kHz).
pub const BLOCK: usize = DenoiseState::FRAME_SIZE;
/// RNNoise's delay in samples, dropped from the start of the output.
const DELAY: usize = BLOCK;

/// A streaming noise suppressor for 48 kHz mono audio in -1..1.
pub struct Denoiser {
    state: Box<DenoiseState<'static>>,
    pending: Vec<f32>,
    scaled: [f32; BLOCK],
    cleaned: [f32; BLOCK],
    skip: usize,
}

impl Denoiser {
    /// A denoiser with RNNoise's built-in model.
    pub fn new() -> Denoiser {
        Denoiser {
            state: DenoiseState::new(),
            pending: Vec::with_capacity(BLOCK),
            scaled: [0.0; BLOCK],
            cleaned: [0.0; BLOCK],
            skip: DELAY,
        }
    }

    /// Denoises `input`, appending every finished sample to `out` (whole 10 ms blocks).
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        let mut rest = input;
        while !rest.is_empty() {
            let take = (BLOCK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == BLOCK {
                for (d, s) in self.scaled.iter_mut().zip(&self.pending) {
                    *d = s * 32_768.0;
                }
                self.pending.clear();
                self.state.process_frame(&mut self.cleaned, &self.scaled);
                let drop = self.skip.min(BLOCK);
                self.skip -= drop;
                out.extend(self.cleaned[drop..].iter().map(|s| s / 32_768.0));
            }
        }
    }

    /// Input samples waiting for their block to fill.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

impl Default for Denoiser {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator for test noise.
    fn noise(len: usize, amp: f32, seed: u32) -> Vec<f32> {
        let mut x = seed.max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    fn speech() -> Vec<f32> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/hello-crew.wav");
        crate::audio::load_wav_48k_mono(&path).unwrap()
    }

    #[test]
    fn removes_steady_noise_and_keeps_speech_aligned() {
        // Half a second of silence, then speech.
        let mut clean = vec![0.0; 24_000];
        clean.extend(speech());
        // Fan-like noise: white noise through a one-pole low-pass.
        let mut y = 0.0;
        let hiss: Vec<f32> = noise(clean.len(), 0.02, 7)
            .into_iter()
            .map(|x| {
                y = 0.9 * y + x;
                y
            })
            .collect();
        let noisy: Vec<f32> = clean.iter().zip(&hiss).map(|(a, b)| a + b).collect();
        let mut d = Denoiser::new();
        let mut out = Vec::new();
        for piece in noisy.chunks(333) {
            d.process(piece, &mut out);
        }
        assert_eq!(out.len() + d.pending() + DELAY, noisy.len());
        // The noise-only stretch.
        let lead = 24_000;
        let skip = 960; // RNNoise's own fade-in
        let before = rms(&noisy[skip..lead]);
        let after = rms(&out[skip..lead]);
        assert!(after < before / 4.0, "noise rms {before} -> {after}");
        // Speech stays, at the same place: the output correlates best with no lag.
        let n = out.len() - 96;
        let corr = |lag: isize| {
            (48..n)
                .map(|i| out[i] * clean[(i as isize + lag) as usize])
                .sum::<f32>()
        };
        let at0 = corr(0);
        for lag in [-48, -24, -4, 4, 24, 48] {
            assert!(at0 > corr(lag), "lag {lag} correlates better than 0");
        }
        let c = at0 / (rms(&out[48..n]) * rms(&clean[48..n]) * (n - 48) as f32);
        assert!(c > 0.8, "correlation with the clean speech {c}");
    }
}
