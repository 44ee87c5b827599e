//! A fused chain of elementwise ops: one kernel that runs a short stack
//! program over every element. The program is data (a uniform buffer on
//! GPUs, where every thread takes the same branch), so fusing a new chain
//! needs no code generation and no new pipeline.

use crate::ops::{Activation, BinaryKind};

/// One instruction of the stack program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EwInstr {
    /// Push input `i` at this element (a one-element input is broadcast).
    Input(u8),
    /// Replace the top with `act(top)`.
    Act(Activation),
    /// Pop dy, pop saved, push `act'(saved)·dy`.
    ActBackward(Activation),
    /// Pop b, pop a, push `a ∘ b`.
    Binary(BinaryKind),
    /// Replace the top with `top · alpha`.
    Scale(f32),
}

/// Deepest stack a program may use (fixed-size registers on every backend).
pub const MAX_STACK: usize = 8;
/// Most inputs a fused chain may read.
pub const MAX_INPUTS: usize = 6;

/// Stack depth a program reaches, or None if it is malformed.
pub fn max_depth(prog: &[EwInstr]) -> Option<usize> {
    let (mut d, mut m) = (0usize, 0usize);
    for i in prog {
        match i {
            EwInstr::Input(_) => d += 1,
            EwInstr::Act(_) | EwInstr::Scale(_) => {
                if d < 1 {
                    return None;
                }
            }
            EwInstr::ActBackward(_) | EwInstr::Binary(_) => {
                if d < 2 {
                    return None;
                }
                d -= 1;
            }
        }
        m = m.max(d);
    }
    (d == 1).then_some(m)
}
