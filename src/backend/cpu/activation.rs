//! CPU kernels of `ops::activation`.

use crate::ops::activation::*;
use rayon::prelude::*;

const PAR_MIN: usize = 1 << 15;

pub fn cpu_forward(a: Activation, x: &[f32], y: &mut [f32]) {
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(y, x)| *y = a.forward(*x));
    } else {
        y.iter_mut().zip(x).for_each(|(y, x)| *y = a.forward(*x));
    }
}

/// In place, for fused epilogues.
pub fn cpu_forward_inplace(a: Activation, y: &mut [f32]) {
    if y.len() >= PAR_MIN && super::par::threads() > 1 {
        y.par_iter_mut().for_each(|y| *y = a.forward(*y));
    } else {
        y.iter_mut().for_each(|y| *y = a.forward(*y));
    }
}

pub fn cpu_backward(a: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    let f = |(dx, (s, dy)): (&mut f32, (&f32, &f32))| *dx = a.backward(*s, *dy);
    if dx.len() >= PAR_MIN && super::par::threads() > 1 {
        dx.par_iter_mut()
            .zip(saved.par_iter().zip(dy.par_iter()))
            .for_each(f);
    } else {
        dx.iter_mut().zip(saved.iter().zip(dy.iter())).for_each(f);
    }
}

/// In place over dy.
pub fn cpu_backward_inplace(a: Activation, saved: &[f32], dy_dx: &mut [f32]) {
    let f = |(d, s): (&mut f32, &f32)| *d = a.backward(*s, *d);
    if dy_dx.len() >= PAR_MIN && super::par::threads() > 1 {
        dy_dx.par_iter_mut().zip(saved.par_iter()).for_each(f);
    } else {
        dy_dx.iter_mut().zip(saved.iter()).for_each(f);
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
