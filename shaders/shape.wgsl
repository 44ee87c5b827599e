// Shape ops without arithmetic: the axis permutation, and row-block
// copies for concat and slice.

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

// y[r * y_stride + c] = x[r * x_stride + c] for r < rows, c < len; x and
// y are offset to the block's first column. Concat is one dispatch per
// input, slice one dispatch.
//
// params: [0] n = rows * len, [1] x, [2] y, [3] len, [4] x_stride,
// [5] y_stride
@compute @workgroup_size(256)
fn copy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(0u) {
        return;
    }
    let r = i / pu(3u);
    let c = i - r * pu(3u);
    arena[pu(2u) + r * pu(5u) + c] = arena[pu(1u) + r * pu(4u) + c];
}
