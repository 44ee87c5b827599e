//! [`Kernel::describe`]: one launch (its op and operand shapes) decoded
//! into the typed [`Kernel`] every backend matches on, each shape rule
//! checked with an error rather than a panic. The types are in
//! `graph/kernel.rs`.

use super::kernel::{Gemm, Kernel, Planes, PoolKind, RowCopy, Sequences};
use crate::error::{Error, Result};
use crate::graph::plan::Launch;
use crate::ops::matmul::matmul_dims;
use crate::ops::{Op, PoolParams};
use crate::tensor::Shape;

fn planes(op: &str, s: &Shape) -> Result<Planes> {
    match s.0[..] {
        [n, c, h, w] => Ok(Planes { n, c, plane: h * w }),
        _ => Err(Error::shape(op, format!("{s} is not [N,C,H,W]"))),
    }
}

/// `[rows, cols]` of a row-wise op over the last axis.
fn rows(s: &Shape) -> (usize, usize) {
    let cols = s.0.last().copied().unwrap_or(1);
    (s.numel() / cols.max(1), cols)
}

fn batch_classes(op: &str, s: &Shape) -> Result<(usize, usize)> {
    match s.0[..] {
        [b, c] => Ok((b, c)),
        _ => Err(Error::shape(op, format!("logits {s} are not [B, C]"))),
    }
}

