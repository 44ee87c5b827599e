//! The CUDA backend (embedded PTX through cudarc). Not implemented yet.

use crate::error::{Error, Result};

pub struct CudaBackend;

impl crate::backend::Backend for CudaBackend {
    fn name(&self) -> String {
        "cuda".into()
    }
    fn compile(
        &self,
        _module: std::sync::Arc<crate::graph::plan::Module>,
    ) -> Result<Box<dyn crate::backend::Executable>> {
        Err(Error::Device {
            device: "cuda".into(),
            detail: "not implemented".into(),
        })
    }
}

pub fn open(index: usize) -> Result<CudaBackend> {
    Err(Error::Device {
        device: format!("cuda:{index}"),
        detail: "the CUDA backend is not implemented yet".into(),
    })
}

pub fn describe() -> Vec<(String, bool, String)> {
    vec![(
        "cuda".into(),
        false,
        "the CUDA backend is not implemented yet".into(),
    )]
}
