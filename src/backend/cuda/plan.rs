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
use crate::graph::plan::{Launch, Module, Slot};
use crate::ops::binary::broadcast_strides;

pub use super::layout::MAX_ELEMENTS;
/// Grid y and z limit.
const MAX_GRID_YZ: usize = 65_535;

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
struct Scratch(usize);

impl Scratch {
    fn alloc(&mut self, bytes: usize) -> usize {
        let off = self.0.next_multiple_of(16);
        self.0 = off + bytes;
        off
    }
}

struct Planner {
    sms: usize,
    meta: Vec<u8>,
    work: usize,
}

/// A dense product C = op(A)·op(B) (+ bias, then act) over arena operands.
struct Gemm {
    a: usize,
    /// A stored [M][K] (k contiguous) rather than [K][M].
    a_k: bool,
    lda: usize,
    b: usize,
    /// B stored [N][K] rather than [K][N].
    b_k: bool,
    ldb: usize,
    c: usize,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    strides: [usize; 3],
    /// Bias offset, per column (N) of C.
    bias: Option<usize>,
    act: i32,
}

impl Planner {
    /// Blocks for a grid-stride loop over `n` elements.
    fn blocks(&self, n: usize) -> u32 {
        div_up(n, BLOCK as usize).clamp(1, self.sms * 32) as u32
    }

