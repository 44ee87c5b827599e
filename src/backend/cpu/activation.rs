//! CPU kernels of `ops::activation`.

use super::isa;
use crate::ops::activation::*;

use super::par::{map1, map2, map2_inplace, map_inplace};

// Each kernel matches on the activation once, outside its loop, so every
// loop body is one activation's code and vectorises.

pub fn cpu_forward(a: Activation, x: &[f32], y: &mut [f32]) {
    match a {
        Activation::Relu => map1(y, x, relu),
        Activation::Gelu => chunked(y, |at, y| gelu_forward(&x[at..at + y.len()], y)),
        _ => map1(y, x, |x| a.forward(x)),
    }
}

/// In place, for fused epilogues.
pub fn cpu_forward_inplace(a: Activation, y: &mut [f32]) {
    match a {
        Activation::Gelu => chunked(y, |_, y| gelu_forward_inplace(y)),
        Activation::Relu => map_inplace(y, relu),
        _ => map_inplace(y, |y| a.forward(y)),
    }
}

pub fn cpu_backward(a: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    match a {
        Activation::Gelu => chunked(dx, |at, dx| {
            let n = dx.len();
            gelu_backward(&saved[at..at + n], &dy[at..at + n], dx)
        }),
        Activation::Relu => map2(dx, saved, dy, |s, dy| Activation::Relu.backward(s, dy)),
        _ => map2(dx, saved, dy, |s, dy| a.backward(s, dy)),
    }
}

/// `y = act(y + r)`: a fused residual add.
pub fn cpu_add_act_inplace(a: Option<Activation>, y: &mut [f32], r: &[f32]) {
    match a {
        None => map2_inplace(y, r, |y, r| y + r),
        Some(Activation::Relu) => map2_inplace(y, r, |y, r| relu(y + r)),
        Some(a) => map2_inplace(y, r, |y, r| a.forward(y + r)),
    }
}

/// In place over dy.
pub fn cpu_backward_inplace(a: Activation, saved: &[f32], dy_dx: &mut [f32]) {
    match a {
        Activation::Gelu => chunked(dy_dx, |at, d| {
            let n = d.len();
            gelu_backward_inplace(&saved[at..at + n], d)
        }),
        Activation::Relu => map2_inplace(dy_dx, saved, |dy, s| Activation::Relu.backward(s, dy)),
        _ => map2_inplace(dy_dx, saved, |dy, s| a.backward(s, dy)),
    }
}

/// Runs `f(offset, chunk)` over chunks of `y`: ~32K elements per rayon
/// task when the loop is worth splitting.
fn chunked(y: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    if y.len() >= 2 * CHUNK && super::par::threads() > 1 {
        y.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, y)| f(c * CHUNK, y));
    } else {
        f(0, y);
    }
}

// GELU gets loops of its own, compiled for AVX-512/AVX2: its definition
// (`Activation::forward`, through `math::normal_cdf`) vectorises there.

isa::vectorized! {
    fn gelu_forward(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = Activation::Gelu.forward(x);
        }
    }
}

isa::vectorized! {
    fn gelu_forward_inplace(y: &mut [f32]) {
        for y in y.iter_mut() {
            *y = Activation::Gelu.forward(*y);
        }
    }
}

isa::vectorized! {
    /// `dy·(Φ(x) + x·φ(x))`.
    fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            *d = Activation::Gelu.backward(x, g);
        }
    }
}

isa::vectorized! {
    fn gelu_backward_inplace(x: &[f32], dy_dx: &mut [f32]) {
        for (d, &x) in dy_dx.iter_mut().zip(x) {
            *d = Activation::Gelu.backward(x, *d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_keeps_nan_as_pytorch_does() {
        assert!(relu(f32::NAN).is_nan());
        assert!(Activation::Relu.forward(f32::NAN).is_nan());
        assert_eq!((relu(-2.5), relu(0.0), relu(3.0)), (0.0, 0.0, 3.0));
        let mut y = [0.0f32; 3];
        cpu_forward(Activation::Relu, &[f32::NAN, -1.0, 2.0], &mut y);
        assert!(y[0].is_nan() && y[1] == 0.0 && y[2] == 2.0, "{y:?}");
    }
}
