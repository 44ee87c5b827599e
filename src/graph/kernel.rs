//! What each launch computes, decoded once for every backend: the op and
//! its operand shapes become the typed dimensions a kernel is called with,
//! with every shape rule checked by `?`. Backends match on [`Kernel`]
//! instead of re-deriving geometry from `Op` and shapes, and
//! [`Module::validate`] checks slots, operand counts and scalars once for
//! all of them.
//!
//! Both matches are exhaustive: a new `Op` variant does not compile until
//! it is described (`graph/decode.rs`, [`Kernel::describe`]), and a new
//! `Kernel` variant does not compile until every backend handles it.

use crate::error::{Error, Result};
use crate::graph::ir::ScalarId;
use crate::graph::plan::{Launch, Module, Program};
use crate::ops::adam::AdamConfig;
use crate::ops::conv2d::Conv2dGeom;
use crate::ops::elementwise::EwInstr;
use crate::ops::pool::Pool2dGeom;
use crate::ops::sgd::SgdConfig;
use crate::ops::{Activation, BinaryKind};
use crate::tensor::Shape;

/// `y[r·y_stride + y_off + i] = x[r·x_stride + x_off + i]` for `r < rows`,
/// `i < len`, where `x` is read `read` of the launch and `y` its write.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowCopy {
    pub read: usize,
    pub rows: usize,
    pub len: usize,
    pub x_stride: usize,
    pub x_off: usize,
    pub y_stride: usize,
    pub y_off: usize,
}

/// `C[b] = op(A[b]) · op(B[b])`, `batch` times, each `m×k · k×n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

/// N×C planes of `plane` elements (batch norm, global pooling, bias sums).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    pub n: usize,
    pub c: usize,
    pub plane: usize,
}

impl Planes {
    /// `(n, c, plane)`, as the CPU kernels take them.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.n, self.c, self.plane)
    }
}

/// A padded batch of sequences: `batch` sequences of `len` rows of
/// `dim` values (the lengths are read at run time). For attention `dim`
/// is the head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequences {
    pub batch: usize,
    pub len: usize,
    pub dim: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// One launch, as every backend needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// Batched matrix product.
    MatMul(Gemm),
    /// `x · wᵀ (+ b)` then `act`: `m` rows, weight `[n, k]`.
    Linear {
        gemm: Gemm,
        bias: bool,
        act: Option<Activation>,
    },
    /// Reads (x, w, [bias], [residual]). `pool`: the output is 2×2,
    /// stride-2 max pooled (`[n, c_out, oh / 2, ow / 2]`); only for a
    /// backend whose [`FuseExtras`] ask for it.
    ///
    /// [`FuseExtras`]: crate::graph::fuse::FuseExtras
    Conv2d {
        geom: Conv2dGeom,
        bias: bool,
        act: Option<Activation>,
        residual: bool,
        pool: bool,
    },
    Conv2dGradInput(Conv2dGeom),
    Conv2dGradWeight(Conv2dGeom),
    /// Sum of dy over n and the plane, per channel.
    Conv2dGradBias(Planes),
    Pool {
        geom: Pool2dGeom,
        kind: PoolKind,
        backward: bool,
    },
    GlobalAvgPool {
        planes: Planes,
        backward: bool,
    },
    /// Forward reads (x, lengths), backward (dy, lengths).
    MaskedMeanPool {
        seq: Sequences,
        backward: bool,
    },
    /// Forward reads (weight, ids); backward reads (ids, dy) and writes
    /// the weight's gradient. `ids` ids of `dim`-wide rows.
    Embedding {
        ids: usize,
        vocab: usize,
        dim: usize,
        backward: bool,
    },
    /// Forward reads (x, weight, bias), writes (y, mean, rstd); backward
    /// reads (x, weight, mean, rstd, dy), writes (dx, dweight, dbias).
    LayerNorm {
        rows: usize,
        cols: usize,
        eps: f32,
        backward: bool,
        /// Forward only: reads `r` fourth, writes `x + r` fourth.
        residual: bool,
    },
    /// Forward reads (qkv, lengths), writes (out, lse); backward reads
    /// (qkv, lengths, out, lse, dout), writes dqkv.
    Attention {
        seq: Sequences,
        heads: usize,
        backward: bool,
    },
    Act {
        act: Activation,
        backward: bool,
        len: usize,
    },
    /// Fused activation gradient and the sum of it over all axes but `axis`.
    ActBackwardBias {
        act: Activation,
        dims: Vec<usize>,
        axis: usize,
    },
    Binary {
        kind: BinaryKind,
        a: Shape,
        b: Shape,
        out: Shape,
    },
    Scale {
        alpha: f32,
        len: usize,
    },
    Fill {
        value: f32,
        len: usize,
    },
    SumTo {
        from: Shape,
        to: Shape,
    },
    BroadcastTo {
        from: Shape,
        to: Shape,
    },
    /// A reshape: nothing runs.
    View,
    Transpose {
        shape: Shape,
        perm: Vec<usize>,
    },
    /// Concat and slice: row blocks copied from the reads into the write.
    CopyRows(Vec<RowCopy>),
    /// Row-wise (log-)softmax over the last axis, or its gradient.
    Softmax {
        rows: usize,
        cols: usize,
        log: bool,
        backward: bool,
    },
    CrossEntropy {
        batch: usize,
        classes: usize,
    },
    /// `dloss`: a constant loss gradient, else read from the third input.
    CrossEntropyBackward {
        batch: usize,
        classes: usize,
        dloss: Option<f32>,
    },
    Elementwise {
        prog: Vec<EwInstr>,
        len: usize,
    },
    Dropout {
        p: f32,
        seed: u32,
        step: ScalarId,
        len: usize,
    },
    /// Training: `y = act(bn(x) [+ residual])`, the residual read last.
    BatchNorm {
        planes: Planes,
        eps: f32,
        momentum: f32,
        training: bool,
        act: Option<Activation>,
        residual: bool,
    },
    /// With `act`, the gradient is `act'(saved)·dy`, `saved` read last.
    BatchNormBackward {
        planes: Planes,
        act: Option<Activation>,
    },
    /// One launch over `tensors` parameters (gradient reads, then per
    /// tensor the parameter and its state among the writes).
    /// Read k scaled into write k, by the global norm of all reads.
    ClipGradNorm {
        max_norm: f32,
        tensors: usize,
    },
    Sgd {
        config: SgdConfig,
        tensors: usize,
    },
    Adam {
        config: AdamConfig,
        tensors: usize,
    },
}

