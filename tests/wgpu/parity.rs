//! Every op on the wgpu backend against the CPU backend (the oracle), on
//! random shapes including odd sizes (1, 3, 7, 33), forward and backward,
//! unfused and after the fusion passes (which produce the fused kernels,
//! in-place launches and the multi-tensor optimiser launch).
//!
//! Metric: ‖wgpu − cpu‖ / ‖cpu‖ over each output and each updated
//! persistent tensor, below `TOL` = 1e-4 (`TOL_BIG` = 1e-3 for reductions
//! over more than 10,000 elements); u32 outputs (argmax) must be equal.
//!
//! With no adapter every test prints `SKIPPED: <test>: no wgpu adapter
//! (<reason>)` and passes, unless GPURT_REQUIRE_WGPU=1.

#![cfg(feature = "wgpu")]

use gpurt::backend::cpu::CpuBackend;
use gpurt::backend::wgpu::{self, WgpuBackend};
use gpurt::backend::Backend;
use gpurt::graph::autodiff::gradients;
use gpurt::graph::exec::Session;
use gpurt::graph::ir::{Graph, Role, ValueId};
use gpurt::graph::{fuse, plan};
use gpurt::ops::batchnorm::BatchNormParams;
use gpurt::ops::{Activation, BinaryKind, ConvParams, Op, PoolParams};
use gpurt::optim::{append_update, OptimConfig, OptimizerKind};
use gpurt::tensor::{DType, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;

const TOL: f64 = 1e-4;
const TOL_BIG: f64 = 1e-3;
const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Tanh,
];

/// `GPURT_WGPU_ADAPTER=N` runs the suite on adapter N (as `gpurt devices`
/// numbers them), e.g. the GL adapter; by default the best usable one.
fn adapter_index() -> Option<usize> {
    std::env::var("GPURT_WGPU_ADAPTER").ok()?.parse().ok()
}

/// The shared adapter, opened once per test binary (pipelines are cached
/// on it).
fn shared() -> &'static Result<WgpuBackend, String> {
    static GPU: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    GPU.get_or_init(|| wgpu::open(adapter_index()).map_err(|e| e.to_string()))
}

/// The adapter, or None after printing the SKIPPED line (a failure with
/// GPURT_REQUIRE_WGPU=1). Every test calls this first.
fn gpu(test: &str) -> Option<&'static WgpuBackend> {
    match shared() {
        Ok(b) => Some(b),
        Err(e) if std::env::var("GPURT_REQUIRE_WGPU").as_deref() == Ok("1") => {
            panic!("{test}: GPURT_REQUIRE_WGPU=1 but no wgpu adapter: {e}")
        }
        Err(e) => {
            println!("SKIPPED: {test}: no wgpu adapter ({e})");
            None
        }
    }
}

/// Outputs and persistent tensors after one run, as f64 (u32 as integers).
struct Run {
    tensors: Vec<(String, bool, Vec<f64>)>,
}

