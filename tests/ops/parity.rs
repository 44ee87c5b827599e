//! Forward parity of every op: each graph is run on the CPU backend in f32
//! and compared with the independent float64 reference interpreter
//! (`crate::common::reference::eval_f64`, naive loops written from the maths).
//!
//! Metric: relative error ‖out − ref‖ / ‖ref‖ over the whole tensor, below
//! `TOL` = 1e-5. Only reductions over more than 10,000 elements use
//! `TOL_BIG_REDUCTION` = 1e-4 (f32 accumulation error grows with the count);
//! each such use says so. Integer outputs (max-pool argmax) must match
//! exactly. Every op family runs at least five shape sets including odd
//! sizes (1, 3, 7, 33).

use crate::common::reference::{conv_out, eval_f64};
use crate::common::*;
use gpurt::graph::ir::{Graph, ValueId};
use gpurt::ops::batchnorm::BatchNormParams;
use gpurt::ops::{Activation, BinaryKind, ConvParams, Op, PoolParams};
use gpurt::optim::{append_update, state_name, OptimConfig, OptimizerKind};
use gpurt::tensor::{DType, Shape};

const TOL: f64 = 1e-5;
const TOL_BIG_REDUCTION: f64 = 1e-4;
const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Tanh,
];

/// Run `g` in f32 on the CPU backend and in f64 on the reference; compare
/// every named output (u32 outputs exactly). The same is done for `g` after
/// the fusion passes ([`fused`]): its f32 run must match the reference of
/// the *unfused* graph, and its own f64 evaluation must equal the unfused
/// one (the rewrite preserves the maths). Returns the reference values.
fn check(what: &str, g: &Graph, data: &Data, sc: &Scalars, tol: f64) -> Vec<Vec<f64>> {
    let want = eval_f64(g, data, sc);
    assert!(!g.outputs.is_empty(), "{what}: graph has no outputs");
    let fg = fused(g);
    let fused_want = eval_f64(&fg, data, sc);
    for (graph, label) in [(g, "unfused"), (&fg, "fused")] {
        let got = run_cpu(graph, data, sc);
        for (name, v) in &g.outputs {
            let fv = graph.output(name).expect("fusion keeps outputs");
            let what = format!("{what} [{label}] output '{name}' {}", g.shape(*v));
            let want = &want[v.0 as usize];
            if g.dtype(*v) == DType::U32 {
                assert_eq!(&got[name], want, "{what}: integer output differs");
                assert_eq!(&fused_want[fv.0 as usize], want, "{what}: fused f64");
            } else {
                assert_close(&what, &got[name], want, tol);
                assert_close(
                    &format!("{what} (fused graph in f64)"),
                    &fused_want[fv.0 as usize],
                    want,
                    1e-12,
                );
            }
        }
    }
    want
}

/// Whether any node of `g` is `op`'s kind.
fn has_op(g: &Graph, pred: impl Fn(&Op) -> bool) -> bool {
    g.nodes
        .iter()
        .any(|n| (!n.outputs.is_empty() || !n.mutates.is_empty()) && pred(&n.op))
}

// ---------------------------------------------------------------------------
// Dense algebra.

/// `matmul_t` for every transpose combination, 2-D and batched, including
/// 1×1×1 and odd sizes, against a triple loop.
#[test]
fn matmul_all_transposes_and_batches() {
    let cases: [(&[usize], usize, usize, usize); 8] = [
        (&[], 1, 1, 1),
        (&[], 3, 7, 33),
        (&[], 33, 3, 7),
        (&[], 7, 33, 1),
        (&[], 1, 7, 3),
        (&[2], 3, 7, 5),
        (&[3, 1], 7, 1, 33),
        (&[1], 1, 33, 3),
    ];
    let mut r = rng(1);
    for (batch, m, k, n) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut g = Graph::new(false);
            let dims = |t: bool, rows: usize, cols: usize| {
                let mut d = batch.to_vec();
                d.extend(if t { [cols, rows] } else { [rows, cols] });
                d
            };
            let a = input(&mut g, "a", &dims(ta, m, k));
            let b = input(&mut g, "b", &dims(tb, k, n));
            let y = g.matmul_t(a, ta, b, tb).unwrap();
            let mut want_shape = batch.to_vec();
            want_shape.extend([m, n]);
            assert_eq!(g.shape(y), &Shape(want_shape), "matmul shape");
            g.set_output("y", y);
            let data = random_data(&g, &mut r, 1);
            let what = format!("matmul batch {batch:?} m={m} k={k} n={n} ta={ta} tb={tb}");
            check(&what, &g, &data, &Scalars::new(), TOL);
        }
    }
}

