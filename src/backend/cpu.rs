//! The CPU backend: the numerical reference and a fast fallback. The arena
//! is one `Vec<f32>` (u32 values are stored as their bits); each launch
//! borrows its slots as slices and calls the op's CPU kernel.

use crate::backend::{Backend, Executable};
use crate::error::{Error, Result};
use crate::graph::plan::{Launch, Module, Slot};
use crate::ops::{self, Op};
use std::sync::Arc;

pub struct CpuBackend;

/// Most operands one launch borrows at once (multi-tensor launches are
/// split per tensor).
const MAX_OPERANDS: usize = 8;

fn is_multi_tensor(op: &Op) -> bool {
    matches!(op, Op::SgdUpdate(_) | Op::AdamUpdate(_))
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn compile(&self, module: Arc<Module>) -> Result<Box<dyn Executable>> {
        // The raw-slice borrowing in `run` relies on this: no launch writes a
        // range that another of its operands covers.
        for p in &module.programs {
            for l in &p.launches {
                for (i, w) in l.writes.iter().enumerate() {
                    let inplace_pair =
                        |k: usize| i == 0 && l.inplace == Some(k) && l.reads[k] == *w;
                    let clash = l
                        .reads
                        .iter()
                        .enumerate()
                        .any(|(k, r)| r.overlaps(w) && !inplace_pair(k))
                        || l.writes[i + 1..].iter().any(|o| o.overlaps(w));
                    if clash || w.end() > module.arena_words {
                        return Err(Error::Device {
                            device: "cpu".into(),
                            detail: format!(
                                "program '{}': {} has an output that overlaps an operand",
                                p.name,
                                l.op.kernel_name()
                            ),
                        });
                    }
                }
                let groups = if is_multi_tensor(&l.op) {
                    l.reads.len().max(1)
                } else {
                    1
                };
                if l.reads.len() / groups > MAX_OPERANDS || l.writes.len() / groups > MAX_OPERANDS {
                    return Err(Error::Device {
                        device: "cpu".into(),
                        detail: format!(
                            "{} has more than {MAX_OPERANDS} operands",
                            l.op.kernel_name()
                        ),
                    });
                }
                if l.reads.iter().any(|r| r.end() > module.arena_words) {
                    return Err(Error::Device {
                        device: "cpu".into(),
                        detail: format!("{} reads outside the arena", l.op.kernel_name()),
                    });
                }
            }
        }
        // A cache line of slack, so the arena can start on a 64-byte
        // boundary: vector loads of aligned slots then never straddle two
        // lines (worth 5% on the Adam update over 10M parameters).
        let words = module.arena_words.saturating_add(ALIGN_WORDS);
        let mut arena = Vec::new();
        arena.try_reserve_exact(words).map_err(|_| {
            Error::Limit(format!(
                "cannot allocate the arena for program(s) {} ({} bytes, {} MiB)",
                module.program_names(),
                module.arena_words * 4,
                module.arena_words * 4 / (1 << 20)
            ))
        })?;
        arena.resize(words, 0.0);
        let base = (64 - arena.as_ptr() as usize % 64) % 64 / std::mem::size_of::<f32>();
        Ok(Box::new(CpuExecutable {
            module,
            arena,
            base,
        }))
    }
}

/// Floats in one 64-byte cache line.
const ALIGN_WORDS: usize = 16;

pub struct CpuExecutable {
    module: Arc<Module>,
    /// The arena starts at `arena[base]`, 64-byte aligned.
    arena: Vec<f32>,
    base: usize,
}

impl CpuExecutable {
    fn words(&self) -> &[f32] {
        &self.arena[self.base..self.base + self.module.arena_words]
    }
    fn words_mut(&mut self) -> &mut [f32] {
        let end = self.base + self.module.arena_words;
        &mut self.arena[self.base..end]
    }
}

