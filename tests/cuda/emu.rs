//! The CUDA kernels and the CUDA launch plan, checked without a GPU.
//!
//! kernels/*.cu are compiled as host C++ against a small emulation of the
//! CUDA execution model (below): blocks run one after another, the threads
//! of a block are cooperative fibers that switch only at barriers, and
//! warp shuffles exchange through a per-block buffer between two warp
//! barriers. Running every thread until it blocks is the most adversarial
//! schedule for a missing `__syncthreads`, and a barrier some threads never
//! reach is reported as a deadlock. The planner's exact calls (kernels,
//! grids, argument bytes) then run over a host arena, for every case of the
//! shared catalogue (tests/common/catalogue.rs), on two device shapes (1 SM:
//! big tiles, grid-stride loops that wrap; 132 SMs: small tiles, split-K and
//! split reductions), and every result is compared with the CPU backend.
//!
//! Needs a C++17 compiler (`$CXX`, else g++). Without one the test prints a
//! SKIPPED line, except under CI, where it fails.

#![cfg(feature = "cuda")]

use crate::common::catalogue::{self, Prepared};

use gpurt::backend::cuda::args::{Arg, Buf, Call};
use gpurt::backend::cuda::plan::{plan, Plan, Target};
use gpurt::backend::cuda::ptx;
use gpurt::backend::Executable;
use gpurt::graph::plan::{Module, Slot};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

const EMU_H: &str = r#"
// Host emulation of the CUDA execution model, for tests only.
#pragma once
// Fibers switch with _longjmp between their stacks, which the fortified
// longjmp (__longjmp_chk) would refuse.
#undef _FORTIFY_SOURCE
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <setjmp.h>
#include <ucontext.h>

using std::max;
using std::min;

