//! Embedding gather and its deterministic scatter-add on the CPU.

use super::par::min_len;
use rayon::prelude::*;

/// `out[i] = weight[ids[i]]` (`dim`-wide rows; zeros for an id past the
/// vocabulary).
pub fn cpu_embedding_forward(dim: usize, weight: &[f32], ids: &[u32], out: &mut [f32]) {
    if dim == 0 {
        return;
    }
    let vocab = weight.len() / dim;
    out.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .with_min_len(min_len(256))
        .for_each(|(o, &id)| match id as usize {
            v if v < vocab => o.copy_from_slice(&weight[v * dim..(v + 1) * dim]),
            _ => o.fill(0.0),
        });
}

/// `dweight[v] = Σ_{i: ids[i]=v} dy[i]`, each sum taken in position
/// order by the one task that owns row `v` (tasks own row ranges and scan
/// all ids), so the result does not depend on the thread count.
pub fn cpu_embedding_backward(dim: usize, ids: &[u32], dy: &[f32], dweight: &mut [f32]) {
    if dim == 0 {
        return;
    }
    let vocab = dweight.len() / dim;
    let rows_per_task = vocab.div_ceil(4 * super::par::threads()).max(64);
    dweight
        .par_chunks_mut(rows_per_task * dim)
        .enumerate()
        .with_min_len(min_len(1))
        .for_each(|(task, block)| {
            block.fill(0.0);
            let lo = task * rows_per_task;
            let hi = lo + block.len() / dim;
            for (i, &id) in ids.iter().enumerate() {
                let v = id as usize;
                if (lo..hi).contains(&v) {
                    let row = &mut block[(v - lo) * dim..(v - lo + 1) * dim];
                    for (w, &g) in row.iter_mut().zip(&dy[i * dim..(i + 1) * dim]) {
                        *w += g;
                    }
                }
            }
        });
}
