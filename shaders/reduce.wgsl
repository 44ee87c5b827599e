// sum_to (reduce a broadcast tensor back to a smaller shape) and
// broadcast_to (expand). The input's axes are split into kept axes (the
// output's own, in order) and reduced axes; each output element sums the
// reduced sub-grid in a fixed order.
//
// sum_to params: [0] outputs, [1] x, [2] y, [3] kept rank, [4] reduced
// rank, [5] reduced count, [8..16] kept dims, [16..24] their x strides,
// [24..32] reduced dims, [32..40] their x strides

fn reduced_sum(o: u32, first: u32, step: u32) -> f32 {
    let base = pu(1u) + strided_offset(o, pu(3u), 8u, 16u);
    var s = 0.0;
    for (var t = first; t < pu(5u); t += step) {
        s += ld(base + strided_offset(t, pu(4u), 24u, 32u));
    }
    return s;
}

/// One workgroup per output element: long reductions.
@compute @workgroup_size(256)
fn sum_to(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let o = group_id(wid, nwg);
    if o >= pu(0u) {
        return;
    }
    let s = wg_sum(lid, reduced_sum(o, lid, WG));
    if lid == 0u {
        st(pu(2u) + o, s);
    }
}

/// One thread per output element: many short reductions.
@compute @workgroup_size(256)
fn sum_to_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(0u) {
        return;
    }
    st(pu(2u) + o, reduced_sum(o, 0u, 1u));
}

// broadcast_to params: [0] n, [1] x, [2] y, [3] rank, [8..16] output dims,
// [16..24] x's broadcast strides (0 on expanded axes)
@compute @workgroup_size(256)
fn broadcast_to(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    st(pu(2u) + i, ld(pu(1u) + strided_offset(i, pu(3u), 8u, 16u)));
}

// Clipping by global norm over every gradient in one dispatch of ONE
// workgroup (no cross-workgroup sync exists): sum all squares (per-lane
// strided partials, then the fixed tree; f32, where CPU and CUDA sum in
// f64), then write each tensor scaled by min(1, max_norm / sqrt(sum +
// 1e-12)).
//
// params: [0] tensors, [1] max_norm (f32 bits); [8..] per tensor 3 words:
// length, gradient, output.
@compute @workgroup_size(256)
fn clip_grad_norm(@builtin(local_invocation_index) lid: u32) {
    let count = pu(0u);
    var s = 0.0;
    for (var t = 0u; t < count; t++) {
        let n = pu(8u + 3u * t);
        let g = pu(9u + 3u * t);
        for (var i = lid; i < n; i += WG) {
            let v = ld(g + i);
            s += v * v;
        }
    }
    let total = wg_sum(lid, s);
    let coef = pf(1u) / sqrt(total + 1e-12);
    // select, not min: min with a NaN (a NaN gradient) may give either
    // operand. WGSL does not promise NaN arithmetic; the trainer stops on a
    // non-finite loss before clipping matters.
    let factor = select(1.0, coef, coef < 1.0 || coef != coef);
    for (var t = 0u; t < count; t++) {
        let n = pu(8u + 3u * t);
        let g = pu(9u + 3u * t);
        let y = pu(10u + 3u * t);
        for (var i = lid; i < n; i += WG) {
            st(y + i, ld(g + i) * factor);
        }
    }
}
