//! The wgpu backend (WGSL compute shaders). Not implemented yet.

use crate::error::{Error, Result};

pub struct WgpuBackend;

impl crate::backend::Backend for WgpuBackend {
    fn name(&self) -> String {
        "wgpu".into()
    }
    fn compile(
        &self,
        _module: std::sync::Arc<crate::graph::plan::Module>,
    ) -> Result<Box<dyn crate::backend::Executable>> {
        Err(Error::Device {
            device: "wgpu".into(),
            detail: "not implemented".into(),
        })
    }
}

/// Open adapter `index` (or the first usable one).
pub fn open(_index: Option<usize>) -> Result<WgpuBackend> {
    Err(Error::Device {
        device: "wgpu".into(),
        detail: "the WGSL backend is not implemented yet".into(),
    })
}

/// A hardware (non-CPU) adapter for `--device auto`, if there is one.
pub fn open_hardware() -> Option<WgpuBackend> {
    None
}

pub fn describe() -> Vec<(String, bool, String)> {
    vec![(
        "wgpu".into(),
        false,
        "the WGSL backend is not implemented yet".into(),
    )]
}
