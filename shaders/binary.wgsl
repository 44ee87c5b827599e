// NumPy-broadcasting add/sub/mul/div. Each operand is gathered through its
// broadcast strides (0 on broadcast axes) over the output's dims; when both
// operands have the output's shape the index arithmetic is skipped. In
// place, the operand with the output's shape is given the output's offset;
// its strides are the identity, so each thread reads its element first.

fn apply(kind: u32, a: f32, b: f32) -> f32 {
    switch kind {
        case 0u: {
            return a + b;
        }
        case 1u: {
            return a - b;
        }
        case 2u: {
            return a * b;
        }
        default: {
            return a / b;
        }
    }
}

// params: [0] kind (add, sub, mul, div), [1] n, [2] a, [3] b, [4] y,
// [5] rank, [6] 1 if both operands are contiguous with the output's shape,
// [8..16] output dims, [16..24] a strides, [24..32] b strides
@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = thread_id(wid, nwg, lid);
    if i >= pu(1u) {
        return;
    }
    var ia = i;
    var ib = i;
    if pu(6u) == 0u {
        ia = strided_offset(i, pu(5u), 8u, 16u);
        ib = strided_offset(i, pu(5u), 8u, 24u);
    }
    st(pu(4u) + i, apply(pu(0u), ld(pu(2u) + ia), ld(pu(3u) + ib)));
}

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
