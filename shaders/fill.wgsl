// Constant fill (the loss-gradient seed) and scaling by a constant.

// fill params: [0] n, [1] y, [2] value (f32 bits)
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    st(pu(1u) + i, pf(2u));
}

// scale params: [0] n, [1] x (= y in place), [2] y, [3] alpha (f32 bits)
@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    st(pu(2u) + i, ld(pu(1u) + i) * pf(3u));
}