impl Module {
    /// What every backend relies on, checked once: each launch decodes, its
    /// slots lie in the arena, no output overlaps another operand (except
    /// an in-place output over the read it replaces), and every scalar it
    /// reads exists. Returns the decoded kernels, program by program.
    pub fn validate(&self) -> Result<Vec<Vec<Kernel>>> {
        self.programs
            .iter()
            .map(|p| {
                p.launches
                    .iter()
                    .map(|l| self.validate_launch(p, l))
                    .collect()
            })
            .collect()
    }

    fn validate_launch(&self, p: &Program, l: &Launch) -> Result<Kernel> {
        let bad = |what: String| {
            Error::shape(l.op.kernel_name(), format!("program '{}': {what}", p.name))
        };
        if l.reads.len() != l.read_shapes.len() || l.writes.len() != l.write_shapes.len() {
            return Err(bad("slots and shapes differ in number".into()));
        }
        for (s, shape) in l
            .reads
            .iter()
            .zip(&l.read_shapes)
            .chain(l.writes.iter().zip(&l.write_shapes))
        {
            if s.end() > self.arena_words {
                return Err(bad(format!(
                    "an operand ends at word {}, past the arena",
                    s.end()
                )));
            }
            // u32 operands (labels, argmax) are one word per element too.
            if s.len != shape.numel() && !l.op.is_view() {
                return Err(bad(format!("a slot of {} words holds {shape}", s.len)));
            }
        }
        if let Some(k) = l.inplace {
            if l.reads.get(k) != l.writes.first() {
                return Err(bad(format!("in-place read {k} is not output 0's slot")));
            }
        }
        for (i, w) in l.writes.iter().enumerate() {
            let inplace_pair = |k: usize| i == 0 && l.inplace == Some(k);
            let clash = l
                .reads
                .iter()
                .enumerate()
                .any(|(k, r)| r.overlaps(w) && !inplace_pair(k))
                || l.writes[i + 1..].iter().any(|o| o.overlaps(w));
            if clash && !l.op.is_view() {
                return Err(bad("an output overlaps an operand".into()));
            }
        }
        let kernel = Kernel::describe(l).map_err(|e| bad(e.to_string()))?;
        if let Some(s) =
            l.op.scalars()
                .iter()
                .find(|s| s.0 as usize >= self.scalars.len())
        {
            return Err(bad(format!(
                "scalar {} of {} ({:?})",
                s.0,
                self.scalars.len(),
                self.scalars
            )));
        }
        Ok(kernel)
    }
}
