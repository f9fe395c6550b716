//! Streaming mono resampling (rubato's FFT resampler) for live audio: feed chunks of any
//! length as they come, get resampled samples out as soon as a block is complete.
//!
//! The resampler's own delay is dropped from the front, so output sample `j` lines up with
//! input sample `j * to / from`. [`StreamResampler::flush`] pushes out the buffered tail of a
//! stream so the total output is exactly `round(input * to / from)`, then starts afresh.
//! Blocks are about 10 ms of input, so the added latency is about 10 ms plus the filter's
//! half-length. At equal rates samples pass straight through.

use rubato::{FftFixedIn, Resampler};

use super::AudioError;
use super::resample::{MAX_RESAMPLE_RATE, MIN_RESAMPLE_RATE, output_len};

/// A streaming mono resampler from one fixed rate to another.
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal.
    inner: Option<Inner>,
}

struct Inner {
    rs: FftFixedIn<f32>,
    chunk: usize,
    /// Input waiting for a full block.
    pending: Vec<f32>,
    block_out: Vec<Vec<f32>>,
    /// Output samples still to drop (the filter delay) at the start of a stream.
    skip: usize,
    in_total: u64,
    out_total: u64,
}

/// Input frames per block: about 10 ms, a multiple of the smallest FFT unit (`from / gcd`)
/// with an even unit count so both FFT sizes are even and rubato's delay is exact.
fn block_size(from: u32, to: u32) -> usize {
    let (mut a, mut b) = (from, to);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    let unit = (from / a.max(1)) as usize;
    let target = (from as usize / 100).max(1);
    target.div_ceil(unit).next_multiple_of(2) * unit
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (both 1 kHz to 384 kHz).
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, AudioError> {
        for rate in [from, to] {
            if !(MIN_RESAMPLE_RATE..=MAX_RESAMPLE_RATE).contains(&rate) {
                return Err(AudioError::ResampleRate { rate });
            }
        }
        if from == to {
            return Ok(StreamResampler {
                from,
                to,
                inner: None,
            });
        }
        let chunk = block_size(from, to);
        let rs = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let skip = rs.output_delay();
        let block_out = rs.output_buffer_allocate(true);
        let inner = Inner {
            rs,
            chunk,
            pending: Vec::with_capacity(chunk),
            block_out,
            skip,
            in_total: 0,
            out_total: 0,
        };
        Ok(StreamResampler {
            from,
            to,
            inner: Some(inner),
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Input samples held back until their block is complete.
    pub fn pending(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.pending.len())
    }

    /// Resamples `input`, appending every output sample that is ready to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        let Some(inner) = &mut self.inner else {
            out.extend_from_slice(input);
            return Ok(());
        };
        inner.in_total += input.len() as u64;
        let mut rest = input;
        while !rest.is_empty() {
            let take = (inner.chunk - inner.pending.len()).min(rest.len());
            inner.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if inner.pending.len() == inner.chunk {
                inner.run_block(out, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Ends the stream: emits the buffered tail so that the whole stream's output has exactly
    /// `round(input * to / from)` samples, then resets for a new stream.
    pub fn flush(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let (from, to) = (self.from, self.to);
        let Some(inner) = &mut self.inner else {
            return Ok(());
        };
        let target = output_len(
            usize::try_from(inner.in_total).unwrap_or(usize::MAX),
            from,
            to,
        ) as u64;
        while inner.out_total < target {
            inner.pending.resize(inner.chunk, 0.0);
            inner.run_block(out, target)?;
        }
        inner.rs.reset();
        inner.pending.clear();
        inner.skip = inner.rs.output_delay();
        inner.in_total = 0;
        inner.out_total = 0;
        Ok(())
    }
}

impl Inner {
    /// Resamples the full pending block, dropping the delay and stopping at `limit` total outputs.
    fn run_block(&mut self, out: &mut Vec<f32>, limit: u64) -> Result<(), AudioError> {
        let (_, produced) = self
            .rs
            .process_into_buffer(&[&self.pending], &mut self.block_out, None)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        self.pending.clear();
        let block = &self.block_out[0][..produced];
        let drop = self.skip.min(block.len());
        self.skip -= drop;
        let block = &block[drop..];
        let room = usize::try_from(limit.saturating_sub(self.out_total)).unwrap_or(usize::MAX);
        let block = &block[..block.len().min(room)];
        out.extend_from_slice(block);
        self.out_total += block.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn click_train(len: usize, every: usize) -> Vec<f32> {
        (0..len)
            .map(|i| if i % every == every / 2 { 1.0 } else { 0.0 })
            .collect()
    }

    fn peak_near(x: &[f32], at: usize, radius: usize) -> usize {
        let lo = at.saturating_sub(radius);
        let hi = (at + radius).min(x.len());
        (lo..hi)
            .max_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()))
            .unwrap()
    }

    #[test]
    fn chunked_stream_is_aligned_and_exact_after_flush() {
        for (from, to) in [
            (44_100u32, 48_000u32),
            (16_000, 48_000),
            (48_000, 44_100),
            (48_000, 22_050),
            (96_000, 48_000),
        ] {
            let len = from as usize; // one second
            let every = from as usize / 10;
            let input = click_train(len, every);
            let mut rs = StreamResampler::new(from, to).unwrap();
            let mut out = Vec::new();
            // Odd chunk sizes, like device callbacks.
            for piece in input.chunks(317) {
                rs.process(piece, &mut out).unwrap();
            }
            rs.flush(&mut out).unwrap();
            assert_eq!(out.len(), output_len(len, from, to), "{from}->{to}");
            for k in 0..10 {
                let src = k * every + every / 2;
                let expected = (src as f64 * f64::from(to) / f64::from(from)).round() as usize;
                let got = peak_near(&out, expected, to as usize / 50);
                assert!(
                    got.abs_diff(expected) <= 1,
                    "{from}->{to}: click {k} at {got}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn latency_is_one_block_and_restarts_after_flush() {
        let mut rs = StreamResampler::new(44_100, 48_000).unwrap();
        let mut out = Vec::new();
        rs.process(&[0.1; 100], &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(rs.pending(), 100);
        rs.process(&vec![0.1; 2_000], &mut out).unwrap();
        assert!(!out.is_empty() && rs.pending() < 600);
        out.clear();
        rs.flush(&mut out).unwrap();
        assert_eq!(rs.pending(), 0);
        let mut second = Vec::new();
        rs.process(&click_train(4_410, 4_410), &mut second).unwrap();
        rs.flush(&mut second).unwrap();
        assert_eq!(second.len(), 4_800);
        assert!(peak_near(&second, 2_400, 200).abs_diff(2_400) <= 1);
    }

    #[test]
    fn equal_rates_pass_through_and_bad_rates_are_refused() {
        let mut rs = StreamResampler::new(48_000, 48_000).unwrap();
        let mut out = Vec::new();
        rs.process(&[0.25, -0.25], &mut out).unwrap();
        rs.flush(&mut out).unwrap();
        assert_eq!(out, vec![0.25, -0.25]);
        assert!(matches!(
            StreamResampler::new(0, 48_000),
            Err(AudioError::ResampleRate { rate: 0 })
        ));
        assert!(StreamResampler::new(48_000, 1_000_000).is_err());
    }
}
