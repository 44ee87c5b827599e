//! Fusion: rewrite rules over the step graph, applied after autodiff and
//! before lowering, in this fixed order:
//!
//! 1. `constant_loss_grad`: the loss gradient seed (a filled 1.0) folds into
//!    the cross-entropy backward kernel.
//! 2. `residual_epilogue`: conv2d (+ bias), or a training batch norm, whose
//!    only reader adds a tensor of the output's shape (a skip connection)
//!    adds it in its epilogue. Neither output is read by a gradient, so
//!    this applies to training steps as well as inference.
//! 3. `epilogue`: conv2d / linear / training batch norm (with or without
//!    bias and residual) followed by relu, sigmoid or tanh becomes one
//!    kernel (the activation runs on the GEMM's output tile, or on the
//!    normalised plane). Only activations whose gradient reads the output
//!    are fused, so the pre-activation never needs to exist.
//! 4. `act_backward_bn`: an activation's gradient whose only reader is a
//!    batch norm's backward is computed inside it, on the fly.
//! 5. `act_backward_bias`: the activation's gradient mask and the bias
//!    gradient of the layer below in one pass over dy.
//! 6. `elementwise_chain`: trees of elementwise ops (activations, their
//!    gradients, same-shape or scalar binary ops, scale) become one
//!    stack-program kernel.
//! 7. `multi_tensor_update`: every parameter's optimiser update becomes one
//!    launch.
//! 8. `conv_max_pool` (only for a backend that asks, [`FuseExtras`]): a
//!    convolution (+ bias, + activation) whose only reader is a 2×2,
//!    stride-2 max pool whose indices nobody reads (inference) writes the
//!    pooled output straight from its tile: the full-size output is never
//!    stored nor read back. The CPU asks for it; the GPU backends have no
//!    such kernel.
//!
//! Every rule only absorbs a value that has exactly one consumer and is not
//! a graph output, so no other node can observe the difference. A fused-
//! away node is cleared (no inputs, outputs or effects) and dropped by the
//! planner. Each application is scored by the launches and bytes it saves.

use crate::graph::ir::{Graph, Node, NodeId, ValueId};
use crate::graph::plan::live_nodes;
use crate::ops::elementwise::{max_depth, EwInstr, MAX_INPUTS, MAX_STACK};
use crate::ops::{BinaryKind, Op};

/// One application of a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Fusion {
    pub rule: &'static str,
    pub launches_saved: usize,
    /// Bytes of memory traffic saved (writes and reads of values that no
    /// longer exist).
    pub bytes_saved: u64,
    pub detail: String,
}

/// Rules that only some backends have kernels for
/// ([`crate::backend::Backend::fuse_extras`]); off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseExtras {
    /// `conv_max_pool`: `Op::Conv2d { pool: true, .. }`.
    pub conv_max_pool: bool,
}

/// Apply every rule every backend lowers once, in order; returns what was
/// fused.
pub fn fuse(g: &mut Graph) -> Vec<Fusion> {
    fuse_with(g, FuseExtras::default())
}

/// [`fuse`], plus the `extras` a backend asks for.
pub fn fuse_with(g: &mut Graph, extras: FuseExtras) -> Vec<Fusion> {
    clear_dead(g);
    let mut out = Vec::new();
    constant_loss_grad(g, &mut out);
    residual_epilogue(g, &mut out);
    residual_layer_norm(g, &mut out);
    epilogue(g, &mut out);
    act_backward_bn(g, &mut out);
    act_backward_bias(g, &mut out);
    elementwise_chain(g, &mut out);
    multi_tensor_update(g, &mut out);
    if extras.conv_max_pool {
        conv_max_pool(g, &mut out);
    }
    drop_cleared(g);
    out
}

/// Remove the nodes the rules fused away or found dead, so the graph a
/// caller gets back holds only what runs. Values they produced lose their
/// producer (nothing reads them any more).
fn drop_cleared(g: &mut Graph) {
    let mut new_id = vec![None; g.nodes.len()];
    let mut next = 0u32;
    for (i, id) in new_id.iter_mut().enumerate() {
        if !cleared(g, i) {
            *id = Some(NodeId(next));
            next += 1;
        }
    }
    let mut i = 0;
    g.nodes.retain(|_| {
        i += 1;
        new_id[i - 1].is_some()
    });
    for v in &mut g.values {
        v.producer = v.producer.and_then(|n| new_id[n.0 as usize]);
    }
}

