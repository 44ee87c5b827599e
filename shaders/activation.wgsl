// Elementwise activations (relu, gelu, sigmoid, tanh) and their gradients.
// In place (Launch.inplace) the operand's offset is the output's: every
// thread reads its element before writing it.

// forward params: [0] act code, [1] n, [2] x, [3] y
@compute @workgroup_size(256)
fn act_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(1u) {
        return;
    }
    st(pu(3u) + i, act_fwd(pu(0u), ld(pu(2u) + i)));
}

// backward params: [0] act code, [1] n, [2] saved, [3] dy, [4] dx
@compute @workgroup_size(256)
fn act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(1u) {
        return;
    }
    st(pu(4u) + i, act_bwd(pu(0u), ld(pu(2u) + i), ld(pu(3u) + i)));
}
