//! The backend contract. A backend takes a planned [`Module`] once
//! (allocating its arena and building kernels/pipelines) and returns an
//! [`Executable`] that runs programs over that arena. The host only moves
//! the batch in and the results it asks for out.

pub mod cpu;

use crate::error::Result;
use crate::graph::plan::{Module, Slot};
use std::sync::Arc;

pub trait Backend {
    /// Human-readable device name (`cpu (2 threads)`, an adapter name...).
    fn name(&self) -> String;
    /// Allocate the arena and prepare every kernel the module launches.
    fn compile(&self, module: Arc<Module>) -> Result<Box<dyn Executable>>;
}

/// A module loaded on a device. `Send`, so a service can own one per worker.
pub trait Executable: Send {
    /// Copy host words into an arena slot (u32 data is passed as its bits).
    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()>;
    /// Copy an arena slot back to the host.
    fn read(&mut self, slot: Slot, out: &mut [f32]) -> Result<()>;
    /// Run program `program` of the module with the runtime scalars in the
    /// module's order.
    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()>;
    /// Zero-copy view of the arena where the backend keeps it in host memory
    /// (the CPU backend); `None` on devices.
    fn host_view(&self, _slot: Slot) -> Option<&[f32]> {
        None
    }
}

/// Which device to run on, as the CLI spells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Wgpu(Option<usize>),
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            crate::Error::Usage(format!(
                "unknown device '{s}' (expected auto, cpu, wgpu[:N] or cuda[:N])"
            ))
        };
        let (kind, idx) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        Ok(match (kind, idx) {
            ("auto", None) => DeviceSpec::Auto,
            ("cpu", None) => DeviceSpec::Cpu,
            ("wgpu", i) => DeviceSpec::Wgpu(i),
            ("cuda", i) => DeviceSpec::Cuda(i.unwrap_or(0)),
            _ => return Err(bad()),
        })
    }
}

/// What `auto` and explicit requests resolve to on this machine.
pub fn select(spec: &DeviceSpec) -> Result<Box<dyn Backend>> {
    match spec {
        DeviceSpec::Auto | DeviceSpec::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        DeviceSpec::Wgpu(_) => Err(crate::Error::Device {
            device: "wgpu".into(),
            detail: "this build has no wgpu backend yet (the WGSL backend is not implemented); use --device cpu".into(),
        }),
        DeviceSpec::Cuda(i) => Err(crate::Error::Device {
            device: format!("cuda:{i}"),
            detail: "this build has no CUDA backend yet (the PTX backend is not implemented); use --device cpu".into(),
        }),
    }
}

/// One line per backend: whether it is usable here and why not.
pub fn describe() -> Vec<(String, bool, String)> {
    vec![
        ("cpu".into(), true, cpu::CpuBackend::new().name()),
        (
            "wgpu".into(),
            false,
            "not built: the WGSL backend is not implemented yet".into(),
        ),
        (
            "cuda".into(),
            false,
            "not built: the CUDA backend is not implemented yet".into(),
        ),
    ]
}