/// Moves producer `p` into node `i`, the sole reader of p's output 0: node
/// `i` becomes `op` over `inputs`, keeps its own output 0 and takes over
/// p's other outputs and mutations (a batch norm's statistics).
fn absorb(g: &mut Graph, i: usize, p: NodeId, op: Op, inputs: Vec<ValueId>) {
    let pn = &g.nodes[p.0 as usize];
    let (extra, mutates) = (pn.outputs[1..].to_vec(), pn.mutates.clone());
    for &v in &extra {
        g.values[v.0 as usize].producer = Some(NodeId(i as u32));
    }
    let node = &mut g.nodes[i];
    node.op = op;
    node.inputs = inputs;
    node.outputs.truncate(1);
    node.outputs.extend(extra);
    node.mutates.extend(mutates);
    clear(g, p);
}

fn clear(g: &mut Graph, n: NodeId) {
    let node = &mut g.nodes[n.0 as usize];
    node.inputs.clear();
    node.outputs.clear();
    node.mutates.clear();
}

/// Whether a node was fused away or pruned.
fn cleared(g: &Graph, i: usize) -> bool {
    let n = &g.nodes[i];
    n.outputs.is_empty() && n.mutates.is_empty()
}

/// Node `i`, unless an earlier rewrite cleared it.
fn live(g: &Graph, i: usize) -> Option<NodeId> {
    (!cleared(g, i)).then_some(NodeId(i as u32))
}

fn clear_dead(g: &mut Graph) {
    let live = live_nodes(g);
    for (i, l) in live.iter().enumerate() {
        if !l {
            clear(g, NodeId(i as u32));
        }
    }
}

/// Consumers of every value (each consuming node once per use).
fn consumers(g: &Graph) -> Vec<Vec<NodeId>> {
    let mut c = vec![Vec::new(); g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for v in &n.inputs {
            c[v.0 as usize].push(NodeId(i as u32));
        }
    }
    c
}

fn bytes(g: &Graph, v: ValueId) -> u64 {
    4 * g.shape(v).numel() as u64
}

/// A value that only `user` reads and the host never sees.
fn private_to(g: &Graph, cons: &[Vec<NodeId>], v: ValueId, user: NodeId) -> bool {
    cons[v.0 as usize].len() == 1 && cons[v.0 as usize][0] == user && g.output_name(v).is_none()
}

fn producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    g.value(v)
        .producer
        .filter(|p| !g.nodes[p.0 as usize].outputs.is_empty())
}

fn constant_loss_grad(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        let Some(n) = live(g, i) else { continue };
        if g.nodes[i].op != (Op::CrossEntropyBackward { dloss: None }) {
            continue;
        }
        let seed = g.nodes[i].inputs[2];
        let Some(p) = producer(g, seed) else { continue };
        let Op::Fill(c) = g.nodes[p.0 as usize].op else {
            continue;
        };
        if !private_to(g, &cons, seed, n) {
            continue;
        }
        g.nodes[i].op = Op::CrossEntropyBackward { dloss: Some(c) };
        g.nodes[i].inputs.truncate(2);
        clear(g, p);
        out.push(Fusion {
            rule: "constant_loss_grad",
            launches_saved: 1,
            bytes_saved: 8,
            detail: "fill -> cross_entropy_backward".into(),
        });
    }
}

fn residual_epilogue(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        let Some(n) = live(g, i) else { continue };
        if g.nodes[i].op != Op::Binary(BinaryKind::Add) {
            continue;
        }
        let ins = g.nodes[i].inputs.clone();
        if g.shape(ins[0]) != g.shape(ins[1]) || ins[0] == ins[1] {
            continue;
        }
        // The first input a plain convolution or training batch norm
        // writes for this add alone.
        let with_residual = |op: &Op| match *op {
            Op::Conv2d {
                p,
                act: None,
                residual: false,
                pool: false,
            } => Some(Op::Conv2d {
                p,
                act: None,
                residual: true,
                pool: false,
            }),
            Op::BatchNorm2d {
                eps,
                momentum,
                training: true,
                act: None,
                residual: false,
            } => Some(Op::BatchNorm2d {
                eps,
                momentum,
                training: true,
                act: None,
                residual: true,
            }),
            _ => None,
        };
        let Some((prod, fused, v, other)) = [(ins[0], ins[1]), (ins[1], ins[0])]
            .into_iter()
            .find_map(|(v, other)| {
                let p = producer(g, v)?;
                let fused = with_residual(&g.nodes[p.0 as usize].op)?;
                private_to(g, &cons, v, n).then_some((p, fused, v, other))
            })
        else {
            continue;
        };
        // The producer now runs where the add was. Its reads are unchanged
        // in between: nothing mutates a value between a forward op and its
        // consumers (optimiser updates come last).
        let mut inputs = g.nodes[prod.0 as usize].inputs.clone();
        inputs.push(other);
        let detail = format!(
            "{} + add {}",
            g.nodes[prod.0 as usize].op.kernel_name(),
            g.shape(v)
        );
        absorb(g, i, prod, fused, inputs);
        out.push(Fusion {
            rule: "residual_epilogue",
            launches_saved: 1,
            bytes_saved: 2 * bytes(g, v),
            detail,
        });
    }
}

