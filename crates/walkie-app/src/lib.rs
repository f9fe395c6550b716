//! The walkie desktop app (`walkie app`): a UI-free [`engine`] that owns the connection, the
//! microphone, the speaker and everything on screen as one [`engine::Snapshot`], and egui
//! views that only read snapshots and send [`engine::Command`]s.
//!
//! Must not depend on: any store or relay internals (the in-process relay of `--demo` is the
//! relay crate's [`walkie_relay::demo::DemoRelay`], started like any relay).

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod engine;
mod views;

pub use views::{WalkieApp, run};
