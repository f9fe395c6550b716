//! Audio before the codec: PCM buffers, WAV files, mixing to mono, resampling to 48 kHz and
//! framing; the source and sink traits and their backends (devices, files, silence).
//!
//! Everything here works on `f32` samples in -1..1. The codec path is
//! [`load_wav_48k_mono`] (read + [`mix_to_mono`] + [`resample::to_48k`]) followed by
//! [`frames::Framer`] cutting the stream into Opus frames.
//!
//! | file | owns |
//! |---|---|
//! | `source.rs`, `sink.rs` | the [`source::AudioSource`] and [`sink::AudioSink`] traits (no backend) |
//! | `open.rs` | the name table that opens a backend from a spec (`null`, `wav:PATH`, a device) |
//! | `null.rs`, `wav_source.rs`, `pacer.rs` | silence, a WAV file as a source, their real-time pacing |
//! | `capture.rs`, `speaker.rs`, `cpal.rs` | the microphone and the speaker through cpal (feature `devices`) |
//! | `pipeline.rs`, `denoise.rs`, `frames.rs`, `stream_resample.rs` | device audio to 20 ms 48 kHz frames, RNNoise |
//! | `ring.rs`, `stamp.rs` | the lock-free ring and timestamps the real-time callbacks use |
//! | `wav.rs`, `resample.rs` | WAV files with caps, whole-buffer resampling |

#[cfg(feature = "devices")]
pub mod capture;
#[cfg(feature = "devices")]
pub mod cpal;
pub mod denoise;
pub mod frames;
pub mod null;
pub mod open;
pub mod pacer;
pub mod pipeline;
pub mod resample;
pub mod ring;
pub mod sink;
pub mod source;
#[cfg(feature = "devices")]
pub mod speaker;
pub mod stamp;
pub mod stream_resample;
pub mod wav;
pub mod wav_source;

use std::path::Path;

/// The speech sample the demos talk with (`walkie demo`, `walkie app --demo` without a
/// microphone): espeak-ng, 22.05 kHz mono, 7.4 s; see samples/README.md.
pub const DEMO_SPEECH: &[u8] = include_bytes!("../../../samples/hello-crew.wav");

/// Lowest sample rate walkie accepts from a file or device, in Hz.
pub const MIN_RATE: u32 = 8_000;
/// Highest sample rate walkie accepts from a file, in Hz.
pub const MAX_RATE: u32 = 96_000;

/// Errors of the audio layer: reading and writing WAV files, resampling.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A WAV file is longer than the clip it would become may be; found from its header,
    /// before any sample is read.
    #[error("WAV {name} is {} s long; clips may be at most {} s", .ms / 1000, .max_ms / 1000)]
    TooLong {
        /// The file path.
        name: String,
        /// Its length, in milliseconds.
        ms: u64,
        /// The limit, in milliseconds.
        max_ms: u64,
    },
    /// A WAV file (or in-memory WAV) could not be opened, parsed or read to the end.
    #[error("cannot read WAV {name}: {source}")]
    ReadWav {
        /// The file path, or a description of the in-memory source.
        name: String,
        /// What hound reported.
        #[source]
        source: hound::Error,
    },
    /// A WAV file has a channel count other than 1 or 2.
    #[error("WAV {name} has {channels} channels; only mono and stereo are supported")]
    Channels {
        /// The file path, or a description of the in-memory source.
        name: String,
        /// The channel count found in the header.
        channels: u16,
    },
    /// A WAV file's sample rate is outside [`MIN_RATE`]..=[`MAX_RATE`].
    #[error("WAV {name} has a sample rate of {rate} Hz; supported rates are 8000 to 96000 Hz")]
    Rate {
        /// The file path, or a description of the in-memory source.
        name: String,
        /// The sample rate found in the header.
        rate: u32,
    },
    /// A WAV file's sample format is not 8/16/24/32-bit integer or 32-bit float.
    #[error("WAV {name} uses {bits}-bit {format} samples, which are not supported")]
    Format {
        /// The file path, or a description of the in-memory source.
        name: String,
        /// Bits per sample found in the header.
        bits: u16,
        /// "integer" or "float".
        format: &'static str,
    },
    /// A WAV file could not be created or written.
    #[error("cannot write WAV {path}: {source}")]
    WriteWav {
        /// The file path.
        path: String,
        /// What hound reported.
        #[source]
        source: hound::Error,
    },
    /// A resampling rate is zero or outside what walkie handles.
    #[error("cannot resample from or to {rate} Hz: rates must be 1000 to 384000 Hz")]
    ResampleRate {
        /// The offending rate.
        rate: u32,
    },
    /// The resampler itself failed.
    #[error("resampling failed: {0}")]
    Resample(String),
    /// No audio device of that kind goes by the name asked for.
    #[error("no {kind} device named {name:?}; available: {}", available.join(", "))]
    NoDevice {
        /// "input" or "output".
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// Names of the devices that can be opened (see `walkie devices`).
        available: Vec<String>,
    },
    /// The system has no default audio device of that kind.
    #[error("no default {kind} device (is a sound server or sound card available?)")]
    NoDefaultDevice {
        /// "input" or "output".
        kind: &'static str,
    },
    /// This build has no audio device support (the `devices` feature is off).
    #[error("this build of walkie has no audio device support; use `null` or `wav:PATH`")]
    NoDevices,
    /// The audio backend (cpal) failed to enumerate, configure or run a device.
    #[cfg(feature = "devices")]
    #[error("{context}: {source}")]
    Device {
        /// What walkie was doing, naming the device.
        context: String,
        /// What cpal reported.
        #[source]
        source: ::cpal::Error,
    },
    /// A device offers no configuration walkie can use.
    #[error("device {name:?} cannot be used: {reason}")]
    Unsupported {
        /// The device name.
        name: String,
        /// Why not (sample format, rate or channel count).
        reason: String,
    },
    /// A device stopped working while open (unplugged, or the sound server went away).
    #[error("audio device {name:?} stopped: {reason}")]
    DeviceLost {
        /// The device name.
        name: String,
        /// What the backend reported.
        reason: String,
    },
    /// An audio worker thread could not be started or has died.
    #[error("audio worker failed: {0}")]
    Worker(String),
}