struct emu_uint3 { unsigned x, y, z; };
struct float2 { float x, y; } __attribute__((aligned(8)));
struct float4 { float x, y, z, w; } __attribute__((aligned(16)));
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace emu {
enum { RUN = 0, BLOCK_BARRIER = 1, WARP_BARRIER = 2, DONE = 3 };
// One fiber per thread slot, started once on its own stack (ucontext) and
// reused by every block after: it runs the kernel body, waits as DONE, and
// runs the body again when the next block resumes it. Switches are
// _setjmp/_longjmp, which save no signal mask (swapcontext makes a system
// call on every switch, most of the emulation's time).
struct Fiber { ucontext_t ctx; jmp_buf jb; emu_uint3 tid; int state; bool started; };
inline Fiber* cur = nullptr;
inline emu_uint3 block_idx, block_dim, grid_dim;
inline jmp_buf sched;
inline double lanes[1024];
inline std::function<void()>* body = nullptr;
__attribute__((noinline)) inline void wait(int s) {
  cur->state = s;
  if (!_setjmp(cur->jb)) _longjmp(sched, 1);
}
inline void trampoline() {
  for (;;) {
    (*body)();
    wait(DONE);
  }
}
// Run fiber `fb` until it waits (starting it the first time).
__attribute__((noinline)) inline void resume(Fiber& fb, char* stack, size_t size) {
  cur = &fb;
  if (_setjmp(sched)) return;
  if (fb.started) _longjmp(fb.jb, 1);
  fb.started = true;
  getcontext(&fb.ctx);
  fb.ctx.uc_stack.ss_sp = stack;
  fb.ctx.uc_stack.ss_size = size;
  fb.ctx.uc_link = nullptr;
  makecontext(&fb.ctx, trampoline, 0);
  setcontext(&fb.ctx);
}

// Run the grid; 0 on success, -1 on a barrier that cannot complete.
inline int run(unsigned gx, unsigned gy, unsigned gz, unsigned threads, std::function<void()> f) {
  const size_t STACK = 64 * 1024;
  static std::vector<Fiber> fibers(1024);
  static std::vector<char> stacks(1024 * STACK);
  if (threads == 0 || threads > 1024 || threads % 32) return -3;
  body = &f;
  grid_dim = {gx, gy, gz};
  block_dim = {threads, 1, 1};
  for (unsigned z = 0; z < gz; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++) {
        block_idx = {x, y, z};
        for (unsigned t = 0; t < threads; t++) {
          fibers[t].tid = {t, 0, 0};
          fibers[t].state = RUN;
        }
        for (;;) {
          for (unsigned t = 0; t < threads; t++)
            if (fibers[t].state == RUN) resume(fibers[t], &stacks[t * STACK], STACK);
          unsigned live = 0, at_block = 0;
          bool released = false;
          for (unsigned w = 0; w < threads / 32; w++) {
            unsigned wl = 0, ww = 0;
            for (unsigned t = w * 32; t < w * 32 + 32; t++) {
              if (fibers[t].state != DONE) wl++;
              if (fibers[t].state == WARP_BARRIER) ww++;
              if (fibers[t].state == BLOCK_BARRIER) at_block++;
            }
            live += wl;
            if (wl > 0 && ww == wl) {
              for (unsigned t = w * 32; t < w * 32 + 32; t++) fibers[t].state = RUN;
              released = true;
            }
          }
          if (live == 0) break;
          if (released) continue;
          if (at_block == live) {
            for (unsigned t = 0; t < threads; t++)
              if (fibers[t].state == BLOCK_BARRIER) fibers[t].state = RUN;
            continue;
          }
          std::fprintf(stderr, "emu: block (%u,%u,%u): threads wait at different barriers\n", x, y, z);
          // Abandon the stuck fibers: they start afresh next time.
          for (unsigned t = 0; t < threads; t++)
            if (fibers[t].state != DONE) fibers[t].started = false;
          return -1;
        }
      }
  return 0;
}

template <class... A, size_t... I>
int launch_impl(void (*k)(A...), unsigned gx, unsigned gy, unsigned gz, void** args,
                std::index_sequence<I...>) {
  std::tuple<std::decay_t<A>...> t{*static_cast<std::decay_t<A>*>(args[I])...};
  return run(gx, gy, gz, 256, [&] { std::apply(k, t); });
}
template <class... A>
int launch(void (*k)(A...), unsigned gx, unsigned gy, unsigned gz, void** args) {
  return launch_impl(k, gx, gy, gz, args, std::index_sequence_for<A...>{});
}
}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline void __syncthreads() { emu::wait(emu::BLOCK_BARRIER); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask) {
  unsigned t = emu::cur->tid.x;
  emu::lanes[t] = (double)v;
  emu::wait(emu::WARP_BARRIER);
  T r = (T)emu::lanes[(t & ~31u) | ((t & 31u) ^ (unsigned)mask)];
  emu::wait(emu::WARP_BARRIER);
  return r;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline unsigned __float2uint_rz(float f) {
  if (!(f > 0.0f)) return 0;
  if (f >= 4294967296.0f) return 0xffffffffu;
  return (unsigned)f;
}
"#;

type LaunchFn = unsafe extern "C" fn(*const c_char, u32, u32, u32, *mut *mut c_void) -> c_int;

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
const RTLD_NOW: c_int = 2;

/// The kernels built for the host, one entry point per kernels/*.cu file.
struct Emu {
    launch: HashMap<&'static str, LaunchFn>,
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Build (or reuse) the host library; Err(reason) when no compiler.
fn build() -> Result<Emu, String> {
    let candidates: Vec<String> = std::env::var("CXX")
        .into_iter()
        .chain(["g++", "c++", "clang++"].map(String::from))
        .collect();
    let cxx = candidates
        .iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .cloned()
        .ok_or_else(|| format!("no C++ compiler (tried {candidates:?})"))?;
    let dir = kernels_dir();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")))
        .collect();
    sources.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    use std::hash::{Hash, Hasher};
    EMU_H.hash(&mut h);
    for s in &sources {
        std::fs::read(s).unwrap().hash(&mut h);
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-emu-{:016x}", h.finish()));
    let lib = out.join("libgpurt_kernels_emu.so");
    if !lib.exists() {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("emu.h"), EMU_H).unwrap();
        let mut children = Vec::new();
        let mut objects = Vec::new();
        for f in ptx::FILES {
            let entries: Vec<&str> = ptx::entries(f.text).into_iter().map(|(n, _)| n).collect();
            let mut tu = format!(
                "#include \"emu.h\"\n#include \"{}\"\nextern \"C\" int emu_launch_{}(const char* n, unsigned gx, unsigned gy, unsigned gz, void** a) {{\n",
                dir.join(format!("{}.cu", f.name)).display(),
                f.name
            );
            for e in entries {
                tu += &format!(
                    "  if (!std::strcmp(n, \"{e}\")) return emu::launch({e}, gx, gy, gz, a);\n"
                );
            }
            tu += "  return -2;\n}\n";
            let src = out.join(format!("{}.cpp", f.name));
            std::fs::write(&src, tu).unwrap();
            let obj = out.join(format!("{}.o", f.name));
            children.push((
                f.name,
                Command::new(&cxx)
                    .args([
                        "-std=c++17",
                        "-O2",
                        "-fPIC",
                        "-w",
                        "-U_FORTIFY_SOURCE",
                        "-c",
                    ])
                    .arg(&src)
                    .arg("-o")
                    .arg(&obj)
                    .spawn()
                    .unwrap(),
            ));
            objects.push(obj);
        }
        for (name, mut c) in children {
            assert!(
                c.wait().unwrap().success(),
                "host build of kernels/{name}.cu failed"
            );
        }
        let tmp = out.join("lib.tmp.so");
        let st = Command::new(&cxx)
            .arg("-shared")
            .args(&objects)
            .arg("-o")
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success(), "linking the emulated kernels failed");
        std::fs::rename(&tmp, &lib).unwrap();
    }
    let path = CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: FFI into the C library loader with a valid path; the library
    // stays loaded for the life of the process.
    let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
    if handle.is_null() {
        // SAFETY: dlerror returns a C string describing the failure.
        let why = unsafe { CStr::from_ptr(dlerror()) }
            .to_string_lossy()
            .into_owned();
        panic!("loading {}: {why}", lib.display());
    }
    let mut launch = HashMap::new();
    for f in ptx::FILES {
        let sym = CString::new(format!("emu_launch_{}", f.name)).unwrap();
        // SAFETY: the symbol was defined above with exactly `LaunchFn`'s
        // signature.
        let p = unsafe { dlsym(handle, sym.as_ptr()) };
        assert!(!p.is_null(), "no {sym:?} in the emulation library");
        // SAFETY: see above.
        launch.insert(f.name, unsafe {
            std::mem::transmute::<*mut c_void, LaunchFn>(p)
        });
    }
    Ok(Emu { launch })
}

fn emu() -> &'static Result<Emu, String> {
    static EMU: OnceLock<Result<Emu, String>> = OnceLock::new();
    EMU.get_or_init(build)
}

