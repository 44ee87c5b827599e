//! PLACEHOLDER naive kernels until the real ones land.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
}
impl Pool2dGeom {
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        if self.h + 2 * self.pad.0 < self.kh || self.w + 2 * self.pad.1 < self.kw {
            return None;
        }
        Some((
            (self.h + 2 * self.pad.0 - self.kh) / self.stride.0 + 1,
            (self.w + 2 * self.pad.1 - self.kw) / self.stride.1 + 1,
        ))
    }
}
fn win(g: &Pool2dGeom, y: usize, x: usize) -> impl Iterator<Item = Option<usize>> + '_ {
    (0..g.kh).flat_map(move |i| {
        (0..g.kw).map(move |j| {
            let iy = (y * g.stride.0 + i) as isize - g.pad.0 as isize;
            let ix = (x * g.stride.1 + j) as isize - g.pad.1 as isize;
            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                None
            } else {
                Some(iy as usize * g.w + ix as usize)
            }
        })
    })
}
pub fn maxpool2d_forward(g: &Pool2dGeom, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = g.out_hw().unwrap();
    let hw = g.h * g.w;
    for p in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut bi) = (f32::NEG_INFINITY, 0usize);
                for idx in win(g, oy, ox).flatten() {
                    let v = x[p * hw + idx];
                    if v > best || v.is_nan() {
                        best = v;
                        bi = idx;
                        if v.is_nan() {
                            break;
                        }
                    }
                }
                y[(p * oh + oy) * ow + ox] = best;
                argmax[(p * oh + oy) * ow + ox] = bi as u32;
            }
        }
    }
}
pub fn maxpool2d_backward(g: &Pool2dGeom, dy: &[f32], argmax: &[u32], dx: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    let hw = g.h * g.w;
    dx.fill(0.0);
    for (i, d) in dy.iter().enumerate() {
        let p = i / (oh * ow);
        dx[p * hw + argmax[i] as usize] += d;
    }
}
pub fn avgpool2d_forward(g: &Pool2dGeom, x: &[f32], y: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    let hw = g.h * g.w;
    let k = (g.kh * g.kw) as f32;
    for p in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                y[(p * oh + oy) * ow + ox] =
                    win(g, oy, ox).flatten().map(|i| x[p * hw + i]).sum::<f32>() / k;
            }
        }
    }
}
pub fn avgpool2d_backward(g: &Pool2dGeom, dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = g.out_hw().unwrap();
    let hw = g.h * g.w;
    let k = (g.kh * g.kw) as f32;
    dx.fill(0.0);
    for p in 0..g.n * g.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let d = dy[(p * oh + oy) * ow + ox] / k;
                for i in win(g, oy, ox).flatten() {
                    dx[p * hw + i] += d;
                }
            }
        }
    }
}
pub fn global_avgpool_forward(n: usize, c: usize, hw: usize, x: &[f32], y: &mut [f32]) {
    for p in 0..n * c {
        y[p] = x[p * hw..(p + 1) * hw].iter().sum::<f32>() / hw as f32;
    }
}
pub fn global_avgpool_backward(n: usize, c: usize, hw: usize, dy: &[f32], dx: &mut [f32]) {
    for p in 0..n * c {
        dx[p * hw..(p + 1) * hw].fill(dy[p] / hw as f32);
    }
}
