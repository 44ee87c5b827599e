// Cross-entropy from logits [B, C] and u32 labels [B], mean over the batch.
// A row with an out-of-range label gives NaN, so a bad label never trains
// silently.

// forward params: [0] B, [1] C, [2] logits, [3] labels, [4] loss.
// One workgroup: each thread takes rows lid, lid + 256, ...; the per-thread
// sums are added by a fixed tree.
@compute @workgroup_size(256)
fn cross_entropy(@builtin(local_invocation_index) lid: u32) {
    let b = pu(0u);
    let c = pu(1u);
    var total = 0.0;
    for (var r = lid; r < b; r += WG) {
        let x = pu(2u) + r * c;
        var m = LOWEST;
        for (var j = 0u; j < c; j++) {
            m = max(m, ld(x + j));
        }
        var s = 0.0;
        for (var j = 0u; j < c; j++) {
            s += exp(ld(x + j) - m);
        }
        let t = arena[pu(3u) + r];
        if t < c {
            total += m + log(s) - ld(x + t);
        } else {
            total += nan();
        }
    }
    total = wg_sum(lid, total);
    if lid == 0u {
        st(pu(4u), total / f32(max(b, 1u)));
    }
}

// backward params: [0] B, [1] C, [2] logits, [3] labels, [4] dlogits,
// [5] 1 if the loss gradient is read from the arena at [7], else the
// constant [6] (f32 bits). One workgroup per row:
// dx = softmax(x) dloss / B, minus dloss / B at the label.
@compute @workgroup_size(256)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid, nwg);
    let b = pu(0u);
    if row >= b {
        return;
    }
    let c = pu(1u);
    let x = pu(2u) + row * c;
    let dx = pu(4u) + row * c;
    var dloss = pf(6u);
    if pu(5u) == 1u {
        dloss = ld(pu(7u));
    }
    let scale = dloss / f32(max(b, 1u));
    var m = LOWEST;
    for (var j = lid; j < c; j += WG) {
        m = max(m, ld(x + j));
    }
    m = wg_max(lid, m);
    var s = 0.0;
    for (var j = lid; j < c; j += WG) {
        s += exp(ld(x + j) - m);
    }
    s = wg_sum(lid, s);
    let inv = scale / s;
    let t = arena[pu(3u) + row];
    for (var j = lid; j < c; j += WG) {
        var d = exp(ld(x + j) - m) * inv;
        if j == t {
            d -= scale;
        }
        if t >= c {
            d = nan();
        }
        st(dx + j, d);
    }
}
