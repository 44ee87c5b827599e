//! An independent float64 interpreter for [`gpurt::graph::Graph`].
//!
//! Every [`Op`] is implemented here again, from the maths and PyTorch's
//! documented semantics, with plain nested loops in f64. Nothing in this file
//! calls a gpurt kernel: the only things taken from the library are the graph
//! itself (nodes, value shapes, scalar names) and the dropout keep-mask hash
//! [`gpurt::ops::dropout::keep`], which *is* the specification of dropout's
//! mask. Output shapes are read from the graph (its shape rules are checked
//! separately by the tests that build it).
//!
//! Conventions:
//! * one `Vec<f64>` per graph value, row-major, indexed by `ValueId`;
//! * u32 values (labels, max-pool argmax) are stored as f64 integers;
//! * values an op mutates (parameters under an optimiser update, batch-norm
//!   running statistics) are updated in the returned table after the node
//!   runs, exactly as the runtime updates them in place; the caller's input
//!   map is never modified.

use gpurt::graph::ir::{Graph, Role, ValueId};
use gpurt::ops::adam::AdamConfig;
use gpurt::ops::elementwise::EwInstr;
use gpurt::ops::sgd::SgdConfig;
use gpurt::ops::{Activation, BinaryKind, ConvParams, Op, PoolParams};
use gpurt::tensor::Shape;
use std::collections::HashMap;

