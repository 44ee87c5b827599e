//! Gradient checks for every differentiable op and for a few compositions.
//!
//! Each test builds a scalar loss — `sum(op(x) ⊙ r)` with a fixed random `r`,
//! or a cross-entropy — appends the gradient graph with
//! `gpurt::graph::autodiff::gradients`, and proves, for every input and
//! parameter:
//!
//! (a)+(b) the gradient graph evaluated in float64 by the independent
//!     reference interpreter agrees with central finite differences of the
//!     float64 loss: relative error < 1e-6 (`TOL_F64`). This checks gpurt's
//!     gradient *rules* (the graph autodiff builds);
//! (c) the same gradient graph run on the CPU backend in f32 agrees with the
//!     finite differences: relative error < 1e-3 (`TOL_F32`);
//! (d) after gpurt's fusion passes (`gpurt::graph::fuse::fuse`, what the
//!     classifier compiles), (a)–(c) still hold for the fused graph.
//!
//! Relative error is ‖out − ref‖ / ‖ref‖ over the whole gradient tensor.
//! Data avoids kinks: relu pre-activations and max-pool windows are checked
//! to be farther from a kink than the finite-difference step can reach.

use crate::common::reference::eval_f64;
use crate::common::*;
use gpurt::graph::autodiff::gradients;
use gpurt::graph::ir::{Graph, ValueId};
use gpurt::ops::{Activation, ConvParams, PoolParams};
use gpurt::tensor::{DType, Shape};
use std::collections::HashMap;

const TOL_F64: f64 = 1e-6;
const TOL_F32: f64 = 1e-3;
/// Central-difference step. Truncation error ~h² and round-off ~1e-16/h
/// are both far below `TOL_F64` at this size.
const H: f64 = 1e-6;
/// Minimum distance from a kink (relu at 0, a max-pool near-tie) for the
/// finite differences to be valid: many times `H`.
const KINK_MARGIN: f64 = 1e-4;

/// Central finite differences of the f64 loss for every element of `w`.
fn finite_differences(
    fwd: &Graph,
    loss: ValueId,
    w: ValueId,
    data: &Data,
    sc: &Scalars,
) -> Vec<f64> {
    let mut d = data.clone();
    let n = data[&w].len();
    (0..n)
        .map(|j| {
            let x0 = data[&w][j];
            d.get_mut(&w).unwrap()[j] = x0 + H;
            let lp = eval_f64(fwd, &d, sc)[loss.0 as usize][0];
            d.get_mut(&w).unwrap()[j] = x0 - H;
            let lm = eval_f64(fwd, &d, sc)[loss.0 as usize][0];
            d.get_mut(&w).unwrap()[j] = x0;
            (lp - lm) / (2.0 * H)
        })
        .collect()
}

/// The gradient check (a)–(d) described at the top of this file, for
/// each value in `wrt`. `fwd` computes the scalar `loss`.
fn grad_check(what: &str, fwd: &Graph, loss: ValueId, wrt: &[ValueId], data: &Data, sc: &Scalars) {
    assert_eq!(fwd.shape(loss).numel(), 1, "{what}: loss is not a scalar");
    let mut g = fwd.clone();
    let grads =
        gradients(&mut g, loss, wrt).unwrap_or_else(|e| panic!("{what}: gradients() failed: {e}"));
    let names: Vec<String> = (0..wrt.len()).map(|i| format!("grad{i}")).collect();
    for (n, d) in names.iter().zip(&grads) {
        g.set_output(n, *d);
    }
    let fg = fused(&g);
    let runs = [
        ("f64 gradient graph", f64_outputs(&g, data, sc), TOL_F64),
        (
            "f64 fused gradient graph",
            f64_outputs(&fg, data, sc),
            TOL_F64,
        ),
        ("f32 CPU backend", run_cpu(&g, data, sc), TOL_F32),
        ("f32 CPU backend, fused", run_cpu(&fg, data, sc), TOL_F32),
    ];
    for ((w, d), n) in wrt.iter().zip(&grads).zip(&names) {
        assert_eq!(g.shape(*d), g.shape(*w), "{what}: gradient shape");
        let fd = finite_differences(fwd, loss, *w, data, sc);
        assert!(
            fd.iter().any(|&v| v != 0.0),
            "{what}: d/d{} is identically zero: the check would prove nothing",
            describe(fwd, *w)
        );
        for (label, outputs, tol) in &runs {
            assert_close(
                &format!(
                    "{what}: d loss / d {} ({label} vs finite differences)",
                    describe(fwd, *w)
                ),
                &outputs[n],
                &fd,
                *tol,
            );
        }
    }
}

/// Every named output of `g` evaluated by the f64 reference.
fn f64_outputs(g: &Graph, data: &Data, sc: &Scalars) -> HashMap<String, Vec<f64>> {
    let vals = eval_f64(g, data, sc);
    g.outputs
        .iter()
        .map(|(n, v)| (n.clone(), vals[v.0 as usize].clone()))
        .collect()
}

/// "name shape" of a graph value, for messages.
fn describe(g: &Graph, v: ValueId) -> String {
    use gpurt::graph::ir::Role;
    let name = match &g.value(v).role {
        Role::Input(n) | Role::Param(n) | Role::State(n) => n.clone(),
        Role::Computed => format!("v{}", v.0),
    };
    format!("{name} {}", g.shape(v))
}

/// The f32 inputs and parameters of `g` except the loss weights `r`: what
/// the tests differentiate with respect to.
fn differentiable(g: &Graph) -> Vec<ValueId> {
    use gpurt::graph::ir::Role;
    g.values
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v.dtype == DType::F32
                && match &v.role {
                    Role::Input(n) => n != "r",
                    Role::Param(_) => true,
                    _ => false,
                }
        })
        .map(|(i, _)| ValueId(i as u32))
        .collect()
}