fn check(slot: Slot, len: usize, arena: usize) -> Result<()> {
    if slot.len != len || slot.end() > arena {
        return Err(Error::Usage(format!(
            "buffer of {len} words for a slot of {} words",
            slot.len
        )));
    }
    Ok(())
}

impl Executable for CpuExecutable {
    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()> {
        check(slot, data.len(), self.module.arena_words)?;
        self.words_mut()[slot.offset..slot.end()].copy_from_slice(data);
        Ok(())
    }

    fn read(&mut self, slot: Slot, out: &mut [f32]) -> Result<()> {
        check(slot, out.len(), self.module.arena_words)?;
        out.copy_from_slice(&self.words()[slot.offset..slot.end()]);
        Ok(())
    }

    fn host_view(&self, slot: Slot) -> Option<&[f32]> {
        self.words().get(slot.offset..slot.end())
    }

    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()> {
        let module = Arc::clone(&self.module);
        let p = module
            .programs
            .get(program)
            .ok_or_else(|| Error::Usage(format!("no program {program}")))?;
        if scalars.len() != module.scalars.len() {
            return Err(Error::Usage(format!(
                "program '{}' needs {} scalars ({:?}), got {}",
                p.name,
                module.scalars.len(),
                module.scalars,
                scalars.len()
            )));
        }
        let base = self.words_mut().as_mut_ptr();
        for l in &p.launches {
            // Multi-tensor optimiser launches run tensor by tensor: each
            // group is one gradient read and its parameter/state writes.
            let groups = if is_multi_tensor(&l.op) {
                l.reads.len().max(1)
            } else {
                1
            };
            let (per_r, per_w) = (l.reads.len() / groups, l.writes.len() / groups);
            for gi in 0..groups {
                let mut reads: [&[f32]; MAX_OPERANDS] = [&[]; MAX_OPERANDS];
                let mut writes: [&mut [f32]; MAX_OPERANDS] = Default::default();
                for (i, s) in l.reads[gi * per_r..(gi + 1) * per_r].iter().enumerate() {
                    if l.inplace == Some(i) {
                        continue; // read through the output slice instead
                    }
                    // SAFETY: `compile` checked every slot lies inside the arena and
                    // that no write slot of this launch overlaps any other operand,
                    // so these shared slices never alias the mutable ones below.
                    reads[i] = unsafe { std::slice::from_raw_parts(base.add(s.offset), s.len) };
                }
                for (i, s) in l.writes[gi * per_w..(gi + 1) * per_w].iter().enumerate() {
                    // SAFETY: as above; write slots are pairwise disjoint.
                    writes[i] =
                        unsafe { std::slice::from_raw_parts_mut(base.add(s.offset), s.len) };
                }
                execute(l, &reads[..per_r], &mut writes[..per_w], scalars);
            }
        }
        Ok(())
    }
}

fn u32s(x: &[f32]) -> &[u32] {
    bytemuck::cast_slice(x)
}
fn u32s_mut(x: &mut [f32]) -> &mut [u32] {
    bytemuck::cast_slice_mut(x)
}

