//! CPU kernels of `ops::activation`.

use crate::ops::activation::*;

use super::par::{map1, map2, map2_inplace, map_inplace};

// Each kernel matches on the activation once, outside its loop, so every
// loop body is one activation's code and vectorises.

pub fn cpu_forward(a: Activation, x: &[f32], y: &mut [f32]) {
    match a {
        Activation::Relu => map1(y, x, relu),
        _ => map1(y, x, |x| a.forward(x)),
    }
}

/// In place, for fused epilogues.
pub fn cpu_forward_inplace(a: Activation, y: &mut [f32]) {
    match a {
        Activation::Relu => map_inplace(y, relu),
        _ => map_inplace(y, |y| a.forward(y)),
    }
}

pub fn cpu_backward(a: Activation, saved: &[f32], dy: &[f32], dx: &mut [f32]) {
    match a {
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
        Activation::Relu => map2_inplace(dy_dx, saved, |dy, s| Activation::Relu.backward(s, dy)),
        _ => map2_inplace(dy_dx, saved, |dy, s| a.backward(s, dy)),
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
