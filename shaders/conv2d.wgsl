// NCHW convolution (OIHW weights; any stride, padding, dilation) as
// implicit GEMMs on the GEMM core, the batch folded into a GEMM axis:
//   forward      Y[o, (n,p)]    = W[o, (c,ky,kx)]  . X[(c,ky,kx), (n,p)]
//   grad_input   dX[c, (n,q)]   = W[(o,ky,kx), c]  . dY[(o,ky,kx), (n,q)]
//   grad_weight  dW[o, (c,ky,kx)] = dY[o, (n,p)]   . X[(n,p), (c,ky,kx)]
// with p an output position and q an input position; X and dY are
// gathered on the fly (zero in the padding). grad_bias sums dY per channel.
//
// Own params: [16] N, [17] C in, [18] H, [19] W, [20] C out, [21] KH,
// [22] KW, [23] stride h, [24] stride w, [25] pad h, [26] pad w,
// [27] dilation h, [28] dilation w, [29] OH, [30] OW; forward only:
// [31] 1 with a residual, [32] its offset, [33] the activation applied
// after adding it (the GEMM epilogue then applies none).

const FORWARD: u32 = 0u;
const GRAD_INPUT: u32 = 1u;
const GRAD_WEIGHT: u32 = 2u;

fn khw() -> u32 {
    return pu(21u) * pu(22u);
}
fn ohw() -> u32 {
    return pu(29u) * pu(30u);
}
fn hw() -> u32 {
    return pu(18u) * pu(19u);
}

/// x[base + iy * W + ix] inside the image, else 0.
fn x_in(base: i32, iy: i32, ix: i32) -> f32 {
    if iy < 0 || ix < 0 || iy >= i32(pu(18u)) || ix >= i32(pu(19u)) {
        return 0.0;
    }
    return ld(pu(10u) + u32(base + iy * i32(pu(19u)) + ix));
}

// Rows: forward and grad_weight o (output channel), grad_input c.
fn row_ctx(mode: u32, b: u32, i: u32) -> vec4<i32> {
    switch mode {
        case FORWARD: {
            return vec4<i32>(i32(i * pu(2u)), 0, 0, i32(i * ohw()));
        }
        case GRAD_INPUT: {
            return vec4<i32>(i32(i * khw()), 0, 0, i32(i * hw()));
        }
        default: {
            return vec4<i32>(i32(i * ohw()), 0, 0, i32(i * pu(1u)));
        }
    }
}

// Columns: forward (n, p): (image base in X, oy*sh - ph, ox*sw - pw,
// output offset); grad_input (n, q): (image base in dY, y + ph, x + pw,
// output offset); grad_weight (c, ky, kx): (channel base in X,
// ky*dh - ph, kx*dw - pw, column).
fn col_ctx(mode: u32, b: u32, j: u32) -> vec4<i32> {
    switch mode {
        case FORWARD: {
            let n = j / ohw();
            let p = j % ohw();
            let oy = p / pu(30u);
            let ox = p % pu(30u);
            return vec4<i32>(
                i32(n * pu(17u) * hw()),
                i32(oy * pu(23u)) - i32(pu(25u)),
                i32(ox * pu(24u)) - i32(pu(26u)),
                i32(n * pu(20u) * ohw() + p),
            );
        }
        case GRAD_INPUT: {
            let n = j / hw();
            let q = j % hw();
            return vec4<i32>(
                i32(n * pu(20u) * ohw()),
                i32(q / pu(19u) + pu(25u)),
                i32(q % pu(19u) + pu(26u)),
                i32(n * pu(17u) * hw() + q),
            );
        }
        default: {
            let c = j / khw();
            let r = j % khw();
            return vec4<i32>(
                i32(c * hw()),
                i32((r / pu(22u)) * pu(27u)) - i32(pu(25u)),
                i32((r % pu(22u)) * pu(28u)) - i32(pu(26u)),
                i32(j),
            );
        }
    }
}

/// K digits: (c or o, ky, kx) for forward and grad_input, (n, oy, ox) for
/// grad_weight.
fn k_radix(mode: u32) -> vec2<u32> {
    if mode == GRAD_WEIGHT {
        return vec2<u32>(pu(29u), pu(30u));
    }
    return vec2<u32>(pu(21u), pu(22u));
}