fn value_data(rng: &mut ChaCha8Rng, g: &Graph, v: ValueId, classes: u32) -> Vec<f32> {
    let val = g.value(v);
    let n = val.shape.numel();
    match (&val.role, val.dtype) {
        (_, DType::U32) => (0..n)
            .map(|_| f32::from_bits(rng.random_range(0..classes)))
            .collect(),
        // Variances must be positive.
        (Role::State(name), _) if name.contains("running_var") || name.contains("exp_avg_sq") => {
            (0..n).map(|_| rng.random_range(0.5f32..1.5)).collect()
        }
        _ => (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    }
}

/// Compile `g` as program "p" on `backend`, upload seeded random data to
/// every input, parameter and state, run once, read everything back.
fn run_on(backend: &dyn Backend, g: &Graph, scalars: &[(&str, f32)], classes: u32) -> Run {
    let module = plan::compile(&[("p", g)]).expect("plan");
    let mut s = Session::new(backend, module).expect("session");
    let p = s.program("p").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (i, v) in g.values.iter().enumerate() {
        let data = value_data(&mut rng, g, ValueId(i as u32), classes);
        match (&v.role, v.dtype) {
            (Role::Input(n), DType::U32) => {
                let u: Vec<u32> = data.iter().map(|x| x.to_bits()).collect();
                s.write_input_u32(p, n, &u).unwrap()
            }
            (Role::Input(n), _) => s.write_input(p, n, &data).unwrap(),
            (Role::Param(n) | Role::State(n), _) => s.write_persistent(n, &data).unwrap(),
            _ => {}
        }
    }
    for (k, v) in scalars {
        s.set_scalar(k, *v).unwrap();
    }
    s.run(p).expect("run");
    let mut tensors = Vec::new();
    for (name, v) in &g.outputs {
        let mut out = vec![0.0f32; g.shape(*v).numel()];
        s.read_output(p, name, &mut out).unwrap();
        let int = g.dtype(*v) == DType::U32;
        let vals = out
            .iter()
            .map(|x| if int { x.to_bits() as f64 } else { *x as f64 })
            .collect();
        tensors.push((name.clone(), int, vals));
    }
    for (name, _) in g.persistent() {
        let t = s.read_persistent(&name).unwrap();
        tensors.push((name, false, t.data.iter().map(|&x| x as f64).collect()));
    }
    Run { tensors }
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn fused(g: &Graph) -> Graph {
    let mut f = g.clone();
    fuse::fuse(&mut f);
    f
}

/// Launches of `g` that run in place, and kernels launched.
fn launches(g: &Graph) -> (usize, Vec<&'static str>) {
    let m = plan::compile(&[("p", g)]).unwrap();
    let l = &m.programs[0].launches;
    (
        l.iter().filter(|l| l.inplace.is_some()).count(),
        l.iter().map(|l| l.op.kernel_name()).collect(),
    )
}

/// Compare wgpu with the CPU on `g`, unfused and fused (after the test
/// has passed its [`gpu`] gate).
fn check_with(test: &str, g: &Graph, scalars: &[(&str, f32)], classes: u32, tol: f64) {
    let gpu = shared().as_ref().expect("gated by gpu()");
    assert!(!g.outputs.is_empty(), "{test}: no outputs");
    for (label, graph) in [("unfused", g.clone()), ("fused", fused(g))] {
        let want = run_on(&CpuBackend::new(), &graph, scalars, classes);
        let got = run_on(gpu, &graph, scalars, classes);
        for ((name, int, w), (_, _, v)) in want.tensors.iter().zip(&got.tensors) {
            let what = format!("{test} [{label}] '{name}'");
            assert_eq!(v.len(), w.len(), "{what}: length");
            if *int {
                assert_eq!(v, w, "{what}: integer output differs");
                continue;
            }
            let e = rel_err(v, w);
            assert!(
                e < tol,
                "{what}: relative error {e:.3e} >= {tol:.0e}\n  wgpu {:?}\n  cpu  {:?}",
                &v[..v.len().min(8)],
                &w[..w.len().min(8)]
            );
        }
    }
}

fn check(test: &str, g: &Graph) {
    check_with(test, g, &[], 10, TOL)
}

fn input(g: &mut Graph, name: &str, dims: &[usize]) -> ValueId {
    g.input(name, dims.to_vec(), DType::F32).unwrap()
}

/// Outputs the gradients of Σ y·r (r a random input) with respect to
/// `wrt` as d0, d1, ...: every backward op of y's producers, as autodiff
/// emits them.
fn add_grads(g: &mut Graph, y: ValueId, wrt: &[ValueId]) {
    let s = g.shape(y).clone();
    let r = input(g, "r", &s.0);
    let yr = g.mul(y, r).unwrap();
    let axes: Vec<usize> = (0..s.rank()).collect();
    let l = g.sum(yr, &axes, false).unwrap();
    let grads = gradients(g, l, wrt).unwrap();
    for (i, d) in grads.into_iter().enumerate() {
        g.set_output(&format!("d{i}"), d);
    }
}

// ---------------------------------------------------------------------------
// Dense algebra.

#[test]
fn matmul_every_transpose_and_batch() {
    let t = "matmul_every_transpose_and_batch";
    if gpu(t).is_none() {
        return;
    }
    // (batch dims, m, k, n); long K over one tile is split across
    // workgroups (split-K), (65, 70, 130) has several ragged tiles.
    let cases: [(&[usize], usize, usize, usize); 7] = [
        (&[], 1, 1, 1),
        (&[], 3, 7, 33),
        (&[], 33, 3, 7),
        (&[], 65, 70, 130),
        (&[], 7, 1100, 3),
        (&[2, 3], 7, 5, 33),
        (&[2], 3, 1100, 5),
    ];
    for (bd, m, k, n) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut g = Graph::new(false);
            let dims = |r: usize, c: usize, t: bool| {
                let mut d = bd.to_vec();
                d.extend(if t { [c, r] } else { [r, c] });
                d
            };
            let a = input(&mut g, "a", &dims(m, k, ta));
            let b = input(&mut g, "b", &dims(k, n, tb));
            let y = g.matmul_t(a, ta, b, tb).unwrap();
            g.set_output("y", y);
            check(&format!("{t} {bd:?} {m}x{k}x{n} ta={ta} tb={tb}"), &g);
        }
    }
}

