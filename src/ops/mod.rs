//! The op set. Each op family lives in one file with its shape rule (a
//! builder method on [`Graph`]), its gradient rule and its geometry types;
//! its kernels carry the same name ([`KernelFile`]) under
//! `src/backend/cpu/`, `kernels/` and `shaders/`.
//!
//! [`Op`] is the launch-level vocabulary: every node of a compiled step is
//! one of these, and every backend implements each of them.

pub mod activation;
pub mod adam;
pub mod attention;
pub mod batchnorm;
pub mod binary;
pub mod conv2d;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod pool;
pub mod reduce;
pub mod sgd;
pub mod shape;
pub mod softmax;

use crate::graph::ir::ScalarId;

pub use activation::Activation;
pub use binary::BinaryKind;
pub use conv2d::ConvParams;
pub use pool::PoolParams;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `op(a) · op(b)`, 2-D or batched with equal batch dims.
    MatMul {
        ta: bool,
        tb: bool,
    },
    /// `x · wᵀ (+ b)`, then an optional activation (fused epilogue).
    Linear {
        bias: bool,
        act: Option<Activation>,
    },
    /// NCHW convolution (+ bias) (+ a residual of the output's shape, the
    /// last input), then an optional activation, then (`pool`) a 2×2,
    /// stride-2 max pool whose output is the op's. The residual and the
    /// pool are only fused in (`graph::fuse`), never built directly; the
    /// pool only where the backend asks for it ([`FuseExtras`]), and only
    /// where nothing reads the pool's indices (inference).
    ///
    /// [`FuseExtras`]: crate::graph::fuse::FuseExtras
    Conv2d {
        p: ConvParams,
        act: Option<Activation>,
        residual: bool,
        pool: bool,
    },
    Conv2dGradInput {
        p: ConvParams,
    },
    Conv2dGradWeight {
        p: ConvParams,
    },
    Conv2dGradBias,
    /// Outputs: y and the argmax (u32, flat index within each h×w plane).
    MaxPool2d {
        p: PoolParams,
    },
    MaxPool2dBackward {
        p: PoolParams,
    },
    AvgPool2d {
        p: PoolParams,
    },
    AvgPool2dBackward {
        p: PoolParams,
    },
    GlobalAvgPool,
    GlobalAvgPoolBackward,
    /// Inputs (x [B,T,D], lengths u32 [B]) -> the mean of each sequence's
    /// first `lengths[b]` rows, `[B,D]`.
    MaskedMeanPool,
    /// Inputs (dy [B,D], lengths) -> dx [B,T,D].
    MaskedMeanPoolBackward,
    /// Inputs (weight [V,D], ids u32) -> the rows of `ids`.
    Embedding,
    /// Inputs (ids, dy) -> dweight [vocab, D], a deterministic scatter-add.
    EmbeddingBackward {
        vocab: usize,
    },
    /// Inputs (x [.., n], weight [n], bias [n]) -> (y, mean [rows],
    /// rstd [rows]): `nn.LayerNorm` over the last axis. With `residual`
    /// (set only by fusion) it reads a fourth input `r`, normalises
    /// `x + r` and also writes that sum (the residual stream).
    LayerNorm {
        eps: f32,
        residual: bool,
    },
    /// Inputs (x, weight, mean, rstd, dy) -> (dx, dweight, dbias).
    LayerNormBackward,
    /// Inputs (qkv [B,T,3D], lengths u32 [B]) -> (out [B,T,D], lse [B,H,T]):
    /// fused multi-head attention with a padding mask (`ops/attention.rs`).
    Attention {
        heads: usize,
    },
    /// Inputs (qkv, lengths, out, lse, dout) -> dqkv.
    AttentionBackward {
        heads: usize,
    },
    /// Elementwise activation.
    Act(Activation),
    /// Inputs (saved, dy): saved is y for relu/sigmoid/tanh, x for gelu.
    ActBackward(Activation),
    /// NumPy-broadcasting elementwise binary op.
    Binary(BinaryKind),
    /// `x * alpha`.
    Scale(f32),
    /// A constant-filled tensor (seeds the loss gradient).
    Fill(f32),
    /// Sum a broadcast tensor back down to the output's shape.
    SumTo,
    /// Expand to the output's shape (NumPy broadcasting).
    BroadcastTo,
    /// A view with a new shape; no launch, no copy.
    Reshape,
    /// Permute axes (a copy).
    Transpose {
        perm: Vec<usize>,
    },
    /// Inputs (x), mutates (a persistent value of x's size): copies x
    /// there. How a training step leaves its gradients in one persistent
    /// region for a data-parallel all-reduce (`Graph::store`).
    Store,
    /// Join the inputs along `axis`.
    Concat {
        axis: usize,
    },
    /// A block of `axis` from `start`, as long as the output's.
    Slice {
        axis: usize,
        start: usize,
    },
    Softmax,
    LogSoftmax,
    /// Inputs (y, dy).
    SoftmaxBackward,
    /// Inputs (y, dy) where y = log_softmax(x).
    LogSoftmaxBackward,
    /// Inputs (logits [B,C], labels u32 [B]) -> mean loss [].
    CrossEntropy,
    /// Inputs (logits, labels, dloss []) -> dlogits; with `dloss` set, the
    /// loss gradient is that constant and there is no third input.
    CrossEntropyBackward {
        dloss: Option<f32>,
    },
    /// Fused: inputs (saved, dy) -> (act'(saved)·dy, its sum per channel
    /// `axis`), for the bias gradient of the layer below.
    ActBackwardBias {
        act: Activation,
        axis: usize,
    },
    /// Fused chain of elementwise ops (a stack program over its inputs).
    Elementwise(Vec<elementwise::EwInstr>),
    /// Inverted dropout; the mask is a hash of (seed, step, index), so it
    /// is recomputed in backward instead of stored.
    /// Its own gradient: the same mask applied to dy.
    Dropout {
        p: f32,
        seed: u32,
        step: ScalarId,
    },
    /// Training: inputs (x, gamma, beta [, residual]), outputs (y, mean,
    /// invstd), mutates (running_mean, running_var), with
    /// `y = act(bn(x) [+ residual])`: the epilogue is only ever set by
    /// fusion. Inference: inputs (x, gamma, beta, running_mean,
    /// running_var), output y, no epilogue.
    BatchNorm2d {
        eps: f32,
        momentum: f32,
        training: bool,
        act: Option<Activation>,
        residual: bool,
    },
    /// Inputs (x, gamma, mean, invstd, dy [, saved]) -> (dx, dgamma, dbeta).
    /// With `act` (set by fusion) the incoming gradient is `act'(saved)·dy`:
    /// the activation's backward runs inside this kernel.
    BatchNorm2dBackward {
        act: Option<Activation>,
    },
    /// Inputs (grad...) -> (clipped grad...): every gradient scaled by
    /// `min(1, max_norm / ‖all gradients‖)` in one launch (PyTorch's
    /// `clip_grad_norm_`).
    ClipGradNorm {
        max_norm: f32,
    },
    /// Inputs (grad...), mutates (param, velocity) per tensor.
    SgdUpdate(sgd::SgdConfig),
    /// Inputs (grad...), mutates (param, m, v) per tensor.
    AdamUpdate(adam::AdamConfig),
}

