//! The driver side, through cudarc with the driver library loaded at run
//! time: device probing (which never panics), one context and stream per
//! device, the arena and scratch buffers allocated once per compiled
//! module, PTX modules loaded once, launches with checked errors, and each
//! program captured as a CUDA graph after its first run and replayed.

use super::args::{Arg, Buf, BLOCK};
use super::plan::{plan, Plan, Target};
use super::ptx::{self, MIN_COMPUTE_CAPABILITY, MIN_DRIVER_VERSION, PTX_ISA};
use crate::backend::Executable;
use crate::error::{Error, Result};
use crate::graph::plan::{Module, Slot};
use cudarc::driver::{result, sys, CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

/// An opened device: its context, the stream every launch goes to, and the
/// facts the planner and `gpurt devices` need.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// PTX modules loaded on this device, by file: each is JIT-compiled
    /// once per device, however many modules are compiled.
    modules: Mutex<HashMap<&'static str, Arc<Loaded>>>,
    pub ordinal: usize,
    pub name: String,
    pub sms: u32,
    pub cc: (i32, i32),
    pub mem_bytes: usize,
    pub driver: i32,
}

impl Device {
    pub fn label(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    pub fn summary(&self) -> String {
        format!(
            "{} (sm_{}{}, {} SMs, {:.0} GiB), driver CUDA {}.{}, PTX ISA {PTX_ISA}",
            self.name,
            self.cc.0,
            self.cc.1,
            self.sms,
            self.mem_bytes as f64 / (1u64 << 30) as f64,
            self.driver / 1000,
            self.driver % 1000 / 10
        )
    }
    pub(super) fn err(&self, what: impl std::fmt::Display, e: DriverError) -> Error {
        Error::Device {
            device: self.label(),
            detail: format!("{what}: {}", driver_error(e)),
        }
    }

    /// The PTX file loaded on this device (the driver JIT-compiles it for
    /// the GPU on first load).
    fn module(&self, file: &'static ptx::PtxFile) -> Result<Arc<Loaded>> {
        let mut loaded = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = loaded.get(file.name) {
            return Ok(Arc::clone(m));
        }
        let src = CString::new(file.text).map_err(|_| Error::Device {
            device: self.label(),
            detail: format!("kernels/{}.ptx contains a NUL byte", file.name),
        })?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        // SAFETY: `src` is a NUL-terminated PTX image that outlives the
        // call; the context is current.
        let m = unsafe { result::module::load_data(src.as_ptr() as *const c_void) }
            .map_err(|e| self.err(format!("loading kernels/{}.ptx", file.name), e))?;
        let m = Arc::new(Loaded {
            module: m,
            ctx: Arc::clone(&self.ctx),
        });
        loaded.insert(file.name, Arc::clone(&m));
        Ok(m)
    }
}

/// `CUDA_ERROR_X (text)` for a driver error.
fn driver_error(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("CUresult {:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name} ({})", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Run `f`, turning a panic into an error message without printing it.
/// cudarc panics (rather than erring) when the driver library or one of
/// its symbols is missing; the default hook would print that to stderr.
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::result::Result<T, String> {
    static HOOK: Mutex<()> = Mutex::new(());
    let _guard = HOOK.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(previous);
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the CUDA driver library panicked".into())
    })
}

/// Open device `ordinal`, or say why not in one line. Never panics.
/// Open device `ordinal`, or say in one line why it cannot be used (no
/// driver, too old a driver, no such device, too old a GPU).
pub fn probe(ordinal: usize) -> Result<Device> {
    probe_why(ordinal).map_err(|detail| Error::Unavailable {
        device: format!("cuda:{ordinal}"),
        detail,
    })
}

fn probe_why(ordinal: usize) -> std::result::Result<Device, String> {
    // SAFETY: only tries to dlopen the driver library under its usual
    // names; nothing from it is called.
    if !unsafe { sys::is_culib_present() } {
        return Err("no NVIDIA driver library (libcuda.so.1) on this machine".into());
    }
    quietly(move || open_device(ordinal)).and_then(|r| r)
}

fn open_device(ordinal: usize) -> std::result::Result<Device, String> {
    let de = |what: &str, e: DriverError| format!("{what}: {}", driver_error(e));
    result::init().map_err(|e| de("cuInit", e))?;
    let mut driver = 0i32;
    // SAFETY: a plain out-parameter call after a successful cuInit.
    unsafe { sys::cuDriverGetVersion(&mut driver) }
        .result()
        .map_err(|e| de("cuDriverGetVersion", e))?;
    if driver < MIN_DRIVER_VERSION {
        return Err(format!(
            "the driver supports CUDA {}.{}; gpurt's PTX (ISA {PTX_ISA}) needs a CUDA 12.0 driver (R525) or newer",
            driver / 1000,
            driver % 1000 / 10
        ));
    }
    let count = CudaContext::device_count().map_err(|e| de("cuDeviceGetCount", e))?;
    if count <= 0 {
        return Err("the driver found no CUDA device".into());
    }
    if ordinal >= count as usize {
        return Err(format!("there is no cuda:{ordinal} ({count} device(s))"));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| de("creating a context", e))?;
    // One stream per device: cross-stream event tracking is not needed,
    // and its event records would get in the way of graph capture.
    // SAFETY: every buffer of this context is used on `stream` only.
    unsafe { ctx.disable_event_tracking() };
    let cc = ctx
        .compute_capability()
        .map_err(|e| de("compute capability", e))?;
    if cc < MIN_COMPUTE_CAPABILITY {
        return Err(format!(
            "cuda:{ordinal} is sm_{}{}; gpurt's PTX targets sm_80 (Ampere) or newer",
            cc.0, cc.1
        ));
    }
    let sms = ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| de("SM count", e))?;
    let name = ctx.name().map_err(|e| de("device name", e))?;
    let mem_bytes = ctx.total_mem().map_err(|e| de("device memory", e))?;
    let stream = ctx.new_stream().map_err(|e| de("creating a stream", e))?;
    Ok(Device {
        ctx,
        stream,
        modules: Mutex::new(HashMap::new()),
        ordinal,
        name,
        sms: sms.max(1) as u32,
        cc,
        mem_bytes,
        driver,
    })
}

