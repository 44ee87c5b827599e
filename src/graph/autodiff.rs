//! Reverse-mode autodiff over the graph: from a scalar loss, append the
//! nodes that compute the gradient of each requested value. Each op's rule
//! lives in its own file under `ops/`; this file only walks the graph and
//! sums gradients where a value feeds several consumers.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::{self, Op};
use std::collections::HashMap;

/// Gradients of `loss` (a one-element value) with respect to `wrt`, in the
/// same order. A value the loss does not depend on gets a zero gradient.
pub fn gradients(g: &mut Graph, loss: ValueId, wrt: &[ValueId]) -> Result<Vec<ValueId>> {
    if g.shape(loss).numel() != 1 {
        return Err(Error::shape(
            "gradients",
            format!("loss must be a scalar, got {}", g.shape(loss)),
        ));
    }
    let seed = g.fill(g.shape(loss).clone(), 1.0)?;
    vjp(g, &[(loss, seed)], wrt)
}

/// Vector-Jacobian products: the gradients with respect to `wrt` of
/// `Σ ⟨output, seed⟩` over the `(output, seed)` pairs, where each seed is a
/// value of its output's shape (an input the caller feeds, for instance:
/// the gradient arriving from a model this graph is part of). With one
/// scalar output seeded with 1 this is [`gradients`].
pub fn vjp(g: &mut Graph, seeds: &[(ValueId, ValueId)], wrt: &[ValueId]) -> Result<Vec<ValueId>> {
    for &(out, seed) in seeds {
        if g.shape(out) != g.shape(seed) {
            return Err(Error::shape(
                "vjp",
                format!(
                    "the seed for an output of shape {} has shape {}",
                    g.shape(out),
                    g.shape(seed)
                ),
            ));
        }
    }
    // Forward pass: which values depend on something we differentiate.
    let mut depends = vec![false; g.values.len()];
    for &w in wrt {
        depends[w.0 as usize] = true;
    }
    let n_fwd = g.nodes.len();
    for node in &g.nodes[..n_fwd] {
        if node.inputs.iter().any(|v| depends[v.0 as usize]) {
            for o in &node.outputs {
                depends[o.0 as usize] = true;
            }
        }
    }

    let mut grads: HashMap<ValueId, ValueId> = HashMap::new();
    for &(out, seed) in seeds {
        let acc = match grads.get(&out) {
            Some(&prev) => g.add(prev, seed)?,
            None => seed,
        };
        grads.insert(out, acc);
    }

    for ni in (0..n_fwd).rev() {
        let node = g.nodes[ni].clone();
        if !node.inputs.iter().any(|v| depends[v.0 as usize]) {
            continue;
        }
        let dys: Vec<Option<ValueId>> =
            node.outputs.iter().map(|o| grads.get(o).copied()).collect();
        let Some(dy) = dys.first().copied().flatten() else {
            continue;
        };
        let din = rule(g, &node.op, &node.inputs, &node.outputs, dy)?;
        for (&input, d) in node.inputs.iter().zip(din) {
            let Some(d) = d else { continue };
            if !depends[input.0 as usize] {
                continue;
            }
            let acc = match grads.get(&input) {
                Some(&prev) => g.add(prev, d)?,
                None => d,
            };
            grads.insert(input, acc);
        }
    }

    wrt.iter()
        .map(|w| match grads.get(w) {
            Some(&d) => Ok(d),
            None => g.fill(g.shape(*w).clone(), 0.0),
        })
        .collect()
}

