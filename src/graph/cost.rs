//! Estimated work of a launch: FLOPs (multiply-add = 2) and bytes moved
//! (every operand read or written once). Used by `gpurt plan` and by the
//! benchmarks to turn times into GFLOP/s and GB/s.

use crate::graph::plan::Launch;
use crate::ops::matmul::matmul_dims;
use crate::ops::Op;

pub fn bytes(l: &Launch) -> u64 {
    4 * l
        .reads
        .iter()
        .chain(&l.writes)
        .map(|s| s.len as u64)
        .sum::<u64>()
}

/// Saturating product: an estimate must never panic or wrap, whatever the
/// shapes (the planner bounds tensor sizes, not products of dimensions).
fn product(dims: &[usize]) -> u64 {
    dims.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

pub fn flops(l: &Launch) -> u64 {
    let rs = &l.read_shapes;
    let ws = &l.write_shapes;
    let out = ws.first().map_or(0, |s| s.numel() as u64);
    let conv = |sx: &crate::Shape, sw: &crate::Shape, sy: &crate::Shape| -> u64 {
        // 2 · N · Cout · OH · OW · Cin · KH · KW, whichever direction.
        product(&[
            2, sx.0[0], sw.0[0], sy.0[2], sy.0[3], sw.0[1], sw.0[2], sw.0[3],
        ])
    };
    let streaming = rs.first().map_or(out, |s| (s.numel() as u64).max(out));
    match &l.op {
        Op::MatMul { ta, tb } => matmul_dims(&rs[0], *ta, &rs[1], *tb)
            .map_or(0, |(b, m, k, n)| product(&[2, b, m, k, n])),
        Op::Linear { .. } => out.saturating_mul(2 * rs[0].last() as u64),
        // A pooled convolution computes its full-size output first.
        Op::Conv2d { p, pool: true, .. } => p
            .geom(&rs[0], &rs[1])
            .ok()
            .and_then(|g| g.out_hw())
            .map_or(0, |(oh, ow)| {
                let sy = crate::Shape(vec![rs[0].0[0], rs[1].0[0], oh, ow]);
                conv(&rs[0], &rs[1], &sy)
            }),
        Op::Conv2d { .. } => conv(&rs[0], &rs[1], &ws[0]),
        Op::Conv2dGradInput { .. } => conv(&ws[0], &rs[1], &rs[0]),
        Op::Conv2dGradWeight { .. } => conv(&rs[0], &ws[0], &rs[1]),
        Op::MaxPool2d { p } | Op::AvgPool2d { p } => {
            out.saturating_mul(product(&[p.kernel.0, p.kernel.1]))
        }
        Op::Elementwise(prog) => out.saturating_mul(prog.len() as u64),
        // QKᵀ and PV: 4·B·H·T²·d (the mask halves nothing here); backward
        // recomputes QKᵀ and runs four products: 2.5x.
        Op::Attention { .. } => product(&[4, rs[0].0[0], rs[0].0[1], rs[0].0[1], rs[0].0[2] / 3]),
        Op::AttentionBackward { .. } => {
            product(&[10, rs[0].0[0], rs[0].0[1], rs[0].0[1], rs[0].0[2] / 3])
        }
        Op::SgdUpdate(_) | Op::AdamUpdate(_) => {
            10 * (l.writes.iter().map(|s| s.len as u64).sum::<u64>() / 3)
        }
        Op::Softmax | Op::LogSoftmax | Op::CrossEntropy | Op::CrossEntropyBackward { .. } => {
            4 * rs[0].numel() as u64
        }
        // The rest stream their operands once: about one operation per
        // element of the larger side.
        Op::Conv2dGradBias | Op::ActBackwardBias { .. } | Op::ClipGradNorm { .. } => streaming,
        Op::MaxPool2dBackward { .. } | Op::AvgPool2dBackward { .. } => streaming,
        Op::GlobalAvgPool | Op::GlobalAvgPoolBackward => streaming,
        Op::MaskedMeanPool | Op::MaskedMeanPoolBackward => streaming,
        Op::Embedding | Op::EmbeddingBackward { .. } | Op::Dropout { .. } => streaming,
        Op::LayerNorm { .. } | Op::LayerNormBackward => streaming,
        Op::BatchNorm2d { .. } | Op::BatchNorm2dBackward { .. } => streaming,
        Op::Act(_) | Op::ActBackward(_) | Op::Binary(_) | Op::Scale(_) | Op::Fill(_) => streaming,
        Op::SumTo | Op::BroadcastTo | Op::SoftmaxBackward | Op::LogSoftmaxBackward => streaming,
        Op::Reshape | Op::Transpose { .. } | Op::Concat { .. } | Op::Slice { .. } => streaming,
        Op::Store => streaming,
    }
}