/// The CPU launch table: one arm per op.
fn execute(l: &Launch, r: &[&[f32]], w: &mut [&mut [f32]], scalars: &[f32]) {
    let rs = &l.read_shapes;
    let ws = &l.write_shapes;
    match &l.op {
        Op::MatMul { ta, tb } => {
            ops::matmul::cpu_matmul(&rs[0], *ta, &rs[1], *tb, r[0], r[1], w[0])
        }
        Op::Linear { bias, act } => {
            let k = rs[0].last();
            let n = rs[1].0[0];
            let rows = rs[0].numel() / k.max(1);
            ops::linear::cpu_forward(rows, k, n, r[0], r[1], bias.then(|| r[2]), *act, w[0]);
        }
        Op::Conv2d { p, act } => {
            let g = p.geom(&rs[0], &rs[1]).expect("validated at build time");
            ops::conv2d_cpu::conv2d_forward_act(&g, r[0], r[1], r.get(2).copied(), *act, w[0]);
        }
        Op::Conv2dGradInput { p } => {
            let g = p.geom(&ws[0], &rs[1]).expect("validated at build time");
            ops::conv2d_cpu::conv2d_grad_input(&g, r[0], r[1], w[0]);
        }
        Op::Conv2dGradWeight { p } => {
            let g = p.geom(&rs[0], &ws[0]).expect("validated at build time");
            ops::conv2d_cpu::conv2d_grad_weight(&g, r[0], r[1], w[0]);
        }
        Op::Conv2dGradBias => {
            let s = &rs[0];
            // Only n, c_out and the output plane matter for the bias sum.
            let g = ops::conv2d_cpu::Conv2dGeom {
                n: s.0[0],
                c_in: 1,
                h: s.0[2],
                w: s.0[3],
                c_out: s.0[1],
                kh: 1,
                kw: 1,
                stride: (1, 1),
                pad: (0, 0),
                dilation: (1, 1),
            };
            ops::conv2d_cpu::conv2d_grad_bias(&g, r[0], w[0]);
        }
        Op::MaxPool2d { p } => {
            let g = p
                .geom("max_pool2d", &rs[0])
                .expect("validated at build time");
            let (y, idx) = w.split_at_mut(1);
            ops::pool_cpu::maxpool2d_forward(&g, r[0], y[0], u32s_mut(idx[0]));
        }
        Op::MaxPool2dBackward { p } => {
            let g = p
                .geom("max_pool2d", &ws[0])
                .expect("validated at build time");
            ops::pool_cpu::maxpool2d_backward(&g, r[0], u32s(r[1]), w[0]);
        }
        Op::AvgPool2d { p } => {
            let g = p
                .geom("avg_pool2d", &rs[0])
                .expect("validated at build time");
            ops::pool_cpu::avgpool2d_forward(&g, r[0], w[0]);
        }
        Op::AvgPool2dBackward { p } => {
            let g = p
                .geom("avg_pool2d", &ws[0])
                .expect("validated at build time");
            ops::pool_cpu::avgpool2d_backward(&g, r[0], w[0]);
        }
        Op::GlobalAvgPool => {
            let s = &rs[0];
            ops::pool_cpu::global_avgpool_forward(s.0[0], s.0[1], s.0[2] * s.0[3], r[0], w[0]);
        }
        Op::GlobalAvgPoolBackward => {
            let s = &ws[0];
            ops::pool_cpu::global_avgpool_backward(s.0[0], s.0[1], s.0[2] * s.0[3], r[0], w[0]);
        }
        Op::Act(a) if l.inplace.is_some() => ops::activation::cpu_forward_inplace(*a, w[0]),
        Op::Act(a) => ops::activation::cpu_forward(*a, r[0], w[0]),
        Op::ActBackward(a) if l.inplace.is_some() => {
            ops::activation::cpu_backward_inplace(*a, r[0], w[0])
        }
        Op::ActBackward(a) => ops::activation::cpu_backward(*a, r[0], r[1], w[0]),
        Op::Binary(k) => match l.inplace {
            Some(i) => ops::binary::cpu_binary_inplace(*k, i, &rs[1 - i], r[1 - i], &ws[0], w[0]),
            None => ops::binary::cpu_binary(*k, &rs[0], r[0], &rs[1], r[1], &ws[0], w[0]),
        },
        Op::Scale(a) if l.inplace.is_some() => w[0].iter_mut().for_each(|v| *v *= a),
        Op::Scale(a) => ops::binary::cpu_scale(*a, r[0], w[0]),
        Op::Fill(v) => w[0].fill(*v),
        Op::SumTo => ops::binary::cpu_sum_to(&rs[0], r[0], &ws[0], w[0]),
        Op::BroadcastTo => ops::binary::cpu_broadcast_to(&rs[0], r[0], &ws[0], w[0]),
        Op::Reshape => unreachable!("views are not launched"),
        Op::Transpose { perm } => ops::shape::cpu_transpose(&rs[0], perm, r[0], w[0]),
        Op::Softmax => ops::softmax::cpu_softmax(rs[0].last(), false, r[0], w[0]),
        Op::LogSoftmax => ops::softmax::cpu_softmax(rs[0].last(), true, r[0], w[0]),
        Op::SoftmaxBackward => {
            ops::softmax::cpu_softmax_backward(rs[0].last(), false, r[0], r[1], w[0])
        }
        Op::LogSoftmaxBackward => {
            ops::softmax::cpu_softmax_backward(rs[0].last(), true, r[0], r[1], w[0])
        }
        Op::CrossEntropy => {
            ops::cross_entropy::cpu_forward(rs[0].0[0], rs[0].0[1], r[0], u32s(r[1]), w[0])
        }
        Op::CrossEntropyBackward { dloss } => {
            let d = dloss.unwrap_or_else(|| r[2][0]);
            ops::cross_entropy::cpu_backward(rs[0].0[0], rs[0].0[1], r[0], u32s(r[1]), d, w[0])
        }
        Op::ActBackwardBias { act, axis } => {
            let (dx, db) = w.split_at_mut(1);
            let dy = if l.inplace.is_some() {
                None
            } else {
                Some(r[1])
            };
            ops::bias_grad::cpu_act_backward_bias(*act, &rs[0].0, *axis, r[0], dy, dx[0], db[0]);
        }
        Op::Elementwise(prog) => ops::elementwise::cpu_elementwise(prog, r, l.inplace, w[0]),
        Op::Dropout { p, seed, step } => {
            let x = if l.inplace.is_some() {
                None
            } else {
                Some(r[0])
            };
            ops::dropout::cpu_dropout(*p, *seed, scalars[step.0 as usize] as u32, x, w[0])
        }
        Op::BatchNorm2d {
            eps,
            momentum,
            training: true,
        } => {
            let (y, rest) = w.split_at_mut(1);
            let (mean, rest) = rest.split_at_mut(1);
            let (invstd, rest) = rest.split_at_mut(1);
            let (rm, rv) = rest.split_at_mut(1);
            ops::batchnorm::cpu_train(
                &rs[0], *eps, *momentum, r[0], r[1], r[2], y[0], mean[0], invstd[0], rm[0], rv[0],
            );
        }
        Op::BatchNorm2d {
            eps,
            training: false,
            ..
        } => ops::batchnorm::cpu_infer(&rs[0], *eps, r[0], r[1], r[2], r[3], r[4], w[0]),
        Op::BatchNorm2dBackward => {
            let (dx, rest) = w.split_at_mut(1);
            let (dg, db) = rest.split_at_mut(1);
            ops::batchnorm::cpu_backward(&rs[0], r[0], r[1], r[2], r[3], r[4], dx[0], dg[0], db[0]);
        }
        Op::SgdUpdate(c) => {
            let lr = scalars[c.lr.0 as usize];
            let per = if c.momentum != 0.0 { 2 } else { 1 };
            for (i, g) in r.iter().enumerate() {
                let chunk = &mut w[i * per..(i + 1) * per];
                let (p, v) = chunk.split_at_mut(1);
                let v: &mut [f32] = if per == 2 { v[0] } else { &mut [] };
                ops::sgd::cpu_update(c, lr, g, p[0], v);
            }
        }
        Op::AdamUpdate(c) => {
            let (lr, step) = (scalars[c.lr.0 as usize], scalars[c.step.0 as usize]);
            for (i, g) in r.iter().enumerate() {
                let chunk = &mut w[i * 3..(i + 1) * 3];
                let (p, rest) = chunk.split_at_mut(1);
                let (m, v) = rest.split_at_mut(1);
                ops::adam::cpu_update(c, lr, step, g, p[0], m[0], v[0]);
            }
        }
    }
}
