//! WAV files in and out (hound): any 8/16/24/32-bit integer or 32-bit float mono/stereo file in, 16-bit mono out.

use std::io::Read;
use std::path::Path;

use hound::{SampleFormat, WavReader, WavSpec, WavWriter};

use super::{AudioError, MAX_RATE, MIN_RATE, Pcm};

/// Reads a WAV file into interleaved `f32` PCM. Errors name the file.
pub fn read_wav(path: &Path) -> Result<Pcm, AudioError> {
    let name = path.display().to_string();
    let reader = WavReader::open(path).map_err(|source| AudioError::ReadWav {
        name: name.clone(),
        source,
    })?;
    read_from(reader, &name)
}

/// The length of a WAV file from its header, in milliseconds, without reading its samples.
pub fn duration_ms(path: &Path) -> Result<u64, AudioError> {
    let name = path.display().to_string();
    let reader = WavReader::open(path).map_err(|source| AudioError::ReadWav {
        name: name.clone(),
        source,
    })?;
    let spec = reader.spec();
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(AudioError::Rate {
            name,
            rate: spec.sample_rate,
        });
    }
    Ok(u64::from(reader.duration()) * 1000 / u64::from(spec.sample_rate))
}

/// Reads a WAV file held in memory into interleaved `f32` PCM.
pub fn read_wav_bytes(bytes: &[u8]) -> Result<Pcm, AudioError> {
    let name = "(in-memory WAV)";
    let reader = WavReader::new(bytes).map_err(|source| AudioError::ReadWav {
        name: name.into(),
        source,
    })?;
    read_from(reader, name)
}

/// Writes mono samples as a 16-bit WAV file, clamping them to -1..1.
pub fn write_wav_mono16(path: &Path, sample_rate: u32, samples: &[f32]) -> Result<(), AudioError> {
    let err = |source| AudioError::WriteWav {
        path: path.display().to_string(),
        source,
    };
    let spec = WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut w = WavWriter::create(path, spec).map_err(err)?;
    for &s in samples {
        w.write_sample(to_i16(s)).map_err(err)?;
    }
    w.finalize().map_err(err)
}

/// Converts a float sample to 16-bit, clamping to the representable range.
fn to_i16(s: f32) -> i16 {
    let s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
    (s * 32_767.0).round() as i16
}

/// Checks the header and reads every sample of an open reader.
fn read_from<R: Read>(mut reader: WavReader<R>, name: &str) -> Result<Pcm, AudioError> {
    let spec = reader.spec();
    if !(1..=2).contains(&spec.channels) {
        return Err(AudioError::Channels {
            name: name.into(),
            channels: spec.channels,
        });
    }
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(AudioError::Rate {
            name: name.into(),
            rate: spec.sample_rate,
        });
    }
    let read_err = |source| AudioError::ReadWav {
        name: name.into(),
        source,
    };
    // The header's length is a claim, not a promise: cap the up-front allocation.
    let mut samples = Vec::with_capacity((reader.len() as usize).min(1 << 22));
    match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => {
            for s in reader.samples::<f32>() {
                let s = s.map_err(read_err)?;
                // Out-of-range floats (up to f32::MAX) would overflow mixing and the resampler's FFT.
                samples.push(if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                });
            }
        }
        (SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            for s in reader.samples::<i32>() {
                samples.push((f64::from(s.map_err(read_err)?) * scale) as f32);
            }
        }
        (format, bits) => {
            let format = if format == SampleFormat::Float {
                "float"
            } else {
                "integer"
            };
            return Err(AudioError::Format {
                name: name.into(),
                bits,
                format,
            });
        }
    }
    Ok(Pcm {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        samples,
    })
}