/// 16-byte-aligned host memory standing in for a device buffer.
struct HostBuf(Vec<u128>);

impl HostBuf {
    fn new(bytes: usize) -> Self {
        HostBuf(vec![0; bytes.div_ceil(16).max(1)])
    }
    fn addr(&mut self) -> u64 {
        self.0.as_mut_ptr() as u64
    }
    fn f32s(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.0)
    }
}

/// The plan executed on the host: an `Executable` like the device one.
struct EmuExe {
    emu: &'static Emu,
    plan: Plan,
    arena: HostBuf,
    work: HostBuf,
    meta: HostBuf,
    scalars: HostBuf,
}

impl EmuExe {
    fn new(emu: &'static Emu, module: Arc<Module>, target: Target) -> gpurt::Result<Self> {
        let plan = plan(&module, target)?;
        let mut meta = HostBuf::new(plan.meta.len());
        bytemuck::cast_slice_mut::<u128, u8>(&mut meta.0)[..plan.meta.len()]
            .copy_from_slice(&plan.meta);
        Ok(EmuExe {
            emu,
            arena: HostBuf::new(4 * module.arena_words),
            work: HostBuf::new(plan.work_bytes),
            scalars: HostBuf::new(4 * plan.scalars),
            meta,
            plan,
        })
    }

