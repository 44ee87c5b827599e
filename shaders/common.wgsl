// Prelude prepended to every shader family (see src/backend/wgpu/shaders.rs).
//
// Bindings, identical for every pipeline so one bind group serves a module:
//   0: the arena, one storage buffer of 4-byte words. f32 values are stored
//      as their bits and u32 values (labels, argmax) as themselves, so an
//      integer never passes through a float register.
//   1: this launch's parameters (offsets in words, sizes, shapes, constants),
//      bound with a dynamic offset into one buffer written at compile time.
//      A uniform buffer: parameters are read everywhere, often inside inner
//      loops, and uniform reads at fixed offsets are the cheapest kind on
//      every adapter (a GPU's constant cache; a broadcast scalar load on a
//      CPU adapter, where a storage read is a per-lane loop).
//   2: runtime scalars (lr, step, and host-computed per-run constants),
//      written before every run.

@group(0) @binding(0) var<storage, read_write> arena: array<u32>;
@group(0) @binding(1) var<uniform> prm: array<vec4<u32>, 256>;
@group(0) @binding(2) var<uniform> rt: array<vec4<f32>, 64>;

/// Threads per workgroup of every 1-D kernel.
const WG: u32 = 256u;
/// The lowest finite f32, the start of a max-fold.
const LOWEST: f32 = -3.4028235e38;

fn ld(i: u32) -> f32 {
    return bitcast<f32>(arena[i]);
}
fn st(i: u32, v: f32) {
    arena[i] = bitcast<u32>(v);
}
fn pu(i: u32) -> u32 {
    return prm[i / 4u][i % 4u];
}
fn pf(i: u32) -> f32 {
    return bitcast<f32>(pu(i));
}
fn scalar(i: u32) -> f32 {
    return rt[i / 4u][i % 4u];
}
/// A call, not a constant expression: WGSL rejects non-finite constants.
fn from_bits(u: u32) -> f32 {
    return bitcast<f32>(u);
}
fn nan() -> f32 {
    return from_bits(0x7fc00000u);
}

/// Grids larger than the per-dimension limit are dispatched as x*y
/// workgroups; this is the flat workgroup index (uniform per workgroup).
fn group_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
fn thread_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return group_id(wid, nwg) * WG + lid;
}

/// Offset of flat element `i` of a row-major tensor with `rank` dims at
/// params[dims..] gathered through the strides at params[strides..].
fn strided_offset(i: u32, rank: u32, dims: u32, strides: u32) -> u32 {
    var rem = i;
    var off = 0u;
    for (var ax = rank; ax > 0u; ax--) {
        let d = pu(dims + ax - 1u);
        off += (rem % d) * pu(strides + ax - 1u);
        rem /= d;
    }
    return off;
}

// Fixed-order workgroup reductions (a binary tree over 256 lanes), so
// results are reproducible run to run. Call in uniform control flow.
var<workgroup> red: array<f32, 256>;

fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&red[0]);
}

fn wg_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    return workgroupUniformLoad(&red[0]);
}

// Activations, by code (Activation::code in src/ops/activation.rs): 0 none,
// 1 relu, 2 gelu (exact), 3 sigmoid, 4 tanh, 5 rsqrt.

/// Φ(x), the standard normal CDF, through erfc (Abramowitz & Stegun
/// 7.1.26, |error| < 1.5e-7) so the left tail keeps its relative accuracy.
fn normal_cdf(x: f32) -> f32 {
    let z = abs(x) * 0.70710678;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let half_erfc = 0.5 * poly * exp(-z * z);
    return select(half_erfc, 1.0 - half_erfc, x >= 0.0);
}

fn act_fwd(code: u32, x: f32) -> f32 {
    switch code {
        case 1u: {
            return select(x, 0.0, x < 0.0); // NaN propagates, as in PyTorch
        }
        case 2u: {
            return x * normal_cdf(x);
        }
        case 3u: {
            return 1.0 / (1.0 + exp(-x));
        }
        case 4u: {
            return tanh(clamp(x, -15.0, 15.0));
        }
        case 5u: {
            return 1.0 / sqrt(x);
        }
        default: {
            return x;
        }
    }
}

/// dx from the saved value (the output, or the input for gelu) and dy.
fn act_bwd(code: u32, s: f32, dy: f32) -> f32 {
    switch code {
        case 1u: {
            return select(0.0, dy, s > 0.0);
        }
        case 2u: {
            return dy * (normal_cdf(s) + s * exp(-0.5 * s * s) * 0.3989423);
        }
        case 3u: {
            return dy * s * (1.0 - s);
        }
        case 4u: {
            return dy * (1.0 - s * s);
        }
        case 5u: {
            return dy * -0.5 * s * s * s;
        }
        default: {
            return dy;
        }
    }
}
