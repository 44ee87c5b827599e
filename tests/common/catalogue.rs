//! The op-case catalogue: every case is written here once and run on every
//! backend present, each against the CPU backend (the oracle): the wgpu
//! backend (tests/wgpu/parity.rs), the CUDA kernels under host emulation
//! (tests/cuda/emu.rs) and the CUDA backend on a GPU (tests/cuda/parity.rs);
//! tests/cuda/ptx.rs checks every launch the CUDA planner makes for them.
//!
//! Every op of `gpurt::ops::Op` appears, forward and backward, unfused and
//! after the fusion passes (which produce the fused ops: linear/conv with
//! an activation, act-backward + bias, elementwise programs, constant loss
//! gradient, multi-tensor optimiser updates, in-place launches), on odd
//! sizes (1, 3, 7, 33, ...) and past one tile or workgroup (split-K, long
//! rows), plus whole classifier train steps. Every output and persistent
//! tensor is compared: relative error ‖got − cpu‖ / ‖cpu‖ < 1e-4 (1e-3 for
//! reductions over more than 10,000 elements), integer outputs exactly.
//!
//! Data is random and never all zero: `pos_` inputs are in [0.5, 1.5),
//! `away_` inputs (divisors) have |x| in [0.5, 1), state (variances,
//! Adam's second moment) is in [0.1, 1.1), labels are below the case's
//! class count, everything else is uniform in [-1, 1).

