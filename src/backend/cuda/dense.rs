//! CUDA lowering of the dense products: tile and split-K choices, GEMMs
//! (matmul, linear) and the implicit-GEMM convolutions.

use super::args::*;
use super::layout::*;
use super::plan::{operands, Gemm, Planner, Scratch, MAX_GRID_YZ};
use crate::error::{Error, Result};
use crate::graph::kernel::Kernel;
use crate::graph::plan::Launch;
use crate::ops::conv2d::{Conv2dGeom, ConvProduct};

impl Planner {
    /// The launches on the dense products: matmul, linear and the three
    /// convolutions.
    pub(super) fn dense(
        &mut self,
        l: &Launch,
        kernel: &Kernel,
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
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
            Kernel::Conv2d { pool: true, .. } => return Err(crate::backend::no_fused_pool("cuda")),
            Kernel::Conv2d {
                geom: g,
                bias,
                act,
                residual,
                pool: false,
            } => {
                let (_, cols, k) = g.gemm_dims(ConvProduct::Forward);
                let t = self.tile(g.c_out, cols, 1);
                let res = match residual {
                    true => r(2 + *bias as usize),
                    false => Arg::Null,
                };
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
                        res,
                        w(0),
                        Arg::Bytes(conv_geom(g)?),
                        Arg::I32(act.map_or(ACT_NONE, act_code)),
                        Arg::I32(all_aligned(&[l.reads[1].offset, k], t.ea()) as i32),
                    ],
                )?
            }
            Kernel::Conv2dGradInput(g) => {
                let (_, cols, _) = g.gemm_dims(ConvProduct::GradInput);
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
            Kernel::Conv2dGradWeight(g) => self.conv2d_grad_weight(l, g, s)?,
            other => {
                return Err(Error::Usage(format!(
                    "cuda: {other:?} is not a dense-product kernel"
                )))
            }
        })
    }

    /// Tile choice: the biggest tile that alone fills the GPU without
    /// padding more than a quarter of its outputs, else 64×64.
    pub(super) fn tile(&self, m: usize, n: usize, batch: usize) -> Tile {
        [TILE_L, TILE_M]
            .into_iter()
            .find(|t| t.blocks(m, n, batch) >= self.sms && t.waste(m, n) <= 1.25)
            .unwrap_or(TILE_S)
    }

    /// Split-K for products whose tiles cannot fill the GPU but whose k is
    /// long: about two blocks per SM, at least 512 of k per split, and
    /// partials within the kernels' 32-bit indexing.
    pub(super) fn gemm_splits(&self, t: Tile, m: usize, n: usize, k: usize, batch: usize) -> usize {
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

    pub(super) fn conv_call(
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

    pub(super) fn gemm(&mut self, s: &mut Scratch, g: Gemm) -> Result<Vec<Call>> {
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
    pub(super) fn splitk_reduce(
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

    pub(super) fn conv2d_grad_weight(
        &mut self,
        l: &Launch,
        g: &Conv2dGeom,
        s: &mut Scratch,
    ) -> Result<Vec<Call>> {
        let (r, w) = operands(l);
        Ok({
            let (m, n, k) = g.gemm_dims(ConvProduct::GradWeight);
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
        })
    }
}
