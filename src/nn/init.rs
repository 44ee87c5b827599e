//! Seeded parameter initialisation. ChaCha8 is specified bit for bit, so a
//! seed gives the same weights on every platform and crate version.

use crate::nn::spec::{Init, ParamDecl};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Initial values for each declaration, in order, from one seeded stream.
pub fn init_params(decls: &[ParamDecl], seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    decls
        .iter()
        .map(|d| {
            let n = d.shape.numel();
            let data = match d.init {
                Init::FanIn(f) => {
                    let bound = 1.0 / (f.max(1) as f32).sqrt();
                    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                }
                Init::Uniform(bound) => (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
                Init::Normal(std) => (0..n).map(|_| std * normal(&mut rng)).collect(),
                Init::Ones => vec![1.0; n],
                Init::Zeros => vec![0.0; n],
            };
            (
                d.name.clone(),
                Tensor {
                    shape: d.shape.clone(),
                    data,
                },
            )
        })
        .collect()
}

/// A standard normal sample (Box-Muller on two uniforms from the stream).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}
