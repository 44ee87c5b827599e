//! CPU kernels of `ops::dropout`.

use crate::ops::dropout::*;

/// `x: None` runs in place over `y`.
pub fn cpu_dropout(p: f32, seed: u32, step: u32, x: Option<&[f32]>, y: &mut [f32]) {
    let scale = 1.0 / (1.0 - p);
    for i in 0..y.len() {
        let v = x.map_or(y[i], |x| x[i]);
        y[i] = if keep(seed, step, i as u32, p) {
            v * scale
        } else {
            0.0
        };
    }
}