/// Build `loss = sum(build(g) ⊙ r)`, fill every input with random data,
/// let `adjust` override some of it, and run the gradient check with
/// respect to every f32 input and parameter.
fn check_op(
    what: &str,
    seed: u64,
    training: bool,
    build: impl FnOnce(&mut Graph) -> ValueId,
    adjust: impl FnOnce(&Graph, &mut Data, &mut rand_chacha::ChaCha8Rng),
    sc: &Scalars,
) {
    let mut g = Graph::new(training);
    let y = build(&mut g);
    let loss = weighted_sum(&mut g, y);
    let mut r = rng(seed);
    let mut data = random_data(&g, &mut r, 1);
    adjust(&g, &mut data, &mut r);
    let wrt = differentiable(&g);
    grad_check(what, &g, loss, &wrt, &data, sc);
}

fn no_adjust(_: &Graph, _: &mut Data, _: &mut rand_chacha::ChaCha8Rng) {}

/// Panics when some relu pre-activation is within `KINK_MARGIN` of 0.
fn assert_no_relu_kink(what: &str, z: &[f64]) {
    let m = z.iter().fold(f64::INFINITY, |a, v| a.min(v.abs()));
    assert!(
        m > KINK_MARGIN,
        "{what}: a relu input is {m:e} from 0; choose another seed"
    );
}

/// Panics when some max-pool window's two largest values are within
/// `KINK_MARGIN` (windows whose maximum is exactly 0, i.e. all-zero relu
/// outputs, carry no gradient and are skipped).
fn assert_no_pool_tie(what: &str, sx: &Shape, p: &PoolParams, x: &[f64]) {
    let (h, w) = (sx.0[2], sx.0[3]);
    let oh = (h + 2 * p.pad.0 - p.kernel.0) / p.stride.0 + 1;
    let ow = (w + 2 * p.pad.1 - p.kernel.1) / p.stride.1 + 1;
    for plane in 0..sx.0[0] * sx.0[1] {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut v: Vec<f64> = Vec::new();
                for ky in 0..p.kernel.0 {
                    for kx in 0..p.kernel.1 {
                        let iy = (oy * p.stride.0 + ky) as isize - p.pad.0 as isize;
                        let ix = (ox * p.stride.1 + kx) as isize - p.pad.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            v.push(x[plane * h * w + iy as usize * w + ix as usize]);
                        }
                    }
                }
                v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                if v.len() > 1 && v[0] != 0.0 {
                    assert!(
                        v[0] - v[1] > KINK_MARGIN,
                        "{what}: max-pool window ({oy},{ox}) of plane {plane} has a near-tie \
                         {} vs {}; choose another seed",
                        v[0],
                        v[1]
                    );
                }
            }
        }
    }
}

const fn pp(kernel: (usize, usize), stride: (usize, usize), pad: (usize, usize)) -> PoolParams {
    PoolParams {
        kernel,
        stride,
        pad,
    }
}

const fn cp(stride: (usize, usize), pad: (usize, usize), dilation: (usize, usize)) -> ConvParams {
    ConvParams {
        stride,
        pad,
        dilation,
    }
}

// ---------------------------------------------------------------------------
// Dense algebra.

/// matmul_t: every transpose combination, 2-D and batched; the gradient
/// rules for both operands.
#[test]
fn matmul_gradients() {
    let cases: [(&[usize], usize, usize, usize); 6] = [
        (&[], 1, 1, 1),
        (&[], 3, 7, 5),
        (&[], 7, 1, 3),
        (&[2], 3, 4, 5),
        (&[3, 1], 1, 3, 7),
        (&[], 2, 33, 1),
    ];
    for (i, (batch, m, k, n)) in cases.into_iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let dims = |t: bool, rows: usize, cols: usize| {
                let mut d = batch.to_vec();
                d.extend(if t { [cols, rows] } else { [rows, cols] });
                d
            };
            check_op(
                &format!("matmul batch {batch:?} m={m} k={k} n={n} ta={ta} tb={tb}"),
                100 + i as u64,
                false,
                |g| {
                    let a = input(g, "a", &dims(ta, m, k));
                    let b = input(g, "b", &dims(tb, k, n));
                    g.matmul_t(a, ta, b, tb).unwrap()
                },
                no_adjust,
                &Scalars::new(),
            );
        }
    }
}

