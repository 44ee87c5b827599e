// SGD (momentum, Nesterov, coupled weight decay; dampening 0, as
// torch.optim.SGD) over many tensors in one dispatch: each tensor owns a
// contiguous run of workgroups, found by binary search in the table.
//
// params: [0] tensors, [1] workgroups, [2] momentum, [3] 1 if Nesterov,
// [4] weight decay (f32 bits), [5] index of the lr scalar, [6] 1 if there
// is a velocity; [8..] per tensor 5 words: first workgroup, length,
// grad, param, velocity.

const ROW: u32 = 5u;

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
fn sgd_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let p = pu(t + 3u) + e;
    let mom = pf(2u);
    var d = ld(pu(t + 2u) + e) + pf(4u) * ld(p);
    if pu(6u) == 1u {
        let vi = pu(t + 4u) + e;
        let v = mom * ld(vi) + d;
        st(vi, v);
        d = select(v, d + mom * v, pu(3u) == 1u);
    }
    st(p, ld(p) - scalar(pu(5u)) * d);
}