#[test]
fn linear_bias_act_forward_backward() {
    let t = "linear_bias_act_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    for (dims, out) in [(vec![1, 1], 1), (vec![7, 33], 3), (vec![2, 3, 7], 33)] {
        for act in [None, Some(Activation::Relu), Some(Activation::Tanh)] {
            for bias in [false, true] {
                let mut g = Graph::new(true);
                let x = input(&mut g, "x", &dims);
                let w = g.param("w", [out, *dims.last().unwrap()]).unwrap();
                let b = bias.then(|| g.param("b", [out]).unwrap());
                let y = g.linear_act(x, w, b, act).unwrap();
                g.set_output("y", y);
                let mut wrt = vec![x, w];
                wrt.extend(b);
                add_grads(&mut g, y, &wrt);
                check(&format!("{t} {dims:?}->{out} {act:?} bias={bias}"), &g);
            }
        }
    }
}

/// A NaN reaching relu stays NaN (as in PyTorch), on the elementwise
/// kernel and in the linear and conv epilogues, on both backends alike.
#[test]
fn relu_keeps_nan_like_the_cpu() {
    let t = "relu_keeps_nan_like_the_cpu";
    let Some(gpu) = gpu(t) else {
        return;
    };
    let graphs: Vec<(&str, Graph)> = {
        let mut plain = Graph::new(false);
        let x = input(&mut plain, "x", &[3, 7]);
        let y = plain.relu(x).unwrap();
        plain.set_output("y", y);
        let mut lin = Graph::new(false);
        let x = input(&mut lin, "x", &[3, 7]);
        let w = lin.param("w", [5, 7]).unwrap();
        let b = lin.param("b", [5]).unwrap();
        let y = lin
            .linear_act(x, w, Some(b), Some(Activation::Relu))
            .unwrap();
        lin.set_output("y", y);
        let mut conv = Graph::new(false);
        let x = input(&mut conv, "x", &[1, 3, 7, 7]);
        let w = conv.param("w", [4, 3, 3, 3]).unwrap();
        let b = conv.param("b", [4]).unwrap();
        let y = conv
            .conv2d_act(x, w, Some(b), ConvParams::default(), Some(Activation::Relu))
            .unwrap();
        conv.set_output("y", y);
        vec![("relu", plain), ("linear+relu", lin), ("conv2d+relu", conv)]
    };
    for (name, g) in &graphs {
        let mut outs = Vec::new();
        for backend in [&CpuBackend::new() as &dyn Backend, gpu] {
            let module = plan::compile(&[("p", g)]).unwrap();
            let mut s = Session::new(backend, module).unwrap();
            let p = s.program("p").unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            for (n, v) in g.persistent() {
                let d: Vec<f32> = (0..g.shape(v).numel())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                s.write_persistent(&n, &d).unwrap();
            }
            let xv = g.inputs()[0].1;
            let mut x: Vec<f32> = (0..g.shape(xv).numel())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            x[0] = f32::NAN;
            x[9] = f32::NAN;
            s.write_input(p, "x", &x).unwrap();
            s.run(p).unwrap();
            let mut y = vec![0.0f32; g.shape(g.outputs[0].1).numel()];
            s.read_output(p, "y", &mut y).unwrap();
            outs.push(y);
        }
        let nan = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
        assert!(
            nan(&outs[0]).iter().any(|&b| b),
            "{t} {name}: the CPU lost the NaN"
        );
        assert_eq!(
            nan(&outs[0]),
            nan(&outs[1]),
            "{t} {name}: NaN positions differ"
        );
        let finite = |v: &[f32]| {
            v.iter()
                .map(|&x| if x.is_nan() { 0.0 } else { x as f64 })
                .collect::<Vec<_>>()
        };
        let e = rel_err(&finite(&outs[1]), &finite(&outs[0]));
        assert!(e < TOL, "{t} {name}: relative error {e:.3e}");
    }
}

