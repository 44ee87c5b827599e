//! Encoders for the planner: kernel argument structs in the kernels' C
//! layouts (convolution and pooling geometry, strided views, the fused
//! elementwise program), the GEMM tile shapes and the size checks.

use super::args::*;
use crate::error::{Error, Result};
use crate::ops::conv2d::Conv2dGeom;
use crate::ops::elementwise::EwInstr;
use crate::ops::pool::Pool2dGeom;

/// Largest tensor the kernels index: 32-bit arithmetic, with headroom so a
/// grid-stride loop cannot overflow.
pub const MAX_ELEMENTS: usize = (1 << 30) - 1;

pub(super) fn unsupported(detail: impl Into<String>) -> Error {
    Error::Device {
        device: "cuda".into(),
        detail: detail.into(),
    }
}

/// A size as a kernel's `int`.
pub(super) fn int(v: usize) -> Result<i32> {
    if v > MAX_ELEMENTS {
        return Err(Error::Limit(format!(
            "{v} elements: the CUDA kernels index at most {MAX_ELEMENTS} per tensor"
        )));
    }
    Ok(v as i32)
}

pub(super) fn div_up(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// A block tile of the GEMM core (kernels/gemm.cuh): BM × BN outputs per
/// block of 256 threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tile {
    pub bm: usize,
    pub bn: usize,
}

pub(super) const TILE_L: Tile = Tile { bm: 128, bn: 128 };
pub(super) const TILE_M: Tile = Tile { bm: 64, bn: 128 };
pub(super) const TILE_S: Tile = Tile { bm: 64, bn: 64 };