use super::{bn_params, input, rel_err_f32, weighted_sum};
use gpurt::backend::Executable;
use gpurt::graph::autodiff::gradients;
use gpurt::graph::fuse::fuse;
use gpurt::graph::ir::{Graph, Role, ValueId};
use gpurt::graph::plan::{compile, Module, Slot};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::ops::{Activation, BinaryKind, ConvParams, Op, PoolParams};
use gpurt::optim::{append_update, OptimConfig, OptimizerKind};
use gpurt::tensor::{DType, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

pub const TOL: f64 = 1e-4;
pub const TOL_BIG_REDUCTION: f64 = 1e-3;

/// The tolerance of a reduction over `n` elements.
fn tol_for(n: usize) -> f64 {
    if n > 10_000 {
        TOL_BIG_REDUCTION
    } else {
        TOL
    }
}

/// A module ready to run: what to write, how often to run, what to compare.
pub struct Prepared {
    pub name: String,
    pub module: Arc<Module>,
    pub program: usize,
    /// Written once (parameters, state).
    pub persistent: Vec<(Slot, Vec<f32>)>,
    /// Written before every run (the planner reuses input slots).
    pub inputs: Vec<(Slot, Vec<f32>)>,
    pub scalars: Vec<f32>,
    pub runs: usize,
    /// (name, slot, u32 data).
    pub checks: Vec<(String, Slot, bool)>,
    pub tol: f64,
}

/// Run on any executable; returns the checked tensors in order.
pub fn run(exe: &mut dyn Executable, p: &Prepared) -> gpurt::Result<Vec<Vec<f32>>> {
    for (s, d) in &p.persistent {
        exe.write(*s, d)?;
    }
    for _ in 0..p.runs {
        for (s, d) in &p.inputs {
            exe.write(*s, d)?;
        }
        exe.run(p.program, &p.scalars)?;
    }
    p.checks
        .iter()
        .map(|(_, s, _)| {
            let mut out = vec![0.0; s.len];
            exe.read(*s, &mut out)?;
            Ok(out)
        })
        .collect()
}

/// [`rel_err_f32`], except that NaN in the same places on both sides
/// counts as equal (bad-label rows are NaN on purpose).
pub fn rel_err_nan_eq(a: &[f32], b: &[f32]) -> f64 {
    let (x, y): (Vec<f32>, Vec<f32>) = a
        .iter()
        .zip(b)
        .filter(|(x, y)| !(x.is_nan() && y.is_nan()))
        .map(|(x, y)| (*x, *y))
        .unzip();
    rel_err_f32(&x, &y)
}

/// Compare a run against the CPU oracle.
pub fn compare(p: &Prepared, want: &[Vec<f32>], got: &[Vec<f32>]) -> Result<(), String> {
    for (((name, _, is_u32), w), g) in p.checks.iter().zip(want).zip(got) {
        if g.len() != w.len() {
            return Err(format!(
                "{}: {name}: {} values, the CPU has {}",
                p.name,
                g.len(),
                w.len()
            ));
        }
        if *is_u32 {
            let (wb, gb): (Vec<u32>, Vec<u32>) = (
                w.iter().map(|x| x.to_bits()).collect(),
                g.iter().map(|x| x.to_bits()).collect(),
            );
            if wb != gb {
                return Err(format!("{}: {name}: integer output differs", p.name));
            }
            continue;
        }
        let e = rel_err_nan_eq(g, w);
        if e.is_nan() || e >= p.tol {
            return Err(format!(
                "{}: {name}: relative error {e:.3e} >= {:.0e}\n  got  {:?}\n  want {:?}",
                p.name,
                p.tol,
                &g[..g.len().min(6)],
                &w[..w.len().min(6)]
            ));
        }
    }
    Ok(())
}

/// The CPU backend's results (the oracle).
pub fn run_cpu(p: &Prepared) -> Vec<Vec<f32>> {
    use gpurt::backend::Backend;
    let mut exe = gpurt::backend::cpu::CpuBackend::new()
        .compile(Arc::clone(&p.module))
        .unwrap_or_else(|e| panic!("{}: cpu compile: {e}", p.name));
    run(exe.as_mut(), p).unwrap_or_else(|e| panic!("{}: cpu run: {e}", p.name))
}

/// Something that turns a module into an executable: a backend's
/// `compile`, or an emulator.
pub type Compile<'a> = &'a dyn Fn(Arc<Module>) -> gpurt::Result<Box<dyn Executable>>;

/// Run every case on each `(label, compile)` target and compare it with the
/// CPU; prints one `ok`/`FAIL` line per case and target, then fails naming
/// every failing case.
pub fn check_all(what: &str, cases: &[Prepared], targets: &[(&str, Compile)]) {
    let mut failures = Vec::new();
    for p in cases {
        let want = run_cpu(p);
        for (label, compile) in targets {
            let res = compile(Arc::clone(&p.module))
                .and_then(|mut exe| run(exe.as_mut(), p))
                .map_err(|e| format!("{}: {e}", p.name))
                .and_then(|got| compare(p, &want, &got));
            match res {
                Ok(()) => println!("ok   {} ({label})", p.name),
                Err(e) => {
                    println!("FAIL {e} ({label})");
                    failures.push(format!("{e} ({label})"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len() * targets.len(),
        failures.join("\n")
    );
}

/// Data for a value, by name prefix: `pos_` in [0.5, 1.5), `away_` with
/// |x| in [0.5, 1) (divisors), state in [0.1, 1.1) (variances, Adam's v),
/// u32 values as labels below `classes` (`len*`: lengths in 0..=classes),
/// else uniform in [-1, 1).
fn data_for(
    name: &str,
    role: &Role,
    dtype: DType,
    n: usize,
    classes: u32,
    r: &mut ChaCha8Rng,
) -> Vec<f32> {
    if dtype == DType::U32 && name.starts_with("len") {
        // Sequence lengths: 0 (a fully padded sequence) to `classes`.
        return (0..n)
            .map(|_| f32::from_bits(r.random_range(0..=classes)))
            .collect();
    }
    if dtype == DType::U32 {
        return (0..n)
            .map(|_| f32::from_bits(r.random_range(0..classes.max(1))))
            .collect();
    }
    let pos = name.starts_with("pos_") || matches!(role, Role::State(_));
    let v: Vec<f32> = (0..n)
        .map(|_| {
            if pos {
                r.random_range(0.5f32..1.5)
                    - if matches!(role, Role::State(_)) {
                        0.4
                    } else {
                        0.0
                    }
            } else if name.starts_with("away_") {
                let m = r.random_range(0.5f32..1.0);
                if r.random_bool(0.5) {
                    m
                } else {
                    -m
                }
            } else {
                r.random_range(-1.0f32..1.0)
            }
        })
        .collect();
    assert!(
        n == 0 || v.iter().any(|&x| x != 0.0),
        "all-zero test data for {name}"
    );
    v
}

/// Prepare a module (program `program`) with random inputs and state.
/// Runtime scalars are `scalars` where named there, else lr = 0.01,
/// step = 3 and 1 for any other.
#[allow(clippy::too_many_arguments)]
pub fn prepare_module(
    name: &str,
    module: Module,
    program: usize,
    classes: u32,
    runs: usize,
    tol: f64,
    seed: u64,
    scalars: &[(&str, f32)],
) -> Prepared {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let prog = &module.programs[program];
    let persistent = module
        .persistent
        .iter()
        .map(|b| {
            let role = if b.name.starts_with("optim.") || b.name.contains("running_") {
                Role::State(b.name.clone())
            } else {
                Role::Param(b.name.clone())
            };
            (
                b.slot,
                data_for(&b.name, &role, b.dtype, b.slot.len, classes, &mut r),
            )
        })
        .collect();
    let inputs = prog
        .inputs
        .iter()
        .map(|b| {
            (
                b.slot,
                data_for(
                    &b.name,
                    &Role::Input(b.name.clone()),
                    b.dtype,
                    b.slot.len,
                    classes,
                    &mut r,
                ),
            )
        })
        .collect();
    let scalars = module
        .scalars
        .iter()
        .map(|s| match scalars.iter().find(|(k, _)| k == s) {
            Some((_, v)) => *v,
            None => match s.as_str() {
                "lr" => 0.01,
                "step" => 3.0,
                _ => 1.0,
            },
        })
        .collect();
    let mut checks: Vec<(String, Slot, bool)> = prog
        .outputs
        .iter()
        .map(|b| (b.name.clone(), b.slot, b.dtype == DType::U32))
        .collect();
    checks.extend(
        module
            .persistent
            .iter()
            .map(|b| (b.name.clone(), b.slot, false)),
    );
    Prepared {
        name: name.to_string(),
        module: Arc::new(module),
        program,
        persistent,
        inputs,
        scalars,
        runs,
        checks,
        tol,
    }
}

/// A graph case, unfused and fused (when fusion changes it).
pub fn graph_case(out: &mut Vec<Prepared>, name: &str, g: Graph, classes: u32, tol: f64) {
    graph_case_with(out, name, g, classes, tol, &[])
}

/// [`graph_case`] with runtime scalars (see [`prepare_module`]).
pub fn graph_case_with(
    out: &mut Vec<Prepared>,
    name: &str,
    g: Graph,
    classes: u32,
    tol: f64,
    scalars: &[(&str, f32)],
) {
    assert!(!g.outputs.is_empty(), "{name}: no outputs");
    let seed = out.len() as u64 + 1;
    let fg = fused(&g);
    let m = compile(&[("p", &g)]).unwrap_or_else(|e| panic!("{name}: {e}"));
    out.push(prepare_module(name, m, 0, classes, 1, tol, seed, scalars));
    if let Some(fg) = fg {
        let m = compile(&[("p", &fg)]).unwrap_or_else(|e| panic!("{name} fused: {e}"));
        out.push(prepare_module(
            &format!("{name} [fused]"),
            m,
            0,
            classes,
            1,
            tol,
            seed,
            scalars,
        ));
    }
}

/// `g` after the fusion passes, or None when they change nothing.
fn fused(g: &Graph) -> Option<Graph> {
    let mut f = g.clone();
    (!fuse(&mut f).is_empty()).then_some(f)
}

/// The launches of `g` that run in place, and the kernels launched.
fn launches(g: &Graph) -> (usize, Vec<&'static str>) {
    let m = compile(&[("p", g)]).unwrap();
    let l = &m.programs[0].launches;
    (
        l.iter().filter(|l| l.inplace.is_some()).count(),
        l.iter().map(|l| l.op.kernel_name()).collect(),
    )
}

/// The kernels `g` launches after fusion.
fn fused_kernels(g: &Graph) -> Vec<&'static str> {
    launches(&fused(g).unwrap_or_else(|| g.clone())).1
}

/// Forward output `y` plus the gradients of Σ y⊙r with respect to `wrt`
/// (outputs `d<name>`): every backward op of y's producers, as autodiff
/// emits them.
fn with_grads(g: &mut Graph, y: ValueId, wrt: &[(&str, ValueId)]) {
    g.set_output("y", y);
    let loss = weighted_sum(g, y);
    let ids: Vec<ValueId> = wrt.iter().map(|(_, v)| *v).collect();
    let grads = gradients(g, loss, &ids).unwrap();
    for ((n, _), d) in wrt.iter().zip(grads) {
        g.set_output(&format!("d{n}"), d);
    }
}

const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Tanh,
];

fn matmul_cases(out: &mut Vec<Prepared>) {
    // (batch dims, m, k, n), each with every transpose: ragged tiles
    // (33x17x65, 65x70x130), one and two full tiles, a long K over one
    // tile, split across workgroups (split-K), batched and multi-batched.
    let shapes: [(&[usize], usize, usize, usize); 15] = [
        (&[], 1, 1, 1),
        (&[], 3, 7, 5),
        (&[], 3, 7, 33),
        (&[], 33, 3, 7),
        (&[], 33, 17, 65),
        (&[], 64, 20, 128),
        (&[], 128, 20, 128),
        (&[], 65, 70, 130),
        (&[], 65, 130, 33),
        (&[], 7, 1100, 3),
        (&[], 8, 2100, 9),
        (&[2], 3, 5, 4),
        (&[2], 3, 1100, 5),
        (&[2, 3], 7, 5, 33),
        // Past 2^24 multiply-adds: wgpu's direct style takes wide teams
        // (on hosts of up to 11 cores, where 45 teams occupy every core).
        (&[], 257, 255, 260),
    ];
    for (bd, m, k, n) in shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let dims = |r: usize, c: usize, t: bool| {
                let mut d = bd.to_vec();
                d.extend(if t { [c, r] } else { [r, c] });
                d
            };
            let mut g = Graph::new(false);
            let a = input(&mut g, "a", &dims(m, k, ta));
            let b = input(&mut g, "b", &dims(k, n, tb));
            let y = g.matmul_t(a, ta, b, tb).unwrap();
            g.set_output("y", y);
            graph_case(
                out,
                &format!("matmul {bd:?} {m}x{k}x{n} ta={ta} tb={tb}"),
                g,
                0,
                tol_for(k),
            );
        }
    }
}

fn linear_cases(out: &mut Vec<Prepared>) {
    use Activation::*;
    // Linear with a fused epilogue, on 2-D and 3-D input, with gradients:
    // (input dims, out features, activations, bias settings).
    type Acts<'a> = &'a [Option<Activation>];
    let all: Acts = &[None, Some(Relu), Some(Sigmoid), Some(Tanh)];
    let some: Acts = &[None, Some(Relu), Some(Tanh)];
    let cases: [(&[usize], usize, Acts, &[bool]); 4] = [
        (&[2, 3, 9], 7, all, &[true]),
        (&[1, 1], 1, some, &[false, true]),
        (&[7, 33], 3, some, &[false, true]),
        (&[2, 3, 7], 33, some, &[false, true]),
    ];
    for (dims, o, acts, biases) in cases {
        for &act in acts {
            for &bias in biases {
                let mut g = Graph::new(true);
                let x = input(&mut g, "x", dims);
                let w = g.param("w", [o, *dims.last().unwrap()]).unwrap();
                let b = bias.then(|| g.param("b", [o]).unwrap());
                let y = g.linear_act(x, w, b, act).unwrap();
                let mut wrt = vec![("x", x), ("w", w)];
                wrt.extend(b.map(|b| ("b", b)));
                with_grads(&mut g, y, &wrt);
                graph_case(
                    out,
                    &format!("linear {dims:?}->{o} act={act:?} bias={bias}"),
                    g,
                    0,
                    TOL,
                );
            }
        }
    }
}

/// Where a convolution's activation is: none, inside the conv op (its
/// epilogue), or a separate node after it (fused into the epilogue by the
/// fusion passes).
#[derive(Clone, Copy, Debug)]
enum ConvAct {
    None,
    Epilogue(Activation),
    Node(Activation),
    /// `act(conv + r)` (or `r + conv` with `swap`) as separate nodes: the
    /// residual epilogue fuses them.
    Residual {
        act: Option<Activation>,
        swap: bool,
    },
}

/// (x, w, bias, geometry, activation after the add, residual first).
type ResidualCase = (
    &'static [usize],
    &'static [usize],
    bool,
    ConvParams,
    Option<Activation>,
    bool,
);

fn conv_case(
    out: &mut Vec<Prepared>,
    xs: &[usize],
    ws: &[usize],
    bias: bool,
    p: ConvParams,
    act: ConvAct,
) {
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", xs);
    let w = g.param("w", ws.to_vec()).unwrap();
    let b = bias.then(|| g.param("b", [ws[0]]).unwrap());
    let y = match act {
        ConvAct::None => g.conv2d(x, w, b, p).unwrap(),
        ConvAct::Epilogue(a) => g.conv2d_act(x, w, b, p, Some(a)).unwrap(),
        ConvAct::Node(a) => {
            let y = g.conv2d(x, w, b, p).unwrap();
            g.act(a, y).unwrap()
        }
        ConvAct::Residual { act, swap } => {
            let y = g.conv2d(x, w, b, p).unwrap();
            let ys = g.shape(y).0.clone();
            let r = input(&mut g, "skip", &ys);
            let s = match swap {
                false => g.add(y, r).unwrap(),
                true => g.add(r, y).unwrap(),
            };
            match act {
                Some(a) => g.act(a, s).unwrap(),
                None => s,
            }
        }
    };
    let mut wrt = vec![("x", x), ("w", w)];
    wrt.extend(b.map(|b| ("b", b)));
    with_grads(&mut g, y, &wrt);
    let name = format!(
        "conv2d x{xs:?} w{ws:?} stride={:?} pad={:?} dilation={:?} bias={bias} act={act:?}",
        p.stride, p.pad, p.dilation
    );
    graph_case(out, &name, g, 0, TOL);
}

fn conv_cases(out: &mut Vec<Prepared>) {
    let c = |s: (usize, usize), p: (usize, usize), d: (usize, usize)| ConvParams {
        stride: s,
        pad: p,
        dilation: d,
    };
    let sq = |s: usize, p: usize, d: usize| c((s, s), (p, p), (d, d));
    // (x, w, bias, geometry): wide channels (128, 64), odd sizes, stride,
    // dilation and padding per axis, a 1x1 kernel, a 5x5 kernel.
    let epilogue: [(&[usize], &[usize], bool, ConvParams); 6] = [
        (&[2, 128, 8, 8], &[128, 128, 3, 3], false, sq(1, 1, 1)),
        (&[2, 64, 8, 8], &[64, 64, 3, 3], true, sq(1, 1, 1)),
        (&[2, 3, 9, 8], &[5, 3, 3, 3], true, sq(1, 1, 1)),
        (
            &[1, 4, 11, 10],
            &[6, 4, 3, 2],
            false,
            c((2, 2), (1, 0), (1, 2)),
        ),
        (&[3, 2, 5, 5], &[7, 2, 1, 1], true, sq(1, 0, 1)),
        (&[2, 16, 6, 6], &[8, 16, 5, 5], true, sq(1, 2, 1)),
    ];
    for (xs, ws, bias, p) in epilogue {
        for act in [ConvAct::None, ConvAct::Epilogue(Activation::Relu)] {
            conv_case(out, xs, ws, bias, p, act);
        }
    }
    // The same with relu as a separate node: 1x1 everything, odd sizes,
    // stride 2 with dilation 2, per-axis geometry, and the three split-K
    // shapes (weight gradient with K = 8*14*14 and one output tile;
    // forward with K = 128*9 and one tile; input gradient with K = 128*9
    // and one tile).
    let node: [(&[usize], &[usize], bool, ConvParams); 8] = [
        (&[1, 1, 1, 1], &[1, 1, 1, 1], true, sq(1, 0, 1)),
        (&[2, 3, 7, 7], &[4, 3, 3, 3], true, sq(1, 0, 1)),
        (&[1, 1, 33, 33], &[3, 1, 5, 5], false, sq(2, 2, 1)),
        (&[3, 2, 9, 11], &[5, 2, 3, 3], true, sq(2, 1, 2)),
        (
            &[2, 3, 7, 8],
            &[7, 3, 3, 2],
            true,
            c((1, 2), (2, 0), (1, 3)),
        ),
        (&[8, 2, 16, 16], &[3, 2, 3, 3], true, sq(1, 0, 1)),
        (&[1, 128, 3, 3], &[2, 128, 3, 3], false, sq(1, 1, 1)),
        (&[1, 2, 3, 3], &[128, 2, 3, 3], true, sq(1, 1, 1)),
    ];
    for (xs, ws, bias, p) in node {
        conv_case(out, xs, ws, bias, p, ConvAct::Node(Activation::Relu));
    }
    // Residual epilogues: relu, none and tanh after the add, either
    // operand order; odd sizes, stride 2, a 1x1 projection, the split-K
    // forward (K = 128*9, one tile: the residual is added in the reduce).
    let residual: [ResidualCase; 5] = [
        (
            &[2, 5, 7, 9],
            &[5, 5, 3, 3],
            false,
            sq(1, 1, 1),
            Some(Activation::Relu),
            false,
        ),
        (&[3, 4, 9, 9], &[6, 4, 3, 3], true, sq(2, 1, 1), None, true),
        (
            &[2, 3, 6, 5],
            &[8, 3, 1, 1],
            true,
            sq(2, 0, 1),
            Some(Activation::Relu),
            true,
        ),
        (
            &[1, 128, 3, 3],
            &[2, 128, 3, 3],
            true,
            sq(1, 1, 1),
            Some(Activation::Relu),
            false,
        ),
        (
            &[2, 16, 6, 6],
            &[16, 16, 3, 3],
            true,
            sq(1, 1, 1),
            Some(Activation::Tanh),
            false,
        ),
    ];
    for (xs, ws, bias, p, act, swap) in residual {
        conv_case(out, xs, ws, bias, p, ConvAct::Residual { act, swap });
    }

    // Each conv kernel launched directly (not through autodiff), with a
    // sigmoid epilogue and every geometry parameter different per axis.
    let p = c((2, 1), (1, 2), (1, 2));
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[3, 5, 9, 7]);
    let w = input(&mut g, "w", &[33, 5, 3, 3]);
    let b = input(&mut g, "b", &[33]);
    let y = g
        .conv2d_act(x, w, Some(b), p, Some(Activation::Sigmoid))
        .unwrap();
    let ys = g.shape(y).0.clone();
    let dy = input(&mut g, "dy", &ys);
    let dx = g
        .push1(
            Op::Conv2dGradInput { p },
            vec![dy, w],
            Shape(vec![3, 5, 9, 7]),
        )
        .unwrap();
    let dw = g
        .push1(
            Op::Conv2dGradWeight { p },
            vec![x, dy],
            Shape(vec![33, 5, 3, 3]),
        )
        .unwrap();
    let db = g
        .push1(Op::Conv2dGradBias, vec![dy], Shape(vec![33]))
        .unwrap();
    for (n, v) in [("y", y), ("dx", dx), ("dw", dw), ("db", db)] {
        g.set_output(n, v);
    }
    graph_case(out, "conv2d kernels direct", g, 0, TOL);
}

fn pool_cases(out: &mut Vec<Prepared>) {
    let ps = [
        PoolParams::square(2),
        PoolParams {
            kernel: (3, 3),
            stride: (2, 2),
            pad: (1, 1),
        },
        PoolParams {
            kernel: (3, 2),
            stride: (1, 2),
            pad: (1, 0),
        },
    ];
    for xs in [[2, 3, 7, 9], [1, 1, 3, 3], [2, 3, 7, 7], [1, 2, 33, 9]] {
        for p in ps {
            // Max pooling: y and argmax as outputs, then the gradient.
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &xs);
            let (y, argmax) = g.max_pool2d_with_indices(x, p).unwrap();
            g.set_output("argmax", argmax);
            with_grads(&mut g, y, &[("x", x)]);
            graph_case(out, &format!("max_pool2d x{xs:?} {p:?}"), g, 0, TOL);

            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &xs);
            let y = g.avg_pool2d(x, p).unwrap();
            with_grads(&mut g, y, &[("x", x)]);
            graph_case(out, &format!("avg_pool2d x{xs:?} {p:?}"), g, 0, TOL);
        }
    }
    for xs in [[3, 5, 4, 7], [1, 1, 3, 3], [2, 3, 7, 7], [1, 2, 33, 9]] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &xs);
        let y = g.global_avg_pool(x).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("global_avg_pool x{xs:?}"), g, 0, TOL);
    }
}

