//! walkie's audio: everything between a microphone or a WAV file and Opus packets, and between
//! Opus packets and a speaker.
//!
//! | concept | module | feature |
//! |---|---|---|
//! | WAV files, mixing, resampling to 48 kHz, 20 ms frames, RNNoise | [`audio`] | |
//! | audio sources and sinks, the name table that opens them, silence and WAV backends | [`audio::source`], [`audio::sink`], [`audio::open`] | |
//! | microphone and speaker through cpal | [`audio::capture`], [`audio::speaker`], [`audio::cpal`] | `devices` |
//! | the Opus encoder and decoder (libopus), whole clips, WAV <-> Ogg Opus files | [`codec`] | `opus` |
//! | the jitter buffer for live clips, and the quiet frames it changes timing in | [`jitter`], [`pause`] | |
//! | the playback queue: clips one after another, live ones as they come | [`playback_queue`] | |
//! | the player: the queue through the decoder into a sink | [`player`] | `opus` |
//!
//! Must not depend on: the network (quinn, tokio), the relay, any store, the client, the app.
//! Without default features it builds with no C dependency (no libopus, no ALSA): WAV files,
//! resampling, the jitter buffer and the playback queue only, which is what fuzzing uses.

#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod audio;
#[cfg(feature = "opus")]
pub mod codec;
pub mod jitter;
pub mod pause;
pub mod playback_queue;
#[cfg(feature = "opus")]
pub mod player;
