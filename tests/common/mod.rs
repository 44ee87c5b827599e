//! Shared helpers for the numerical test suites: seeded random data, the
//! relative-error metric, graph-building helpers, a runner that compiles a
//! graph and executes it on the CPU backend in f32, and the op-case
//! catalogue every backend's parity suite runs ([`catalogue`]).
//!
//! Data is generated as f32 values and handed to both sides as f64, so the
//! f64 reference and the f32 runtime see bit-identical inputs.

#![allow(dead_code)]

pub mod attention;
pub mod catalogue;
pub mod mnist;
pub mod reference;

use gpurt::backend::cpu::CpuBackend;
use gpurt::graph::exec::Session;
use gpurt::graph::ir::{Graph, Role, ValueId};
use gpurt::graph::plan::compile;
use gpurt::tensor::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Data for a graph's inputs, parameters and state, by value.
pub type Data = HashMap<ValueId, Vec<f64>>;
/// Runtime scalars by name (`lr`, `step`).
pub type Scalars = HashMap<String, f64>;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` f32-representable values uniform in [-1, 1), never all zero.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let v: Vec<f64> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) as f64)
        .collect();
    assert!(v.iter().any(|&x| x != 0.0), "all-zero test data");
    v
}

/// Like [`uniform`] but with |x| in [margin, 1): for inputs near a kink
/// (relu at 0) or a pole (a divisor).
pub fn uniform_away(rng: &mut ChaCha8Rng, n: usize, margin: f32) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = rng.random_range(margin..1.0f32);
            (if rng.random_bool(0.5) { m } else { -m }) as f64
        })
        .collect()
}

/// `n` values uniform in [lo, hi), f32-representable.
pub fn uniform_in(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi) as f64).collect()
}

/// `n` integer labels in 0..classes (stored as f64).
pub fn labels(rng: &mut ChaCha8Rng, n: usize, classes: u32) -> Vec<f64> {
    (0..n)
        .map(|_| rng.random_range(0..classes) as f64)
        .collect()
}

/// Random data for every input, parameter and state of `g`: u32 inputs get
/// labels in `0..classes`, f32 values get [`uniform`].
pub fn random_data(g: &Graph, rng: &mut ChaCha8Rng, classes: u32) -> Data {
    let mut d = Data::new();
    for (i, v) in g.values.iter().enumerate() {
        if matches!(v.role, Role::Computed) {
            continue;
        }
        let n = v.shape.numel();
        let data = match v.dtype {
            DType::U32 => labels(rng, n, classes),
            _ => uniform(rng, n),
        };
        d.insert(ValueId(i as u32), data);
    }
    d
}

/// ‖a − b‖₂ / ‖b‖₂ over the whole tensor (`b` is the reference). When the
/// reference is exactly zero the absolute norm ‖a‖ is returned instead.
/// NaN anywhere gives NaN, which fails every `<` check.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// [`rel_err`] of f32 data (computed in f64).
pub fn rel_err_f32(a: &[f32], b: &[f32]) -> f64 {
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    rel_err(&f64s(a), &f64s(b))
}

/// Assert `rel_err(got, want) < tol` with a message naming the case.
#[track_caller]
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} values, reference has {}",
        got.len(),
        want.len()
    );
    let e = rel_err(got, want);
    assert!(
        e < tol,
        "{what}: relative error {e:.3e} >= {tol:.0e}\n  got  {:?}\n  want {:?}",
        preview(got),
        preview(want)
    );
}

fn preview(v: &[f64]) -> Vec<f64> {
    v.iter().take(8).cloned().collect()
}

pub fn scalars(kv: &[(&str, f64)]) -> Scalars {
    kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// The scalars of `kv` that `g` reads: for tests looping over graphs of
/// which only some read a scalar (SGD has no `step`; setting a scalar a
/// module lacks is an error).
pub fn declared(g: &Graph, kv: &[(&str, f64)]) -> Scalars {
    kv.iter()
        .filter(|(k, _)| g.scalars.iter().any(|s| s == k))
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

/// A new f32 input of `g`.
/// Batch-norm parameters and running statistics for `c` channels, named as
/// PyTorch's `bn` module.
pub fn bn_params(g: &mut Graph, c: usize) -> gpurt::ops::batchnorm::BatchNormParams {
    gpurt::ops::batchnorm::BatchNormParams {
        gamma: g.param("bn.weight", [c]).unwrap(),
        beta: g.param("bn.bias", [c]).unwrap(),
        running_mean: g.state("bn.running_mean", [c]).unwrap(),
        running_var: g.state("bn.running_var", [c]).unwrap(),
    }
}

pub fn input(g: &mut Graph, name: &str, dims: &[usize]) -> ValueId {
    g.input(name, dims.to_vec(), DType::F32).unwrap()
}

/// `sum(y ⊙ r)` over all axes, with `r` a new f32 input (random data
/// like every input), so that dL/dy = r: a loss for the gradient of any op.
pub fn weighted_sum(g: &mut Graph, y: ValueId) -> ValueId {
    let s = g.shape(y).clone();
    let r = input(g, "r", &s.0);
    let p = g.mul(y, r).unwrap();
    let axes: Vec<usize> = (0..s.rank()).collect();
    g.sum(p, &axes, false).unwrap()
}

/// A graph compiled as program "p" and loaded on the CPU backend.
pub struct Cpu {
    pub session: Session,
    program: usize,
}

impl Cpu {
    pub fn new(g: &Graph) -> Self {
        let module = compile(&[("p", g)]).expect("compile");
        let session = Session::new(&CpuBackend::new(), module).expect("cpu session");
        let program = session.program("p").expect("program p");
        Cpu { session, program }
    }

    /// Upload every input, parameter and state value present in `data`
    /// (as f32; u32 inputs as integers).
    pub fn write(&mut self, g: &Graph, data: &Data) {
        self.upload(g, data, true);
    }

    /// Upload only the inputs. The planner reuses an input's slot as
    /// scratch once the input has been read, so inputs must be written
    /// before every run; parameters and state persist.
    pub fn write_inputs(&mut self, g: &Graph, data: &Data) {
        self.upload(g, data, false);
    }

    fn upload(&mut self, g: &Graph, data: &Data, persistent: bool) {
        for (i, v) in g.values.iter().enumerate() {
            let Some(d) = data.get(&ValueId(i as u32)) else {
                continue;
            };
            match (&v.role, v.dtype) {
                (Role::Input(n), DType::U32) => {
                    let u: Vec<u32> = d.iter().map(|&x| x as u32).collect();
                    self.session
                        .write_input_u32(self.program, n, &u)
                        .expect("write u32 input");
                }
                (Role::Input(n), _) => self
                    .session
                    .write_input(self.program, n, &to_f32(d))
                    .expect("write input"),
                (Role::Param(n) | Role::State(n), _) if persistent => self
                    .session
                    .write_persistent(n, &to_f32(d))
                    .expect("write persistent"),
                _ => {}
            }
        }
    }

    pub fn run(&mut self, scalars: &Scalars) {
        for (k, v) in scalars {
            self.session.set_scalar(k, *v as f32).unwrap();
        }
        self.session.run(self.program).expect("run");
    }

    /// A named output as f64 (u32 outputs converted from their bits).
    pub fn output(&mut self, g: &Graph, name: &str) -> Vec<f64> {
        let v = g.output(name).unwrap_or_else(|| panic!("no output {name}"));
        let mut out = vec![0.0f32; g.shape(v).numel()];
        self.session
            .read_output(self.program, name, &mut out)
            .expect("read output");
        match g.dtype(v) {
            DType::U32 => out.iter().map(|x| x.to_bits() as f64).collect(),
            _ => out.iter().map(|&x| x as f64).collect(),
        }
    }

    pub fn persistent(&mut self, name: &str) -> Vec<f64> {
        let t = self.session.read_persistent(name).expect("read persistent");
        t.data.iter().map(|&x| x as f64).collect()
    }
}

pub fn to_f32(d: &[f64]) -> Vec<f32> {
    d.iter().map(|&x| x as f32).collect()
}

/// A copy of `g` after gpurt's fusion passes (`gpurt::graph::fuse::fuse`),
/// the form the classifier compiles. The fused graph must compute the same
/// values as `g`.
pub fn fused(g: &Graph) -> Graph {
    let mut f = g.clone();
    gpurt::graph::fuse::fuse(&mut f);
    f
}

/// Compile `g`, run it once on the CPU backend in f32 and return every
/// named output (as f64), keyed by name.
pub fn run_cpu(g: &Graph, data: &Data, scalars: &Scalars) -> HashMap<String, Vec<f64>> {
    let mut cpu = Cpu::new(g);
    cpu.write(g, data);
    cpu.run(scalars);
    g.outputs
        .iter()
        .map(|(n, _)| (n.clone(), cpu.output(g, n)))
        .collect()
}

/// A module whose inference graph holds the CPU-only pooled convolution
/// (`conv_max_pool`, fused with the CPU's extras): what the GPU backends
/// must refuse with a typed error, since they have no kernel for it.
pub fn pooled_conv_module() -> gpurt::graph::plan::Module {
    use gpurt::graph::fuse::{fuse_with, FuseExtras};
    use gpurt::ops::{Activation, ConvParams, PoolParams};
    let mut g = Graph::new(false);
    let x = g.input("x", [2, 3, 9, 9], DType::F32).unwrap();
    let w = g.param("w", [8, 3, 3, 3]).unwrap();
    let y = g.conv2d(x, w, None, ConvParams::default()).unwrap();
    let y = g.act(Activation::Relu, y).unwrap();
    let y = g.max_pool2d(y, PoolParams::square(2)).unwrap();
    g.set_output("y", y);
    let extras = FuseExtras {
        conv_max_pool: true,
    };
    let fusions = fuse_with(&mut g, extras);
    assert!(fusions.iter().any(|f| f.rule == "conv_max_pool"));
    compile(&[("p", &g)]).unwrap()
}

/// `r` is the typed refusal of a module with the CPU-only pooled
/// convolution (not a panic, not a wrong answer).
pub fn assert_refuses_pooled_conv<T>(backend: &str, r: gpurt::Result<T>) {
    match r {
        Err(e @ gpurt::Error::Device { .. }) => {
            assert!(e.to_string().contains("fused max pool"), "{backend}: {e}")
        }
        Err(e) => panic!("{backend}: the wrong error for a pooled convolution: {e}"),
        Ok(_) => panic!("{backend}: accepted a pooled convolution it has no kernel for"),
    }
}
