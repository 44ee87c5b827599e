// Activation backward fused with the bias gradient of the layer below: one
// pass over dy writes act'(saved) dy and sums it per channel. One
// workgroup per channel; in place, dy is the dx range (each element is
// read and written by the same thread).
//
// params: [0] act code, [1] outer, [2] channels, [3] inner, [4] saved,
// [5] dy, [6] dx, [7] db
@compute @workgroup_size(256)
fn act_backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid, nwg);
    let c = pu(2u);
    if ch >= c {
        return;
    }
    let inner = pu(3u);
    let cnt = pu(1u) * inner;
    let code = pu(0u);
    var s = 0.0;
    for (var e = lid; e < cnt; e += WG) {
        let i = ((e / inner) * c + ch) * inner + e % inner;
        let v = act_bwd(code, ld(pu(4u) + i), ld(pu(5u) + i));
        st(pu(6u) + i, v);
        s += v;
    }
    s = wg_sum(lid, s);
    if lid == 0u {
        st(pu(7u) + ch, s);
    }
}
