// Fused multi-head attention with a padding mask, flash-style: each
// workgroup takes AQ query (or key) rows of one (sequence, head) and
// streams the other side through workgroup memory AK rows at a time, with
// an online softmax, so no T×T matrix is ever stored. Layouts and the
// padding rule are in src/ops/attention.rs.
//
// params (all three entry points):
//   [batch, seq, heads, head_dim, qkv, lengths, out, lse, blocks, dout, dqkv]
// groups = batch·heads·blocks, blocks = ceil(seq / AQ).

const AQ: u32 = 64u;
const AK: u32 = 16u;
/// Largest head size.
const AD: u32 = 64u;

var<workgroup> tile_a: array<f32, 1024>; // AK·AD
var<workgroup> tile_b: array<f32, 1024>;
var<workgroup> tile_s: array<f32, 32>; // lse and rowsum(dO∘O) of AK rows
var<workgroup> seq_len: u32;

struct Head {
    b: u32,
    h: u32,
    // First row of this workgroup.
    r0: u32,
    // Valid rows of the sequence (uniform).
    l: u32,
    d: u32,
    dm: u32,
    // Word offset of the sequence's first qkv row.
    base: u32,
}

fn head(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Head {
    let g = group_id(wid, nwg);
    let nb = pu(8u);
    let heads = pu(2u);
    let bh = g / nb;
    var hd: Head;
    hd.b = bh / heads;
    hd.h = bh % heads;
    hd.r0 = (g % nb) * AQ;
    hd.d = pu(3u);
    hd.dm = heads * hd.d;
    hd.base = pu(4u) + hd.b * pu(1u) * 3u * hd.dm;
    if lid == 0u {
        seq_len = min(arena[pu(5u) + hd.b], pu(1u));
    }
    hd.l = workgroupUniformLoad(&seq_len);
    return hd;
}

/// Word offset of element k of part `part` (0 Q, 1 K, 2 V) of row j.
fn qkv_at(hd: Head, j: u32, part: u32) -> u32 {
    return hd.base + j * 3u * hd.dm + part * hd.dm + hd.h * hd.d;
}

/// Word offset of row j of this head in a [B, T, D] tensor at `at`.
fn row_at(hd: Head, at: u32, j: u32) -> u32 {
    return at + (hd.b * pu(1u) + j) * hd.dm + hd.h * hd.d;
}

/// Loads rows j0.. (up to AK, zeros past l) of parts pa, pb into the tiles.
fn load_kv(hd: Head, lid: u32, j0: u32, pa: u32, pb: u32) {
    workgroupBarrier();
    for (var e = lid; e < AK * hd.d; e += AQ) {
        let j = j0 + e / hd.d;
        let k = e % hd.d;
        var a = 0.0;
        var b = 0.0;
        if j < hd.l {
            a = ld(qkv_at(hd, j, pa) + k);
            b = ld(qkv_at(hd, j, pb) + k);
        }
        tile_a[e] = a;
        tile_b[e] = b;
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let hd = head(wid, nwg, lid);
    let r = hd.r0 + lid;
    let live = r < hd.l;
    let d = hd.d;
    let scale = 1.0 / sqrt(f32(d));
    var q: array<f32, 64>;
    var o: array<f32, 64>;
    if live {
        for (var k = 0u; k < d; k++) {
            q[k] = ld(qkv_at(hd, r, 0u) + k) * scale;
        }
    }
    var m = LOWEST;
    var sum = 0.0;
    var s: array<f32, 16>;
    for (var j0 = 0u; j0 < hd.l; j0 += AK) {
        load_kv(hd, lid, j0, 1u, 2u);
        if live {
            let jn = min(AK, hd.l - j0);
            var tm = LOWEST;
            for (var jj = 0u; jj < jn; jj++) {
                var acc = 0.0;
                for (var k = 0u; k < d; k++) {
                    acc += q[k] * tile_a[jj * d + k];
                }
                s[jj] = acc;
                tm = max(tm, acc);
            }
            let mn = max(m, tm);
            let c = exp(m - mn);
            sum *= c;
            for (var k = 0u; k < d; k++) {
                o[k] *= c;
            }
            m = mn;
            for (var jj = 0u; jj < jn; jj++) {
                let p = exp(s[jj] - m);
                sum += p;
                for (var k = 0u; k < d; k++) {
                    o[k] += p * tile_b[jj * d + k];
                }
            }
        }
    }
    if r < pu(1u) {
        let inv = select(0.0, 1.0 / sum, live);
        let ob = row_at(hd, pu(6u), r);
        for (var k = 0u; k < d; k++) {
            st(ob + k, o[k] * inv);
        }
        st(pu(7u) + (hd.b * pu(2u) + hd.h) * pu(1u) + r, select(0.0, m + log(sum), live));
    }
}

/// dQ rows: per query row, keys streamed through the tiles.
@compute @workgroup_size(64)
fn attention_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let hd = head(wid, nwg, lid);
    let r = hd.r0 + lid;
    let live = r < hd.l;
    let d = hd.d;
    let scale = 1.0 / sqrt(f32(d));
    var q: array<f32, 64>;
    var dout: array<f32, 64>;
    var dq: array<f32, 64>;
    var di = 0.0;
    var lse = 0.0;
    if live {
        let ob = row_at(hd, pu(6u), r);
        let gb = row_at(hd, pu(9u), r);
        for (var k = 0u; k < d; k++) {
            q[k] = ld(qkv_at(hd, r, 0u) + k) * scale;
            dout[k] = ld(gb + k);
            di += dout[k] * ld(ob + k);
        }
        lse = ld(pu(7u) + (hd.b * pu(2u) + hd.h) * pu(1u) + r);
    }
    for (var j0 = 0u; j0 < hd.l; j0 += AK) {
        load_kv(hd, lid, j0, 1u, 2u);
        if live {
            let jn = min(AK, hd.l - j0);
            for (var jj = 0u; jj < jn; jj++) {
                var s = 0.0;
                var dp = 0.0;
                for (var k = 0u; k < d; k++) {
                    s += q[k] * tile_a[jj * d + k];
                    dp += dout[k] * tile_b[jj * d + k];
                }
                let ds = exp(min(s - lse, 0.0)) * (dp - di);
                for (var k = 0u; k < d; k++) {
                    dq[k] += ds * tile_a[jj * d + k];
                }
            }
        }
    }
    if r < pu(1u) {
        let at = pu(10u) + (hd.b * pu(1u) + r) * 3u * hd.dm + hd.h * d;
        for (var k = 0u; k < d; k++) {
            st(at + k, select(0.0, dq[k] * scale, live));
        }
    }
}

/// dK and dV rows: per key row, query rows (with dO, lse and rowsum(dO∘O))
/// streamed through the tiles.
@compute @workgroup_size(64)
fn attention_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let hd = head(wid, nwg, lid);
    let j = hd.r0 + lid;
    let live = j < hd.l;
    let d = hd.d;
    let scale = 1.0 / sqrt(f32(d));
    var kr: array<f32, 64>;
    var vr: array<f32, 64>;
    var dk: array<f32, 64>;
    var dv: array<f32, 64>;
    if live {
        for (var k = 0u; k < d; k++) {
            kr[k] = ld(qkv_at(hd, j, 1u) + k);
            vr[k] = ld(qkv_at(hd, j, 2u) + k);
        }
    }
    for (var i0 = 0u; i0 < hd.l; i0 += AK) {
        workgroupBarrier();
        for (var e = lid; e < AK * d; e += AQ) {
            let i = i0 + e / d;
            let k = e % d;
            var a = 0.0;
            var b = 0.0;
            if i < hd.l {
                a = ld(qkv_at(hd, i, 0u) + k) * scale;
                b = ld(row_at(hd, pu(9u), i) + k);
            }
            tile_a[e] = a;
            tile_b[e] = b;
        }
        if lid < AK {
            let i = i0 + lid;
            var di = 0.0;
            var lse = 0.0;
            if i < hd.l {
                let ob = row_at(hd, pu(6u), i);
                let gb = row_at(hd, pu(9u), i);
                for (var k = 0u; k < d; k++) {
                    di += ld(gb + k) * ld(ob + k);
                }
                lse = ld(pu(7u) + (hd.b * pu(2u) + hd.h) * pu(1u) + i);
            }
            tile_s[lid] = lse;
            tile_s[AK + lid] = di;
        }
        workgroupBarrier();
        if live {
            let n = min(AK, hd.l - i0);
            for (var ii = 0u; ii < n; ii++) {
                var s = 0.0;
                var dp = 0.0;
                for (var k = 0u; k < d; k++) {
                    s += tile_a[ii * d + k] * kr[k];
                    dp += tile_b[ii * d + k] * vr[k];
                }
                let p = exp(min(s - tile_s[ii], 0.0));
                let ds = p * (dp - tile_s[AK + ii]);
                for (var k = 0u; k < d; k++) {
                    dv[k] += p * tile_b[ii * d + k];
                    dk[k] += ds * tile_a[ii * d + k];
                }
            }
        }
    }
    if j < pu(1u) {
        let at = pu(10u) + (hd.b * pu(1u) + j) * 3u * hd.dm + hd.h * d;
        for (var k = 0u; k < d; k++) {
            st(at + hd.dm + k, select(0.0, dk[k], live));
            st(at + 2u * hd.dm + k, select(0.0, dv[k], live));
        }
    }
}
