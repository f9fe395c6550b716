//! walkie: push-to-talk voice messaging. Opus clips travel over QUIC through a relay that
//! stores them durably and pushes them to every recipient, live while the talker talks and
//! from a per-user inbox for whoever was away.
//!
//! # Where to look
//! | concept | module |
//! |---|---|
//! | clip ids, targets, metadata | [`clip`] |
//! | WAV in/out, mixing, resampling to 48 kHz, 20 ms frames | [`audio`] |
//! | Opus encoder/decoder, Ogg Opus files (RFC 7845) | [`codec`] |
//! | storage contract and the embedded SQLite store | [`store`] |
//! | wire messages and framing (no I/O) | [`proto`] |
//! | QUIC endpoints, TLS identity and certificate pinning | [`net`] |
//! | the relay: sessions, uploads, live fan-out, inbox delivery | [`relay`] |
//! | the client engine, outbox, profiles and operations | [`client`] |
//! | the self-contained demo behind `walkie demo` | [`demo`] |

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod app;
pub mod audio;
pub mod client;
pub mod clip;
pub mod codec;
pub mod config;
pub mod demo;
pub mod net;
pub mod proto;
pub mod relay;
pub mod store;
