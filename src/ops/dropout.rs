//! Inverted dropout. The keep mask is a hash of (seed, step, index), not a
//! stored tensor: backward recomputes it, every backend computes the same
//! mask, and the same seed gives the same run. Identity in inference.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;

/// PCG-style integer hash; cheap on every backend, and good enough that
/// neighbouring indices get independent-looking bits.
#[inline(always)]
pub fn hash32(x: u32) -> u32 {
    let s = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// Whether element `idx` is kept at probability `1 - p`.
#[inline(always)]
pub fn keep(seed: u32, step: u32, idx: u32, p: f32) -> bool {
    let h = hash32(idx ^ hash32(seed ^ hash32(step)));
    ((h >> 8) as f32) * (1.0 / 16_777_216.0) >= p
}

impl Graph {
    /// `seed` distinguishes dropout layers; the step counter varies the mask
    /// from step to step.
    pub fn dropout(&mut self, x: ValueId, p: f32, seed: u32) -> Result<ValueId> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::shape(
                "dropout",
                format!("probability {p} is not in [0, 1)"),
            ));
        }
        if !self.training || p == 0.0 {
            return Ok(x);
        }
        let step = self.scalar("step");
        let s = self.shape(x).clone();
        self.push1(Op::Dropout { p, seed, step }, vec![x], s)
    }
}