/// A batched `a` times a 2-D `b` (folded into one 2-D product by the
/// builder) equals the per-row product.
#[test]
fn matmul_folded_batch_times_matrix() {
    let mut r = rng(2);
    for (a_dims, n) in [
        (vec![2, 3, 7], 5),
        (vec![1, 1, 33], 3),
        (vec![3, 7, 1], 7),
        (vec![2, 2, 3, 3], 1),
        (vec![5, 33], 7),
    ] {
        for tb in [false, true] {
            let mut g = Graph::new(false);
            let k = *a_dims.last().unwrap();
            let a = input(&mut g, "a", &a_dims);
            let b = input(&mut g, "b", &if tb { [n, k] } else { [k, n] });
            let y = g.matmul_t(a, false, b, tb).unwrap();
            g.set_output("y", y);
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("matmul folded a {a_dims:?} · b [{k},{n}] tb={tb}"),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// Shape sets for linear: (input dims, out features).
const LINEAR_CASES: [(&[usize], usize); 7] = [
    (&[1, 1], 1),
    (&[3, 7], 33),
    (&[33, 3], 7),
    (&[2, 3, 7], 5),
    (&[7], 3),
    (&[5, 33], 1),
    (&[1, 2, 1, 9], 4),
];

/// `linear` with and without bias, for inputs of rank 1 to 4.
#[test]
fn linear_with_and_without_bias() {
    let mut r = rng(3);
    for (xd, out) in LINEAR_CASES {
        for bias in [true, false] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let w = g.param("w", [out, *xd.last().unwrap()]).unwrap();
            let b = bias.then(|| g.param("b", [out]).unwrap());
            let y = g.linear(x, w, b).unwrap();
            g.set_output("y", y);
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("linear x {xd:?} -> {out} bias={bias}"),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// `linear_act`: the fused activation epilogue equals activation(linear).
#[test]
fn linear_fused_activation_epilogue() {
    let mut r = rng(4);
    for (xd, out) in LINEAR_CASES {
        // GELU cannot be fused (its gradient needs the pre-activation).
        for a in ACTS.into_iter().filter(|a| a.backward_uses_output()) {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let w = g.param("w", [out, *xd.last().unwrap()]).unwrap();
            let b = g.param("b", [out]).unwrap();
            let y = g.linear_act(x, w, Some(b), Some(a)).unwrap();
            g.set_output("y", y);
            let mut data = random_data(&g, &mut r, 1);
            data.insert(x, uniform_in(&mut r, g.shape(x).numel(), -2.0, 2.0));
            check(
                &format!("linear_act {} x {xd:?} -> {out}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Convolution.

/// One convolution shape set.
#[derive(Clone, Copy, Debug)]
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    pad: (usize, usize),
    dilation: (usize, usize),
}

impl ConvCase {
    fn params(&self) -> ConvParams {
        ConvParams {
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
        }
    }
}

#[allow(clippy::too_many_arguments)]
const fn cc(
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    o: usize,
    (kh, kw): (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dilation: (usize, usize),
) -> ConvCase {
    ConvCase {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        stride,
        pad,
        dilation,
    }
}

/// Square and non-square kernels (3x1, 2x3, 1x3), stride 2 (and mixed
/// (2,1)), padding 0 and 1 (and mixed), dilation 2 (and mixed), c_out = 1,
/// n = 1, 1×1 kernels, odd spatial sizes, a kernel larger than the input.
const CONV_CASES: [ConvCase; 11] = [
    cc(1, 1, (5, 5), 1, (3, 3), (1, 1), (0, 0), (1, 1)),
    cc(2, 3, (7, 9), 4, (3, 3), (2, 2), (1, 1), (1, 1)),
    cc(1, 2, (8, 7), 3, (3, 1), (1, 1), (1, 0), (2, 2)),
    cc(3, 3, (7, 7), 1, (2, 3), (2, 1), (0, 0), (1, 2)),
    cc(2, 1, (33, 3), 2, (3, 1), (2, 2), (1, 1), (2, 2)),
    cc(1, 7, (5, 6), 5, (1, 1), (1, 1), (0, 0), (1, 1)),
    cc(2, 2, (9, 9), 3, (3, 3), (2, 2), (1, 1), (2, 2)),
    cc(1, 2, (4, 4), 2, (5, 5), (1, 1), (2, 2), (1, 1)),
    cc(2, 3, (1, 7), 2, (1, 3), (1, 2), (0, 1), (1, 1)),
    cc(1, 33, (3, 3), 1, (2, 2), (1, 1), (0, 0), (1, 1)),
    cc(2, 4, (11, 10), 3, (2, 3), (2, 2), (0, 1), (2, 1)),
];

fn build_conv(
    case: &ConvCase,
    bias: bool,
    act: Option<Activation>,
) -> gpurt::Result<(Graph, ValueId)> {
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[case.n, case.c, case.h, case.w]);
    let w = g.param("w", [case.o, case.c, case.kh, case.kw]).unwrap();
    let b = bias.then(|| g.param("b", [case.o]).unwrap());
    let y = g.conv2d_act(x, w, b, case.params(), act)?;
    Ok((g, y))
}

/// `conv2d` with and without bias on every shape set; the output shape is
/// PyTorch's `floor((h + 2p − d(k−1) − 1)/s) + 1`.
#[test]
fn conv2d_forward() {
    let mut r = rng(5);
    for case in CONV_CASES {
        for bias in [true, false] {
            let (mut g, y) = build_conv(&case, bias, None).unwrap();
            let oh = conv_out(case.h, case.kh, case.stride.0, case.pad.0, case.dilation.0);
            let ow = conv_out(case.w, case.kw, case.stride.1, case.pad.1, case.dilation.1);
            assert_eq!(
                g.shape(y),
                &Shape(vec![case.n, case.o, oh, ow]),
                "conv2d output shape for {case:?}"
            );
            g.set_output("y", y);
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("conv2d {case:?} bias={bias}"),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// `conv2d_act`: the fused activation epilogue equals activation(conv).
#[test]
fn conv2d_fused_activation_epilogue() {
    let mut r = rng(6);
    for case in CONV_CASES {
        // GELU cannot be fused (its gradient needs the pre-activation).
        for a in ACTS.into_iter().filter(|a| a.backward_uses_output()) {
            let (mut g, y) = build_conv(&case, true, Some(a)).unwrap();
            g.set_output("y", y);
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("conv2d_act {} {case:?}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// A convolution with an empty (zero-size) kernel is refused at build
/// time, as PyTorch refuses it, instead of overflowing the output-size
/// arithmetic.
#[test]
fn conv2d_empty_kernel_is_refused() {
    for (kh, kw) in [(0, 3), (3, 0), (0, 0)] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", &[1, 2, 5, 5]);
        let w = g.param("w", [3, 2, kh, kw]).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            g.conv2d(x, w, None, ConvParams::default()).is_err()
        }));
        assert!(
            matches!(r, Ok(true)),
            "conv2d x [1,2,5,5] weight [3,2,{kh},{kw}]: expected a shape error, got {}",
            match r {
                Ok(false) => "Ok (an output of nonsense size)",
                _ => "a panic",
            }
        );
    }
}

// ---------------------------------------------------------------------------
// Pooling.

const fn pp(kernel: (usize, usize), stride: (usize, usize), pad: (usize, usize)) -> PoolParams {
    PoolParams {
        kernel,
        stride,
        pad,
    }
}

/// (input dims, window): floor mode with leftover rows, overlapping windows,
/// padding, non-square windows and strides, 1×1 windows.
const POOL_CASES: [(&[usize], PoolParams); 8] = [
    (&[1, 1, 7, 7], pp((2, 2), (2, 2), (0, 0))),
    (&[2, 3, 7, 5], pp((3, 2), (2, 1), (1, 1))),
    (&[1, 2, 33, 3], pp((3, 3), (1, 1), (1, 1))),
    (&[3, 1, 4, 9], pp((2, 3), (2, 3), (1, 0))),
    (&[2, 7, 1, 33], pp((1, 3), (1, 2), (0, 1))),
    (&[1, 33, 3, 3], pp((1, 1), (1, 1), (0, 0))),
    (&[2, 2, 6, 6], pp((4, 4), (2, 2), (2, 2))),
    (&[1, 3, 8, 8], pp((2, 2), (1, 1), (1, 1))),
];

/// Max pooling values and the saved argmax (flat index in the plane, first
/// maximum wins, padding never wins) match exactly.
#[test]
fn max_pool2d_values_and_argmax() {
    let mut r = rng(7);
    for (xd, p) in POOL_CASES {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let (y, argmax) = g.max_pool2d_with_indices(x, p).unwrap();
        assert_eq!(g.dtype(argmax), DType::U32);
        g.set_output("y", y);
        g.set_output("argmax", argmax);
        let data = random_data(&g, &mut r, 1);
        // Max pooling selects inputs: the f32 result must be exact.
        check(
            &format!("max_pool2d x {xd:?} {p:?}"),
            &g,
            &data,
            &Scalars::new(),
            1e-300,
        );
    }
}

/// Max pooling ties: the first maximum in row-major window order wins.
#[test]
fn max_pool2d_ties_pick_first() {
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[1, 1, 3, 4]);
    let (y, argmax) = g
        .max_pool2d_with_indices(x, pp((2, 2), (1, 2), (0, 0)))
        .unwrap();
    g.set_output("y", y);
    g.set_output("argmax", argmax);
    let data = Data::from([(
        x,
        vec![
            0.5, 0.5, -1.0, 0.25, //
            0.5, 0.5, 0.25, 0.25, //
            -0.5, 0.75, 0.25, 0.25,
        ],
    )]);
    let want = check(
        "max_pool2d ties [1,1,3,4]",
        &g,
        &data,
        &Scalars::new(),
        1e-300,
    );
    assert_eq!(want[argmax.0 as usize], vec![0.0, 3.0, 9.0, 6.0]);
}

/// Average pooling, counting padded positions in the divisor (PyTorch's
/// `count_include_pad=True`).
#[test]
fn avg_pool2d_forward() {
    let mut r = rng(8);
    for (xd, p) in POOL_CASES {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let y = g.avg_pool2d(x, p).unwrap();
        g.set_output("y", y);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("avg_pool2d x {xd:?} {p:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// Global average pooling `[n,c,h,w] -> [n,c]`.
#[test]
fn global_avg_pool_forward() {
    let mut r = rng(9);
    for xd in [
        [1, 1, 1, 1],
        [2, 3, 7, 7],
        [1, 33, 3, 1],
        [3, 1, 33, 33],
        [2, 7, 1, 5],
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", &xd);
        let y = g.global_avg_pool(x).unwrap();
        g.set_output("y", y);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("global_avg_pool x {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Elementwise.

const ELEMENTWISE_SHAPES: [&[usize]; 6] =
    [&[1], &[3, 7], &[33], &[2, 3, 7, 7], &[1, 1, 33, 3], &[]];

/// relu, exact gelu, sigmoid and tanh over [-4, 4).
#[test]
fn activations_forward() {
    let mut r = rng(10);
    for xd in ELEMENTWISE_SHAPES {
        for a in ACTS {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let y = g.act(a, x).unwrap();
            g.set_output("y", y);
            let data = Data::from([(x, uniform_in(&mut r, g.shape(x).numel(), -4.0, 4.0))]);
            check(
                &format!("{} x {xd:?}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// rsqrt over (0.05, 4).
#[test]
fn rsqrt_forward() {
    let mut r = rng(12);
    for xd in ELEMENTWISE_SHAPES {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let y = g.act(Activation::Rsqrt, x).unwrap();
        g.set_output("y", y);
        let data = Data::from([(x, uniform_in(&mut r, g.shape(x).numel(), 0.05, 4.0))]);
        check(&format!("rsqrt x {xd:?}"), &g, &data, &Scalars::new(), TOL);
    }
}

/// layer_norm over the last axis against the f64 reference of its
/// definition (mean, biased variance, eps), with and without weight and
/// bias; odd row lengths, one row, rows of one element.
#[test]
fn layer_norm_forward() {
    let mut r = rng(13);
    for xd in [&[3, 7][..], &[2, 3, 33], &[1, 64], &[5, 1], &[129]] {
        for affine in [false, true] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let n = *xd.last().unwrap();
            let w = affine.then(|| g.param("ln.weight", [n]).unwrap());
            let b = affine.then(|| g.param("ln.bias", [n]).unwrap());
            let y = g.layer_norm(x, w, b, 1e-5).unwrap();
            g.set_output("y", y);
            let xs = uniform_in(&mut r, g.shape(x).numel(), -3.0, 5.0);
            let (ws, bs) = (
                uniform_in(&mut r, n, 0.5, 1.5),
                uniform_in(&mut r, n, -1.0, 1.0),
            );
            // The definition, row by row, in f64 (with the graph's f32
            // constants: eps, and 1/n where the composite multiplies by
            // it; the affine case is one kernel that divides by n).
            let inv_n = match affine {
                true => 1.0 / n as f64,
                false => (1.0 / n as f32) as f64,
            };
            let eps = 1e-5f32 as f64;
            let mut want = vec![0.0f64; xs.len()];
            for (row, out) in xs.chunks(n).zip(want.chunks_mut(n)) {
                let mean = row.iter().sum::<f64>() * inv_n;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() * inv_n;
                for (j, (o, v)) in out.iter_mut().zip(row).enumerate() {
                    *o = (v - mean) / (var + eps).sqrt();
                    if affine {
                        *o = *o * ws[j] + bs[j];
                    }
                }
            }
            let mut data = Data::from([(x, xs)]);
            if let (Some(w), Some(b)) = (w, b) {
                data.insert(w, ws);
                data.insert(b, bs);
            }
            let what = format!("layer_norm x {xd:?} affine={affine}");
            let got = check(&what, &g, &data, &Scalars::new(), TOL);
            let e = rel_err(&got[y.0 as usize], &want);
            assert!(
                e < 1e-12,
                "{what}: the graph's f64 value is not the definition ({e:.3e})"
            );
        }
    }
}

/// Shape pairs that broadcast, NumPy style, in both operand orders.
const BROADCAST_PAIRS: [(&[usize], &[usize]); 9] = [
    (&[3, 1, 7], &[7]),
    (&[1], &[33]),
    (&[2, 3, 7], &[2, 3, 7]),
    (&[3, 1], &[1, 7]),
    (&[], &[3, 3]),
    (&[7, 1, 3], &[1, 5, 1]),
    (&[2, 1, 3, 1], &[33, 1, 1]),
    (&[1, 1], &[1]),
    (&[4, 33], &[4, 1]),
];

/// add, sub, mul and div with broadcasting, e.g. [3,1,7] ∘ [7].
#[test]
fn binary_ops_broadcast() {
    let mut r = rng(11);
    for (sa, sb) in BROADCAST_PAIRS {
        for (sa, sb) in [(sa, sb), (sb, sa)] {
            for k in [
                BinaryKind::Add,
                BinaryKind::Sub,
                BinaryKind::Mul,
                BinaryKind::Div,
            ] {
                let mut g = Graph::new(false);
                let a = input(&mut g, "a", sa);
                let b = input(&mut g, "b", sb);
                let y = g.binary(k, a, b).unwrap();
                g.set_output("y", y);
                let mut data = random_data(&g, &mut r, 1);
                // Keep divisors away from zero.
                data.insert(b, uniform_away(&mut r, g.shape(b).numel(), 0.1));
                check(
                    &format!("{} {sa:?} ∘ {sb:?}", k.name()),
                    &g,
                    &data,
                    &Scalars::new(),
                    TOL,
                );
            }
        }
    }
}

/// Binary ops whose full-shape operand is a computed value that dies at the
/// op, so the planner may write the result over it (either operand side,
/// with the other operand broadcasting), inside longer chains.
#[test]
fn binary_ops_over_dying_operand() {
    let mut r = rng(24);
    let mut in_place = 0;
    // A same-shape pair long enough for the kernels to split it across
    // threads.
    let long: (&[usize], &[usize]) = (&[5, 7, 1000], &[5, 7, 1000]);
    for (sa, sb) in BROADCAST_PAIRS.into_iter().chain([long]) {
        for (sa, sb) in [(sa, sb), (sb, sa)] {
            for k in [
                BinaryKind::Add,
                BinaryKind::Sub,
                BinaryKind::Mul,
                BinaryKind::Div,
            ] {
                for computed_side in [0, 1] {
                    let mut g = Graph::new(false);
                    let a = input(&mut g, "a", sa);
                    let b = input(&mut g, "b", sb);
                    // The computed operand: tanh of an input (never zero for a
                    // divisor drawn away from zero).
                    let (a, b) = if computed_side == 0 {
                        (g.act(Activation::Tanh, a).unwrap(), b)
                    } else {
                        (a, g.act(Activation::Tanh, b).unwrap())
                    };
                    let y = g.binary(k, a, b).unwrap();
                    let y = g.scale(y, 0.5).unwrap();
                    g.set_output("y", y);
                    let module = gpurt::graph::plan::compile(&[("p", &g)]).unwrap();
                    in_place += module.programs[0]
                        .launches
                        .iter()
                        .filter(|l| l.inplace.is_some())
                        .count();
                    let mut data = random_data(&g, &mut r, 1);
                    let bv = g.inputs()[1].1;
                    data.insert(bv, uniform_away(&mut r, g.shape(bv).numel(), 0.2));
                    check(
                        &format!(
                            "{} {sa:?} ∘ {sb:?}, operand {computed_side} computed",
                            k.name()
                        ),
                        &g,
                        &data,
                        &Scalars::new(),
                        TOL,
                    );
                }
            }
        }
    }
    assert!(
        in_place > 0,
        "no launch ran in place: the test exercised nothing new"
    );
}

/// `scale` by several factors, and `fill` of several shapes.
#[test]
fn scale_and_fill() {
    let mut r = rng(12);
    for (xd, alpha) in [
        (&[1][..], 2.0f32),
        (&[3, 7][..], -0.5),
        (&[33][..], 1.0 / 3.0),
        (&[2, 3, 7][..], 7.25),
        (&[][..], -3.0),
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let y = g.scale(x, alpha).unwrap();
        let f = g.fill(xd.to_vec(), alpha).unwrap();
        g.set_output("y", y);
        g.set_output("fill", f);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("scale/fill x {xd:?} by {alpha}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// `sum` and `mean` over axis sets (keepdim both ways), plus explicit
/// `sum_to` and `broadcast_to`.
#[test]
fn reductions_and_broadcast_to() {
    let mut r = rng(13);
    let cases: [(&[usize], &[usize]); 8] = [
        (&[3, 7, 33], &[1]),
        (&[33], &[0]),
        (&[2, 3, 7, 7], &[0, 2, 3]),
        (&[1, 7, 1], &[0, 2]),
        (&[7, 33, 3], &[0, 2]),
        (&[3, 7], &[0, 1]),
        (&[5, 1, 3], &[2]),
        (&[2, 3, 7], &[]),
    ];
    for (xd, axes) in cases {
        for keepdim in [true, false] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let s = g.sum(x, axes, keepdim).unwrap();
            let m = g.mean(x, axes, keepdim).unwrap();
            let kept: Vec<usize> = xd
                .iter()
                .enumerate()
                .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
                .collect();
            // Broadcast the reduction back up (from the keep-dims shape, as
            // a reduced shape only broadcasts when it is a suffix).
            let s_kd = g.reshape(s, kept).unwrap();
            let b = g.broadcast_to(s_kd, &Shape(xd.to_vec())).unwrap();
            g.set_output("sum", s);
            g.set_output("mean", m);
            g.set_output("broadcast", b);
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("sum/mean x {xd:?} axes {axes:?} keepdim={keepdim}"),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
    // sum_to onto suffix shapes (the gradient of broadcasting).
    for (xd, to) in [
        (&[3, 1, 7][..], &[7][..]),
        (&[2, 3, 7][..], &[3, 1][..]),
        (&[33, 3][..], &[1][..]),
        (&[4, 5, 6][..], &[4, 1, 6][..]),
        (&[7, 2][..], &[][..]),
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let y = g.sum_to(x, &Shape(to.to_vec())).unwrap();
        g.set_output("y", y);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("sum_to {xd:?} -> {to:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// `mean` over a repeated axis: PyTorch refuses it ("dim appears multiple
/// times"); gpurt must either refuse it too or return the mean over the
/// distinct axes — never divide by the repeated count.
#[test]
fn mean_with_repeated_axis_is_refused_or_right() {
    let mut r = rng(27);
    for (xd, axes, distinct) in [
        (&[3, 7][..], &[1usize, 1][..], &[1usize][..]),
        (&[2, 3, 7][..], &[0, 2, 0][..], &[0, 2][..]),
        (&[33][..], &[0, 0][..], &[0][..]),
        (&[5, 1, 3][..], &[2, 2, 2][..], &[2][..]),
        (&[1, 7, 3][..], &[1, 2, 1][..], &[1, 2][..]),
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let Ok(m) = g.mean(x, axes, false) else {
            continue;
        };
        let want_v = g.mean(x, distinct, false).unwrap();
        g.set_output("mean", m);
        g.set_output("want", want_v);
        let data = random_data(&g, &mut r, 1);
        let got = run_cpu(&g, &data, &Scalars::new());
        assert_close(
            &format!("mean x {xd:?} over axes {axes:?} (= axes {distinct:?})"),
            &got["mean"],
            &got["want"],
            TOL,
        );
    }
}

/// Sums over 12,870 and 10,007 elements: tolerance `TOL_BIG_REDUCTION` (1e-4)
/// because the reduction covers more than 10,000 elements.
#[test]
fn large_reduction() {
    let mut r = rng(14);
    for (xd, axes) in [
        (&[33, 390][..], &[0usize, 1][..]),
        (&[2, 10007][..], &[1][..]),
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let s = g.sum(x, axes, false).unwrap();
        g.set_output("sum", s);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("sum x {xd:?} axes {axes:?} (>10k elements)"),
            &g,
            &data,
            &Scalars::new(),
            TOL_BIG_REDUCTION,
        );
    }
}

/// `transpose` under several permutations, and `reshape`/`flatten` views
/// feeding a copy (so the view's aliasing is exercised).
#[test]
fn transpose_reshape_flatten() {
    let mut r = rng(15);
    for (xd, perm) in [
        (&[3, 7][..], &[1, 0][..]),
        (&[2, 3, 7][..], &[2, 0, 1][..]),
        (&[1, 33, 3][..], &[0, 2, 1][..]),
        (&[2, 3, 1, 7][..], &[3, 1, 0, 2][..]),
        (&[7, 1][..], &[1, 0][..]),
        (&[2, 3, 4, 5][..], &[1, 3, 2, 0][..]),
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let t = g.transpose(x, perm).unwrap();
        let f = g.flatten(t).unwrap();
        let rs = g.reshape(f, [g.shape(f).numel()]).unwrap();
        let back = g.scale(rs, 1.0).unwrap();
        g.set_output("t", t);
        g.set_output("flat", back);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("transpose {xd:?} by {perm:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Softmax family, cross-entropy, dropout.

/// softmax and log-softmax over the last axis, with logits in [-8, 8).
#[test]
fn softmax_and_log_softmax() {
    let mut r = rng(16);
    for xd in [
        &[1, 1][..],
        &[3, 7][..],
        &[33][..],
        &[2, 3, 33][..],
        &[7, 1][..],
        &[1, 2, 3, 5][..],
    ] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let s = g.softmax(x).unwrap();
        let l = g.log_softmax(x).unwrap();
        g.set_output("softmax", s);
        g.set_output("log_softmax", l);
        let data = Data::from([(x, uniform_in(&mut r, g.shape(x).numel(), -8.0, 8.0))]);
        check(
            &format!("softmax/log_softmax x {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// Mean cross-entropy from logits and u32 labels.
#[test]
fn cross_entropy_forward() {
    let mut r = rng(17);
    for (b, c) in [(1, 1), (3, 7), (33, 3), (7, 33), (5, 10), (1, 2)] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "logits", &[b, c]);
        let y = g.input("labels", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, y).unwrap();
        g.set_output("loss", loss);
        let mut data = random_data(&g, &mut r, c as u32);
        data.insert(x, uniform_in(&mut r, b * c, -5.0, 5.0));
        check(
            &format!("cross_entropy logits [{b},{c}]"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// Label smoothing (PyTorch's `CrossEntropyLoss(label_smoothing=eps)`):
/// the CPU against the f64 reference, and the graph's f64 value against
/// the definition, row by row: `(1 − eps)·(lse − z_y) + eps·mean_k(lse − z_k)`.
#[test]
fn cross_entropy_label_smoothing() {
    let mut r = rng(18);
    for (b, c) in [(1, 2), (3, 7), (33, 3), (7, 33), (5, 10)] {
        for eps in [0.1f32, 0.35] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "logits", &[b, c]);
            let y = g.input("labels", [b], DType::U32).unwrap();
            let loss = g.cross_entropy_smoothed(x, y, eps).unwrap();
            g.set_output("loss", loss);
            let mut data = random_data(&g, &mut r, c as u32);
            data.insert(x, uniform_in(&mut r, b * c, -5.0, 5.0));
            let what = format!("smoothed cross_entropy [{b},{c}] eps {eps}");
            let got = check(&what, &g, &data, &Scalars::new(), TOL);
            let (z, labels) = (&data[&x], &data[&y]);
            let e = eps as f64;
            let want: f64 = (0..b)
                .map(|i| {
                    let row = &z[i * c..(i + 1) * c];
                    let m = row.iter().cloned().fold(f64::MIN, f64::max);
                    let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                    let nll = lse - row[labels[i] as usize];
                    let smooth = row.iter().map(|v| lse - v).sum::<f64>() / c as f64;
                    (1.0 - e) * nll + e * smooth
                })
                .sum::<f64>()
                / b as f64;
            let v = got[loss.0 as usize][0];
            assert!(((v - want) / want).abs() < 1e-6, "{what}: {v} vs {want}");
        }
    }
    let mut g = Graph::new(false);
    let x = input(&mut g, "logits", &[2, 3]);
    let y = g.input("labels", [2], DType::U32).unwrap();
    for bad in [1.0, -0.1, f32::NAN] {
        assert!(g.cross_entropy_smoothed(x, y, bad).is_err(), "{bad}");
    }
}

/// Gradient clipping by global norm (PyTorch's `clip_grad_norm_`): above
/// the limit the clipped gradients' joint norm equals it, below it they
/// pass unchanged; the CPU matches the f64 reference either way.
#[test]
fn clip_grad_norm_scales_to_the_limit() {
    let mut r = rng(19);
    let dims: [&[usize]; 3] = [&[3, 7], &[33], &[2, 1, 5]];
    for max_norm in [0.5f32, 1e3] {
        let mut g = Graph::new(false);
        let grads: Vec<ValueId> = dims
            .iter()
            .enumerate()
            .map(|(i, d)| input(&mut g, &format!("g{i}"), d))
            .collect();
        let clipped = gpurt::optim::clip_grad_norm(&mut g, &grads, max_norm).unwrap();
        for (i, c) in clipped.iter().enumerate() {
            g.set_output(&format!("c{i}"), *c);
        }
        let mut data = Data::new();
        for &v in &grads {
            data.insert(v, uniform_in(&mut r, g.shape(v).numel(), -1.0, 1.0));
        }
        let what = format!("clip_grad_norm to {max_norm}");
        let launches = gpurt::graph::plan::compile(&[("p", &g)]).unwrap().programs[0]
            .launches
            .len();
        assert_eq!(launches, 1, "{what}: one fused launch");
        let got = check(&what, &g, &data, &Scalars::new(), TOL);
        let norm = |vs: &[ValueId], vals: &dyn Fn(ValueId) -> Vec<f64>| {
            vs.iter()
                .flat_map(|&v| vals(v))
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
        };
        let raw = norm(&grads, &|v| data[&v].clone());
        let out = norm(&clipped, &|v| got[v.0 as usize].clone());
        let want = raw.min(max_norm as f64);
        assert!(
            ((out - want) / want).abs() < 1e-5,
            "{what}: norm {out}, want {want} (raw {raw})"
        );
    }
    // A NaN gradient makes every clipped gradient NaN (PyTorch's
    // behaviour), not an unclipped pass-through.
    let mut g = Graph::new(false);
    let a = input(&mut g, "a", &[3]);
    let b = input(&mut g, "b", &[2]);
    let clipped = gpurt::optim::clip_grad_norm(&mut g, &[a, b], 1.0).unwrap();
    g.set_output("ca", clipped[0]);
    g.set_output("cb", clipped[1]);
    let mut data = Data::new();
    data.insert(a, vec![0.5, f64::NAN, 0.25]);
    data.insert(b, vec![0.1, 0.2]);
    let got = run_cpu(&g, &data, &Scalars::new());
    assert!(
        got["ca"].iter().chain(&got["cb"]).all(|v| v.is_nan()),
        "NaN gradient: {got:?}"
    );
    // Clipping is an optimiser step: differentiating through it is refused
    // with a message, not a wrong gradient.
    let mut g = Graph::new(true);
    let a = input(&mut g, "a", &[3]);
    let c = gpurt::optim::clip_grad_norm(&mut g, &[a], 1.0).unwrap()[0];
    let loss = g.sum(c, &[0], false).unwrap();
    let e = gpurt::graph::autodiff::gradients(&mut g, loss, &[a]).expect_err("no gradient rule");
    assert!(e.to_string().contains("clip_grad_norm"), "{e}");
    let mut g = Graph::new(false);
    let x = input(&mut g, "g", &[2]);
    for bad in [0.0, -1.0, f32::INFINITY] {
        assert!(
            gpurt::optim::clip_grad_norm(&mut g, &[x], bad).is_err(),
            "{bad}"
        );
    }
}

/// An out-of-range label makes the loss NaN (never a silent wrong value).
#[test]
fn cross_entropy_bad_label_is_nan() {
    let mut g = Graph::new(false);
    let x = input(&mut g, "logits", &[2, 3]);
    let y = g.input("labels", [2], DType::U32).unwrap();
    let loss = g.cross_entropy(x, y).unwrap();
    g.set_output("loss", loss);
    let mut r = rng(18);
    let data = Data::from([(x, uniform(&mut r, 6)), (y, vec![1.0, 3.0])]);
    let got = run_cpu(&g, &data, &Scalars::new());
    assert!(
        got["loss"][0].is_nan(),
        "cross_entropy label 3 of 3 classes"
    );
}

/// Inverted dropout with the hash mask: kept values are scaled by
/// 1/(1−p), the rest are zero; the mask changes with the step scalar.
#[test]
fn dropout_forward() {
    let mut r = rng(19);
    for (xd, p, seed, step) in [
        (&[1][..], 0.5f32, 0u32, 1.0f64),
        (&[3, 7][..], 0.1, 1, 2.0),
        (&[33][..], 0.9, 7, 3.0),
        (&[2, 3, 7, 7][..], 0.5, 42, 10.0),
        (&[1, 33, 3][..], 0.25, 3, 12345.0),
    ] {
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", xd);
        let y = g.dropout(x, p, seed).unwrap();
        assert_ne!(y, x, "training dropout must add a node");
        g.set_output("y", y);
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("dropout x {xd:?} p={p} seed={seed} step={step}"),
            &g,
            &data,
            &scalars(&[("step", step)]),
            TOL,
        );
    }
}

/// Dropout is the identity in inference graphs and for p = 0, and the
/// kept fraction of a large tensor is close to 1 − p.
#[test]
fn dropout_identity_and_rate() {
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[3, 7]);
    assert_eq!(g.dropout(x, 0.5, 1).unwrap(), x, "inference dropout");
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[3, 7]);
    assert_eq!(g.dropout(x, 0.0, 1).unwrap(), x, "dropout p=0");
    for p in [0.1f32, 0.5, 0.9] {
        let n = 100_000u32;
        let kept = (0..n)
            .filter(|&i| gpurt::ops::dropout::keep(5, 3, i, p))
            .count() as f64
            / n as f64;
        assert!(
            (kept - (1.0 - p as f64)).abs() < 0.01,
            "dropout p={p}: kept fraction {kept}"
        );
    }
}

// ---------------------------------------------------------------------------
// Batch normalisation.

fn bn_graph(
    training: bool,
    xd: &[usize],
    eps: f32,
    momentum: f32,
) -> (Graph, BatchNormParams, ValueId) {
    let mut g = Graph::new(training);
    let x = input(&mut g, "x", xd);
    let c = xd[1];
    let p = bn_params(&mut g, c);
    let y = g.batch_norm2d(x, &p, eps, momentum).unwrap();
    (g, p, y)
}

const BN_CASES: [&[usize]; 6] = [
    &[2, 3, 7, 7],
    &[1, 1, 3, 3],
    &[3, 7, 1, 1],
    &[1, 33, 2, 3],
    &[4, 2, 5, 1],
    &[2, 1, 1, 33],
];

/// Training batch-norm: y, the batch mean and invstd outputs, and the
/// running statistics (momentum update, unbiased variance) as PyTorch.
#[test]
fn batch_norm_train_forward_and_running_stats() {
    let mut r = rng(20);
    for xd in BN_CASES {
        let (mut g, p, y) = bn_graph(true, xd, 1e-5, 0.1);
        let node = g.nodes.last().unwrap().clone();
        g.set_output("y", y);
        g.set_output("mean", node.outputs[1]);
        g.set_output("invstd", node.outputs[2]);
        let mut data = random_data(&g, &mut r, 1);
        // Inputs with a non-zero mean and a non-unit spread.
        data.insert(p.running_var, uniform_in(&mut r, xd[1], 0.5, 1.5));
        let x = g.inputs()[0].1;
        data.insert(x, uniform_in(&mut r, g.shape(x).numel(), -1.0, 3.0));
        let want = check(
            &format!("batch_norm2d train x {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );

        let mut cpu = Cpu::new(&g);
        cpu.write(&g, &data);
        cpu.run(&Scalars::new());
        for (name, v) in [
            ("bn.running_mean", p.running_mean),
            ("bn.running_var", p.running_var),
        ] {
            assert_close(
                &format!("batch_norm2d train x {xd:?} {name}"),
                &cpu.persistent(name),
                &want[v.0 as usize],
                TOL,
            );
        }
    }
}

/// Inference batch-norm normalises with the running statistics.
#[test]
fn batch_norm_inference_forward() {
    let mut r = rng(21);
    for xd in BN_CASES {
        let (mut g, p, y) = bn_graph(false, xd, 1e-3, 0.1);
        g.set_output("y", y);
        let mut data = random_data(&g, &mut r, 1);
        data.insert(p.running_var, uniform_in(&mut r, xd[1], 0.1, 2.0));
        check(
            &format!("batch_norm2d infer x {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Backward kernels.

/// Every backward kernel (conv grad input/weight/bias, pool backward,
/// activation backward, softmax backward, cross-entropy backward,
/// batch-norm backward, sum_to/broadcast_to, matmul with transposes) in
/// f32 against the same gradient graph evaluated by the f64 reference.
/// (Correctness of the gradient *rules* is proven by finite differences in
/// `tests/ops/gradients.rs`; this checks the kernels that implement them.)
#[test]
fn backward_kernels_match_reference() {
    type Build = fn(&mut Graph) -> ValueId;
    let cases: Vec<(&str, Build)> = vec![
        ("conv2d s2 p1 d1 + bias", |g| {
            let x = input(g, "x", &[2, 3, 7, 9]);
            let w = g.param("w", [4, 3, 3, 3]).unwrap();
            let b = g.param("b", [4]).unwrap();
            let p = ConvParams {
                stride: (2, 2),
                pad: (1, 1),
                dilation: (1, 1),
            };
            g.conv2d(x, w, Some(b), p).unwrap()
        }),
        ("conv2d 3x1 d2 p(1,0)", |g| {
            let x = input(g, "x", &[1, 2, 8, 7]);
            let w = g.param("w", [3, 2, 3, 1]).unwrap();
            let p = ConvParams {
                stride: (1, 1),
                pad: (1, 0),
                dilation: (2, 2),
            };
            g.conv2d(x, w, None, p).unwrap()
        }),
        ("conv2d_act tanh 2x3 s(2,1) d(1,2)", |g| {
            let x = input(g, "x", &[3, 3, 7, 7]);
            let w = g.param("w", [1, 3, 2, 3]).unwrap();
            let b = g.param("b", [1]).unwrap();
            let p = ConvParams {
                stride: (2, 1),
                pad: (0, 0),
                dilation: (1, 2),
            };
            g.conv2d_act(x, w, Some(b), p, Some(Activation::Tanh))
                .unwrap()
        }),
        ("max_pool2d 3x2 s(2,1) p1", |g| {
            let x = input(g, "x", &[2, 3, 7, 5]);
            g.max_pool2d(x, pp((3, 2), (2, 1), (1, 1))).unwrap()
        }),
        ("avg_pool2d 3x3 s1 p1", |g| {
            let x = input(g, "x", &[1, 2, 33, 3]);
            g.avg_pool2d(x, pp((3, 3), (1, 1), (1, 1))).unwrap()
        }),
        ("global_avg_pool", |g| {
            let x = input(g, "x", &[2, 7, 3, 5]);
            g.global_avg_pool(x).unwrap()
        }),
        ("relu+gelu+sigmoid+tanh chain", |g| {
            let x = input(g, "x", &[3, 33]);
            let a = g.act(Activation::Gelu, x).unwrap();
            let b = g.act(Activation::Sigmoid, a).unwrap();
            let c = g.act(Activation::Tanh, b).unwrap();
            let d = g.add(c, x).unwrap();
            g.act(Activation::Relu, d).unwrap()
        }),
        ("softmax + log_softmax", |g| {
            let x = input(g, "x", &[7, 33]);
            let s = g.softmax(x).unwrap();
            let l = g.log_softmax(x).unwrap();
            g.mul(s, l).unwrap()
        }),
        ("cross_entropy", |g| {
            let x = input(g, "x", &[7, 33]);
            let l = g.input("labels", [7], DType::U32).unwrap();
            g.cross_entropy(x, l).unwrap()
        }),
        ("matmul ta tb batched", |g| {
            let a = input(g, "a", &[2, 7, 3]);
            let b = input(g, "b", &[2, 5, 7]);
            g.matmul_t(a, true, b, true).unwrap()
        }),
        ("linear rank-3 + bias", |g| {
            let x = input(g, "x", &[2, 3, 7]);
            let w = g.param("w", [5, 7]).unwrap();
            let b = g.param("b", [5]).unwrap();
            g.linear(x, w, Some(b)).unwrap()
        }),
        ("broadcast div + transpose", |g| {
            let a = input(g, "a", &[3, 1, 7]);
            let b = input(g, "b", &[5, 1]);
            let d = g.div(a, b).unwrap();
            g.transpose(d, &[2, 0, 1]).unwrap()
        }),
        ("batch_norm2d train", |g| {
            let x = input(g, "x", &[2, 3, 5, 4]);
            let p = bn_params(g, 3);
            g.batch_norm2d(x, &p, 1e-5, 0.1).unwrap()
        }),
    ];
    let mut r = rng(22);
    for (name, build) in cases {
        let mut g = Graph::new(true);
        let y = build(&mut g);
        let wrt: Vec<ValueId> = g
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                v.dtype == DType::F32
                    && matches!(
                        v.role,
                        gpurt::graph::ir::Role::Input(_) | gpurt::graph::ir::Role::Param(_)
                    )
            })
            .map(|(i, _)| ValueId(i as u32))
            .collect();
        let ys = g.shape(y).clone();
        let rr = g.input("r", ys.clone(), DType::F32).unwrap();
        let prod = g.mul(y, rr).unwrap();
        let axes: Vec<usize> = (0..ys.rank()).collect();
        let loss = g.sum(prod, &axes, false).unwrap();
        let grads = gpurt::graph::autodiff::gradients(&mut g, loss, &wrt).unwrap();
        for (i, d) in grads.iter().enumerate() {
            g.set_output(&format!("grad{i}"), *d);
        }
        let mut data = random_data(&g, &mut r, 33);
        if name.starts_with("broadcast div") {
            let b = g.inputs()[1].1;
            data.insert(b, uniform_away(&mut r, 5, 0.2));
        }
        check(
            &format!("backward of {name}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Large tensors.

/// Tensors big enough to take the kernels' parallel paths (elementwise
/// and broadcasting ops from 32,768 elements, softmax rows from 16,384,
/// GEMM from 48³ multiply-adds, fused chains, batch-norm planes), forward
/// and — where marked — with their gradient graphs. No reduction here
/// covers more than 10,000 elements, so the tolerance is `TOL`.
#[test]
fn large_tensors_take_parallel_paths() {
    type Build = fn(&mut Graph) -> ValueId;
    let cases: Vec<(&str, bool, Build)> = vec![
        ("gelu+relu [3,129,101]", true, |g| {
            let x = input(g, "x", &[3, 129, 101]);
            let y = g.act(Activation::Gelu, x).unwrap();
            g.act(Activation::Relu, y).unwrap()
        }),
        ("sigmoid(tanh) [40000]", true, |g| {
            let x = input(g, "x", &[40000]);
            let y = g.act(Activation::Tanh, x).unwrap();
            g.act(Activation::Sigmoid, y).unwrap()
        }),
        ("a [64,33,17] - b [17], then / c [64,1,17]", true, |g| {
            let a = input(g, "a", &[64, 33, 17]);
            let b = input(g, "b", &[17]);
            let c = input(g, "c", &[64, 1, 17]);
            let d = g.sub(a, b).unwrap();
            let c2 = g.scale(c, 2.0).unwrap();
            let c3 = g.add(c2, c2).unwrap();
            // c3 = 4c, |c| < 1: keep the divisor away from zero by adding 5.
            let five = g.fill([1], 5.0).unwrap();
            let c4 = g.add(c3, five).unwrap();
            g.div(d, c4).unwrap()
        }),
        ("a [64,33,17] * b [64,33,17] scaled", true, |g| {
            let a = input(g, "a", &[64, 33, 17]);
            let b = input(g, "b", &[64, 33, 17]);
            let m = g.mul(a, b).unwrap();
            g.scale(m, -1.5).unwrap()
        }),
        ("softmax, log_softmax [600,33]", true, |g| {
            let x = input(g, "x", &[600, 33]);
            let s = g.softmax(x).unwrap();
            let l = g.log_softmax(x).unwrap();
            g.add(s, l).unwrap()
        }),
        ("matmul [96,80]ᵀ·[72,80]ᵀ", true, |g| {
            let a = input(g, "a", &[80, 96]);
            let b = input(g, "b", &[72, 80]);
            g.matmul_t(a, true, b, true).unwrap()
        }),
        ("linear [128,64] -> 96 + bias, then relu", true, |g| {
            let x = input(g, "x", &[128, 64]);
            let w = g.param("w", [96, 64]).unwrap();
            let b = g.param("b", [96]).unwrap();
            let y = g.linear(x, w, Some(b)).unwrap();
            g.relu(y).unwrap()
        }),
        ("conv2d [4,8,32,32] 16x3x3 p1 + tanh", true, |g| {
            let x = input(g, "x", &[4, 8, 32, 32]);
            let w = g.param("w", [16, 8, 3, 3]).unwrap();
            let b = g.param("b", [16]).unwrap();
            let p = ConvParams {
                stride: (1, 1),
                pad: (1, 1),
                dilation: (1, 1),
            };
            let y = g.conv2d(x, w, Some(b), p).unwrap();
            g.act(Activation::Tanh, y).unwrap()
        }),
        ("max_pool2d 3x3 s2 p1 [4,16,64,64]", true, |g| {
            let x = input(g, "x", &[4, 16, 64, 64]);
            g.max_pool2d(x, pp((3, 3), (2, 2), (1, 1))).unwrap()
        }),
        ("avg_pool2d 2x2 [4,16,64,64]", true, |g| {
            let x = input(g, "x", &[4, 16, 64, 64]);
            g.avg_pool2d(x, pp((2, 2), (2, 2), (0, 0))).unwrap()
        }),
        ("batch_norm2d train [8,16,32,32]", true, |g| {
            let x = input(g, "x", &[8, 16, 32, 32]);
            let p = bn_params(g, 16);
            g.batch_norm2d(x, &p, 1e-5, 0.1).unwrap()
        }),
        ("dropout p=0.3 [200,200]", true, |g| {
            let x = input(g, "x", &[200, 200]);
            g.dropout(x, 0.3, 9).unwrap()
        }),
        ("transpose [64,33,17] by [2,0,1]", true, |g| {
            let x = input(g, "x", &[64, 33, 17]);
            g.transpose(x, &[2, 0, 1]).unwrap()
        }),
        ("sum [200,200] over axis 0 (200 per output)", true, |g| {
            let x = input(g, "x", &[200, 200]);
            g.sum(x, &[0], true).unwrap()
        }),
    ];
    let mut r = rng(25);
    for (name, with_grad, build) in cases {
        let mut g = Graph::new(true);
        let y = build(&mut g);
        g.set_output("y", y);
        if with_grad {
            let wrt: Vec<ValueId> = g
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| {
                    matches!(
                        v.role,
                        gpurt::graph::ir::Role::Input(_) | gpurt::graph::ir::Role::Param(_)
                    )
                })
                .map(|(i, _)| ValueId(i as u32))
                .collect();
            let loss = weighted_sum(&mut g, y);
            add_gradients(&mut g, loss, &wrt);
        }
        let data = random_data(&g, &mut r, 1);
        // Only dropout reads a step.
        let sc = declared(&g, &[("step", 4.0)]);
        check(&format!("large {name}"), &g, &data, &sc, TOL);
    }
}

// ---------------------------------------------------------------------------
// Fused kernels (the graph after `gpurt::graph::fuse::fuse`).

/// Set `d loss / d v` for every `v` in `wrt` as outputs `grad0`, `grad1`, ...
fn add_gradients(g: &mut Graph, loss: ValueId, wrt: &[ValueId]) {
    let grads = gpurt::graph::autodiff::gradients(g, loss, wrt).unwrap();
    for (i, d) in grads.iter().enumerate() {
        g.set_output(&format!("grad{i}"), *d);
    }
}

/// Residual epilogue: conv2d (+ bias) + a tensor of its shape (+ relu or
/// nothing) runs as one kernel, equal to the f64 reference.
#[test]
fn fused_residual_epilogue_matches_reference() {
    let mut r = rng(41);
    for case in CONV_CASES {
        for (bias, act) in [(true, Some(Activation::Relu)), (false, None)] {
            let (mut g, y) = build_conv(&case, bias, None).unwrap();
            let ys = g.shape(y).0.clone();
            let skip = input(&mut g, "skip", &ys);
            let s = g.add(skip, y).unwrap();
            let z = match act {
                Some(a) => g.act(a, s).unwrap(),
                None => s,
            };
            g.set_output("y", z);
            let f = fused(&g);
            assert!(
                has_op(&f, |op| matches!(
                    op,
                    Op::Conv2d { residual: true, act: a, .. } if *a == act
                )),
                "conv2d + add {act:?} {case:?}: no fused residual epilogue"
            );
            let launches = f.nodes.iter().filter(|n| !n.outputs.is_empty()).count();
            assert_eq!(launches, 1, "{case:?}: one launch");
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("conv2d + residual + {act:?} {case:?}"),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// Epilogue fusion: conv2d / linear (+ bias) followed by a separate relu,
/// sigmoid or tanh node runs as one kernel with the activation fused.
#[test]
fn fused_epilogue_matches_reference() {
    let mut r = rng(40);
    for a in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
        for case in CONV_CASES {
            let (mut g, y) = build_conv(&case, true, None).unwrap();
            let z = g.act(a, y).unwrap();
            g.set_output("y", z);
            assert!(
                has_op(&fused(&g), |op| matches!(
                    op,
                    Op::Conv2d { act: Some(_), .. }
                )),
                "conv2d + {} {case:?}: no fused epilogue",
                a.name()
            );
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("conv2d + {} {case:?}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
        for (xd, out) in LINEAR_CASES {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let w = g.param("w", [out, *xd.last().unwrap()]).unwrap();
            let b = g.param("b", [out]).unwrap();
            let y = g.linear(x, w, Some(b)).unwrap();
            let z = g.act(a, y).unwrap();
            g.set_output("y", z);
            assert!(
                has_op(&fused(&g), |op| matches!(
                    op,
                    Op::Linear { act: Some(_), .. }
                )),
                "linear + {} x {xd:?}: no fused epilogue",
                a.name()
            );
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("linear + {} x {xd:?} -> {out}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// Activation backward fused with the bias gradient of the layer below
/// (conv: per-channel sum of a 4-D dy; linear: column sums of a 2-D dy),
/// in the gradient graph of `layer → act`.
#[test]
fn fused_act_backward_bias_matches_reference() {
    let mut r = rng(41);
    for a in [Activation::Relu, Activation::Sigmoid, Activation::Tanh] {
        for case in CONV_CASES {
            let (mut g, y) = build_conv(&case, true, None).unwrap();
            let z = g.act(a, y).unwrap();
            let loss = weighted_sum(&mut g, z);
            let wrt: Vec<ValueId> = g.params().into_iter().map(|(_, v)| v).collect();
            add_gradients(&mut g, loss, &wrt);
            assert!(
                has_op(&fused(&g), |op| matches!(op, Op::ActBackwardBias { .. })),
                "conv2d + {} {case:?}: no fused act_backward_bias",
                a.name()
            );
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("backward of conv2d + {} {case:?}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
        for (xd, out) in [
            (&[1, 1][..], 1),
            (&[3, 7][..], 33),
            (&[33, 3][..], 7),
            (&[5, 33][..], 1),
            (&[7, 2][..], 3),
        ] {
            let mut g = Graph::new(false);
            let x = input(&mut g, "x", xd);
            let w = g.param("w", [out, xd[1]]).unwrap();
            let b = g.param("b", [out]).unwrap();
            let y = g.linear(x, w, Some(b)).unwrap();
            let z = g.act(a, y).unwrap();
            let loss = weighted_sum(&mut g, z);
            add_gradients(&mut g, loss, &[x, w, b]);
            assert!(
                has_op(&fused(&g), |op| matches!(op, Op::ActBackwardBias { .. })),
                "linear + {} x {xd:?}: no fused act_backward_bias",
                a.name()
            );
            let data = random_data(&g, &mut r, 1);
            check(
                &format!("backward of linear + {} x {xd:?} -> {out}", a.name()),
                &g,
                &data,
                &Scalars::new(),
                TOL,
            );
        }
    }
}

/// Elementwise chains (binary ops, activations, activation gradients,
/// scale; one-element operands broadcast) run as one stack-program kernel,
/// forward and in their gradient graphs.
#[test]
fn fused_elementwise_chain_matches_reference() {
    let mut r = rng(42);
    for xd in [
        &[3, 7][..],
        &[33][..],
        &[2, 3, 7, 7][..],
        &[1, 2][..],
        &[7, 1, 3][..],
    ] {
        let mut g = Graph::new(false);
        let a = input(&mut g, "a", xd);
        let b = input(&mut g, "b", xd);
        let c = input(&mut g, "c", xd);
        let s = input(&mut g, "s", &[1]);
        // y = (tanh(a·b + c) · 0.5 − sigmoid(c) / s) · gelu(a − b), relu'd
        let ab = g.mul(a, b).unwrap();
        let abc = g.add(ab, c).unwrap();
        let t = g.act(Activation::Tanh, abc).unwrap();
        let t = g.scale(t, 0.5).unwrap();
        let sg = g.act(Activation::Sigmoid, c).unwrap();
        let q = g.div(sg, s).unwrap();
        let d = g.sub(t, q).unwrap();
        let amb = g.sub(a, b).unwrap();
        let ge = g.act(Activation::Gelu, amb).unwrap();
        let y = g.mul(d, ge).unwrap();
        let y = g.act(Activation::Relu, y).unwrap();
        g.set_output("y", y);
        let loss = weighted_sum(&mut g, y);
        add_gradients(&mut g, loss, &[a, b, c]);
        assert!(
            has_op(&fused(&g), |op| matches!(op, Op::Elementwise(_))),
            "elementwise chain x {xd:?}: nothing fused"
        );
        let mut data = random_data(&g, &mut r, 1);
        data.insert(s, vec![0.75]);
        check(
            &format!("elementwise chain and its gradient x {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// The constant loss-gradient seed folded into cross-entropy backward.
#[test]
fn fused_cross_entropy_backward_matches_reference() {
    let mut r = rng(43);
    for (b, c) in [(1, 1), (3, 7), (33, 3), (7, 33), (5, 10)] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "logits", &[b, c]);
        let l = g.input("labels", [b], DType::U32).unwrap();
        let loss = g.cross_entropy(x, l).unwrap();
        add_gradients(&mut g, loss, &[x]);
        assert!(
            has_op(&fused(&g), |op| matches!(
                op,
                Op::CrossEntropyBackward { dloss: Some(_) }
            )),
            "cross_entropy [{b},{c}]: loss seed not folded"
        );
        let mut data = random_data(&g, &mut r, c as u32);
        data.insert(x, uniform_in(&mut r, b * c, -5.0, 5.0));
        check(
            &format!("cross_entropy backward (constant seed) [{b},{c}]"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

// ---------------------------------------------------------------------------
// Optimiser updates.

/// A two-layer MLP (tanh hidden layer) with a cross-entropy loss and the
/// optimiser's update nodes appended.
fn optim_graph(cfg: &OptimConfig) -> Graph {
    let mut g = Graph::new(true);
    let x = input(&mut g, "x", &[5, 7]);
    let y = g.input("y", [5], DType::U32).unwrap();
    let w1 = g.param("fc1.weight", [4, 7]).unwrap();
    let b1 = g.param("fc1.bias", [4]).unwrap();
    let w2 = g.param("fc2.weight", [3, 4]).unwrap();
    let b2 = g.param("fc2.bias", [3]).unwrap();
    let h = g
        .linear_act(x, w1, Some(b1), Some(Activation::Tanh))
        .unwrap();
    let logits = g.linear(h, w2, Some(b2)).unwrap();
    let loss = g.cross_entropy(logits, y).unwrap();
    append_update(&mut g, loss, cfg).unwrap();
    g.set_output("loss", loss);
    g
}

/// Adam, AdamW and SGD on a parameter of 76,800 elements (the update
/// kernels' parallel path), one step.
#[test]
fn optimiser_update_large_parameter() {
    for kind in [
        OptimizerKind::Sgd,
        OptimizerKind::Adam,
        OptimizerKind::AdamW,
    ] {
        let cfg = OptimConfig::new(kind);
        let mut g = Graph::new(true);
        let x = input(&mut g, "x", &[4, 300]);
        let w = g.param("w", [256, 300]).unwrap();
        let y = g.linear(x, w, None).unwrap();
        let loss = weighted_sum(&mut g, y);
        append_update(&mut g, loss, &cfg).unwrap();
        let mut r = rng(26);
        let mut data = random_data(&g, &mut r, 1);
        for (sname, v) in g.persistent() {
            if sname.starts_with("optim.exp_avg_sq.") {
                data.insert(v, uniform_in(&mut r, g.shape(v).numel(), 0.01, 1.0));
            }
        }
        let sc = declared(&g, &[("lr", 0.1), ("step", 2.0)]);
        let want = eval_f64(&g, &data, &sc);
        for graph in [&g, &fused(&g)] {
            let mut cpu = Cpu::new(graph);
            cpu.write(&g, &data);
            cpu.run(&sc);
            for (name, v) in g.persistent() {
                // The parameter's change (its value is dominated by p₀), and
                // the optimiser state's value (its change by β·state is
                // ill-conditioned in f32).
                let is_param = name == "w";
                let p0 = &data[&v];
                let view = |p: &[f64]| -> Vec<f64> {
                    if is_param {
                        p.iter().zip(p0).map(|(a, b)| a - b).collect()
                    } else {
                        p.to_vec()
                    }
                };
                assert_close(
                    &format!(
                        "{kind:?} [256,300]: {} {name}",
                        if is_param { "change of" } else { "value of" }
                    ),
                    &view(&cpu.persistent(&name)),
                    &view(&want[v.0 as usize]),
                    TOL,
                );
            }
        }
    }
}

/// Three optimiser steps (step scalar 1, 2, 3) on the CPU backend against
/// the f64 reference (PyTorch's SGD/Adam/AdamW formulas), comparing after
/// every step the parameter changes (p − p₀) and every optimiser state
/// tensor. Each step's reference starts from the reference's own previous
/// state, so the two trajectories are independent.
#[test]
fn optimiser_updates_three_steps() {
    let base = |kind| OptimConfig::new(kind);
    let configs = [
        (
            "sgd plain",
            OptimConfig {
                momentum: 0.0,
                ..base(OptimizerKind::Sgd)
            },
        ),
        ("sgd momentum 0.9", base(OptimizerKind::Sgd)),
        (
            "sgd nesterov wd 0.01",
            OptimConfig {
                nesterov: true,
                weight_decay: 0.01,
                ..base(OptimizerKind::Sgd)
            },
        ),
        (
            "sgd momentum 0.5 wd 0.1",
            OptimConfig {
                momentum: 0.5,
                weight_decay: 0.1,
                ..base(OptimizerKind::Sgd)
            },
        ),
        ("adam", base(OptimizerKind::Adam)),
        (
            "adam l2 0.05 betas (0.8, 0.99)",
            OptimConfig {
                weight_decay: 0.05,
                beta1: 0.8,
                beta2: 0.99,
                ..base(OptimizerKind::Adam)
            },
        ),
        ("adamw wd 0.01", base(OptimizerKind::AdamW)),
        (
            "adamw wd 0.1 eps 1e-3",
            OptimConfig {
                weight_decay: 0.1,
                eps: 1e-3,
                ..base(OptimizerKind::AdamW)
            },
        ),
    ];
    for (name, cfg) in configs {
        let g = optim_graph(&cfg);
        let mut r = rng(23);
        let mut data = random_data(&g, &mut r, 3);
        // Non-zero optimiser state (so it is really read), with Adam's
        // second moments positive.
        for (sname, v) in g.persistent() {
            if sname.starts_with("optim.exp_avg_sq.") {
                data.insert(v, uniform_in(&mut r, g.shape(v).numel(), 0.01, 1.0));
            }
        }
        let params = g.params();
        let initial: Vec<Vec<f64>> = params.iter().map(|(_, v)| data[v].clone()).collect();
        // The unfused graph (one update launch per tensor) and the fused one
        // (one multi-tensor launch), each in its own session.
        let fg = fused(&g);
        assert!(
            fg.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::SgdUpdate(_) | Op::AdamUpdate(_)))
                .filter(|n| !n.mutates.is_empty())
                .count()
                == 1,
            "{name}: the fused graph should hold one multi-tensor update"
        );
        let mut runs = [("unfused", Cpu::new(&g)), ("fused", Cpu::new(&fg))];
        for (_, cpu) in runs.iter_mut() {
            cpu.write(&g, &data);
        }
        for step in 1..=3 {
            let sc = declared(&g, &[("lr", 0.1), ("step", step as f64)]);
            let want = eval_f64(&g, &data, &sc);
            for (_, v) in g.persistent() {
                data.insert(v, want[v.0 as usize].clone());
            }
            for (label, cpu) in runs.iter_mut() {
                cpu.write_inputs(&g, &data);
                cpu.run(&sc);
                for ((pname, v), p0) in params.iter().zip(&initial) {
                    let delta =
                        |p: &[f64]| -> Vec<f64> { p.iter().zip(p0).map(|(a, b)| a - b).collect() };
                    assert_close(
                        &format!("{name} [{label}] step {step}: change of {pname}"),
                        &delta(&cpu.persistent(pname)),
                        &delta(&want[v.0 as usize]),
                        TOL,
                    );
                    for s in cfg.state_names() {
                        let sname = state_name(pname, s);
                        let sv = g
                            .persistent()
                            .into_iter()
                            .find(|(n, _)| *n == sname)
                            .unwrap()
                            .1;
                        assert_close(
                            &format!("{name} [{label}] step {step}: {sname}"),
                            &cpu.persistent(&sname),
                            &want[sv.0 as usize],
                            TOL,
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sequences: embeddings, masked pooling, attention.

/// Embedding rows (ids past the vocabulary read zeros), masked mean
/// pooling (lengths 0..=T+2, clamped) and fused attention with padding,
/// against the f64 reference.
#[test]
fn sequence_ops_forward() {
    let mut r = rng(31);
    for (vocab, dim, ids) in [(1, 1, vec![1]), (11, 7, vec![3, 5]), (50, 33, vec![4, 9])] {
        let mut g = Graph::new(false);
        let w = g.param("w", [vocab, dim]).unwrap();
        let i = g.input("ids", ids.clone(), DType::U32).unwrap();
        let y = g.embedding(w, i).unwrap();
        g.set_output("y", y);
        let data = random_data(&g, &mut r, vocab as u32 + 2);
        check(
            &format!("embedding [{vocab}, {dim}] ids {ids:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
    for (b, t, d) in [(1, 1, 1), (4, 7, 5), (3, 1, 33), (2, 9, 300), (5, 3, 7)] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", &[b, t, d]);
        let len = g.input("lengths", [b], DType::U32).unwrap();
        let y = g.masked_mean_pool(x, len).unwrap();
        g.set_output("y", y);
        let data = random_data(&g, &mut r, t as u32 + 3);
        check(
            &format!("masked_mean_pool [{b}, {t}, {d}]"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
    for (b, t, h, d) in [
        (1, 1, 1, 1),
        (2, 7, 2, 16),
        (3, 33, 1, 8),
        (2, 64, 4, 32),
        (1, 257, 1, 64),
    ] {
        let mut g = Graph::new(false);
        let qkv = input(&mut g, "qkv", &[b, t, 3 * h * d]);
        let len = g.input("lengths", [b], DType::U32).unwrap();
        let y = g.attention(qkv, len, h).unwrap();
        g.set_output("y", y);
        let mut data = random_data(&g, &mut r, 1);
        // Lengths: full, empty, then ragged.
        data.insert(
            len,
            (0..b).map(|i| [t, 0, t / 2 + 1][i % 3] as f64).collect(),
        );
        check(
            &format!("attention b={b} t={t} h={h} d={d}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}

/// Fused attention against matmul, mask, softmax, matmul on the CPU
/// backend, forward and gradient, for T in 1, 7, 64, 257 and head sizes
/// 16, 32, 64, with a fully padded sequence in every batch.
#[test]
fn fused_attention_matches_the_composition() {
    let cpu = gpurt::backend::cpu::CpuBackend::new();
    crate::common::attention::check_backend(&|m| gpurt::backend::Backend::compile(&cpu, m), 1e-4);
}

/// `layer_norm(x + r)` with the sum read elsewhere too: the fused kernel
/// (residual_layer_norm) against the f64 reference of the unfused graph.
#[test]
fn residual_layer_norm_fuses_and_matches() {
    let mut r = rng(17);
    for xd in [&[5, 1][..], &[3, 7], &[2, 9, 130]] {
        let mut g = Graph::new(false);
        let x = input(&mut g, "x", xd);
        let res = input(&mut g, "res", xd);
        let n = *xd.last().unwrap();
        let w = g.param("ln.weight", [n]).unwrap();
        let b = g.param("ln.bias", [n]).unwrap();
        let s = g.add(x, res).unwrap();
        let y = g.layer_norm(s, Some(w), Some(b), 1e-5).unwrap();
        g.set_output("y", y);
        g.set_output("s", s);
        let fg = fused(&g);
        assert!(
            has_op(&fg, |op| matches!(op, Op::LayerNorm { residual: true, .. })),
            "{xd:?}: not fused"
        );
        let data = random_data(&g, &mut r, 1);
        check(
            &format!("residual layer_norm {xd:?}"),
            &g,
            &data,
            &Scalars::new(),
            TOL,
        );
    }
}