fn load_a(mode: u32, b: u32, row: vec4<i32>, kc: vec4<u32>) -> f32 {
    switch mode {
        case FORWARD: {
            return ld(pu(9u) + u32(row.x) + kc.w);
        }
        case GRAD_INPUT: {
            // W[o, c, ky, kx] with o = kc.x.
            return ld(pu(9u) + kc.x * pu(17u) * khw() + u32(row.x) + kc.y * pu(22u) + kc.z);
        }
        default: {
            // dY[n, o, oy, ox] with n = kc.x.
            return ld(pu(9u) + kc.x * pu(20u) * ohw() + u32(row.x) + kc.y * pu(30u) + kc.z);
        }
    }
}

fn load_b(mode: u32, b: u32, kc: vec4<u32>, col: vec4<i32>) -> f32 {
    switch mode {
        case FORWARD: {
            let iy = col.y + i32(kc.y * pu(27u));
            let ix = col.z + i32(kc.z * pu(28u));
            return x_in(col.x + i32(kc.x * hw()), iy, ix);
        }
        case GRAD_INPUT: {
            // The output position that reads (y, x) through tap (ky, kx).
            var ty = col.y - i32(kc.y * pu(27u));
            var tx = col.z - i32(kc.z * pu(28u));
            if ty < 0 || tx < 0 {
                return 0.0;
            }
            let sh = pu(23u);
            let sw = pu(24u);
            if sh != 1u {
                if u32(ty) % sh != 0u {
                    return 0.0;
                }
                ty = i32(u32(ty) / sh);
            }
            if sw != 1u {
                if u32(tx) % sw != 0u {
                    return 0.0;
                }
                tx = i32(u32(tx) / sw);
            }
            if u32(ty) >= pu(29u) || u32(tx) >= pu(30u) {
                return 0.0;
            }
            let o = kc.x;
            return ld(pu(10u) + u32(col.x) + (o * pu(29u) + u32(ty)) * pu(30u) + u32(tx));
        }
        default: {
            let iy = col.y + i32(kc.y * pu(23u));
            let ix = col.z + i32(kc.z * pu(24u));
            return x_in(i32(kc.x * pu(17u) * hw()) + col.x, iy, ix);
        }
    }
}

/// Every mode's row and column contexts carry their share of the output
/// offset in `w`.
fn store_c(mode: u32, b: u32, row: vec4<i32>, col: vec4<i32>, v: f32) {
    let o = u32(row.w) + u32(col.w);
    var r = v;
    if mode == FORWARD && pu(31u) == 1u {
        r = act_fwd(pu(33u), r + ld(pu(32u) + o));
    }
    st(pu(11u) + o, r);
}

@compute @workgroup_size(256)
fn conv2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    if g >= pu(12u) {
        return;
    }
    gemm_tiled(FORWARD, g, lid);
}

@compute @workgroup_size(256)
fn conv2d_forward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(12u) {
        return;
    }
    gemm_reduce(FORWARD, o);
}

@compute @workgroup_size(256)
fn conv2d_grad_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    if g >= pu(12u) {
        return;
    }
    gemm_tiled(GRAD_INPUT, g, lid);
}

@compute @workgroup_size(256)
fn conv2d_grad_input_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(12u) {
        return;
    }
    gemm_reduce(GRAD_INPUT, o);
}

@compute @workgroup_size(256)
fn conv2d_grad_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let g = group_id(wid, nwg);
    if g >= pu(12u) {
        return;
    }
    gemm_tiled(GRAD_WEIGHT, g, lid);
}

@compute @workgroup_size(256)
fn conv2d_grad_weight_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = thread_id(wid, nwg, lid);
    if o >= pu(12u) {
        return;
    }
    gemm_reduce(GRAD_WEIGHT, o);
}

// grad_bias params: [0] N, [1] C out, [2] OH*OW, [3] dy, [4] db.
// One workgroup per channel.
@compute @workgroup_size(256)
fn conv2d_grad_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid, nwg);
    let c = pu(1u);
    if ch >= c {
        return;
    }
    let n = pu(2u);
    var s = 0.0;
    for (var e = lid; e < pu(0u) * n; e += WG) {
        s += ld(pu(3u) + ((e / n) * c + ch) * n + e % n);
    }
    s = wg_sum(lid, s);
    if lid == 0u {
        st(pu(4u) + ch, s);
    }
}