    fn elementwise(&self, kernel: &'static str, n: usize, args: Vec<Arg>) -> Vec<Call> {
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
    fn splits(&self, outputs: usize, len: usize, min_chunk: usize, max: usize) -> usize {
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
        let r = |i: usize| Arg::arena(l.reads[i].offset);
        let w = |i: usize| Arg::arena(l.writes[i].offset);
        let out_n = l.writes.first().map_or(0, |s| s.len);
        Ok(match kernel {
            Kernel::MatMul(g) => {
                let (batch, m, k, n, ta, tb) = (g.batch, g.m, g.k, g.n, &g.ta, &g.tb);
                self.gemm(
                    s,
                    Gemm {
                        a: l.reads[0].offset,
                        a_k: !ta,
                        lda: if *ta { m } else { k },
                        b: l.reads[1].offset,
                        b_k: *tb,
                        ldb: if *tb { k } else { n },
                        c: l.writes[0].offset,
                        ldc: n,
                        m,
                        n,
                        k,
                        batch,
                        strides: [m * k, k * n, m * n],
                        bias: None,
                        act: ACT_NONE,
                    },
                )?
            }
            Kernel::Linear { gemm, bias, act } => {
                let (m, n, k) = (gemm.m, gemm.n, gemm.k);
                self.gemm(
                    s,
                    Gemm {
                        a: l.reads[0].offset,
                        a_k: true,
                        lda: k,
                        b: l.reads[1].offset,
                        b_k: true,
                        ldb: k,
                        c: l.writes[0].offset,
                        ldc: n,
                        m,
                        n,
                        k,
                        batch: 1,
                        strides: [0, 0, 0],
                        bias: bias.then(|| l.reads[2].offset),
                        act: act.map_or(ACT_NONE, act_code),
                    },
                )?
            }
            Kernel::Conv2d { geom: g, bias, act } => {
                let (oh, ow) = g.out_hw().expect("checked by geom");
                let (cols, k) = (g.n * oh * ow, g.c_in * g.kh * g.kw);
                let t = self.tile(g.c_out, cols, 1);
                let bias = if *bias { r(2) } else { Arg::Null };
                self.conv_call(
                    t.pick(["conv2d_fwd_l", "conv2d_fwd_m", "conv2d_fwd_s"]),
                    t,
                    g.c_out,
                    cols,
                    1,
                    vec![
                        r(0),
                        r(1),
                        bias,
                        w(0),
                        Arg::Bytes(conv_geom(g)?),
                        Arg::I32(act.map_or(ACT_NONE, act_code)),
                        Arg::I32(all_aligned(&[l.reads[1].offset, k], t.ea()) as i32),
                    ],
                )?
            }
            Kernel::Conv2dGradInput(g) => {
                let cols = g.n * g.h * g.w;
                let t = self.tile(g.c_in, cols, 1);
                self.conv_call(
                    t.pick(["conv2d_dgrad_l", "conv2d_dgrad_m", "conv2d_dgrad_s"]),
                    t,
                    g.c_in,
                    cols,
                    1,
                    vec![r(0), r(1), w(0), Arg::Bytes(conv_geom(g)?)],
                )?
            }
            Kernel::Conv2dGradWeight(g) => {
                let (oh, ow) = g.out_hw().expect("checked by geom");
                let (m, n, k) = (g.c_out, g.c_in * g.kh * g.kw, g.n * oh * ow);
                let t = self.tile(m, n, 1);
                let splits = self.gemm_splits(t, m, n, k, 1);
                let part = if splits > 1 {
                    Arg::Ptr(Buf::Work, s.alloc(4 * splits * m * n))
                } else {
                    Arg::Null
                };
                let mut calls = self.conv_call(
                    t.pick(["conv2d_wgrad_l", "conv2d_wgrad_m", "conv2d_wgrad_s"]),
                    t,
                    m,
                    n,
                    splits,
                    vec![
                        r(0),
                        r(1),
                        w(0),
                        part.clone(),
                        Arg::Bytes(conv_geom(g)?),
                        Arg::I32(splits as i32),
                    ],
                )?;
                if splits > 1 {
                    calls.extend(self.splitk_reduce(
                        part,
                        w(0),
                        Arg::Null,
                        0,
                        m,
                        n,
                        1,
                        splits,
                        n,
                        0,
                        ACT_NONE,
                    )?);
                }
                calls
            }
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
                    (PoolKind::Max, false) => ("maxpool2d_fwd", vec![r(0), w(0), w(1), geom]),
                    (PoolKind::Max, true) => ("maxpool2d_bwd", vec![r(0), r(1), w(0), geom]),
                    (PoolKind::Avg, false) => ("avgpool2d_fwd", vec![r(0), w(0), geom]),
                    (PoolKind::Avg, true) => ("avgpool2d_bwd", vec![r(0), w(0), geom]),
                };
                self.elementwise(kernel, out_n, args)
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
                "global_avgpool_bwd",
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
            } => {
                let vec = all_aligned(&[l.reads[0].offset, l.writes[0].offset], 4);
                self.elementwise(
                    "act_fwd",
                    out_n,
                    vec![
                        r(0),
                        w(0),
                        Arg::I32(int(out_n)?),
                        Arg::I32(act_code(*a)),
                        Arg::I32(vec as i32),
                    ],
                )
            }
            Kernel::Act {
                act: a,
                backward: true,
                ..
            } => {
                let vec = all_aligned(
                    &[l.reads[0].offset, l.reads[1].offset, l.writes[0].offset],
                    4,
                );
                self.elementwise(
                    "act_bwd",
                    out_n,
                    vec![
                        r(0),
                        r(1),
                        w(0),
                        Arg::I32(int(out_n)?),
                        Arg::I32(act_code(*a)),
                        Arg::I32(vec as i32),
                    ],
                )
            }
            Kernel::Binary { kind: k, a, b, out } => {
                let n = Arg::I32(int(out_n)?);
                if a == out && b == out {
                    let vec = all_aligned(
                        &[l.reads[0].offset, l.reads[1].offset, l.writes[0].offset],
                        4,
                    );
                    self.elementwise(
                        "binary_same",
                        out_n,
                        vec![
                            r(0),
                            r(1),
                            w(0),
                            n,
                            Arg::I32(binary_code(*k)),
                            Arg::I32(vec as i32),
                        ],
                    )
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
                            n,
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
            Kernel::Softmax {
                rows,
                cols,
                log,
                backward: false,
            } => {
                let log = *log as i32;
                self.rows(
                    (*rows, *cols),
                    ["softmax_warp4", "softmax_warp32", "softmax_block"],
                    vec![r(0), w(0)],
                    log,
                )?
            }
            Kernel::Softmax {
                rows,
                cols,
                log,
                backward: true,
            } => {
                let log = *log as i32;
                self.rows(
                    (*rows, *cols),
                    [
                        "softmax_bwd_warp4",
                        "softmax_bwd_warp32",
                        "softmax_bwd_block",
                    ],
                    vec![r(0), r(1), w(0)],
                    log,
                )?
            }
            Kernel::CrossEntropy { batch, classes } => {
                let (b, c) = (*batch, *classes);
                if b == 0 {
                    return Ok(self.elementwise("fill", 1, vec![w(0), Arg::I32(1), Arg::F32(0.0)]));
                }
                let rows = Arg::Ptr(Buf::Work, s.alloc(4 * b));
                let mut calls = vec![Call {
                    kernel: "ce_rows",
                    grid: [div_up(b, 8) as u32, 1, 1],
                    args: vec![
                        r(0),
                        r(1),
                        rows.clone(),
                        Arg::I32(int(b)?),
                        Arg::I32(int(c)?),
                    ],
                }];
                calls.extend(self.reduce(s, rows, w(0), &[b], &[false], b as f32)?);
                calls
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
                        kernel: "ce_backward",
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
            Kernel::ActBackwardBias { act, dims: d, axis } => {
                let c = d[*axis];
                let inner: usize = d[axis + 1..].iter().product();
                let outer: usize = d[..*axis].iter().product();
                let splits = self.splits(c, outer * inner, 2048, 64);
                let part = if splits > 1 {
                    Arg::Ptr(Buf::Work, s.alloc(4 * c * splits))
                } else {
                    Arg::Null
                };
                if c == 0 {
                    return Ok(vec![]);
                }
                let mut calls = vec![Call {
                    kernel: "act_bwd_bias",
                    grid: [int(c)? as u32, splits as u32, 1],
                    args: vec![
                        r(0),
                        r(1),
                        w(0),
                        w(1),
                        part.clone(),
                        Arg::I32(int(outer)?),
                        Arg::I32(int(c)?),
                        Arg::I32(int(inner)?),
                        Arg::I32(act_code(*act)),
                        Arg::I32(splits as i32),
                    ],
                }];
                if splits > 1 {
                    calls.extend(self.elementwise(
                        "reduce_finalize",
                        c,
                        vec![
                            part,
                            w(1),
                            Arg::I32(int(c)?),
                            Arg::I32(splits as i32),
                            Arg::F32(1.0),
                        ],
                    ));
                }
                calls
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
                    Arg::Bytes(ew_program(prog)?),
                ]);
                self.elementwise("ew_program", out_n, args)
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
            } => {
                let (n, c, hw) = planes.dims();
                let dims = [
                    Arg::I32(int(c)?),
                    Arg::I32(int(hw)?),
                    Arg::I32(int(n * c * hw)?),
                ];
                if !training {
                    let mut args = vec![r(0), r(1), r(2), r(3), r(4), w(0)];
                    args.extend(dims);
                    args.push(Arg::F32(*eps));
                    return Ok(self.elementwise("bn_infer", n * c * hw, args));
                }
                let splits = self.splits(c, n * hw, 4096, 64);
                let part = Arg::Ptr(Buf::Work, s.alloc(16 * c * splits));
                if c == 0 {
                    return Ok(vec![]);
                }
                let mut calls = vec![Call {
                    kernel: "bn_stats",
                    grid: [c as u32, splits as u32, 1],
                    args: vec![
                        r(0),
                        part.clone(),
                        Arg::I32(int(n)?),
                        Arg::I32(int(c)?),
                        Arg::I32(int(hw)?),
                        Arg::I32(splits as i32),
                    ],
                }];
                calls.extend(self.elementwise(
                    "bn_train_finalize",
                    c,
                    vec![
                        part,
                        w(1),
                        w(2),
                        w(3),
                        w(4),
                        Arg::I32(int(c)?),
                        Arg::I32(splits as i32),
                        Arg::I32(int(n * hw)?),
                        Arg::F32(*eps),
                        Arg::F32(*momentum),
                    ],
                ));
                let mut args = vec![r(0), r(1), r(2), w(1), w(2), w(0)];
                args.extend(dims);
                calls.extend(self.elementwise("bn_normalize", n * c * hw, args));
                calls
            }
            Kernel::BatchNormBackward(planes) => {
                let (n, c, hw) = planes.dims();
                if c == 0 {
                    return Ok(vec![]);
                }
                let splits = self.splits(c, n * hw, 4096, 64);
                let part = Arg::Ptr(Buf::Work, s.alloc(16 * c * splits));
                let sums = Arg::Ptr(Buf::Work, s.alloc(8 * c));
                let mut calls = vec![Call {
                    kernel: "bn_bwd_stats",
                    grid: [c as u32, splits as u32, 1],
                    args: vec![
                        r(0),
                        r(2),
                        r(3),
                        r(4),
                        part.clone(),
                        Arg::I32(int(n)?),
                        Arg::I32(int(c)?),
                        Arg::I32(int(hw)?),
                        Arg::I32(splits as i32),
                    ],
                }];
                calls.extend(self.elementwise(
                    "bn_bwd_finalize",
                    c,
                    vec![
                        part,
                        w(1),
                        w(2),
                        sums.clone(),
                        Arg::I32(int(c)?),
                        Arg::I32(splits as i32),
                    ],
                ));
                calls.extend(self.elementwise(
                    "bn_bwd_dx",
                    n * c * hw,
                    vec![
                        r(0),
                        r(1),
                        r(2),
                        r(3),
                        r(4),
                        sums,
                        w(0),
                        Arg::I32(int(c)?),
                        Arg::I32(int(hw)?),
                        Arg::I32(int(n * c * hw)?),
                        Arg::F32((n * hw) as f32),
                    ],
                ));
                calls
            }
            Kernel::Sgd { config: c, .. } => {
                let per = if c.momentum != 0.0 { 2 } else { 1 };
                let groups = self.groups(l, per)?;
                let Some((tab, count, blocks)) = self.multi_tensor(&groups) else {
                    return Ok(vec![]);
                };
                vec![Call {
                    kernel: "sgd_update",
                    grid: [blocks, 1, 1],
                    args: vec![
                        Arg::arena(0),
                        tab,
                        Arg::I32(count),
                        Arg::Ptr(Buf::Scalars, 0),
                        Arg::I32(c.lr.0 as i32),
                        Arg::F32(c.momentum),
                        Arg::F32(c.weight_decay),
                        Arg::I32(c.nesterov as i32),
                    ],
                }]
            }
            Kernel::Adam { config: c, .. } => {
                let groups = self.groups(l, 3)?;
                let Some((tab, count, blocks)) = self.multi_tensor(&groups) else {
                    return Ok(vec![]);
                };
                vec![Call {
                    kernel: "adam_update",
                    grid: [blocks, 1, 1],
                    args: vec![
                        Arg::arena(0),
                        tab,
                        Arg::I32(count),
                        Arg::Ptr(Buf::Scalars, 0),
                        Arg::I32(c.lr.0 as i32),
                        Arg::I32(c.step.0 as i32),
                        Arg::F32(c.beta1),
                        Arg::F32(c.beta2),
                        Arg::F32(c.eps),
                        Arg::F32(c.weight_decay),
                        Arg::I32(c.decoupled as i32),
                    ],
                }]
            }
        })
    }

