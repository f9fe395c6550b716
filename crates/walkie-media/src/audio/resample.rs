//! Whole-buffer resampling of mono audio to and from 48 kHz with rubato's FFT resampler, delay compensated.
//!
//! The output has exactly `round(len * to / from)` samples and is aligned with the input:
//! the resampler's delay is dropped from the front and the tail is flushed with zeros.

use rubato::{FftFixedIn, Resampler};

use super::AudioError;

/// The rate Opus runs at in walkie.
pub const RATE_48K: u32 = 48_000;
/// Lowest rate the resampler accepts, in Hz.
pub const MIN_RESAMPLE_RATE: u32 = 1_000;
/// Highest rate the resampler accepts, in Hz.
pub const MAX_RESAMPLE_RATE: u32 = 384_000;
/// Rough input frames per resampler call; also sets the FFT size and so the filter's sharpness.
const CHUNK: usize = 1024;

/// Input frames per call: a multiple of the smallest FFT unit (`from / gcd`) with an EVEN count
/// of units, so both FFT sizes are even and rubato's reported delay (`fft_size_out / 2`) is
/// exact; with an odd size its filter centre sits half a sample off.
fn chunk_size(from: u32, to: u32) -> usize {
    let (mut a, mut b) = (from, to);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let unit = (from / a.max(1)) as usize;
    let units = CHUNK.div_ceil(unit).next_multiple_of(2);
    units * unit
}

/// Resamples mono audio at `rate` Hz to 48 kHz. A copy when `rate` is already 48 kHz.
pub fn to_48k(mono: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    resample(mono, rate, RATE_48K)
}

/// Resamples mono 48 kHz audio to `rate` Hz (for playback on a device). A copy at 48 kHz.
pub fn from_48k(mono: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    resample(mono, RATE_48K, rate)
}

/// The exact output length for `len` input samples: `round(len * to / from)`.
pub fn output_len(len: usize, from: u32, to: u32) -> usize {
    let (len, from, to) = (len as u128, u128::from(from.max(1)), u128::from(to));
    ((len * to + from / 2) / from) as usize
}

/// Resamples mono audio from `from` Hz to `to` Hz, delay compensated, with an exact output length.
pub fn resample(mono: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    for rate in [from, to] {
        if !(MIN_RESAMPLE_RATE..=MAX_RESAMPLE_RATE).contains(&rate) {
            return Err(AudioError::ResampleRate { rate });
        }
    }
    if from == to {
        return Ok(mono.to_vec());
    }
    let target = output_len(mono.len(), from, to);
    if target == 0 {
        return Ok(Vec::new());
    }
    let fail = |e: &dyn std::fmt::Display| AudioError::Resample(e.to_string());
    let chunk = chunk_size(from, to);
    let mut rs =
        FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1).map_err(|e| fail(&e))?;
    let delay = rs.output_delay();
    let wanted = delay + target;
    let mut out = Vec::with_capacity(wanted + rs.output_frames_max());
    let mut input = vec![0.0f32; chunk];
    let mut chunk_out = rs.output_buffer_allocate(true);
    let mut pos = 0usize;
    // Feed the input, then zeros, until the delayed output covers the whole signal.
    while out.len() < wanted {
        let n = mono.len().saturating_sub(pos).min(chunk);
        input[..n].copy_from_slice(&mono[pos..pos + n]);
        input[n..].fill(0.0);
        pos += n;
        let (_, produced) = rs
            .process_into_buffer(&[&input], &mut chunk_out, None)
            .map_err(|e| fail(&e))?;
        out.extend_from_slice(&chunk_out[0][..produced]);
    }
    out.drain(..delay);
    out.truncate(target);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;

    fn sine(freq: f32, rate: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 0.5 * (TAU * freq * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Rising zero crossings per second, counted away from the edges.
    fn frequency(x: &[f32], rate: u32) -> f32 {
        let x = &x[x.len() / 10..x.len() * 9 / 10];
        let ups = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        ups as f32 * rate as f32 / x.len() as f32
    }

    fn correlation(a: &[f32], b: &[f32]) -> f32 {
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
    }

    #[test]
    fn lengths_are_exact() {
        for (rate, len, want) in [
            (16_000, 16_000, 48_000),
            (44_100, 44_100, 48_000),
            (8_000, 1234, 7404),
        ] {
            assert_eq!(to_48k(&vec![0.1; len], rate).unwrap().len(), want, "{rate}");
        }
        assert_eq!(to_48k(&vec![0.0; 441], 44_100).unwrap().len(), 480);
        assert_eq!(to_48k(&[0.0; 3], 44_100).unwrap().len(), 3);
        assert_eq!(to_48k(&[], 16_000).unwrap().len(), 0);
        assert_eq!(from_48k(&vec![0.0; 48_000], 22_050).unwrap().len(), 22_050);
        assert_eq!(output_len(1, 48_000, 16_000), 0);
    }

    #[test]
    fn identity_at_48k_and_bad_rates_refused() {
        let x = sine(440.0, 48_000, 1000);
        assert_eq!(to_48k(&x, 48_000).unwrap(), x);
        assert!(matches!(
            to_48k(&x, 0),
            Err(AudioError::ResampleRate { rate: 0 })
        ));
        assert!(from_48k(&x, 1_000_000).is_err());
    }

    #[test]
    fn a_sine_keeps_its_frequency() {
        for rate in [8_000, 16_000, 44_100] {
            let out = to_48k(&sine(1000.0, rate, rate as usize), rate).unwrap();
            let f = frequency(&out, 48_000);
            assert!(
                (f - 1000.0).abs() < 5.0,
                "{rate} Hz input came out at {f} Hz"
            );
            let reference = sine(1000.0, 48_000, 48_000);
            let c = correlation(&out[1000..47_000], &reference[1000..47_000]);
            assert!(c > 0.999, "{rate}: correlation {c}");
        }
    }

    #[test]
    fn a_click_lands_on_the_right_sample() {
        for (rate, at) in [
            (16_000u32, 5_000usize),
            (44_100, 10_000),
            (8_000, 1_234),
            (96_000, 20_000),
        ] {
            let mut x = vec![0.0f32; rate as usize / 2];
            x[at] = 1.0;
            let out = to_48k(&x, rate).unwrap();
            let peak = (0..out.len())
                .max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs()))
                .unwrap();
            let expected = at as f64 * 48_000.0 / f64::from(rate);
            assert!(
                (peak as f64 - expected).abs() <= 1.0,
                "{rate}: click at {peak}, expected {expected}"
            );
        }
        let mut x = vec![0.0f32; 24_000];
        x[9_000] = 1.0;
        let out = from_48k(&x, 16_000).unwrap();
        let peak = (0..out.len())
            .max_by(|&a, &b| out[a].abs().total_cmp(&out[b].abs()))
            .unwrap();
        assert!(peak.abs_diff(3_000) <= 1, "click at {peak}");
    }

    #[test]
    fn round_trip_through_16k_keeps_a_1khz_sine() {
        let x = sine(1000.0, 48_000, 48_000);
        let down = from_48k(&x, 16_000).unwrap();
        assert_eq!(down.len(), 16_000);
        let back = to_48k(&down, 16_000).unwrap();
        assert_eq!(back.len(), x.len());
        let c = correlation(&back[500..47_500], &x[500..47_500]);
        assert!(c > 0.99, "correlation {c}");
    }
}