/// A loaded PTX module, unloaded on drop.
struct Loaded {
    module: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule is a driver handle usable from any thread once its
// context is current (every use binds it first); after loading it is only
// read (function lookups, which the driver makes thread-safe).
unsafe impl Send for Loaded {}
// SAFETY: as above.
unsafe impl Sync for Loaded {}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: loaded once by `Device::module` and unloaded exactly once,
        // when the device and every executable using it are gone.
        let _ = unsafe { result::module::unload(self.module) };
    }
}

/// A kernel handle (owned by a `Loaded` module of the same executable).
#[derive(Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: as for `Loaded`.
unsafe impl Send for Func {}

/// A call with its function resolved and its arguments packed, each at an
/// 8-byte-aligned offset of `storage`.
struct Resolved {
    func: Func,
    grid: [u32; 3],
    storage: Vec<u64>,
    offsets: Vec<usize>,
    what: String,
}

const MAX_ARGS: usize = 24;

/// A captured program. Graph objects must not be used from two threads at
/// once; this one is only reached through `&mut CudaExecutable`.
struct Graph(cudarc::driver::CudaGraph);
// SAFETY: see above; the graph's stream and context are Send + Sync.
unsafe impl Send for Graph {}

enum GraphState {
    /// Not captured yet; capture on the next run after a good one.
    Eager {
        good_runs: u32,
    },
    Ready(Graph),
    /// Capture failed or is disabled: launch eagerly.
    Off,
}

struct ProgramExec {
    name: String,
    calls: Vec<Resolved>,
    graph: GraphState,
}

pub struct CudaExecutable {
    module: Arc<Module>,
    dev: Arc<Device>,
    // Declared before `_modules`: graphs are destroyed before the kernels
    // they launch are unloaded.
    programs: Vec<ProgramExec>,
    arena: CudaSlice<f32>,
    scalars: CudaSlice<f32>,
    _work: CudaSlice<u8>,
    _meta: CudaSlice<u8>,
    _modules: Vec<Arc<Loaded>>,
    /// Synchronize after every launch (GPURT_CUDA_SYNC=1), to name the
    /// kernel that faulted.
    sync_each: bool,
    /// Data-parallel: the NCCL communicator, made at the first all-reduce
    /// (None: not yet, or the host path).
    #[cfg(feature = "nccl")]
    nccl: Option<Option<crate::dist::nccl::Nccl>>,
}

impl Drop for CudaExecutable {
    fn drop(&mut self) {
        // Nothing in flight may outlive the buffers and modules.
        let _ = self.dev.ctx.bind_to_thread();
        let _ = self.dev.stream.synchronize();
    }
}

fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| v != "0" && !v.is_empty())
}

/// Allocate `n` zeroed elements (at least one: the driver rejects empty
/// allocations).
fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    dev: &Device,
    n: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    dev.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
        dev.err(
            format!(
                "allocating the {what} ({} bytes, {} MiB)",
                n * std::mem::size_of::<T>(),
                (n * std::mem::size_of::<T>()) >> 20
            ),
            e,
        )
    })
}

fn base_of<T>(dev: &Device, s: &CudaSlice<T>) -> u64 {
    let (ptr, _sync) = s.device_ptr(&dev.stream);
    ptr
}

/// Compile `module` for `dev`: plan, allocate, load and resolve.
pub fn compile(dev: &Arc<Device>, module: Arc<Module>) -> Result<CudaExecutable> {
    let plan: Plan = plan(&module, Target { sms: dev.sms })?;
    dev.ctx
        .bind_to_thread()
        .map_err(|e| dev.err("binding the context", e))?;
    let arena =
        zeros::<f32>(dev, module.arena_words, "arena").map_err(|e| Error::ArenaTooLarge {
            device: "cuda".into(),
            programs: module.program_names(),
            bytes: module.arena_words as u64 * 4,
            detail: e.to_string(),
        })?;
    let scalars = zeros::<f32>(dev, plan.scalars, "scalar buffer")?;
    let work = zeros::<u8>(dev, plan.work_bytes, "scratch buffer")?;
    let mut meta = zeros::<u8>(dev, plan.meta.len(), "table buffer")?;
    if !plan.meta.is_empty() {
        dev.stream
            .memcpy_htod(&plan.meta[..], &mut meta)
            .map_err(|e| dev.err("uploading the tensor tables", e))?;
    }
    let bases: HashMap<Buf, u64> = [
        (Buf::Arena, base_of(dev, &arena)),
        (Buf::Scalars, base_of(dev, &scalars)),
        (Buf::Work, base_of(dev, &work)),
        (Buf::Meta, base_of(dev, &meta)),
    ]
    .into();

    let mut modules: Vec<Arc<Loaded>> = Vec::new();
    let mut funcs: HashMap<&str, (Func, Vec<ptx::Param>)> = HashMap::new();
    for kernel in plan.kernels() {
        let (file, params) = ptx::find(kernel).ok_or_else(|| Error::Device {
            device: dev.label(),
            detail: format!("kernel {kernel} is not in the embedded PTX"),
        })?;
        let loaded = dev.module(file)?;
        if !modules.iter().any(|m| Arc::ptr_eq(m, &loaded)) {
            modules.push(Arc::clone(&loaded));
        }
        let name = CString::new(kernel).expect("kernel names have no NUL");
        // SAFETY: the module is loaded and kept alive by `modules`.
        let f = unsafe { result::module::get_function(loaded.module, name) }
            .map_err(|e| dev.err(format!("finding kernel {kernel}"), e))?;
        funcs.insert(kernel, (Func(f), params));
    }

    let mut programs = Vec::new();
    for (pi, pc) in plan.programs.iter().enumerate() {
        let prog = &module.programs[pi];
        let mut calls = Vec::new();
        for (li, c) in &pc.calls {
            let what = format!(
                "{} (launch {li} of program '{}', {})",
                c.kernel,
                prog.name,
                prog.launches[*li].op.kernel_name()
            );
            let (func, params) = &funcs[c.kernel];
            ptx::check_args(c.kernel, params, &c.args).map_err(|d| Error::Device {
                device: dev.label(),
                detail: d,
            })?;
            if c.args.len() > MAX_ARGS {
                return Err(Error::Device {
                    device: dev.label(),
                    detail: format!("{what}: more than {MAX_ARGS} arguments"),
                });
            }
            let (storage, offsets) = pack(&c.args, &bases);
            calls.push(Resolved {
                func: *func,
                grid: c.grid,
                storage,
                offsets,
                what,
            });
        }
        programs.push(ProgramExec {
            name: pc.name.clone(),
            calls,
            graph: if env_flag("GPURT_CUDA_GRAPH") == Some(false) {
                GraphState::Off
            } else {
                GraphState::Eager { good_runs: 0 }
            },
        });
    }
    dev.stream
        .synchronize()
        .map_err(|e| dev.err("preparing the module", e))?;
    Ok(CudaExecutable {
        module,
        dev: Arc::clone(dev),
        programs,
        arena,
        scalars,
        _work: work,
        _meta: meta,
        _modules: modules,
        sync_each: env_flag("GPURT_CUDA_SYNC") == Some(true),
        #[cfg(feature = "nccl")]
        nccl: None,
    })
}

