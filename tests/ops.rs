//! Every op on the CPU backend: parity with the f64 reference, gradients
//! against finite differences, and fused against unfused graphs.

mod common;

#[path = "ops/fusion.rs"]
mod fusion;
#[path = "ops/gradients.rs"]
mod gradients;
#[path = "ops/parity.rs"]
mod parity;
