//! Real audio devices through cpal: listing them, finding one by name, choosing a stream
//! configuration, and the real-time callbacks that move samples through the lock-free ring.
//!
//! # The callbacks never block, lock or allocate
//! The data callbacks below touch only: the SPSC ring ([`RingWriter`]/[`RingReader`], wait-free
//! chunk reads and writes into preallocated storage), atomics ([`CallbackState`]), the
//! seqlock [`Stamp`] (the writer side never waits), integer counters captured by the closure,
//! and `Instant::now()` (a vDSO clock read). No `Mutex`, no `Vec` growth, no channel send, no
//! logging. Sample formats are matched once when the stream is built; the callback is a
//! generic function monomorphised per format. The error callback only bumps atomics (dropping
//! cpal's error value there is the one deallocation, and only on the error path).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::cpal::traits::{DeviceTrait, HostTrait};
use ::cpal::{
    BufferSize, Device, ErrorKind, FromSample, HostId, I24, InputCallbackInfo, OutputCallbackInfo,
    Sample, SampleFormat, SizedSample, Stream, StreamConfig, SupportedBufferSize,
    SupportedStreamConfig, SupportedStreamConfigRange,
};

use super::AudioError;
use super::ring::{RingReader, RingWriter};
use super::stamp::Stamp;

/// The rate walkie prefers to open devices at (no resampling needed).
const PREFERRED_RATE: u32 = 48_000;
/// Requested device period: 10 ms, when the device accepts it.
const PERIOD_MS: u32 = 10;

/// Input (capture) or output (playback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A microphone.
    Input,
    /// A speaker.
    Output,
}

impl Direction {
    /// "input" or "output".
    pub fn name(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// One device as `walkie devices` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The name to pass to `--input-device` / `--output-device` (cpal's id without the host).
    pub name: String,
    /// What the backend says the device is.
    pub description: String,
    /// True for the system default of its direction.
    pub is_default: bool,
    /// Lowest and highest supported sample rate in Hz.
    pub rates: (u32, u32),
    /// Fewest and most channels.
    pub channels: (u16, u16),
}

/// Every usable input and output device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceList {
    /// Capture devices.
    pub inputs: Vec<DeviceInfo>,
    /// Playback devices.
    pub outputs: Vec<DeviceInfo>,
}

/// The configuration a stream was opened with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The cpal host ("PulseAudio", "ALSA", …).
    pub host: String,
    /// The device name (as in [`DeviceInfo::name`]).
    pub device: String,
    /// Device sample rate in Hz.
    pub rate: u32,
    /// Interleaved channels.
    pub channels: u16,
    /// Sample format ("f32", "i16", …).
    pub format: String,
    /// Requested period in frames, if the device accepted a fixed one.
    pub period: Option<u32>,
}

/// State shared between a stream's callbacks and the rest of walkie: atomics only.
#[derive(Debug, Default)]
pub struct CallbackState {
    /// Frames delivered (input) or handed out (output) so far, and when.
    pub stamp: Stamp,
    /// Input: device frames dropped because the ring was full. Output: frames of silence
    /// played because the ring ran dry while audio was expected.
    pub xruns: AtomicU64,
    /// Errors the backend reported (including its own xruns).
    pub errors: AtomicU64,
    /// Set when the backend reports the device gone or the stream invalid.
    pub lost: AtomicBool,
    /// Output: set while no audio is expected (after a flush), so silence is not an underrun.
    pub idle: AtomicBool,
    /// Output: the device's buffer delay from callback to audible, in nanoseconds.
    pub output_delay_ns: AtomicU64,
    /// Output: callbacks so far (the stream is running once they come regularly).
    pub callbacks: AtomicU64,
}

/// Lists every input and output device that can be configured, default first.
pub fn list_devices() -> Result<DeviceList, AudioError> {
    let host = ::cpal::default_host();
    let devices = host.devices().map_err(|source| AudioError::Device {
        context: "cannot list audio devices".into(),
        source,
    })?;
    let default_in = host.default_input_device().and_then(|d| d.id().ok());
    let default_out = host.default_output_device().and_then(|d| d.id().ok());
    let mut list = DeviceList::default();
    for device in devices {
        let id = device.id().ok();
        let name = device_name(&device);
        let description = device
            .description()
            .map(|d| d.name().to_string())
            .unwrap_or_default();
        if let Some((rates, channels)) = device.supported_input_configs().ok().and_then(summarize) {
            let is_default = id.is_some() && id == default_in;
            list.inputs.push(DeviceInfo {
                name: name.clone(),
                description: description.clone(),
                is_default,
                rates,
                channels,
            });
        }
        if let Some((rates, channels)) = device.supported_output_configs().ok().and_then(summarize)
        {
            let is_default = id.is_some() && id == default_out;
            list.outputs.push(DeviceInfo {
                name,
                description,
                is_default,
                rates,
                channels,
            });
        }
    }
    for v in [&mut list.inputs, &mut list.outputs] {
        v.sort_by_key(|d| !d.is_default);
    }
    Ok(list)
}

