//! Adapter discovery and device creation. Backends come from the
//! environment (`WGPU_BACKEND`, as wgpu reads it), so a user can force
//! Vulkan, GL, Metal or DX12; adapters are indexed in
//! `Instance::enumerate_adapters` order, which `describe` prints and
//! `--device wgpu:N` selects.

use crate::error::{Error, Result};
use ::wgpu::{
    Adapter, AdapterInfo, Backends, Device, DeviceType, DownlevelFlags, Features, Instance,
    InstanceDescriptor, Queue,
};

/// Workgroup memory the kernels declare at most (GEMM tiles + reduction).
const WORKGROUP_BYTES: u32 = 2 * 1024 * 4 + 256 * 4;

pub struct Found {
    pub adapters: Vec<Adapter>,
    pub backends: Backends,
}

pub fn device_error(detail: impl Into<String>) -> Error {
    Error::Device {
        device: "wgpu".into(),
        detail: detail.into(),
    }
}

/// Every adapter of the backends the environment allows. wgpu may panic
/// deep in a broken driver stack; that becomes "no adapters".
pub fn enumerate() -> Found {
    let desc = InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    let adapters = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let instance = Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
    }))
    .unwrap_or_default();
    Found { adapters, backends }
}

pub fn describe_info(info: &AdapterInfo) -> String {
    format!(
        "{} ({:?}, {:?})",
        info.name.trim(),
        info.backend,
        info.device_type
    )
}

/// Why the kernels cannot run on this adapter, if they cannot.
pub fn unusable(a: &Adapter) -> Option<String> {
    let l = a.limits();
    let down = a.get_downlevel_capabilities();
    if !down.flags.contains(DownlevelFlags::COMPUTE_SHADERS) {
        return Some("no compute shaders".into());
    }
    let checks = [
        (
            "max_storage_buffers_per_shader_stage",
            l.max_storage_buffers_per_shader_stage,
            2,
        ),
        (
            "max_compute_invocations_per_workgroup",
            l.max_compute_invocations_per_workgroup,
            256,
        ),
        (
            "max_compute_workgroup_size_x",
            l.max_compute_workgroup_size_x,
            256,
        ),
        (
            "max_compute_workgroup_storage_size",
            l.max_compute_workgroup_storage_size,
            WORKGROUP_BYTES,
        ),
        (
            "max_dynamic_storage_buffers_per_pipeline_layout",
            l.max_dynamic_storage_buffers_per_pipeline_layout,
            1,
        ),
    ];
    checks
        .iter()
        .find(|(_, have, need)| have < need)
        .map(|(name, have, need)| format!("{name} is {have}, the kernels need {need}"))
}

/// Preference for `open(None)`: real GPUs first, software last.
fn rank(t: DeviceType) -> u8 {
    match t {
        DeviceType::DiscreteGpu => 0,
        DeviceType::IntegratedGpu => 1,
        DeviceType::VirtualGpu => 2,
        DeviceType::Other => 3,
        DeviceType::Cpu => 4,
    }
}

/// What was found, for error messages.
pub fn summary(f: &Found) -> String {
    if f.adapters.is_empty() {
        let tried: Vec<String> = f
            .backends
            .iter_names()
            .map(|(n, _)| n.to_lowercase())
            .collect();
        return format!(
            "no adapter found (backends tried: {}; WGPU_BACKEND selects others)",
            tried.join(", ")
        );
    }
    let list: Vec<String> = f
        .adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let why = unusable(a).map_or(String::new(), |w| format!(" unusable: {w}"));
            format!("{i}: {}{why}", describe_info(&a.get_info()))
        })
        .collect();
    format!("adapters: {}", list.join("; "))
}

/// Usable adapter indices, best first (stable within a rank).
pub fn candidates(f: &Found, hardware_only: bool) -> Vec<usize> {
    let mut v: Vec<usize> = (0..f.adapters.len())
        .filter(|&i| unusable(&f.adapters[i]).is_none())
        .filter(|&i| !hardware_only || f.adapters[i].get_info().device_type != DeviceType::Cpu)
        .collect();
    v.sort_by_key(|&i| rank(f.adapters[i].get_info().device_type));
    v
}

/// A device with the adapter's own limits (not WebGPU's defaults, so big
/// arenas fit where the hardware allows), timestamp queries and subgroups
/// if offered.
pub fn request(a: &Adapter) -> Result<(Device, Queue)> {
    let desc = ::wgpu::DeviceDescriptor {
        label: Some("gpurt"),
        required_features: a.features() & (Features::TIMESTAMP_QUERY | Features::SUBGROUP),
        required_limits: a.limits(),
        ..Default::default()
    };
    pollster::block_on(a.request_device(&desc)).map_err(|e| {
        device_error(format!(
            "{}: cannot create a device: {e}",
            describe_info(&a.get_info())
        ))
    })
}