/// Evaluate every node of `g` in order, in float64.
///
/// `inputs` must hold data for every `Input` and `Param` value; `State`
/// values missing from it start at zero (a fresh optimiser). `scalars` maps
/// runtime scalar names (`lr`, `step`) to their values.
pub fn eval_f64(
    g: &Graph,
    inputs: &HashMap<ValueId, Vec<f64>>,
    scalars: &HashMap<String, f64>,
) -> Vec<Vec<f64>> {
    let mut vals: Vec<Vec<f64>> = vec![Vec::new(); g.values.len()];
    for (i, v) in g.values.iter().enumerate() {
        let id = ValueId(i as u32);
        let n = v.shape.numel();
        let data = match &v.role {
            Role::Input(name) | Role::Param(name) => inputs
                .get(&id)
                .unwrap_or_else(|| panic!("eval_f64: no data for '{name}'"))
                .clone(),
            Role::State(_) => inputs.get(&id).cloned().unwrap_or_else(|| vec![0.0; n]),
            Role::Computed => continue,
        };
        assert_eq!(
            data.len(),
            n,
            "eval_f64: value {i} has shape {} but {} values were given",
            v.shape,
            data.len()
        );
        vals[i] = data;
    }

    let scalar = |id: gpurt::graph::ir::ScalarId| -> f64 {
        let name = &g.scalars[id.0 as usize];
        *scalars
            .get(name)
            .unwrap_or_else(|| panic!("eval_f64: scalar '{name}' not set"))
    };

    for node in &g.nodes {
        // A node a rewrite pass has cleared (no outputs, no effects).
        if node.outputs.is_empty() && node.mutates.is_empty() {
            continue;
        }
        let x: Vec<&[f64]> = node
            .inputs
            .iter()
            .map(|v| &vals[v.0 as usize][..])
            .collect();
        let xs: Vec<&Shape> = node.inputs.iter().map(|v| g.shape(*v)).collect();
        let ys: Vec<&Shape> = node.outputs.iter().map(|v| g.shape(*v)).collect();
        let mutated: Vec<Vec<f64>> = node
            .mutates
            .iter()
            .map(|v| vals[v.0 as usize].clone())
            .collect();

        let (outs, mutated): (Vec<Vec<f64>>, Vec<Vec<f64>>) = match &node.op {
            Op::MatMul { ta, tb } => (vec![matmul(xs[0], *ta, xs[1], *tb, x[0], x[1])], mutated),
            Op::Linear { bias, act } => {
                let b = if *bias { Some(x[2]) } else { None };
                let mut y = linear(xs[0], xs[1], x[0], x[1], b);
                if let Some(a) = act {
                    y.iter_mut().for_each(|v| *v = act_forward(*a, *v));
                }
                (vec![y], mutated)
            }
            Op::Conv2d {
                p,
                act,
                residual,
                pool,
            } => {
                let bias = (x.len() == 3 + *residual as usize).then(|| x[2]);
                let mut y = conv2d(xs[0], xs[1], p, x[0], x[1], bias);
                if *residual {
                    y.iter_mut().zip(x[x.len() - 1]).for_each(|(v, r)| *v += r);
                }
                if let Some(a) = act {
                    y.iter_mut().for_each(|v| *v = act_forward(*a, *v));
                }
                if *pool {
                    let g = p.geom(xs[0], xs[1]).expect("conv geometry");
                    let (oh, ow) = g.out_hw().expect("conv output");
                    let full = Shape(vec![g.n, g.c_out, oh, ow]);
                    y = max_pool2d(&full, &PoolParams::square(2), &y).0;
                }
                (vec![y], mutated)
            }
            Op::Conv2dGradInput { p } => (
                vec![conv2d_grad_input(ys[0], xs[1], p, x[0], x[1])],
                mutated,
            ),
            Op::Conv2dGradWeight { p } => (
                vec![conv2d_grad_weight(xs[0], ys[0], p, x[0], x[1])],
                mutated,
            ),
            Op::Conv2dGradBias => (vec![conv2d_grad_bias(xs[0], x[0])], mutated),
            Op::MaxPool2d { p } => {
                let (y, idx) = max_pool2d(xs[0], p, x[0]);
                (vec![y, idx], mutated)
            }
            Op::MaxPool2dBackward { p } => {
                (vec![max_pool2d_backward(ys[0], p, x[0], x[1])], mutated)
            }
            Op::AvgPool2d { p } => (vec![avg_pool2d(xs[0], p, x[0])], mutated),
            Op::AvgPool2dBackward { p } => (vec![avg_pool2d_backward(ys[0], p, x[0])], mutated),
            Op::GlobalAvgPool => (vec![global_avg_pool(xs[0], x[0])], mutated),
            Op::GlobalAvgPoolBackward => (vec![global_avg_pool_backward(ys[0], x[0])], mutated),
            Op::MaskedMeanPool => (vec![masked_mean_pool(xs[0], x[0], x[1])], mutated),
            Op::MaskedMeanPoolBackward => {
                (vec![masked_mean_pool_backward(ys[0], x[0], x[1])], mutated)
            }
            Op::Embedding => (vec![embedding(xs[0], x[0], x[1])], mutated),
            Op::EmbeddingBackward { .. } => (vec![embedding_backward(ys[0], x[0], x[1])], mutated),
            Op::LayerNorm { eps, residual } => {
                let sum: Vec<f64> = match residual {
                    true => x[0].iter().zip(x[3]).map(|(a, b)| a + b).collect(),
                    false => x[0].to_vec(),
                };
                let (y, m, r) = layer_norm(xs[0], &sum, x[1], x[2], *eps as f64);
                let mut outs = vec![y, m, r];
                if *residual {
                    outs.push(sum);
                }
                (outs, mutated)
            }
            Op::LayerNormBackward => {
                let (dx, dw, db) = layer_norm_backward(xs[0], x[0], x[1], x[2], x[3], x[4]);
                (vec![dx, dw, db], mutated)
            }
            Op::Attention { heads } => {
                let (y, lse) = attention(xs[0], *heads, x[0], x[1]);
                (vec![y, lse], mutated)
            }
            Op::AttentionBackward { heads } => (
                vec![attention_backward(xs[0], *heads, x[0], x[1], x[4])],
                mutated,
            ),
            Op::Act(a) => (
                vec![x[0].iter().map(|&v| act_forward(*a, v)).collect()],
                mutated,
            ),
            Op::ActBackward(a) => (
                vec![x[0]
                    .iter()
                    .zip(x[1])
                    .map(|(&s, &dy)| act_backward(*a, s, dy))
                    .collect()],
                mutated,
            ),
            Op::Binary(k) => (vec![binary(*k, xs[0], x[0], xs[1], x[1], ys[0])], mutated),
            Op::Scale(a) => (vec![x[0].iter().map(|&v| v * *a as f64).collect()], mutated),
            Op::Fill(v) => (vec![vec![*v as f64; ys[0].numel()]], mutated),
            Op::SumTo => (vec![sum_to(xs[0], x[0], ys[0])], mutated),
            Op::BroadcastTo => (vec![broadcast_to(xs[0], x[0], ys[0])], mutated),
            Op::Reshape => (vec![x[0].to_vec()], mutated),
            Op::Transpose { perm } => (vec![transpose(xs[0], perm, x[0])], mutated),
            Op::ClipGradNorm { max_norm } => {
                let total: f64 = x.iter().flat_map(|t| t.iter()).map(|v| v * v).sum();
                let factor = (*max_norm as f64 / (total + 1e-12).sqrt()).min(1.0);
                let outs = x
                    .iter()
                    .map(|t| t.iter().map(|v| v * factor).collect())
                    .collect();
                (outs, mutated)
            }
            Op::Concat { axis } => (vec![concat(&xs, *axis, &x, ys[0])], mutated),
            Op::Store => (vec![], vec![x[0].to_vec()]),
            Op::Slice { axis, start } => (vec![slice(xs[0], *axis, *start, x[0], ys[0])], mutated),
            Op::Softmax => (vec![softmax(xs[0].last(), x[0], false)], mutated),
            Op::LogSoftmax => (vec![softmax(xs[0].last(), x[0], true)], mutated),
            Op::SoftmaxBackward => (
                vec![softmax_backward(xs[0].last(), x[0], x[1], false)],
                mutated,
            ),
            Op::LogSoftmaxBackward => (
                vec![softmax_backward(xs[0].last(), x[0], x[1], true)],
                mutated,
            ),
            Op::CrossEntropy => (vec![vec![cross_entropy(xs[0], x[0], x[1])]], mutated),
            Op::CrossEntropyBackward { dloss } => {
                let d = match dloss {
                    Some(c) => *c as f64,
                    None => x[2][0],
                };
                (vec![cross_entropy_backward(xs[0], x[0], x[1], d)], mutated)
            }
            Op::ActBackwardBias { act, axis } => {
                let dx: Vec<f64> = x[0]
                    .iter()
                    .zip(x[1])
                    .map(|(&s, &dy)| act_backward(*act, s, dy))
                    .collect();
                let db = sum_except_axis(xs[1], *axis, &dx);
                (vec![dx, db], mutated)
            }
            Op::Elementwise(prog) => (vec![elementwise(prog, &x, ys[0].numel())], mutated),
            Op::Dropout { p, seed, step } => (
                vec![dropout(*p, *seed, scalar(*step) as u32, x[0])],
                mutated,
            ),
            Op::BatchNorm2d {
                eps,
                momentum,
                training: true,
                act,
                residual,
            } => {
                let (mut y, mean, invstd, rm, rv) = batch_norm_train(
                    xs[0],
                    *eps as f64,
                    *momentum as f64,
                    x[0],
                    x[1],
                    x[2],
                    &mutated[0],
                    &mutated[1],
                );
                // The fused epilogue: act(bn(x) + residual).
                if *residual {
                    y.iter_mut().zip(x[3]).for_each(|(y, r)| *y += r);
                }
                if let Some(a) = act {
                    y.iter_mut().for_each(|y| *y = act_forward(*a, *y));
                }
                (vec![y, mean, invstd], vec![rm, rv])
            }
            Op::BatchNorm2d {
                eps,
                training: false,
                ..
            } => (
                vec![batch_norm_infer(
                    xs[0],
                    *eps as f64,
                    x[0],
                    x[1],
                    x[2],
                    x[3],
                    x[4],
                )],
                mutated,
            ),
            Op::BatchNorm2dBackward { act } => {
                // The fused activation's gradient first: act'(saved)·dy.
                let dy: Vec<f64> = match act {
                    Some(a) => x[5]
                        .iter()
                        .zip(x[4])
                        .map(|(&s, &d)| act_backward(*a, s, d))
                        .collect(),
                    None => x[4].to_vec(),
                };
                let (dx, dg, db) = batch_norm_backward(xs[0], x[0], x[1], x[2], x[3], &dy);
                (vec![dx, dg, db], mutated)
            }
            Op::SgdUpdate(c) => (vec![], sgd_update(c, scalar(c.lr), &x, mutated)),
            Op::AdamUpdate(c) => (
                vec![],
                adam_update(c, scalar(c.lr), scalar(c.step), &x, mutated),
            ),
        };

        assert_eq!(outs.len(), node.outputs.len(), "{:?}", node.op);
        for (v, data) in node.outputs.iter().zip(outs) {
            assert_eq!(
                data.len(),
                g.shape(*v).numel(),
                "eval_f64: {} produced {} values for shape {}",
                node.op.kernel_name(),
                data.len(),
                g.shape(*v)
            );
            vals[v.0 as usize] = data;
        }
        for (v, data) in node.mutates.iter().zip(mutated) {
            vals[v.0 as usize] = data;
        }
    }
    vals
}