// ---------------------------------------------------------------------------
// Convolution.

fn conv_case(t: &str, x: [usize; 4], o: usize, k: (usize, usize), p: ConvParams, bias: bool) {
    let mut g = Graph::new(true);
    let xv = input(&mut g, "x", &x);
    let w = g.param("w", [o, x[1], k.0, k.1]).unwrap();
    let b = bias.then(|| g.param("b", [o]).unwrap());
    let y = g.conv2d(xv, w, b, p).unwrap();
    let y = g.relu(y).unwrap(); // fused into the conv epilogue
    g.set_output("y", y);
    let mut wrt = vec![xv, w];
    wrt.extend(b);
    add_grads(&mut g, y, &wrt);
    check(&format!("{t} x{x:?} o={o} k={k:?} {p:?} bias={bias}"), &g)
}

#[test]
fn conv2d_geometries_forward_backward() {
    let t = "conv2d_geometries_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    let p = |s: usize, pad: usize, d: usize| ConvParams {
        stride: (s, s),
        pad: (pad, pad),
        dilation: (d, d),
    };
    let cases = [
        ([1, 1, 1, 1], 1, (1, 1), p(1, 0, 1), true),
        ([2, 3, 7, 7], 4, (3, 3), p(1, 0, 1), true),
        ([1, 1, 33, 33], 3, (5, 5), p(2, 2, 1), false),
        ([3, 2, 9, 11], 5, (3, 3), p(2, 1, 2), true),
        (
            [2, 3, 7, 8],
            7,
            (3, 2),
            ConvParams {
                stride: (1, 2),
                pad: (2, 0),
                dilation: (1, 3),
            },
            true,
        ),
        // Weight gradient with K = 8*14*14 and one output tile: split-K.
        ([8, 2, 16, 16], 3, (3, 3), p(1, 0, 1), true),
        // Forward with K = 128*9 and one output tile: split-K.
        ([1, 128, 3, 3], 2, (3, 3), p(1, 1, 1), false),
        // Input gradient with K = 128*9 and one output tile: split-K.
        ([1, 2, 3, 3], 128, (3, 3), p(1, 1, 1), true),
    ];
    for (x, o, k, p, bias) in cases {
        conv_case(t, x, o, k, p, bias);
    }
}

/// Each conv kernel launched directly (not through autodiff).
#[test]
fn conv2d_kernels_direct() {
    let t = "conv2d_kernels_direct";
    if gpu(t).is_none() {
        return;
    }
    let p = ConvParams {
        stride: (2, 1),
        pad: (1, 2),
        dilation: (1, 2),
    };
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
    check(t, &g);
}

// ---------------------------------------------------------------------------
// Pooling.

#[test]
fn pooling_forward_backward() {
    let t = "pooling_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    let pools = [
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
    for x in [[1, 1, 3, 3], [2, 3, 7, 7], [1, 2, 33, 9]] {
        for p in pools {
            for kind in ["max", "avg"] {
                let mut g = Graph::new(true);
                let xv = input(&mut g, "x", &x);
                let y = if kind == "max" {
                    let (y, argmax) = g.max_pool2d_with_indices(xv, p).unwrap();
                    g.set_output("argmax", argmax);
                    y
                } else {
                    g.avg_pool2d(xv, p).unwrap()
                };
                g.set_output("y", y);
                add_grads(&mut g, y, &[xv]);
                check(&format!("{t} {kind} x{x:?} {p:?}"), &g);
            }
        }
        let mut g = Graph::new(true);
        let xv = input(&mut g, "x", &x);
        let y = g.global_avg_pool(xv).unwrap();
        g.set_output("y", y);
        add_grads(&mut g, y, &[xv]);
        check(&format!("{t} global x{x:?}"), &g);
    }
}

// ---------------------------------------------------------------------------
// Elementwise, broadcasting, reductions, shape movers.

