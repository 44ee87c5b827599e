//! The CUDA backend: hand-written kernels (kernels/*.cu) compiled ahead of
//! time to PTX, embedded in the binary and loaded through cudarc with the
//! driver library opened at run time, so building gpurt needs neither the
//! CUDA toolkit nor a GPU.
//!
//! - [`plan`] lowers a module's launches to kernel calls once (pure, tested
//!   without a GPU), with the argument encoders of `layout`; [`ptx`] holds
//!   the embedded PTX and its signatures; [`args`] is the call format.
//! - [`device`] probes the driver without panicking, allocates one arena
//!   and scratch buffers per compiled module, loads each PTX module once,
//!   launches on one stream per device with checked errors, and captures
//!   each program as a CUDA graph after its first good run.
//!
//! The PTX is ISA 8.0 for sm_80 (NVRTC 12.0): it loads on any CUDA 12 or
//! 13 driver (R525 or newer) and any Ampere or newer GPU.
//!
//! Environment: `GPURT_CUDA_GRAPH=0` launches kernel by kernel instead of
//! replaying graphs; `GPURT_CUDA_SYNC=1` synchronizes after every launch so
//! an error names the kernel that caused it.

pub mod args;
mod dense;
pub mod device;
mod layout;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod plan;
pub mod ptx;
mod reduce;

use crate::backend::{Backend, Executable};
use crate::error::{Error, Result};
use crate::graph::plan::Module;
use std::sync::Arc;

pub use device::CudaExecutable;
#[cfg(feature = "nccl")]
pub use nccl::self_test as nccl_self_test;

/// One CUDA device.
pub struct CudaBackend {
    dev: Arc<device::Device>,
}

impl CudaBackend {
    /// Compile to the concrete executable (benchmarks use its timing).
    pub fn compile_cuda(&self, module: Arc<Module>) -> Result<CudaExecutable> {
        device::compile(&self.dev, module)
    }
    /// Streaming multiprocessors of the device.
    pub fn sms(&self) -> u32 {
        self.dev.sms
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("{} {}", self.dev.label(), self.dev.summary())
    }

    fn compile(&self, module: Arc<Module>) -> Result<Box<dyn Executable>> {
        Ok(Box::new(self.compile_cuda(module)?))
    }
}

/// Open CUDA device `index`; the error says in one line why it cannot be
/// used (no driver, too old a driver, no such device, too old a GPU).
pub fn open(index: usize) -> Result<CudaBackend> {
    device::probe(index).map(|d| CudaBackend { dev: Arc::new(d) })
}

/// Why CUDA cannot be used here, or None when device 0 opens.
pub fn unavailable() -> Option<String> {
    device::probe(0).err().map(reason)
}

/// The reason alone, for a device listing.
fn reason(e: Error) -> String {
    match e {
        Error::Unavailable { detail, .. } => detail,
        other => other.to_string(),
    }
}

/// One line per CUDA device, or one line saying why there is none.
pub fn describe() -> Vec<(String, bool, String)> {
    let first = match device::probe(0) {
        Ok(d) => d,
        Err(why) => return vec![("cuda".into(), false, reason(why))],
    };
    let count = cudarc::driver::CudaContext::device_count()
        .unwrap_or(1)
        .max(1) as usize;
    let mut v = vec![(first.label(), true, first.summary())];
    for i in 1..count {
        v.push(match device::probe(i) {
            Ok(d) => (d.label(), true, d.summary()),
            Err(why) => (format!("cuda:{i}"), false, reason(why)),
        });
    }
    v
}