    /// Tile choice: the biggest tile that alone fills the GPU without
    /// padding more than a quarter of its outputs, else 64×64.
    fn tile(&self, m: usize, n: usize, batch: usize) -> Tile {
        [TILE_L, TILE_M]
            .into_iter()
            .find(|t| t.blocks(m, n, batch) >= self.sms && t.waste(m, n) <= 1.25)
            .unwrap_or(TILE_S)
    }

    /// Split-K for products whose tiles cannot fill the GPU but whose k is
    /// long: about two blocks per SM, at least 512 of k per split, and
    /// partials within the kernels' 32-bit indexing.
    fn gemm_splits(&self, t: Tile, m: usize, n: usize, k: usize, batch: usize) -> usize {
        let blocks = t.blocks(m, n, batch);
        if blocks >= self.sms || k < 1024 {
            return 1;
        }
        let mut splits = div_up(2 * self.sms, blocks).min(k / 512).clamp(1, 64);
        while splits > 1 && splits * batch * m * n > MAX_ELEMENTS {
            splits -= 1;
        }
        splits.min(MAX_GRID_YZ / batch.max(1)).max(1)
    }

    fn conv_call(
        &self,
        kernel: &'static str,
        t: Tile,
        m: usize,
        cols: usize,
        splits: usize,
        args: Vec<Arg>,
    ) -> Result<Vec<Call>> {
        if m == 0 || cols == 0 {
            return Ok(vec![]);
        }
        let gy = div_up(m, t.bm);
        if gy > MAX_GRID_YZ {
            return Err(unsupported(format!(
                "{m} channels is too many for one grid"
            )));
        }
        Ok(vec![Call {
            kernel,
            grid: [div_up(cols, t.bn) as u32, gy as u32, splits as u32],
            args,
        }])
    }

