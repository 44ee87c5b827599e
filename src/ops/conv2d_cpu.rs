//! PLACEHOLDER naive kernels until the im2col+GEMM kernels land.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
}
impl Conv2dGeom {
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let eh = self.dilation.0 * (self.kh - 1) + 1;
        let ew = self.dilation.1 * (self.kw - 1) + 1;
        if self.h + 2 * self.pad.0 < eh || self.w + 2 * self.pad.1 < ew {
            return None;
        }
        Some((
            (self.h + 2 * self.pad.0 - eh) / self.stride.0 + 1,
            (self.w + 2 * self.pad.1 - ew) / self.stride.1 + 1,
        ))
    }
    pub fn flops_forward(&self) -> u64 {
        let (oh, ow) = self.out_hw().unwrap();
        2 * (self.n * self.c_out * oh * ow * self.c_in * self.kh * self.kw) as u64
    }
}
fn each(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = g.out_hw().unwrap();
    for n in 0..g.n {
        for o in 0..g.c_out {
            for y in 0..oh {
                for x in 0..ow {
                    for c in 0..g.c_in {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy =
                                    (y * g.stride.0 + i * g.dilation.0) as isize - g.pad.0 as isize;
                                let ix =
                                    (x * g.stride.1 + j * g.dilation.1) as isize - g.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                f(
                                    ((n * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize,
                                    ((o * g.c_in + c) * g.kh + i) * g.kw + j,
                                    ((n * g.c_out + o) * oh + y) * ow + x,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
pub fn conv2d_forward(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    for (i, v) in y.iter_mut().enumerate() {
        *v = bias.map(|b| b[(i / (oh * ow)) % g.c_out]).unwrap_or(0.0);
    }
    each(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
}
pub fn conv2d_grad_input(g: &Conv2dGeom, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    dx.fill(0.0);
    each(g, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
}
pub fn conv2d_grad_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    dw.fill(0.0);
    each(g, |xi, wi, yi| dw[wi] += dy[yi] * x[xi]);
}
pub fn conv2d_grad_bias(g: &Conv2dGeom, dy: &[f32], db: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    db.fill(0.0);
    for (i, v) in dy.iter().enumerate() {
        db[(i / (oh * ow)) % g.c_out] += v;
    }
}
