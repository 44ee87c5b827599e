//! The CPU backend: the numerical reference and a fast fallback. The arena
//! is one `Vec<f32>` (u32 values are stored as their bits); each launch
//! borrows its slots as slices and calls the op's CPU kernel.

pub mod activation;
pub mod adam;
pub mod attention;
pub mod batchnorm;
pub mod bias_grad;
pub mod binary;
pub mod conv2d;
mod conv2d_layout;
pub mod conv2d_small;
mod conv2d_wgrad;
mod conv2d_winograd;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod isa;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod par;
pub mod pool;
pub mod reduce;
pub mod sgd;
pub mod shape;
pub use crate::math as simd_math;
mod small_gemm;
pub mod softmax;
pub mod team;
#[cfg(test)]
pub(crate) mod testing;

use crate::backend::{Backend, Executable};
use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::graph::fuse::FuseExtras;
use crate::graph::kernel::{Kernel, PoolKind};
use crate::graph::plan::{Module, Slot};
use crate::ops;
use std::sync::Arc;

pub struct CpuBackend;

/// Most operands one launch borrows at once (multi-tensor launches are
/// split per tensor).
const MAX_OPERANDS: usize = 8;

/// Multi-tensor optimiser launches run tensor by tensor: each group is one
/// gradient read and its parameter/state writes.
fn group_count(k: &Kernel) -> usize {
    match k {
        Kernel::Sgd { tensors, .. } | Kernel::Adam { tensors, .. } => (*tensors).max(1),
        _ => 1,
    }
}

/// Launches that read every tensor together (a global norm) take their
/// operands as vectors instead of the fixed arrays.
fn all_at_once(k: &Kernel) -> bool {
    matches!(k, Kernel::ClipGradNorm { .. })
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
    /// The pooled convolution: on a CPU the pool's pass over the full-size
    /// output, which has fallen out of cache by then, cost a third of the
    /// convolution's time in the MNIST CNN's batched inference.
    fn fuse_extras(&self) -> FuseExtras {
        FuseExtras {
            conv_max_pool: true,
        }
    }

    fn is_cpu(&self) -> bool {
        true
    }

    fn name(&self) -> String {
        let (ours, gemm) = (isa::active(), isa::gemm_isa());
        let gemm = if gemm == ours {
            String::new()
        } else {
            format!("; gemm crate {gemm}")
        };
        format!(
            "cpu ({} threads, {ours}{gemm})",
            rayon::current_num_threads()
        )
    }

    fn compile(&self, module: Arc<Module>) -> Result<Box<dyn Executable>> {
        // The raw-slice borrowing in `run` relies on `validate`: every slot
        // lies in the arena and no output overlaps another operand.
        let kernels = module.validate()?;
        for (p, ks) in module.programs.iter().zip(&kernels) {
            for (l, k) in p.launches.iter().zip(ks) {
                let groups = group_count(k);
                let many =
                    l.reads.len() / groups > MAX_OPERANDS || l.writes.len() / groups > MAX_OPERANDS;
                if many && !all_at_once(k) {
                    return Err(Error::Device {
                        device: "cpu".into(),
                        detail: format!(
                            "{} has more than {MAX_OPERANDS} operands",
                            l.op.kernel_name()
                        ),
                    });
                }
            }
        }
        // A cache line of slack, so the arena can start on a 64-byte
        // boundary: vector loads of aligned slots then never straddle two
        // lines (worth 5% on the Adam update over 10M parameters).
        let words = module.arena_words.saturating_add(ALIGN_WORDS);
        let mut arena = Vec::new();
        arena
            .try_reserve_exact(words)
            .map_err(|_| Error::ArenaTooLarge {
                device: "cpu".into(),
                programs: module.program_names(),
                bytes: module.arena_words as u64 * 4,
                detail: "host memory is exhausted".into(),
            })?;
        arena.resize(words, 0.0);
        let base = (64 - arena.as_ptr() as usize % 64) % 64 / std::mem::size_of::<f32>();
        Ok(Box::new(CpuExecutable {
            module,
            kernels,
            arena,
            base,
        }))
    }
}

/// Floats in one 64-byte cache line.
const ALIGN_WORDS: usize = 16;

pub struct CpuExecutable {
    module: Arc<Module>,
    /// Each launch decoded once, program by program.
    kernels: Vec<Vec<Kernel>>,
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

impl Executable for CpuExecutable {
    fn write(&mut self, slot: Slot, data: &[f32]) -> Result<()> {
        self.module.check_transfer(slot, data.len())?;
        self.words_mut()[slot.offset..slot.end()].copy_from_slice(data);
        Ok(())
    }

