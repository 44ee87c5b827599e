//! Fused attention against its unfused composition (matmul, mask,
//! softmax, matmul), run on one backend: the same `qkv` twice, through
//! `Graph::attention` and through the primitive ops with the padding mask
//! as an additive key bias and a query-row mask, and the gradient of one
//! weighted loss with respect to each copy. Every backend's test calls
//! [`fused_vs_unfused`] with itself.

use gpurt::backend::Executable;
use gpurt::graph::autodiff::gradients;
use gpurt::graph::exec::Session;
use gpurt::graph::ir::{Graph, ValueId};
use gpurt::graph::plan::compile;
use gpurt::graph::plan::Module;
use gpurt::tensor::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// The composition: `[b, t, 3·h·d]` -> `[b, t, h·d]`.
fn unfused(
    g: &mut Graph,
    qkv: ValueId,
    keybias: ValueId,
    qmask: ValueId,
    dims: [usize; 4],
) -> ValueId {
    let [b, t, h, d] = dims;
    let x = g.reshape(qkv, [b, t, 3, h, d]).unwrap();
    let x = g.transpose(x, &[2, 0, 3, 1, 4]).unwrap();
    let part = |g: &mut Graph, i: usize| {
        let p = g.slice(x, 0, i, 1).unwrap();
        g.reshape(p, [b * h, t, d]).unwrap()
    };
    let (q, k, v) = (part(g, 0), part(g, 1), part(g, 2));
    let s = g.matmul_t(q, false, k, true).unwrap();
    let s = g.scale(s, 1.0 / (d as f32).sqrt()).unwrap();
    let s = g.add(s, keybias).unwrap();
    let p = g.softmax(s).unwrap();
    let o = g.matmul(p, v).unwrap();
    let o = g.mul(o, qmask).unwrap();
    let o = g.reshape(o, [b, h, t, d]).unwrap();
    let o = g.transpose(o, &[0, 2, 1, 3]).unwrap();
    g.reshape(o, [b, t, h * d]).unwrap()
}

/// Relative gaps ‖fused − unfused‖ / ‖unfused‖ of the output and of the
/// gradient with respect to qkv, for `b` sequences of lengths `lengths`.
pub fn fused_vs_unfused(
    open: Open,
    lengths: &[u32],
    t: usize,
    h: usize,
    d: usize,
    seed: u64,
) -> (f64, f64) {
    let b = lengths.len();
    let dims = [b, t, h, d];
    let mut g = Graph::new(true);
    let qf = g.input("qkv_fused", [b, t, 3 * h * d], DType::F32).unwrap();
    let qu = g
        .input("qkv_unfused", [b, t, 3 * h * d], DType::F32)
        .unwrap();
    let len = g.input("lengths", [b], DType::U32).unwrap();
    let keybias = g.input("keybias", [b * h, 1, t], DType::F32).unwrap();
    let qmask = g.input("qmask", [b * h, t, 1], DType::F32).unwrap();
    let weights = g.input("weights", [b, t, h * d], DType::F32).unwrap();
    let yf = g.attention(qf, len, h).unwrap();
    let yu = unfused(&mut g, qu, keybias, qmask, dims);
    let lf = g.mul(yf, weights).unwrap();
    let lu = g.mul(yu, weights).unwrap();
    let both = g.add(lf, lu).unwrap();
    let loss = g.sum(both, &[0, 1, 2], false).unwrap();
    let grads = gradients(&mut g, loss, &[qf, qu]).unwrap();
    g.set_output("y_fused", yf);
    g.set_output("y_unfused", yu);
    g.set_output("d_fused", grads[0]);
    g.set_output("d_unfused", grads[1]);

    let module = Arc::new(compile(&[("p", &g)]).unwrap());
    let exe = open(Arc::clone(&module)).unwrap();
    let mut s = Session::from_executable(module, exe, String::new());
    let p = s.program("p").unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut rand =
        |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect() };
    let qkv = rand(b * t * 3 * h * d);
    let w = rand(b * t * h * d);
    let mut kb = vec![0.0f32; b * h * t];
    let mut qm = vec![0.0f32; b * h * t];
    for (bi, &l) in lengths.iter().enumerate() {
        for hi in 0..h {
            for ti in 0..t {
                let valid = ti < l as usize;
                kb[(bi * h + hi) * t + ti] = if valid { 0.0 } else { -1e9 };
                qm[(bi * h + hi) * t + ti] = if valid { 1.0 } else { 0.0 };
            }
        }
    }
    s.write_input(p, "qkv_fused", &qkv).unwrap();
    s.write_input(p, "qkv_unfused", &qkv).unwrap();
    s.write_input_u32(p, "lengths", lengths).unwrap();
    s.write_input(p, "keybias", &kb).unwrap();
    s.write_input(p, "qmask", &qm).unwrap();
    s.write_input(p, "weights", &w).unwrap();
    s.run(p).unwrap();
    let mut read = |name: &str, n: usize| {
        let mut v = vec![0.0f32; n];
        s.read_output(p, name, &mut v).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite values");
        v
    };
    let n_out = b * t * h * d;
    let (yf, yu) = (read("y_fused", n_out), read("y_unfused", n_out));
    let (df, du) = (read("d_fused", 3 * n_out), read("d_unfused", 3 * n_out));
    (super::rel_err_f32(&yf, &yu), super::rel_err_f32(&df, &du))
}

/// The lengths the tests use for `t` rows: full, empty (fully padded),
/// and a ragged one.
pub fn test_lengths(t: usize) -> Vec<u32> {
    vec![t as u32, 0, (t as u32).div_ceil(2).max(1)]
}

/// Every (sequence length, head size) the acceptance asks for.
pub const SHAPES: [(usize, usize); 12] = [
    (1, 16),
    (1, 32),
    (1, 64),
    (7, 16),
    (7, 32),
    (7, 64),
    (64, 16),
    (64, 32),
    (64, 64),
    (257, 16),
    (257, 32),
    (257, 64),
];

/// Compiles a module for the backend under test.
pub type Open<'a> = &'a dyn Fn(Arc<Module>) -> gpurt::Result<Box<dyn Executable>>;

/// Runs every shape on a backend, failing with all gaps over `tol`.
pub fn check_backend(open: Open, tol: f64) {
    let mut bad = Vec::new();
    for (i, &(t, d)) in SHAPES.iter().enumerate() {
        let (gy, gd) = fused_vs_unfused(open, &test_lengths(t), t, 2, d, 40 + i as u64);
        println!("attention T={t} d={d}: output gap {gy:.2e}, gradient gap {gd:.2e}");
        if !(gy < tol && gd < tol) {
            bad.push(format!("T={t} d={d}: {gy:e} {gd:e}"));
        }
    }
    assert!(
        bad.is_empty(),
        "fused attention differs from the composition: {bad:?}"
    );
}
