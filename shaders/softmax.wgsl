// Softmax and log-softmax over the last axis, one workgroup per row, the
// row maximum subtracted for stability; and their gradients.

// forward params: [0] rows, [1] n, [2] x, [3] y, [4] 1 for log-softmax
@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= pu(0u) {
        return;
    }
    let n = pu(1u);
    let x = pu(2u) + row * n;
    let y = pu(3u) + row * n;
    var m = LOWEST;
    for (var j = lid; j < n; j += WG) {
        m = max(m, ld(x + j));
    }
    m = wg_max(lid, m);
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        s += exp(ld(x + j) - m);
    }
    s = wg_sum(lid, s);
    if pu(4u) == 1u {
        let ls = log(s);
        for (var j = lid; j < n; j += WG) {
            st(y + j, ld(x + j) - m - ls);
        }
    } else {
        let inv = 1.0 / s;
        for (var j = lid; j < n; j += WG) {
            st(y + j, exp(ld(x + j) - m) * inv);
        }
    }
}

// backward params: [0] rows, [1] n, [2] y, [3] dy, [4] dx, [5] 1 for log.
// softmax: dx = y (dy - sum dy y); log-softmax: dx = dy - exp(y) sum dy.
@compute @workgroup_size(256)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    if row >= pu(0u) {
        return;
    }
    let n = pu(1u);
    let y = pu(2u) + row * n;
    let dy = pu(3u) + row * n;
    let dx = pu(4u) + row * n;
    let lg = pu(5u) == 1u;
    var s = 0.0;
    for (var j = lid; j < n; j += WG) {
        s += select(ld(dy + j) * ld(y + j), ld(dy + j), lg);
    }
    s = wg_sum(lid, s);
    for (var j = lid; j < n; j += WG) {
        let yv = ld(y + j);
        let d = ld(dy + j);
        st(dx + j, select(yv * (d - s), d - exp(yv) * s, lg));
    }
}
