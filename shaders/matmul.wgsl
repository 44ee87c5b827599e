// Matrix multiply (2-D or batched, either operand transposed) and the
// linear layer (x w^T + bias, fused activation), on the GEMM core.
//
// Own params: [16] A transposed, [17] B transposed, [18..21] batch
// strides of A, B and C.

/// (offset of row i in A, step per k, i, 0).
fn row_ctx(mode: u32, b: u32, i: u32) -> vec4<i32> {
    let base = pu(9u) + b * pu(18u);
    if pu(16u) == 1u {
        return vec4<i32>(i32(base + i), i32(pu(0u)), i32(i), 0);
    }
    return vec4<i32>(i32(base + i * pu(2u)), 1, i32(i), 0);
}

/// (offset of column j in B, step per k, j, 0).
fn col_ctx(mode: u32, b: u32, j: u32) -> vec4<i32> {
    let base = pu(10u) + b * pu(19u);
    if pu(17u) == 1u {
        return vec4<i32>(i32(base + j * pu(2u)), 1, i32(j), 0);
    }
    return vec4<i32>(i32(base + j), i32(pu(1u)), i32(j), 0);
}

fn k_radix(mode: u32) -> vec2<u32> {
    return vec2<u32>(1u, 1u);
}

fn load_a(mode: u32, b: u32, row: vec4<i32>, kc: vec4<u32>) -> f32 {
    return ld(u32(row.x) + kc.w * u32(row.y));
}

fn load_b(mode: u32, b: u32, kc: vec4<u32>, col: vec4<i32>) -> f32 {
    return ld(u32(col.x) + kc.w * u32(col.y));
}

fn store_c(mode: u32, b: u32, row: vec4<i32>, col: vec4<i32>, v: f32) {
    st(pu(11u) + b * pu(20u) + u32(row.z) * pu(1u) + u32(col.z), v);
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    if g >= pu(12u) {
        return;
    }
    gemm_tiled(0u, g, lid);
}

@compute @workgroup_size(256)
fn gemm_splitk_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(12u) {
        return;
    }
    gemm_reduce(0u, o);
}