impl Kernel {
    /// Decode a launch. Shapes were checked when the graph was built; this
    /// checks them again, with errors instead of panics, for modules made
    /// or edited by hand.
    pub fn describe(l: &Launch) -> Result<Kernel> {
        let rs = &l.read_shapes;
        let ws = &l.write_shapes;
        let name = l.op.kernel_name();
        let need = |r: usize, w: usize| -> Result<()> {
            if rs.len() < r || ws.len() < w {
                return Err(Error::shape(
                    name,
                    format!(
                        "{} reads and {} writes, needs at least {r} and {w}",
                        rs.len(),
                        ws.len()
                    ),
                ));
            }
            Ok(())
        };
        let len = |s: &[Shape]| s.first().map_or(0, Shape::numel);
        // Max-pool forward also writes the argmax, and its backward reads
        // it; the geometry comes from x (forward) or dx (backward).
        let pool = |p: &PoolParams, kind: PoolKind, backward: bool| -> Result<Kernel> {
            let max = kind == PoolKind::Max;
            need(
                1 + (max && backward) as usize,
                1 + (max && !backward) as usize,
            )?;
            let op = if max { "max_pool2d" } else { "avg_pool2d" };
            let x = if backward { &ws[0] } else { &rs[0] };
            Ok(Kernel::Pool {
                geom: p.geom(op, x)?,
                kind,
                backward,
            })
        };
        Ok(match &l.op {
            Op::MatMul { ta, tb } => {
                need(2, 1)?;
                let (batch, m, k, n) = matmul_dims(&rs[0], *ta, &rs[1], *tb)?;
                Kernel::MatMul(Gemm {
                    batch,
                    m,
                    n,
                    k,
                    ta: *ta,
                    tb: *tb,
                })
            }
            Op::Linear { bias, act } => {
                need(2 + *bias as usize, 1)?;
                let k = rs[0].0.last().copied().unwrap_or(1);
                let (n, wk) = match rs[1].0[..] {
                    [n, wk] => (n, wk),
                    _ => return Err(Error::shape(name, format!("weight {} is not 2-D", rs[1]))),
                };
                if wk != k {
                    return Err(Error::shape(
                        name,
                        format!("input {} and weight {} disagree", rs[0], rs[1]),
                    ));
                }
                let gemm = Gemm {
                    batch: 1,
                    m: rs[0].numel() / k.max(1),
                    n,
                    k,
                    ta: false,
                    tb: true,
                };
                Kernel::Linear {
                    gemm,
                    bias: *bias,
                    act: *act,
                }
            }
            Op::Conv2d {
                p,
                act,
                residual,
                pool,
            } => {
                need(2 + *residual as usize, 1)?;
                let geom = p.geom(&rs[0], &rs[1])?;
                if *residual && (*pool || rs.last() != Some(&ws[0])) {
                    return Err(Error::shape(
                        name,
                        format!("residual {:?} for output {}", rs.last(), ws[0]),
                    ));
                }
                if *pool {
                    let (oh, ow) = geom
                        .out_hw()
                        .ok_or_else(|| Error::shape(name, format!("no output for {geom:?}")))?;
                    let pooled = Shape(vec![geom.n, geom.c_out, oh / 2, ow / 2]);
                    if ws[0] != pooled {
                        return Err(Error::shape(
                            name,
                            format!("max-pooled output {} where {pooled} is due", ws[0]),
                        ));
                    }
                }
                Kernel::Conv2d {
                    geom,
                    bias: rs.len() == 3 + *residual as usize,
                    act: *act,
                    residual: *residual,
                    pool: *pool,
                }
            }
            Op::Conv2dGradInput { p } => {
                need(2, 1)?;
                Kernel::Conv2dGradInput(p.geom(&ws[0], &rs[1])?)
            }
            Op::Conv2dGradWeight { p } => {
                need(2, 1)?;
                Kernel::Conv2dGradWeight(p.geom(&rs[0], &ws[0])?)
            }
            Op::Conv2dGradBias => {
                need(1, 1)?;
                Kernel::Conv2dGradBias(planes(name, &rs[0])?)
            }
            Op::MaxPool2d { p } => pool(p, PoolKind::Max, false)?,
            Op::MaxPool2dBackward { p } => pool(p, PoolKind::Max, true)?,
            Op::AvgPool2d { p } => pool(p, PoolKind::Avg, false)?,
            Op::AvgPool2dBackward { p } => pool(p, PoolKind::Avg, true)?,
            Op::GlobalAvgPool => {
                need(1, 1)?;
                Kernel::GlobalAvgPool {
                    planes: planes(name, &rs[0])?,
                    backward: false,
                }
            }
            Op::GlobalAvgPoolBackward => {
                need(1, 1)?;
                Kernel::GlobalAvgPool {
                    planes: planes(name, &ws[0])?,
                    backward: true,
                }
            }
            Op::MaskedMeanPool | Op::MaskedMeanPoolBackward => {
                need(2, 1)?;
                let backward = matches!(l.op, Op::MaskedMeanPoolBackward);
                let x = if backward { &ws[0] } else { &rs[0] };
                let y = if backward { &rs[0] } else { &ws[0] };
                let seq = match x.0[..] {
                    [batch, len, dim] if y.0 == [batch, dim] && rs[1].0 == [batch] => {
                        Sequences { batch, len, dim }
                    }
                    _ => {
                        return Err(Error::shape(
                            name,
                            format!("{x} pooled to {y} with lengths {}", rs[1]),
                        ))
                    }
                };
                Kernel::MaskedMeanPool { seq, backward }
            }
            Op::Embedding | Op::EmbeddingBackward { .. } => {
                need(2, 1)?;
                let backward = matches!(l.op, Op::EmbeddingBackward { .. });
                let (table, ids, rows) = if backward {
                    (&ws[0], &rs[0], &rs[1])
                } else {
                    (&rs[0], &rs[1], &ws[0])
                };
                let [vocab, dim] = table.0[..] else {
                    return Err(Error::shape(name, format!("weight {table} is not 2-D")));
                };
                if rows.numel() != ids.numel() * dim {
                    return Err(Error::shape(
                        name,
                        format!("rows {rows} for ids {ids} of a [{vocab}, {dim}] table"),
                    ));
                }
                Kernel::Embedding {
                    ids: ids.numel(),
                    vocab,
                    dim,
                    backward,
                }
            }
            Op::LayerNorm { .. } | Op::LayerNormBackward => {
                let backward = matches!(l.op, Op::LayerNormBackward);
                let residual = matches!(l.op, Op::LayerNorm { residual: true, .. });
                need(
                    if backward {
                        5
                    } else {
                        3 + usize::from(residual)
                    },
                    3 + usize::from(residual),
                )?;
                let (rows, cols) = rows(&rs[0]);
                let vecs = if backward {
                    [&rs[1], &ws[1], &ws[2]]
                } else {
                    [&rs[1], &rs[2], &rs[1]]
                };
                let stats = if backward {
                    [&rs[2], &rs[3]]
                } else {
                    [&ws[1], &ws[2]]
                };
                if vecs.iter().any(|v| v.0 != [cols])
                    || stats.iter().any(|v| v.numel() != rows)
                    || ws[0] != rs[0]
                    || (backward && rs[4] != rs[0])
                    || (residual && (rs[3] != rs[0] || ws[3] != rs[0]))
                {
                    return Err(Error::shape(
                        name,
                        format!("reads {rs:?} and writes {ws:?}"),
                    ));
                }
                Kernel::LayerNorm {
                    rows,
                    cols,
                    eps: match l.op {
                        Op::LayerNorm { eps, .. } => eps,
                        _ => 0.0,
                    },
                    backward,
                    residual,
                }
            }
            Op::Attention { heads } | Op::AttentionBackward { heads } => {
                let backward = matches!(l.op, Op::AttentionBackward { .. });
                if backward {
                    need(5, 1)?;
                } else {
                    need(2, 2)?;
                }
                let [batch, len, h, dim] =
                    crate::ops::attention::attention_dims(name, &rs[0], *heads)?;
                let out = Shape(vec![batch, len, h * dim]);
                let lse = Shape(vec![batch, h, len]);
                let ok = rs[1].0 == [batch]
                    && if backward {
                        rs[2] == out && rs[3] == lse && rs[4] == out && ws[0] == rs[0]
                    } else {
                        ws[0] == out && ws[1] == lse
                    };
                if !ok {
                    return Err(Error::shape(
                        name,
                        format!("reads {rs:?} and writes {ws:?} for qkv {}", rs[0]),
                    ));
                }
                Kernel::Attention {
                    seq: Sequences { batch, len, dim },
                    heads: *heads,
                    backward,
                }
            }
            Op::Act(a) | Op::ActBackward(a) => {
                // Backward also reads the saved value.
                let backward = matches!(l.op, Op::ActBackward(_));
                need(1 + backward as usize, 1)?;
                Kernel::Act {
                    act: *a,
                    backward,
                    len: len(ws),
                }
            }
            Op::ActBackwardBias { act, axis } => {
                need(2, 2)?;
                if *axis >= rs[0].rank() {
                    return Err(Error::shape(name, format!("axis {axis} of {}", rs[0])));
                }
                Kernel::ActBackwardBias {
                    act: *act,
                    dims: rs[0].0.clone(),
                    axis: *axis,
                }
            }
            Op::Binary(kind) => {
                need(2, 1)?;
                Kernel::Binary {
                    kind: *kind,
                    a: rs[0].clone(),
                    b: rs[1].clone(),
                    out: ws[0].clone(),
                }
            }
            Op::Scale(alpha) => {
                need(1, 1)?;
                Kernel::Scale {
                    alpha: *alpha,
                    len: len(ws),
                }
            }
            Op::Fill(value) => {
                need(0, 1)?;
                Kernel::Fill {
                    value: *value,
                    len: len(ws),
                }
            }
            Op::SumTo => {
                need(1, 1)?;
                Kernel::SumTo {
                    from: rs[0].clone(),
                    to: ws[0].clone(),
                }
            }
            Op::BroadcastTo => {
                need(1, 1)?;
                Kernel::BroadcastTo {
                    from: rs[0].clone(),
                    to: ws[0].clone(),
                }
            }
            Op::Reshape => Kernel::View,
            Op::Transpose { perm } => {
                need(1, 1)?;
                if perm.len() != rs[0].rank() {
                    return Err(Error::shape(name, format!("perm {perm:?} of {}", rs[0])));
                }
                Kernel::Transpose {
                    shape: rs[0].clone(),
                    perm: perm.clone(),
                }
            }
            Op::Store => {
                need(1, 1)?;
                let len = rs[0].numel();
                if ws[0].numel() != len {
                    return Err(Error::shape(name, format!("{} into {}", rs[0], ws[0])));
                }
                Kernel::CopyRows(vec![RowCopy {
                    read: 0,
                    rows: 1,
                    len,
                    x_stride: len,
                    x_off: 0,
                    y_stride: len,
                    y_off: 0,
                }])
            }
            Op::Concat { axis } => {
                need(1, 1)?;
                let (rows, inner) = crate::ops::shape::rows_and_inner(&ws[0], *axis);
                let y_stride = ws[0].0[*axis] * inner;
                let mut y_off = 0;
                let copies = rs
                    .iter()
                    .enumerate()
                    .map(|(read, x)| {
                        let len = x.0.get(*axis).copied().unwrap_or(0) * inner;
                        let c = RowCopy {
                            read,
                            rows,
                            len,
                            x_stride: len,
                            x_off: 0,
                            y_stride,
                            y_off,
                        };
                        y_off += len;
                        c
                    })
                    .collect();
                if y_off != y_stride || rs.iter().any(|x| x.numel() != rows * x.0[*axis] * inner) {
                    return Err(Error::shape(name, format!("{rs:?} into {}", ws[0])));
                }
                Kernel::CopyRows(copies)
            }
            Op::Slice { axis, start } => {
                need(1, 1)?;
                let (rows, inner) = crate::ops::shape::rows_and_inner(&rs[0], *axis);
                let len = ws[0].0[*axis] * inner;
                if ws[0].numel() != rows * len || (start + ws[0].0[*axis]) > rs[0].0[*axis] {
                    return Err(Error::shape(name, format!("{} from {}", ws[0], rs[0])));
                }
                Kernel::CopyRows(vec![RowCopy {
                    read: 0,
                    rows,
                    len,
                    x_stride: rs[0].0[*axis] * inner,
                    x_off: start * inner,
                    y_stride: len,
                    y_off: 0,
                }])
            }
            Op::Softmax | Op::LogSoftmax | Op::SoftmaxBackward | Op::LogSoftmaxBackward => {
                let backward = matches!(l.op, Op::SoftmaxBackward | Op::LogSoftmaxBackward);
                need(1 + backward as usize, 1)?;
                let (rows, cols) = rows(&rs[0]);
                Kernel::Softmax {
                    rows,
                    cols,
                    log: matches!(l.op, Op::LogSoftmax | Op::LogSoftmaxBackward),
                    backward,
                }
            }
            Op::CrossEntropy => {
                need(2, 1)?;
                let (batch, classes) = batch_classes(name, &rs[0])?;
                Kernel::CrossEntropy { batch, classes }
            }
            Op::CrossEntropyBackward { dloss } => {
                need(2 + dloss.is_none() as usize, 1)?;
                let (batch, classes) = batch_classes(name, &rs[0])?;
                Kernel::CrossEntropyBackward {
                    batch,
                    classes,
                    dloss: *dloss,
                }
            }
            Op::Elementwise(prog) => {
                need(0, 1)?;
                Kernel::Elementwise {
                    prog: prog.clone(),
                    len: len(ws),
                }
            }
            Op::Dropout { p, seed, step } => {
                need(1, 1)?;
                Kernel::Dropout {
                    p: *p,
                    seed: *seed,
                    step: *step,
                    len: len(ws),
                }
            }
            Op::BatchNorm2d {
                eps,
                momentum,
                training,
                act,
                residual,
            } => {
                if *training {
                    need(3 + usize::from(*residual), 5)?;
                } else if act.is_some() || *residual {
                    return Err(Error::shape(name, "inference has no epilogue"));
                } else {
                    need(5, 1)?;
                }
                Kernel::BatchNorm {
                    planes: planes(name, &rs[0])?,
                    eps: *eps,
                    momentum: *momentum,
                    training: *training,
                    act: *act,
                    residual: *residual,
                }
            }
            Op::BatchNorm2dBackward { act } => {
                need(5 + usize::from(act.is_some()), 3)?;
                Kernel::BatchNormBackward {
                    planes: planes(name, &rs[0])?,
                    act: *act,
                }
            }
            Op::ClipGradNorm { max_norm } => {
                if rs.len() != ws.len() || rs.iter().zip(ws).any(|(r, w)| r.numel() != w.numel()) {
                    return Err(Error::shape(name, format!("{rs:?} clipped into {ws:?}")));
                }
                Kernel::ClipGradNorm {
                    max_norm: *max_norm,
                    tensors: rs.len(),
                }
            }
            Op::SgdUpdate(c) => {
                let per = if c.momentum != 0.0 { 2 } else { 1 };
                Kernel::Sgd {
                    config: *c,
                    tensors: multi_tensor(l, per)?,
                }
            }
            Op::AdamUpdate(c) => Kernel::Adam {
                config: *c,
                tensors: multi_tensor(l, 3)?,
            },
        })
    }
}

/// A multi-tensor update reads one gradient per tensor and writes `per`
/// tensors (the parameter and its state) for each, all of one size.
fn multi_tensor(l: &Launch, per: usize) -> Result<usize> {
    let n = l.reads.len();
    let name = l.op.kernel_name();
    if l.writes.len() != n * per {
        return Err(Error::shape(
            name,
            format!(
                "{n} gradients need {} writes, got {}",
                n * per,
                l.writes.len()
            ),
        ));
    }
    for (i, g) in l.reads.iter().enumerate() {
        if l.writes[i * per..(i + 1) * per]
            .iter()
            .any(|w| w.len != g.len)
        {
            return Err(Error::shape(
                name,
                format!("tensor {i}: gradient and state sizes differ"),
            ));
        }
    }
    Ok(n)
}
