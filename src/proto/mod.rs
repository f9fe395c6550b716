//! The wire protocol, without I/O: messages, error codes and length-prefixed framing.
//!
//! # Flow
//! A connection negotiates ALPN [`ALPN`] (`walkie/1`; another version is refused in the TLS
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

pub mod frame;
pub mod messages;

pub use frame::{FrameError, decode_frame, encode_frame};
pub use messages::*;

/// ALPN protocol id; the version lives here so incompatible peers fail the handshake.
pub const ALPN: &[u8] = b"walkie/1";
/// Largest control-stream frame (history pages are the biggest messages).
pub const MAX_CONTROL_FRAME: usize = 1 << 20;
/// Largest frame on a clip or file stream.
pub const MAX_STREAM_FRAME: usize = 64 * 1024;
/// Largest Opus packet accepted (RFC 6716 allows 1275 bytes per frame, up to 6 frames).
pub const MAX_PACKET_BYTES: usize = 7_650;
/// Largest chunk of a fetched file.
pub const FILE_CHUNK_BYTES: usize = 32 * 1024;
/// Most clips one history page may return.
pub const MAX_HISTORY_PAGE: u32 = 500;
/// Longest user name, token or client string accepted in a hello.
pub const MAX_HELLO_FIELD: usize = 128;
