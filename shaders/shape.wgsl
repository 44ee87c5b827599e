// Shape ops without arithmetic: the axis permutation.

// Axis permutation as a gather: output element i reads x through the
// permuted input strides.
//
// params: [0] n, [1] x, [2] y, [3] rank, [8..16] output dims,
// [16..24] x strides in output axis order
@compute @workgroup_size(256)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    arena[pu(2u) + i] = arena[pu(1u) + strided_offset(i, pu(3u), 8u, 16u)];
}
