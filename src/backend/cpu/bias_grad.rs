//! Activation backward fused with the bias gradient: one pass over dy
//! writes the masked gradient and sums it per channel, instead of a mask
//! pass and a separate reduction pass that reads it again.

use crate::ops::Activation;

/// `dx = act'(saved)·dy`; `db[c] = Σ dx` over every axis but `axis`.
/// `shape` is dy's shape. Per-channel sums run in a fixed order.
/// `dy: None` runs in place: dy is read from `dx` before it is overwritten.
pub fn cpu_act_backward_bias(
    act: Activation,
    shape: &[usize],
    axis: usize,
    saved: &[f32],
    dy: Option<&[f32]>,
    dx: &mut [f32],
    db: &mut [f32],
) {
    let c = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    db.fill(0.0);
    for o in 0..outer {
        for (ch, dbc) in db.iter_mut().enumerate().take(c) {
            let base = (o * c + ch) * inner;
            let mut s = 0.0f32;
            for i in base..base + inner {
                let v = act.backward(saved[i], dy.map_or(dx[i], |d| d[i]));
                dx[i] = v;
                s += v;
            }
            *dbc += s;
        }
    }
}
