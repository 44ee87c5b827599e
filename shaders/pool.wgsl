// Max and average pooling (floor mode, count-include-pad, as PyTorch's
// defaults) and global average pooling. Backward kernels gather: each
// input element visits the windows that contain it, in output order, so
// there are no atomics and sums are reproducible.
//
// 2-D params: [0] elements to produce, [1] H, [2] W, [3] OH, [4] OW,
// [5] KH, [6] KW, [7] stride h, [8] stride w, [9] pad h, [10] pad w,
// [11] source, [12] destination, [13] argmax (u32, index in the h*w plane)

struct Win {
    plane: u32,
    oy: u32,
    ox: u32,
}

fn out_pos(o: u32) -> Win {
    let ohw = pu(3u) * pu(4u);
    let q = o % ohw;
    return Win(o / ohw, q / pu(4u), q % pu(4u));
}

/// Input coordinate `o * stride + k - pad` along one axis, or -1 outside.
fn in_coord(o: u32, k: u32, stride: u32, pad: u32, size: u32) -> i32 {
    let v = i32(o * stride + k) - i32(pad);
    return select(-1, v, v >= 0 && v < i32(size));
}

@compute @workgroup_size(256)
fn maxpool2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(0u) {
        return;
    }
    let p = out_pos(o);
    let w = pu(2u);
    let xb = pu(11u) + p.plane * pu(1u) * w;
    var best = from_bits(0xff800000u);
    var bi = 0u;
    var done = false;
    for (var i = 0u; i < pu(5u) && !done; i++) {
        let iy = in_coord(p.oy, i, pu(7u), pu(9u), pu(1u));
        if iy < 0 {
            continue;
        }
        for (var j = 0u; j < pu(6u); j++) {
            let ix = in_coord(p.ox, j, pu(8u), pu(10u), w);
            if ix < 0 {
                continue;
            }
            let idx = u32(iy) * w + u32(ix);
            let v = ld(xb + idx);
            if v > best || v != v {
                best = v;
                bi = idx;
                if v != v {
                    done = true;
                    break;
                }
            }
        }
    }
    st(pu(12u) + o, best);
    arena[pu(13u) + o] = bi;
}

/// Output windows along one axis that contain input coordinate `t - pad`:
/// (first, last + 1).
fn covering(t: u32, k: u32, stride: u32, n_out: u32) -> vec2<u32> {
    var lo = 0u;
    if t + 1u > k {
        lo = (t + 1u - k + stride - 1u) / stride;
    }
    let hi = min(t / stride + 1u, n_out);
    return vec2<u32>(lo, max(hi, lo));
}

@compute @workgroup_size(256)
fn maxpool2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let hw = pu(1u) * pu(2u);
    let plane = e / hw;
    let idx = e % hw;
    let ry = covering(idx / pu(2u) + pu(9u), pu(5u), pu(7u), pu(3u));
    let rx = covering(idx % pu(2u) + pu(10u), pu(6u), pu(8u), pu(4u));
    let ob = plane * pu(3u) * pu(4u);
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        for (var ox = rx.x; ox < rx.y; ox++) {
            let o = ob + oy * pu(4u) + ox;
            if arena[pu(13u) + o] == idx {
                s += ld(pu(11u) + o);
            }
        }
    }
    st(pu(12u) + e, s);
}

@compute @workgroup_size(256)
fn avgpool2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(0u) {
        return;
    }
    let p = out_pos(o);
    let w = pu(2u);
    let xb = pu(11u) + p.plane * pu(1u) * w;
    var s = 0.0;
    for (var i = 0u; i < pu(5u); i++) {
        let iy = in_coord(p.oy, i, pu(7u), pu(9u), pu(1u));
        if iy < 0 {
            continue;
        }
        for (var j = 0u; j < pu(6u); j++) {
            let ix = in_coord(p.ox, j, pu(8u), pu(10u), w);
            if ix >= 0 {
                s += ld(xb + u32(iy) * w + u32(ix));
            }
        }
    }
    st(pu(12u) + o, s / f32(pu(5u) * pu(6u)));
}

@compute @workgroup_size(256)
fn avgpool2d_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let hw = pu(1u) * pu(2u);
    let plane = e / hw;
    let idx = e % hw;
    let ry = covering(idx / pu(2u) + pu(9u), pu(5u), pu(7u), pu(3u));
    let rx = covering(idx % pu(2u) + pu(10u), pu(6u), pu(8u), pu(4u));
    let ob = plane * pu(3u) * pu(4u);
    let k = f32(pu(5u) * pu(6u));
    var s = 0.0;
    for (var oy = ry.x; oy < ry.y; oy++) {
        for (var ox = rx.x; ox < rx.y; ox++) {
            s += ld(pu(11u) + ob + oy * pu(4u) + ox) / k;
        }
    }
    st(pu(12u) + e, s);
}

// global params: [0] elements to produce, [1] HW, [2] source, [3] destination

/// One thread per plane: the mean of its h*w values.
@compute @workgroup_size(256)
fn global_avgpool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let p = thread_id(wid, nwg, lid);
    if p >= pu(0u) {
        return;
    }
    let hw = pu(1u);
    let xb = pu(2u) + p * hw;
    var s = 0.0;
    for (var i = 0u; i < hw; i++) {
        s += ld(xb + i);
    }
    st(pu(3u) + p, s / f32(hw));
}

@compute @workgroup_size(256)
fn global_avgpool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let hw = pu(1u);
    st(pu(3u) + e, ld(pu(2u) + e / hw) / f32(hw));
}

// params: [batch·dim, len, dim, x, lengths, y]
@compute @workgroup_size(256)
fn masked_mean_pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let len = pu(1u);
    let dim = pu(2u);
    let b = e / dim;
    let l = min(arena[pu(4u) + b], len);
    let xb = pu(3u) + b * len * dim + e % dim;
    var s = 0.0;
    for (var t = 0u; t < l; t++) {
        s += ld(xb + t * dim);
    }
    st(pu(5u) + e, select(0.0, s / f32(l), l > 0u));
}

// params: [batch·len·dim, len, dim, dy, lengths, dx]
@compute @workgroup_size(256)
fn masked_mean_pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let e = thread_id(wid, nwg, lid);
    if e >= pu(0u) {
        return;
    }
    let len = pu(1u);
    let dim = pu(2u);
    let b = e / (len * dim);
    let t = (e / dim) % len;
    let l = min(arena[pu(4u) + b], len);
    var v = 0.0;
    if t < l {
        v = ld(pu(3u) + b * dim + e % dim) / f32(l);
    }
    st(pu(5u) + e, v);
}