/// A batched `a` times a 2-D `b` (folded through reshapes by the builder).
#[test]
fn matmul_folded_gradients() {
    for (i, (a_dims, n, tb)) in [
        (vec![2, 3, 7], 5, false),
        (vec![2, 3, 7], 5, true),
        (vec![1, 1, 3], 1, false),
        (vec![3, 2, 1, 4], 3, true),
        (vec![2, 33], 2, false),
    ]
    .into_iter()
    .enumerate()
    {
        let k = *a_dims.last().unwrap();
        check_op(
            &format!("matmul folded a {a_dims:?} n={n} tb={tb}"),
            110 + i as u64,
            false,
            |g| {
                let a = input(g, "a", &a_dims);
                let b = input(g, "b", &if tb { [n, k] } else { [k, n] });
                g.matmul_t(a, false, b, tb).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

const LINEAR_CASES: [(&[usize], usize); 6] = [
    (&[1, 1], 1),
    (&[3, 7], 5),
    (&[7, 3], 1),
    (&[2, 3, 7], 4),
    (&[7], 3),
    (&[1, 2, 1, 9], 3),
];

/// linear with and without bias, inputs of rank 1 to 4: gradients for x,
/// weight and bias.
#[test]
fn linear_gradients() {
    for (i, (xd, out)) in LINEAR_CASES.into_iter().enumerate() {
        for bias in [true, false] {
            check_op(
                &format!("linear x {xd:?} -> {out} bias={bias}"),
                120 + i as u64,
                false,
                |g| {
                    let x = input(g, "x", xd);
                    let w = g.param("w", [out, *xd.last().unwrap()]).unwrap();
                    let b = bias.then(|| g.param("b", [out]).unwrap());
                    g.linear(x, w, b).unwrap()
                },
                no_adjust,
                &Scalars::new(),
            );
        }
    }
}

/// Builds `act(x·wᵀ + b)` through the fused epilogue and checks the
/// pre-activation is clear of relu's kink.
fn fused_linear(what: &str, seed: u64, xd: &[usize], out: usize, a: Activation) {
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", xd);
    let w = g.param("w", [out, *xd.last().unwrap()]).unwrap();
    let b = g.param("b", [out]).unwrap();
    let y = match g.linear_act(x, w, Some(b), Some(a)) {
        Ok(y) => y,
        // Refusing a fusion whose backward cannot work is acceptable.
        Err(_) => return,
    };
    let loss = weighted_sum(&mut g, y);
    let mut r = rng(seed);
    let data = random_data(&g, &mut r, 1);
    if a == Activation::Relu {
        let z = crate::common::reference::linear(
            g.shape(x),
            g.shape(w),
            &data[&x],
            &data[&w],
            Some(&data[&b]),
        );
        assert_no_relu_kink(what, &z);
    }
    let mut gg = g.clone();
    // Refusing to differentiate the fusion is acceptable; wrong gradients
    // are not.
    if gradients(&mut gg, loss, &[x]).is_err() {
        return;
    }
    grad_check(what, &g, loss, &[x, w, b], &data, &Scalars::new());
}

/// linear_act with relu, sigmoid and tanh epilogues: the fused backward
/// (activation mask applied to dy from the saved output) is correct.
#[test]
fn linear_fused_activation_gradients() {
    for (i, (xd, out)) in LINEAR_CASES.into_iter().enumerate() {
        for a in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
            fused_linear(
                &format!("linear_act {} x {xd:?} -> {out}", a.name()),
                130 + i as u64,
                xd,
                out,
                a,
            );
        }
    }
}

/// linear_act with a GELU epilogue. GELU's backward needs the
/// pre-activation, which the fused op does not keep: the builder (or
/// `gradients`) must refuse it, or the gradient must still be right.
#[test]
fn linear_fused_gelu_gradient_is_right_or_refused() {
    for (i, (xd, out)) in LINEAR_CASES.into_iter().enumerate() {
        fused_linear(
            &format!("linear_act gelu x {xd:?} -> {out}"),
            140 + i as u64,
            xd,
            out,
            Activation::Gelu,
        );
    }
}

// ---------------------------------------------------------------------------
// Convolution.

/// (n, c, (h, w), o, (kh, kw), params): stride 2, padding 0 and 1,
/// dilation 2, non-square kernels (3x1, 2x3), c_out = 1, n = 1.
type ConvCase = (
    usize,
    usize,
    (usize, usize),
    usize,
    (usize, usize),
    ConvParams,
);
const CONV_CASES: [ConvCase; 8] = [
    (1, 1, (5, 5), 1, (3, 3), cp((1, 1), (0, 0), (1, 1))),
    (2, 3, (7, 6), 2, (3, 3), cp((2, 2), (1, 1), (1, 1))),
    (1, 2, (7, 5), 3, (3, 1), cp((1, 1), (1, 0), (2, 2))),
    (2, 2, (5, 7), 1, (2, 3), cp((2, 1), (0, 0), (1, 2))),
    (1, 1, (9, 3), 2, (3, 1), cp((2, 2), (1, 1), (2, 2))),
    (2, 3, (3, 3), 2, (1, 1), cp((1, 1), (0, 0), (1, 1))),
    (1, 2, (7, 7), 2, (3, 3), cp((2, 2), (1, 1), (2, 2))),
    (1, 2, (3, 4), 2, (4, 4), cp((1, 1), (2, 1), (1, 1))),
];

/// Builds a convolution (optionally with a fused activation) and checks
/// its gradients for x, weight and bias.
fn conv_check(what: &str, seed: u64, case: ConvCase, bias: bool, act: Option<Activation>) {
    let (n, c, (h, w), o, (kh, kw), p) = case;
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[n, c, h, w]);
    let wt = g.param("w", [o, c, kh, kw]).unwrap();
    let b = bias.then(|| g.param("b", [o]).unwrap());
    let y = match g.conv2d_act(x, wt, b, p, act) {
        Ok(y) => y,
        Err(_) if act == Some(Activation::Gelu) => return,
        Err(e) => panic!("{what}: {e}"),
    };
    let loss = weighted_sum(&mut g, y);
    let mut r = rng(seed);
    let mut data = random_data(&g, &mut r, 1);
    // Small biases, so a fused relu does not zero a whole output.
    if let Some(b) = b {
        data.insert(b, uniform_in(&mut r, o, -0.25, 0.25));
    }
    if act == Some(Activation::Relu) {
        let z = crate::common::reference::conv2d(
            g.shape(x),
            g.shape(wt),
            &p,
            &data[&x],
            &data[&wt],
            b.map(|b| &data[&b][..]),
        );
        assert_no_relu_kink(what, &z);
    }
    if act == Some(Activation::Gelu) && gradients(&mut g.clone(), loss, &[x]).is_err() {
        return;
    }
    let wrt: Vec<ValueId> = [Some(x), Some(wt), b].into_iter().flatten().collect();
    grad_check(what, &g, loss, &wrt, &data, &Scalars::new());
}

/// conv2d gradients (grad-input, grad-weight, grad-bias) on every shape set,
/// with and without bias.
#[test]
fn conv2d_gradients() {
    for (i, case) in CONV_CASES.into_iter().enumerate() {
        for bias in [true, false] {
            conv_check(
                &format!("conv2d {case:?} bias={bias}"),
                150 + i as u64,
                case,
                bias,
                None,
            );
        }
    }
}

/// conv2d_act with relu, sigmoid and tanh epilogues.
#[test]
fn conv2d_fused_activation_gradients() {
    for (i, case) in CONV_CASES.into_iter().enumerate() {
        for a in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
            conv_check(
                &format!("conv2d_act {} {case:?}", a.name()),
                160 + i as u64,
                case,
                true,
                Some(a),
            );
        }
    }
}

/// conv2d_act with a GELU epilogue: refused, or right (see the linear
/// counterpart).
#[test]
fn conv2d_fused_gelu_gradient_is_right_or_refused() {
    for (i, case) in CONV_CASES.into_iter().enumerate() {
        conv_check(
            &format!("conv2d_act gelu {case:?}"),
            170 + i as u64,
            case,
            true,
            Some(Activation::Gelu),
        );
    }
}

// ---------------------------------------------------------------------------
// Pooling.

const POOL_CASES: [(&[usize], PoolParams); 7] = [
    (&[1, 1, 7, 7], pp((2, 2), (2, 2), (0, 0))),
    (&[2, 3, 7, 5], pp((3, 2), (2, 1), (1, 1))),
    (&[1, 2, 9, 3], pp((3, 3), (1, 1), (1, 1))),
    (&[3, 1, 4, 9], pp((2, 3), (2, 3), (1, 0))),
    (&[2, 2, 1, 7], pp((1, 3), (1, 2), (0, 1))),
    (&[1, 3, 3, 3], pp((1, 1), (1, 1), (0, 0))),
    (&[1, 2, 6, 6], pp((4, 4), (2, 2), (2, 2))),
];

/// max_pool2d: the gradient is routed through the saved argmax, with
/// overlapping windows accumulating.
#[test]
fn max_pool2d_gradients() {
    for (i, (xd, p)) in POOL_CASES.into_iter().enumerate() {
        let what = format!("max_pool2d x {xd:?} {p:?}");
        check_op(
            &what,
            180 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                g.max_pool2d(x, p).unwrap()
            },
            |g, d, _| {
                let x = g.inputs()[0].1;
                assert_no_pool_tie(&what, g.shape(x), &p, &d[&x]);
            },
            &Scalars::new(),
        );
    }
}

