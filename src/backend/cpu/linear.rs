//! CPU kernels of `ops::linear`.

use crate::backend::cpu::matmul::{sgemm, Threads};
use crate::ops::activation::Activation;

#[allow(clippy::too_many_arguments)]
pub fn cpu_forward(
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    act: Option<Activation>,
    y: &mut [f32],
) {
    if let Some(b) = b {
        for r in y.chunks_mut(n) {
            r.copy_from_slice(b);
        }
    }
    sgemm(
        rows,
        n,
        k,
        x,
        false,
        w,
        true,
        y,
        b.is_some(),
        Threads::Parallel,
    );
    if let Some(a) = act {
        super::activation::cpu_forward_inplace(a, y);
    }
}