fn activation_cases(out: &mut Vec<Prepared>) {
    // Each activation and its backward op launched directly.
    for a in ACTS {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[3, 5, 7]);
        let y = g.act(a, x).unwrap();
        g.set_output("y", y);
        let saved = input(&mut g, "saved", &[3, 5, 7]);
        let dy = input(&mut g, "dy", &[3, 5, 7]);
        let d = g
            .push1(Op::ActBackward(a), vec![saved, dy], Shape(vec![3, 5, 7]))
            .unwrap();
        g.set_output("dx", d);
        graph_case(out, &format!("{} direct [3, 5, 7]", a.name()), g, 0, TOL);
    }
    // Through autodiff, in place: x + c dies at the activation, so the
    // activation runs in place, and its gradient in place over dy.
    for a in ACTS {
        for dims in [vec![1], vec![7, 33], vec![3, 1000]] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let c = input(&mut g, "c", &dims);
            let s = g.add(x, c).unwrap();
            let y = g.act(a, s).unwrap();
            with_grads(&mut g, y, &[("x", x)]);
            let name = format!("{} in place {dims:?}", a.name());
            assert!(launches(&g).0 >= 1, "{name}: expected an in-place launch");
            graph_case(out, &name, g, 0, TOL);
        }
    }
}

/// rsqrt (positive inputs), direct and through autodiff in place, and
/// layer_norm (rsqrt between two reductions; its fused graph runs the
/// elementwise steps as chains) forward and backward, with and without
/// weight and bias, odd row lengths and rows of one element.
fn norm_cases(out: &mut Vec<Prepared>) {
    let a = Activation::Rsqrt;
    let mut g = Graph::new(true);
    let x = input(&mut g, "pos_x", &[3, 5, 7]);
    let y = g.act(a, x).unwrap();
    g.set_output("y", y);
    let saved = input(&mut g, "pos_saved", &[3, 5, 7]);
    let dy = input(&mut g, "dy", &[3, 5, 7]);
    let d = g
        .push1(Op::ActBackward(a), vec![saved, dy], Shape(vec![3, 5, 7]))
        .unwrap();
    g.set_output("dx", d);
    graph_case(out, "rsqrt direct [3, 5, 7]", g, 0, TOL);
    for dims in [vec![1], vec![7, 33], vec![3, 1000]] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "pos_x", &dims);
        let c = input(&mut g, "pos_c", &dims);
        let s = g.add(x, c).unwrap();
        let y = g.act(a, s).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("rsqrt in place {dims:?}"), g, 0, TOL);
    }
    for dims in [
        vec![3, 7],
        vec![2, 3, 33],
        vec![5, 1],
        vec![4, 129],
        vec![3, 100, 128],
    ] {
        for affine in [false, true] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let n = *dims.last().unwrap();
            let w = affine.then(|| g.param("ln.weight", [n]).unwrap());
            let b = affine.then(|| g.param("ln.bias", [n]).unwrap());
            let y = g.layer_norm(x, w, b, 1e-5).unwrap();
            let mut wrt = vec![("x", x)];
            wrt.extend(w.map(|w| ("w", w)));
            wrt.extend(b.map(|b| ("b", b)));
            with_grads(&mut g, y, &wrt);
            let name = format!("layer_norm {dims:?} affine={affine}");
            graph_case(out, &name, g, 0, tol_for(dims.iter().product()));
        }
    }
    // A residual stream: s = x + r feeds the norm and the output; the
    // fused graph forms the sum inside the norm (residual_layer_norm).
    for dims in [vec![5, 1], vec![3, 100, 128]] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &dims);
        let res = input(&mut g, "res", &dims);
        let n = *dims.last().unwrap();
        let w = g.param("ln.weight", [n]).unwrap();
        let b = g.param("ln.bias", [n]).unwrap();
        let s = g.add(x, res).unwrap();
        let y = g.layer_norm(s, Some(w), Some(b), 1e-5).unwrap();
        let t = g.mul(y, s).unwrap();
        with_grads(&mut g, t, &[("x", x), ("res", res), ("w", w)]);
        let name = format!("residual layer_norm {dims:?}");
        graph_case(out, &name, g, 0, tol_for(dims.iter().product()));
    }
}

