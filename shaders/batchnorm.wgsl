// Batch normalisation over NCHW, per channel. Training and backward run
// one workgroup per channel: fixed-order reductions, then the elementwise
// pass over the same channel.

fn chan_index(e: u32, c: u32, hw: u32, ch: u32) -> u32 {
    return ((e / hw) * c + ch) * hw + e % hw;
}

// train params: [0] N, [1] C, [2] HW, [3] x, [4] gamma, [5] beta, [6] y,
// [7] mean, [8] invstd, [9] running mean, [10] running var, [11] eps,
// [12] momentum (f32 bits), [13] 1 with a residual, [14] its offset,
// [15] the activation code: y = act(bn(x) [+ residual]), a fused epilogue.
// Variance in two passes (mean first) for accuracy; the running variance
// is unbiased, as PyTorch keeps it.
@compute @workgroup_size(256)
fn batchnorm2d_train(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid, nwg);
    let c = pu(1u);
    if ch >= c {
        return;
    }
    let hw = pu(2u);
    let cnt = pu(0u) * hw;
    let x = pu(3u);
    var s = 0.0;
    for (var e = lid; e < cnt; e += WG) {
        s += ld(x + chan_index(e, c, hw, ch));
    }
    let mean = wg_sum(lid, s) / f32(cnt);
    var s2 = 0.0;
    for (var e = lid; e < cnt; e += WG) {
        let d = ld(x + chan_index(e, c, hw, ch)) - mean;
        s2 += d * d;
    }
    let v = wg_sum(lid, s2) / f32(cnt);
    let invstd = 1.0 / sqrt(v + pf(11u));
    if lid == 0u {
        let mom = pf(12u);
        var unbiased = v;
        if cnt > 1u {
            unbiased = v * f32(cnt) / f32(cnt - 1u);
        }
        st(pu(7u) + ch, mean);
        st(pu(8u) + ch, invstd);
        st(pu(9u) + ch, (1.0 - mom) * ld(pu(9u) + ch) + mom * mean);
        st(pu(10u) + ch, (1.0 - mom) * ld(pu(10u) + ch) + mom * unbiased);
    }
    let a = ld(pu(4u) + ch) * invstd;
    let b = ld(pu(5u) + ch) - mean * a;
    let has_res = pu(13u) != 0u;
    let act = pu(15u);
    for (var e = lid; e < cnt; e += WG) {
        let i = chan_index(e, c, hw, ch);
        var v = ld(x + i) * a + b;
        if has_res {
            v += ld(pu(14u) + i);
        }
        st(pu(6u) + i, act_fwd(act, v));
    }
}

// infer params: [0] n, [1] C, [2] HW, [3] x, [4] gamma, [5] beta,
// [6] running mean, [7] running var, [8] y, [9] eps (f32 bits)
@compute @workgroup_size(256)
fn batchnorm2d_infer(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    let ch = (i / pu(2u)) % pu(1u);
    let invstd = 1.0 / sqrt(ld(pu(7u) + ch) + pf(9u));
    let a = ld(pu(4u) + ch) * invstd;
    let b = ld(pu(5u) + ch) - ld(pu(6u) + ch) * a;
    st(pu(8u) + i, ld(pu(3u) + i) * a + b);
}

// backward params: [0] N, [1] C, [2] HW, [3] x, [4] gamma, [5] mean,
// [6] invstd, [7] dy, [8] dx, [9] dgamma, [10] dbeta, [11] the fused
// activation's code (0: none), [12] its saved value's offset.
// dx = gamma invstd / M (M g - sum g - xhat sum g xhat), with the incoming
// gradient g = dy, or act'(saved) dy when the activation is fused in.
fn bn_incoming(i: u32) -> f32 {
    let act = pu(11u);
    let d = ld(pu(7u) + i);
    if act == 0u {
        return d;
    }
    return act_bwd(act, ld(pu(12u) + i), d);
}

@compute @workgroup_size(256)
fn batchnorm2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid, nwg);
    let c = pu(1u);
    if ch >= c {
        return;
    }
    let hw = pu(2u);
    let cnt = pu(0u) * hw;
    let mean = ld(pu(5u) + ch);
    let invstd = ld(pu(6u) + ch);
    var sdy = 0.0;
    var sdyx = 0.0;
    for (var e = lid; e < cnt; e += WG) {
        let i = chan_index(e, c, hw, ch);
        let d = bn_incoming(i);
        sdy += d;
        sdyx += d * (ld(pu(3u) + i) - mean) * invstd;
    }
    sdy = wg_sum(lid, sdy);
    sdyx = wg_sum(lid, sdyx);
    if lid == 0u {
        st(pu(9u) + ch, sdyx);
        st(pu(10u) + ch, sdy);
    }
    let m = f32(cnt);
    let k = ld(pu(4u) + ch) * invstd / m;
    for (var e = lid; e < cnt; e += WG) {
        let i = chan_index(e, c, hw, ch);
        let xh = (ld(pu(3u) + i) - mean) * invstd;
        st(pu(8u) + i, k * (m * bn_incoming(i) - sdy - xh * sdyx));
    }
}