#[test]
fn activations_forward_backward_and_in_place() {
    let t = "activations_forward_backward_and_in_place";
    if gpu(t).is_none() {
        return;
    }
    for a in ACTS {
        for dims in [vec![1], vec![7, 33], vec![3, 1000]] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let c = input(&mut g, "c", &dims);
            // x + c dies at the activation: the activation runs in place,
            // and its gradient in place over the incoming dy.
            let s = g.add(x, c).unwrap();
            let y = g.act(a, s).unwrap();
            g.set_output("y", y);
            add_grads(&mut g, y, &[x]);
            let (inplace, _) = launches(&g);
            assert!(inplace >= 1, "{t}: expected an in-place launch");
            check(&format!("{t} {a:?} {dims:?}"), &g);
        }
    }
}

#[test]
fn binary_broadcasting_forward_backward() {
    let t = "binary_broadcasting_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    let pairs: [(&[usize], &[usize]); 7] = [
        (&[1], &[1]),
        (&[3, 7], &[3, 7]),
        (&[3, 7], &[7]),
        (&[2, 1, 5], &[3, 1]),
        (&[1], &[4, 3]),
        (&[], &[33]),
        (&[2, 3, 1, 7], &[1, 3, 4, 1]),
    ];
    for (sa, sb) in pairs {
        for kind in [
            BinaryKind::Add,
            BinaryKind::Sub,
            BinaryKind::Mul,
            BinaryKind::Div,
        ] {
            let mut g = Graph::new(true);
            let a = input(&mut g, "a", sa);
            let b0 = input(&mut g, "b", sb);
            // Divisors away from zero.
            let b = if kind == BinaryKind::Div {
                let e = g.act(Activation::Sigmoid, b0).unwrap();
                let two = g.fill(Shape(vec![1]), 2.0).unwrap();
                g.add(e, two).unwrap()
            } else {
                b0
            };
            let y = g.binary(kind, a, b).unwrap();
            g.set_output("y", y);
            add_grads(&mut g, y, &[a, b0]);
            check(&format!("{t} {sa:?} {kind:?} {sb:?}"), &g);
        }
    }
}

#[test]
fn scale_fill_sum_to_broadcast_to() {
    let t = "scale_fill_sum_to_broadcast_to";
    if gpu(t).is_none() {
        return;
    }
    // (x, y) for sum_to; broadcast_to goes the other way.
    let cases: [(&[usize], &[usize], f64); 8] = [
        (&[3, 7], &[7], TOL),
        (&[3, 7], &[3, 1], TOL),
        (&[2, 3, 4], &[1, 3, 1], TOL),
        (&[2, 3], &[], TOL),
        (&[600, 3], &[3], TOL),
        (&[5, 300], &[5, 1], TOL),
        (&[33, 5, 7, 3], &[1, 5, 7, 1], TOL),
        // One sum over 20,000 elements.
        (&[200, 100], &[1, 1], TOL_BIG),
    ];
    for (sx, sy, tol) in cases {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", sx);
        let xs = g.scale(x, 0.5).unwrap();
        let y = g.sum_to(xs, &Shape(sy.to_vec())).unwrap();
        g.set_output("y", y);
        let z = input(&mut g, "z", sy);
        let b = g.broadcast_to(z, &Shape(sx.to_vec())).unwrap();
        g.set_output("b", b);
        let f = g.fill(Shape(sx.to_vec()), -1.25).unwrap();
        g.set_output("f", f);
        add_grads(&mut g, y, &[x]);
        check_with(&format!("{t} {sx:?}->{sy:?}"), &g, &[], 10, tol);
    }
}

#[test]
fn transpose_permutations() {
    let t = "transpose_permutations";
    if gpu(t).is_none() {
        return;
    }
    let cases: [(&[usize], &[usize]); 4] = [
        (&[33, 7], &[1, 0]),
        (&[2, 3, 4], &[2, 0, 1]),
        (&[1, 3, 1, 7], &[3, 2, 1, 0]),
        (&[2, 1, 3, 2, 5], &[4, 1, 3, 0, 2]),
    ];
    for (s, perm) in cases {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", s);
        let y = g.transpose(x, perm).unwrap();
        g.set_output("y", y);
        add_grads(&mut g, y, &[x]);
        check(&format!("{t} {s:?} {perm:?}"), &g);
    }
}