fn binary_cases(out: &mut Vec<Prepared>) {
    // Broadcasting in every direction, scalars (rank 0 and [1]), up to 7-D;
    // divisors away from zero.
    let shapes: [(&[usize], &[usize]); 12] = [
        (&[4, 5], &[4, 5]),
        (&[3, 1, 5], &[4, 1]),
        (&[2, 3], &[]),
        (&[1, 6], &[5, 1]),
        (&[2, 3, 4, 5, 6, 7, 2], &[4, 1, 6, 1, 1]),
        (&[1], &[1]),
        (&[3, 7], &[3, 7]),
        (&[3, 7], &[7]),
        (&[2, 1, 5], &[3, 1]),
        (&[1], &[4, 3]),
        (&[], &[33]),
        (&[2, 3, 1, 7], &[1, 3, 4, 1]),
    ];
    for k in [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
    ] {
        for (sa, sb) in shapes {
            let mut g = Graph::new(true);
            let a = input(&mut g, "a", sa);
            let b = input(&mut g, "away_b", sb);
            let y = g.binary(k, a, b).unwrap();
            with_grads(&mut g, y, &[("a", a), ("b", b)]);
            graph_case(out, &format!("{} {sa:?} {sb:?}", k.name()), g, 0, TOL);
        }
    }
}

