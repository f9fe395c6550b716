//! Fuzz target `wire_frames`: the wire decoder: arbitrary bytes as ClientMsg, ServerMsg and StreamFrame frame streams, whole and in pieces (body in `walkie_fuzz::wire_frames`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::wire_frames(data);
});