    fn read(&mut self, slot: Slot, out: &mut [f32]) -> Result<()> {
        self.module.check_transfer(slot, out.len())?;
        out.copy_from_slice(&self.words()[slot.offset..slot.end()]);
        Ok(())
    }

    fn host_view(&self, slot: Slot) -> Option<&[f32]> {
        self.words().get(slot.offset..slot.end())
    }

    fn all_reduce(&mut self, slot: Slot, group: &dyn Collective, _: &mut Vec<f32>) -> Result<()> {
        self.module.check_transfer(slot, slot.len)?;
        group.all_reduce_sum(&mut self.words_mut()[slot.offset..slot.end()])
    }

    fn run(&mut self, program: usize, scalars: &[f32]) -> Result<()> {
        let module = Arc::clone(&self.module);
        let p = module.program_for_run(program, scalars)?;
        let base = self.words_mut().as_mut_ptr();
        let kernels = &self.kernels[program];
        for (l, k) in p.launches.iter().zip(kernels) {
            if all_at_once(k) {
                // SAFETY: as below: `compile` checked every slot lies in the
                // arena and that no write overlaps any other operand (these
                // kernels write nothing in place).
                let reads: Vec<&[f32]> = l
                    .reads
                    .iter()
                    .map(|s| unsafe { std::slice::from_raw_parts(base.add(s.offset), s.len) })
                    .collect();
                // SAFETY: as above; write slots are pairwise disjoint.
                let mut writes: Vec<&mut [f32]> = l
                    .writes
                    .iter()
                    .map(|s| unsafe { std::slice::from_raw_parts_mut(base.add(s.offset), s.len) })
                    .collect();
                execute(k, None, &reads, &mut writes, scalars);
                continue;
            }
            let groups = group_count(k);
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
                execute(k, l.inplace, &reads[..per_r], &mut writes[..per_w], scalars);
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

/// The CPU launch table: one arm per kernel. `inplace`: output 0 was
/// written over read k, which is read through the output instead.
fn execute(
    k: &Kernel,
    inplace: Option<usize>,
    r: &[&[f32]],
    w: &mut [&mut [f32]],
    scalars: &[f32],
) {
    match k {
        Kernel::MatMul(g) => {
            matmul::cpu_gemm(g.batch, g.m, g.n, g.k, g.ta, g.tb, r[0], r[1], w[0]);
        }
        Kernel::Linear { gemm: g, bias, act } => {
            linear::cpu_forward(g.m, g.k, g.n, r[0], r[1], bias.then(|| r[2]), *act, w[0]);
        }
        Kernel::Conv2d {
            geom,
            bias,
            act,
            residual: false,
            pool,
        } => {
            let e = conv2d_small::Epilogue {
                bias: bias.then(|| r[2]),
                act: *act,
                pool: *pool,
            };
            conv2d::conv2d_forward_with(geom, r[0], r[1], e, w[0]);
        }
        // The decoder refuses a residual with a pool.
        Kernel::Conv2d {
            geom,
            bias,
            act,
            residual: true,
            ..
        } => {
            // The residual and activation run as a second pass over y in
            // the same launch.
            conv2d::conv2d_forward_act(geom, r[0], r[1], bias.then(|| r[2]), None, w[0]);
            activation::cpu_add_act_inplace(*act, w[0], r[2 + *bias as usize]);
        }
        Kernel::Conv2dGradInput(g) => conv2d::conv2d_grad_input(g, r[0], r[1], w[0]),
        Kernel::Conv2dGradWeight(g) => conv2d::conv2d_grad_weight(g, r[0], r[1], w[0]),
        Kernel::Conv2dGradBias(p) => {
            // Only n, c_out and the output plane matter for the bias sum.
            let g = ops::conv2d::Conv2dGeom {
                n: p.n,
                c_in: 1,
                h: p.plane,
                w: 1,
                c_out: p.c,
                kh: 1,
                kw: 1,
                stride: (1, 1),
                pad: (0, 0),
                dilation: (1, 1),
            };
            conv2d::conv2d_grad_bias(&g, r[0], w[0]);
        }
        Kernel::Pool {
            geom,
            kind: PoolKind::Max,
            backward: false,
        } => {
            let (y, idx) = w.split_at_mut(1);
            pool::maxpool2d_forward(geom, r[0], y[0], u32s_mut(idx[0]));
        }
        Kernel::Pool {
            geom,
            kind: PoolKind::Max,
            backward: true,
        } => pool::maxpool2d_backward(geom, r[0], u32s(r[1]), w[0]),
        Kernel::Pool {
            geom,
            kind: PoolKind::Avg,
            backward: false,
        } => pool::avgpool2d_forward(geom, r[0], w[0]),
        Kernel::Pool {
            geom,
            kind: PoolKind::Avg,
            backward: true,
        } => pool::avgpool2d_backward(geom, r[0], w[0]),
        Kernel::GlobalAvgPool {
            planes: p,
            backward: false,
        } => pool::global_avgpool_forward(p.n, p.c, p.plane, r[0], w[0]),
        Kernel::GlobalAvgPool {
            planes: p,
            backward: true,
        } => pool::global_avgpool_backward(p.n, p.c, p.plane, r[0], w[0]),
        Kernel::MaskedMeanPool {
            seq,
            backward: false,
        } => pool::cpu_masked_mean_pool(*seq, r[0], u32s(r[1]), w[0]),
        Kernel::MaskedMeanPool {
            seq,
            backward: true,
        } => pool::cpu_masked_mean_pool_backward(*seq, r[0], u32s(r[1]), w[0]),
        Kernel::Embedding {
            dim,
            backward: false,
            ..
        } => embedding::cpu_embedding_forward(*dim, r[0], u32s(r[1]), w[0]),
        Kernel::Embedding {
            dim,
            backward: true,
            ..
        } => embedding::cpu_embedding_backward(*dim, u32s(r[0]), r[1], w[0]),
        Kernel::LayerNorm {
            cols,
            eps,
            backward: false,
            residual: false,
            ..
        } => {
            let [y, mean, rstd] = w else {
                unreachable!("validated: layer_norm writes y, mean and rstd")
            };
            layer_norm::cpu_layer_norm(*cols, *eps, [r[0], r[1], r[2]], y, [mean, rstd], None)
        }
        Kernel::LayerNorm {
            cols,
            eps,
            backward: false,
            residual: true,
            ..
        } => {
            let [y, mean, rstd, sum] = w else {
                unreachable!("validated: a residual layer_norm writes y, mean, rstd and the sum")
            };
            let res = Some((r[3], &mut **sum));
            layer_norm::cpu_layer_norm(*cols, *eps, [r[0], r[1], r[2]], y, [mean, rstd], res)
        }
        Kernel::LayerNorm {
            cols,
            backward: true,
            ..
        } => {
            let [dx, dw, db] = w else {
                unreachable!("validated: layer_norm_backward writes dx, dw and db")
            };
            layer_norm::cpu_layer_norm_backward(*cols, [r[0], r[1], r[2], r[3], r[4]], dx, dw, db)
        }
        Kernel::Attention {
            seq,
            heads,
            backward: false,
        } => {
            let [out, lse] = w else {
                unreachable!("validated: attention writes out and lse")
            };
            attention::cpu_attention_forward(*seq, *heads, r[0], u32s(r[1]), out, lse)
        }
        Kernel::Attention {
            seq,
            heads,
            backward: true,
        } => attention::cpu_attention_backward(
            *seq,
            *heads,
            [r[0], r[2], r[3], r[4]],
            u32s(r[1]),
            w[0],
        ),
        Kernel::Act {
            act,
            backward: false,
            ..
        } if inplace.is_some() => activation::cpu_forward_inplace(*act, w[0]),
        Kernel::Act {
            act,
            backward: false,
            ..
        } => activation::cpu_forward(*act, r[0], w[0]),
        Kernel::Act {
            act,
            backward: true,
            ..
        } if inplace.is_some() => activation::cpu_backward_inplace(*act, r[0], w[0]),
        Kernel::Act {
            act,
            backward: true,
            ..
        } => activation::cpu_backward(*act, r[0], r[1], w[0]),
        Kernel::Binary { kind, a, b, out } => match inplace {
            Some(0) => binary::cpu_binary_inplace(*kind, 0, b, r[1], out, w[0]),
            Some(_) => binary::cpu_binary_inplace(*kind, 1, a, r[0], out, w[0]),
            None => binary::cpu_binary(*kind, a, r[0], b, r[1], out, w[0]),
        },
        Kernel::Scale { alpha, .. } if inplace.is_some() => {
            w[0].iter_mut().for_each(|v| *v *= alpha)
        }
        Kernel::Scale { alpha, .. } => binary::cpu_scale(*alpha, r[0], w[0]),
        Kernel::Fill { value, .. } => w[0].fill(*value),
        Kernel::SumTo { from, to } => reduce::cpu_sum_to(from, r[0], to, w[0]),
        Kernel::BroadcastTo { from, to } => reduce::cpu_broadcast_to(from, r[0], to, w[0]),
        Kernel::View => {}
        Kernel::Transpose { shape, perm } => shape::cpu_transpose(shape, perm, r[0], w[0]),
        Kernel::ClipGradNorm { max_norm, .. } => reduce::cpu_clip_grad_norm(*max_norm, r, w),
        Kernel::CopyRows(copies) => {
            for c in copies {
                shape::cpu_copy_rows(c, r[c.read], w[0]);
            }
        }
        Kernel::Softmax {
            cols,
            log,
            backward: false,
            ..
        } => softmax::cpu_softmax(*cols, *log, r[0], w[0]),
        Kernel::Softmax {
            cols,
            log,
            backward: true,
            ..
        } => softmax::cpu_softmax_backward(*cols, *log, r[0], r[1], w[0]),
        Kernel::CrossEntropy { batch, classes } => {
            cross_entropy::cpu_forward(*batch, *classes, r[0], u32s(r[1]), w[0])
        }
        Kernel::CrossEntropyBackward {
            batch,
            classes,
            dloss,
        } => {
            let d = dloss.unwrap_or_else(|| r[2][0]);
            cross_entropy::cpu_backward(*batch, *classes, r[0], u32s(r[1]), d, w[0])
        }
        Kernel::ActBackwardBias { act, dims, axis } => {
            let (dx, db) = w.split_at_mut(1);
            let dy = if inplace.is_some() { None } else { Some(r[1]) };
            bias_grad::cpu_act_backward_bias(*act, dims, *axis, r[0], dy, dx[0], db[0]);
        }
        Kernel::Elementwise { prog, .. } => elementwise::cpu_elementwise(prog, r, inplace, w[0]),
        Kernel::Dropout { p, seed, step, .. } => {
            let x = if inplace.is_some() { None } else { Some(r[0]) };
            dropout::cpu_dropout(*p, *seed, scalars[step.0 as usize] as u32, x, w[0])
        }
        Kernel::BatchNorm {
            planes,
            eps,
            momentum,
            training: true,
            act,
            residual,
        } => {
            let [y, mean, invstd, rm, rv, ..] = w else {
                unreachable!("Module::validate checked the write count")
            };
            let x = (r[0], r[1], r[2]);
            let epilogue = batchnorm::Epilogue {
                residual: residual.then(|| r[3]),
                act: *act,
            };
            batchnorm::cpu_train(
                planes.dims(),
                *eps,
                *momentum,
                x,
                epilogue,
                y,
                mean,
                invstd,
                rm,
                rv,
            );
        }
        Kernel::BatchNorm {
            planes,
            eps,
            training: false,
            ..
        } => batchnorm::cpu_infer(planes.dims(), *eps, r[0], r[1], r[2], r[3], r[4], w[0]),
        Kernel::BatchNormBackward { planes, act } => {
            let [dx, dg, db, ..] = w else {
                unreachable!("Module::validate checked the write count")
            };
            let dy = batchnorm::Incoming {
                dy: r[4],
                act: act.map(|a| (a, r[5])),
            };
            batchnorm::cpu_backward(planes.dims(), r[0], r[1], r[2], r[3], dy, dx, dg, db);
        }
        // One group: this tensor's gradient, parameter and state.
        Kernel::Sgd { config: c, .. } => {
            let lr = scalars[c.lr.0 as usize];
            let (p, v) = w.split_at_mut(1);
            let v: &mut [f32] = if c.momentum != 0.0 { v[0] } else { &mut [] };
            sgd::cpu_update(c, lr, r[0], p[0], v);
        }
        Kernel::Adam { config: c, .. } => {
            let (lr, step) = (scalars[c.lr.0 as usize], scalars[c.step.0 as usize]);
            let (p, rest) = w.split_at_mut(1);
            let (m, v) = rest.split_at_mut(1);
            adam::cpu_update(c, lr, step, r[0], p[0], m[0], v[0]);
        }
    }
}