fn elementwise_cases(out: &mut Vec<Prepared>) {
    // A chain the fuser turns into one stack program, with a rank-0 scalar
    // input and an in-place candidate.
    let mut g = Graph::new(true);
    let a = input(&mut g, "a", &[5, 33]);
    let b = input(&mut g, "b", &[5, 33]);
    let c = input(&mut g, "c", &[5, 33]);
    let d = input(&mut g, "away_d", &[5, 33]);
    let s = input(&mut g, "s", &[]);
    let t1 = g.act(Activation::Sigmoid, a).unwrap();
    let t2 = g.mul(t1, b).unwrap();
    let t3 = g.act(Activation::Tanh, c).unwrap();
    let t4 = g.scale(t3, 0.5).unwrap();
    let t5 = g.add(t2, t4).unwrap();
    let t6 = g.div(a, d).unwrap();
    let t7 = g.sub(t5, t6).unwrap();
    let t8 = g.mul(t7, s).unwrap();
    let y = g.act(Activation::Gelu, t8).unwrap();
    with_grads(&mut g, y, &[("a", a), ("c", c)]);
    graph_case(out, "elementwise chain (scalar input) [5, 33]", g, 0, TOL);

    // gelu(a*b + c) * k - tanh(c) / (sigmoid(a) + 2), scaled: a fused
    // program with a constant, a [1] operand and an in-place launch (chains
    // of one element are not fused).
    for dims in [vec![1], vec![7], vec![3, 33], vec![1000, 7]] {
        let mut g = Graph::new(true);
        let a = input(&mut g, "a", &dims);
        let b = input(&mut g, "b", &dims);
        let c = input(&mut g, "c", &dims);
        let k = input(&mut g, "k", &[1]);
        let ab = g.mul(a, b).unwrap();
        let s = g.add(ab, c).unwrap();
        let u = g.act(Activation::Gelu, s).unwrap();
        let u = g.mul(u, k).unwrap();
        let tc = g.act(Activation::Tanh, c).unwrap();
        let sa = g.act(Activation::Sigmoid, a).unwrap();
        let two = g.fill(Shape(vec![1]), 2.0).unwrap();
        let den = g.add(sa, two).unwrap();
        let q = g.div(tc, den).unwrap();
        let y = g.sub(u, q).unwrap();
        let y = g.scale(y, 0.75).unwrap();
        with_grads(&mut g, y, &[("a", a), ("b", b), ("c", c)]);
        let name = format!("elementwise chain (constant, in place) {dims:?}");
        if dims.iter().product::<usize>() > 1 {
            let f = fused(&g).expect("the chain fuses");
            assert!(
                f.nodes
                    .iter()
                    .any(|n| !n.outputs.is_empty() && matches!(n.op, Op::Elementwise(_))),
                "{name}: no fused elementwise program"
            );
            assert!(launches(&f).0 >= 1, "{name}: expected an in-place launch");
        }
        graph_case(out, &name, g, 0, TOL);
    }

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[4, 9]);
    let y = g.scale(x, 0.37).unwrap();
    g.set_output("y", y);
    let f = g.fill([3, 4], 2.5).unwrap();
    g.set_output("f", f);
    graph_case(out, "scale and fill", g, 0, TOL);
}

fn dropout_cases(out: &mut Vec<Prepared>) {
    // The op launched directly (forward only, step = 3).
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[1000, 7]);
    let step = g.scalar("step");
    let y = g
        .push1(
            Op::Dropout {
                p: 0.3,
                seed: 7,
                step,
            },
            vec![x],
            Shape(vec![1000, 7]),
        )
        .unwrap();
    g.set_output("y", y);
    graph_case(out, "dropout direct [1000, 7] p=0.3", g, 0, TOL);

    // Through autodiff, in place over x + c, at two steps (the mask must
    // follow the step like the CPU's).
    for (dims, p) in [(vec![1], 0.5), (vec![7, 33], 0.3), (vec![3, 1000], 0.9)] {
        for step in [1.0, 17.0] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let c = input(&mut g, "c", &dims);
            let s = g.add(x, c).unwrap();
            let y = g.dropout(s, p, 1234).unwrap();
            with_grads(&mut g, y, &[("x", x)]);
            graph_case_with(
                out,
                &format!("dropout in place {dims:?} p={p} step={step}"),
                g,
                0,
                TOL,
                &[("step", step)],
            );
        }
    }
}

