//! The wgpu backend: portable WGSL compute shaders (Vulkan, Metal, DX12, GL).
//!
//! A module's arena is one storage buffer. `compile` turns every launch of
//! every program into dispatches once (`launch.rs`), uploads all their
//! parameter words into one buffer (each launch binds its own window of it
//! through a dynamic offset), builds the pipelines (cached per device, so a
//! second module with the same kernels builds nothing) and one bind group.
//! `run` writes the runtime scalars and records the whole program into one
//! command buffer with one compute pass; the host touches nothing else.
//! `read` copies only the requested slot to a staging buffer.
//!
//! Device errors (validation, out of memory, a lost device) are collected
//! by an error handler and error scopes and returned as `Error::Device`,
//! never a panic.

mod adapter;
mod executable;
mod launch;
mod lower;
mod shaders;

pub use executable::WgpuExecutable;
pub use lower::GemmStyle;
pub use shaders::{shader_sources, Family, ModuleSource};

use crate::backend::{Backend, Executable};
use crate::error::{Error, Result};
use crate::graph::plan::{Launch, Module, Program};
use ::wgpu as w;
use adapter::device_error;
use launch::{PARAM_WORDS, RUNTIME_SLOTS};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

/// Arena words the kernels can index: thread ids (`group * 256 + lane`)
/// must not wrap in u32.
const MAX_ARENA_WORDS: usize = 1 << 31;

/// An opened adapter: device, queue, and the pipelines built on it.
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
    gemm: GemmStyle,
}

struct Gpu {
    device: w::Device,
    queue: w::Queue,
    info: w::AdapterInfo,
    limits: w::Limits,
    timestamps: bool,
    layout: w::BindGroupLayout,
    pipeline_layout: w::PipelineLayout,
    /// By kernel file and whether it is the subgroup variant.
    modules: Mutex<HashMap<(Family, bool), w::ShaderModule>>,
    pipelines: Mutex<HashMap<(Family, &'static str), w::ComputePipeline>>,
    /// Errors no scope caught (reported at the next call into the device).
    errors: Arc<Mutex<Vec<String>>>,
}

/// Open adapter `index` of `Instance::enumerate_adapters` (see
/// [`describe`]), or with `None` the best usable one that opens (hardware
/// first).
pub fn open(index: Option<usize>) -> Result<WgpuBackend> {
    let found = adapter::enumerate();
    let Some(i) = index else {
        let mut last = crate::Error::Unavailable {
            device: "wgpu".into(),
            detail: adapter::summary(&found),
        };
        for i in adapter::candidates(&found, false) {
            match WgpuBackend::new(&found.adapters[i]) {
                Ok(b) => return Ok(b),
                Err(e) => last = e,
            }
        }
        return Err(last);
    };
    let a = found
        .adapters
        .get(i)
        .ok_or_else(|| device_error(format!("no adapter {i}; {}", adapter::summary(&found))))?;
    if let Some(why) = adapter::unusable(a) {
        return Err(device_error(format!(
            "adapter {i} {} cannot run the kernels: {why}",
            adapter::describe_info(&a.get_info())
        )));
    }
    WgpuBackend::new(a)
}

/// A hardware (non-CPU) adapter for `--device auto`, if one opens: a
/// software rasteriser such as lavapipe is never preferred over the CPU
/// backend.
pub fn open_hardware() -> Option<WgpuBackend> {
    let found = adapter::enumerate();
    adapter::candidates(&found, true)
        .into_iter()
        .find_map(|i| WgpuBackend::new(&found.adapters[i]).ok())
}

/// One line per adapter: (`wgpu:N`, usable, name, backend and type, or
/// why not).
pub fn describe() -> Vec<(String, bool, String)> {
    let found = adapter::enumerate();
    if found.adapters.is_empty() {
        return vec![("wgpu".into(), false, adapter::summary(&found))];
    }
    found
        .adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = adapter::describe_info(&a.get_info());
            match adapter::unusable(a) {
                None => (format!("wgpu:{i}"), true, info),
                Some(why) => (format!("wgpu:{i}"), false, format!("{info}: {why}")),
            }
        })
        .collect()
}

