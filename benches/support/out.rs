//! Where the benchmarks write their reports and charts.

use std::path::{Path, PathBuf};

/// `WALKIE_BENCH_OUT` when set, else `walkie-bench` in the cargo target directory
/// (`CARGO_TARGET_DIR`, or `target` beside the manifest).
pub fn out_dir() -> PathBuf {
    if let Ok(d) = std::env::var("WALKIE_BENCH_OUT") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("walkie-bench")
}