fn shape_cases(out: &mut Vec<Prepared>) {
    // (x, y): y = sum_to(0.5 x) and its gradient, broadcast_to from y's
    // shape to x's, and a fill of x's shape. Reductions over more than
    // 10,000 elements are held to 1e-3.
    let sums: [(&[usize], &[usize]); 14] = [
        (&[4, 3, 5], &[1, 3, 1]),
        (&[4, 3, 5], &[5]),
        (&[6, 7], &[1, 1]),
        (&[2, 70, 3], &[2, 1, 3]),
        (&[3, 40_000], &[3, 1]),
        (&[2, 3, 4], &[3, 1]),
        (&[3, 7], &[7]),
        (&[3, 7], &[3, 1]),
        (&[2, 3, 4], &[1, 3, 1]),
        (&[2, 3], &[]),
        (&[600, 3], &[3]),
        (&[5, 300], &[5, 1]),
        (&[33, 5, 7, 3], &[1, 5, 7, 1]),
        (&[200, 100], &[1, 1]),
    ];
    for (sx, sy) in sums {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", sx);
        let xs = g.scale(x, 0.5).unwrap();
        let y = g.sum_to(xs, &Shape(sy.to_vec())).unwrap();
        let z = input(&mut g, "z", sy);
        let b = g.broadcast_to(z, &Shape(sx.to_vec())).unwrap();
        g.set_output("b", b);
        let f = g.fill(Shape(sx.to_vec()), -1.25).unwrap();
        g.set_output("f", f);
        with_grads(&mut g, y, &[("x", x)]);
        let r = sx.iter().product::<usize>() / sy.iter().product::<usize>();
        graph_case(
            out,
            &format!("sum_to/broadcast_to {sx:?} <-> {sy:?}"),
            g,
            0,
            tol_for(r),
        );
    }
    let perms: [(&[usize], &[usize]); 6] = [
        (&[5, 7], &[1, 0]),
        (&[33, 7], &[1, 0]),
        (&[2, 3, 4], &[2, 0, 1]),
        (&[2, 3, 4, 5], &[0, 2, 1, 3]),
        (&[1, 3, 1, 7], &[3, 2, 1, 0]),
        (&[2, 1, 3, 2, 5], &[4, 1, 3, 0, 2]),
    ];
    for (sx, perm) in perms {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", sx);
        let y = g.transpose(x, perm).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("transpose {sx:?} {perm:?}"), g, 0, TOL);
    }
    // concat on each axis (odd sizes, three inputs) and its gradient,
    // which is slice; the weights make each input's slice distinct.
    let joins: [(&[&[usize]], usize); 5] = [
        (&[&[2, 3, 5, 7], &[2, 1, 5, 7], &[2, 4, 5, 7]], 1),
        (&[&[3, 5], &[3, 2]], 1),
        (&[&[1, 3], &[4, 3], &[2, 3]], 0),
        (&[&[2, 3, 5, 7], &[2, 3, 2, 7]], 2),
        (&[&[5, 2, 3, 9], &[5, 2, 3, 1]], 3),
    ];
    for (shapes, axis) in joins {
        let mut g = Graph::new(true);
        let xs: Vec<ValueId> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| input(&mut g, &format!("x{k}"), s))
            .collect();
        let y = g.concat(&xs, axis).unwrap();
        let names: Vec<String> = (0..xs.len()).map(|k| format!("x{k}")).collect();
        let wrt: Vec<(&str, ValueId)> = names.iter().map(String::as_str).zip(xs).collect();
        with_grads(&mut g, y, &wrt);
        graph_case(out, &format!("concat {shapes:?} axis {axis}"), g, 0, TOL);
    }
}

/// `store`: a computed value copied into persistent state (how a
/// data-parallel step leaves its gradients for the all-reduce); the state
/// starts random, so a copy that misses a word shows.
fn store_cases(out: &mut Vec<Prepared>) {
    for shape in [&[7usize][..], &[3, 5, 11], &[1]] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", shape);
        let y = g.scale(x, 1.5).unwrap();
        g.store(y, "kept").unwrap();
        g.set_output("y", y);
        graph_case(out, &format!("store {shape:?}"), g, 0, TOL);
    }
}

fn softmax_cases(out: &mut Vec<Prepared>) {
    // Rows of 1 to 5,000 (one warp, one block, several passes), rank 1 to 3.
    let dims: [&[usize]; 9] = [
        &[3, 1],
        &[3, 7],
        &[3, 100],
        &[3, 300],
        &[3, 1500],
        &[3, 5000],
        &[1],
        &[2, 3, 33],
        &[5, 300],
    ];
    for d in dims {
        for log in [false, true] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", d);
            let y = if log {
                g.log_softmax(x).unwrap()
            } else {
                g.softmax(x).unwrap()
            };
            with_grads(&mut g, y, &[("x", x)]);
            graph_case(out, &format!("softmax {d:?} log={log}"), g, 0, TOL);
        }
    }
}

fn clip_grad_norm_cases(out: &mut Vec<Prepared>) {
    // One launch over every tensor, at a limit below the norm (clipped) and
    // above it (unchanged); then 12 tensors (more than a CPU launch's fixed
    // operand arrays hold), one of 40,000 values (one workgroup walks it).
    let sizes: [&[usize]; 12] = [
        &[3, 7],
        &[33],
        &[2, 1, 5],
        &[1],
        &[40_000],
        &[16, 1, 3, 3],
        &[16],
        &[5, 5],
        &[7],
        &[64, 10],
        &[10],
        &[2, 2, 2],
    ];
    for (max_norm, count) in [(0.5f32, 3), (1e3, 3), (2.0, 12)] {
        let mut g = Graph::new(true);
        let grads: Vec<ValueId> = sizes[..count]
            .iter()
            .enumerate()
            .map(|(i, s)| input(&mut g, &format!("g{i}"), s))
            .collect();
        let clipped = gpurt::optim::clip_grad_norm(&mut g, &grads, max_norm).unwrap();
        for (i, c) in clipped.into_iter().enumerate() {
            g.set_output(&format!("c{i}"), c);
        }
        graph_case(
            out,
            &format!("clip_grad_norm {max_norm} x{count}"),
            g,
            0,
            TOL,
        );
    }
}

fn cross_entropy_cases(out: &mut Vec<Prepared>) {
    // Label smoothing: cross-entropy plus a log-softmax mean, fused and not.
    for (b, c) in [(6, 10), (3, 7), (33, 10)] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy_smoothed(x, y, 0.1).unwrap();
        g.set_output("loss", loss);
        let d = gradients(&mut g, loss, &[x]).unwrap();
        g.set_output("dx", d[0]);
        graph_case(
            out,
            &format!("cross_entropy {b}x{c} label smoothing 0.1"),
            g,
            c as u32,
            TOL,
        );
    }
    for (b, c) in [
        (6, 10),
        (3, 1500),
        (1, 1),
        (3, 7),
        (33, 10),
        (7, 300),
        (300, 3),
    ] {
        // The gradient of the loss itself: fused, the constant seed folds
        // into the backward kernel.
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        let d = gradients(&mut g, loss, &[x]).unwrap();
        g.set_output("dx", d[0]);
        let name = format!("cross_entropy {b}x{c} constant seed");
        assert!(
            fused_kernels(&g).contains(&"cross_entropy_backward"),
            "{name}: the constant seed did not fold"
        );
        graph_case(out, &name, g, c as u32, TOL);
    }
    for (b, c) in [(1, 1), (3, 7), (33, 10), (7, 300), (300, 3)] {
        // Scaled, so the loss gradient is a computed tensor (not folded).
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        let l2 = g.scale(loss, 3.0).unwrap();
        let d = gradients(&mut g, l2, &[x]).unwrap();
        g.set_output("dx", d[0]);
        graph_case(
            out,
            &format!("cross_entropy {b}x{c} scaled loss"),
            g,
            c as u32,
            TOL,
        );
    }
}

