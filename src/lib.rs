//! The `walkie` command line's own pieces: the self-contained demo behind `walkie demo`, and
//! the live commands (`walkie talk`, `walkie listen --play`) in the terminal. Everything else
//! lives in the workspace's crates (see the README's "Where to look"):
//!
//! | crate | owns |
//! |---|---|
//! | `walkie-proto` | ids, wire messages, Ogg Opus, the TOC reader, the upload and floor state machines (no I/O) |
//! | `walkie-net` | QUIC endpoints, TLS identity and pinning, framed streams |
//! | `walkie-store` | the `Store` trait, SQLite, NATS, the fault-injecting store, the conformance suite |
//! | `walkie-relay` | the relay and `walkie-relay` |
//! | `walkie-media` | WAV, resampling, RNNoise, Opus, jitter buffer, playback queue, player, devices |
//! | `walkie-client` | the connection to a relay, the outbox, profiles, whole operations |
//! | `walkie-app` | the desktop app: engine and views |

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod demo;
pub mod live;