impl Tile {
    /// Elements per thread of an A (rows M) or B (rows N) tile load, and
    /// so the alignment their vector loads need.
    pub(super) fn ea(self) -> usize {
        self.bm * 8 / BLOCK as usize
    }
    pub(super) fn eb(self) -> usize {
        self.bn * 8 / BLOCK as usize
    }
    pub(super) fn blocks(self, m: usize, n: usize, batch: usize) -> usize {
        div_up(m, self.bm) * div_up(n, self.bn) * batch
    }
    /// Computed / useful outputs (padding of partial tiles).
    pub(super) fn waste(self, m: usize, n: usize) -> f64 {
        (div_up(m, self.bm) * self.bm * div_up(n, self.bn) * self.bn) as f64 / (m * n).max(1) as f64
    }
    /// Pick a kernel name by tile: `[l, m, s]`.
    pub(super) fn pick(self, names: [&'static str; 3]) -> &'static str {
        match self {
            TILE_L => names[0],
            TILE_M => names[1],
            _ => names[2],
        }
    }
}

pub(super) fn sgemm_kernel(t: Tile, a_k: bool, b_k: bool) -> &'static str {
    match (a_k, b_k) {
        (true, true) => t.pick(["sgemm_l_kk", "sgemm_m_kk", "sgemm_s_kk"]),
        (true, false) => t.pick(["sgemm_l_kn", "sgemm_m_kn", "sgemm_s_kn"]),
        (false, true) => t.pick(["sgemm_l_mk", "sgemm_m_mk", "sgemm_s_mk"]),
        (false, false) => t.pick(["sgemm_l_mn", "sgemm_m_mn", "sgemm_s_mn"]),
    }
}

pub(super) fn conv_geom(g: &Conv2dGeom) -> Result<Vec<u8>> {
    let v = g
        .kernel_params()
        .ok_or_else(|| unsupported("conv2d: bad geometry"))?;
    i32_struct(&v)
}

pub(super) fn pool_geom(g: &Pool2dGeom) -> Result<Vec<u8>> {
    let v = g
        .kernel_params()
        .ok_or_else(|| unsupported("pool: bad geometry"))?;
    i32_struct(&[&[g.n * g.c][..], &v].concat())
}

/// A struct of `int`s, each checked to fit.
fn i32_struct(v: &[usize]) -> Result<Vec<u8>> {
    let v: Vec<i32> = v.iter().map(|&x| int(x)).collect::<Result<_>>()?;
    Ok(CStruct::default().i32s(&v, v.len()).bytes())
}

/// The `Strided` struct for an output of `dims` and two operands' strides:
/// size-1 axes dropped and axes merged where both operands are contiguous
/// across them, so common cases need one or two axes.
pub(super) fn strided(dims: &[usize], s0: &[usize], s1: &[usize]) -> Result<Vec<u8>> {
    let mut axes: Vec<[usize; 3]> = Vec::new();
    for i in 0..dims.len() {
        if dims[i] == 1 {
            continue;
        }
        let cur = [dims[i], s0[i], s1[i]];
        match axes.last_mut() {
            Some(prev) if prev[1] == cur[1] * cur[0] && prev[2] == cur[2] * cur[0] => {
                *prev = [prev[0] * cur[0], cur[1], cur[2]];
            }
            _ => axes.push(cur),
        }
    }
    if axes.is_empty() {
        axes.push([1, 0, 0]);
    }
    if axes.len() > MAX_RANK {
        return Err(unsupported(format!(
            "a strided view of {dims:?} needs {} axes after merging (at most {MAX_RANK})",
            axes.len()
        )));
    }
    let col = |j: usize| -> Result<Vec<i32>> { axes.iter().map(|a| int(a[j])).collect() };
    Ok(CStruct::default()
        .i32(axes.len() as i32)
        .i32s(&col(0)?, MAX_RANK)
        .i32s(&col(1)?, MAX_RANK)
        .i32s(&col(2)?, MAX_RANK)
        .bytes())
}

/// The fused elementwise program with its stack resolved to slots:
/// `code = op | slot << 8 | arg << 16` (see kernels/elementwise.cu).
pub(super) fn elementwise(prog: &[EwInstr]) -> Result<Vec<u8>> {
    if prog.len() > EW_MAX_INSTR {
        return Err(unsupported(format!(
            "fused elementwise program of {} instructions (at most {EW_MAX_INSTR})",
            prog.len()
        )));
    }
    let (mut codes, mut imms) = (Vec::new(), Vec::new());
    let mut sp = 0usize;
    let bad = || unsupported("malformed fused elementwise program");
    for ins in prog {
        let (op, slot, arg, imm) = match *ins {
            EwInstr::Input(i) => {
                sp += 1;
                (0, sp - 1, i as i32, 0.0)
            }
            EwInstr::Act(a) => (1, sp.checked_sub(1).ok_or_else(bad)?, act_code(a), 0.0),
            EwInstr::ActBackward(a) => {
                let d = sp.checked_sub(2).ok_or_else(bad)?;
                sp -= 1;
                (2, d, act_code(a), 0.0)
            }
            EwInstr::Binary(k) => {
                let d = sp.checked_sub(2).ok_or_else(bad)?;
                sp -= 1;
                (3, d, binary_code(k), 0.0)
            }
            EwInstr::Scale(s) => (4, sp.checked_sub(1).ok_or_else(bad)?, 0, s),
        };
        if sp > EW_SLOTS || slot >= EW_SLOTS {
            return Err(unsupported(format!(
                "fused elementwise program needs more than {EW_SLOTS} stack slots"
            )));
        }
        codes.push(op | (slot as i32) << 8 | arg << 16);
        imms.push(imm);
    }
    if sp != 1 {
        return Err(bad());
    }
    let mut s = CStruct::default()
        .i32(prog.len() as i32)
        .i32s(&codes, EW_MAX_INSTR);
    for i in 0..EW_MAX_INSTR {
        s = s.f32(imms.get(i).copied().unwrap_or(0.0));
    }
    Ok(s.bytes())
}

pub(super) fn all_aligned(offsets: &[usize], e: usize) -> bool {
    offsets.iter().all(|o| o.is_multiple_of(e))
}
