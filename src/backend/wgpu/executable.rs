//! A module loaded on a wgpu device: one arena buffer, the parameter
//! words of every launch uploaded once, the pipelines and one bind group;
//! `run` records a whole program into one command buffer.
//!
//! A run's command buffer is submitted lazily: a `read` that follows
//! appends its copy to it, so inference is one submission and one wait
//! rather than two of each (on lavapipe, where the kernels take 95% of a
//! batch-1 call, the saving is below the noise). Anything else that
//! touches the queue (`write`, the next `run`, profiling, drop) submits
//! it first, which keeps every operation in program order.

use super::launch::{self, Runtime, PARAM_WORDS, RUNTIME_SLOTS};
use super::{device_error, Family, GemmStyle, Gpu};
use crate::backend::Executable;
use crate::error::{Error, Result};
use crate::graph::plan::{Module, Slot};
use ::wgpu as w;
use ::wgpu::util::DeviceExt;
use rayon::prelude::*;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;

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
    /// A recorded run not yet submitted.
    pending: Option<w::CommandEncoder>,
}

impl WgpuExecutable {
    pub(super) fn new(gpu: Arc<Gpu>, module: Arc<Module>, gemm: GemmStyle) -> Result<Self> {
        // Slots in the arena, no output overlapping another operand, every
        // launch decoded: checked once for every backend.
        let kernels = module.validate()?;
        let align = (gpu.limits.min_uniform_buffer_offset_alignment.max(4) / 4) as usize;
        let mut rt = Runtime::new(module.scalars.len());
        let mut words: Vec<u32> = Vec::new();
        let mut scratch = 0usize;
        let mut wanted: Vec<(Family, &'static str)> = Vec::new();
        let mut index: HashMap<(Family, &'static str), usize> = HashMap::new();
        let mut programs = Vec::new();
        for (p, ks) in module.programs.iter().zip(&kernels) {
            let mut steps = Vec::new();
            for (l, k) in p.launches.iter().zip(ks) {
                let dispatches =
                    launch::encode(l, k, &mut rt, module.arena_words, gemm).map_err(|e| {
                        device_error(format!("program '{}': {}: {e}", p.name, l.op.kernel_name()))
                    })?;
                for d in dispatches {
                    scratch = scratch.max(d.scratch);
                    let grid = gpu.grid(d.groups, p, l)?;
                    let pipeline = match index.get(&(d.family, d.entry)) {
                        Some(&i) => i,
                        None => {
                            wanted.push((d.family, d.entry));
                            index.insert((d.family, d.entry), wanted.len() - 1);
                            wanted.len() - 1
                        }
                    };
                    let offset = u32::try_from(words.len() * 4)
                        .map_err(|_| Error::Limit("kernel parameters exceed 4 GiB".into()))?;
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
        // Pipelines compile on every core: on a CPU adapter each is an
        // LLVM compilation, and the team GEMM's take a large share of a
        // cold start.
        let pipelines = wanted
            .par_iter()
            .map(|&(f, e)| gpu.pipeline(f, e))
            .collect::<Result<Vec<_>>>()?;
        let arena_bytes = gpu.check_arena(&module, scratch)?;
        if rt.len() > RUNTIME_SLOTS {
            return Err(device_error(format!(
                "the module needs {} runtime scalars, the kernels hold {RUNTIME_SLOTS}",
                rt.len()
            )));
        }
        // Every window [offset, offset + PARAM_WORDS) lies inside the buffer.
        words.resize(words.len() + PARAM_WORDS, 0);
        let window_bytes = PARAM_WORDS as u64 * 4;
        if window_bytes > gpu.limits.max_uniform_buffer_binding_size {
            return Err(device_error(format!(
                "the kernels' {window_bytes}-byte parameter window exceeds \
                 max_uniform_buffer_binding_size ({})",
                gpu.limits.max_uniform_buffer_binding_size
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
                    usage: w::BufferUsages::UNIFORM,
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
            pending: None,
        })
    }

    /// Submit the pending run, if any.
    fn flush(&mut self) -> Result<()> {
        if let Some(enc) = self.pending.take() {
            self.gpu.queue.submit([enc.finish()]);
            // Reclaim finished submissions without waiting for this one.
            let _ = self.gpu.device.poll(w::PollType::Poll);
            self.gpu.check("run")?;
        }
        Ok(())
    }

    /// The pending run's encoder (a read appends to it), or a new one.
    fn encoder(&mut self) -> w::CommandEncoder {
        self.pending.take().unwrap_or_else(|| {
            self.gpu
                .device
                .create_command_encoder(&w::CommandEncoderDescriptor::default())
        })
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
        self.module.program_for_run(program, scalars)?;
        if !self.gpu.timestamps {
            return Err(device_error(format!(
                "{} has no TIMESTAMP_QUERY feature",
                self.gpu.info.name
            )));
        }
        self.flush()?;
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
    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.gpu
            .device
            .poll(w::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("finish: {e}")))?;
        self.gpu.check("finish")
    }

    fn kernel_times(
        &mut self,
        program: usize,
        scalars: &[f32],
    ) -> Result<Option<Vec<(&'static str, f64)>>> {
        if !self.gpu.timestamps {
            return Ok(None);
        }
        self.profile(program, scalars).map(Some)
    }

    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()> {
        self.module.check_transfer(slot, data.len())?;
        // Queue writes land before the next submission's commands.
        self.flush()?;
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
        self.module.check_transfer(slot, out.len())?;
        if out.is_empty() {
            return Ok(());
        }
        let bytes = slot.len as u64 * 4;
        let staging = self.staging(bytes)?;
        let mut enc = self.encoder();
        enc.copy_buffer_to_buffer(&self.arena, slot.offset as u64 * 4, &staging, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        let data = self.map_read(&staging, bytes, "read")?;
        out.copy_from_slice(bytemuck::cast_slice(&data));
        Ok(())
    }

    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()> {
        self.module.program_for_run(program, scalars)?;
        // The runtime scalars are a queue write: the previous run goes
        // first.
        self.flush()?;
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
        self.pending = Some(enc);
        self.gpu.check("run")
    }
}

impl Drop for WgpuExecutable {
    /// Submit a run nobody read: dropping does not cancel work asked for.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
