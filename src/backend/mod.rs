//! The backend contract. A backend takes a planned [`Module`] once
//! (allocating its arena and building kernels/pipelines) and returns an
//! [`Executable`] that runs programs over that arena. The host only moves
//! the batch in and the results it asks for out.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::graph::fuse::FuseExtras;
use crate::graph::plan::{Module, Slot};
use std::sync::Arc;

/// The error of a GPU backend given a conv2d with a fused max pool: the
/// `conv_max_pool` rule is only applied for backends that ask for it.
pub(crate) fn no_fused_pool(device: &str) -> Error {
    Error::Device {
        device: device.into(),
        detail: "no kernel for conv2d with a fused max pool: build the module with this \
                 backend's fuse_extras"
            .into(),
    }
}

pub trait Backend {
    /// Human-readable device name (`cpu (2 threads, avx512)`, an adapter
    /// name...).
    fn name(&self) -> String;
    /// The fusion rules beyond the common ones that this backend has
    /// kernels for; a module built for it may use them.
    fn fuse_extras(&self) -> FuseExtras {
        FuseExtras::default()
    }
    /// The CPU backend: kernels run on the host's cores, so a run's time
    /// grows with every example of a batch, padding included, and a
    /// module compiles in microseconds.
    fn is_cpu(&self) -> bool {
        false
    }
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
    /// Wait until every run asked for has finished (runs may return before
    /// the device is done; reads always wait). For timing.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Device time of each dispatch of one run of `program`, as (kernel
    /// name, seconds) in order, where the device has timers (wgpu's
    /// timestamp queries); `None` elsewhere.
    fn kernel_times(
        &mut self,
        _program: usize,
        _scalars: &[f32],
    ) -> Result<Option<Vec<(&'static str, f64)>>> {
        Ok(None)
    }
    /// Zero-copy view of the arena where the backend keeps it in host memory
    /// (the CPU backend); `None` on devices.
    fn host_view(&self, _slot: Slot) -> Option<&[f32]> {
        None
    }
    /// Sum the words of `slot` across the ranks of `group`, in place (a
    /// data-parallel step's gradients). By default through host memory
    /// (`staging`, kept by the caller from step to step); the CPU backend
    /// reduces its arena where it lies.
    fn all_reduce(
        &mut self,
        slot: Slot,
        group: &dyn Collective,
        staging: &mut Vec<f32>,
    ) -> Result<()> {
        host_all_reduce(self, slot, group, staging)
    }
}

/// [`Executable::all_reduce`] through host memory: read, sum, write back.
pub fn host_all_reduce<E: Executable + ?Sized>(
    exe: &mut E,
    slot: Slot,
    group: &dyn Collective,
    staging: &mut Vec<f32>,
) -> Result<()> {
    if group.world() <= 1 {
        return Ok(());
    }
    staging.resize(slot.len, 0.0);
    exe.read(slot, staging)?;
    group.all_reduce_sum(staging)?;
    exe.write(slot, staging)
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

/// What `auto` and explicit requests resolve to on this machine. `auto`
/// prefers a CUDA device, then a hardware wgpu adapter, then the CPU; it
/// never picks a software GPU adapter over the CPU backend.
pub fn select(spec: &DeviceSpec) -> Result<Box<dyn Backend>> {
    match spec {
        DeviceSpec::Cpu => Ok(Box::new(cpu::CpuBackend::new())),
        DeviceSpec::Auto => {
            #[cfg(feature = "cuda")]
            if let Ok(b) = cuda::open(0) {
                return Ok(Box::new(b));
            }
            #[cfg(feature = "wgpu")]
            if let Some(b) = wgpu::open_hardware() {
                return Ok(Box::new(b));
            }
            Ok(Box::new(cpu::CpuBackend::new()))
        }
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(i) => Ok(Box::new(wgpu::open(*i)?)),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => Ok(Box::new(cuda::open(*i)?)),
        #[allow(unreachable_patterns)]
        other => Err(crate::Error::Unavailable {
            device: format!("{other:?}").to_lowercase(),
            detail: "this gpurt was built without that backend (cargo features `wgpu`, `cuda`)"
                .into(),
        }),
    }
}

/// One line per backend: name, whether it is usable here, and details
/// (adapters found, or why not).
pub fn describe() -> Vec<(String, bool, String)> {
    let mut v = vec![("cpu".to_string(), true, cpu::CpuBackend::new().name())];
    #[cfg(feature = "wgpu")]
    v.extend(wgpu::describe());
    #[cfg(not(feature = "wgpu"))]
    v.push((
        "wgpu".into(),
        false,
        "not built (cargo feature `wgpu`)".into(),
    ));
    #[cfg(feature = "cuda")]
    v.extend(cuda::describe());
    #[cfg(not(feature = "cuda"))]
    v.push((
        "cuda".into(),
        false,
        "not built (cargo feature `cuda`)".into(),
    ));
    v
}
