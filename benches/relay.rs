//! Relay load benchmark (work in progress).
fn main() {}