fn sequence_cases(out: &mut Vec<Prepared>) {
    // Inference: bias and GELU in the GEMM's store (the pre-activation
    // has no other reader), dense and convolution, past one tile.
    for (rows, k, n) in [(3, 5, 7), (70, 33, 130)] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", &[rows, k]);
        let w = g.param("fc.weight", [n, k]).unwrap();
        let b = g.param("fc.bias", [n]).unwrap();
        let z = g.linear(x, w, Some(b)).unwrap();
        let y = g.act(Activation::Gelu, z).unwrap();
        g.set_output("y", y);
        assert!(fused_kernels(&g).contains(&"linear") && !fused_kernels(&g).contains(&"gelu"));
        graph_case(
            out,
            &format!("linear + gelu inference [{rows}, {k}] -> {n}"),
            g,
            0,
            TOL,
        );
    }
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[2, 3, 9, 7]);
    let w = g.param("conv.weight", [5, 3, 3, 3]).unwrap();
    let b = g.param("conv.bias", [5]).unwrap();
    let p = ConvParams {
        stride: (1, 1),
        pad: (1, 1),
        dilation: (1, 1),
    };
    let z = g.conv2d(x, w, Some(b), p).unwrap();
    let y = g.act(Activation::Gelu, z).unwrap();
    g.set_output("y", y);
    graph_case(out, "conv2d + gelu inference", g, 0, TOL);

    // Embedding: ids up to 12 into 11 rows (ids past the vocabulary read
    // zeros and add nothing), and a table past one workgroup.
    for (vocab, dim, ids) in [(11, 7, [3, 5]), (50, 33, [4, 64])] {
        let mut g = Graph::new(true);
        let w = g.param("embedding.weight", [vocab, dim]).unwrap();
        let ids = g.input("ids", ids.to_vec(), DType::U32).unwrap();
        let y = g.embedding(w, ids).unwrap();
        with_grads(&mut g, y, &[("w", w)]);
        graph_case(out, &format!("embedding [{vocab}, {dim}]"), g, 13, TOL);
    }
    // Masked mean pooling; lengths 0..=9 over 7 rows (clamped).
    for (b, t, d) in [(4, 7, 5), (3, 1, 33), (2, 9, 300)] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, t, d]);
        let len = g.input("lengths", [b], DType::U32).unwrap();
        let y = g.masked_mean_pool(x, len).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("masked_mean_pool [{b}, {t}, {d}]"), g, 9, TOL);
    }
    // fastText's bag: embedding then pooling.
    let mut g = Graph::new(true);
    let w = g.param("embedding.weight", [20, 16]).unwrap();
    let ids = g.input("ids", [5, 12], DType::U32).unwrap();
    let len = g.input("lengths", [5], DType::U32).unwrap();
    let y = g.embedding_bag(w, ids, len).unwrap();
    with_grads(&mut g, y, &[("w", w)]);
    graph_case(out, "embedding_bag [20, 16]", g, 12, TOL);
    // Attention: sequence lengths 1, 7, 64, 257 (past one workgroup/block
    // of rows), head sizes 16, 32, 64, random lengths 0..=T.
    for t in [1, 7, 64, 257] {
        for d in [16, 32, 64] {
            let (b, h) = (2, 2);
            let mut g = Graph::new(true);
            let qkv = input(&mut g, "qkv", &[b, t, 3 * h * d]);
            let len = g.input("lengths", [b], DType::U32).unwrap();
            let y = g.attention(qkv, len, h).unwrap();
            with_grads(&mut g, y, &[("qkv", qkv)]);
            graph_case(out, &format!("attention T={t} d={d}"), g, t as u32, TOL);
        }
    }
}

fn act_backward_bias_cases(out: &mut Vec<Prepared>) {
    // Fused activation backward + bias gradient: dense (axis 1 of
    // [rows, n]) and conv (axis 1 of NCHW).
    for a in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
        for rows in [1, 7, 33] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &[rows, 5]);
            let w1 = g.param("w1", [7, 5]).unwrap();
            let b1 = g.param("b1", [7]).unwrap();
            let h = g.linear(x, w1, Some(b1)).unwrap();
            let h = g.act(a, h).unwrap();
            let w2 = g.param("w2", [3, 7]).unwrap();
            let b2 = g.param("b2", [3]).unwrap();
            let y = g.linear(h, w2, Some(b2)).unwrap();
            let wrt = [("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)];
            with_grads(&mut g, y, &wrt);
            let name = format!("act_backward_bias dense {} rows={rows}", a.name());
            assert!(
                fused_kernels(&g).contains(&"act_backward_bias"),
                "{name}: not fused"
            );
            graph_case(out, &name, g, 0, TOL);
        }
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[2, 3, 9, 9]);
        let w1 = g.param("w1", [4, 3, 3, 3]).unwrap();
        let b1 = g.param("b1", [4]).unwrap();
        let h = g.conv2d(x, w1, Some(b1), ConvParams::default()).unwrap();
        let h = g.act(a, h).unwrap();
        let w2 = g.param("w2", [5, 4, 3, 3]).unwrap();
        let b2 = g.param("b2", [5]).unwrap();
        let y = g.conv2d(h, w2, Some(b2), ConvParams::default()).unwrap();
        let wrt = [("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)];
        with_grads(&mut g, y, &wrt);
        graph_case(
            out,
            &format!("act_backward_bias conv {}", a.name()),
            g,
            0,
            TOL,
        );
    }
}

fn batchnorm_cases(out: &mut Vec<Prepared>) {
    for dims in [
        [4, 3, 5, 6],
        [64, 2, 16, 16],
        [1, 1, 1, 3],
        [2, 3, 7, 7],
        [33, 4, 3, 1],
        [16, 2, 33, 33],
    ] {
        let tol = tol_for(dims[0] * dims[2] * dims[3]);
        for training in [true, false] {
            let mut g = Graph::new(training);
            let x = input(&mut g, "x", &dims);
            let c = dims[1];
            let p = bn_params(&mut g, c);
            let y = g.batch_norm2d(x, &p, 1e-5, 0.1).unwrap();
            if training {
                with_grads(&mut g, y, &[("x", x), ("gamma", p.gamma), ("beta", p.beta)]);
            } else {
                g.set_output("y", y);
            }
            graph_case(
                out,
                &format!("batch_norm2d {dims:?} training={training}"),
                g,
                0,
                tol,
            );
        }
    }
    // The fused epilogues of a residual block (bn -> act, bn + skip -> act)
    // and the activation's backward inside batchnorm2d_backward.
    for (dims, a) in [
        ([4, 3, 5, 6], Activation::Relu),
        ([16, 2, 33, 33], Activation::Relu),
        ([2, 3, 7, 7], Activation::Tanh),
        ([3, 4, 5, 1], Activation::Sigmoid),
    ] {
        for residual in [false, true] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let p = bn_params(&mut g, dims[1]);
            let mut y = g.batch_norm2d(x, &p, 1e-5, 0.1).unwrap();
            let mut wrt = vec![("x", x), ("gamma", p.gamma), ("beta", p.beta)];
            if residual {
                let skip = input(&mut g, "skip", &dims);
                y = g.add(y, skip).unwrap();
                wrt.push(("skip", skip));
            }
            let y = g.act(a, y).unwrap();
            with_grads(&mut g, y, &wrt);
            let kernels = fused_kernels(&g);
            assert!(
                !kernels.contains(&a.name()) && !kernels.contains(&"add"),
                "batch-norm epilogue not fused: {kernels:?}"
            );
            // Without a skip the activation's gradient has one reader, the
            // batch norm's backward, which computes it.
            assert!(
                residual || !kernels.contains(&a.backward_name()),
                "{kernels:?}"
            );
            let skip = if residual { " + skip" } else { "" };
            graph_case(
                out,
                &format!("batch_norm2d{skip} -> {} {dims:?}", a.name()),
                g,
                0,
                tol_for(dims[0] * dims[2] * dims[3]),
            );
        }
    }
}

