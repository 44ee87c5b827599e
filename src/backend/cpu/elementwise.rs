//! CPU kernels of `ops::elementwise`.

use crate::ops::elementwise::*;

const BLOCK: usize = 256;

/// Evaluate the program block by block: each instruction sweeps a block of
/// registers, so the inner loops vectorise.
/// `inplace: Some(k)`: input `k` is read from `y` (each block is loaded
/// before it is overwritten).
pub fn cpu_elementwise(prog: &[EwInstr], inputs: &[&[f32]], inplace: Option<usize>, y: &mut [f32]) {
    use rayon::prelude::*;
    let run = |(bi, yb): (usize, &mut [f32])| {
        let start = bi * BLOCK;
        let len = yb.len();
        let mut stack = [[0.0f32; BLOCK]; MAX_STACK];
        let mut sp = 0usize;
        for ins in prog {
            match *ins {
                EwInstr::Input(i) => {
                    if inplace == Some(i as usize) {
                        stack[sp][..len].copy_from_slice(yb);
                        sp += 1;
                        continue;
                    }
                    let src = inputs[i as usize];
                    if src.len() == 1 {
                        stack[sp][..len].fill(src[0]);
                    } else {
                        stack[sp][..len].copy_from_slice(&src[start..start + len]);
                    }
                    sp += 1;
                }
                EwInstr::Act(a) => stack[sp - 1][..len]
                    .iter_mut()
                    .for_each(|v| *v = a.forward(*v)),
                EwInstr::Scale(s) => stack[sp - 1][..len].iter_mut().for_each(|v| *v *= s),
                EwInstr::ActBackward(a) => {
                    let (lo, hi) = stack.split_at_mut(sp - 1);
                    for (s, d) in lo[sp - 2][..len].iter_mut().zip(&hi[0][..len]) {
                        *s = a.backward(*s, *d);
                    }
                    sp -= 1;
                }
                EwInstr::Binary(k) => {
                    let (lo, hi) = stack.split_at_mut(sp - 1);
                    for (a, b) in lo[sp - 2][..len].iter_mut().zip(&hi[0][..len]) {
                        *a = k.apply(*a, *b);
                    }
                    sp -= 1;
                }
            }
        }
        yb.copy_from_slice(&stack[0][..len]);
    };
    if y.len() >= 1 << 15 {
        y.par_chunks_mut(BLOCK)
            .enumerate()
            .with_min_len(super::par::min_len(1))
            .for_each(run);
    } else {
        y.chunks_mut(BLOCK).enumerate().for_each(run);
    }
}
