//! The wgpu adapter every test of this target runs on, and the gate each
//! test passes first: with no adapter the test prints `SKIPPED: <test>: no
//! wgpu adapter (<reason>)` and passes, unless GPURT_REQUIRE_WGPU=1, where
//! it fails.

use gpurt::backend::wgpu::{self, WgpuBackend};
use std::sync::OnceLock;

/// `GPURT_WGPU_ADAPTER=N` runs the suite on adapter N (as `gpurt devices`
/// numbers them), e.g. the GL adapter; by default the best usable one.
fn adapter_index() -> Option<usize> {
    std::env::var("GPURT_WGPU_ADAPTER").ok()?.parse().ok()
}

/// The shared adapter, opened once per test binary (pipelines are cached
/// on it).
fn shared() -> &'static Result<WgpuBackend, String> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    GPU.get_or_init(|| wgpu::open(adapter_index()).map_err(|e| e.to_string()))
}

/// The adapter, or None after printing the SKIPPED line (a failure with
/// GPURT_REQUIRE_WGPU=1). Every test calls this first.
pub fn gpu(test: &str) -> Option<&'static WgpuBackend> {
    match shared() {
        Ok(b) => Some(b),
        Err(e) if std::env::var("GPURT_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("{test}: GPURT_REQUIRE_WGPU=1 but no wgpu adapter: {e}")
        }
        Err(e) => {
            println!("SKIPPED: {test}: no wgpu adapter ({e})");
            None
        }
    }
}
