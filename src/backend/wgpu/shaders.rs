//! The WGSL sources, embedded at build time (no file is read at run time).
//! Each op family is one file under `shaders/`; `common.wgsl` (bindings,
//! helpers, reductions, activations) is prepended to every family, and the
//! GEMM core `gemm.wgsl` is appended to the families built on it.

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");

/// One shader module: a file under `shaders/` and its entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Activation,
    Adam,
    Batchnorm,
    BiasGrad,
    Binary,
    Conv2d,
    CrossEntropy,
    Dropout,
    Elementwise,
    Fill,
    Matmul,
    Pool,
    Reduce,
    Sgd,
    Softmax,
    Transpose,
}

impl Family {
    pub const ALL: [Family; 16] = [
        Family::Activation,
        Family::Adam,
        Family::Batchnorm,
        Family::BiasGrad,
        Family::Binary,
        Family::Conv2d,
        Family::CrossEntropy,
        Family::Dropout,
        Family::Elementwise,
        Family::Fill,
        Family::Matmul,
        Family::Pool,
        Family::Reduce,
        Family::Sgd,
        Family::Softmax,
        Family::Transpose,
    ];

    /// The file stem under `shaders/`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Activation => "activation",
            Family::Adam => "adam",
            Family::Batchnorm => "batchnorm",
            Family::BiasGrad => "bias_grad",
            Family::Binary => "binary",
            Family::Conv2d => "conv2d",
            Family::CrossEntropy => "cross_entropy",
            Family::Dropout => "dropout",
            Family::Elementwise => "elementwise",
            Family::Fill => "fill",
            Family::Matmul => "matmul",
            Family::Pool => "pool",
            Family::Reduce => "reduce",
            Family::Sgd => "sgd",
            Family::Softmax => "softmax",
            Family::Transpose => "transpose",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Family::Activation => include_str!("../../../shaders/activation.wgsl"),
            Family::Adam => include_str!("../../../shaders/adam.wgsl"),
            Family::Batchnorm => include_str!("../../../shaders/batchnorm.wgsl"),
            Family::BiasGrad => include_str!("../../../shaders/bias_grad.wgsl"),
            Family::Binary => include_str!("../../../shaders/binary.wgsl"),
            Family::Conv2d => include_str!("../../../shaders/conv2d.wgsl"),
            Family::CrossEntropy => include_str!("../../../shaders/cross_entropy.wgsl"),
            Family::Dropout => include_str!("../../../shaders/dropout.wgsl"),
            Family::Elementwise => include_str!("../../../shaders/elementwise.wgsl"),
            Family::Fill => include_str!("../../../shaders/fill.wgsl"),
            Family::Matmul => include_str!("../../../shaders/matmul.wgsl"),
            Family::Pool => include_str!("../../../shaders/pool.wgsl"),
            Family::Reduce => include_str!("../../../shaders/reduce.wgsl"),
            Family::Sgd => include_str!("../../../shaders/sgd.wgsl"),
            Family::Softmax => include_str!("../../../shaders/softmax.wgsl"),
            Family::Transpose => include_str!("../../../shaders/transpose.wgsl"),
        }
    }

    /// Every entry point the launch table may ask of this family.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            Family::Activation => &["forward", "backward"],
            Family::Adam => &["adam"],
            Family::Batchnorm => &["train", "infer", "backward"],
            Family::BiasGrad => &["act_backward_bias"],
            Family::Binary => &["binary"],
            Family::Conv2d => &[
                "forward",
                "forward_reduce",
                "grad_input",
                "grad_input_reduce",
                "grad_weight",
                "grad_weight_reduce",
                "grad_bias",
            ],
            Family::CrossEntropy => &["forward", "backward"],
            Family::Dropout => &["dropout"],
            Family::Elementwise => &["elementwise"],
            Family::Fill => &["fill", "scale"],
            Family::Matmul => &["tiled", "splitk_reduce"],
            Family::Pool => &[
                "max_forward",
                "max_backward",
                "avg_forward",
                "avg_backward",
                "global_avg_forward",
                "global_avg_backward",
            ],
            Family::Reduce => &["sum_to", "sum_to_serial", "broadcast_to"],
            Family::Sgd => &["sgd"],
            Family::Softmax => &["forward", "backward"],
            Family::Transpose => &["transpose"],
        }
    }

    /// The complete module source: prelude, family, and the GEMM core
    /// where the family builds on it.
    pub fn source(self) -> String {
        let gemm = matches!(self, Family::Matmul | Family::Conv2d);
        let mut s = String::with_capacity(COMMON.len() + self.body().len() + GEMM.len() + 64);
        s.push_str(COMMON);
        s.push_str("\n// ---- shaders/");
        s.push_str(self.name());
        s.push_str(".wgsl\n");
        s.push_str(self.body());
        if gemm {
            s.push_str("\n// ---- shaders/gemm.wgsl\n");
            s.push_str(GEMM);
        }
        s
    }
}

/// Every shader module as the backend builds it: (file stem, full source,
/// entry points), for validation without an adapter.
pub fn shader_sources() -> Vec<(&'static str, String, &'static [&'static str])> {
    Family::ALL
        .iter()
        .map(|f| (f.name(), f.source(), f.entry_points()))
        .collect()
}
