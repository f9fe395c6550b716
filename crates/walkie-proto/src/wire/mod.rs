//! The wire protocol, without I/O: messages, error codes and length-prefixed framing.
//! (The uploads it carries are driven by the state machines of [`crate::upload`].)
//!
//! # Flow
//! A connection negotiates ALPN [`ALPN`] (`walkie/4` since live packets also travel as
//! datagrams and the relay tells a talker its listeners' loss; `walkie/3` told presence in
//! batches; `walkie/2` added messages beside clips; another version is refused in the TLS
//! handshake). The client opens one bidirectional *control* stream and sends
//! [`ClientMsg::Hello`]; the relay answers [`ServerMsg::Welcome`] or an error and closes.
//! After that the relay pushes every clip the user has not acknowledged, oldest first, then
//! live ones, each on its own unidirectional stream opened by the relay
//! ([`StreamFrame::Deliver`], packets, [`StreamFrame::End`]); the client answers
//! [`ClientMsg::Ack`] once it holds a clip. A clip the client sends travels on a
//! unidirectional stream it opens: [`StreamFrame::Upload`], one [`StreamFrame::Packet`] per
//! Opus packet as it is produced, then [`StreamFrame::End`] with the packet count and the
//! decoded length; the relay answers [`ServerMsg::ClipStored`] on the control stream once the
//! clip is durable. History and fetch are requests on the control stream; fetched files come
//! back on a relay-opened unidirectional stream ([`StreamFrame::File`], chunks, end).
//!
//! Every frame is a big-endian `u32` length followed by that many bytes of `postcard`-encoded
//! message. Lengths are checked against a cap before any buffer is allocated.

pub mod datagram;
pub mod frame;
pub mod messages;

pub use datagram::{DatagramError, LiveBody, LiveDatagram};
pub use frame::{FrameError, decode_frame, encode_frame};
pub use messages::*;

/// ALPN protocol id; the version lives here so incompatible peers fail the handshake.
pub const ALPN: &[u8] = b"walkie/4";
/// Largest control-stream frame (history pages are the biggest messages).
pub const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Largest frame on a clip or file stream.
pub const MAX_STREAM_FRAME: usize = 64 * 1024;
/// Largest chunk of a fetched file.
pub const FILE_CHUNK_BYTES: usize = 32 * 1024;
/// Most clips one history page may return.
pub const MAX_HISTORY_PAGE: u32 = 500;
/// Longest user name, token or client string accepted in a hello.
pub const MAX_HELLO_FIELD: usize = 128;
/// Largest hello a relay reads: its three fields and framing fit in far less.
pub const MAX_HELLO_FRAME: usize = 4 * 1024;
/// Largest control message a relay reads from a client after the hello (every client message
/// is a small request).
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

/// Longest message kept in a connection close's reason (a close must fit in one packet).
const MAX_CLOSE_MESSAGE: usize = 300;

/// The reason bytes of a QUIC connection closed with an error: the [`ErrorMsg`] itself,
/// postcard-encoded (message cut to 300 bytes), so the peer reads its code, and a busy
/// relay's retry delay, typed instead of from the text.
pub fn close_reason(error: &ErrorMsg) -> Vec<u8> {
    let mut short = error.clone();
    if short.message.len() > MAX_CLOSE_MESSAGE {
        let cut = (0..=MAX_CLOSE_MESSAGE)
            .rev()
            .find(|&i| short.message.is_char_boundary(i))
            .unwrap_or(0);
        short.message.truncate(cut);
    }
    postcard::to_allocvec(&short).unwrap_or_else(|_| short.message.into_bytes())
}

/// The error in a connection close's reason bytes, if they hold one (see [`close_reason`]).
pub fn parse_close_reason(bytes: &[u8]) -> Option<ErrorMsg> {
    frame::decode_body(bytes).ok()
}

#[cfg(test)]
mod close_tests {
    use super::*;

    #[test]
    fn a_busy_close_carries_its_retry_delay_typed() {
        let busy = ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Busy {
                retry_after_ms: 1500,
            },
            message: "busy, retry after 1500 ms".into(),
        };
        let bytes = close_reason(&busy);
        // Snapshot: clients of every version read this; change it only with the ALPN.
        assert_eq!(&bytes[..5], &[0, 0, 6, 0xdc, 0x0b]);
        assert_eq!(parse_close_reason(&bytes), Some(busy));
        assert_eq!(parse_close_reason(b"relay shutting down"), None);
        let long = ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Unauthorized,
            message: "é".repeat(400),
        };
        let back = parse_close_reason(&close_reason(&long)).expect("decodes");
        assert!(back.message.len() <= MAX_CLOSE_MESSAGE && back.code == ErrorCode::Unauthorized);
    }
}