/// Rate and channel bounds over the ranges in a format walkie can use.
fn summarize(
    ranges: impl Iterator<Item = SupportedStreamConfigRange>,
) -> Option<((u32, u32), (u16, u16))> {
    let usable: Vec<_> = ranges
        .filter(|r| supported_format(r.sample_format()) && r.channels() > 0)
        .collect();
    let rates = (
        usable.iter().map(|r| r.min_sample_rate()).min()?,
        usable.iter().map(|r| r.max_sample_rate()).max()?,
    );
    let channels = (
        usable.iter().map(|r| r.channels()).min()?,
        usable.iter().map(|r| r.channels()).max()?,
    );
    Some((rates, channels))
}

impl fmt::Display for DeviceList {
    /// One line per device: `input  * default  (rates 1-384000 Hz, 1-32 ch)  PulseAudio …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|d| d.name.len())
            .max()
            .unwrap_or(0);
        for (kind, devices) in [("input ", &self.inputs), ("output", &self.outputs)] {
            for d in devices {
                let mark = if d.is_default { '*' } else { ' ' };
                let (r0, r1) = d.rates;
                let rates = if r0 == r1 {
                    format!("{r0}")
                } else {
                    format!("{r0}-{r1}")
                };
                let (c0, c1) = d.channels;
                let ch = if c0 == c1 {
                    format!("{c0}")
                } else {
                    format!("{c0}-{c1}")
                };
                writeln!(
                    f,
                    "{kind} {mark} {:width$}  (rates {rates} Hz, {ch} ch)  {}",
                    d.name, d.description
                )?;
            }
        }
        Ok(())
    }
}

/// The user-facing name of a device: its cpal id without the host prefix.
fn device_name(device: &Device) -> String {
    match device.id() {
        Ok(id) => id.id().to_string(),
        Err(_) => device.to_string(),
    }
}

/// Finds a device by name (id with or without the host prefix, or description; case
/// insensitive), or the default device when `name` is `None`. Returns it with its name and
/// its host. `HOST:NAME` (e.g. `alsa:default`) reaches a host other than the default one.
pub fn find_device(
    direction: Direction,
    name: Option<&str>,
) -> Result<(Device, String, HostId), AudioError> {
    let host = ::cpal::default_host();
    let kind = direction.name();
    let Some(wanted) = name else {
        let device = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        let device = device.ok_or(AudioError::NoDefaultDevice { kind })?;
        let name = device_name(&device);
        return Ok((device, name, host.id()));
    };
    let other_host = wanted
        .split_once(':')
        .and_then(|(h, _)| h.parse::<HostId>().ok())
        .filter(|id| *id != host.id() && ::cpal::available_hosts().contains(id))
        .and_then(|id| ::cpal::host_from_id(id).ok());
    let host = other_host.unwrap_or(host);
    let devices = host.devices().map_err(|source| AudioError::Device {
        context: format!("cannot list {kind} devices"),
        source,
    })?;
    let mut available = Vec::new();
    for device in devices {
        let usable = match direction {
            Direction::Input => device.supports_input(),
            Direction::Output => device.supports_output(),
        };
        if !usable {
            continue;
        }
        let short = device_name(&device);
        let full = device.id().map(|id| id.to_string()).unwrap_or_default();
        let description = device
            .description()
            .map(|d| d.name().to_string())
            .unwrap_or_default();
        if [&short, &full, &description]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(wanted))
        {
            return Ok((device, short, host.id()));
        }
        available.push(short);
    }
    Err(AudioError::NoDevice {
        kind,
        name: wanted.to_string(),
        available,
    })
}

/// True for the sample formats the callbacks handle.
fn supported_format(format: SampleFormat) -> bool {
    use SampleFormat as F;
    matches!(
        format,
        F::F32 | F::F64 | F::I8 | F::I16 | F::I24 | F::I32 | F::U8 | F::U16 | F::U32
    )
}

