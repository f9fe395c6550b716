//! Fuzz target `clip_ingest`: the relay's upload checks: a clip header, packets and an end marker built from the bytes (body in `walkie_fuzz::clip_ingest`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::clip_ingest(data);
});
