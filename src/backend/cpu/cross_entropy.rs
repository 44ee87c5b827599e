//! CPU kernels of `ops::cross_entropy`.

/// Rows with an out-of-range label contribute NaN, so a bad label can never
/// train silently (the host also validates labels before upload).
pub fn cpu_forward(b: usize, c: usize, logits: &[f32], labels: &[u32], loss: &mut [f32]) {
    let mut total = 0.0f64;
    for i in 0..b {
        let r = &logits[i * c..(i + 1) * c];
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let lse = m + r.iter().map(|&v| (v - m).exp()).sum::<f32>().ln();
        let t = labels[i] as usize;
        total += if t < c { (lse - r[t]) as f64 } else { f64::NAN };
    }
    loss[0] = (total / b.max(1) as f64) as f32;
}

pub fn cpu_backward(
    b: usize,
    c: usize,
    logits: &[f32],
    labels: &[u32],
    dloss: f32,
    dx: &mut [f32],
) {
    let scale = dloss / b.max(1) as f32;
    for i in 0..b {
        let r = &logits[i * c..(i + 1) * c];
        let d = &mut dx[i * c..(i + 1) * c];
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let mut sum = 0.0f32;
        for (d, &v) in d.iter_mut().zip(r) {
            *d = (v - m).exp();
            sum += *d;
        }
        let inv = scale / sum;
        d.iter_mut().for_each(|d| *d *= inv);
        let t = labels[i] as usize;
        if t < c {
            d[t] -= scale;
        } else {
            d.fill(f32::NAN);
        }
    }
}
