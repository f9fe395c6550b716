//! The upload of one clip as two state machines with no I/O, on quinn-proto's model: the
//! relay's side ([`RelayUpload`]) and the client's side ([`ClientUpload`]). Each is driven by
//! `handle(input, now)` and hands back what to do as actions (`poll_action`) and when to wake
//! it (`poll_timeout`, then `handle_timeout(now)`); the async code around them only reads and
//! writes streams, asks the store, and carries actions out. Tests drive both with a simulated
//! clock and an in-memory world (`tests/sessions.rs`), with no sockets and no sleeps.
//!
//! # Flow of one clip
//! ```text
//! client                      relay                                   store / other parts
//!   Write(Upload header)  ->  check the header
//!                             Check { id, target }                 -> who may hear it, is the id stored?
//!                             Admit                                -> the sender's clips-per-minute
//!                             TakeFloor (channels only)            -> one talker per channel
//!                             OpenLive { header, recipients }      -> live copies to online recipients
//!   Write(Packet) ...     ->  Forward(packet) ...                  -> every live copy
//!   Write(End), finish    ->  ReleaseFloor; Commit { meta, ogg }   -> durable (fsync / quorum)
//!                     <-      Stored { seq }   then EndLive, Wake  -> live copies end, inbox pumps wake
//! ```
//! A refusal at any step is `Refuse` (the talker's control stream) and `StopReading`; once live
//! copies are open it is also `AbortLive`, and the floor is released. A talker who cancels
//! (stream reset with code 0, or an `Abort` frame) gets no answer; live listeners get a
//! `cancelled` abort. Nobody is told "stored" before the commit, and live listeners get the end
//! marker only after it, so nobody acknowledges a clip the relay could still lose.

mod client;
mod relay;

pub use client::{Answer, ClientAction, ClientUpload, UploadFailure};
pub use relay::{
    Action, Checked, CommitFailure, DEFAULT_FLOOR_GAP, FloorRefusal, Input, MAX_FUTURE_SKEW_MS,
    MAX_PAST_MS, Outcome, RelayUpload, UploadLimits, not_readable, plausible_start,
};