/// One op's gradient rule: gradients for each input (None where an input
/// has none, e.g. labels or saved indices).
fn rule(
    g: &mut Graph,
    op: &Op,
    inputs: &[ValueId],
    outputs: &[ValueId],
    dy: ValueId,
) -> Result<Vec<Option<ValueId>>> {
    let x = inputs.first().copied();
    let one = |v: ValueId| Ok(vec![Some(v)]);
    match op {
        Op::MatMul { ta, tb } => {
            Ok(ops::matmul::backward(g, *ta, *tb, inputs[0], inputs[1], dy)?.to_vec())
        }
        Op::Linear { act, .. } => ops::linear::backward(g, *act, inputs, outputs[0], dy),
        Op::Conv2d {
            p,
            act,
            residual: false,
            pool: false,
        } => ops::conv2d::backward(g, *p, *act, inputs, outputs[0], dy),
        Op::Conv2d { pool: true, .. } => Err(Error::shape(
            "gradients",
            "a conv2d with a fused max pool has no gradient rule: it is an inference kernel"
                .to_string(),
        )),
        Op::ClipGradNorm { .. } => Err(Error::shape(
            "gradients",
            "clip_grad_norm is an optimiser step and has no gradient rule".to_string(),
        )),
        Op::Conv2d { residual: true, .. } => Err(Error::shape(
            "gradients",
            "a fused conv2d residual epilogue has no gradient rule: differentiate before fusing"
                .to_string(),
        )),
        Op::MaxPool2d { .. } | Op::AvgPool2d { .. } | Op::GlobalAvgPool => {
            one(ops::pool::backward(g, op, inputs[0], None, outputs, dy)?)
        }
        Op::MaskedMeanPool => Ok(vec![
            Some(ops::pool::backward(
                g,
                op,
                inputs[0],
                Some(inputs[1]),
                outputs,
                dy,
            )?),
            None,
        ]),
        Op::Embedding => Ok(vec![
            Some(ops::embedding::backward(g, inputs[0], inputs[1], dy)?),
            None,
        ]),
        Op::LayerNorm {
            residual: false, ..
        } => ops::layer_norm::backward(g, inputs, outputs, dy),
        Op::LayerNorm { residual: true, .. } => Err(Error::shape(
            "gradients",
            "a fused residual layer norm has no gradient rule: differentiate before fusing"
                .to_string(),
        )),
        Op::Attention { heads } => Ok(vec![
            Some(ops::attention::backward(g, *heads, inputs, outputs, dy)?),
            None,
        ]),
        Op::Act(a) => one(ops::activation::backward(g, *a, inputs[0], outputs[0], dy)?),
        Op::Binary(k) => Ok(ops::binary::backward(g, *k, inputs[0], inputs[1], dy)?.to_vec()),
        Op::Scale(a) => one(g.scale(dy, *a)?),
        Op::Fill(_) => Ok(vec![]),
        Op::SumTo => one(ops::reduce::sum_to_backward(g, inputs[0], dy)?),
        Op::BroadcastTo => one(ops::reduce::broadcast_to_backward(g, inputs[0], dy)?),
        Op::Reshape => one(ops::shape::reshape_backward(g, inputs[0], dy)?),
        Op::Transpose { perm } => one(ops::shape::transpose_backward(g, perm, dy)?),
        Op::Concat { axis } => ops::shape::concat_backward(g, *axis, inputs, dy),
        Op::Slice { axis, start } => {
            one(ops::shape::slice_backward(g, *axis, *start, inputs[0], dy)?)
        }
        Op::Softmax => one(ops::softmax::backward(g, false, outputs[0], dy)?),
        Op::LogSoftmax => one(ops::softmax::backward(g, true, outputs[0], dy)?),
        Op::CrossEntropy => Ok(vec![
            Some(ops::cross_entropy::backward(g, inputs[0], inputs[1], dy)?),
            None,
        ]),
        Op::Dropout { p, seed, step } => {
            let s = g.shape(dy).clone();
            one(g.push1(
                Op::Dropout {
                    p: *p,
                    seed: *seed,
                    step: *step,
                },
                vec![dy],
                s,
            )?)
        }
        Op::BatchNorm2d {
            training: true,
            act: None,
            residual: false,
            ..
        } => ops::batchnorm::backward(g, inputs, outputs, dy),
        Op::Conv2dGradInput { .. }
        | Op::Conv2dGradWeight { .. }
        | Op::Conv2dGradBias
        | Op::MaxPool2dBackward { .. }
        | Op::AvgPool2dBackward { .. }
        | Op::GlobalAvgPoolBackward
        | Op::MaskedMeanPoolBackward
        | Op::EmbeddingBackward { .. }
        | Op::AttentionBackward { .. }
        | Op::LayerNormBackward
        | Op::ActBackward(_)
        | Op::SoftmaxBackward
        | Op::LogSoftmaxBackward
        | Op::CrossEntropyBackward { .. }
        | Op::ActBackwardBias { .. }
        | Op::Elementwise(_)
        | Op::BatchNorm2dBackward { .. }
        | Op::SgdUpdate(_)
        | Op::AdamUpdate(_)
        | Op::Store
        | Op::BatchNorm2d { .. } => Err(Error::Usage(format!(
            "no gradient rule for {} (input {:?})",
            op.kernel_name(),
            x.map(|v| g.shape(v).clone())
        ))),
    }
}
