//! CPU kernels of `ops::elementwise`.

use crate::ops::activation::relu;
use crate::ops::elementwise::*;
use crate::ops::{Activation, BinaryKind};

const BLOCK: usize = 1024;

// Each helper matches once, outside its loop, so the loops vectorise.

fn act(a: Activation, v: &mut [f32]) {
    match a {
        Activation::Relu => v.iter_mut().for_each(|x| *x = relu(*x)),
        _ => v.iter_mut().for_each(|x| *x = a.forward(*x)),
    }
}

/// `s = act'(s) · d` (s holds the saved value).
fn act_backward(a: Activation, s: &mut [f32], d: &[f32]) {
    let each = |f: &dyn Fn(f32, f32) -> f32, s: &mut [f32]| {
        for (s, d) in s.iter_mut().zip(d) {
            *s = f(*s, *d);
        }
    };
    match a {
        Activation::Relu => {
            for (s, d) in s.iter_mut().zip(d) {
                *s = Activation::Relu.backward(*s, *d);
            }
        }
        _ => each(&|s, d| a.backward(s, d), s),
    }
}

fn binary(k: BinaryKind, a: &mut [f32], b: &[f32]) {
    let zip = a.iter_mut().zip(b);
    match k {
        BinaryKind::Add => zip.for_each(|(a, b)| *a += b),
        BinaryKind::Sub => zip.for_each(|(a, b)| *a -= b),
        BinaryKind::Mul => zip.for_each(|(a, b)| *a *= b),
        BinaryKind::Div => zip.for_each(|(a, b)| *a /= b),
    }
}

/// Evaluate the program block by block: each instruction sweeps a block of
/// registers, so the inner loops vectorise.
/// `inplace: Some(k)`: input `k` is read from `y` (each block is loaded
/// before it is overwritten).
pub fn cpu_elementwise(prog: &[EwInstr], inputs: &[&[f32]], inplace: Option<usize>, y: &mut [f32]) {
    use rayon::prelude::*;
    // The register stack is made once per task, not per block: zeroing it
    // cost more than the block's own work.
    let new_stack = || vec![[0.0f32; BLOCK]; MAX_STACK];
    let run = |stack: &mut Vec<[f32; BLOCK]>, (bi, yb): (usize, &mut [f32])| {
        let start = bi * BLOCK;
        let len = yb.len();
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
                EwInstr::Act(a) => act(a, &mut stack[sp - 1][..len]),
                EwInstr::Scale(s) => stack[sp - 1][..len].iter_mut().for_each(|v| *v *= s),
                EwInstr::ActBackward(a) => {
                    let (lo, hi) = stack.split_at_mut(sp - 1);
                    act_backward(a, &mut lo[sp - 2][..len], &hi[0][..len]);
                    sp -= 1;
                }
                EwInstr::Binary(k) => {
                    let (lo, hi) = stack.split_at_mut(sp - 1);
                    binary(k, &mut lo[sp - 2][..len], &hi[0][..len]);
                    sp -= 1;
                }
            }
        }
        yb.copy_from_slice(&stack[0][..len]);
    };
    if y.len() >= 1 << 15 {
        y.par_chunks_mut(BLOCK)
            .enumerate()
            .with_min_len(super::par::min_len(32))
            .for_each_init(new_stack, run);
    } else {
        let mut stack = new_stack();
        y.chunks_mut(BLOCK)
            .enumerate()
            .for_each(|b| run(&mut stack, b));
    }
}