/// Pack arguments into 8-byte-aligned cells (pointers resolved against the
/// buffer bases).
fn pack(args: &[Arg], bases: &HashMap<Buf, u64>) -> (Vec<u64>, Vec<usize>) {
    let mut bytes: Vec<u8> = Vec::new();
    let mut offsets = Vec::new();
    for a in args {
        offsets.push(bytes.len());
        match a {
            Arg::Ptr(b, off) => bytes.extend((bases[b] + *off as u64).to_le_bytes()),
            Arg::Null => bytes.extend(0u64.to_le_bytes()),
            Arg::I32(v) => bytes.extend(v.to_le_bytes()),
            Arg::U32(v) => bytes.extend(v.to_le_bytes()),
            Arg::F32(v) => bytes.extend(v.to_le_bytes()),
            Arg::Bytes(b) => bytes.extend(b),
        }
        bytes.resize(bytes.len().next_multiple_of(8), 0);
    }
    let storage = bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("padded to 8")))
        .collect();
    (storage, offsets)
}

impl CudaExecutable {
    /// Checks a copy of `len` words to or from `slot` and binds the
    /// context; false when there is nothing to copy.
    fn begin_transfer(&self, slot: Slot, len: usize) -> Result<bool> {
        self.module.check_transfer(slot, len)?;
        if len == 0 {
            return Ok(false);
        }
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        Ok(true)
    }

    fn err(&self, what: impl std::fmt::Display, e: DriverError) -> Error {
        self.dev.err(what, e)
    }

    fn launch(&self, c: &Resolved) -> std::result::Result<(), DriverError> {
        let base = c.storage.as_ptr() as *mut u8;
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, &off) in ptrs.iter_mut().zip(&c.offsets) {
            // SAFETY: every offset is inside `storage` (see `pack`).
            *p = unsafe { base.add(off) } as *mut c_void;
        }
        // SAFETY: `func` belongs to a module this executable keeps loaded;
        // the argument list was checked against the kernel's PTX parameter
        // list at compile; every pointer argument lies in a buffer this
        // executable owns, at offsets the planner bounded by the slots.
        unsafe {
            result::launch_kernel(
                c.func.0,
                (c.grid[0], c.grid[1], c.grid[2]),
                (BLOCK, 1, 1),
                0,
                self.dev.stream.cu_stream(),
                &mut ptrs[..c.offsets.len()],
            )
        }
    }

    fn launch_all(&self, p: usize) -> Result<()> {
        for c in &self.programs[p].calls {
            self.launch(c)
                .map_err(|e| self.err(format!("launching {}", c.what), e))?;
            if self.sync_each {
                self.dev
                    .stream
                    .synchronize()
                    .map_err(|e| self.err(&c.what, e))?;
            }
        }
        Ok(())
    }

    /// Record program `p` into a CUDA graph; None (and the stream left
    /// usable) if any step fails.
    fn capture(&self, p: usize) -> Option<Graph> {
        let s = &self.dev.stream;
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .ok()?;
        let launched = self.programs[p]
            .calls
            .iter()
            .all(|c| self.launch(c).is_ok());
        // End the capture whatever happened, so the stream is usable again.
        let g = s.end_capture(sys::CUgraphInstantiate_flags(0));
        match (launched, g) {
            (true, Ok(Some(g))) => Some(Graph(g)),
            _ => None,
        }
    }

    /// Queue program `p` (scalars first); no synchronization.
    fn enqueue(&mut self, p: usize, scalars: &[f32]) -> Result<()> {
        let module = Arc::clone(&self.module);
        let prog = module.program_for_run(p, scalars)?;
        self.dev
            .ctx
            .bind_to_thread()
            .map_err(|e| self.err("binding the context", e))?;
        if !scalars.is_empty() {
            let stream = Arc::clone(&self.dev.stream);
            stream
                .memcpy_htod(scalars, &mut self.scalars)
                .map_err(|e| self.err("uploading the scalars", e))?;
        }
        if self.sync_each {
            return self.launch_all(p);
        }
        let state = std::mem::replace(&mut self.programs[p].graph, GraphState::Off);
        self.programs[p].graph = match state {
            GraphState::Ready(g) => {
                g.0.launch()
                    .map_err(|e| self.err(format!("replaying program '{}'", prog.name), e))?;
                GraphState::Ready(g)
            }
            GraphState::Eager { good_runs } if good_runs > 0 => match self.capture(p) {
                Some(g) => {
                    g.0.launch()
                        .map_err(|e| self.err(format!("replaying program '{}'", prog.name), e))?;
                    GraphState::Ready(g)
                }
                None => {
                    self.launch_all(p)?;
                    GraphState::Off
                }
            },
            other => {
                self.launch_all(p)?;
                other
            }
        };
        Ok(())
    }

    fn sync(&self, p: usize) -> Result<()> {
        self.dev.stream.synchronize().map_err(|e| {
            self.err(
                format!(
                    "running program '{}' (set GPURT_CUDA_SYNC=1 to name the failing kernel)",
                    self.programs[p].name
                ),
                e,
            )
        })
    }

    /// Mean device time of one run of program `p`, in milliseconds, over
    /// `iters` runs queued back to back (after two warm-up runs, which
    /// also capture the graph). For benchmarks.
    pub fn time_program(&mut self, p: usize, scalars: &[f32], iters: usize) -> Result<f64> {
        for _ in 0..2 {
            self.run(p, scalars)?;
        }
        let ev = |what| {
            self.dev
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| self.err(what, e))
        };
        let (start, end) = (ev("creating an event")?, ev("creating an event")?);
        start
            .record(&self.dev.stream)
            .map_err(|e| self.err("recording an event", e))?;
        for _ in 0..iters.max(1) {
            self.enqueue(p, scalars)?;
        }
        end.record(&self.dev.stream)
            .map_err(|e| self.err("recording an event", e))?;
        self.sync(p)?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| self.err("reading an event", e))?;
        Ok(ms as f64 / iters.max(1) as f64)
    }

    /// Whether program `p` now replays as a captured CUDA graph.
    pub fn is_captured(&self, p: usize) -> bool {
        matches!(
            self.programs.get(p).map(|x| &x.graph),
            Some(GraphState::Ready(_))
        )
    }
}

