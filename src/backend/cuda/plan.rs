//! Lowering a planned [`Module`] to CUDA kernel calls, once, at compile
//! time: each [`Launch`] becomes one or more [`Call`]s with their grids and
//! arguments fixed (arena offsets, shapes, tile and split choices). Runtime
//! values (`lr`, `step`) are read by the kernels from the scalar buffer, so
//! the calls never change and a whole program can be captured as a CUDA
//! graph. Nothing here touches a device: the plan is tested without a GPU.
//!
//! The launch table mirrors `backend::cpu::execute`, op for op.

use super::args::*;
use super::layout::*;
use crate::error::{Error, Result};
use crate::graph::kernel::{Kernel, PoolKind};
use crate::graph::plan::{Launch, Module};
use crate::ops::binary::broadcast_strides;

pub use super::layout::MAX_ELEMENTS;
/// Grid y and z limit.
pub(super) const MAX_GRID_YZ: usize = 65_535;

/// The device facts the lowering depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Streaming multiprocessors: tile and split choices aim to fill them.
    pub sms: u32,
}

/// The calls of one program, each tagged with the index of the launch it
/// implements (for error messages).
#[derive(Clone, Debug)]
pub struct ProgramCalls {
    pub name: String,
    pub calls: Vec<(usize, Call)>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub programs: Vec<ProgramCalls>,
    /// Bytes of the shared scratch buffer.
    pub work_bytes: usize,
    /// Contents of the constant-table buffer.
    pub meta: Vec<u8>,
    /// Runtime scalars (floats) in the scalar buffer.
    pub scalars: usize,
}

impl Plan {
    /// Every distinct kernel the plan launches.
    pub fn kernels(&self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = self
            .programs
            .iter()
            .flat_map(|p| p.calls.iter().map(|(_, c)| c.kernel))
            .collect();
        k.sort_unstable();
        k.dedup();
        k
    }
}

/// Lower every program of `module`.
pub fn plan(module: &Module, target: Target) -> Result<Plan> {
    let mut p = Planner {
        sms: target.sms.max(1) as usize,
        meta: Vec::new(),
        work: 0,
    };
    // Slots in the arena, no output overlapping another operand, every
    // launch decoded: checked once for every backend.
    let kernels = module.validate()?;
    let mut programs = Vec::new();
    for (prog, ks) in module.programs.iter().zip(&kernels) {
        let mut calls = Vec::new();
        for (i, (l, k)) in prog.launches.iter().zip(ks).enumerate() {
            let mut scratch = Scratch(0);
            let cs = p.launch(l, k, &mut scratch).map_err(|e| Error::Device {
                device: "cuda".into(),
                detail: format!(
                    "program '{}', launch {i} ({}): {}",
                    prog.name,
                    l.op.kernel_name(),
                    match e {
                        Error::Device { detail, .. } => detail,
                        other => other.to_string(),
                    }
                ),
            })?;
            p.work = p.work.max(scratch.0);
            calls.extend(cs.into_iter().map(|c| (i, c)));
        }
        programs.push(ProgramCalls {
            name: prog.name.clone(),
            calls,
        });
    }
    Ok(Plan {
        programs,
        work_bytes: p.work,
        meta: p.meta,
        scalars: module.scalars.len(),
    })
}

/// Per-launch bump allocator in the shared scratch buffer: launches run
/// one after another on one stream, so every launch starts at offset 0.
pub(super) struct Scratch(usize);

/// Largest head size of the attention kernels (`AD` in kernels/attention.cu).
const ATTENTION_MAX_HEAD: usize = 64;

impl Scratch {
    pub(super) fn alloc(&mut self, bytes: usize) -> usize {
        let off = self.0.next_multiple_of(16);
        self.0 = off + bytes;
        off
    }
}

pub(super) struct Planner {
    pub(super) sms: usize,
    pub(super) meta: Vec<u8>,
    pub(super) work: usize,
}

/// A dense product C = op(A)·op(B) (+ bias, then act) over arena operands.
pub(super) struct Gemm {
    pub(super) a: usize,
    /// A stored [M][K] (k contiguous) rather than [K][M].
    pub(super) a_k: bool,
    pub(super) lda: usize,
    pub(super) b: usize,
    /// B stored [N][K] rather than [K][N].
    pub(super) b_k: bool,
    pub(super) ldb: usize,
    pub(super) c: usize,
    pub(super) ldc: usize,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) batch: usize,
    pub(super) strides: [usize; 3],
    /// Bias offset, per column (N) of C.
    pub(super) bias: Option<usize>,
    pub(super) act: i32,
}