// ---------------------------------------------------------------------------
// Index helpers.

/// The multi-index of flat position `flat` in a row-major tensor of `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for ax in (0..dims.len()).rev() {
        idx[ax] = flat % dims[ax];
        flat /= dims[ax];
    }
    idx
}

/// The flat position of multi-index `idx` in a row-major tensor of `dims`.
fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// NumPy broadcasting: the flat position, in a tensor of shape `small`, of the
/// element that broadcasts to multi-index `big_idx` of the larger shape.
/// Axes are aligned from the right; size-1 axes always read index 0.
fn broadcast_source(big_idx: &[usize], small: &[usize]) -> usize {
    let off = big_idx.len() - small.len();
    let idx: Vec<usize> = small
        .iter()
        .enumerate()
        .map(|(j, &d)| if d == 1 { 0 } else { big_idx[off + j] })
        .collect();
    ravel(&idx, small)
}

// ---------------------------------------------------------------------------
// Dense algebra.

/// `op(a) · op(b)` with equal leading batch dimensions. `a` is stored
/// `[.., m, k]` (or `[.., k, m]` when `ta`), `b` `[.., k, n]` (or `[.., n, k]`).
pub fn matmul(sa: &Shape, ta: bool, sb: &Shape, tb: bool, a: &[f64], b: &[f64]) -> Vec<f64> {
    let r = sa.rank();
    let batch: usize = sa.0[..r - 2].iter().product();
    let (m, k) = if ta {
        (sa.0[r - 1], sa.0[r - 2])
    } else {
        (sa.0[r - 2], sa.0[r - 1])
    };
    let n = if tb { sb.0[r - 2] } else { sb.0[r - 1] };
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let a = &a[bi * m * k..(bi + 1) * m * k];
        let b = &b[bi * k * n..(bi + 1) * k * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[bi * m * n + i * n + j] = s;
            }
        }
    }
    c
}

/// `y[.., o] = Σ_i x[.., i] · w[o, i] + b[o]` (PyTorch's `nn.Linear`).
pub fn linear(sx: &Shape, sw: &Shape, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let k = sx.last();
    let n = sw.0[0];
    let rows = sx.numel() / k;
    let mut y = vec![0.0; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..k {
                s += x[r * k + i] * w[o * k + i];
            }
            y[r * n + o] = s;
        }
    }
    y
}

// ---------------------------------------------------------------------------
// Convolution (NCHW input, OIHW weight), PyTorch's `nn.functional.conv2d`.

/// Output spatial size: `floor((h + 2p - d(k-1) - 1) / s) + 1`.
pub fn conv_out(h: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    (h + 2 * p - d * (k - 1) - 1) / s + 1
}

/// The input position read by output position `o` at kernel tap `t`, or
/// None when it falls in the zero padding.
fn conv_src(o: usize, t: usize, s: usize, p: usize, d: usize, size: usize) -> Option<usize> {
    let i = (o * s + t * d) as isize - p as isize;
    (i >= 0 && (i as usize) < size).then_some(i as usize)
}

