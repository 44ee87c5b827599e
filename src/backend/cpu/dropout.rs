//! CPU kernels of `ops::dropout`.

use super::isa;
use crate::ops::dropout::*;

/// `x: None` runs in place over `y`. Split into ~32K-element tasks, each
/// a vectorised loop (the hash is plain integer arithmetic).
pub fn cpu_dropout(p: f32, seed: u32, step: u32, x: Option<&[f32]>, y: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let base = hash32(seed ^ hash32(step));
    let run = |c: usize, y: &mut [f32]| {
        let x = x.map(|x| &x[c * CHUNK..c * CHUNK + y.len()]);
        dropout_chunk(p, base, (c * CHUNK) as u32, x, y)
    };
    if y.len() >= 2 * CHUNK && super::par::threads() > 1 {
        y.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, y)| run(c, y));
    } else {
        for (c, y) in y.chunks_mut(CHUNK).enumerate() {
            run(c, y);
        }
    }
}

isa::vectorized! {
    /// Elements `first..first + y.len()`; `base` is `hash32(seed ^ hash32(step))`,
    /// so each element's test is [`keep`]'s.
    fn dropout_chunk(p: f32, base: u32, first: u32, x: Option<&[f32]>, y: &mut [f32]) {
        let scale = 1.0 / (1.0 - p);
        let keep = |i: usize| {
            let h = hash32((first + i as u32) ^ base);
            ((h >> 8) as f32) * (1.0 / 16_777_216.0) >= p
        };
        match x {
            Some(x) => {
                for (i, (y, &v)) in y.iter_mut().zip(x).enumerate() {
                    *y = if keep(i) { v * scale } else { 0.0 };
                }
            }
            None => {
                for (i, y) in y.iter_mut().enumerate() {
                    *y = if keep(i) { *y * scale } else { 0.0 };
                }
            }
        }
    }
}
