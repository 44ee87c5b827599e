// The GEMM core shared by matmul.wgsl and conv2d.wgsl (appended to them;
// not an op family of its own). C[b] = A[b] B[b] with an epilogue (bias,
// activation). The including file says how operands are addressed, through
// per-thread contexts computed once (so no division runs in the K loop):
//   row_ctx(mode, b, i), col_ctx(mode, b, j) -> vec4<i32>
//   k_radix(mode) -> vec2<u32>: K is walked as a mixed-radix counter
//     (hi, mid, lo) with k = (hi * r.x + mid) * r.y + lo (a convolution's
//     (channel, ky, kx) or (image, oy, ox)); advancing it needs no division
//   load_a(mode, b, row, kc), load_b(mode, b, kc, col) -> f32
//   store_c(mode, b, row, col, value)
// `mode` is a constant per entry point, so every thread takes the same
// branch and compilers fold it away. Convolutions are implicit GEMMs: their
// loaders gather from the image, no im2col buffer exists.
//
// Long K with few output tiles is split (split-K): each split writes raw
// partial sums to a scratch region after the arena, and the family's
// reduce entry adds the splits in order and applies the epilogue, so
// results stay reproducible.
//
// Params: [0] M, [1] N, [2] K, [3] tiles along N, [4] tiles per batch,
// [5] batch count, [6] act code, [7] bias (0 none, 1 per row, 2 per
// column), [8] bias, [9] A, [10] B, [11] C, [12] workgroups (tiled) or
// outputs (reduce), [13] splits, [14] K per split (a multiple of 16),
// [15] scratch offset; [16..] the including family's own.

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// One K-slice of the A and B tiles, [TK][16] vec4s: element (kk, t) holds
// rows (columns) t, t + 16, t + 32, t + 48, the four a thread multiplies.
// Vector accesses keep workgroup-memory traffic to two loads per 16 FMAs.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

fn epilogue(i: u32, j: u32, v: f32) -> f32 {
    var r = v;
    switch pu(7u) {
        case 1u: {
            r += ld(pu(8u) + i);
        }
        case 2u: {
            r += ld(pu(8u) + j);
        }
        default: {}
    }
    return act_fwd(pu(6u), r);
}

/// k as (hi, mid, lo, k).
fn k_split(k: u32, r: vec2<u32>) -> vec4<u32> {
    let t = k / r.y;
    return vec4<u32>(t / r.x, t % r.x, k % r.y, k);
}

/// Mixed-radix a + d (d's digits are already reduced).
fn k_add(a: vec4<u32>, d: vec4<u32>, r: vec2<u32>) -> vec4<u32> {
    var lo = a.z + d.z;
    var mid = a.y + d.y;
    var hi = a.x + d.x;
    if lo >= r.y {
        lo -= r.y;
        mid += 1u;
    }
    if mid >= r.x {
        mid -= r.x;
        hi += 1u;
    }
    return vec4<u32>(hi, mid, lo, a.w + d.w);
}

/// A 64x64 output tile per workgroup of 16x16 threads. Thread (tx, ty)
/// owns rows ty + 16r and columns tx + 16c (r, c < 4): neighbouring
/// threads touch neighbouring columns, in workgroup memory and in the
/// output. K runs in slices of 16 through workgroup memory, each output
/// summing over its K range in order.
fn gemm_tiled(mode: u32, g: u32, lid: u32) {
    let m = pu(0u);
    let n = pu(1u);
    let per_batch = pu(4u);
    let grid = per_batch * pu(5u);
    let split = g / grid;
    let batch = (g % grid) / per_batch;
    let t = g % per_batch;
    let i0 = (t / pu(3u)) * TM;
    let j0 = (t % pu(3u)) * TN;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var rows: array<vec4<i32>, 4>;
    var cols: array<vec4<i32>, 4>;
    for (var e = 0u; e < 4u; e++) {
        rows[e] = row_ctx(mode, batch, i0 + ty + 16u * e);
        cols[e] = col_ctx(mode, batch, j0 + tx + 16u * e);
    }
    let kbeg = split * pu(14u);
    let kend = min(pu(2u), kbeg + pu(14u));
    let radix = k_radix(mode);
    let step = k_split(TK, radix);
    var ka = k_split(kbeg + tx, radix);
    var kb = k_split(kbeg + ty, radix);
    var c0 = vec4<f32>();
    var c1 = vec4<f32>();
    var c2 = vec4<f32>();
    var c3 = vec4<f32>();
    for (var k0 = kbeg; k0 < kend; k0 += TK) {
        var va = vec4<f32>();
        var vb = vec4<f32>();
        for (var e = 0u; e < 4u; e++) {
            if i0 + ty + 16u * e < m && ka.w < kend {
                va[e] = load_a(mode, batch, rows[e], ka);
            }
            if j0 + tx + 16u * e < n && kb.w < kend {
                vb[e] = load_b(mode, batch, kb, cols[e]);
            }
        }
        tile_a[tx * 16u + ty] = va;
        tile_b[ty * 16u + tx] = vb;
        ka = k_add(ka, step, radix);
        kb = k_add(kb, step, radix);
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = tile_a[kk * 16u + ty];
            let b = tile_b[kk * 16u + tx];
            c0 = fma(vec4<f32>(a.x), b, c0);
            c1 = fma(vec4<f32>(a.y), b, c1);
            c2 = fma(vec4<f32>(a.z), b, c2);
            c3 = fma(vec4<f32>(a.w), b, c3);
        }
        workgroupBarrier();
    }
    var acc = array<vec4<f32>, 4>(c0, c1, c2, c3);
    let partial = pu(13u) > 1u;
    for (var r = 0u; r < 4u; r++) {
        let i = i0 + ty + 16u * r;
        if i >= m {
            break;
        }
        for (var c = 0u; c < 4u; c++) {
            let j = j0 + tx + 16u * c;
            if j >= n {
                continue;
            }
            if partial {
                st(pu(15u) + ((split * pu(5u) + batch) * m + i) * n + j, acc[r][c]);
            } else {
                store_c(mode, batch, rows[r], cols[c], epilogue(i, j, acc[r][c]));
            }
        }
    }
}

/// After a split-K `gemm_tiled`: one thread per output adds the splits'
/// partial sums in order, then applies the epilogue.
fn gemm_reduce(mode: u32, o: u32) {
    let m = pu(0u);
    let n = pu(1u);
    let batch = o / (m * n);
    let i = (o / n) % m;
    let j = o % n;
    let stride = pu(5u) * m * n;
    var s = 0.0;
    for (var k = 0u; k < pu(13u); k++) {
        s += ld(pu(15u) + k * stride + o);
    }
    store_c(mode, batch, row_ctx(mode, batch, i), col_ctx(mode, batch, j), epilogue(i, j, s));
}