// ---------------------------------------------------------------------------
// Softmax and loss.

#[test]
fn softmax_log_softmax_forward_backward() {
    let t = "softmax_log_softmax_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    for dims in [vec![1], vec![3, 7], vec![2, 3, 33], vec![5, 300]] {
        for log in [false, true] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let y = if log {
                g.log_softmax(x).unwrap()
            } else {
                g.softmax(x).unwrap()
            };
            g.set_output("y", y);
            add_grads(&mut g, y, &[x]);
            check(&format!("{t} {dims:?} log={log}"), &g);
        }
    }
}

#[test]
fn cross_entropy_forward_backward() {
    let t = "cross_entropy_forward_backward";
    if gpu(t).is_none() {
        return;
    }
    for (b, c) in [(1, 1), (3, 7), (33, 10), (7, 300), (300, 3)] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        // Scaled, so the loss gradient is a computed tensor (not folded).
        let l2 = g.scale(loss, 3.0).unwrap();
        let d = gradients(&mut g, l2, &[x]).unwrap();
        g.set_output("dx", d[0]);
        check_with(&format!("{t} {b}x{c}"), &g, &[], c as u32, TOL);
        // The fused form: the constant seed folds into the backward kernel.
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[b, c]);
        let y = g.input("y", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        let d = gradients(&mut g, loss, &[x]).unwrap();
        g.set_output("dx", d[0]);
        assert!(launches(&fused(&g)).1.contains(&"cross_entropy_backward"));
        check_with(
            &format!("{t} {b}x{c} constant seed"),
            &g,
            &[],
            c as u32,
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Fused kernels.

#[test]
fn act_backward_bias_fused() {
    let t = "act_backward_bias_fused";
    if gpu(t).is_none() {
        return;
    }
    // Dense (axis 1 of [rows, n]) and conv (axis 1 of NCHW) bias gradients.
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
            g.set_output("y", y);
            add_grads(&mut g, y, &[x, w1, b1, w2, b2]);
            assert!(launches(&fused(&g)).1.contains(&"act_backward_bias"));
            check(&format!("{t} dense {a:?} rows={rows}"), &g);
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
        g.set_output("y", y);
        add_grads(&mut g, y, &[x, w1, b1, w2, b2]);
        check(&format!("{t} conv {a:?}"), &g);
    }
}

#[test]
fn elementwise_chains_fused_and_in_place() {
    let t = "elementwise_chains_fused_and_in_place";
    if gpu(t).is_none() {
        return;
    }
    for dims in [vec![1], vec![7], vec![3, 33], vec![1000, 7]] {
        let mut g = Graph::new(true);
        let a = input(&mut g, "a", &dims);
        let b = input(&mut g, "b", &dims);
        let c = input(&mut g, "c", &dims);
        let k = input(&mut g, "k", &[1]);
        // gelu(a*b + c) * k - tanh(c) / (sigmoid(a) + 2), then scaled.
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
        g.set_output("y", y);
        add_grads(&mut g, y, &[a, b, c]);
        // Chains of one element are not fused.
        let f = fused(&g);
        if dims.iter().product::<usize>() > 1 {
            assert!(f
                .nodes
                .iter()
                .any(|n| !n.outputs.is_empty() && matches!(n.op, Op::Elementwise(_))));
            assert!(launches(&f).0 >= 1, "{t}: expected an in-place launch");
        }
        check(&format!("{t} {dims:?}"), &g);
    }
}

#[test]
fn dropout_same_mask_as_cpu() {
    let t = "dropout_same_mask_as_cpu";
    if gpu(t).is_none() {
        return;
    }
    for (dims, p) in [(vec![1], 0.5), (vec![7, 33], 0.3), (vec![3, 1000], 0.9)] {
        for step in [1.0, 17.0] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &dims);
            let c = input(&mut g, "c", &dims);
            let s = g.add(x, c).unwrap(); // dropout in place over x + c
            let y = g.dropout(s, p, 1234).unwrap();
            g.set_output("y", y);
            add_grads(&mut g, y, &[x]);
            let sc = [("step", step)];
            check_with(&format!("{t} {dims:?} p={p} step={step}"), &g, &sc, 10, TOL);
        }
    }
}

