//! Op cases shared by the CUDA tests (`emu`, `parity`, `ptx` and `bench`
//! in `tests/cuda.rs`). Every op of `gpurt::ops::Op` appears, unfused and
//! after the fusion passes (which produce the fused ops: linear/conv with
//! an activation, act-backward + bias, elementwise programs, constant loss
//! gradient, multi-tensor optimiser updates), on odd sizes, plus whole
//! classifier train steps. Each case is run on the CPU backend (the oracle)
//! and on the backend under test, and every output and persistent tensor is
//! compared: relative error < 1e-4 (1e-3 for reductions over more than
//! 10,000 elements), integer outputs exactly.

#![allow(dead_code)]

use gpurt::backend::Executable;
use gpurt::graph::autodiff::gradients;
use gpurt::graph::fuse::fuse;
use gpurt::graph::ir::{Graph, Role, ValueId};
use gpurt::graph::plan::{compile, Module, Slot};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::ops::batchnorm::BatchNormParams;
use gpurt::ops::{Activation, BinaryKind, ConvParams, Op, PoolParams};
use gpurt::optim::{append_update, OptimConfig, OptimizerKind};
use gpurt::tensor::{DType, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

pub const TOL: f64 = 1e-4;
pub const TOL_BIG_REDUCTION: f64 = 1e-3;

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

/// ‖a − b‖ / ‖b‖ (‖a‖ when b is all zeros); NaN in the same places counts
/// as equal (bad-label rows are NaN on purpose).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() && y.is_nan() {
            continue;
        }
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Compare a run against the CPU oracle.
pub fn compare(p: &Prepared, want: &[Vec<f32>], got: &[Vec<f32>]) -> Result<(), String> {
    for (((name, _, is_u32), w), g) in p.checks.iter().zip(want).zip(got) {
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
        let e = rel_err(g, w);
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

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Data for a value, by name prefix: `pos_` in [0.5, 1.5), `away_` with
/// |x| in [0.5, 1) (divisors), state in [0.1, 1) (variances, Adam's v),
/// u32 values as labels below `classes`, else uniform in [-1, 1).
fn data_for(
    name: &str,
    role: &Role,
    dtype: DType,
    n: usize,
    classes: u32,
    r: &mut ChaCha8Rng,
) -> Vec<f32> {
    if dtype == DType::U32 {
        return (0..n)
            .map(|_| f32::from_bits(r.random_range(0..classes.max(1))))
            .collect();
    }
    let pos = name.starts_with("pos_") || matches!(role, Role::State(_));
    (0..n)
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
        .collect()
}

/// Prepare a module (program `program`) with random inputs and state.
pub fn prepare_module(
    name: &str,
    module: Module,
    program: usize,
    classes: u32,
    runs: usize,
    tol: f64,
    seed: u64,
) -> Prepared {
    let mut r = rng(seed);
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
        .map(|s| match s.as_str() {
            "lr" => 0.01,
            "step" => 3.0,
            _ => 1.0,
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
fn graph_case(out: &mut Vec<Prepared>, name: &str, g: Graph, classes: u32, tol: f64) {
    let seed = out.len() as u64 + 1;
    let mut fg = g.clone();
    let fused = !fuse(&mut fg).is_empty();
    let m = compile(&[("p", &g)]).unwrap_or_else(|e| panic!("{name}: {e}"));
    out.push(prepare_module(name, m, 0, classes, 1, tol, seed));
    if fused {
        let m = compile(&[("p", &fg)]).unwrap_or_else(|e| panic!("{name} fused: {e}"));
        out.push(prepare_module(
            &format!("{name} [fused]"),
            m,
            0,
            classes,
            1,
            tol,
            seed,
        ));
    }
}

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> ValueId {
    g.input(name, dims.to_vec(), DType::F32).unwrap()
}

/// `loss = Σ y ⊙ r` for a random r, so dL/dy = r: gradients of any op.
fn weighted_sum(g: &mut Graph, y: ValueId) -> ValueId {
    let s = g.shape(y).clone();
    let r = input(g, "dy_weights", &s.0);
    let m = g.mul(y, r).unwrap();
    let axes: Vec<usize> = (0..s.rank()).collect();
    g.sum(m, &axes, false).unwrap()
}

/// Forward output `y` plus the gradients of Σ y⊙r with respect to `wrt`.
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
    for &(m, k, n) in &[
        (1, 1, 1),
        (3, 7, 5),
        (33, 17, 65),
        (64, 20, 128),
        (128, 20, 128),
        (65, 130, 33),
        (8, 2100, 9),
    ] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut g = Graph::new(false);
            let a = input(&mut g, "a", &if ta { [k, m] } else { [m, k] });
            let b = input(&mut g, "b", &if tb { [n, k] } else { [k, n] });
            let y = g.matmul_t(a, ta, b, tb).unwrap();
            g.set_output("y", y);
            let tol = if k > 10_000 { TOL_BIG_REDUCTION } else { TOL };
            graph_case(
                out,
                &format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"),
                g,
                0,
                tol,
            );
        }
    }
    for (ta, tb) in [(false, false), (true, true)] {
        let mut g = Graph::new(false);
        let a = input(&mut g, "a", &if ta { [2, 5, 3] } else { [2, 3, 5] });
        let b = input(&mut g, "b", &if tb { [2, 4, 5] } else { [2, 5, 4] });
        let y = g.matmul_t(a, ta, b, tb).unwrap();
        g.set_output("y", y);
        graph_case(out, &format!("batched matmul ta={ta} tb={tb}"), g, 0, TOL);
    }
    // Linear with every fused epilogue, 2-D and 3-D input, with gradients.
    for act in [
        None,
        Some(Activation::Relu),
        Some(Activation::Sigmoid),
        Some(Activation::Tanh),
    ] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[2, 3, 9]);
        let w = g.param("w", [7, 9]).unwrap();
        let b = g.param("b", [7]).unwrap();
        let y = g.linear_act(x, w, Some(b), act).unwrap();
        with_grads(&mut g, y, &[("x", x), ("w", w), ("b", b)]);
        graph_case(out, &format!("linear act={act:?}"), g, 0, TOL);
    }
}