/// The kernel files: one stem names an op family's CPU kernels
/// (`src/backend/cpu/<stem>.rs`), its CUDA kernels (`kernels/<stem>.cu`)
/// and its WGSL shaders (`shaders/<stem>.wgsl`); `tests` check that each
/// file exists under every backend. Op definitions live in
/// `src/ops/<stem>.rs` where the family has its own builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Activation,
    Adam,
    Attention,
    Batchnorm,
    BiasGrad,
    Binary,
    Conv2d,
    CrossEntropy,
    Dropout,
    Elementwise,
    Embedding,
    LayerNorm,
    Matmul,
    Pool,
    Reduce,
    Sgd,
    Shape,
    Softmax,
}

impl KernelFile {
    pub const ALL: [KernelFile; 18] = [
        KernelFile::Activation,
        KernelFile::Adam,
        KernelFile::Attention,
        KernelFile::Batchnorm,
        KernelFile::BiasGrad,
        KernelFile::Binary,
        KernelFile::Conv2d,
        KernelFile::CrossEntropy,
        KernelFile::Dropout,
        KernelFile::Elementwise,
        KernelFile::Embedding,
        KernelFile::LayerNorm,
        KernelFile::Matmul,
        KernelFile::Pool,
        KernelFile::Reduce,
        KernelFile::Sgd,
        KernelFile::Shape,
        KernelFile::Softmax,
    ];

