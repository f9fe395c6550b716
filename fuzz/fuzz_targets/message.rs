//! Fuzz target `message`: texts, doodle JSON, stored payloads and upload chunks of messages beside clips (body in `walkie_fuzz::message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::message(data);
});