/// Picks a stream configuration: the device's default format and channel count, at 48 kHz
/// when the device offers it (else its default rate), with a 10 ms period when accepted.
pub fn choose_config(
    device: &Device,
    name: &str,
    direction: Direction,
) -> Result<(StreamConfig, SampleFormat), AudioError> {
    let ctx = |what: &str| {
        format!(
            "cannot read the {what} of {} device {name:?}",
            direction.name()
        )
    };
    let (default, ranges): (SupportedStreamConfig, Vec<SupportedStreamConfigRange>) =
        match direction {
            Direction::Input => (
                device
                    .default_input_config()
                    .map_err(|source| AudioError::Device {
                        context: ctx("default configuration"),
                        source,
                    })?,
                device
                    .supported_input_configs()
                    .map_err(|source| AudioError::Device {
                        context: ctx("configurations"),
                        source,
                    })?
                    .collect(),
            ),
            Direction::Output => (
                device
                    .default_output_config()
                    .map_err(|source| AudioError::Device {
                        context: ctx("default configuration"),
                        source,
                    })?,
                device
                    .supported_output_configs()
                    .map_err(|source| AudioError::Device {
                        context: ctx("configurations"),
                        source,
                    })?
                    .collect(),
            ),
        };
    let same_shape = |r: &SupportedStreamConfigRange| {
        r.sample_format() == default.sample_format() && r.channels() == default.channels()
    };
    let chosen = if supported_format(default.sample_format()) {
        ranges
            .iter()
            .filter(|r| same_shape(r))
            .find_map(|r| r.try_with_sample_rate(PREFERRED_RATE))
            .unwrap_or(default)
    } else {
        // The default format is exotic: take any range in a format we handle.
        let range = ranges
            .iter()
            .find(|r| supported_format(r.sample_format()) && r.channels() > 0)
            .ok_or_else(|| AudioError::Unsupported {
                name: name.into(),
                reason: format!(
                    "no supported sample format (default is {})",
                    default.sample_format()
                ),
            })?;
        range
            .try_with_sample_rate(PREFERRED_RATE)
            .unwrap_or_else(|| {
                range
                    .try_with_sample_rate(range.max_sample_rate())
                    .unwrap_or(default)
            })
    };
    if chosen.channels() == 0 || chosen.sample_rate() == 0 {
        return Err(AudioError::Unsupported {
            name: name.into(),
            reason: "it reports zero channels or a zero sample rate".into(),
        });
    }
    let mut config = chosen.config();
    let period = chosen.sample_rate() * PERIOD_MS / 1000;
    if let SupportedBufferSize::Range { min, max } = *chosen.buffer_size()
        && (min..=max).contains(&period)
    {
        config.buffer_size = BufferSize::Fixed(period);
    }
    Ok((config, chosen.sample_format()))
}

/// Describes an opened configuration.
pub fn stream_info(
    host: HostId,
    device: &str,
    config: &StreamConfig,
    format: SampleFormat,
) -> StreamInfo {
    let period = match config.buffer_size {
        BufferSize::Fixed(n) => Some(n),
        BufferSize::Default => None,
    };
    StreamInfo {
        host: host.name().into(),
        device: device.into(),
        rate: config.sample_rate,
        channels: config.channels,
        format: format.to_string(),
        period,
    }
}

/// The error callback: counts errors and flags a lost device. Atomics only.
fn on_error(state: Arc<CallbackState>) -> impl FnMut(::cpal::Error) + Send + 'static {
    move |e| {
        state.errors.fetch_add(1, Ordering::Relaxed);
        if matches!(
            e.kind(),
            ErrorKind::DeviceNotAvailable
                | ErrorKind::StreamInvalidated
                | ErrorKind::HostUnavailable
        ) {
            state.lost.store(true, Ordering::Release);
        }
    }
}

/// Builds (paused) an input stream that writes device frames into `ring`.
pub fn build_input(
    device: &Device,
    name: &str,
    config: StreamConfig,
    format: SampleFormat,
    ring: RingWriter,
    state: Arc<CallbackState>,
) -> Result<Stream, AudioError> {
    use SampleFormat as F;
    let built = match format {
        F::F32 => input_stream::<f32>(device, config, ring, state),
        F::F64 => input_stream::<f64>(device, config, ring, state),
        F::I8 => input_stream::<i8>(device, config, ring, state),
        F::I16 => input_stream::<i16>(device, config, ring, state),
        F::I24 => input_stream::<I24>(device, config, ring, state),
        F::I32 => input_stream::<i32>(device, config, ring, state),
        F::U8 => input_stream::<u8>(device, config, ring, state),
        F::U16 => input_stream::<u16>(device, config, ring, state),
        F::U32 => input_stream::<u32>(device, config, ring, state),
        other => {
            return Err(AudioError::Unsupported {
                name: name.into(),
                reason: format!("sample format {other}"),
            });
        }
    };
    built.map_err(|source| AudioError::Device {
        context: format!("cannot open input device {name:?}"),
        source,
    })
}