fn conv_cases(out: &mut Vec<Prepared>) {
    let c = |s: (usize, usize), p: (usize, usize), d: (usize, usize)| ConvParams {
        stride: s,
        pad: p,
        dilation: d,
    };
    let cases: [(&[usize], &[usize], bool, ConvParams); 6] = [
        (
            &[2, 128, 8, 8],
            &[128, 128, 3, 3],
            false,
            c((1, 1), (1, 1), (1, 1)),
        ),
        (
            &[2, 64, 8, 8],
            &[64, 64, 3, 3],
            true,
            c((1, 1), (1, 1), (1, 1)),
        ),
        (
            &[2, 3, 9, 8],
            &[5, 3, 3, 3],
            true,
            c((1, 1), (1, 1), (1, 1)),
        ),
        (
            &[1, 4, 11, 10],
            &[6, 4, 3, 2],
            false,
            c((2, 2), (1, 0), (1, 2)),
        ),
        (
            &[3, 2, 5, 5],
            &[7, 2, 1, 1],
            true,
            c((1, 1), (0, 0), (1, 1)),
        ),
        (
            &[2, 16, 6, 6],
            &[8, 16, 5, 5],
            true,
            c((1, 1), (2, 2), (1, 1)),
        ),
    ];
    for (i, (xs, wsh, bias, p)) in cases.iter().enumerate() {
        for act in [None, Some(Activation::Relu)] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", xs);
            let w = g.param("w", wsh.to_vec()).unwrap();
            let b = bias.then(|| g.param("b", [wsh[0]]).unwrap());
            let y = g.conv2d_act(x, w, b, *p, act).unwrap();
            let mut wrt = vec![("x", x), ("w", w)];
            if let Some(b) = b {
                wrt.push(("b", b));
            }
            with_grads(&mut g, y, &wrt);
            graph_case(out, &format!("conv2d #{i} act={act:?}"), g, 0, TOL);
        }
    }
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
    for (i, p) in ps.iter().enumerate() {
        // Max pooling: y and argmax as outputs, then the gradient.
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[2, 3, 7, 9]);
        let geo = p.geom("max_pool2d", g.shape(x)).unwrap();
        let (oh, ow) = geo.out_hw().unwrap();
        let s = Shape(vec![2, 3, oh, ow]);
        let outs = g
            .push_node(
                Op::MaxPool2d { p: *p },
                vec![x],
                vec![(s.clone(), DType::F32), (s, DType::U32)],
                vec![],
            )
            .unwrap();
        g.set_output("argmax", outs[1]);
        with_grads(&mut g, outs[0], &[("x", x)]);
        graph_case(out, &format!("max_pool2d #{i}"), g, 0, TOL);

        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[2, 3, 7, 9]);
        let y = g.avg_pool2d(x, *p).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("avg_pool2d #{i}"), g, 0, TOL);
    }
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[3, 5, 4, 7]);
    let y = g.global_avg_pool(x).unwrap();
    with_grads(&mut g, y, &[("x", x)]);
    graph_case(out, "global_avg_pool", g, 0, TOL);
}

