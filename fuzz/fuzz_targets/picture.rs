//! Fuzz target `picture`: arbitrary bytes through the relay's picture intake (body in `walkie_fuzz::picture`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::picture(data);
});