/// `s = x + r; y = layer_norm(s)` (a transformer's residual stream and
/// the next block's norm) becomes one layer norm that forms the sum,
/// writes it for its other readers and normalises it: the add's launch
/// and one pass over `s` saved. The fused node runs where the add was;
/// nothing it reads changes in between.
fn residual_layer_norm(g: &mut Graph, out: &mut Vec<Fusion>) {
    for i in 0..g.nodes.len() {
        if live(g, i).is_none() {
            continue;
        }
        let Op::LayerNorm {
            eps,
            residual: false,
        } = g.nodes[i].op
        else {
            continue;
        };
        let s = g.nodes[i].inputs[0];
        let Some(p) = producer(g, s) else { continue };
        let add = &g.nodes[p.0 as usize];
        if add.op != Op::Binary(BinaryKind::Add)
            || g.shape(add.inputs[0]) != g.shape(s)
            || g.shape(add.inputs[1]) != g.shape(s)
        {
            continue;
        }
        let (x, r) = (add.inputs[0], add.inputs[1]);
        let ln = g.nodes[i].clone();
        for &v in &ln.outputs {
            g.values[v.0 as usize].producer = Some(p);
        }
        let mut outputs = ln.outputs.clone();
        outputs.push(s);
        g.nodes[p.0 as usize] = Node {
            op: Op::LayerNorm {
                eps,
                residual: true,
            },
            inputs: vec![x, ln.inputs[1], ln.inputs[2], r],
            outputs,
            mutates: vec![],
        };
        clear(g, NodeId(i as u32));
        out.push(Fusion {
            rule: "residual_layer_norm",
            launches_saved: 1,
            bytes_saved: bytes(g, s),
            detail: format!("add + layer_norm {}", g.shape(s)),
        });
    }
}

fn epilogue(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        let Some(n) = live(g, i) else { continue };
        let Op::Act(a) = g.nodes[i].op else { continue };
        let v = g.nodes[i].inputs[0];
        let Some(p) = producer(g, v) else { continue };
        // The pre-activation must be read by the activation alone. In a
        // training step GELU's gradient reads it too, so only relu,
        // sigmoid and tanh (whose gradients read the output) fuse there;
        // in inference GELU fuses as well (a transformer's feed-forward
        // block: bias and GELU in the GEMM's store).
        if !private_to(g, &cons, v, n) {
            continue;
        }
        let fused = match &g.nodes[p.0 as usize].op {
            Op::Conv2d {
                p: cp,
                act: None,
                residual,
                pool: false,
            } => Op::Conv2d {
                p: *cp,
                act: Some(a),
                residual: *residual,
                pool: false,
            },
            Op::Linear { bias, act: None } => Op::Linear {
                bias: *bias,
                act: Some(a),
            },
            Op::BatchNorm2d {
                eps,
                momentum,
                training: true,
                act: None,
                residual,
            } => Op::BatchNorm2d {
                eps: *eps,
                momentum: *momentum,
                training: true,
                act: Some(a),
                residual: *residual,
            },
            _ => continue,
        };
        let detail = format!(
            "{} + {} {}",
            g.nodes[p.0 as usize].op.kernel_name(),
            a.name(),
            g.shape(v)
        );
        let inputs = g.nodes[p.0 as usize].inputs.clone();
        absorb(g, i, p, fused, inputs);
        out.push(Fusion {
            rule: "epilogue",
            launches_saved: 1,
            bytes_saved: 2 * bytes(g, v),
            detail,
        });
    }
}