#[test]
fn batchnorm_train_infer_backward() {
    let t = "batchnorm_train_infer_backward";
    if gpu(t).is_none() {
        return;
    }
    for dims in [[1, 1, 1, 3], [2, 3, 7, 7], [33, 4, 3, 1], [16, 2, 33, 33]] {
        let tol = if dims[0] * dims[2] * dims[3] > 10_000 {
            TOL_BIG
        } else {
            TOL
        };
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
            g.set_output("y", y);
            if training {
                add_grads(&mut g, y, &[x, p.gamma, p.beta]);
            }
            let sc = &[][..];
            check_with(&format!("{t} {dims:?} train={training}"), &g, sc, 10, tol);
        }
    }
}

// ---------------------------------------------------------------------------
// Optimisers (unfused: one launch per tensor; fused: one multi-tensor
// launch).

#[test]
fn optimiser_updates() {
    let t = "optimiser_updates";
    if gpu(t).is_none() {
        return;
    }
    let mut configs = Vec::new();
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
    ] {
        configs.push(OptimConfig::new(kind));
    }
    let mut c = OptimConfig::new(OptimizerKind::Sgd);
    c.momentum = 0.0;
    c.weight_decay = 0.01;
    configs.push(c);
    c.momentum = 0.9;
    c.nesterov = true;
    configs.push(c);
    let mut c = OptimConfig::new(OptimizerKind::Adam);
    c.weight_decay = 0.05;
    configs.push(c);
    for cfg in configs {
        for step in [1.0, 10.0] {
            let mut g = Graph::new(true);
            let x = input(&mut g, "x", &[7, 33]);
            let y = g.input("y", [7], DType::U32).unwrap();
            let w1 = g.param("fc1.weight", [300, 33]).unwrap();
            let b1 = g.param("fc1.bias", [300]).unwrap();
            let w2 = g.param("fc2.weight", [3, 300]).unwrap();
            let h = g
                .linear_act(x, w1, Some(b1), Some(Activation::Relu))
                .unwrap();
            let logits = g.linear(h, w2, None).unwrap();
            let loss = g.cross_entropy(logits, y).unwrap();
            append_update(&mut g, loss, &cfg).unwrap();
            g.set_output("loss", loss);
            // SGD reads no step.
            let sc: Vec<(&str, f32)> = [("lr", 0.05), ("step", step)]
                .into_iter()
                .filter(|(k, _)| g.scalars.iter().any(|s| s == k))
                .collect();
            check_with(&format!("{t} {cfg:?} step={step}"), &g, &sc, 3, TOL);
        }
    }
}

// ---------------------------------------------------------------------------
// Limits.

/// Grids beyond the per-dimension workgroup limit (65,535 here) run as 2-D
/// dispatches: one thread per element past 16.7M elements, one workgroup
/// per row past 65,535 rows.
#[test]
fn large_grids_use_2d_dispatch() {
    let t = "large_grids_use_2d_dispatch";
    let Some(gpu) = gpu(t) else { return };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let mut g = Graph::new(false);
    let n = max * 256 + 300;
    let f = g.fill(Shape(vec![n]), 0.5).unwrap();
    g.set_output("f", f);
    let x = input(&mut g, "x", &[max + 7, 3]);
    let y = g.softmax(x).unwrap();
    g.set_output("y", y);
    check(t, &g);
}

/// An arena larger than one storage binding is refused when the module is
/// compiled, naming the limit, its value and the program.
#[test]
fn oversized_arena_is_a_clear_error() {
    let t = "oversized_arena_is_a_clear_error";
    let Some(gpu) = gpu(t) else { return };
    let limit = gpu.limits().max_storage_buffer_binding_size as usize;
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[limit / 4 / 1024 + 1, 1024]);
    let y = g.relu(x).unwrap();
    g.set_output("y", y);
    let module = plan::compile(&[("big", &g)]).unwrap();
    let err = match Session::new(gpu, module) {
        Ok(_) => panic!("{t}: compiled a {limit}-byte+ arena"),
        Err(e) => e.to_string(),
    };
    println!("{err}");
    for want in [
        "max_storage_buffer_binding_size",
        "'big'",
        &(limit >> 20).to_string(),
    ] {
        assert!(err.contains(want), "{t}: {err:?} lacks {want:?}");
    }
}