/// Writes interleaved 16-bit samples as a WAV file: a fixture for tests across the crate.
#[cfg(test)]
pub(crate) fn write_i16_wav(path: &Path, sample_rate: u32, channels: u16, samples: &[i16]) {
    let spec = WavSpec {
        channels,
        sample_rate,
        bits_per_sample: 16,
        sample_format: SampleFormat::Int,
    };
    let mut w = WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(channels: u16, rate: u32, bits: u16, format: SampleFormat) -> WavSpec {
        WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        }
    }

    fn wav_bytes(
        spec: WavSpec,
        write: impl FnOnce(&mut WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = WavWriter::new(std::io::Cursor::new(&mut buf), spec).unwrap();
        write(&mut w);
        w.finalize().unwrap();
        buf
    }

    #[test]
    fn reads_16_and_24_bit_integer_files() {
        let dir = tempfile::tempdir().unwrap();
        let p16 = dir.path().join("a16.wav");
        write_i16_wav(&p16, 16_000, 1, &[0, 16_384, -32_768, 32_767]);
        let pcm = read_wav(&p16).unwrap();
        assert_eq!((pcm.sample_rate, pcm.channels), (16_000, 1));
        assert_eq!(pcm.samples, vec![0.0, 0.5, -1.0, 32_767.0 / 32_768.0]);

        let p24 = dir.path().join("a24.wav");
        let mut w = WavWriter::create(&p24, spec(1, 44_100, 24, SampleFormat::Int)).unwrap();
        for v in [0i32, 1 << 22, -(1 << 23)] {
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        assert_eq!(read_wav(&p24).unwrap().samples, vec![0.0, 0.5, -1.0]);
    }

    #[test]
    fn reads_float_stereo_and_8_bit_files() {
        let bytes = wav_bytes(spec(2, 48_000, 32, SampleFormat::Float), |w| {
            for v in [0.25f32, -0.25, 1.0, -1.0] {
                w.write_sample(v).unwrap();
            }
        });
        let pcm = read_wav_bytes(&bytes).unwrap();
        assert_eq!((pcm.sample_rate, pcm.channels), (48_000, 2));
        assert_eq!(pcm.samples, vec![0.25, -0.25, 1.0, -1.0]);

        let bytes = wav_bytes(spec(1, 8_000, 8, SampleFormat::Int), |w| {
            for v in [0i8, 64, -128] {
                w.write_sample(v).unwrap();
            }
        });
        assert_eq!(
            read_wav_bytes(&bytes).unwrap().samples,
            vec![0.0, 0.5, -1.0]
        );
    }

    #[test]
    fn refuses_four_channels_and_odd_rates() {
        let four = wav_bytes(spec(4, 16_000, 16, SampleFormat::Int), |w| {
            for _ in 0..8 {
                w.write_sample(0i16).unwrap();
            }
        });
        let err = read_wav_bytes(&four).unwrap_err().to_string();
        assert!(err.contains("4 channels"), "{err}");
        let slow = wav_bytes(spec(1, 4_000, 16, SampleFormat::Int), |w| {
            w.write_sample(0i16).unwrap()
        });
        let err = read_wav_bytes(&slow).unwrap_err().to_string();
        assert!(err.contains("4000 Hz"), "{err}");
        let fast = wav_bytes(spec(1, 192_000, 16, SampleFormat::Int), |w| {
            w.write_sample(0i16).unwrap()
        });
        assert!(matches!(
            read_wav_bytes(&fast),
            Err(AudioError::Rate { rate: 192_000, .. })
        ));
    }

    #[test]
    fn bad_and_truncated_bytes_error_cleanly() {
        assert!(read_wav_bytes(b"").is_err());
        assert!(read_wav_bytes(b"RIFF\x10\0\0\0WAVEjunkjunkjunk").is_err());
        let good = wav_bytes(spec(1, 16_000, 16, SampleFormat::Int), |w| {
            for i in 0..100 {
                w.write_sample(i as i16).unwrap();
            }
        });
        assert!(read_wav_bytes(&good[..good.len() - 7]).is_err());
        assert!(read_wav_bytes(&good[..30]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.wav");
        let err = read_wav(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.wav"), "{err}");
    }

    #[test]
    fn writes_clamped_16_bit_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        write_wav_mono16(&path, 48_000, &[0.0, 0.5, 2.0, -2.0, f32::NAN]).unwrap();
        let mut r = WavReader::open(&path).unwrap();
        assert_eq!(r.spec(), spec(1, 48_000, 16, SampleFormat::Int));
        let got: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
        assert_eq!(got, vec![0, 16_384, 32_767, -32_767, 0]);
        let err =
            write_wav_mono16(&dir.path().join("no/such/dir.wav"), 48_000, &[0.0]).unwrap_err();
        assert!(err.to_string().contains("dir.wav"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_wav_bytes(&bytes);
            let mut riff = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
            riff.extend_from_slice(&bytes);
            let _ = read_wav_bytes(&riff);
        }
    }
}