/// Visit every (input index, weight index, output index) triple the
/// convolution sums over, skipping padding.
fn conv_visit(sx: &Shape, sw: &Shape, p: &ConvParams, mut f: impl FnMut(usize, usize, usize)) {
    let (n, c, h, w) = (sx.0[0], sx.0[1], sx.0[2], sx.0[3]);
    let (o, kh, kw) = (sw.0[0], sw.0[2], sw.0[3]);
    let oh = conv_out(h, kh, p.stride.0, p.pad.0, p.dilation.0);
    let ow = conv_out(w, kw, p.stride.1, p.pad.1, p.dilation.1);
    for ni in 0..n {
        for oc in 0..o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((ni * o + oc) * oh + oy) * ow + ox;
                    for ci in 0..c {
                        for ky in 0..kh {
                            let Some(iy) = conv_src(oy, ky, p.stride.0, p.pad.0, p.dilation.0, h)
                            else {
                                continue;
                            };
                            for kx in 0..kw {
                                let Some(ix) =
                                    conv_src(ox, kx, p.stride.1, p.pad.1, p.dilation.1, w)
                                else {
                                    continue;
                                };
                                let xi = ((ni * c + ci) * h + iy) * w + ix;
                                let wi = ((oc * c + ci) * kh + ky) * kw + kx;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[n,o,oy,ox] = b[o] + Σ_{c,ky,kx} x[n,c,oy·s−p+ky·d, ox·s−p+kx·d] · w[o,c,ky,kx]`.
pub fn conv2d(
    sx: &Shape,
    sw: &Shape,
    p: &ConvParams,
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
) -> Vec<f64> {
    let oh = conv_out(sx.0[2], sw.0[2], p.stride.0, p.pad.0, p.dilation.0);
    let ow = conv_out(sx.0[3], sw.0[3], p.stride.1, p.pad.1, p.dilation.1);
    let plane = oh * ow;
    let o = sw.0[0];
    let mut y: Vec<f64> = (0..sx.0[0] * o * plane)
        .map(|i| b.map_or(0.0, |b| b[(i / plane) % o]))
        .collect();
    conv_visit(sx, sw, p, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

/// ∂L/∂x of a convolution: every output gradient flows back to the inputs
/// that produced it, weighted by the tap.
pub fn conv2d_grad_input(
    sx: &Shape,
    sw: &Shape,
    p: &ConvParams,
    dy: &[f64],
    w: &[f64],
) -> Vec<f64> {
    let mut dx = vec![0.0; sx.numel()];
    conv_visit(sx, sw, p, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

/// ∂L/∂w of a convolution.
pub fn conv2d_grad_weight(
    sx: &Shape,
    sw: &Shape,
    p: &ConvParams,
    x: &[f64],
    dy: &[f64],
) -> Vec<f64> {
    let mut dw = vec![0.0; sw.numel()];
    conv_visit(sx, sw, p, |xi, wi, yi| dw[wi] += dy[yi] * x[xi]);
    dw
}

/// ∂L/∂b of a convolution: dy summed over batch and space.
pub fn conv2d_grad_bias(sdy: &Shape, dy: &[f64]) -> Vec<f64> {
    let (n, c, hw) = (sdy.0[0], sdy.0[1], sdy.0[2] * sdy.0[3]);
    let mut db = vec![0.0; c];
    for ni in 0..n {
        for (ci, d) in db.iter_mut().enumerate() {
            for j in 0..hw {
                *d += dy[(ni * c + ci) * hw + j];
            }
        }
    }
    db
}

// ---------------------------------------------------------------------------
// Pooling (floor mode; average counts padding, PyTorch's defaults).

fn pool_out(sx: &Shape, p: &PoolParams) -> (usize, usize) {
    (
        (sx.0[2] + 2 * p.pad.0 - p.kernel.0) / p.stride.0 + 1,
        (sx.0[3] + 2 * p.pad.1 - p.kernel.1) / p.stride.1 + 1,
    )
}

/// Visit every window: `f(plane, output index in plane, in-bounds input
/// positions of the window in row-major order)`.
fn pool_visit(sx: &Shape, p: &PoolParams, mut f: impl FnMut(usize, usize, &[usize])) {
    let (h, w) = (sx.0[2], sx.0[3]);
    let (oh, ow) = pool_out(sx, p);
    let mut win = Vec::new();
    for plane in 0..sx.0[0] * sx.0[1] {
        for oy in 0..oh {
            for ox in 0..ow {
                win.clear();
                for ky in 0..p.kernel.0 {
                    for kx in 0..p.kernel.1 {
                        let iy = (oy * p.stride.0 + ky) as isize - p.pad.0 as isize;
                        let ix = (ox * p.stride.1 + kx) as isize - p.pad.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            win.push(iy as usize * w + ix as usize);
                        }
                    }
                }
                f(plane, oy * ow + ox, &win);
            }
        }
    }
}

/// Max over each window (padding never wins) and the flat in-plane index of
/// the first maximum in row-major window order.
pub fn max_pool2d(sx: &Shape, p: &PoolParams, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = pool_out(sx, p);
    let hw = sx.0[2] * sx.0[3];
    let n = sx.0[0] * sx.0[1] * oh * ow;
    let (mut y, mut idx) = (vec![0.0; n], vec![0.0; n]);
    pool_visit(sx, p, |plane, o, win| {
        let mut best = win[0];
        for &i in &win[1..] {
            if x[plane * hw + i] > x[plane * hw + best] {
                best = i;
            }
        }
        y[plane * oh * ow + o] = x[plane * hw + best];
        idx[plane * oh * ow + o] = best as f64;
    });
    (y, idx)
}

/// Scatter dy to the saved argmax positions (accumulating overlaps).
pub fn max_pool2d_backward(sx: &Shape, p: &PoolParams, dy: &[f64], argmax: &[f64]) -> Vec<f64> {
    let (oh, ow) = pool_out(sx, p);
    let hw = sx.0[2] * sx.0[3];
    let mut dx = vec![0.0; sx.numel()];
    for (i, (&d, &a)) in dy.iter().zip(argmax).enumerate() {
        let plane = i / (oh * ow);
        dx[plane * hw + a as usize] += d;
    }
    dx
}

/// Window sum divided by the full window size (count_include_pad).
pub fn avg_pool2d(sx: &Shape, p: &PoolParams, x: &[f64]) -> Vec<f64> {
    let (oh, ow) = pool_out(sx, p);
    let hw = sx.0[2] * sx.0[3];
    let k = (p.kernel.0 * p.kernel.1) as f64;
    let mut y = vec![0.0; sx.0[0] * sx.0[1] * oh * ow];
    pool_visit(sx, p, |plane, o, win| {
        y[plane * oh * ow + o] = win.iter().map(|&i| x[plane * hw + i]).sum::<f64>() / k;
    });
    y
}

pub fn avg_pool2d_backward(sx: &Shape, p: &PoolParams, dy: &[f64]) -> Vec<f64> {
    let (oh, ow) = pool_out(sx, p);
    let hw = sx.0[2] * sx.0[3];
    let k = (p.kernel.0 * p.kernel.1) as f64;
    let mut dx = vec![0.0; sx.numel()];
    pool_visit(sx, p, |plane, o, win| {
        for &i in win {
            dx[plane * hw + i] += dy[plane * oh * ow + o] / k;
        }
    });
    dx
}

/// `[n,c,h,w] -> [n,c]`, the mean of each plane.
pub fn global_avg_pool(sx: &Shape, x: &[f64]) -> Vec<f64> {
    let hw = sx.0[2] * sx.0[3];
    (0..sx.0[0] * sx.0[1])
        .map(|pl| (0..hw).map(|j| x[pl * hw + j]).sum::<f64>() / hw as f64)
        .collect()
}

pub fn global_avg_pool_backward(sx: &Shape, dy: &[f64]) -> Vec<f64> {
    let hw = sx.0[2] * sx.0[3];
    (0..sx.numel()).map(|i| dy[i / hw] / hw as f64).collect()
}

// ---------------------------------------------------------------------------
// Elementwise.

/// PyTorch's activations; GELU is the exact (erf) form.
pub fn act_forward(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::Tanh => x.tanh(),
        Activation::Rsqrt => 1.0 / x.sqrt(),
    }
}

/// dx from the saved value and dy, per the op contract: the saved value is
/// the output y for relu, sigmoid, tanh and rsqrt, and the input x for gelu.
pub fn act_backward(a: Activation, saved: f64, dy: f64) -> f64 {
    match a {
        Activation::Relu => {
            if saved > 0.0 {
                dy
            } else {
                0.0
            }
        }
        Activation::Gelu => {
            let x = saved;
            let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            dy * (cdf + x * pdf)
        }
        Activation::Sigmoid => dy * saved * (1.0 - saved),
        Activation::Tanh => dy * (1.0 - saved * saved),
        Activation::Rsqrt => -0.5 * dy * saved * saved * saved,
    }
}

/// NumPy-broadcasting `a ∘ b` into `so`.
pub fn binary(k: BinaryKind, sa: &Shape, a: &[f64], sb: &Shape, b: &[f64], so: &Shape) -> Vec<f64> {
    (0..so.numel())
        .map(|i| {
            let idx = unravel(i, &so.0);
            let (u, v) = (
                a[broadcast_source(&idx, &sa.0)],
                b[broadcast_source(&idx, &sb.0)],
            );
            match k {
                BinaryKind::Add => u + v,
                BinaryKind::Sub => u - v,
                BinaryKind::Mul => u * v,
                BinaryKind::Div => u / v,
            }
        })
        .collect()
}

/// Sum `x` down to `sy` (the inverse of broadcasting `sy` up to `sx`).
pub fn sum_to(sx: &Shape, x: &[f64], sy: &Shape) -> Vec<f64> {
    let mut y = vec![0.0; sy.numel()];
    for (i, &v) in x.iter().enumerate() {
        y[broadcast_source(&unravel(i, &sx.0), &sy.0)] += v;
    }
    y
}

pub fn broadcast_to(sx: &Shape, x: &[f64], sy: &Shape) -> Vec<f64> {
    (0..sy.numel())
        .map(|i| x[broadcast_source(&unravel(i, &sy.0), &sx.0)])
        .collect()
}

/// Sum over every axis of `s` except `axis`: `[s[axis]]`.
pub fn sum_except_axis(s: &Shape, axis: usize, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; s.0[axis]];
    for (i, &v) in x.iter().enumerate() {
        out[unravel(i, &s.0)[axis]] += v;
    }
    out
}

/// A fused elementwise chain: a stack program run once per element.
/// `Input(i)` pushes input i's element (a one-element input broadcasts);
/// `Act` and `Scale` rewrite the top; `ActBackward` pops dy then the saved
/// value and pushes act'(saved)·dy; `Binary` pops b then a and pushes a∘b.
pub fn elementwise(prog: &[EwInstr], inputs: &[&[f64]], n: usize) -> Vec<f64> {
    (0..n)
        .map(|e| {
            let mut st: Vec<f64> = Vec::new();
            for ins in prog {
                match *ins {
                    EwInstr::Input(i) => {
                        let src = inputs[i as usize];
                        st.push(if src.len() == 1 { src[0] } else { src[e] });
                    }
                    EwInstr::Act(a) => {
                        let t = st.pop().unwrap();
                        st.push(act_forward(a, t));
                    }
                    EwInstr::Scale(alpha) => {
                        let t = st.pop().unwrap();
                        st.push(t * alpha as f64);
                    }
                    EwInstr::ActBackward(a) => {
                        let dy = st.pop().unwrap();
                        let saved = st.pop().unwrap();
                        st.push(act_backward(a, saved, dy));
                    }
                    EwInstr::Binary(k) => {
                        let b = st.pop().unwrap();
                        let a = st.pop().unwrap();
                        st.push(match k {
                            BinaryKind::Add => a + b,
                            BinaryKind::Sub => a - b,
                            BinaryKind::Mul => a * b,
                            BinaryKind::Div => a / b,
                        });
                    }
                }
            }
            assert_eq!(
                st.len(),
                1,
                "elementwise program leaves {} values",
                st.len()
            );
            st[0]
        })
        .collect()
}

/// `y` has dims `sx[perm[k]]`; `y[j] = x[i]` with `i[perm[k]] = j[k]`.
pub fn transpose(sx: &Shape, perm: &[usize], x: &[f64]) -> Vec<f64> {
    let dy: Vec<usize> = perm.iter().map(|&p| sx.0[p]).collect();
    (0..sx.numel())
        .map(|j| {
            let jdx = unravel(j, &dy);
            let mut idx = vec![0; perm.len()];
            for (k, &p) in perm.iter().enumerate() {
                idx[p] = jdx[k];
            }
            x[ravel(&idx, &sx.0)]
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Softmax family (last axis).

pub fn softmax(n: usize, x: &[f64], log: bool) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(n).zip(y.chunks_mut(n)) {
        let m = xr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = xr.iter().map(|v| (v - m).exp()).sum();
        for (yv, &xv) in yr.iter_mut().zip(xr) {
            *yv = if log {
                xv - m - z.ln()
            } else {
                (xv - m).exp() / z
            };
        }
    }
    y
}

/// Softmax: `dx_i = y_i (dy_i − Σ_j dy_j y_j)`. Log-softmax (y = log p):
/// `dx_i = dy_i − p_i Σ_j dy_j`.
pub fn softmax_backward(n: usize, y: &[f64], dy: &[f64], log: bool) -> Vec<f64> {
    let mut dx = vec![0.0; y.len()];
    for r in 0..y.len() / n {
        let yr = &y[r * n..(r + 1) * n];
        let dyr = &dy[r * n..(r + 1) * n];
        if log {
            let s: f64 = dyr.iter().sum();
            for j in 0..n {
                dx[r * n + j] = dyr[j] - yr[j].exp() * s;
            }
        } else {
            let s: f64 = (0..n).map(|j| dyr[j] * yr[j]).sum();
            for j in 0..n {
                dx[r * n + j] = yr[j] * (dyr[j] - s);
            }
        }
    }
    dx
}

/// Mean over the batch of `logsumexp(row) − row[label]`; an out-of-range
/// label gives NaN.
pub fn cross_entropy(sl: &Shape, logits: &[f64], labels: &[f64]) -> f64 {
    let (b, c) = (sl.0[0], sl.0[1]);
    let lp = softmax(c, logits, true);
    let mut total = 0.0;
    for i in 0..b {
        let t = labels[i] as usize;
        total += if t < c { -lp[i * c + t] } else { f64::NAN };
    }
    total / b as f64
}

/// `dlogits = dloss / B · (softmax(logits) − onehot(label))`.
pub fn cross_entropy_backward(sl: &Shape, logits: &[f64], labels: &[f64], dloss: f64) -> Vec<f64> {
    let (b, c) = (sl.0[0], sl.0[1]);
    let mut d = softmax(c, logits, false);
    for i in 0..b {
        let t = labels[i] as usize;
        for j in 0..c {
            d[i * c + j] -= if j == t { 1.0 } else { 0.0 };
            d[i * c + j] *= dloss / b as f64;
        }
        if t >= c {
            d[i * c..(i + 1) * c].fill(f64::NAN);
        }
    }
    d
}

/// Inverted dropout with the runtime's keep-mask hash (the mask is the spec).
pub fn dropout(p: f32, seed: u32, step: u32, x: &[f64]) -> Vec<f64> {
    let scale = 1.0 / (1.0 - p as f64);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if gpurt::ops::dropout::keep(seed, step, i as u32, p) {
                v * scale
            } else {
                0.0
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Batch normalisation over NCHW, PyTorch's `nn.BatchNorm2d`.

/// Per-channel mean and biased variance (two passes).
fn channel_moments(sx: &Shape, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (n, c, hw) = (sx.0[0], sx.0[1], sx.0[2] * sx.0[3]);
    let cnt = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals = || (0..n).flat_map(move |i| (0..hw).map(move |j| x[(i * c + ch) * hw + j]));
        mean[ch] = vals().sum::<f64>() / cnt;
        var[ch] = vals().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / cnt;
    }
    (mean, var)
}

fn bn_apply(sx: &Shape, x: &[f64], g: &[f64], b: &[f64], mean: &[f64], invstd: &[f64]) -> Vec<f64> {
    let (c, hw) = (sx.0[1], sx.0[2] * sx.0[3]);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = (i / hw) % c;
            (v - mean[ch]) * invstd[ch] * g[ch] + b[ch]
        })
        .collect()
}

/// What training batch-norm produces: the normalised output, the batch
/// mean and inverse std (saved for backward), and the new running mean and
/// running variance.
pub type BatchNormTrainOut = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

/// Training: normalise with batch statistics. Running stats follow PyTorch:
/// `r ← (1 − momentum)·r + momentum·stat`, with the unbiased variance.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    sx: &Shape,
    eps: f64,
    momentum: f64,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    rmean: &[f64],
    rvar: &[f64],
) -> BatchNormTrainOut {
    let cnt = (sx.0[0] * sx.0[2] * sx.0[3]) as f64;
    let (mean, var) = channel_moments(sx, x);
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = bn_apply(sx, x, gamma, beta, &mean, &invstd);
    let rm = rmean
        .iter()
        .zip(&mean)
        .map(|(r, m)| (1.0 - momentum) * r + momentum * m)
        .collect();
    let rv = rvar
        .iter()
        .zip(&var)
        .map(|(r, v)| {
            let unbiased = if cnt > 1.0 { v * cnt / (cnt - 1.0) } else { *v };
            (1.0 - momentum) * r + momentum * unbiased
        })
        .collect();
    (y, mean, invstd, rm, rv)
}

pub fn batch_norm_infer(
    sx: &Shape,
    eps: f64,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    rmean: &[f64],
    rvar: &[f64],
) -> Vec<f64> {
    let invstd: Vec<f64> = rvar.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    bn_apply(sx, x, gamma, beta, rmean, &invstd)
}

/// With x̂ = (x − μ)·invstd and M = n·h·w per channel:
/// `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ·invstd/M · (M·dy − Σdy − x̂·Σ dy·x̂)`.
pub fn batch_norm_backward(
    sx: &Shape,
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    invstd: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, hw) = (sx.0[0], sx.0[1], sx.0[2] * sx.0[3]);
    let m = (n * hw) as f64;
    let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
    let xhat = |i: usize, ch: usize| (x[i] - mean[ch]) * invstd[ch];
    for (i, &d) in dy.iter().enumerate() {
        let ch = (i / hw) % c;
        db[ch] += d;
        dg[ch] += d * xhat(i, ch);
    }
    let dx = (0..x.len())
        .map(|i| {
            let ch = (i / hw) % c;
            gamma[ch] * invstd[ch] / m * (m * dy[i] - db[ch] - xhat(i, ch) * dg[ch])
        })
        .collect();
    (dx, dg, db)
}

// ---------------------------------------------------------------------------
// Optimisers (PyTorch's torch.optim formulas).

/// SGD, dampening 0: `g ← g + wd·p`; with momentum `b ← μ·b + g` (b starts
/// at 0, which equals PyTorch's `b ← g` on the first step) and
/// `g ← g + μ·b` (Nesterov) or `g ← b`; then `p ← p − lr·g`.
/// `mutated` holds (param[, velocity]) per gradient.
fn sgd_update(c: &SgdConfig, lr: f64, grads: &[&[f64]], mut st: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let mu = c.momentum as f64;
    let wd = c.weight_decay as f64;
    let per = if c.momentum != 0.0 { 2 } else { 1 };
    assert_eq!(st.len(), grads.len() * per, "sgd_update: state count");
    for (t, g) in grads.iter().enumerate() {
        for i in 0..g.len() {
            let p = st[t * per][i];
            let mut d = g[i] + wd * p;
            if per == 2 {
                let b = mu * st[t * per + 1][i] + d;
                st[t * per + 1][i] = b;
                d = if c.nesterov { d + mu * b } else { b };
            }
            st[t * per][i] = p - lr * d;
        }
    }
    st
}

/// Adam / AdamW with bias correction at 1-based step t:
/// Adam adds `wd·p` to the gradient; AdamW first sets `p ← p·(1 − lr·wd)`.
/// `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
/// `p ← p − lr · (m / (1−β1ᵗ)) / (√(v / (1−β2ᵗ)) + ε)`.
/// `mutated` holds (param, m, v) per gradient.
fn adam_update(
    c: &AdamConfig,
    lr: f64,
    t: f64,
    grads: &[&[f64]],
    mut st: Vec<Vec<f64>>,
) -> Vec<Vec<f64>> {
    let (b1, b2, eps, wd) = (
        c.beta1 as f64,
        c.beta2 as f64,
        c.eps as f64,
        c.weight_decay as f64,
    );
    assert_eq!(st.len(), grads.len() * 3, "adam_update: state count");
    for (k, g) in grads.iter().enumerate() {
        for i in 0..g.len() {
            let mut p = st[3 * k][i];
            let mut gi = g[i];
            if c.decoupled {
                p *= 1.0 - lr * wd;
            } else {
                gi += wd * p;
            }
            let m = b1 * st[3 * k + 1][i] + (1.0 - b1) * gi;
            let v = b2 * st[3 * k + 2][i] + (1.0 - b2) * gi * gi;
            let mhat = m / (1.0 - b1.powf(t));
            let vhat = v / (1.0 - b2.powf(t));
            st[3 * k][i] = p - lr * mhat / (vhat.sqrt() + eps);
            st[3 * k + 1][i] = m;
            st[3 * k + 2][i] = v;
        }
    }
    st
}

/// Element by element: each output index finds the input whose range of
/// `axis` holds it.
fn concat(xs: &[&Shape], axis: usize, x: &[&[f64]], sy: &Shape) -> Vec<f64> {
    (0..sy.numel())
        .map(|i| {
            let mut idx = unravel(i, &sy.0);
            let mut k = 0;
            while idx[axis] >= xs[k].0[axis] {
                idx[axis] -= xs[k].0[axis];
                k += 1;
            }
            x[k][ravel(&idx, &xs[k].0)]
        })
        .collect()
}

fn slice(sx: &Shape, axis: usize, start: usize, x: &[f64], sy: &Shape) -> Vec<f64> {
    (0..sy.numel())
        .map(|i| {
            let mut idx = unravel(i, &sy.0);
            idx[axis] += start;
            x[ravel(&idx, &sx.0)]
        })
        .collect()
}

fn masked_len(lengths: &[f64], b: usize, t: usize) -> usize {
    (lengths[b] as usize).min(t)
}

/// `[B, T, D]` -> `[B, D]`: the mean of the first `lengths[b]` rows.
fn masked_mean_pool(xs: &Shape, x: &[f64], lengths: &[f64]) -> Vec<f64> {
    let [b, t, d] = xs.0[..] else { panic!("{xs}") };
    let mut y = vec![0.0; b * d];
    for bi in 0..b {
        let l = masked_len(lengths, bi, t);
        for ti in 0..l {
            for c in 0..d {
                y[bi * d + c] += x[(bi * t + ti) * d + c] / l as f64;
            }
        }
    }
    y
}

fn masked_mean_pool_backward(xs: &Shape, dy: &[f64], lengths: &[f64]) -> Vec<f64> {
    let [b, t, d] = xs.0[..] else { panic!("{xs}") };
    let mut dx = vec![0.0; b * t * d];
    for bi in 0..b {
        let l = masked_len(lengths, bi, t);
        for ti in 0..l {
            for c in 0..d {
                dx[(bi * t + ti) * d + c] = dy[bi * d + c] / l as f64;
            }
        }
    }
    dx
}

fn embedding(ws: &Shape, w: &[f64], ids: &[f64]) -> Vec<f64> {
    let (v, d) = (ws.0[0], ws.0[1]);
    ids.iter()
        .flat_map(|&id| {
            let id = id as usize;
            (0..d).map(move |c| if id < v { w[id * d + c] } else { 0.0 })
        })
        .collect()
}

fn embedding_backward(ws: &Shape, ids: &[f64], dy: &[f64]) -> Vec<f64> {
    let (v, d) = (ws.0[0], ws.0[1]);
    let mut dw = vec![0.0; v * d];
    for (i, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id < v {
            for c in 0..d {
                dw[id * d + c] += dy[i * d + c];
            }
        }
    }
    dw
}

/// The probabilities of head `h`, sequence `b`: `p[i][j]` for `i, j < l`.
fn attention_probs(qkv: &[f64], dims: [usize; 4], b: usize, h: usize, l: usize) -> Vec<Vec<f64>> {
    let [_, t, heads, d] = dims;
    let dm = heads * d;
    let at = |j: usize, part: usize, k: usize| qkv[(b * t + j) * 3 * dm + part * dm + h * d + k];
    (0..l)
        .map(|i| {
            let s: Vec<f64> = (0..l)
                .map(|j| (0..d).map(|k| at(i, 0, k) * at(j, 1, k)).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            s.iter().map(|v| (v - m).exp() / z).collect()
        })
        .collect()
}

/// `(out [B,T,H·d], lse [B,H,T])`; rows past the length are zero.
fn attention(qs: &Shape, heads: usize, qkv: &[f64], lengths: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [b, t, c] = qs.0[..] else { panic!("{qs}") };
    let d = c / 3 / heads;
    let dm = heads * d;
    let dims = [b, t, heads, d];
    let mut out = vec![0.0; b * t * dm];
    let mut lse = vec![0.0; b * heads * t];
    for bi in 0..b {
        let l = masked_len(lengths, bi, t);
        for h in 0..heads {
            let p = attention_probs(qkv, dims, bi, h, l);
            for i in 0..l {
                let q = |k: usize| qkv[(bi * t + i) * 3 * dm + h * d + k];
                let s: Vec<f64> = (0..l)
                    .map(|j| {
                        (0..d)
                            .map(|k| q(k) * qkv[(bi * t + j) * 3 * dm + dm + h * d + k])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse[(bi * heads + h) * t + i] =
                    m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                for k in 0..d {
                    out[(bi * t + i) * dm + h * d + k] = (0..l)
                        .map(|j| p[i][j] * qkv[(bi * t + j) * 3 * dm + 2 * dm + h * d + k])
                        .sum();
                }
            }
        }
    }
    (out, lse)
}

/// dqkv from dout, by the textbook formulas on the stored probabilities.
fn attention_backward(
    qs: &Shape,
    heads: usize,
    qkv: &[f64],
    lengths: &[f64],
    dout: &[f64],
) -> Vec<f64> {
    let [b, t, c] = qs.0[..] else { panic!("{qs}") };
    let d = c / 3 / heads;
    let dm = heads * d;
    let scale = 1.0 / (d as f64).sqrt();
    let mut dx = vec![0.0; b * t * 3 * dm];
    for bi in 0..b {
        let l = masked_len(lengths, bi, t);
        let at = |j: usize, part: usize, k: usize, h: usize| {
            qkv[(bi * t + j) * 3 * dm + part * dm + h * d + k]
        };
        for h in 0..heads {
            let p = attention_probs(qkv, [b, t, heads, d], bi, h, l);
            let go = |i: usize, k: usize| dout[(bi * t + i) * dm + h * d + k];
            for i in 0..l {
                let dp: Vec<f64> = (0..l)
                    .map(|j| (0..d).map(|k| go(i, k) * at(j, 2, k, h)).sum())
                    .collect();
                let dot: f64 = (0..l).map(|j| p[i][j] * dp[j]).sum();
                for j in 0..l {
                    let ds = p[i][j] * (dp[j] - dot) * scale;
                    for k in 0..d {
                        dx[(bi * t + i) * 3 * dm + h * d + k] += ds * at(j, 1, k, h);
                        dx[(bi * t + j) * 3 * dm + dm + h * d + k] += ds * at(i, 0, k, h);
                        dx[(bi * t + j) * 3 * dm + 2 * dm + h * d + k] += p[i][j] * go(i, k);
                    }
                }
            }
        }
    }
    dx
}

/// `(y, mean, rstd)` of a layer norm over the last axis.
fn layer_norm(
    xs: &Shape,
    x: &[f64],
    w: &[f64],
    b: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = *xs.0.last().unwrap();
    let (mut y, mut mean, mut rstd) = (vec![0.0; x.len()], Vec::new(), Vec::new());
    for (r, xr) in x.chunks(n).enumerate() {
        let m = xr.iter().sum::<f64>() / n as f64;
        let v = xr.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n as f64;
        let s = 1.0 / (v + eps).sqrt();
        for k in 0..n {
            y[r * n + k] = (xr[k] - m) * s * w[k] + b[k];
        }
        mean.push(m);
        rstd.push(s);
    }
    (y, mean, rstd)
}

fn layer_norm_backward(
    xs: &Shape,
    x: &[f64],
    w: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let n = *xs.0.last().unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; n], vec![0.0; n]);
    for r in 0..x.len() / n {
        let xhat: Vec<f64> = (0..n).map(|k| (x[r * n + k] - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..n).map(|k| dy[r * n + k] * w[k]).collect();
        let mg = g.iter().sum::<f64>() / n as f64;
        let mgx = (0..n).map(|k| g[k] * xhat[k]).sum::<f64>() / n as f64;
        for k in 0..n {
            dx[r * n + k] = rstd[r] * (g[k] - mg - xhat[k] * mgx);
            dw[k] += dy[r * n + k] * xhat[k];
            db[k] += dy[r * n + k];
        }
    }
    (dx, dw, db)
}
