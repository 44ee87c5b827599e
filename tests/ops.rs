//! Every op on the CPU backend: parity with the f64 reference, gradients
//! against finite differences, and fused against unfused graphs.

mod common;

#[path = "ops/fusion.rs"]
mod fusion;
#[path = "ops/gradients.rs"]
mod gradients;
#[path = "ops/parity.rs"]
mod parity;

/// This whole target again on each narrower instruction set the host has
/// (AVX2 and scalar on an AVX-512 host; the plain run covers the widest):
/// every case of the catalogue, the gradients and the fusion checks.
#[test]
fn every_op_on_every_instruction_set() {
    gpurt::backend::cpu::isa::rerun_tests_on_other_sets("every_op_on_every_instruction_set", &[]);
}
