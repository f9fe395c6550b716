//! The lock-free single-producer single-consumer sample ring between an audio callback and
//! a worker (rtrb). The callback side converts samples in place and never allocates, locks
//! or blocks: it writes what fits and reports the rest, reads what is there and reports
//! the shortfall.

use rtrb::{Consumer, Producer, RingBuffer};

/// Creates a ring holding up to `capacity` samples (at least 1).
pub fn sample_ring(capacity: usize) -> (RingWriter, RingReader) {
    let (tx, rx) = RingBuffer::new(capacity.max(1));
    (RingWriter { tx }, RingReader { rx })
}

/// The writing end.
pub struct RingWriter {
    tx: Producer<f32>,
}

impl RingWriter {
    /// Free space in samples.
    pub fn free(&self) -> usize {
        self.tx.slots()
    }

    /// Converts and writes as many whole frames of `frame` interleaved samples from `data` as
    /// fit (all of them when there is room); returns how many samples were written, always a
    /// multiple of `frame`. Real-time safe: no allocation, no lock, no wait.
    pub fn push_frames<T: Copy>(
        &mut self,
        data: &[T],
        frame: usize,
        convert: impl Fn(T) -> f32,
    ) -> usize {
        let frame = frame.max(1);
        let n = data.len().min(self.tx.slots()) / frame * frame;
        match self.tx.write_chunk_uninit(n) {
            Ok(chunk) => chunk.fill_from_iter(data[..n].iter().map(|&s| convert(s))),
            Err(_) => 0,
        }
    }

    /// Writes as many of `samples` as fit; returns how many were written.
    pub fn push(&mut self, samples: &[f32]) -> usize {
        self.push_frames(samples, 1, |s| s)
    }
}

/// The reading end.
pub struct RingReader {
    rx: Consumer<f32>,
}

impl RingReader {
    /// Samples waiting to be read.
    pub fn len(&self) -> usize {
        self.rx.slots()
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Appends every waiting sample (up to `max`) to `out`; returns how many. For workers:
    /// `out` may grow.
    pub fn pop_into_vec(&mut self, out: &mut Vec<f32>, max: usize) -> usize {
        let n = self.rx.slots().min(max);
        match self.rx.read_chunk(n) {
            Ok(chunk) => {
                let (a, b) = chunk.as_slices();
                out.extend_from_slice(a);
                out.extend_from_slice(b);
                chunk.commit_all();
                n
            }
            Err(_) => 0,
        }
    }

    /// Fills `out` frame by frame: each mono sample read is converted and written to all
    /// `frame` interleaved slots of one frame. Returns how many frames were filled; the rest
    /// of `out` is left untouched. Real-time safe: no allocation, no lock, no wait.
    pub fn pop_to_frames<T: Copy>(
        &mut self,
        out: &mut [T],
        frame: usize,
        convert: impl Fn(f32) -> T,
    ) -> usize {
        let frame = frame.max(1);
        let want = out.len() / frame;
        let n = self.rx.slots().min(want);
        let Ok(chunk) = self.rx.read_chunk(n) else {
            return 0;
        };
        let (a, b) = chunk.as_slices();
        for (slots, &s) in out.chunks_exact_mut(frame).zip(a.iter().chain(b)) {
            slots.fill(convert(s));
        }
        chunk.commit_all();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_frames_only_and_reports_what_fit() {
        let (mut w, mut r) = sample_ring(5);
        // Stereo i16: 3 frames offered, only 2 fit in 5 slots.
        let n = w.push_frames(&[16_384i16, -16_384, 0, 0, 8_192, 8_192], 2, |s| {
            f32::from(s) / 32_768.0
        });
        assert_eq!(n, 4);
        assert_eq!(w.free(), 1);
        let mut out = Vec::new();
        assert_eq!(r.pop_into_vec(&mut out, usize::MAX), 4);
        assert_eq!(out, vec![0.5, -0.5, 0.0, 0.0]);
        assert!(r.is_empty());
        assert_eq!(w.push(&[1.0; 9]), 5);
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn pop_to_frames_duplicates_across_channels_and_wraps() {
        let (mut w, mut r) = sample_ring(4);
        w.push(&[0.1, 0.2, 0.3]);
        let mut tmp = Vec::new();
        r.pop_into_vec(&mut tmp, 2);
        w.push(&[0.4, 0.5, 0.6]); // wraps around the end of the storage
        let mut out = [9.0f32; 10];
        let n = r.pop_to_frames(&mut out, 2, |s| s * 10.0);
        assert_eq!(n, 4);
        let want = [3.0, 3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 9.0, 9.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-5, "{out:?}");
        }
        assert_eq!(r.pop_to_frames(&mut out, 2, |s| s), 0);
    }
}