fn conv_max_pool(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        let Some(n) = live(g, i) else { continue };
        let Op::MaxPool2d { p: pp } = g.nodes[i].op else {
            continue;
        };
        if (pp.kernel, pp.stride, pp.pad) != ((2, 2), (2, 2), (0, 0)) {
            continue;
        }
        let (v, idx) = (g.nodes[i].inputs[0], g.nodes[i].outputs[1]);
        if !cons[idx.0 as usize].is_empty() || g.output_name(idx).is_some() {
            continue;
        }
        let Some(p) = producer(g, v) else { continue };
        let Op::Conv2d {
            p: cp,
            act,
            residual: false,
            pool: false,
        } = g.nodes[p.0 as usize].op
        else {
            continue;
        };
        if !private_to(g, &cons, v, n) {
            continue;
        }
        let fused = Op::Conv2d {
            p: cp,
            act,
            residual: false,
            pool: true,
        };
        let inputs = g.nodes[p.0 as usize].inputs.clone();
        let detail = format!("conv2d + max_pool2d 2x2 {}", g.shape(v));
        absorb(g, i, p, fused, inputs);
        out.push(Fusion {
            rule: "conv_max_pool",
            launches_saved: 1,
            // The full-size output's write and read, and the indices.
            bytes_saved: 2 * bytes(g, v) + bytes(g, idx),
            detail,
        });
    }
}

fn act_backward_bn(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        let Some(n) = live(g, i) else { continue };
        if g.nodes[i].op != (Op::BatchNorm2dBackward { act: None }) {
            continue;
        }
        let d = g.nodes[i].inputs[4];
        let Some(p) = producer(g, d) else { continue };
        let Op::ActBackward(a) = g.nodes[p.0 as usize].op else {
            continue;
        };
        if !private_to(g, &cons, d, n) {
            continue;
        }
        // ActBackward reads (saved, dy).
        let (saved, dy) = (
            g.nodes[p.0 as usize].inputs[0],
            g.nodes[p.0 as usize].inputs[1],
        );
        let node = &mut g.nodes[i];
        node.op = Op::BatchNorm2dBackward { act: Some(a) };
        node.inputs[4] = dy;
        node.inputs.push(saved);
        clear(g, p);
        out.push(Fusion {
            rule: "act_backward_bn",
            launches_saved: 1,
            bytes_saved: 2 * bytes(g, d),
            detail: format!(
                "{} -> batchnorm2d_backward {}",
                a.backward_name(),
                g.shape(d)
            ),
        });
    }
}

fn act_backward_bias(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in 0..g.nodes.len() {
        if cleared(g, i) {
            continue;
        }
        let Op::ActBackward(a) = g.nodes[i].op else {
            continue;
        };
        let d = g.nodes[i].outputs[0];
        let ds = g.shape(d).clone();
        if g.output_name(d).is_some() {
            continue;
        }
        // The bias gradient of the layer below: a per-channel sum of d.
        let found = cons[d.0 as usize].iter().find_map(|&c| {
            let node = &g.nodes[c.0 as usize];
            let axis = match &node.op {
                Op::Conv2dGradBias if ds.rank() == 4 => 1,
                Op::SumTo if ds.rank() == 2 && g.shape(node.outputs[0]).0 == vec![ds.0[1]] => 1,
                _ => return None,
            };
            Some((c, axis))
        });
        let Some((b, axis)) = found else { continue };
        let db = g.nodes[b.0 as usize].outputs[0];
        clear(g, b);
        g.nodes[i].op = Op::ActBackwardBias { act: a, axis };
        g.nodes[i].outputs.push(db);
        g.values[db.0 as usize].producer = Some(NodeId(i as u32));
        out.push(Fusion {
            rule: "act_backward_bias",
            launches_saved: 1,
            bytes_saved: bytes(g, d),
            detail: format!("{} + bias grad {ds}", a.backward_name()),
        });
    }
}

/// Whether a node can join an elementwise chain producing `shape`.
fn ew_eligible(g: &Graph, n: NodeId) -> bool {
    let node = &g.nodes[n.0 as usize];
    if node.outputs.len() != 1 {
        return false;
    }
    let s = g.shape(node.outputs[0]);
    let operands_fit = node
        .inputs
        .iter()
        .all(|v| g.shape(*v) == s || g.shape(*v).numel() == 1);
    matches!(
        node.op,
        Op::Act(_) | Op::ActBackward(_) | Op::Binary(_) | Op::Scale(_) | Op::Elementwise(_)
    ) && operands_fit
        && s.numel() > 1
}

struct Chain {
    prog: Vec<EwInstr>,
    leaves: Vec<ValueId>,
    absorbed: Vec<NodeId>,
}

impl Chain {
    fn leaf(&mut self, v: ValueId) -> Option<()> {
        let i = match self.leaves.iter().position(|l| *l == v) {
            Some(i) => i,
            None => {
                if self.leaves.len() == MAX_INPUTS {
                    return None;
                }
                self.leaves.push(v);
                self.leaves.len() - 1
            }
        };
        self.prog.push(EwInstr::Input(i as u8));
        Some(())
    }

