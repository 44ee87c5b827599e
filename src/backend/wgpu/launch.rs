//! The wgpu launch table: each planned [`Launch`] becomes one or more
//! dispatches (a shader entry point, its parameter words and a workgroup
//! count). This mirrors `cpu::execute` arm by arm; the parameter layouts
//! are documented at the top of each shader entry point.
//!
//! It is pure (no device), so it runs once per module in `compile` and the
//! parameter words are uploaded once.

use super::lower::{
    dense, elementwise, multi_tensor, pool_params, sum_to, tensor_table, GemmStyle,
};
use super::shaders::Family;
use crate::error::{Error, Result};
use crate::graph::kernel::{Kernel, PoolKind};
use crate::graph::plan::Launch;
use crate::ops::adam::AdamConfig;
use crate::ops::binary::broadcast_strides;
use crate::ops::{Activation, BinaryKind};
use crate::tensor::Shape;

/// Threads per workgroup of every kernel.
pub const WG: usize = 256;
/// Highest tensor rank the strided kernels (binary, sum_to, transpose)
/// take; their params hold this many dims and strides.
pub const MAX_RANK: usize = 8;
/// GEMM output tile edge (gemm.wgsl's TM and TN) and K slice (TK).
pub(super) const TILE: usize = 64;
pub(super) const TK: usize = 16;
/// Query rows per attention workgroup (AQ in attention.wgsl) and the
/// largest head size its per-thread rows hold (AD).
pub(super) const ATTENTION_ROWS: usize = 64;
pub(super) const ATTENTION_MAX_HEAD: usize = 64;
/// Words of one launch's parameter window (`prm` in common.wgsl, a
/// uniform of 256 vec4s).
pub const PARAM_WORDS: usize = 1024;
/// Capacity of the runtime-scalar uniform (`rt` in common.wgsl).
pub const RUNTIME_SLOTS: usize = 256;

/// One compute dispatch.
#[derive(Clone, Debug)]
pub struct Dispatch {
    pub family: Family,
    pub entry: &'static str,
    pub params: Vec<u32>,
    /// Workgroups; the executor lays them out as an x*y grid.
    pub groups: usize,
    /// Words of scratch (after the arena) the dispatch uses.
    pub scratch: usize,
}

/// Per-run constants the host derives from the runtime scalars, written
/// after them into the runtime uniform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Derived {
    /// (step size, 1/sqrt(bias correction 2), decoupled decay).
    Adam(AdamConfig),
}

/// The runtime uniform: the module's scalars, then derived constants.
#[derive(Debug)]
pub struct Runtime {
    scalars: usize,
    derived: Vec<(Derived, usize)>,
    len: usize,
}

impl Runtime {
    pub fn new(scalars: usize) -> Self {
        Runtime {
            scalars,
            derived: Vec::new(),
            len: scalars,
        }
    }

    /// Slots used so far.
    pub fn len(&self) -> usize {
        self.len
    }

    fn slot(&mut self, d: Derived) -> usize {
        if let Some((_, at)) = self.derived.iter().find(|(x, _)| *x == d) {
            return *at;
        }
        let at = self.len;
        self.len += 3;
        self.derived.push((d, at));
        at
    }

    /// The uniform's contents for one run.
    pub fn fill(&self, scalars: &[f32], out: &mut [f32]) {
        out[..self.scalars].copy_from_slice(&scalars[..self.scalars]);
        for (d, at) in &self.derived {
            match d {
                Derived::Adam(c) => {
                    // The same f32 expressions as backend::cpu::adam::cpu_update, so
                    // both backends take the same step.
                    let (lr, step) = (scalars[c.lr.0 as usize], scalars[c.step.0 as usize]);
                    let bc1 = 1.0 - c.beta1.powf(step);
                    let bc2 = 1.0 - c.beta2.powf(step);
                    out[*at] = lr / bc1;
                    out[at + 1] = 1.0 / bc2.sqrt();
                    out[at + 2] = if c.decoupled {
                        1.0 - lr * c.weight_decay
                    } else {
                        1.0
                    };
                }
            }
        }
    }
}

/// Parameter words under construction; values that do not fit in u32 are
/// reported when the launch is finished.
#[derive(Clone)]
pub(super) struct Params {
    words: Vec<u32>,
    overflow: Option<usize>,
}

