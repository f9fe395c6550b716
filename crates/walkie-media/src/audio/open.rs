//! The name table that opens an audio backend from a spec: a real device (cpal, with the
//! `devices` feature), a WAV file, or nothing. Tests and headless runs use the WAV and null
//! backends.
//!
//! | spec | source ([`open_source`]) | sink ([`open_sink`]) |
//! |---|---|---|
//! | none, `default` | the default input device | the default output device |
//! | `NAME` | the input device `NAME` (see `walkie devices`) | the output device `NAME` |
//! | `null` | endless silence, in real time | discards audio, in real time |
//! | `wav:PATH` | the file's audio, in real time, then the end | — |

use std::path::Path;

use super::AudioError;
use super::null::{NullSink, NullSource};
use super::sink::AudioSink;
use super::source::AudioSource;
pub use super::source::CaptureConfig;
use super::wav_source::WavSource;

/// Opens a source by spec (see the module table).
pub fn open_source(
    spec: Option<&str>,
    cfg: CaptureConfig,
) -> Result<Box<dyn AudioSource>, AudioError> {
    match spec {
        Some("null") => Ok(Box::new(NullSource::new(true))),
        Some(s) if s.starts_with("wav:") => {
            Ok(Box::new(WavSource::open(Path::new(&s[4..]), true)?))
        }
        Some("default") | None => device_source(None, cfg),
        Some(name) => device_source(Some(name), cfg),
    }
}

/// Opens a sink by spec (see the module table).
pub fn open_sink(spec: Option<&str>) -> Result<Box<dyn AudioSink>, AudioError> {
    match spec {
        Some("null") => Ok(Box::new(NullSink::realtime())),
        Some("default") | None => device_sink(None),
        Some(name) => device_sink(Some(name)),
    }
}

#[cfg(feature = "devices")]
fn device_source(
    name: Option<&str>,
    cfg: CaptureConfig,
) -> Result<Box<dyn AudioSource>, AudioError> {
    Ok(Box::new(super::capture::Capture::open(name, cfg)?))
}

#[cfg(feature = "devices")]
fn device_sink(name: Option<&str>) -> Result<Box<dyn AudioSink>, AudioError> {
    Ok(Box::new(super::speaker::Speaker::open(name)?))
}

#[cfg(not(feature = "devices"))]
fn device_source(
    _name: Option<&str>,
    _cfg: CaptureConfig,
) -> Result<Box<dyn AudioSource>, AudioError> {
    Err(AudioError::NoDevices)
}

#[cfg(not(feature = "devices"))]
fn device_sink(_name: Option<&str>) -> Result<Box<dyn AudioSink>, AudioError> {
    Err(AudioError::NoDevices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::source::{FRAME_SAMPLES, Pull};
    use std::time::Duration;

    #[test]
    fn the_name_table_opens_null_and_wav_backends() {
        let mut src = open_source(Some("null"), CaptureConfig::default()).unwrap();
        assert!(
            matches!(src.next_frame(Duration::from_secs(1)).unwrap(), Pull::Frame(f) if f.samples.len() == FRAME_SAMPLES)
        );
        let wav = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/hello-crew.wav");
        let mut src = open_source(
            Some(&format!("wav:{}", wav.display())),
            CaptureConfig::default(),
        )
        .unwrap();
        assert!(matches!(
            src.next_frame(Duration::from_secs(1)).unwrap(),
            Pull::Frame(_)
        ));
        assert!(open_source(Some("wav:/no/such.wav"), CaptureConfig::default()).is_err());
        let mut sink = open_sink(Some("null")).unwrap();
        sink.play(&[0.0; 480]).unwrap();
        assert_eq!(sink.written(), 480);
    }
}