    /// Post-order emission of the tree rooted at `n`.
    fn emit(
        &mut self,
        g: &Graph,
        cons: &[Vec<NodeId>],
        n: NodeId,
        root_shape: &crate::Shape,
    ) -> Option<()> {
        let node = &g.nodes[n.0 as usize];
        for &v in &node.inputs {
            let inner = producer(g, v).filter(|&p| {
                ew_eligible(g, p)
                    && private_to(g, cons, v, n)
                    && g.shape(v) == root_shape
                    && !matches!(g.nodes[p.0 as usize].op, Op::Elementwise(_))
            });
            match inner {
                Some(p) => {
                    self.absorbed.push(p);
                    self.emit(g, cons, p, root_shape)?;
                }
                None => self.leaf(v)?,
            }
        }
        self.prog.push(match node.op {
            Op::Act(a) => EwInstr::Act(a),
            Op::ActBackward(a) => EwInstr::ActBackward(a),
            Op::Binary(k) => EwInstr::Binary(k),
            Op::Scale(s) => EwInstr::Scale(s),
            _ => return None,
        });
        Some(())
    }
}

fn elementwise_chain(g: &mut Graph, out: &mut Vec<Fusion>) {
    let cons = consumers(g);
    for i in (0..g.nodes.len()).rev() {
        if cleared(g, i) {
            continue;
        }
        let n = NodeId(i as u32);
        if !ew_eligible(g, n) || matches!(g.nodes[i].op, Op::Elementwise(_)) {
            continue;
        }
        // Only start at a root: a node whose output is not itself absorbable.
        let y = g.nodes[i].outputs[0];
        let absorbable_by_consumer =
            cons[y.0 as usize].len() == 1 && g.output_name(y).is_none() && {
                let c = cons[y.0 as usize][0];
                ew_eligible(g, c) && !matches!(g.nodes[c.0 as usize].op, Op::Elementwise(_))
            };
        if absorbable_by_consumer {
            continue;
        }
        let shape = g.shape(y).clone();
        let mut chain = Chain {
            prog: Vec::new(),
            leaves: Vec::new(),
            absorbed: Vec::new(),
        };
        if chain.emit(g, &cons, n, &shape).is_none() || chain.absorbed.is_empty() {
            continue;
        }
        if max_depth(&chain.prog).is_none_or(|d| d > MAX_STACK) {
            continue;
        }
        let saved: u64 = chain
            .absorbed
            .iter()
            .map(|p| 2 * bytes(g, g.nodes[p.0 as usize].outputs[0]))
            .sum();
        let names: Vec<&str> = chain
            .absorbed
            .iter()
            .rev()
            .map(|p| g.nodes[p.0 as usize].op.kernel_name())
            .chain([g.nodes[i].op.kernel_name()])
            .collect();
        for &p in &chain.absorbed {
            clear(g, p);
        }
        out.push(Fusion {
            rule: "elementwise_chain",
            launches_saved: chain.absorbed.len(),
            bytes_saved: saved,
            detail: format!("{} {shape}", names.join(" -> ")),
        });
        g.nodes[i].op = Op::Elementwise(chain.prog);
        g.nodes[i].inputs = chain.leaves;
    }
}

fn multi_tensor_update(g: &mut Graph, out: &mut Vec<Fusion>) {
    let updates: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| {
            matches!(g.nodes[i].op, Op::SgdUpdate(_) | Op::AdamUpdate(_))
                && !g.nodes[i].mutates.is_empty()
        })
        .collect();
    let Some(&last) = updates.last() else { return };
    let same: Vec<usize> = updates
        .iter()
        .copied()
        .filter(|&i| g.nodes[i].op == g.nodes[last].op && i != last)
        .collect();
    if same.is_empty() {
        return;
    }
    let (mut inputs, mut mutates) = (Vec::new(), Vec::new());
    for &i in same.iter().chain([&last]) {
        inputs.extend(g.nodes[i].inputs.iter().copied());
        mutates.extend(g.nodes[i].mutates.iter().copied());
    }
    for &i in &same {
        clear(g, NodeId(i as u32));
    }
    g.nodes[last].inputs = inputs;
    g.nodes[last].mutates = mutates;
    out.push(Fusion {
        rule: "multi_tensor_update",
        launches_saved: same.len(),
        bytes_saved: 0,
        detail: format!(
            "{} tensors, one {} launch",
            same.len() + 1,
            g.nodes[last].op.kernel_name()
        ),
    });
}