impl Params {
    pub(super) fn new(len: usize) -> Self {
        Params {
            words: vec![0; len],
            overflow: None,
        }
    }
    pub(super) fn u(&mut self, i: usize, v: usize) -> &mut Self {
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        match u32::try_from(v) {
            Ok(x) => self.words[i] = x,
            Err(_) => self.overflow = Some(v),
        }
        self
    }
    pub(super) fn f(&mut self, i: usize, v: f32) -> &mut Self {
        self.u(i, v.to_bits() as usize)
    }
    pub(super) fn list(&mut self, i: usize, vs: &[usize]) -> &mut Self {
        for (k, &v) in vs.iter().enumerate() {
            self.u(i + k, v);
        }
        self
    }
    pub(super) fn dispatch(
        &self,
        family: Family,
        entry: &'static str,
        groups: usize,
    ) -> Result<Dispatch> {
        if let Some(v) = self.overflow {
            return Err(Error::Limit(format!(
                "{}::{entry}: value {v} does not fit the kernel's 32-bit parameters",
                family.name()
            )));
        }
        if self.words.len() > PARAM_WORDS {
            return Err(Error::Limit(format!(
                "{}::{entry}: {} parameter words, the kernels hold {PARAM_WORDS}",
                family.name(),
                self.words.len()
            )));
        }
        Ok(Dispatch {
            family,
            entry,
            params: self.words.clone(),
            groups,
            scratch: 0,
        })
    }
}

pub(super) fn act_code(a: Option<Activation>) -> usize {
    Activation::code_of(a) as usize
}

pub(super) fn binary_code(k: BinaryKind) -> usize {
    k.code() as usize
}

pub(super) fn groups_for(n: usize) -> usize {
    n.div_ceil(WG)
}

pub(super) fn rank_ok(op: &str, s: &Shape) -> Result<()> {
    if s.rank() > MAX_RANK {
        return Err(Error::Device {
            device: "wgpu".into(),
            detail: format!(
                "{op}: rank {} of {s} exceeds the WGSL kernels' {MAX_RANK}",
                s.rank()
            ),
        });
    }
    Ok(())
}