/// avg_pool2d (count_include_pad) gradients.
#[test]
fn avg_pool2d_gradients() {
    for (i, (xd, p)) in POOL_CASES.into_iter().enumerate() {
        check_op(
            &format!("avg_pool2d x {xd:?} {p:?}"),
            190 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                g.avg_pool2d(x, p).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

/// global_avg_pool gradients.
#[test]
fn global_avg_pool_gradients() {
    for (i, xd) in [
        [1, 1, 1, 1],
        [2, 3, 7, 7],
        [1, 33, 3, 1],
        [2, 1, 1, 33],
        [3, 2, 5, 3],
    ]
    .into_iter()
    .enumerate()
    {
        check_op(
            &format!("global_avg_pool x {xd:?}"),
            200 + i as u64,
            false,
            |g| {
                let x = input(g, "x", &xd);
                g.global_avg_pool(x).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

// ---------------------------------------------------------------------------
// Elementwise and shape ops.

/// relu (inputs at least 1e-2 from 0), gelu, sigmoid and tanh over [-3, 3).
#[test]
fn activation_gradients() {
    for (i, xd) in [&[1][..], &[3, 7][..], &[33][..], &[2, 3, 7][..], &[][..]]
        .into_iter()
        .enumerate()
    {
        for a in [
            Activation::Relu,
            Activation::Gelu,
            Activation::Sigmoid,
            Activation::Tanh,
        ] {
            check_op(
                &format!("{} x {xd:?}", a.name()),
                210 + i as u64,
                false,
                |g| {
                    let x = input(g, "x", xd);
                    g.act(a, x).unwrap()
                },
                |g, d, r| {
                    let x = g.inputs()[0].1;
                    let n = g.shape(x).numel();
                    let v: Vec<f64> = uniform_away(r, n, 1e-2).iter().map(|v| 3.0 * v).collect();
                    d.insert(x, v);
                },
                &Scalars::new(),
            );
        }
    }
}

/// add, sub, mul and div with NumPy broadcasting (gradients summed back to
/// each operand's shape), in both operand orders.
#[test]
fn binary_broadcast_gradients() {
    let pairs: [(&[usize], &[usize]); 7] = [
        (&[3, 1, 7], &[7]),
        (&[1], &[33]),
        (&[2, 3, 7], &[2, 3, 7]),
        (&[3, 1], &[1, 7]),
        (&[], &[3, 3]),
        (&[7, 1, 3], &[1, 5, 1]),
        (&[2, 1, 3, 1], &[4, 1, 1]),
    ];
    for (i, (sa, sb)) in pairs.into_iter().enumerate() {
        for (sa, sb) in [(sa, sb), (sb, sa)] {
            for k in [
                gpurt::ops::BinaryKind::Add,
                gpurt::ops::BinaryKind::Sub,
                gpurt::ops::BinaryKind::Mul,
                gpurt::ops::BinaryKind::Div,
            ] {
                check_op(
                    &format!("{} {sa:?} ∘ {sb:?}", k.name()),
                    220 + i as u64,
                    false,
                    |g| {
                        let a = input(g, "a", sa);
                        let b = input(g, "b", sb);
                        g.binary(k, a, b).unwrap()
                    },
                    |g, d, r| {
                        let b = g.inputs()[1].1;
                        d.insert(b, uniform_away(r, g.shape(b).numel(), 0.2));
                    },
                    &Scalars::new(),
                );
            }
        }
    }
}

/// A value used by several consumers (and twice by one node): gradients
/// accumulate. `y = x·x + x − x/(x·x)`.
#[test]
fn shared_value_gradients_accumulate() {
    for (i, xd) in [&[1][..], &[3, 7][..], &[33][..], &[2, 1, 3][..], &[][..]]
        .into_iter()
        .enumerate()
    {
        check_op(
            &format!("x*x + x - x/(x*x) x {xd:?}"),
            230 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                let sq = g.mul(x, x).unwrap();
                let s = g.add(sq, x).unwrap();
                let q = g.div(x, sq).unwrap();
                g.sub(s, q).unwrap()
            },
            |g, d, r| {
                let x = g.inputs()[0].1;
                d.insert(x, uniform_away(r, g.shape(x).numel(), 0.3));
            },
            &Scalars::new(),
        );
    }
}

/// scale, sum and mean (with and without keepdim), broadcast_to and
/// sum_to.
#[test]
fn scale_sum_mean_broadcast_gradients() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 7, 5], &[1]),
        (&[33], &[0]),
        (&[2, 3, 4, 4], &[0, 2, 3]),
        (&[1, 7, 1], &[0, 2]),
        (&[3, 7], &[0, 1]),
        (&[5, 1, 3], &[2]),
    ];
    for (i, (xd, axes)) in cases.into_iter().enumerate() {
        for keepdim in [true, false] {
            check_op(
                &format!("scale/sum/mean/broadcast x {xd:?} axes {axes:?} keepdim={keepdim}"),
                240 + i as u64,
                false,
                |g| {
                    let x = input(g, "x", xd);
                    let y = g.scale(x, -1.75).unwrap();
                    let s = g.sum(y, axes, keepdim).unwrap();
                    let m = g.mean(x, axes, keepdim).unwrap();
                    let sm = g.mul(s, m).unwrap();
                    let kept: Vec<usize> = xd
                        .iter()
                        .enumerate()
                        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                        .collect();
                    let k = g.reshape(sm, kept).unwrap();
                    let b = g.broadcast_to(k, &Shape(xd.to_vec())).unwrap();
                    g.mul(b, x).unwrap()
                },
                no_adjust,
                &Scalars::new(),
            );
        }
    }
    for (i, (xd, to)) in [
        (&[3, 1, 7][..], &[7][..]),
        (&[2, 3, 7][..], &[3, 1][..]),
        (&[33, 3][..], &[1][..]),
        (&[4, 5, 6][..], &[4, 1, 6][..]),
        (&[7, 2][..], &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        check_op(
            &format!("sum_to {xd:?} -> {to:?}"),
            250 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                g.sum_to(x, &Shape(to.to_vec())).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

/// transpose, reshape and flatten (views and copies) pass gradients back
/// to the right positions.
#[test]
fn transpose_reshape_flatten_gradients() {
    for (i, (xd, perm)) in [
        (&[3, 7][..], &[1, 0][..]),
        (&[2, 3, 7][..], &[2, 0, 1][..]),
        (&[1, 33, 3][..], &[0, 2, 1][..]),
        (&[2, 3, 1, 7][..], &[3, 1, 0, 2][..]),
        (&[2, 3, 4, 5][..], &[1, 3, 2, 0][..]),
    ]
    .into_iter()
    .enumerate()
    {
        check_op(
            &format!("transpose/reshape/flatten x {xd:?} perm {perm:?}"),
            260 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                let t = g.transpose(x, perm).unwrap();
                let f = g.flatten(t).unwrap();
                let n = g.shape(f).numel();
                let rs = g.reshape(f, [n]).unwrap();
                // A nonlinearity so the positions matter.
                let sq = g.mul(rs, rs).unwrap();
                g.add(sq, rs).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

/// concat's gradient is slices of dy, and slice's is dy between zeros.
#[test]
fn concat_and_slice_gradients() {
    let cases: [(&[&[usize]], usize, usize, usize); 4] = [
        (&[&[2, 3, 2, 3], &[2, 1, 2, 3]], 1, 1, 2),
        (&[&[3, 2], &[3, 5], &[3, 1]], 1, 2, 5),
        (&[&[1, 4], &[2, 4]], 0, 0, 1),
        (&[&[2, 2, 3], &[2, 2, 4]], 2, 3, 4),
    ];
    for (i, (shapes, axis, start, len)) in cases.into_iter().enumerate() {
        check_op(
            &format!("concat {shapes:?} axis {axis}, then slice {start}+{len}"),
            290 + i as u64,
            false,
            |g| {
                let xs: Vec<_> = shapes
                    .iter()
                    .enumerate()
                    .map(|(k, s)| input(g, &format!("x{k}"), s))
                    .collect();
                let y = g.concat(&xs, axis).unwrap();
                let sq = g.mul(y, y).unwrap();
                let both = g.add(sq, y).unwrap();
                let part = g.slice(both, axis, start, len).unwrap();
                let sq = g.mul(part, part).unwrap();
                // y joins too, so every input has a gradient.
                g.concat(&[sq, y], axis).unwrap()
            },
            no_adjust,
            &Scalars::new(),
        );
    }
}

// ---------------------------------------------------------------------------
// Softmax family, cross-entropy, dropout, batch-norm.

/// softmax and log-softmax over the last axis.
#[test]
fn softmax_and_log_softmax_gradients() {
    // (A last axis of size 1 has a constant softmax: zero gradient, so it
    // would prove nothing here; it is covered by the forward parity tests.)
    for (i, xd) in [
        &[1, 2][..],
        &[3, 7][..],
        &[33][..],
        &[2, 3, 5][..],
        &[7, 2][..],
    ]
    .into_iter()
    .enumerate()
    {
        for log in [false, true] {
            check_op(
                &format!("{} x {xd:?}", if log { "log_softmax" } else { "softmax" }),
                270 + i as u64,
                false,
                |g| {
                    let x = input(g, "x", xd);
                    if log {
                        g.log_softmax(x).unwrap()
                    } else {
                        g.softmax(x).unwrap()
                    }
                },
                |g, d, r| {
                    let x = g.inputs()[0].1;
                    d.insert(x, uniform_in(r, g.shape(x).numel(), -4.0, 4.0));
                },
                &Scalars::new(),
            );
        }
    }
}

/// Mean cross-entropy with u32 labels, directly as the loss and scaled
/// (so the incoming gradient is not 1).
#[test]
fn cross_entropy_gradients() {
    for (i, (b, c)) in [(1, 2), (3, 7), (33, 3), (7, 33), (5, 10)]
        .into_iter()
        .enumerate()
    {
        for scale in [1.0f32, -2.5] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "logits", &[b, c]);
            let l = g.input("labels", [b], DType::U32).unwrap();
            let ce = g.cross_entropy(x, l).unwrap();
            let loss = if scale == 1.0 {
                ce
            } else {
                g.scale(ce, scale).unwrap()
            };
            let mut r = rng(280 + i as u64);
            let mut data = random_data(&g, &mut r, c as u32);
            data.insert(x, uniform_in(&mut r, b * c, -3.0, 3.0));
            grad_check(
                &format!("cross_entropy logits [{b},{c}] × {scale}"),
                &g,
                loss,
                &[x],
                &data,
                &Scalars::new(),
            );
        }
    }
}

/// Label smoothing's gradient (through log_softmax and the mean) against
/// finite differences.
#[test]
fn cross_entropy_label_smoothing_gradients() {
    for (i, (b, c)) in [(1, 2), (3, 7), (7, 33)].into_iter().enumerate() {
        let mut g = Graph::new(false);
        let x = input(&mut g, "logits", &[b, c]);
        let l = g.input("labels", [b], DType::U32).unwrap();
        let loss = g.cross_entropy_smoothed(x, l, 0.2).unwrap();
        let mut r = rng(290 + i as u64);
        let mut data = random_data(&g, &mut r, c as u32);
        data.insert(x, uniform_in(&mut r, b * c, -3.0, 3.0));
        let what = format!("smoothed cross_entropy logits [{b},{c}]");
        grad_check(&what, &g, loss, &[x], &data, &Scalars::new());
    }
}

/// Dropout's gradient applies the same hash mask (recomputed from seed and
/// step) and scale as the forward.
#[test]
fn dropout_gradients() {
    for (i, (xd, p, seed, step)) in [
        (&[1][..], 0.25f32, 1u32, 1.0f64),
        (&[3, 7][..], 0.1, 1, 2.0),
        (&[33][..], 0.5, 7, 3.0),
        (&[2, 3, 5][..], 0.5, 42, 10.0),
        (&[1, 33, 3][..], 0.75, 3, 12345.0),
    ]
    .into_iter()
    .enumerate()
    {
        check_op(
            &format!("dropout x {xd:?} p={p} seed={seed} step={step}"),
            290 + i as u64,
            true,
            |g| {
                let x = input(g, "x", xd);
                let y = g.dropout(x, p, seed).unwrap();
                // A nonlinearity after the mask, so the mask's scale matters.
                g.mul(y, y).unwrap()
            },
            no_adjust,
            &scalars(&[("step", step)]),
        );
    }
}

/// Training batch-norm: gradients for x (through the batch statistics),
/// gamma and beta.
#[test]
fn batch_norm_gradients() {
    for (i, xd) in [
        &[2, 3, 4, 4][..],
        &[1, 1, 3, 3][..],
        &[3, 7, 1, 1][..],
        &[1, 2, 3, 5][..],
        &[4, 2, 5, 1][..],
    ]
    .into_iter()
    .enumerate()
    {
        check_op(
            &format!("batch_norm2d train x {xd:?}"),
            300 + i as u64,
            true,
            |g| {
                let x = input(g, "x", xd);
                let c = xd[1];
                let p = bn_params(g, c);
                let y = g.batch_norm2d(x, &p, 1e-5, 0.1).unwrap();
                // Squared, so the loss is not invariant to x's scale.
                g.mul(y, y).unwrap()
            },
            |g, d, r| {
                let x = g.inputs()[0].1;
                d.insert(x, uniform_in(r, g.shape(x).numel(), -1.0, 3.0));
            },
            &Scalars::new(),
        );
    }
}

// ---------------------------------------------------------------------------
// Compositions.

/// conv → relu → max-pool → flatten → linear → cross-entropy, the
/// classifier's pattern, with gradients for the image and all parameters.
#[test]
fn cnn_composition_gradients() {
    let cases = [
        (
            2,
            3,
            (8, 8),
            4,
            cp((1, 1), (1, 1), (1, 1)),
            pp((2, 2), (2, 2), (0, 0)),
            5,
        ),
        (
            1,
            1,
            (7, 7),
            2,
            cp((2, 2), (1, 1), (1, 1)),
            pp((2, 2), (1, 1), (0, 0)),
            3,
        ),
        (
            3,
            2,
            (9, 7),
            3,
            cp((1, 1), (0, 0), (2, 2)),
            pp((3, 3), (2, 2), (1, 1)),
            4,
        ),
        (
            2,
            2,
            (6, 6),
            1,
            cp((1, 2), (1, 0), (1, 1)),
            pp((2, 1), (2, 1), (0, 0)),
            7,
        ),
        (
            1,
            3,
            (5, 5),
            3,
            cp((1, 1), (1, 1), (1, 1)),
            pp((3, 3), (2, 2), (0, 0)),
            2,
        ),
    ];
    for (i, (n, c, (h, w), o, convp, poolp, classes)) in cases.into_iter().enumerate() {
        let what = format!(
            "conv→relu→maxpool→flatten→linear→CE x [{n},{c},{h},{w}] conv {o} {convp:?} {poolp:?}"
        );
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[n, c, h, w]);
        let labels = g.input("labels", [n], DType::U32).unwrap();
        let cw = g.param("conv.weight", [o, c, 3, 3]).unwrap();
        let cb = g.param("conv.bias", [o]).unwrap();
        let z = g.conv2d(x, cw, Some(cb), convp).unwrap();
        let a = g.relu(z).unwrap();
        let pooled = g.max_pool2d(a, poolp).unwrap();
        let f = g.flatten(pooled).unwrap();
        let feat = g.shape(f).0[1];
        let fw = g.param("fc.weight", [classes, feat]).unwrap();
        let fb = g.param("fc.bias", [classes]).unwrap();
        let logits = g.linear(f, fw, Some(fb)).unwrap();
        let loss = g.cross_entropy(logits, labels).unwrap();

        let mut r = rng(310 + i as u64);
        let data = random_data(&g, &mut r, classes as u32);
        let vals = eval_f64(&g, &data, &Scalars::new());
        assert_no_relu_kink(&what, &vals[z.0 as usize]);
        assert_no_pool_tie(&what, g.shape(a), &poolp, &vals[a.0 as usize]);
        grad_check(
            &what,
            &g,
            loss,
            &[x, cw, cb, fw, fb],
            &data,
            &Scalars::new(),
        );
    }
}

/// conv → batch-norm → relu → global-avg-pool → linear → cross-entropy.
#[test]
fn batch_norm_composition_gradients() {
    for (i, (n, c, hw, o)) in [
        (2, 3, 5, 4),
        (3, 1, 4, 2),
        (2, 2, 3, 3),
        (4, 2, 4, 1),
        (2, 3, 6, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let what = format!("conv→bn→relu→gap→linear→CE x [{n},{c},{hw},{hw}] conv {o}");
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[n, c, hw, hw]);
        let labels = g.input("labels", [n], DType::U32).unwrap();
        let cw = g.param("conv.weight", [o, c, 3, 3]).unwrap();
        let z = g.conv2d(x, cw, None, cp((1, 1), (1, 1), (1, 1))).unwrap();
        let p = bn_params(&mut g, o);
        let bn = g.batch_norm2d(z, &p, 1e-5, 0.1).unwrap();
        let a = g.relu(bn).unwrap();
        let gap = g.global_avg_pool(a).unwrap();
        let fw = g.param("fc.weight", [3, o]).unwrap();
        let fb = g.param("fc.bias", [3]).unwrap();
        let logits = g.linear(gap, fw, Some(fb)).unwrap();
        let loss = g.cross_entropy(logits, labels).unwrap();

        let mut r = rng(320 + i as u64);
        let mut data = random_data(&g, &mut r, 3);
        // γ away from 0 and a small β, so the relu passes part of every
        // channel.
        data.insert(p.gamma, uniform_in(&mut r, o, 0.5, 1.5));
        data.insert(p.beta, uniform_in(&mut r, o, -0.2, 0.2));
        let vals = eval_f64(&g, &data, &Scalars::new());
        assert_no_relu_kink(&what, &vals[bn.0 as usize]);
        grad_check(
            &what,
            &g,
            loss,
            &[x, cw, p.gamma, p.beta, fw, fb],
            &data,
            &Scalars::new(),
        );
    }
}

/// `sum(softmax(x) ⊙ w)` with w a parameter: gradients for both.
#[test]
fn softmax_mul_sum_composition_gradients() {
    for (i, xd) in [
        &[1, 3][..],
        &[3, 7][..],
        &[33][..],
        &[2, 3, 5][..],
        &[4, 2][..],
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let w = g.param("w", xd.to_vec()).unwrap();
        let s = g.softmax(x).unwrap();
        let m = g.mul(s, w).unwrap();
        let axes: Vec<usize> = (0..xd.len()).collect();
        let loss = g.sum(m, &axes, false).unwrap();
        let mut r = rng(330 + i as u64);
        let data = random_data(&g, &mut r, 1);
        grad_check(
            &format!("sum(softmax(x) * w) x {xd:?}"),
            &g,
            loss,
            &[x, w],
            &data,
            &Scalars::new(),
        );
    }
}

/// Broadcasting division feeding a matmul and a transpose:
/// `sum(transpose((a / b) · c) ⊙ r)` with a [2,3,7], b [3,1] (broadcast),
/// and the reverse `b / a`.
#[test]
fn broadcast_div_composition_gradients() {
    for (i, (sa, sb, k)) in [
        (&[2, 3, 7][..], &[3, 1][..], 4),
        (&[3, 5][..], &[5][..], 2),
        (&[1, 7][..], &[3, 1][..], 1),
        (&[2, 1, 3][..], &[4, 3][..], 5),
        (&[7, 1][..], &[1, 33][..], 3),
    ]
    .into_iter()
    .enumerate()
    {
        for flip in [false, true] {
            check_op(
                &format!(
                    "transpose(({}) · c) a {sa:?} b {sb:?}",
                    if flip { "b / a" } else { "a / b" }
                ),
                340 + i as u64,
                false,
                |g| {
                    let a = input(g, "a", sa);
                    let b = input(g, "b", sb);
                    let q = if flip { g.div(b, a) } else { g.div(a, b) }.unwrap();
                    let last = *g.shape(q).0.last().unwrap();
                    let c = g.param("c", [last, k]).unwrap();
                    let y = g.matmul(q, c).unwrap();
                    let r = g.shape(y).rank();
                    let perm: Vec<usize> = (0..r).rev().collect();
                    g.transpose(y, &perm).unwrap()
                },
                |g, d, r| {
                    for (_, v) in g.inputs().into_iter().take(2) {
                        d.insert(v, uniform_away(r, g.shape(v).numel(), 0.3));
                    }
                },
                &Scalars::new(),
            );
        }
    }
}

/// `vjp` seeded with an input `r` equals the gradient of `Σ y ⊙ r` (which
/// the finite-difference checks above cover), for a non-scalar output.
#[test]
fn vjp_equals_the_gradient_of_the_seeded_sum() {
    use gpurt::graph::autodiff::vjp;
    let build = |seeded: bool| {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[3, 4]);
        let w = g.param("w", [5, 4]).unwrap();
        let h = g.linear(x, w, None).unwrap();
        let y = g.act(Activation::Tanh, h).unwrap();
        let grads = if seeded {
            let r = input(&mut g, "r", &[3, 5]);
            vjp(&mut g, &[(y, r)], &[x, w]).unwrap()
        } else {
            let loss = weighted_sum(&mut g, y);
            gradients(&mut g, loss, &[x, w]).unwrap()
        };
        for (i, d) in grads.into_iter().enumerate() {
            g.set_output(&format!("d{i}"), d);
        }
        g
    };
    let (gv, gs) = (build(true), build(false));
    let data = random_data(&gv, &mut rng(21), 1);
    let sc = Scalars::new();
    let (a, b) = (run_cpu(&gv, &data, &sc), run_cpu(&gs, &data, &sc));
    for d in ["d0", "d1"] {
        assert_close(&format!("vjp {d}"), &a[d], &b[d], 1e-6);
    }
    // A seed of the wrong shape is refused.
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[3, 4]);
    let y = g.act(Activation::Tanh, x).unwrap();
    let r = input(&mut g, "r", &[4, 3]);
    let e = vjp(&mut g, &[(y, r)], &[x]).unwrap_err().to_string();
    assert!(e.contains("[3, 4]") && e.contains("[4, 3]"), "{e}");
}

/// `apply_gradients` updates a parameter with a gradient the host gives.
#[test]
fn apply_gradients_uses_the_given_gradient() {
    use gpurt::optim::{apply_gradients, OptimConfig, OptimizerKind};
    let mut g = Graph::new(true);
    let w = g.param("w", [5, 4]).unwrap();
    let gw = input(&mut g, "gw", &[5, 4]);
    let cfg = OptimConfig {
        momentum: 0.0,
        ..OptimConfig::new(OptimizerKind::Sgd)
    };
    apply_gradients(&mut g, &[(w, gw)], &cfg).unwrap();
    let data = random_data(&g, &mut rng(22), 1);
    let mut cpu = Cpu::new(&g);
    cpu.write(&g, &data);
    cpu.run(&scalars(&[("lr", 0.5)]));
    let got = cpu.persistent("w");
    let want: Vec<f64> = data[&w]
        .iter()
        .zip(&data[&gw])
        .map(|(p, d)| p - 0.5 * d)
        .collect();
    assert_close("sgd with a given gradient", &got, &want, 1e-6);
    // Not a parameter, or a gradient of another shape: refused.
    let bad = input(&mut g, "b", &[5, 3]);
    assert!(apply_gradients(&mut g, &[(gw, gw)], &cfg).is_err());
    assert!(apply_gradients(&mut g, &[(w, bad)], &cfg).is_err());
}

/// rsqrt over [0.2, 3): d(x^-1/2) from the output.
#[test]
fn rsqrt_gradients() {
    for (i, xd) in [&[1][..], &[3, 7][..], &[2, 3, 7][..]]
        .into_iter()
        .enumerate()
    {
        check_op(
            &format!("rsqrt x {xd:?}"),
            260 + i as u64,
            false,
            |g| {
                let x = input(g, "x", xd);
                g.act(Activation::Rsqrt, x).unwrap()
            },
            |g, d, r| {
                let x = g.inputs()[0].1;
                d.insert(x, uniform_in(r, g.shape(x).numel(), 0.2, 3.0));
            },
            &Scalars::new(),
        );
    }
}

/// layer_norm over the last axis, with and without weight and bias, odd
/// row lengths: gradients of x, weight and bias.
#[test]
fn layer_norm_gradients() {
    for (i, xd) in [&[3, 7][..], &[2, 3, 33][..], &[1, 2][..], &[5][..]]
        .into_iter()
        .enumerate()
    {
        for affine in [false, true] {
            check_op(
                &format!("layer_norm x {xd:?} affine={affine}"),
                270 + 2 * i as u64 + affine as u64,
                false,
                |g| {
                    let x = input(g, "x", xd);
                    let n = *xd.last().unwrap();
                    let w = affine.then(|| g.param("ln.weight", [n]).unwrap());
                    let b = affine.then(|| g.param("ln.bias", [n]).unwrap());
                    g.layer_norm(x, w, b, 1e-5).unwrap()
                },
                no_adjust,
                &Scalars::new(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Sequences.

/// Embedding (repeated ids: the scatter-add sums them), masked mean
/// pooling and fused attention with a padded and an empty sequence.
#[test]
fn sequence_gradients() {
    check_op(
        "embedding",
        300,
        true,
        |g| {
            let w = g.param("w", [6, 5]).unwrap();
            let ids = g.input("ids", [2, 7], DType::U32).unwrap();
            g.embedding(w, ids).unwrap()
        },
        |g, d, _| {
            let ids = g.inputs().into_iter().find(|(n, _)| n == "ids").unwrap().1;
            d.insert(
                ids,
                [0, 3, 3, 5, 1, 0, 3, 2, 2, 4, 7, 1, 0, 5]
                    .map(f64::from)
                    .to_vec(),
            );
        },
        &Scalars::new(),
    );
    check_op(
        "masked_mean_pool",
        301,
        true,
        |g| {
            let x = input(g, "x", &[3, 4, 5]);
            let len = g.input("lengths", [3], DType::U32).unwrap();
            g.masked_mean_pool(x, len).unwrap()
        },
        |g, d, _| {
            let len = g
                .inputs()
                .into_iter()
                .find(|(n, _)| n == "lengths")
                .unwrap()
                .1;
            d.insert(len, vec![4.0, 0.0, 2.0]);
        },
        &Scalars::new(),
    );
    for (i, (t, h, dh)) in [(1, 1, 2), (5, 2, 3), (9, 1, 4)].into_iter().enumerate() {
        check_op(
            &format!("attention t={t} h={h} d={dh}"),
            302 + i as u64,
            true,
            |g| {
                let qkv = input(g, "qkv", &[3, t, 3 * h * dh]);
                let len = g.input("lengths", [3], DType::U32).unwrap();
                g.attention(qkv, len, h).unwrap()
            },
            |g, d, _| {
                let len = g
                    .inputs()
                    .into_iter()
                    .find(|(n, _)| n == "lengths")
                    .unwrap()
                    .1;
                d.insert(len, vec![t as f64, 0.0, (t as f64 / 2.0).ceil()]);
            },
            &Scalars::new(),
        );
    }
}
