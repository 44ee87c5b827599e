//! Softmax and log-softmax over the last axis, numerically stable (max
//! subtracted), one row per task.

use crate::error::{Error, Result};
use crate::graph::ir::{Graph, ValueId};
use crate::ops::Op;
use rayon::prelude::*;

impl Graph {
    pub fn softmax(&mut self, x: ValueId) -> Result<ValueId> {
        self.softmax_like(Op::Softmax, "softmax", x)
    }
    pub fn log_softmax(&mut self, x: ValueId) -> Result<ValueId> {
        self.softmax_like(Op::LogSoftmax, "log_softmax", x)
    }
    fn softmax_like(&mut self, op: Op, name: &str, x: ValueId) -> Result<ValueId> {
        self.expect_f32(name, x)?;
        let s = self.shape(x).clone();
        if s.rank() == 0 || s.last() == 0 {
            return Err(Error::shape(
                name,
                format!("input {s} has no last axis to normalise"),
            ));
        }
        self.push1(op, vec![x], s)
    }
}

pub fn backward(g: &mut Graph, log: bool, y: ValueId, dy: ValueId) -> Result<ValueId> {
    let s = g.shape(y).clone();
    let op = if log {
        Op::LogSoftmaxBackward
    } else {
        Op::SoftmaxBackward
    };
    g.push1(op, vec![y, dy], s)
}

/// Rows big enough to be worth a rayon task each.
fn rows_par<F: Fn(usize, &mut [f32]) + Sync + Send>(y: &mut [f32], n: usize, f: F) {
    if y.len() >= 1 << 14 {
        y.par_chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        y.chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    }
}

pub fn cpu_softmax(n: usize, log: bool, x: &[f32], y: &mut [f32]) {
    rows_par(y, n, |i, yr| {
        let xr = &x[i * n..(i + 1) * n];
        let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0.0f32;
        for (y, &x) in yr.iter_mut().zip(xr) {
            *y = (x - m).exp();
            sum += *y;
        }
        if log {
            let ls = sum.ln();
            for (y, &x) in yr.iter_mut().zip(xr) {
                *y = x - m - ls;
            }
        } else {
            let inv = 1.0 / sum;
            yr.iter_mut().for_each(|y| *y *= inv);
        }
    });
}

/// softmax: dx = y ⊙ (dy − Σ dy⊙y); log-softmax: dx = dy − exp(y) Σ dy.
pub fn cpu_softmax_backward(n: usize, log: bool, y: &[f32], dy: &[f32], dx: &mut [f32]) {
    rows_par(dx, n, |i, dxr| {
        let yr = &y[i * n..(i + 1) * n];
        let dyr = &dy[i * n..(i + 1) * n];
        if log {
            let s: f32 = dyr.iter().sum();
            for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
                *dx = dy - y.exp() * s;
            }
        } else {
            let s: f32 = dyr.iter().zip(yr).map(|(a, b)| a * b).sum();
            for ((dx, &y), &dy) in dxr.iter_mut().zip(yr).zip(dyr) {
                *dx = y * (dy - s);
            }
        }
    });
}
