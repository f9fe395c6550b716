//! Fuzz target `wav_reader`: the WAV reader: arbitrary bytes through read_wav_bytes, then mixing to mono and resampling short signals (body in `walkie_fuzz::wav_reader`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::wav_reader(data);
});