/// Interleaved PCM audio as read from a file or device.
#[derive(Clone, Debug, PartialEq)]
pub struct Pcm {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of interleaved channels (1 or 2 from WAV files).
    pub channels: u16,
    /// Interleaved samples in -1..1.
    pub samples: Vec<f32>,
}

/// Mixes interleaved PCM down to mono by averaging the channels of each frame.
/// A trailing incomplete frame is dropped; zero channels give no samples.
pub fn mix_to_mono(pcm: &Pcm) -> Vec<f32> {
    let ch = usize::from(pcm.channels);
    match ch {
        0 => Vec::new(),
        1 => pcm.samples.clone(),
        _ => {
            let scale = 1.0 / ch as f32;
            pcm.samples
                .chunks_exact(ch)
                .map(|f| f.iter().sum::<f32>() * scale)
                .collect()
        }
    }
}

/// Reads a WAV file, mixes it to mono and resamples it to 48 kHz: the input of the encoder.
pub fn load_wav_48k_mono(path: &Path) -> Result<Vec<f32>, AudioError> {
    let pcm = wav::read_wav(path)?;
    let mono = mix_to_mono(&pcm);
    resample::to_48k(&mono, pcm.sample_rate)
}

/// Like [`load_wav_48k_mono`], for a file of at most `max_ms`: a longer one is refused from
/// its header, before anything is decoded (a two-hour file costs a header read, not gigabytes).
pub fn load_wav_48k_mono_within(path: &Path, max_ms: u64) -> Result<Vec<f32>, AudioError> {
    let ms = wav::duration_ms(path)?;
    if ms > max_ms {
        return Err(AudioError::TooLong {
            name: path.display().to_string(),
            ms,
            max_ms,
        });
    }
    load_wav_48k_mono(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_longer_than_the_limit_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        wav::write_i16_wav(&path, 8000, 1, &vec![100; 8000 * 3]);
        let e = load_wav_48k_mono_within(&path, 2000).expect_err("3 s is over 2 s");
        assert!(
            matches!(
                e,
                AudioError::TooLong {
                    ms: 3000,
                    max_ms: 2000,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            load_wav_48k_mono_within(&path, 3000).unwrap().len(),
            48_000 * 3
        );
        // A header claiming two hours: refused without reading (the file holds far less).
        let mut bytes = std::fs::read(&path).unwrap();
        let claim: u32 = 2 * 3600 * 8000 * 2;
        bytes[40..44].copy_from_slice(&claim.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_wav_48k_mono_within(&path, 60_000),
            Err(AudioError::TooLong { ms: 7_200_000, .. })
        ));
    }

    #[test]
    fn mixing_averages_channels() {
        let pcm = Pcm {
            sample_rate: 8000,
            channels: 2,
            samples: vec![1.0, 0.0, -0.5, -0.5, 0.25],
        };
        assert_eq!(mix_to_mono(&pcm), vec![0.5, -0.5]);
        let mono = Pcm {
            sample_rate: 8000,
            channels: 1,
            samples: vec![0.1, 0.2],
        };
        assert_eq!(mix_to_mono(&mono), vec![0.1, 0.2]);
    }

    #[test]
    fn load_resamples_a_stereo_file_to_48k() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        let stereo: Vec<i16> = (0..32_000)
            .map(|i| ((i / 2) as f32 * 0.05).sin() * 10_000.0)
            .map(|v| v as i16)
            .collect();
        wav::write_i16_wav(&path, 16_000, 2, &stereo);
        let out = load_wav_48k_mono(&path).unwrap();
        assert_eq!(out.len(), 48_000);
        let peak = out.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 10_000.0 / 32_768.0).abs() < 0.02, "peak {peak}");
    }
}
