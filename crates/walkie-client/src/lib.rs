//! A walkie client's side of the relay: one connection ([`Client`]) and the operations built
//! on it.
//!
//! | file | owns |
//! |---|---|
//! | `connection.rs` | [`Client`]: connecting (with failover), the hello, requests |
//! | `routing.rs` | where the relay's replies go: the waiting request or upload, or an [`Event`] |
//! | `presence.rs` | who is online as this connection heard it; presence that never holds up replies |
//! | `error.rs` | [`ClientError`] and whether retrying may help |
//! | `upload.rs` | [`Upload`]: one clip's stream, carried out for [`walkie_proto::upload::ClientUpload`] |
//! | `receive.rs` | incoming streams: delivered clips and fetched files |
//! | `outbox.rs` | the on-disk outbox of unacknowledged clips |
//! | `profile.rs` | where the client keeps its state; saved login profiles |
//! | `avatar.rs` | a picture made into a 256 px PNG avatar, with limits, metadata dropped |
//! | `picture.rs` | a picture file made ready to send: limits, first frame, scaled, metadata dropped |
//! | `people.rs` | signing up with an invite link; profile, display names, contacts, groups |
//! | `ops.rs` | whole operations the CLI, the demo and the app run (send, listen, export, …) |
//! | `talk.rs` | one live push-to-talk clip from an audio source |
//!
//! Must not depend on: the relay, any store, the desktop app, audio devices (sources are
//! handed in as [`walkie_media::audio::source::AudioSource`]s).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod avatar;
mod connection;
mod error;
pub mod ops;
pub mod outbox;
pub mod people;
pub mod picture;
mod presence;
pub mod profile;
mod receive;
mod routing;
pub mod talk;
mod upload;

pub use connection::{Client, ClientConfig, REQUEST_TIMEOUT};
pub use error::ClientError;
pub use routing::Event;
pub use upload::Upload;
pub use walkie_proto::received::ReceivedClip;