    /// The file stem.
    pub fn name(self) -> &'static str {
        match self {
            KernelFile::Activation => "activation",
            KernelFile::Adam => "adam",
            KernelFile::Attention => "attention",
            KernelFile::Batchnorm => "batchnorm",
            KernelFile::BiasGrad => "bias_grad",
            KernelFile::Binary => "binary",
            KernelFile::Conv2d => "conv2d",
            KernelFile::CrossEntropy => "cross_entropy",
            KernelFile::Dropout => "dropout",
            KernelFile::Elementwise => "elementwise",
            KernelFile::Embedding => "embedding",
            KernelFile::LayerNorm => "layer_norm",
            KernelFile::Matmul => "matmul",
            KernelFile::Pool => "pool",
            KernelFile::Reduce => "reduce",
            KernelFile::Sgd => "sgd",
            KernelFile::Shape => "shape",
            KernelFile::Softmax => "softmax",
        }
    }
}

impl Op {
    /// The file that holds this op's kernels on every backend. Reshape has
    /// none (it is a view); it reports `Shape`.
    pub fn kernel_file(&self) -> KernelFile {
        match self {
            Op::MatMul { .. } | Op::Linear { .. } => KernelFile::Matmul,
            Op::Conv2d { .. }
            | Op::Conv2dGradInput { .. }
            | Op::Conv2dGradWeight { .. }
            | Op::Conv2dGradBias => KernelFile::Conv2d,
            Op::MaxPool2d { .. }
            | Op::MaxPool2dBackward { .. }
            | Op::AvgPool2d { .. }
            | Op::AvgPool2dBackward { .. }
            | Op::GlobalAvgPool
            | Op::GlobalAvgPoolBackward
            | Op::MaskedMeanPool
            | Op::MaskedMeanPoolBackward => KernelFile::Pool,
            Op::Embedding | Op::EmbeddingBackward { .. } => KernelFile::Embedding,
            Op::LayerNorm { .. } | Op::LayerNormBackward => KernelFile::LayerNorm,
            Op::Attention { .. } | Op::AttentionBackward { .. } => KernelFile::Attention,
            Op::Act(_) | Op::ActBackward(_) => KernelFile::Activation,
            Op::Binary(_) | Op::Scale(_) | Op::Fill(_) => KernelFile::Binary,
            Op::SumTo | Op::BroadcastTo | Op::ClipGradNorm { .. } => KernelFile::Reduce,
            Op::Reshape
            | Op::Transpose { .. }
            | Op::Store
            | Op::Concat { .. }
            | Op::Slice { .. } => KernelFile::Shape,
            Op::Softmax | Op::LogSoftmax | Op::SoftmaxBackward | Op::LogSoftmaxBackward => {
                KernelFile::Softmax
            }
            Op::CrossEntropy | Op::CrossEntropyBackward { .. } => KernelFile::CrossEntropy,
            Op::ActBackwardBias { .. } => KernelFile::BiasGrad,
            Op::Elementwise(_) => KernelFile::Elementwise,
            Op::Dropout { .. } => KernelFile::Dropout,
            Op::BatchNorm2d { .. } | Op::BatchNorm2dBackward { .. } => KernelFile::Batchnorm,
            Op::SgdUpdate(_) => KernelFile::Sgd,
            Op::AdamUpdate(_) => KernelFile::Adam,
        }
    }

