//! Fuzz target `live_datagram`: live datagrams as a relay or listener decodes them, and the relay's fast path fed their packets (body in `walkie_fuzz::live_datagram`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    walkie_fuzz::live_datagram(data);
});