fn input_stream<T>(
    device: &Device,
    config: StreamConfig,
    mut ring: RingWriter,
    state: Arc<CallbackState>,
) -> Result<Stream, ::cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let shared = state.clone();
    let mut delivered = 0u64;
    let data = move |data: &[T], info: &InputCallbackInfo| {
        // Real time: ring, atomics, a clock read. See the module doc.
        let written = ring.push_frames(data, channels, f32::from_sample);
        let dropped = (data.len() - written) / channels;
        if dropped > 0 {
            shared.xruns.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        delivered += (written / channels) as u64;
        let ts = info.timestamp();
        let age = ts.callback.duration_since(ts.capture);
        let now = Instant::now();
        shared
            .stamp
            .store(delivered, now.checked_sub(age).unwrap_or(now));
    };
    device.build_input_stream::<T, _, _>(config, data, on_error(state), None)
}

/// Builds (paused) an output stream that plays mono samples from `ring` on every channel.
pub fn build_output(
    device: &Device,
    name: &str,
    config: StreamConfig,
    format: SampleFormat,
    ring: RingReader,
    state: Arc<CallbackState>,
) -> Result<Stream, AudioError> {
    use SampleFormat as F;
    let built = match format {
        F::F32 => output_stream::<f32>(device, config, ring, state),
        F::F64 => output_stream::<f64>(device, config, ring, state),
        F::I8 => output_stream::<i8>(device, config, ring, state),
        F::I16 => output_stream::<i16>(device, config, ring, state),
        F::I24 => output_stream::<I24>(device, config, ring, state),
        F::I32 => output_stream::<i32>(device, config, ring, state),
        F::U8 => output_stream::<u8>(device, config, ring, state),
        F::U16 => output_stream::<u16>(device, config, ring, state),
        F::U32 => output_stream::<u32>(device, config, ring, state),
        other => {
            return Err(AudioError::Unsupported {
                name: name.into(),
                reason: format!("sample format {other}"),
            });
        }
    };
    built.map_err(|source| AudioError::Device {
        context: format!("cannot open output device {name:?}"),
        source,
    })
}

fn output_stream<T>(
    device: &Device,
    config: StreamConfig,
    mut ring: RingReader,
    state: Arc<CallbackState>,
) -> Result<Stream, ::cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels.max(1));
    let shared = state.clone();
    let mut handed = 0u64;
    let data = move |data: &mut [T], info: &OutputCallbackInfo| {
        // Real time: ring, atomics, a clock read. See the module doc.
        let frames = data.len() / channels;
        shared.callbacks.fetch_add(1, Ordering::Release);
        let got = ring.pop_to_frames(data, channels, |s: f32| T::from_sample(s.clamp(-1.0, 1.0)));
        data[got * channels..].fill(T::EQUILIBRIUM);
        if got < frames && !shared.idle.load(Ordering::Acquire) {
            shared
                .xruns
                .fetch_add((frames - got) as u64, Ordering::Relaxed);
        }
        if got > 0 {
            handed += got as u64;
            let ts = info.timestamp();
            let delay = ts.playback.duration_since(ts.callback);
            shared.output_delay_ns.store(
                u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            shared.stamp.store(handed, Instant::now());
        }
    };
    device.build_output_stream::<T, _, _>(config, data, on_error(state), None)
}

/// The output delay last reported by a stream, as a duration.
pub fn output_delay(state: &CallbackState) -> Duration {
    Duration::from_nanos(state.output_delay_ns.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, default: bool) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            description: "Some device".into(),
            is_default: default,
            rates: (8_000, 192_000),
            channels: (1, 2),
        }
    }

    #[test]
    fn display_prints_one_line_per_device_with_the_default_marked() {
        let list = DeviceList {
            inputs: vec![
                info("pulse", true),
                DeviceInfo {
                    rates: (48_000, 48_000),
                    channels: (2, 2),
                    ..info("hw:0", false)
                },
            ],
            outputs: vec![info("pulse", true)],
        };
        let text = list.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "input  * pulse  (rates 8000-192000 Hz, 1-2 ch)  Some device"
        );
        assert_eq!(
            lines[1],
            "input    hw:0   (rates 48000 Hz, 2 ch)  Some device"
        );
        assert!(lines[2].starts_with("output * pulse"));
    }

    #[test]
    fn summaries_skip_unusable_formats() {
        let r = |ch, lo, hi, f| {
            SupportedStreamConfigRange::new(ch, lo, hi, SupportedBufferSize::Unknown, f)
        };
        let got = summarize(
            vec![
                r(1, 8_000, 48_000, SampleFormat::I16),
                r(6, 4_000, 384_000, SampleFormat::DsdU8),
            ]
            .into_iter(),
        );
        assert_eq!(got, Some(((8_000, 48_000), (1, 1))));
        assert_eq!(summarize(std::iter::empty()), None);
    }
}
