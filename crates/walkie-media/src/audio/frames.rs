//! Cutting a stream of samples into fixed-size frames (the Opus frame size), reusing one buffer.

/// Cuts a stream of samples into frames of a fixed size.
///
/// Push samples as they come, pop full frames as borrowed slices, and at the end of the
/// stream call [`Framer::finish`] for the last, zero-padded frame. The internal buffer is
/// reused, so steady-state operation does not allocate.
#[derive(Clone, Debug)]
pub struct Framer {
    frame: usize,
    buf: Vec<f32>,
    start: usize,
}

impl Framer {
    /// A framer for frames of `frame_samples` samples (0 is treated as 1).
    pub fn new(frame_samples: usize) -> Self {
        let frame = frame_samples.max(1);
        Self {
            frame,
            buf: Vec::with_capacity(2 * frame),
            start: 0,
        }
    }

    /// The frame size in samples.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Samples pushed but not yet returned in a frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Appends samples to the stream.
    pub fn push(&mut self, samples: &[f32]) {
        if self.start > 0 {
            // Move the unconsumed tail to the front so the buffer never grows without bound.
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(samples);
    }

    /// The next full frame, if one is pending.
    pub fn pop(&mut self) -> Option<&[f32]> {
        if self.pending() < self.frame {
            return None;
        }
        let at = self.start;
        self.start += self.frame;
        Some(&self.buf[at..at + self.frame])
    }

    /// Ends the stream: the next pending frame, zero-padded to full size, with how many of its
    /// samples are real; `None` once nothing is pending. After popping every full frame, one
    /// call returns the last partial frame; calling it in a loop drains everything.
    pub fn finish(&mut self) -> Option<(&[f32], usize)> {
        let real = self.pending().min(self.frame);
        if real == 0 {
            return None;
        }
        let end = self.start + self.frame;
        if self.buf.len() < end {
            self.buf.resize(end, 0.0);
        }
        let at = self.start;
        self.start = end;
        Some((&self.buf[at..end], real))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_frames_across_pushes_and_pads_the_tail() {
        let mut f = Framer::new(4);
        f.push(&[1.0, 2.0, 3.0]);
        assert_eq!(f.pop(), None);
        f.push(&[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        assert_eq!(f.pop(), Some(&[1.0, 2.0, 3.0, 4.0][..]));
        assert_eq!(f.pop(), Some(&[5.0, 6.0, 7.0, 8.0][..]));
        assert_eq!(f.pop(), None);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.finish(), Some((&[9.0, 0.0, 0.0, 0.0][..], 1)));
        assert_eq!(f.finish(), None);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn finish_drains_full_frames_first_and_empty_gives_none() {
        let mut f = Framer::new(2);
        assert_eq!(f.finish(), None);
        f.push(&[1.0, 2.0, 3.0]);
        assert_eq!(f.finish(), Some((&[1.0, 2.0][..], 2)));
        assert_eq!(f.finish(), Some((&[3.0, 0.0][..], 1)));
        assert_eq!(f.finish(), None);
        assert_eq!(Framer::new(0).frame_samples(), 1);
    }

    #[test]
    fn steady_state_reuses_the_buffer() {
        let mut f = Framer::new(960);
        let chunk = vec![0.5f32; 441];
        let mut frames = 0;
        for _ in 0..10 {
            f.push(&chunk);
            while f.pop().is_some() {
                frames += 1;
            }
        }
        let cap = f.buf.capacity();
        for _ in 0..1000 {
            f.push(&chunk);
            while f.pop().is_some() {
                frames += 1;
            }
        }
        assert_eq!(f.buf.capacity(), cap);
        assert_eq!(frames, 1010 * 441 / 960);
    }
}
