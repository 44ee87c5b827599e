// Layer normalisation over the last axis (src/ops/layer_norm.rs): one
// thread per row for y and dx; one thread per column for the weight and
// bias gradients, summing the rows in order (reproducible).

// params: [rows, n, eps bits, x, w, b, y, mean, rstd, residual, r, sum]
// With residual (word 9) the row is x + r, first written to sum and then
// read from there.
@compute @workgroup_size(256)
fn layer_norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = thread_id(wid, nwg, lid);
    if row >= pu(0u) {
        return;
    }
    let n = pu(1u);
    var x = pu(3u) + row * n;
    if pu(9u) != 0u {
        let s = pu(11u) + row * n;
        for (var k = 0u; k < n; k++) {
            st(s + k, ld(x + k) + ld(pu(10u) + row * n + k));
        }
        x = s;
    }
    var m = 0.0;
    for (var k = 0u; k < n; k++) {
        m += ld(x + k);
    }
    m /= f32(n);
    var v = 0.0;
    for (var k = 0u; k < n; k++) {
        let c = ld(x + k) - m;
        v += c * c;
    }
    let s = 1.0 / sqrt(v / f32(n) + pf(2u));
    let y = pu(6u) + row * n;
    for (var k = 0u; k < n; k++) {
        st(y + k, (ld(x + k) - m) * s * ld(pu(4u) + k) + ld(pu(5u) + k));
    }
    st(pu(7u) + row, m);
    st(pu(8u) + row, s);
}

// params: [rows, n, _, x, w, mean, rstd, dy, dx, dw, db]
@compute @workgroup_size(256)
fn layer_norm_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let row = thread_id(wid, nwg, lid);
    if row >= pu(0u) {
        return;
    }
    let n = pu(1u);
    let x = pu(3u) + row * n;
    let dy = pu(7u) + row * n;
    let m = ld(pu(5u) + row);
    let s = ld(pu(6u) + row);
    var mg = 0.0;
    var mgx = 0.0;
    for (var k = 0u; k < n; k++) {
        let g = ld(dy + k) * ld(pu(4u) + k);
        mg += g;
        mgx += g * (ld(x + k) - m) * s;
    }
    mg /= f32(n);
    mgx /= f32(n);
    let dx = pu(8u) + row * n;
    for (var k = 0u; k < n; k++) {
        let g = ld(dy + k) * ld(pu(4u) + k);
        st(dx + k, s * (g - mg - (ld(x + k) - m) * s * mgx));
    }
}

@compute @workgroup_size(256)
fn layer_norm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let k = thread_id(wid, nwg, lid);
    let n = pu(1u);
    if k >= n {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var row = 0u; row < pu(0u); row++) {
        let g = ld(pu(7u) + row * n + k);
        dw += g * (ld(pu(3u) + row * n + k) - ld(pu(5u) + row)) * ld(pu(6u) + row);
        db += g;
    }
    st(pu(9u) + k, dw);
    st(pu(10u) + k, db);
}