/// The dispatches of one launch. `rt` collects per-run constants;
/// `scratch` is the word offset of the scratch region (after the arena).
pub fn encode(
    l: &Launch,
    kernel: &Kernel,
    rt: &mut Runtime,
    scratch: usize,
    gemm: GemmStyle,
) -> Result<Vec<Dispatch>> {
    // Operand k's offset; in place, operand k lives in output 0's range.
    let r = |k: usize| -> usize {
        if l.inplace == Some(k) {
            l.writes[0].offset
        } else {
            l.reads[k].offset
        }
    };
    let w = |k: usize| l.writes[k].offset;
    let one = |p: &Params, family: Family, entry: &'static str, groups: usize| {
        if groups == 0 {
            Ok(vec![])
        } else {
            Ok(vec![p.dispatch(family, entry, groups)?])
        }
    };
    match kernel {
        Kernel::MatMul(_)
        | Kernel::Linear { .. }
        | Kernel::Conv2d { .. }
        | Kernel::Conv2dGradInput(_)
        | Kernel::Conv2dGradWeight(_) => dense(kernel, &r, &w, scratch, gemm),
        Kernel::Conv2dGradBias(s) => {
            let mut p = Params::new(5);
            p.list(0, &[s.n, s.c, s.plane, r(0), w(0)]);
            one(&p, Family::Conv2d, "conv2d_grad_bias", s.c)
        }
        Kernel::Pool {
            geom: g,
            kind,
            backward,
        } => {
            let (oh, ow) = g.out_hw().expect("checked by geom");
            let count = if *backward {
                g.x_len()
            } else {
                g.n * g.c * oh * ow
            };
            let (entry, extra) = match (kind, backward) {
                (PoolKind::Max, false) => ("maxpool2d_forward", w(1)),
                (PoolKind::Max, true) => ("maxpool2d_backward", r(1)),
                (PoolKind::Avg, false) => ("avgpool2d_forward", 0),
                (PoolKind::Avg, true) => ("avgpool2d_backward", 0),
            };
            let p = pool_params(g, count, r(0), w(0), extra);
            one(&p, Family::Pool, entry, groups_for(count))
        }
        Kernel::GlobalAvgPool {
            planes: s,
            backward,
        } => {
            let count = if *backward {
                s.n * s.c * s.plane
            } else {
                s.n * s.c
            };
            let mut p = Params::new(4);
            p.list(0, &[count, s.plane, r(0), w(0)]);
            let entry = if *backward {
                "global_avgpool_backward"
            } else {
                "global_avgpool_forward"
            };
            one(&p, Family::Pool, entry, groups_for(count))
        }
        Kernel::MaskedMeanPool { seq, backward } => {
            let (count, entry) = if *backward {
                (seq.batch * seq.len * seq.dim, "masked_mean_pool_backward")
            } else {
                (seq.batch * seq.dim, "masked_mean_pool_forward")
            };
            let mut p = Params::new(6);
            p.list(0, &[count, seq.len, seq.dim, r(0), r(1), w(0)]);
            one(&p, Family::Pool, entry, groups_for(count))
        }
        Kernel::Embedding {
            ids,
            vocab,
            dim,
            backward: false,
        } => {
            let mut p = Params::new(6);
            p.list(0, &[ids * dim, *dim, *vocab, r(0), r(1), w(0)]);
            one(
                &p,
                Family::Embedding,
                "embedding_forward",
                groups_for(ids * dim),
            )
        }
        Kernel::Embedding {
            ids,
            vocab,
            dim,
            backward: true,
        } => {
            // Threads own (column, vocabulary bucket) pairs: ~4K threads,
            // each scanning every id once.
            let buckets = (4096 / (*dim).max(1)).clamp(1, (*vocab).max(1));
            let mut p = Params::new(7);
            p.list(0, &[*dim, *vocab, *ids, buckets, r(0), r(1), w(0)]);
            one(
                &p,
                Family::Embedding,
                "embedding_backward",
                groups_for(dim * buckets),
            )
        }
        Kernel::LayerNorm {
            rows,
            cols,
            eps,
            backward: false,
            residual,
        } => {
            let mut p = Params::new(12);
            p.list(0, &[*rows, *cols]).f(2, *eps);
            p.list(3, &[r(0), r(1), r(2), w(0), w(1), w(2)]);
            if *residual {
                p.list(9, &[1, r(3), w(3)]);
            }
            one(
                &p,
                Family::LayerNorm,
                "layer_norm_forward",
                groups_for(*rows),
            )
        }
        Kernel::LayerNorm {
            rows,
            cols,
            backward: true,
            ..
        } => {
            let mut p = Params::new(11);
            p.list(0, &[*rows, *cols]);
            p.list(3, &[r(0), r(1), r(2), r(3), r(4), w(0), w(1), w(2)]);
            Ok(if *rows == 0 || *cols == 0 {
                vec![]
            } else {
                vec![
                    p.dispatch(
                        Family::LayerNorm,
                        "layer_norm_backward_dx",
                        groups_for(*rows),
                    )?,
                    p.dispatch(
                        Family::LayerNorm,
                        "layer_norm_backward_params",
                        groups_for(*cols),
                    )?,
                ]
            })
        }
        Kernel::Attention {
            seq,
            heads,
            backward,
        } => {
            if seq.dim > ATTENTION_MAX_HEAD {
                return Err(Error::Device {
                    device: "wgpu".into(),
                    detail: format!(
                        "attention: head size {} exceeds the kernel's {ATTENTION_MAX_HEAD}",
                        seq.dim
                    ),
                });
            }
            let blocks = seq.len.div_ceil(ATTENTION_ROWS);
            let groups = seq.batch * heads * blocks;
            let mut p = Params::new(11);
            p.list(0, &[seq.batch, seq.len, *heads, seq.dim, r(0), r(1)])
                .u(8, blocks);
            if *backward {
                p.list(6, &[r(2), r(3)]).list(9, &[r(4), w(0)]);
                Ok(if groups == 0 {
                    vec![]
                } else {
                    vec![
                        p.dispatch(Family::Attention, "attention_backward_q", groups)?,
                        p.dispatch(Family::Attention, "attention_backward_kv", groups)?,
                    ]
                })
            } else {
                p.list(6, &[w(0), w(1)]);
                one(&p, Family::Attention, "attention_forward", groups)
            }
        }
        Kernel::Act {
            act,
            backward: false,
            len: n,
        } => {
            let mut p = Params::new(4);
            p.list(0, &[act_code(Some(*act)), *n, r(0), w(0)]);
            one(&p, Family::Activation, "act_forward", groups_for(*n))
        }
        Kernel::Act {
            act,
            backward: true,
            len: n,
        } => {
            let mut p = Params::new(5);
            p.list(0, &[act_code(Some(*act)), *n, r(0), r(1), w(0)]);
            one(&p, Family::Activation, "act_backward", groups_for(*n))
        }
        Kernel::Binary {
            kind: k,
            a,
            b,
            out: so,
        } => {
            rank_ok("binary", so)?;
            let n = so.numel();
            let (sa, sb) = (broadcast_strides(a, so), broadcast_strides(b, so));
            let contiguous = sa == so.strides() && sb == so.strides();
            let mut p = Params::new(32);
            p.list(0, &[binary_code(*k), n, r(0), r(1), w(0), so.rank()])
                .u(6, contiguous as usize)
                .list(8, &so.0)
                .list(16, &sa)
                .list(24, &sb);
            one(&p, Family::Binary, "binary", groups_for(n))
        }
        Kernel::Scale { alpha, len: n } => {
            let mut p = Params::new(4);
            p.list(0, &[*n, r(0), w(0)]).f(3, *alpha);
            one(&p, Family::Binary, "scale", groups_for(*n))
        }
        Kernel::Fill { value, len: n } => {
            let mut p = Params::new(3);
            p.list(0, &[*n, w(0)]).f(2, *value);
            one(&p, Family::Binary, "fill", groups_for(*n))
        }
        Kernel::SumTo { from, to } => sum_to(from, to, r(0), w(0)),
        Kernel::BroadcastTo { from, to: sy } => {
            rank_ok("broadcast_to", sy)?;
            let n = sy.numel();
            let mut p = Params::new(24);
            p.list(0, &[n, r(0), w(0), sy.rank()])
                .list(8, &sy.0)
                .list(16, &broadcast_strides(from, sy));
            one(&p, Family::Reduce, "broadcast_to", groups_for(n))
        }
        Kernel::View => Ok(vec![]),
        Kernel::Transpose { shape: sx, perm } => {
            rank_ok("transpose", sx)?;
            let xs = sx.strides();
            let dims: Vec<usize> = perm.iter().map(|&p| sx.0[p]).collect();
            let strides: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
            let n = sx.numel();
            let mut p = Params::new(24);
            p.list(0, &[n, r(0), w(0), sx.rank()])
                .list(8, &dims)
                .list(16, &strides);
            one(&p, Family::Shape, "transpose", groups_for(n))
        }
        Kernel::ClipGradNorm { max_norm, .. } => {
            let mut p = Params::new(8);
            p.u(0, l.reads.len()).f(1, *max_norm);
            for (t, (g, y)) in l.reads.iter().zip(&l.writes).enumerate() {
                p.list(8 + 3 * t, &[g.len, g.offset, y.offset]);
            }
            one(&p, Family::Reduce, "clip_grad_norm", 1)
        }
        Kernel::CopyRows(copies) => {
            let mut out = Vec::new();
            for c in copies {
                let mut p = Params::new(6);
                p.list(
                    0,
                    &[
                        c.rows * c.len,
                        r(c.read) + c.x_off,
                        w(0) + c.y_off,
                        c.len,
                        c.x_stride,
                        c.y_stride,
                    ],
                );
                out.extend(one(
                    &p,
                    Family::Shape,
                    "copy_rows",
                    groups_for(c.rows * c.len),
                )?);
            }
            Ok(out)
        }
        Kernel::Softmax {
            rows,
            cols: n,
            log,
            backward: false,
        } => {
            let mut p = Params::new(5);
            p.list(0, &[*rows, *n, r(0), w(0)]).u(4, *log as usize);
            one(&p, Family::Softmax, "softmax", *rows)
        }
        Kernel::Softmax {
            rows,
            cols: n,
            log,
            backward: true,
        } => {
            let mut p = Params::new(6);
            p.list(0, &[*rows, *n, r(0), r(1), w(0)])
                .u(5, *log as usize);
            one(&p, Family::Softmax, "softmax_backward", *rows)
        }
        Kernel::CrossEntropy { batch, classes } => {
            let mut p = Params::new(5);
            p.list(0, &[*batch, *classes, r(0), r(1), w(0)]);
            one(&p, Family::CrossEntropy, "cross_entropy", 1)
        }
        Kernel::CrossEntropyBackward {
            batch: b,
            classes,
            dloss,
        } => {
            let b = *b;
            let mut p = Params::new(8);
            p.list(0, &[b, *classes, r(0), r(1), w(0)]);
            match dloss {
                Some(d) => p.u(5, 0).f(6, *d),
                None => p.u(5, 1).u(7, r(2)),
            };
            one(&p, Family::CrossEntropy, "cross_entropy_backward", b)
        }
        Kernel::ActBackwardBias {
            act,
            dims: shape,
            axis,
        } => {
            let c = shape[*axis];
            let inner: usize = shape[axis + 1..].iter().product();
            let outer: usize = shape[..*axis].iter().product();
            let mut p = Params::new(8);
            p.list(
                0,
                &[
                    act_code(Some(*act)),
                    outer,
                    c,
                    inner,
                    r(0),
                    r(1),
                    w(0),
                    w(1),
                ],
            );
            one(&p, Family::BiasGrad, "act_backward_bias", c)
        }
        Kernel::Elementwise { prog, .. } => elementwise(prog, l, &r),
        Kernel::Dropout {
            p: prob,
            seed,
            step,
            len: n,
        } => {
            let n = *n;
            let mut p = Params::new(7);
            p.list(0, &[n, r(0), w(0)])
                .f(3, *prob)
                .u(4, *seed as usize)
                .u(5, step.0 as usize)
                .f(6, 1.0 / (1.0 - prob));
            one(&p, Family::Dropout, "dropout", groups_for(n))
        }
        Kernel::BatchNorm {
            planes: s,
            eps,
            momentum,
            training: true,
            act,
            residual,
        } => {
            let mut p = Params::new(16);
            p.list(0, &[s.n, s.c, s.plane, r(0), r(1), r(2)])
                .list(6, &[w(0), w(1), w(2), w(3), w(4)])
                .f(11, *eps)
                .f(12, *momentum)
                .u(13, *residual as usize)
                .u(14, if *residual { r(3) } else { 0 })
                .u(15, act_code(*act));
            one(&p, Family::Batchnorm, "batchnorm2d_train", s.c)
        }
        Kernel::BatchNorm {
            planes: s,
            eps,
            training: false,
            ..
        } => {
            let n = s.n * s.c * s.plane;
            let mut p = Params::new(10);
            p.list(0, &[n, s.c, s.plane, r(0), r(1), r(2), r(3), r(4)])
                .u(8, w(0))
                .f(9, *eps);
            one(&p, Family::Batchnorm, "batchnorm2d_infer", groups_for(n))
        }
        Kernel::BatchNormBackward { planes: s, act } => {
            let mut p = Params::new(13);
            p.list(0, &[s.n, s.c, s.plane])
                .list(3, &[r(0), r(1), r(2), r(3), r(4)])
                .list(8, &[w(0), w(1), w(2)])
                .u(11, act_code(*act))
                .u(12, if act.is_some() { r(5) } else { 0 });
            one(&p, Family::Batchnorm, "batchnorm2d_backward", s.c)
        }
        Kernel::Sgd { config: c, .. } => {
            let per = if c.momentum != 0.0 { 2 } else { 1 };
            let rows = tensor_table(l, per, 5, |t, row| {
                row[4] = if per == 2 {
                    l.writes[t * 2 + 1].offset
                } else {
                    0
                };
            });
            let mut p = Params::new(8);
            p.f(2, c.momentum)
                .u(3, c.nesterov as usize)
                .f(4, c.weight_decay)
                .u(5, c.lr.0 as usize)
                .u(6, (per == 2) as usize);
            multi_tensor(p, rows, Family::Sgd, "sgd_update")
        }
        Kernel::Adam { config: c, .. } => {
            let rows = tensor_table(l, 3, 6, |t, row| {
                row[4] = l.writes[t * 3 + 1].offset;
                row[5] = l.writes[t * 3 + 2].offset;
            });
            let mut p = Params::new(8);
            p.f(2, c.beta1)
                .f(3, c.beta2)
                .f(4, c.eps)
                .f(5, if c.decoupled { 0.0 } else { c.weight_decay })
                .u(6, rt.slot(Derived::Adam(*c)));
            multi_tensor(p, rows, Family::Adam, "adam_update")
        }
    }
}
