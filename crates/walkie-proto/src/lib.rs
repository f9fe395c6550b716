//! walkie's shared vocabulary and protocol core, with no I/O: no sockets, no files, no async
//! runtime, no clock reads inside the state machines (time is passed in). Everything here can
//! be driven by a test with a simulated clock.
//!
//! Must not depend on: tokio, quinn, any store, libopus, audio devices, or any other walkie
//! crate. Every other walkie crate depends on this one.
//!
//! | concept | module |
//! |---|---|
//! | clip ids, names, targets, codec parameters, metadata | [`clip`] |
//! | a clip as a recipient holds it | [`received`] |
//! | wire messages, error codes, length-prefixed framing (caps before allocation) | [`wire`] |
//! | an Opus packet's length from its TOC byte (pure Rust, RFC 6716 §3.1), the packet cap | [`toc`] |
//! | Ogg Opus files (RFC 7845): writing and reading with caps | [`ogg`] |
//! | validating and assembling an uploaded clip | [`assemble`] |
//! | one talker per channel | [`floor`] |
//! | per-user rate limits (token buckets) | [`rate`] |
//! | peer-controlled text made safe for log lines | [`logsafe`] |
//! | display names, invite links, contacts and groups users make | [`people`] |
//! | who is online at a relay, and batching what their channel mates and contacts hear | [`presence`] |
//! | messages beside clips: text, pictures, doodles; their limits and payloads | [`message`] |
//! | the upload of one clip as state machines: the relay's side and the client's side | [`upload`] |
//! | live packets as datagrams: first copy wins, repeats, loss and the resilience it calls for | [`live`] |

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod assemble;
pub mod clip;
pub mod floor;
pub mod live;
pub mod logsafe;
pub mod message;
pub mod ogg;
pub mod people;
pub mod presence;
pub mod rate;
pub mod received;
pub mod testing;
pub mod toc;
pub mod upload;
pub mod wire;

pub use clip::{ClipHeader, ClipId, ClipMeta, CodecParams, Target};
pub use received::{ReceivedClip, ReceivedMessage};