    /// The launch's name in profiles, errors and fusion reports, the same
    /// on every backend (the file is [`Op::kernel_file`]).
    pub fn kernel_name(&self) -> &'static str {
        match self {
            Op::MatMul { .. } => "matmul",
            Op::Linear { .. } => "linear",
            Op::Conv2d { .. } => "conv2d_forward",
            Op::Conv2dGradInput { .. } => "conv2d_grad_input",
            Op::Conv2dGradWeight { .. } => "conv2d_grad_weight",
            Op::Conv2dGradBias => "conv2d_grad_bias",
            Op::MaxPool2d { .. } => "maxpool2d_forward",
            Op::MaxPool2dBackward { .. } => "maxpool2d_backward",
            Op::AvgPool2d { .. } => "avgpool2d_forward",
            Op::AvgPool2dBackward { .. } => "avgpool2d_backward",
            Op::GlobalAvgPool => "global_avgpool_forward",
            Op::GlobalAvgPoolBackward => "global_avgpool_backward",
            Op::MaskedMeanPool => "masked_mean_pool_forward",
            Op::MaskedMeanPoolBackward => "masked_mean_pool_backward",
            Op::Embedding => "embedding_forward",
            Op::EmbeddingBackward { .. } => "embedding_backward",
            Op::LayerNorm { .. } => "layer_norm_forward",
            Op::LayerNormBackward => "layer_norm_backward",
            Op::Attention { .. } => "attention_forward",
            Op::AttentionBackward { .. } => "attention_backward",
            Op::Act(a) => a.name(),
            Op::ActBackward(a) => a.backward_name(),
            Op::Binary(b) => b.name(),
            Op::Scale(_) => "scale",
            Op::Fill(_) => "fill",
            Op::SumTo => "sum_to",
            Op::BroadcastTo => "broadcast_to",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Store => "store",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Softmax => "softmax",
            Op::LogSoftmax => "log_softmax",
            Op::SoftmaxBackward => "softmax_backward",
            Op::LogSoftmaxBackward => "log_softmax_backward",
            Op::CrossEntropy => "cross_entropy",
            Op::CrossEntropyBackward { .. } => "cross_entropy_backward",
            Op::ActBackwardBias { .. } => "act_backward_bias",
            Op::Elementwise(_) => "elementwise",
            Op::Dropout { .. } => "dropout",
            Op::BatchNorm2d { training: true, .. } => "batchnorm2d_train",
            Op::BatchNorm2d {
                training: false, ..
            } => "batchnorm2d_infer",
            Op::BatchNorm2dBackward { .. } => "batchnorm2d_backward",
            Op::ClipGradNorm { .. } => "clip_grad_norm",
            Op::SgdUpdate(_) => "sgd_update",
            Op::AdamUpdate(c) if c.decoupled => "adamw_update",
            Op::AdamUpdate(_) => "adam_update",
        }
    }

    /// Reads that output 0 may overwrite in place (elementwise ops whose
    /// kernels read each element before writing it). Any other op writes
    /// fresh memory, the safe default, so a new op needs no entry here.
    pub fn inplace_candidates(&self) -> &'static [usize] {
        match self {
            Op::Act(_) | Op::Scale(_) | Op::Dropout { .. } => &[0],
            Op::ActBackward(_) | Op::ActBackwardBias { .. } => &[1],
            Op::Binary(_) => &[0, 1],
            Op::Elementwise(_) => &[0, 1, 2, 3, 4, 5],
            _ => &[],
        }
    }

    /// The run-time scalars (learning rate, step counter) this op reads.
    pub fn scalars(&self) -> Vec<ScalarId> {
        self.clone().scalars_mut().into_iter().map(|s| *s).collect()
    }

    /// The same op with each scalar `s` it reads replaced by `map(s)`
    /// (when graphs with their own scalar tables join one module).
    pub fn with_scalars(&self, map: impl Fn(ScalarId) -> ScalarId) -> Op {
        let mut op = self.clone();
        for s in op.scalars_mut() {
            *s = map(*s);
        }
        op
    }

    /// Exhaustive: an op that reads a scalar and is missing here would
    /// read another graph's scalar once modules are joined.
    fn scalars_mut(&mut self) -> Vec<&mut ScalarId> {
        match self {
            Op::Dropout { step, .. } => vec![step],
            Op::SgdUpdate(c) => vec![&mut c.lr],
            Op::AdamUpdate(c) => vec![&mut c.lr, &mut c.step],
            // The rest read none; one family a line.
            Op::MatMul { .. } | Op::Linear { .. } => vec![],
            Op::Conv2d { .. } | Op::Conv2dGradInput { .. } | Op::Conv2dGradWeight { .. } => vec![],
            Op::Conv2dGradBias | Op::ActBackwardBias { .. } => vec![],
            Op::MaxPool2d { .. } | Op::MaxPool2dBackward { .. } => vec![],
            Op::AvgPool2d { .. } | Op::AvgPool2dBackward { .. } => vec![],
            Op::GlobalAvgPool | Op::GlobalAvgPoolBackward => vec![],
            Op::MaskedMeanPool | Op::MaskedMeanPoolBackward => vec![],
            Op::Embedding | Op::EmbeddingBackward { .. } => vec![],
            Op::Attention { .. } | Op::AttentionBackward { .. } => vec![],
            Op::LayerNorm { .. } | Op::LayerNormBackward => vec![],
            Op::Act(_) | Op::ActBackward(_) | Op::Elementwise(_) => vec![],
            Op::Binary(_) | Op::Scale(_) | Op::Fill(_) => vec![],
            Op::SumTo | Op::BroadcastTo | Op::ClipGradNorm { .. } => vec![],
            Op::Reshape | Op::Transpose { .. } | Op::Concat { .. } | Op::Slice { .. } => vec![],
            Op::Store => vec![],
            Op::Softmax | Op::LogSoftmax | Op::SoftmaxBackward | Op::LogSoftmaxBackward => vec![],
            Op::CrossEntropy | Op::CrossEntropyBackward { .. } => vec![],
            Op::BatchNorm2d { .. } | Op::BatchNorm2dBackward { .. } => vec![],
        }
    }

    /// Ops that launch nothing: their outputs alias their first input.
    pub fn is_view(&self) -> bool {
        matches!(self, Op::Reshape)
    }
}

#[cfg(test)]
mod tests {
    use super::KernelFile;

    /// Every kernel file exists under every backend, and the CUDA module
    /// list is this table.
    #[test]
    fn every_kernel_file_exists_on_every_backend() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for k in KernelFile::ALL {
            for path in [
                format!("src/backend/cpu/{}.rs", k.name()),
                format!("kernels/{}.cu", k.name()),
                format!("kernels/{}.ptx", k.name()),
                format!("shaders/{}.wgsl", k.name()),
            ] {
                assert!(root.join(&path).is_file(), "{path} is missing");
            }
        }
        #[cfg(feature = "cuda")]
        {
            let ptx: Vec<_> = crate::backend::cuda::ptx::FILES
                .iter()
                .map(|f| f.name)
                .collect();
            let table: Vec<_> = KernelFile::ALL.iter().map(|k| k.name()).collect();
            assert_eq!(ptx, table);
        }
    }
}