/// A two-layer classifier's train step with optimiser `c`: input
/// [batch, inputs], `hidden` units (relu as a separate node, or fused into
/// the first linear), 3 classes.
fn optimizer_graph(
    c: &OptimConfig,
    batch: usize,
    inputs: usize,
    hidden: usize,
    fused_relu: bool,
) -> Graph {
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[batch, inputs]);
    let y = g.input("y", [batch], DType::U32).unwrap();
    let w1 = g.param("fc1.weight", [hidden, inputs]).unwrap();
    let b1 = g.param("fc1.bias", [hidden]).unwrap();
    let w2 = g.param("fc2.weight", [3, hidden]).unwrap();
    let h = if fused_relu {
        g.linear_act(x, w1, Some(b1), Some(Activation::Relu))
            .unwrap()
    } else {
        let h = g.linear(x, w1, Some(b1)).unwrap();
        g.relu(h).unwrap()
    };
    let logits = g.linear(h, w2, None).unwrap();
    let loss = g.cross_entropy(logits, y).unwrap();
    append_update(&mut g, loss, c).unwrap();
    g.set_output("loss", loss);
    g
}

fn optimizer_cases(out: &mut Vec<Prepared>) {
    let config = |kind, momentum, nesterov, wd| {
        let mut c = OptimConfig::new(kind);
        c.momentum = momentum;
        c.nesterov = nesterov;
        c.weight_decay = wd;
        c
    };
    // Unfused: one launch per tensor; fused: one multi-tensor launch.
    // A small model at lr = 0.01, step = 3.
    for c in [
        config(OptimizerKind::Sgd, 0.0, false, 0.0),
        config(OptimizerKind::Sgd, 0.9, true, 1e-2),
        config(OptimizerKind::Adam, 0.0, false, 1e-2),
        config(OptimizerKind::AdamW, 0.0, false, 1e-2),
    ] {
        let g = optimizer_graph(&c, 6, 5, 7, false);
        let name = format!(
            "{:?} momentum={} nesterov={} wd={} [6, 5]->7->3",
            c.kind, c.momentum, c.nesterov, c.weight_decay
        );
        graph_case(out, &name, g, 3, TOL);
    }
    // A wider one (300 hidden units) at lr = 0.05, at the first step and a
    // later one: every optimiser's defaults, then SGD with weight decay,
    // with and without Nesterov momentum, and Adam with weight decay.
    let sgd = OptimConfig::new(OptimizerKind::Sgd);
    let adam = OptimConfig::new(OptimizerKind::Adam);
    for c in [
        sgd,
        adam,
        OptimConfig::new(OptimizerKind::AdamW),
        config(OptimizerKind::Sgd, 0.0, false, 0.01),
        config(OptimizerKind::Sgd, 0.9, true, 0.01),
        OptimConfig {
            weight_decay: 0.05,
            ..adam
        },
    ] {
        // SGD reads no step: one case (another step would be the same).
        let steps: &[f32] = match c.kind {
            OptimizerKind::Sgd => &[1.0],
            _ => &[1.0, 10.0],
        };
        for &step in steps {
            let g = optimizer_graph(&c, 7, 33, 300, true);
            assert_eq!(
                g.scalars.iter().any(|s| s == "step"),
                steps.len() > 1,
                "only graphs that read the step run at two steps"
            );
            let mut name = format!(
                "{:?} momentum={} nesterov={} wd={} [7, 33]->300->3",
                c.kind, c.momentum, c.nesterov, c.weight_decay
            );
            if steps.len() > 1 {
                name += &format!(" step={step}");
            }
            graph_case_with(out, &name, g, 3, TOL, &[("lr", 0.05), ("step", step)]);
        }
    }
    // Many tensors: more rows than one parameter window of wgpu's
    // multi-tensor launch holds (169 Adam rows, 203 SGD rows), so the fused update is
    // chunked. The weight is the sum of 250 [3, 4] parameters.
    for c in [
        OptimConfig::new(OptimizerKind::Adam),
        config(OptimizerKind::Sgd, 0.9, false, 0.0),
    ] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[5, 4]);
        let y = g.input("y", [5], DType::U32).unwrap();
        let mut w = g.param("w0", [3, 4]).unwrap();
        for i in 1..250 {
            let p = g.param(&format!("w{i}"), [3, 4]).unwrap();
            w = g.add(w, p).unwrap();
        }
        let logits = g.linear(x, w, None).unwrap();
        let loss = g.cross_entropy(logits, y).unwrap();
        append_update(&mut g, loss, &c).unwrap();
        g.set_output("loss", loss);
        let name = format!("{:?} momentum={} over 250 tensors", c.kind, c.momentum);
        graph_case(out, &name, g, 3, TOL);
    }
}

/// Every op case.
pub fn op_cases() -> Vec<Prepared> {
    let mut out = Vec::new();
    matmul_cases(&mut out);
    linear_cases(&mut out);
    conv_cases(&mut out);
    pool_cases(&mut out);
    activation_cases(&mut out);
    norm_cases(&mut out);
    clip_grad_norm_cases(&mut out);
    binary_cases(&mut out);
    elementwise_cases(&mut out);
    dropout_cases(&mut out);
    shape_cases(&mut out);
    store_cases(&mut out);
    softmax_cases(&mut out);
    cross_entropy_cases(&mut out);
    act_backward_bias_cases(&mut out);
    batchnorm_cases(&mut out);
    sequence_cases(&mut out);
    optimizer_cases(&mut out);
    out
}

/// A classifier's train step (program "train"), `steps` runs.
pub fn classifier_case(
    spec: ModelSpec,
    input: Vec<usize>,
    batch: usize,
    kind: OptimizerKind,
    steps: usize,
    tol: f64,
) -> Prepared {
    let name = format!("{} {input:?} batch {batch} {kind:?} x{steps}", spec.name);
    let cfg = ClassifierConfig {
        spec,
        input,
        classes: 10,
        train_batch: Some(batch),
        infer_batch: 2,
        optim: OptimConfig::new(kind),
        seed: 1,
        fuse: true,
    };
    let module = Classifier::module(&cfg).unwrap();
    let p = module.program("train").unwrap();
    prepare_module(&name, module, p, 10, steps, tol, 42, &[])
}

/// The train steps every backend must reproduce.
pub fn model_cases() -> Vec<Prepared> {
    vec![
        classifier_case(
            ModelSpec::cnn(10),
            vec![1, 28, 28],
            2,
            OptimizerKind::Adam,
            2,
            TOL,
        ),
        classifier_case(
            ModelSpec::mlp(10),
            vec![1, 8, 8],
            3,
            OptimizerKind::Sgd,
            2,
            TOL,
        ),
        // Residual blocks: batch norm, identity and projection shortcuts.
        classifier_case(
            ModelSpec::resnet(8, 10),
            vec![1, 9, 11],
            3,
            OptimizerKind::Sgd,
            2,
            TOL,
        ),
        // Text: ids below 10 in a 20-word vocabulary, lengths 0..=10 of
        // 12 (padding, and empty documents), dropout, AdamW.
        classifier_case(
            ModelSpec::fasttext(10).with_vocab(20),
            vec![12],
            3,
            OptimizerKind::AdamW,
            2,
            TOL,
        ),
        classifier_case(
            ModelSpec::transformer(10).with_vocab(20),
            vec![12],
            3,
            OptimizerKind::AdamW,
            2,
            TOL,
        ),
    ]
}
