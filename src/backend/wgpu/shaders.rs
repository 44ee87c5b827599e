//! The WGSL sources, embedded at build time (no file is read at run time).
//! Each op family is one file under `shaders/`; `common.wgsl` (bindings,
//! helpers, reductions, activations) is prepended to every family, and the
//! GEMM core `gemm.wgsl` is appended to the families built on it, followed
//! on adapters that run the team GEMM by `gemm_direct.wgsl` (which needs
//! the SUBGROUP feature, so it is a module variant of its own; naga takes
//! subgroup builtins without WGSL's `enable subgroups`, which it rejects).

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
const GEMM_DIRECT: &str = include_str!("../../../shaders/gemm_direct.wgsl");

/// The team GEMM's entry points (gemm_direct.wgsl), indexed by the
/// including family's mode: 16 rows x 32 columns per team, then 32 x 32
/// (tall), then 32 x 64 (wide, mode 0 only); and their workgroup size
/// (one team).
pub const DIRECT_ENTRIES: [&str; 7] = [
    "gemm_direct_0",
    "gemm_direct_1",
    "gemm_direct_2",
    "gemm_direct_tall_0",
    "gemm_direct_tall_1",
    "gemm_direct_tall_2",
    "gemm_direct_wide_0",
];
pub const DIRECT_WG: u32 = 8;

/// Whether an entry point lives in the subgroup variant of its module.
pub fn needs_subgroups(entry: &str) -> bool {
    DIRECT_ENTRIES.contains(&entry)
}

/// One shader module per kernel file (`shaders/<stem>.wgsl`).
pub use crate::ops::KernelFile as Family;

/// The module text of one kernel file.
fn body(f: Family) -> &'static str {
    match f {
        Family::Activation => include_str!("../../../shaders/activation.wgsl"),
        Family::Adam => include_str!("../../../shaders/adam.wgsl"),
        Family::Attention => include_str!("../../../shaders/attention.wgsl"),
        Family::Batchnorm => include_str!("../../../shaders/batchnorm.wgsl"),
        Family::BiasGrad => include_str!("../../../shaders/bias_grad.wgsl"),
        Family::Binary => include_str!("../../../shaders/binary.wgsl"),
        Family::Conv2d => include_str!("../../../shaders/conv2d.wgsl"),
        Family::CrossEntropy => include_str!("../../../shaders/cross_entropy.wgsl"),
        Family::Dropout => include_str!("../../../shaders/dropout.wgsl"),
        Family::Elementwise => include_str!("../../../shaders/elementwise.wgsl"),
        Family::Embedding => include_str!("../../../shaders/embedding.wgsl"),
        Family::LayerNorm => include_str!("../../../shaders/layer_norm.wgsl"),
        Family::Matmul => include_str!("../../../shaders/matmul.wgsl"),
        Family::Pool => include_str!("../../../shaders/pool.wgsl"),
        Family::Reduce => include_str!("../../../shaders/reduce.wgsl"),
        Family::Sgd => include_str!("../../../shaders/sgd.wgsl"),
        Family::Softmax => include_str!("../../../shaders/softmax.wgsl"),
        Family::Shape => include_str!("../../../shaders/shape.wgsl"),
    }
}

