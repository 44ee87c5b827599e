// Adam and AdamW (bias-corrected, as torch.optim.Adam / AdamW) over many
// tensors in one dispatch; each tensor owns a contiguous run of
// workgroups. The per-step constants (step size, 1/sqrt(bias correction
// 2), decoupled decay) are computed on the host in f32 before each run,
// exactly as the CPU kernel computes them, and read from the runtime
// scalars.
//
// params: [0] tensors, [1] workgroups, [2] beta1, [3] beta2, [4] eps,
// [5] coupled (L2) weight decay, [6] index of the three runtime constants;
// [8..] per tensor 6 words: first workgroup, length, grad, param, m, v.

const ROW: u32 = 6u;

fn find_tensor(g: u32) -> u32 {
    var lo = 0u;
    var hi = pu(0u);
    while hi - lo > 1u {
        let mid = (lo + hi) / 2u;
        if pu(8u + mid * ROW) <= g {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return 8u + lo * ROW;
}

@compute @workgroup_size(256)
fn adam_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    if g >= pu(1u) {
        return;
    }
    let t = find_tensor(g);
    let e = (g - pu(t)) * WG + lid;
    if e >= pu(t + 1u) {
        return;
    }
    let b1 = pf(2u);
    let b2 = pf(3u);
    let c = pu(6u);
    let step_size = scalar(c);
    let inv_sqrt_bc2 = scalar(c + 1u);
    let decay = scalar(c + 2u);
    let pi = pu(t + 3u) + e;
    let mi = pu(t + 4u) + e;
    let vi = pu(t + 5u) + e;
    let p = ld(pi);
    let gr = ld(pu(t + 2u) + e) + pf(5u) * p;
    let m = b1 * ld(mi) + (1.0 - b1) * gr;
    let v = b2 * ld(vi) + (1.0 - b2) * gr * gr;
    st(mi, m);
    st(vi, v);
    let denom = sqrt(v) * inv_sqrt_bc2 + pf(4u);
    st(pi, p * decay - step_size * m / denom);
}