fn elementwise_cases(out: &mut Vec<Prepared>) {
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
        graph_case(out, a.name(), g, 0, TOL);
    }
    let kinds = [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
    ];
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[4, 5], &[4, 5]),
        (&[3, 1, 5], &[4, 1]),
        (&[2, 3], &[]),
        (&[1, 6], &[5, 1]),
        (&[2, 3, 4, 5, 6, 7, 2], &[4, 1, 6, 1, 1]),
    ];
    for k in kinds {
        for (sa, sb) in shapes {
            let mut g = Graph::new(true);
            let a = input(&mut g, "a", sa);
            let b = input(&mut g, "away_b", sb);
            let y = g.binary(k, a, b).unwrap();
            with_grads(&mut g, y, &[("a", a), ("b", b)]);
            graph_case(out, &format!("{} {sa:?} {sb:?}", k.name()), g, 0, TOL);
        }
    }
    // A chain the fuser turns into one stack program (with a scalar input
    // and an in-place candidate).
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
    graph_case(out, "elementwise chain", g, 0, TOL);

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[4, 9]);
    let y = g.scale(x, 0.37).unwrap();
    g.set_output("y", y);
    let f = g.fill([3, 4], 2.5).unwrap();
    g.set_output("f", f);
    graph_case(out, "scale and fill", g, 0, TOL);

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
    graph_case(out, "dropout", g, 0, TOL);
}

fn shape_cases(out: &mut Vec<Prepared>) {
    let sums: [(&[usize], &[usize]); 5] = [
        (&[4, 3, 5], &[1, 3, 1]),
        (&[4, 3, 5], &[5]),
        (&[6, 7], &[1, 1]),
        (&[2, 70, 3], &[2, 1, 3]),
        (&[3, 40_000], &[3, 1]),
    ];
    for (sx, sy) in sums {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", sx);
        let y = g.sum_to(x, &Shape(sy.to_vec())).unwrap();
        g.set_output("y", y);
        let r: usize = sx.iter().product::<usize>() / sy.iter().product::<usize>();
        let tol = if r > 10_000 { TOL_BIG_REDUCTION } else { TOL };
        graph_case(out, &format!("sum_to {sx:?} -> {sy:?}"), g, 0, tol);
    }
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[3, 1]);
    let y = g.broadcast_to(x, &Shape(vec![2, 3, 4])).unwrap();
    g.set_output("y", y);
    graph_case(out, "broadcast_to", g, 0, TOL);
    for (sx, perm) in [
        (vec![5, 7], vec![1, 0]),
        (vec![2, 3, 4], vec![2, 0, 1]),
        (vec![2, 3, 4, 5], vec![0, 2, 1, 3]),
    ] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &sx);
        let y = g.transpose(x, &perm).unwrap();
        with_grads(&mut g, y, &[("x", x)]);
        graph_case(out, &format!("transpose {sx:?} {perm:?}"), g, 0, TOL);
    }
}