    fn call(&mut self, c: &Call) -> Result<(), String> {
        let (file, params) = ptx::find(c.kernel).ok_or(format!("{} not in the PTX", c.kernel))?;
        ptx::check_args(c.kernel, &params, &c.args)?;
        let bases: HashMap<Buf, u64> = [
            (Buf::Arena, self.arena.addr()),
            (Buf::Work, self.work.addr()),
            (Buf::Meta, self.meta.addr()),
            (Buf::Scalars, self.scalars.addr()),
        ]
        .into();
        // One 8-byte-aligned cell group per argument, as the device packs.
        let mut cells: Vec<Vec<u64>> = c
            .args
            .iter()
            .map(|a| {
                let bytes: Vec<u8> = match a {
                    Arg::Ptr(b, off) => (bases[b] + *off as u64).to_le_bytes().to_vec(),
                    Arg::Null => 0u64.to_le_bytes().to_vec(),
                    Arg::I32(v) => v.to_le_bytes().to_vec(),
                    Arg::U32(v) => v.to_le_bytes().to_vec(),
                    Arg::F32(v) => v.to_le_bytes().to_vec(),
                    Arg::Bytes(b) => b.clone(),
                };
                let mut cell = vec![0u64; bytes.len().div_ceil(8)];
                bytemuck::cast_slice_mut::<u64, u8>(&mut cell)[..bytes.len()]
                    .copy_from_slice(&bytes);
                cell
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> = cells
            .iter_mut()
            .map(|c| c.as_mut_ptr() as *mut c_void)
            .collect();
        let name = CString::new(c.kernel).unwrap();
        // The emulator's scheduler is global state: one launch at a time.
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: FFI into the emulated kernels; every pointer argument
        // points into this executable's host buffers at offsets the planner
        // derived from the module's slots, and the argument list matched
        // the kernel's PTX signature above.
        let rc = unsafe {
            (self.emu.launch[file.name])(
                name.as_ptr(),
                c.grid[0],
                c.grid[1],
                c.grid[2],
                ptrs.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(format!("{}: emulated launch failed ({rc})", c.kernel));
        }
        Ok(())
    }
}

impl Executable for EmuExe {
    fn write(&mut self, slot: Slot, data: &[f32]) -> gpurt::Result<()> {
        self.arena.f32s()[slot.offset..slot.end()].copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, slot: Slot, out: &mut [f32]) -> gpurt::Result<()> {
        out.copy_from_slice(&self.arena.f32s()[slot.offset..slot.end()]);
        Ok(())
    }
    fn run(&mut self, program: usize, scalars: &[f32]) -> gpurt::Result<()> {
        self.scalars.f32s()[..scalars.len()].copy_from_slice(scalars);
        let calls: Vec<Call> = self.plan.programs[program]
            .calls
            .iter()
            .map(|(_, c)| c.clone())
            .collect();
        for c in &calls {
            self.call(c).map_err(gpurt::Error::Usage)?;
        }
        Ok(())
    }
}

// SAFETY: the raw buffers are owned; the library handle functions are
// plain C entry points.
unsafe impl Send for EmuExe {}

fn check_all(cases: Vec<Prepared>, what: &str) {
    let emu = match emu() {
        Ok(e) => e,
        Err(why) if !ci() => {
            println!("SKIPPED: {what}: kernels not emulated ({why})");
            return;
        }
        Err(why) => panic!("{what}: {why} (CI needs a C++ compiler)"),
    };
    let on = |sms: u32| {
        move |m: Arc<Module>| {
            EmuExe::new(emu, m, Target { sms }).map(|exe| Box::new(exe) as Box<dyn Executable>)
        }
    };
    let (one, many) = (on(1), on(132));
    catalogue::check_all(what, &cases, &[("1 SMs", &one), ("132 SMs", &many)]);
}

#[test]
fn emulated_kernels_match_cpu_on_every_op() {
    check_all(catalogue::op_cases(), "emulated ops");
}

#[test]
fn emulated_kernels_match_cpu_on_train_steps() {
    check_all(catalogue::model_cases(), "emulated train steps");
}

/// Fused attention against matmul, mask, softmax, matmul, both through
/// the emulated CUDA kernels (132 SMs): T in 1, 7, 64, 257, head sizes 16,
/// 32, 64, a fully padded sequence in every batch.
#[test]
fn emulated_fused_attention_matches_the_composition() {
    let what = "emulated fused attention";
    let emu = match emu() {
        Ok(e) => e,
        Err(why) if !ci() => {
            println!("SKIPPED: {what}: kernels not emulated ({why})");
            return;
        }
        Err(why) => panic!("{what}: {why} (CI needs a C++ compiler)"),
    };
    crate::common::attention::check_backend(
        &|m| EmuExe::new(emu, m, Target { sms: 132 }).map(|e| Box::new(e) as Box<dyn Executable>),
        1e-4,
    );
}

/// The CUDA lowering refuses a module fused with the CPU's extras (a
/// pooled convolution) with a typed error: no device needed.
#[test]
fn a_cpu_only_fusion_is_refused_with_a_typed_error() {
    let module = crate::common::pooled_conv_module();
    crate::common::assert_refuses_pooled_conv("cuda", plan(&module, Target { sms: 132 }));
}