/// Every entry point the launch table may ask of a kernel file.
pub fn entry_points(f: Family) -> &'static [&'static str] {
    match f {
        Family::Activation => &["act_forward", "act_backward"],
        Family::Adam => &["adam_update"],
        Family::Attention => &[
            "attention_forward",
            "attention_backward_q",
            "attention_backward_kv",
        ],
        Family::Batchnorm => &[
            "batchnorm2d_train",
            "batchnorm2d_infer",
            "batchnorm2d_backward",
        ],
        Family::BiasGrad => &["act_backward_bias"],
        Family::Binary => &["binary", "fill", "scale"],
        Family::Conv2d => &[
            "conv2d_forward",
            "conv2d_forward_reduce",
            "conv2d_grad_input",
            "conv2d_grad_input_reduce",
            "conv2d_grad_weight",
            "conv2d_grad_weight_reduce",
            "conv2d_grad_bias",
        ],
        Family::CrossEntropy => &["cross_entropy", "cross_entropy_backward"],
        Family::Dropout => &["dropout"],
        Family::Elementwise => &["elementwise"],
        Family::Embedding => &["embedding_forward", "embedding_backward"],
        Family::LayerNorm => &[
            "layer_norm_forward",
            "layer_norm_backward_dx",
            "layer_norm_backward_params",
        ],
        Family::Matmul => &["matmul", "gemm_splitk_reduce"],
        Family::Pool => &[
            "maxpool2d_forward",
            "maxpool2d_backward",
            "avgpool2d_forward",
            "avgpool2d_backward",
            "global_avgpool_forward",
            "global_avgpool_backward",
            "masked_mean_pool_forward",
            "masked_mean_pool_backward",
        ],
        Family::Reduce => &["sum_to", "sum_to_serial", "broadcast_to", "clip_grad_norm"],
        Family::Sgd => &["sgd_update"],
        Family::Softmax => &["softmax", "softmax_backward"],
        Family::Shape => &["transpose", "copy_rows"],
    }
}

/// Threads per workgroup the launch table assumes for a family's entry
/// points: `launch::WG`, except attention's one query row per thread in
/// workgroups of `launch::ATTENTION_ROWS`.
pub fn workgroup_size(f: Family) -> u32 {
    match f {
        Family::Attention => super::launch::ATTENTION_ROWS as u32,
        _ => super::launch::WG as u32,
    }
}

/// The complete module source of a kernel file: prelude, family, and the
/// GEMM core where the family builds on it (with the team GEMM if
/// `direct`).
pub fn source(f: Family, direct: bool) -> String {
    let gemm = matches!(f, Family::Matmul | Family::Conv2d);
    let direct = direct && gemm;
    let mut s =
        String::with_capacity(COMMON.len() + body(f).len() + GEMM.len() + GEMM_DIRECT.len() + 128);
    s.push_str(COMMON);
    s.push_str("\n// ---- shaders/");
    s.push_str(f.name());
    s.push_str(".wgsl\n");
    s.push_str(body(f));
    if gemm {
        s.push_str("\n// ---- shaders/gemm.wgsl\n");
        s.push_str(GEMM);
    }
    if direct {
        s.push_str("\n// ---- shaders/gemm_direct.wgsl\n");
        s.push_str(GEMM_DIRECT);
    }
    s
}

/// One shader module as the backend may build it, for validation without
/// an adapter.
pub struct ModuleSource {
    /// The kernel file's stem, with "+direct" for the subgroup variant.
    pub name: String,
    pub source: String,
    /// Every entry point and its workgroup size as the launch table
    /// assumes it.
    pub entries: Vec<(&'static str, u32)>,
    /// Whether it needs the SUBGROUP feature.
    pub subgroups: bool,
}

/// Every shader module the backend may build: each kernel file, and the
/// subgroup variants of the GEMM families.
pub fn shader_sources() -> Vec<ModuleSource> {
    let mut out = Vec::new();
    for f in Family::ALL {
        let entries: Vec<(&'static str, u32)> = entry_points(f)
            .iter()
            .map(|&e| (e, workgroup_size(f)))
            .collect();
        if matches!(f, Family::Matmul | Family::Conv2d) {
            let mut all = entries.clone();
            all.extend(DIRECT_ENTRIES.iter().map(|&e| (e, DIRECT_WG)));
            out.push(ModuleSource {
                name: format!("{}+direct", f.name()),
                source: source(f, true),
                entries: all,
                subgroups: true,
            });
        }
        out.push(ModuleSource {
            name: f.name().to_string(),
            source: source(f, false),
            entries,
            subgroups: false,
        });
    }
    out
}