/// The arena words of `slot`, writable.
fn slot_mut<'a>(
    arena: &'a mut CudaSlice<f32>,
    dev: &Device,
    slot: Slot,
) -> Result<cudarc::driver::CudaViewMut<'a, f32>> {
    arena
        .try_slice_mut(slot.offset..slot.end())
        .ok_or_else(|| Error::Device {
            device: dev.label(),
            detail: "slot outside the arena".into(),
        })
}

impl Executable for CudaExecutable {
    /// NCCL on the device where every rank can load it (the ranks agree
    /// first, so none waits in NCCL while another waits in MPI); else the
    /// host path.
    #[cfg(feature = "nccl")]
    fn all_reduce(
        &mut self,
        slot: Slot,
        group: &dyn crate::dist::Collective,
        staging: &mut Vec<f32>,
    ) -> Result<()> {
        if group.world() <= 1 {
            return Ok(());
        }
        if self.nccl.is_none() {
            self.nccl = Some(super::nccl::join_if_every_rank_can(
                &self.dev.stream,
                group,
            )?);
        }
        let Some(Some(nccl)) = &self.nccl else {
            return crate::backend::host_all_reduce(self, slot, group, staging);
        };
        nccl.all_reduce_sum(&mut slot_mut(&mut self.arena, &self.dev, slot)?)
    }

    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()> {
        if !self.begin_transfer(slot, data.len())? {
            return Ok(());
        }
        let mut view = slot_mut(&mut self.arena, &self.dev, slot)?;
        self.dev
            .stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| self.dev.err("copying to the device", e))
    }

    fn read(&mut self, slot: Slot, out: &mut [f32]) -> Result<()> {
        if !self.begin_transfer(slot, out.len())? {
            return Ok(());
        }
        let view = self
            .arena
            .try_slice(slot.offset..slot.end())
            .ok_or_else(|| Error::Device {
                device: self.dev.label(),
                detail: "slot outside the arena".into(),
            })?;
        self.dev
            .stream
            .memcpy_dtoh(&view, out)
            .map_err(|e| self.err("copying from the device", e))?;
        self.dev
            .stream
            .synchronize()
            .map_err(|e| self.err("copying from the device", e))
    }

    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()> {
        self.enqueue(program, scalars)?;
        self.sync(program)?;
        if let GraphState::Eager { good_runs } = &mut self.programs[program].graph {
            *good_runs += 1;
        }
        Ok(())
    }
}
