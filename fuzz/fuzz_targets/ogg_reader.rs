//! Fuzz target `ogg_reader`: the Ogg Opus reader: arbitrary bytes through read_ogg, then a bounded decode of what it accepted (body in `walkie_fuzz::ogg_reader`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::ogg_reader(data);
});
