//! Frames read from a stream through a buffer ([`FrameReader`]): one read per chunk the
//! stream delivers instead of two per frame. A clip's stream is hundreds of frames of ~70
//! bytes; each read of a quinn stream takes the connection's lock, so reading frame by frame
//! cost the relay more than decoding them.

use serde::de::DeserializeOwned;
use walkie_proto::wire::{self as proto, FrameError};

use crate::{NetError, read_error};

/// The most bytes asked of the stream at once (what is buffered beyond one frame).
const CHUNK: usize = 64 * 1024;

/// Reads length-prefixed frames from a stream, buffering what arrives beyond the current
/// frame. Cancel-safe: a `next` dropped while waiting loses nothing (the stream's chunk is
/// taken only when it arrives, and what is buffered stays).
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: Vec<u8>,
    /// Start of the bytes not yet returned.
    pos: usize,
    /// The stream finished (nothing more will come).
    ended: bool,
}

impl FrameReader {
    /// Reads frames from `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader {
            recv,
            buf: Vec::new(),
            pos: 0,
            ended: false,
        }
    }

    /// The stream itself (to stop it).
    pub fn stream(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }

    /// The next frame, `Ok(None)` on a clean end of stream between frames. A frame longer
    /// than `cap` is refused from its length alone, before its body is read.
    pub async fn next<T: DeserializeOwned>(&mut self, cap: usize) -> Result<Option<T>, NetError> {
        if !self.fill(4).await? {
            let have = self.unread();
            if have == 0 {
                return Ok(None);
            }
            return Err(NetError::Frame(FrameError::Malformed(format!(
                "stream ended inside a frame header ({have} of 4 bytes)"
            ))));
        }
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        let len = proto::frame::frame_len(prefix, cap)?;
        if !self.fill(4 + len).await? {
            return Err(NetError::Frame(FrameError::Malformed(format!(
                "stream ended inside a frame ({} of {len} bytes)",
                self.unread() - 4
            ))));
        }
        let body = &self.buf[self.pos + 4..self.pos + 4 + len];
        let msg = proto::frame::decode_body(body)?;
        self.pos += 4 + len;
        Ok(Some(msg))
    }

    fn unread(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads until at least `n` bytes are unread; false if the stream ended first.
    async fn fill(&mut self, n: usize) -> Result<bool, NetError> {
        while self.unread() < n {
            if self.ended {
                return Ok(false);
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self
                .recv
                .read_chunk(CHUNK, true)
                .await
                .map_err(read_error)?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None => self.ended = true,
            }
        }
        Ok(true)
    }
}
