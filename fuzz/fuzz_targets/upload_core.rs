//! Fuzz target `upload_core`: the relay's upload state machine driven by a hostile clip stream (body in `walkie_fuzz::upload_core`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::upload_core(data);
});
