//! Length-prefixed framing: `u32` big-endian length, then a postcard-encoded message.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors while encoding or decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The announced or produced length exceeds the cap for this stream.
    #[error("frame of {len} bytes exceeds the limit of {cap} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The cap in force.
        cap: usize,
    },
    /// The bytes do not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame, refusing results longer than `cap`.
pub fn encode_frame<T: Serialize>(msg: &T, cap: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > cap {
        return Err(FrameError::TooLarge { len, cap });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, cap })?;
    out[..4].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Reads the length prefix of a frame and checks it against `cap` before anything is allocated.
pub fn frame_len(prefix: [u8; 4], cap: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > cap {
        return Err(FrameError::TooLarge { len, cap });
    }
    Ok(len)
}

/// Decodes a message body (the bytes after the length prefix). Trailing bytes are an error.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Decodes the first complete frame in `buf`: `Ok(None)` if more bytes are needed, otherwise
/// the message and how many bytes it used.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    cap: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(prefix);
    let len = frame_len(p, cap)?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, 4 + len)))
}