fn softmax_cases(out: &mut Vec<Prepared>) {
    for n in [1, 7, 100, 300, 1500, 5000] {
        for log in [false, true] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &[3, n]);
            let y = if log {
                g.log_softmax(x).unwrap()
            } else {
                g.softmax(x).unwrap()
            };
            with_grads(&mut g, y, &[("x", x)]);
            graph_case(out, &format!("softmax log={log} n={n}"), g, 0, TOL);
        }
    }
    for (b, c) in [(6, 10), (3, 1500), (1, 1)] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        let d = gradients(&mut g, loss, &[x]).unwrap();
        g.set_output("dx", d[0]);
        graph_case(out, &format!("cross_entropy {b}x{c}"), g, c as u32, TOL);
    }
}

fn batchnorm_cases(out: &mut Vec<Prepared>) {
    for (dims, tol) in [([4, 3, 5, 6], TOL), ([64, 2, 16, 16], TOL_BIG_REDUCTION)] {
        for training in [true, false] {
            let mut g = Graph::new(training);
            let x = input(&mut g, "x", &dims);
            let c = dims[1];
            let p = BatchNormParams {
                gamma: g.param("bn.weight", [c]).unwrap(),
                beta: g.param("bn.bias", [c]).unwrap(),
                running_mean: g.state("bn.running_mean", [c]).unwrap(),
                running_var: g.state("bn.running_var", [c]).unwrap(),
            };
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
}

fn optimizer_cases(out: &mut Vec<Prepared>) {
    let mut configs = Vec::new();
    for (kind, momentum, nesterov, wd) in [
        (OptimizerKind::Sgd, 0.0, false, 0.0),
        (OptimizerKind::Sgd, 0.9, true, 1e-2),
        (OptimizerKind::Adam, 0.0, false, 1e-2),
        (OptimizerKind::AdamW, 0.0, false, 1e-2),
    ] {
        let mut c = OptimConfig::new(kind);
        c.momentum = momentum;
        c.nesterov = nesterov;
        c.weight_decay = wd;
        configs.push(c);
    }
    for c in configs {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[6, 5]);
        let y = g.input("y", [6], DType::U32).unwrap();
        let w1 = g.param("fc1.weight", [7, 5]).unwrap();
        let b1 = g.param("fc1.bias", [7]).unwrap();
        let w2 = g.param("fc2.weight", [3, 7]).unwrap();
        let h = g.linear(x, w1, Some(b1)).unwrap();
        let h = g.relu(h).unwrap();
        let logits = g.linear(h, w2, None).unwrap();
        let loss = g.cross_entropy(logits, y).unwrap();
        append_update(&mut g, loss, &c).unwrap();
        g.set_output("loss", loss);
        graph_case(
            out,
            &format!("{:?} momentum={} wd={}", c.kind, c.momentum, c.weight_decay),
            g,
            3,
            TOL,
        );
    }
}

/// Every op case (small shapes).
pub fn op_cases() -> Vec<Prepared> {
    let mut out = Vec::new();
    matmul_cases(&mut out);
    conv_cases(&mut out);
    pool_cases(&mut out);
    elementwise_cases(&mut out);
    shape_cases(&mut out);
    softmax_cases(&mut out);
    batchnorm_cases(&mut out);
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
    prepare_module(&name, module, p, 10, steps, tol, 42)
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
    ]
}