impl WgpuBackend {
    fn new(a: &w::Adapter) -> Result<Self> {
        let (device, queue) = adapter::request(a)?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |e: w::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        let sink = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, msg| {
            if reason != w::DeviceLostReason::Destroyed {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("device lost ({reason:?}): {msg}"));
            }
        });
        let entry = |binding, ty| w::BindGroupLayoutEntry {
            binding,
            visibility: w::ShaderStages::COMPUTE,
            ty,
            count: None,
        };
        let layout = device.create_bind_group_layout(&w::BindGroupLayoutDescriptor {
            label: Some("gpurt arena/params/runtime"),
            entries: &[
                entry(
                    0,
                    w::BindingType::Buffer {
                        ty: w::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                ),
                entry(
                    1,
                    w::BindingType::Buffer {
                        ty: w::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: NonZeroU64::new(PARAM_WORDS as u64 * 4),
                    },
                ),
                entry(
                    2,
                    w::BindingType::Buffer {
                        ty: w::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: NonZeroU64::new(RUNTIME_SLOTS as u64 * 4),
                    },
                ),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&w::PipelineLayoutDescriptor {
            label: Some("gpurt"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let timestamps = device.features().contains(w::Features::TIMESTAMP_QUERY);
        let info = a.get_info();
        Ok(WgpuBackend {
            gemm: GemmStyle::for_adapter(&info, device.features()),
            gpu: Arc::new(Gpu {
                info,
                limits: device.limits(),
                device,
                queue,
                timestamps,
                layout,
                pipeline_layout,
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
                errors,
            }),
        })
    }

    /// The adapter's description (name, backend, device type).
    pub fn adapter_info(&self) -> w::AdapterInfo {
        self.gpu.info.clone()
    }

    /// The device's limits (the adapter's own, as requested).
    pub fn limits(&self) -> w::Limits {
        self.gpu.limits.clone()
    }

    /// Like [`Backend::compile`], keeping the concrete type (for
    /// [`WgpuExecutable::profile`]).
    pub fn compile_wgpu(&self, module: Arc<Module>) -> Result<WgpuExecutable> {
        WgpuExecutable::new(Arc::clone(&self.gpu), module, self.gemm)
    }

    /// The GEMM kernels this backend lowers matmuls and convolutions to
    /// (chosen from the adapter when opened).
    pub fn gemm_style(&self) -> GemmStyle {
        self.gemm
    }

    /// The same device lowering to the given GEMM kernels, so tests and
    /// benchmarks can run both on one adapter; an error if the adapter
    /// cannot run them (the team GEMM needs subgroups of 8 or more).
    pub fn with_gemm_style(&self, gemm: GemmStyle) -> Result<WgpuBackend> {
        if gemm == GemmStyle::Direct
            && !GemmStyle::direct_runs(&self.gpu.info, self.gpu.device.features())
        {
            return Err(device_error(format!(
                "{}: the team GEMM needs the SUBGROUP feature with subgroups of at least {}",
                adapter::describe_info(&self.gpu.info),
                shaders::DIRECT_WG
            )));
        }
        Ok(WgpuBackend {
            gpu: Arc::clone(&self.gpu),
            gemm,
        })
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> String {
        format!("wgpu {}", adapter::describe_info(&self.gpu.info))
    }

    fn compile(&self, module: Arc<Module>) -> Result<Box<dyn Executable>> {
        Ok(Box::new(self.compile_wgpu(module)?))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Gpu {
    /// Errors the device reported since the last check.
    fn check(&self, what: &str) -> Result<()> {
        let mut errs = lock(&self.errors);
        if errs.is_empty() {
            return Ok(());
        }
        let all = std::mem::take(&mut *errs).join("; ");
        Err(device_error(format!("{what}: {all}")))
    }

    /// Run `f` inside out-of-memory and validation scopes.
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(w::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(w::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(val.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) => Err(device_error(format!("{what}: out of memory ({e})"))),
            (None, Some(e)) => Err(device_error(format!("{what}: {e}"))),
            (None, None) => Ok(out),
        }
    }

    fn pipeline(&self, family: Family, entry: &'static str) -> Result<w::ComputePipeline> {
        if let Some(p) = lock(&self.pipelines).get(&(family, entry)) {
            return Ok(p.clone());
        }
        let direct = shaders::needs_subgroups(entry);
        let module = {
            let mut modules = lock(&self.modules);
            match modules.get(&(family, direct)) {
                Some(m) => m.clone(),
                None => {
                    let src = shaders::source(family, direct);
                    let m = self.scoped(&format!("shaders/{}.wgsl", family.name()), || {
                        self.device.create_shader_module(w::ShaderModuleDescriptor {
                            label: Some(family.name()),
                            source: w::ShaderSource::Wgsl(src.into()),
                        })
                    })?;
                    modules.insert((family, direct), m.clone());
                    m
                }
            }
        };
        let label = format!("{}::{entry}", family.name());
        let p = self.scoped(&label, || {
            self.device
                .create_compute_pipeline(&w::ComputePipelineDescriptor {
                    label: Some(&label),
                    layout: Some(&self.pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: w::PipelineCompilationOptions {
                        // Every kernel writes its workgroup memory before
                        // reading it.
                        zero_initialize_workgroup_memory: false,
                        ..Default::default()
                    },
                    cache: None,
                })
        })?;
        lock(&self.pipelines).insert((family, entry), p.clone());
        Ok(p)
    }

    fn buffer(&self, what: &str, size: u64, usage: w::BufferUsages) -> Result<w::Buffer> {
        self.scoped(what, || {
            self.device.create_buffer(&w::BufferDescriptor {
                label: Some(what),
                size,
                usage,
                mapped_at_creation: false,
            })
        })
    }

    /// Lay `groups` workgroups out as an x*y grid within the per-dimension
    /// limit (kernels flatten it back and skip the excess).
    fn grid(&self, groups: usize, p: &Program, l: &Launch) -> Result<(u32, u32)> {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1) as usize;
        let x = groups.min(max);
        let y = groups.div_ceil(x.max(1));
        if y > max {
            return Err(device_error(format!(
                "program '{}': {} needs {groups} workgroups, more than \
                 max_compute_workgroups_per_dimension^2 = {max}^2 on {}",
                p.name,
                l.op.kernel_name(),
                self.info.name
            )));
        }
        Ok((x as u32, y as u32))
    }

    /// The arena and the GEMM scratch after it must fit one storage binding
    /// (and one buffer).
    fn check_arena(&self, m: &Module, scratch: usize) -> Result<u64> {
        let words = m.arena_words.saturating_add(scratch);
        let bytes = (words as u64).saturating_mul(4);
        let (limit, name) =
            if self.limits.max_storage_buffer_binding_size <= self.limits.max_buffer_size {
                (
                    self.limits.max_storage_buffer_binding_size,
                    "max_storage_buffer_binding_size",
                )
            } else {
                (self.limits.max_buffer_size, "max_buffer_size")
            };
        if bytes <= limit && words <= MAX_ARENA_WORDS {
            return Ok(bytes.max(4));
        }
        let biggest =
            m.programs
                .iter()
                .max_by_key(|p| p.transient_words)
                .map_or(String::new(), |p| {
                    let t = p
                        .launches
                        .iter()
                        .flat_map(|l| l.write_shapes.iter())
                        .max_by_key(|s| s.numel());
                    format!(
                        "; program '{}' needs {} MiB of transients{}",
                        p.name,
                        (p.transient_words * 4) >> 20,
                        t.map_or(String::new(), |s| format!(
                            ", its largest tensor is {s} ({} MiB)",
                            (s.numel() * 4) >> 20
                        ))
                    )
                });
        Err(Error::ArenaTooLarge {
            device: "wgpu".into(),
            programs: m.program_names(),
            bytes,
            detail: format!(
                "{} MiB persistent, {} MiB GEMM scratch{biggest}, but {name} \
             is {} MiB on {} (and the kernels index at most {} MiB); use a smaller batch",
                (m.persistent_words * 4) >> 20,
                (scratch * 4) >> 20,
                limit >> 20,
                self.info.name,
                (MAX_ARENA_WORDS * 4) >> 20
            ),
        })
    }
}