impl Planner {
    /// Blocks for a grid-stride loop over `n` elements.
    pub(super) fn blocks(&self, n: usize) -> u32 {
        div_up(n, BLOCK as usize).clamp(1, self.sms * 32) as u32
    }

    pub(super) fn elementwise(&self, kernel: &'static str, n: usize, args: Vec<Arg>) -> Vec<Call> {
        if n == 0 {
            return vec![];
        }
        vec![Call {
            kernel,
            grid: [self.blocks(n), 1, 1],
            args,
        }]
    }

    /// Splits of a reduction of `len` elements into `outputs` sums so the
    /// grid has about two blocks per SM, each summing at least `min_chunk`.
    pub(super) fn splits(&self, outputs: usize, len: usize, min_chunk: usize, max: usize) -> usize {
        if outputs >= 2 * self.sms || len < 2 * min_chunk {
            return 1;
        }
        div_up(2 * self.sms, outputs.max(1))
            .min(len / min_chunk)
            .clamp(1, max)
    }

    fn launch(&mut self, l: &Launch, kernel: &Kernel, s: &mut Scratch) -> Result<Vec<Call>> {
        for slot in l.reads.iter().chain(&l.writes) {
            int(slot.len)?;
        }
        let (r, w) = operands(l);
        let out_n = l.writes.first().map_or(0, |s| s.len);
        Ok(match kernel {
            Kernel::MatMul(_)
            | Kernel::Linear { .. }
            | Kernel::Conv2d { .. }
            | Kernel::Conv2dGradInput(_)
            | Kernel::Conv2dGradWeight(_) => self.dense(l, kernel, s)?,
            Kernel::Conv2dGradBias(d) => self.reduce(
                s,
                r(0),
                w(0),
                &[d.n, d.c, d.plane],
                &[false, true, false],
                1.0,
            )?,
            Kernel::Pool {
                geom: g,
                kind,
                backward,
            } => {
                let geom = Arg::Bytes(pool_geom(g)?);
                let (kernel, args) = match (kind, backward) {
                    (PoolKind::Max, false) => ("maxpool2d_forward", vec![r(0), w(0), w(1), geom]),
                    (PoolKind::Max, true) => ("maxpool2d_backward", vec![r(0), r(1), w(0), geom]),
                    (PoolKind::Avg, false) => ("avgpool2d_forward", vec![r(0), w(0), geom]),
                    (PoolKind::Avg, true) => ("avgpool2d_backward", vec![r(0), w(0), geom]),
                };
                self.elementwise(kernel, out_n, args)
            }
            Kernel::MaskedMeanPool { seq, backward } => {
                let kernel = if *backward {
                    "masked_mean_pool_backward"
                } else {
                    "masked_mean_pool_forward"
                };
                let dims = [seq.batch, seq.len, seq.dim].map(|v| int(v).map(Arg::I32));
                let [b, t, d] = dims;
                self.elementwise(kernel, out_n, vec![r(0), r(1), w(0), b?, t?, d?])
            }
            Kernel::Embedding {
                ids,
                vocab,
                dim,
                backward: false,
            } => self.elementwise(
                "embedding_forward",
                out_n,
                vec![
                    r(0),
                    r(1),
                    w(0),
                    Arg::I32(int(ids * dim)?),
                    Arg::I32(int(*dim)?),
                    Arg::I32(int(*vocab)?),
                ],
            ),
            Kernel::Embedding {
                ids,
                vocab,
                dim,
                backward: true,
            } => {
                // Threads own (column, vocabulary bucket) pairs: enough
                // for every SM, each scanning every id once.
                let buckets = (self.sms * 512 / (*dim).max(1)).clamp(1, (*vocab).max(1));
                self.elementwise(
                    "embedding_backward",
                    dim * buckets,
                    vec![
                        r(0),
                        r(1),
                        w(0),
                        Arg::I32(int(*dim)?),
                        Arg::I32(int(*vocab)?),
                        Arg::I32(int(*ids)?),
                        Arg::I32(int(buckets)?),
                    ],
                )
            }
            Kernel::LayerNorm {
                rows,
                cols,
                eps,
                backward: false,
                residual,
            } => self.elementwise(
                "layer_norm_forward",
                *rows,
                vec![
                    r(0),
                    r(1),
                    r(2),
                    w(0),
                    w(1),
                    w(2),
                    if *residual { r(3) } else { Arg::Null },
                    if *residual { w(3) } else { Arg::Null },
                    Arg::I32(int(*rows)?),
                    Arg::I32(int(*cols)?),
                    Arg::F32(*eps),
                ],
            ),
            Kernel::LayerNorm {
                rows,
                cols,
                backward: true,
                ..
            } => {
                let (m, n) = (Arg::I32(int(*rows)?), Arg::I32(int(*cols)?));
                let mut calls = self.elementwise(
                    "layer_norm_backward_dx",
                    *rows,
                    vec![r(0), r(1), r(2), r(3), r(4), w(0), m.clone(), n.clone()],
                );
                calls.extend(self.elementwise(
                    "layer_norm_backward_params",
                    *cols,
                    vec![r(0), r(2), r(3), r(4), w(1), w(2), m, n],
                ));
                calls
            }
            Kernel::Attention {
                seq,
                heads,
                backward,
            } => {
                if seq.dim > ATTENTION_MAX_HEAD {
                    return Err(Error::Limit(format!(
                        "attention: head size {} exceeds the CUDA kernel's {ATTENTION_MAX_HEAD}",
                        seq.dim
                    )));
                }
                // Rows per block: one per thread, two threads per key row
                // in the dK/dV kernel (kernels/attention.cu).
                let call = |kernel: &'static str, rows: usize, args: Vec<Arg>| -> Result<Call> {
                    let blocks = seq.len.div_ceil(rows);
                    let groups = seq.batch * heads * blocks;
                    let geom = CStruct::default()
                        .i32(int(seq.batch)?)
                        .i32(int(seq.len)?)
                        .i32(int(*heads)?)
                        .i32(int(seq.dim)?)
                        .i32(int(blocks)?)
                        .arg();
                    let mut args = args;
                    args.push(geom);
                    Ok(Call {
                        kernel,
                        grid: [int(groups)? as u32, 1, 1],
                        args,
                    })
                };
                let rows = BLOCK as usize;
                if seq.batch * heads * seq.len == 0 {
                    vec![]
                } else if *backward {
                    let args = vec![r(0), r(1), r(2), r(3), r(4), w(0)];
                    vec![
                        call("attention_backward_q", rows, args.clone())?,
                        call("attention_backward_kv", rows / 2, args)?,
                    ]
                } else {
                    vec![call(
                        "attention_forward",
                        rows,
                        vec![r(0), r(1), w(0), w(1)],
                    )?]
                }
            }
            Kernel::GlobalAvgPool {
                planes: d,
                backward: false,
            } => {
                let hw = d.plane;
                self.reduce(s, r(0), w(0), &[d.n * d.c, hw], &[true, false], hw as f32)?
            }
            Kernel::GlobalAvgPool {
                planes: d,
                backward: true,
            } => self.elementwise(
                "global_avgpool_backward",
                out_n,
                vec![
                    r(0),
                    w(0),
                    Arg::I32(int(d.n * d.c)?),
                    Arg::I32(int(d.plane)?),
                ],
            ),
            Kernel::Act {
                act: a,
                backward: false,
                ..
            } => self.float4_map(l, "act_forward", out_n, act_code(*a))?,
            Kernel::Act {
                act: a,
                backward: true,
                ..
            } => self.float4_map(l, "act_backward", out_n, act_code(*a))?,
            Kernel::Binary { kind: k, a, b, out } => {
                if a == out && b == out {
                    self.float4_map(l, "binary_same", out_n, binary_code(*k))?
                } else {
                    let g = strided(
                        &out.0,
                        &broadcast_strides(a, out),
                        &broadcast_strides(b, out),
                    )?;
                    self.elementwise(
                        "binary_strided",
                        out_n,
                        vec![
                            r(0),
                            r(1),
                            w(0),
                            Arg::I32(int(out_n)?),
                            Arg::I32(binary_code(*k)),
                            Arg::Bytes(g),
                        ],
                    )
                }
            }
            Kernel::Scale { alpha: a, .. } => self.elementwise(
                "scale",
                out_n,
                vec![r(0), w(0), Arg::I32(int(out_n)?), Arg::F32(*a)],
            ),
            Kernel::Fill { value: v, .. } => self.elementwise(
                "fill",
                out_n,
                vec![w(0), Arg::I32(int(out_n)?), Arg::F32(*v)],
            ),
            Kernel::SumTo { from: sx, to: sy } => {
                let strides = broadcast_strides(sy, sx);
                // An axis is kept where y has it (its stride is not a
                // broadcast 0), or where it has size 1 anyway.
                let keep: Vec<bool> = (0..sx.rank())
                    .map(|i| strides[i] != 0 || sx.0[i] == 1)
                    .collect();
                self.reduce(s, r(0), w(0), &sx.0, &keep, 1.0)?
            }
            Kernel::BroadcastTo { from, to } => {
                let g = strided(&to.0, &broadcast_strides(from, to), &vec![0; to.rank()])?;
                self.elementwise(
                    "strided_copy",
                    out_n,
                    vec![r(0), w(0), Arg::I32(int(out_n)?), Arg::Bytes(g)],
                )
            }
            Kernel::View => vec![],
            Kernel::Transpose { shape, perm } => {
                let xs = shape.strides();
                let dims: Vec<usize> = perm.iter().map(|&p| shape.0[p]).collect();
                let src: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
                let g = strided(&dims, &src, &vec![0; dims.len()])?;
                self.elementwise(
                    "strided_copy",
                    out_n,
                    vec![r(0), w(0), Arg::I32(int(out_n)?), Arg::Bytes(g)],
                )
            }
            Kernel::ClipGradNorm { max_norm, .. } => {
                let groups = self.groups(l, 1);
                match self.multi_tensor(&groups) {
                    None => vec![],
                    Some((tab, count, _)) => vec![Call {
                        kernel: "clip_grad_norm",
                        grid: [1, 1, 1],
                        args: vec![Arg::arena(0), tab, Arg::I32(count), Arg::F32(*max_norm)],
                    }],
                }
            }
            Kernel::CopyRows(copies) => {
                let mut calls = Vec::new();
                for c in copies {
                    calls.extend(self.elementwise(
                        "copy_rows",
                        c.rows * c.len,
                        vec![
                            Arg::arena(l.reads[c.read].offset + c.x_off),
                            Arg::arena(l.writes[0].offset + c.y_off),
                            Arg::I32(int(c.rows)?),
                            Arg::I32(int(c.len)?),
                            Arg::I32(int(c.x_stride)?),
                            Arg::I32(int(c.y_stride)?),
                        ],
                    ));
                }
                calls
            }
            Kernel::Softmax {
                rows,
                cols,
                log,
                backward,
            } => {
                // Backward reads y and dy.
                let (kernels, args) = if *backward {
                    (
                        [
                            "softmax_backward_warp4",
                            "softmax_backward_warp32",
                            "softmax_backward_block",
                        ],
                        vec![r(0), r(1), w(0)],
                    )
                } else {
                    (
                        ["softmax_warp4", "softmax_warp32", "softmax_block"],
                        vec![r(0), w(0)],
                    )
                };
                self.rows((*rows, *cols), kernels, args, *log as i32)?
            }
            Kernel::CrossEntropy { batch, classes } => {
                self.cross_entropy(l, (*batch, *classes), s)?
            }
            Kernel::CrossEntropyBackward {
                batch,
                classes,
                dloss,
            } => {
                let (b, c) = (*batch, *classes);
                let (ptr, konst) = match dloss {
                    Some(d) => (Arg::Null, *d),
                    None => (r(2), 0.0),
                };
                if b == 0 {
                    vec![]
                } else {
                    vec![Call {
                        kernel: "cross_entropy_backward",
                        grid: [div_up(b, 8) as u32, 1, 1],
                        args: vec![
                            r(0),
                            r(1),
                            ptr,
                            Arg::F32(konst),
                            w(0),
                            Arg::I32(int(b)?),
                            Arg::I32(int(c)?),
                        ],
                    }]
                }
            }
            Kernel::ActBackwardBias { act, dims, axis } => {
                self.act_backward_bias(l, (act, dims, axis), s)?
            }
            Kernel::Elementwise { prog, .. } => {
                if l.reads.len() > 6 {
                    return Err(unsupported("fused elementwise with more than 6 inputs"));
                }
                let mut args: Vec<Arg> = (0..6)
                    .map(|i| if i < l.reads.len() { r(i) } else { Arg::Null })
                    .collect();
                let mask = l
                    .reads
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.len == 1)
                    .fold(0i32, |m, (i, _)| m | 1 << i);
                args.extend([
                    w(0),
                    Arg::I32(int(out_n)?),
                    Arg::I32(mask),
                    Arg::Bytes(elementwise(prog)?),
                ]);
                self.elementwise("elementwise", out_n, args)
            }
            Kernel::Dropout { p, seed, step, .. } => self.elementwise(
                "dropout",
                out_n,
                vec![
                    r(0),
                    w(0),
                    Arg::I32(int(out_n)?),
                    Arg::Ptr(Buf::Scalars, 0),
                    Arg::I32(step.0 as i32),
                    Arg::U32(*seed),
                    Arg::F32(*p),
                    Arg::F32(1.0 / (1.0 - p)),
                ],
            ),
            Kernel::BatchNorm {
                planes,
                eps,
                momentum,
                training,
                act,
                residual,
            } => self.batch_norm(l, (planes, eps, momentum, training), (*act, *residual), s)?,
            Kernel::BatchNormBackward { planes, act } => {
                self.batch_norm_backward(l, planes, *act, s)?
            }
            Kernel::Sgd { config: c, .. } => {
                let per = if c.momentum != 0.0 { 2 } else { 1 };
                let settings = vec![
                    Arg::I32(c.lr.0 as i32),
                    Arg::F32(c.momentum),
                    Arg::F32(c.weight_decay),
                    Arg::I32(c.nesterov as i32),
                ];
                self.optimiser_update(l, "sgd_update", per, settings)
            }
            Kernel::Adam { config: c, .. } => {
                let settings = vec![
                    Arg::I32(c.lr.0 as i32),
                    Arg::I32(c.step.0 as i32),
                    Arg::F32(c.beta1),
                    Arg::F32(c.beta2),
                    Arg::F32(c.eps),
                    Arg::F32(c.weight_decay),
                    Arg::I32(c.decoupled as i32),
                ];
                self.optimiser_update(l, "adam_update", 3, settings)
            }
        })
    }

    /// An elementwise kernel over `n` elements of every read and the write:
    /// (operands..., n, `code`, whether all are float4-aligned).
    fn float4_map(
        &mut self,
        l: &Launch,
        kernel: &'static str,
        n: usize,
        code: i32,
    ) -> Result<Vec<Call>> {
        let operands: Vec<usize> = l
            .reads
            .iter()
            .chain(&l.writes[..1])
            .map(|s| s.offset)
            .collect();
        let mut args: Vec<Arg> = operands.iter().map(|&o| Arg::arena(o)).collect();
        args.extend([
            Arg::I32(int(n)?),
            Arg::I32(code),
            Arg::I32(all_aligned(&operands, 4) as i32),
        ]);
        Ok(self.elementwise(kernel, n, args))
    }

    /// One multi-tensor optimiser launch over every tensor group of `l`
    /// (`per` writes each): arena, tensor table, count, scalars, then the
    /// optimiser's `settings`.
    fn optimiser_update(
        &mut self,
        l: &Launch,
        kernel: &'static str,
        per: usize,
        settings: Vec<Arg>,
    ) -> Vec<Call> {
        let groups = self.groups(l, per);
        let Some((tab, count, blocks)) = self.multi_tensor(&groups) else {
            return vec![];
        };
        let mut args = vec![
            Arg::arena(0),
            tab,
            Arg::I32(count),
            Arg::Ptr(Buf::Scalars, 0),
        ];
        args.extend(settings);
        vec![Call {
            kernel,
            grid: [blocks, 1, 1],
            args,
        }]
    }
}

/// Arena arguments of a launch's operands: `r(i)` is its i-th read, `w(i)`
/// its i-th write.
pub(super) fn operands(l: &Launch) -> (impl Fn(usize) -> Arg + '_, impl Fn(usize) -> Arg + '_) {
    (
        move |i: usize| Arg::arena(l.reads[i].offset),
        move |i: usize| Arg::arena(l.writes[i].offset),
    )
}
