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
mod launch;
mod lower;
mod shaders;

pub use shaders::{shader_sources, Family};

use crate::backend::{Backend, Executable};
use crate::error::{Error, Result};
use crate::graph::plan::{Launch, Module, Program, Slot};
use ::wgpu as w;
use ::wgpu::util::DeviceExt;
use adapter::device_error;
use launch::{Runtime, RUNTIME_SLOTS};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex};

/// Arena words the kernels can index: thread ids (`group * 256 + lane`)
/// must not wrap in u32.
const MAX_ARENA_WORDS: usize = 1 << 31;

/// An opened adapter: device, queue, and the pipelines built on it.
pub struct WgpuBackend {
    gpu: Arc<Gpu>,
}

struct Gpu {
    device: w::Device,
    queue: w::Queue,
    info: w::AdapterInfo,
    limits: w::Limits,
    timestamps: bool,
    layout: w::BindGroupLayout,
    pipeline_layout: w::PipelineLayout,
    modules: Mutex<HashMap<Family, w::ShaderModule>>,
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
                        ty: w::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: true,
                        min_binding_size: None,
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
        Ok(WgpuBackend {
            gpu: Arc::new(Gpu {
                info: a.get_info(),
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
        WgpuExecutable::new(Arc::clone(&self.gpu), module)
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
        let module = {
            let mut modules = lock(&self.modules);
            match modules.get(&family) {
                Some(m) => m.clone(),
                None => {
                    let src = family.source();
                    let m = self.scoped(&format!("shaders/{}.wgsl", family.name()), || {
                        self.device.create_shader_module(w::ShaderModuleDescriptor {
                            label: Some(family.name()),
                            source: w::ShaderSource::Wgsl(src.into()),
                        })
                    })?;
                    modules.insert(family, m.clone());
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

/// One dispatch as recorded at run time.
struct Step {
    pipeline: usize,
    /// Byte offset of its parameter window.
    offset: u32,
    grid: (u32, u32),
    kernel: &'static str,
}

/// A module loaded on a wgpu device.
pub struct WgpuExecutable {
    gpu: Arc<Gpu>,
    module: Arc<Module>,
    arena: w::Buffer,
    runtime: w::Buffer,
    bind_group: w::BindGroup,
    pipelines: Vec<w::ComputePipeline>,
    programs: Vec<Vec<Step>>,
    rt: Runtime,
    rt_host: Vec<f32>,
    staging: Option<w::Buffer>,
}

impl WgpuExecutable {
    fn new(gpu: Arc<Gpu>, module: Arc<Module>) -> Result<Self> {
        // Slots in the arena, no output overlapping another operand, every
        // launch decoded: checked once for every backend.
        let kernels = module.validate()?;
        let align = (gpu.limits.min_storage_buffer_offset_alignment.max(4) / 4) as usize;
        let mut rt = Runtime::new(module.scalars.len());
        let mut words: Vec<u32> = Vec::new();
        let mut window = 1usize;
        let mut scratch = 0usize;
        let mut pipelines: Vec<w::ComputePipeline> = Vec::new();
        let mut index: HashMap<(Family, &'static str), usize> = HashMap::new();
        let mut programs = Vec::new();
        for (p, ks) in module.programs.iter().zip(&kernels) {
            let mut steps = Vec::new();
            for (l, k) in p.launches.iter().zip(ks) {
                let dispatches =
                    launch::encode(l, k, &mut rt, module.arena_words).map_err(|e| {
                        device_error(format!("program '{}': {}: {e}", p.name, l.op.kernel_name()))
                    })?;
                for d in dispatches {
                    scratch = scratch.max(d.scratch);
                    let grid = gpu.grid(d.groups, p, l)?;
                    let pipeline = match index.get(&(d.family, d.entry)) {
                        Some(&i) => i,
                        None => {
                            pipelines.push(gpu.pipeline(d.family, d.entry)?);
                            index.insert((d.family, d.entry), pipelines.len() - 1);
                            pipelines.len() - 1
                        }
                    };
                    let offset = u32::try_from(words.len() * 4)
                        .map_err(|_| Error::Limit("kernel parameters exceed 4 GiB".into()))?;
                    window = window.max(d.params.len());
                    words.extend_from_slice(&d.params);
                    words.resize(words.len().div_ceil(align) * align, 0);
                    steps.push(Step {
                        pipeline,
                        offset,
                        grid,
                        kernel: l.op.kernel_name(),
                    });
                }
            }
            programs.push(steps);
        }
        let arena_bytes = gpu.check_arena(&module, scratch)?;
        if rt.len() > RUNTIME_SLOTS {
            return Err(device_error(format!(
                "the module needs {} runtime scalars, the kernels hold {RUNTIME_SLOTS}",
                rt.len()
            )));
        }
        // Every window [offset, offset + window) lies inside the buffer.
        words.resize(words.len() + window, 0);
        let window_bytes = window as u64 * 4;
        if window_bytes > gpu.limits.max_storage_buffer_binding_size {
            return Err(device_error(format!(
                "one launch has {window_bytes} bytes of parameters, more than \
                 max_storage_buffer_binding_size ({})",
                gpu.limits.max_storage_buffer_binding_size
            )));
        }
        let arena = gpu.buffer(
            &format!(
                "arena for program(s) {} ({arena_bytes} bytes, {} MiB)",
                module.program_names(),
                arena_bytes >> 20
            ),
            arena_bytes,
            w::BufferUsages::STORAGE | w::BufferUsages::COPY_SRC | w::BufferUsages::COPY_DST,
        )?;
        let params = gpu.scoped("kernel parameters", || {
            gpu.device
                .create_buffer_init(&w::util::BufferInitDescriptor {
                    label: Some("kernel parameters"),
                    contents: bytemuck::cast_slice(&words),
                    usage: w::BufferUsages::STORAGE,
                })
        })?;
        let runtime = gpu.buffer(
            "runtime scalars",
            RUNTIME_SLOTS as u64 * 4,
            w::BufferUsages::UNIFORM | w::BufferUsages::COPY_DST,
        )?;
        let bind_group = gpu.scoped("bind group", || {
            gpu.device.create_bind_group(&w::BindGroupDescriptor {
                label: Some("gpurt module"),
                layout: &gpu.layout,
                entries: &[
                    w::BindGroupEntry {
                        binding: 0,
                        resource: arena.as_entire_binding(),
                    },
                    w::BindGroupEntry {
                        binding: 1,
                        resource: w::BindingResource::Buffer(w::BufferBinding {
                            buffer: &params,
                            offset: 0,
                            size: NonZeroU64::new(window_bytes),
                        }),
                    },
                    w::BindGroupEntry {
                        binding: 2,
                        resource: runtime.as_entire_binding(),
                    },
                ],
            })
        })?;
        gpu.check("compile")?;
        Ok(WgpuExecutable {
            gpu,
            module,
            arena,
            runtime,
            bind_group,
            pipelines,
            programs,
            rt,
            rt_host: vec![0.0; RUNTIME_SLOTS],
            staging: None,
        })
    }

    fn check_slot(&self, slot: Slot, len: usize) -> Result<()> {
        if slot.len != len || slot.end() > self.module.arena_words {
            return Err(Error::Usage(format!(
                "buffer of {len} words for a slot of {} words",
                slot.len
            )));
        }
        Ok(())
    }

    fn program(&self, program: usize, scalars: &[f32]) -> Result<()> {
        let p = self
            .module
            .programs
            .get(program)
            .ok_or_else(|| Error::Usage(format!("no program {program}")))?;
        if scalars.len() != self.module.scalars.len() {
            return Err(Error::Usage(format!(
                "program '{}' needs {} scalars ({:?}), got {}",
                p.name,
                self.module.scalars.len(),
                self.module.scalars,
                scalars.len()
            )));
        }
        Ok(())
    }

    fn write_runtime(&mut self, scalars: &[f32]) {
        self.rt.fill(scalars, &mut self.rt_host);
        self.gpu
            .queue
            .write_buffer(&self.runtime, 0, bytemuck::cast_slice(&self.rt_host));
    }

    /// Record steps of `program` into `pass`.
    fn record(&self, pass: &mut w::ComputePass<'_>, steps: &[Step]) {
        let mut current = usize::MAX;
        for s in steps {
            if s.pipeline != current {
                pass.set_pipeline(&self.pipelines[s.pipeline]);
                current = s.pipeline;
            }
            pass.set_bind_group(0, &self.bind_group, &[s.offset]);
            pass.dispatch_workgroups(s.grid.0, s.grid.1, 1);
        }
    }

    /// A staging buffer of at least `bytes`, reused across reads.
    fn staging(&mut self, bytes: u64) -> Result<w::Buffer> {
        match &self.staging {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let size = bytes.next_power_of_two().max(256);
                let b = self.gpu.buffer(
                    "staging",
                    size,
                    w::BufferUsages::MAP_READ | w::BufferUsages::COPY_DST,
                )?;
                self.staging = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Map the first `bytes` of a MAP_READ buffer, waiting for the device.
    fn map_read(&self, buf: &w::Buffer, bytes: u64, what: &str) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..bytes)
            .map_async(w::MapMode::Read, move |r| drop(tx.send(r)));
        self.gpu
            .device
            .poll(w::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("{what}: {e}")))?;
        let mapped = rx
            .recv()
            .map_err(|_| device_error(format!("{what}: the map callback never ran")))?;
        self.gpu.check(what)?;
        mapped.map_err(|e| device_error(format!("{what}: {e}")))?;
        let data = {
            let view = buf
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| device_error(format!("{what}: {e}")))?;
            view.to_vec()
        };
        buf.unmap();
        Ok(data)
    }

    /// Run `program` once with one compute pass per dispatch, timed by
    /// timestamp queries: `(kernel name, seconds)` per dispatch, in order.
    /// Needs an adapter with `TIMESTAMP_QUERY`; the pass split makes the
    /// total a little slower than [`Executable::run`].
    pub fn profile(&mut self, program: usize, scalars: &[f32]) -> Result<Vec<(&'static str, f64)>> {
        self.program(program, scalars)?;
        if !self.gpu.timestamps {
            return Err(device_error(format!(
                "{} has no TIMESTAMP_QUERY feature",
                self.gpu.info.name
            )));
        }
        let n = self.programs[program].len();
        if n == 0 {
            return Ok(vec![]);
        }
        let count = u32::try_from(2 * n)
            .ok()
            .filter(|&c| c <= w::QUERY_SET_MAX_QUERIES)
            .ok_or_else(|| device_error(format!("{n} dispatches are too many to time")))?;
        self.write_runtime(scalars);
        let g = Arc::clone(&self.gpu);
        let queries = g.scoped("timestamp queries", || {
            g.device.create_query_set(&w::QuerySetDescriptor {
                label: Some("gpurt profile"),
                ty: w::QueryType::Timestamp,
                count,
            })
        })?;
        let bytes = count as u64 * 8;
        let resolve = g.buffer(
            "timestamps",
            bytes,
            w::BufferUsages::QUERY_RESOLVE | w::BufferUsages::COPY_SRC,
        )?;
        let readback = g.buffer(
            "timestamps readback",
            bytes,
            w::BufferUsages::MAP_READ | w::BufferUsages::COPY_DST,
        )?;
        let mut enc = g
            .device
            .create_command_encoder(&w::CommandEncoderDescriptor::default());
        for (i, s) in self.programs[program].iter().enumerate() {
            let mut pass = enc.begin_compute_pass(&w::ComputePassDescriptor {
                label: Some(s.kernel),
                timestamp_writes: Some(w::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            self.record(&mut pass, std::slice::from_ref(s));
        }
        enc.resolve_query_set(&queries, 0..count, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        g.queue.submit([enc.finish()]);
        let raw = self.map_read(&readback, bytes, "profile")?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = g.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(self.programs[program]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]);
                (s.kernel, dt as f64 * period)
            })
            .collect())
    }
}

impl Executable for WgpuExecutable {
    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()> {
        self.check_slot(slot, data.len())?;
        if !data.is_empty() {
            self.gpu.queue.write_buffer(
                &self.arena,
                slot.offset as u64 * 4,
                bytemuck::cast_slice(data),
            );
        }
        self.gpu.check("write")
    }

    fn read(&mut self, slot: Slot, out: &mut [f32]) -> Result<()> {
        self.check_slot(slot, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let bytes = slot.len as u64 * 4;
        let staging = self.staging(bytes)?;
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&w::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(&self.arena, slot.offset as u64 * 4, &staging, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        let data = self.map_read(&staging, bytes, "read")?;
        out.copy_from_slice(bytemuck::cast_slice(&data));
        Ok(())
    }

    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()> {
        self.program(program, scalars)?;
        self.write_runtime(scalars);
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&w::CommandEncoderDescriptor::default());
        {
            let mut pass = enc.begin_compute_pass(&w::ComputePassDescriptor {
                label: Some(&self.module.programs[program].name),
                timestamp_writes: None,
            });
            self.record(&mut pass, &self.programs[program]);
        }
        self.gpu.queue.submit([enc.finish()]);
        // Reclaim finished submissions without waiting for this one.
        let _ = self.gpu.device.poll(w::PollType::Poll);
        self.gpu.check("run")
    }
}