    fn gemm(&mut self, s: &mut Scratch, g: Gemm) -> Result<Vec<Call>> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(vec![]);
        }
        let t = self.tile(g.m, g.n, g.batch);
        let splits = self.gemm_splits(t, g.m, g.n, g.k, g.batch);
        let gy = div_up(g.m, t.bm);
        if gy > MAX_GRID_YZ || g.batch * splits > MAX_GRID_YZ {
            return Err(unsupported(format!(
                "a {}x{} product in {} batches does not fit one grid",
                g.m, g.n, g.batch
            )));
        }
        let batched = g.batch > 1;
        let (ea, eb) = (t.ea(), t.eb());
        let vec_a = all_aligned(&[g.a, g.lda], ea) && (!batched || g.strides[0].is_multiple_of(ea));
        let vec_b = all_aligned(&[g.b, g.ldb], eb) && (!batched || g.strides[1].is_multiple_of(eb));
        let vec_c = all_aligned(&[g.c, g.ldc], 4) && (!batched || g.strides[2].is_multiple_of(4));
        let flags = vec_a as i32 | (vec_b as i32) << 1 | (vec_c as i32) << 2;
        let bias = g.bias.map_or(Arg::Null, Arg::arena);
        let bias_mode = if g.bias.is_some() { 1 } else { 0 };
        let work = if splits > 1 {
            Arg::Ptr(Buf::Work, s.alloc(4 * splits * g.batch * g.m * g.n))
        } else {
            Arg::Null
        };
        let mut calls = vec![Call {
            kernel: sgemm_kernel(t, g.a_k, g.b_k),
            grid: [
                div_up(g.n, t.bn) as u32,
                gy as u32,
                (g.batch * splits) as u32,
            ],
            args: vec![
                Arg::arena(g.a),
                Arg::arena(g.b),
                Arg::arena(g.c),
                bias.clone(),
                work.clone(),
                Arg::I32(int(g.m)?),
                Arg::I32(int(g.n)?),
                Arg::I32(int(g.k)?),
                Arg::I32(int(g.lda)?),
                Arg::I32(int(g.ldb)?),
                Arg::I32(int(g.ldc)?),
                Arg::I32(int(g.strides[0])?),
                Arg::I32(int(g.strides[1])?),
                Arg::I32(int(g.strides[2])?),
                Arg::I32(splits as i32),
                Arg::I32(bias_mode),
                Arg::I32(g.act),
                Arg::I32(flags),
            ],
        }];
        if splits > 1 {
            calls.extend(self.splitk_reduce(
                work,
                Arg::arena(g.c),
                bias,
                bias_mode,
                g.m,
                g.n,
                g.batch,
                splits,
                g.ldc,
                g.strides[2],
                g.act,
            )?);
        }
        Ok(calls)
    }

    #[allow(clippy::too_many_arguments)]
    fn splitk_reduce(
        &self,
        work: Arg,
        c: Arg,
        bias: Arg,
        bias_mode: i32,
        m: usize,
        n: usize,
        batch: usize,
        splits: usize,
        ldc: usize,
        sc: usize,
        act: i32,
    ) -> Result<Vec<Call>> {
        Ok(self.elementwise(
            "gemm_splitk_reduce",
            batch * m * n,
            vec![
                work,
                c,
                bias,
                Arg::I32(int(m)?),
                Arg::I32(int(n)?),
                Arg::I32(int(batch)?),
                Arg::I32(splits as i32),
                Arg::I32(int(ldc)?),
                Arg::I32(int(sc)?),
                Arg::I32(bias_mode),
                Arg::I32(act),
            ],
        ))
    }

    /// Row-wise kernels over the last axis: a warp per row up to 128 or
    /// 1024 elements, else a block per row.
    fn rows(
        &self,
        (rows, n): (usize, usize),
        kernels: [&'static str; 3],
        mut args: Vec<Arg>,
        log: i32,
    ) -> Result<Vec<Call>> {
        if rows == 0 || n == 0 {
            return Ok(vec![]);
        }
        let (kernel, grid) = if n <= 1024 {
            let k = if n <= 128 { kernels[0] } else { kernels[1] };
            args.push(Arg::I32(int(rows)?));
            (k, div_up(rows, 8))
        } else {
            (kernels[2], rows)
        };
        args.extend([Arg::I32(int(n)?), Arg::I32(log)]);
        Ok(vec![Call {
            kernel,
            grid: [int(grid)? as u32, 1, 1],
            args,
        }])
    }

    /// `dst = (Σ over the axes of `dims` where `keep` is false of src) / div`,
    /// src contiguous, dst contiguous over the kept axes.
    fn reduce(
        &self,
        s: &mut Scratch,
        src: Arg,
        dst: Arg,
        dims: &[usize],
        keep: &[bool],
        div: f32,
    ) -> Result<Vec<Call>> {
        // (dim, stride, kept) with size-1 axes dropped and neighbours of
        // the same kind merged (the source is contiguous, so they merge).
        let mut stride = 1usize;
        let mut axes: Vec<(usize, usize, bool)> = Vec::new();
        for i in (0..dims.len()).rev() {
            let d = dims[i];
            if d != 1 {
                match axes.last_mut() {
                    Some(a) if a.2 == keep[i] => a.0 *= d,
                    _ => axes.push((d, stride, keep[i])),
                }
            }
            stride *= d;
        }
        axes.reverse();
        let kept: Vec<&(usize, usize, bool)> = axes.iter().filter(|a| a.2).collect();
        let red: Vec<&(usize, usize, bool)> = axes.iter().filter(|a| !a.2).collect();
        if kept.len() > MAX_RANK || red.len() > MAX_RANK {
            return Err(unsupported(format!(
                "a reduction of {dims:?} alternates kept and summed axes too often"
            )));
        }
        let ny: usize = kept.iter().map(|a| a.0).product();
        let big_r: usize = red.iter().map(|a| a.0).product();
        if ny == 0 {
            return Ok(vec![]);
        }
        let col = |v: &[&(usize, usize, bool)],
                   f: fn(&(usize, usize, bool)) -> usize|
         -> Result<Vec<i32>> { v.iter().map(|a| int(f(a))).collect() };
        let geom = CStruct::default()
            .i32(kept.len() as i32)
            .i32s(&col(&kept, |a| a.0)?, MAX_RANK)
            .i32s(&col(&kept, |a| a.1)?, MAX_RANK)
            .i32(red.len() as i32)
            .i32s(&col(&red, |a| a.0)?, MAX_RANK)
            .i32s(&col(&red, |a| a.1)?, MAX_RANK)
            .i32(int(big_r)?)
            .arg();
        if big_r <= 64 || (ny >= 32_768 && big_r <= 4096) {
            return Ok(self.elementwise(
                "reduce_small",
                ny,
                vec![src, dst, Arg::I32(int(ny)?), geom, Arg::F32(div)],
            ));
        }
        let splits = self.splits(ny, big_r, 4096, 64);
        let part = if splits > 1 {
            Arg::Ptr(Buf::Work, s.alloc(4 * ny * splits))
        } else {
            Arg::Null
        };
        let mut calls = vec![Call {
            kernel: "reduce_block",
            grid: [int(ny)? as u32, splits as u32, 1],
            args: vec![
                src,
                dst.clone(),
                part.clone(),
                geom,
                Arg::I32(splits as i32),
                Arg::F32(div),
            ],
        }];
        if splits > 1 {
            calls.extend(self.elementwise(
                "reduce_finalize",
                ny,
                vec![
                    part,
                    dst,
                    Arg::I32(int(ny)?),
                    Arg::I32(splits as i32),
                    Arg::F32(div),
                ],
            ));
        }
        Ok(calls)
    }

    /// (grad, param, state...) slots of each tensor of a multi-tensor
    /// optimiser launch with `per` writes per tensor.
    fn groups(&self, l: &Launch, per: usize) -> Result<Vec<(Slot, Vec<Slot>)>> {
        if l.writes.len() != l.reads.len() * per {
            return Err(unsupported(format!(
                "{} gradients but {} parameter/state tensors",
                l.reads.len(),
                l.writes.len()
            )));
        }
        Ok(l.reads
            .iter()
            .enumerate()
            .map(|(i, g)| (*g, l.writes[i * per..(i + 1) * per].to_vec()))
            .collect())
    }

    /// Write the tensor table (kernels/multi_tensor.cuh `MtEntry`) into the
    /// constant buffer; returns its pointer, entry count and block count.
    fn multi_tensor(&mut self, groups: &[(Slot, Vec<Slot>)]) -> Option<(Arg, i32, u32)> {
        let off = self.meta.len().next_multiple_of(16);
        self.meta.resize(off, 0);
        let (mut count, mut blocks) = (0i32, 0usize);
        for (g, w) in groups {
            if g.len == 0 {
                continue;
            }
            let s1 = w.get(1).map_or(0, |s| s.offset);
            let s2 = w.get(2).map_or(0, |s| s.offset);
            let mut offs = vec![g.offset, w[0].offset];
            offs.extend(w[1..].iter().map(|s| s.offset));
            let e = CStruct::default()
                .i64(g.offset as i64)
                .i64(w[0].offset as i64)
                .i64(s1 as i64)
                .i64(s2 as i64)
                .i32(g.len as i32)
                .i32(blocks as i32)
                .i32(all_aligned(&offs, 4) as i32)
                .i32(0);
            self.meta.extend(e.bytes());
            blocks += div_up(g.len, MT_CHUNK);
            count += 1;
        }
        (count > 0).then_some((Arg::Ptr(Buf::Meta, off), count, blocks as u32))
    }
}