/// A benchmark: a module, the program to time, and its work (FLOPs or
/// bytes moved) for the throughput column.
pub struct Bench {
    pub key: &'static str,
    pub module: Module,
    pub program: usize,
    pub work: f64,
    /// "GFLOP/s" or "GB/s".
    pub unit: &'static str,
}

fn single(g: &Graph) -> Module {
    compile(&[("p", g)]).unwrap()
}

/// The shapes tools/gpu-check.sh times against PyTorch (same keys as
/// tools/torch_gpu_bench.py).
pub fn benches() -> Vec<Bench> {
    let mut v = Vec::new();
    let n = 4096;
    let mut g = Graph::new(false);
    let a = input(&mut g, "a", &[n, n]);
    let b = input(&mut g, "b", &[n, n]);
    let y = g.matmul(a, b).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "sgemm_4096",
        module: single(&g),
        program: 0,
        work: 2.0 * (n * n * n) as f64,
        unit: "GFLOP/s",
    });

    let p = ConvParams {
        stride: (1, 1),
        pad: (1, 1),
        dilation: (1, 1),
    };
    let conv_flops = 2.0 * (64 * 64 * 32 * 32 * 32 * 9) as f64;
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[64, 32, 32, 32]);
    let w = g.param("w", [64, 32, 3, 3]).unwrap();
    let y = g.conv2d(x, w, None, p).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "conv_fwd",
        module: single(&g),
        program: 0,
        work: conv_flops,
        unit: "GFLOP/s",
    });

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[64, 32, 32, 32]);
    let dy = input(&mut g, "dy", &[64, 64, 32, 32]);
    let w = g.param("w", [64, 32, 3, 3]).unwrap();
    let dx = g
        .push1(
            Op::Conv2dGradInput { p },
            vec![dy, w],
            Shape(vec![64, 32, 32, 32]),
        )
        .unwrap();
    let dw = g
        .push1(
            Op::Conv2dGradWeight { p },
            vec![x, dy],
            Shape(vec![64, 32, 3, 3]),
        )
        .unwrap();
    g.set_output("dx", dx);
    g.set_output("dw", dw);
    v.push(Bench {
        key: "conv_bwd",
        module: single(&g),
        program: 0,
        work: 2.0 * conv_flops,
        unit: "GFLOP/s",
    });

    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[n, n]);
    let y = g.softmax(x).unwrap();
    g.set_output("y", y);
    v.push(Bench {
        key: "softmax_4096",
        module: single(&g),
        program: 0,
        work: 2.0 * 4.0 * (n * n) as f64,
        unit: "GB/s",
    });

    let len = 10_000_000;
    let mut g = Graph::new(true);
    let grad = input(&mut g, "grad", &[len]);
    let w = g.param("w", [len]).unwrap();
    let m = g.state("optim.exp_avg.w", [len]).unwrap();
    let s = g.state("optim.exp_avg_sq.w", [len]).unwrap();
    let lr = g.scalar("lr");
    let step = g.scalar("step");
    let c = OptimConfig::new(OptimizerKind::Adam);
    let op = Op::AdamUpdate(gpurt::ops::adam::AdamConfig {
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weight_decay: 0.0,
        decoupled: false,
        lr,
        step,
    });
    g.push_node(op, vec![grad], vec![], vec![w, m, s]).unwrap();
    v.push(Bench {
        key: "adam_10m",
        module: single(&g),
        program: 0,
        work: 7.0 * 4.0 * len as f64,
        unit: "GB/s",
    });

    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        classes: 10,
        train_batch: Some(64),
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 1,
        fuse: true,
    };
    let module = Classifier::module(&cfg).unwrap();
    let program = module.program("train").unwrap();
    let work = module.programs[program]
        .launches
        .iter()
        .map(|l| gpurt::graph::cost::flops(l) as f64)
        .sum();
    v.push(Bench {
        key: "cnn_train_b64",
        module,
        program,
        work,
        unit: "GFLOP/s",
    });
    v
}
