//! The wgpu backend against the CPU backend (the oracle): every case of the
//! shared op catalogue (tests/common/catalogue.rs: every op on odd sizes,
//! forward and backward, unfused and after the fusion passes, which produce
//! the fused kernels, in-place launches and the multi-tensor optimiser
//! launch) and its whole train steps, then what only wgpu has: NaN through
//! relu, 2-D dispatch of large grids, arena size limits.
//!
//! Metric: ‖wgpu − cpu‖ / ‖cpu‖ over each output and each updated
//! persistent tensor, below the case's tolerance (1e-4; 1e-3 for
//! reductions over more than 10,000 elements); u32 outputs (argmax) must be
//! equal. Every failing case is reported by name.
//!
//! With no adapter every test prints `SKIPPED: <test>: no wgpu adapter
//! (<reason>)` and passes, unless GPURT_REQUIRE_WGPU=1.

#![cfg(feature = "wgpu")]

use crate::common::catalogue::{self, Prepared, TOL};
use crate::common::{input, rel_err};
use crate::gate::gpu;
use gpurt::backend::cpu::CpuBackend;
use gpurt::backend::wgpu::{GemmStyle, WgpuBackend};
use gpurt::backend::Backend;
use gpurt::graph::exec::Session;
use gpurt::graph::ir::Graph;
use gpurt::graph::plan::{self, Module};
use gpurt::ops::{Activation, ConvParams};
use gpurt::tensor::Shape;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// Every case on `gpu` against the CPU, failing with the list of failures.
fn check_all(what: &str, gpu: &WgpuBackend, cases: &[Prepared]) {
    let compile = |m: Arc<Module>| gpu.compile(m);
    catalogue::check_all(what, cases, &[("wgpu", &compile)]);
}

#[test]
fn wgpu_matches_cpu_on_every_op() {
    let t = "wgpu_matches_cpu_on_every_op";
    let Some(gpu) = gpu(t) else { return };
    check_all(t, gpu, &catalogue::op_cases());
}

/// The GEMM kernels the adapter does not pick (the tiled ones on a CPU
/// adapter, the team ones on a GPU) on the same catalogue, so both stay
/// checked wherever the tests run.
#[test]
fn wgpu_other_gemm_style_matches_cpu() {
    let t = "wgpu_other_gemm_style_matches_cpu";
    let Some(gpu) = gpu(t) else { return };
    let other = match gpu.gemm_style() {
        GemmStyle::Direct => GemmStyle::Tiled,
        GemmStyle::Tiled => GemmStyle::Direct,
    };
    match gpu.with_gemm_style(other) {
        Ok(b) => check_all(t, &b, &catalogue::op_cases()),
        Err(e) => println!("SKIPPED: {t}: {e}"),
    }
}

#[test]
fn wgpu_matches_cpu_on_train_steps() {
    let t = "wgpu_matches_cpu_on_train_steps";
    let Some(gpu) = gpu(t) else { return };
    check_all(t, gpu, &catalogue::model_cases());
}

/// Fused attention against matmul, mask, softmax, matmul, both on wgpu:
/// T in 1, 7, 64, 257, head sizes 16, 32, 64, a fully padded sequence in
/// every batch.
#[test]
fn wgpu_fused_attention_matches_the_composition() {
    let t = "wgpu_fused_attention_matches_the_composition";
    let Some(gpu) = gpu(t) else { return };
    crate::common::attention::check_backend(&|m| gpu.compile(m), 1e-4);
}

/// A NaN reaching relu stays NaN (as in PyTorch), on the elementwise
/// kernel and in the linear and conv epilogues, on both backends alike.
#[test]
fn relu_keeps_nan_like_the_cpu() {
    let t = "relu_keeps_nan_like_the_cpu";
    let Some(gpu) = gpu(t) else {
        return;
    };
    let graphs: Vec<(&str, Graph)> = {
        let mut plain = Graph::new(false);
        let x = input(&mut plain, "x", &[3, 7]);
        let y = plain.relu(x).unwrap();
        plain.set_output("y", y);
        let mut lin = Graph::new(false);
        let x = input(&mut lin, "x", &[3, 7]);
        let w = lin.param("w", [5, 7]).unwrap();
        let b = lin.param("b", [5]).unwrap();
        let y = lin
            .linear_act(x, w, Some(b), Some(Activation::Relu))
            .unwrap();
        lin.set_output("y", y);
        let mut conv = Graph::new(false);
        let x = input(&mut conv, "x", &[1, 3, 7, 7]);
        let w = conv.param("w", [4, 3, 3, 3]).unwrap();
        let b = conv.param("b", [4]).unwrap();
        let y = conv
            .conv2d_act(x, w, Some(b), ConvParams::default(), Some(Activation::Relu))
            .unwrap();
        conv.set_output("y", y);
        vec![("relu", plain), ("linear+relu", lin), ("conv2d+relu", conv)]
    };
    for (name, g) in &graphs {
        let mut outs = Vec::new();
        for backend in [&CpuBackend::new() as &dyn Backend, gpu] {
            let module = plan::compile(&[("p", g)]).unwrap();
            let mut s = Session::new(backend, module).unwrap();
            let p = s.program("p").unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            for (n, v) in g.persistent() {
                let d: Vec<f32> = (0..g.shape(v).numel())
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                s.write_persistent(&n, &d).unwrap();
            }
            let xv = g.inputs()[0].1;
            let mut x: Vec<f32> = (0..g.shape(xv).numel())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            x[0] = f32::NAN;
            x[9] = f32::NAN;
            s.write_input(p, "x", &x).unwrap();
            s.run(p).unwrap();
            let mut y = vec![0.0f32; g.shape(g.outputs[0].1).numel()];
            s.read_output(p, "y", &mut y).unwrap();
            outs.push(y);
        }
        let nan = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
        assert!(
            nan(&outs[0]).iter().any(|&b| b),
            "{t} {name}: the CPU lost the NaN"
        );
        assert_eq!(
            nan(&outs[0]),
            nan(&outs[1]),
            "{t} {name}: NaN positions differ"
        );
        let finite = |v: &[f32]| {
            v.iter()
                .map(|&x| if x.is_nan() { 0.0 } else { x as f64 })
                .collect::<Vec<_>>()
        };
        let e = rel_err(&finite(&outs[1]), &finite(&outs[0]));
        assert!(e < TOL, "{t} {name}: relative error {e:.3e}");
    }
}

// ---------------------------------------------------------------------------
// Limits.

/// Grids beyond the per-dimension workgroup limit (65,535 here) run as 2-D
/// dispatches: one thread per element past 16.7M elements, one workgroup
/// per row past 65,535 rows.
#[test]
fn large_grids_use_2d_dispatch() {
    let t = "large_grids_use_2d_dispatch";
    let Some(gpu) = gpu(t) else { return };
    let max = gpu.limits().max_compute_workgroups_per_dimension as usize;
    let mut g = Graph::new(false);
    let n = max * 256 + 300;
    let f = g.fill(Shape(vec![n]), 0.5).unwrap();
    g.set_output("f", f);
    let x = input(&mut g, "x", &[max + 7, 3]);
    let y = g.softmax(x).unwrap();
    g.set_output("y", y);
    let mut cases = Vec::new();
    catalogue::graph_case(&mut cases, t, g, 0, TOL);
    check_all(t, gpu, &cases);
}

/// An arena larger than one storage binding is refused when the module is
/// compiled, naming the limit, its value and the program.
#[test]
fn oversized_arena_is_a_clear_error() {
    let t = "oversized_arena_is_a_clear_error";
    let Some(gpu) = gpu(t) else { return };
    let limit = gpu.limits().max_storage_buffer_binding_size as usize;
    let mut g = Graph::new(false);
    let x = input(&mut g, "x", &[limit / 4 / 1024 + 1, 1024]);
    let y = g.relu(x).unwrap();
    g.set_output("y", y);
    let module = plan::compile(&[("big", &g)]).unwrap();
    let err = match Session::new(gpu, module) {
        Ok(_) => panic!("{t}: compiled a {limit}-byte+ arena"),
        Err(e) => e.to_string(),
    };
    println!("{err}");
    for want in [
        "max_storage_buffer_binding_size",
        "'big'",
        &(limit >> 20).to_string(),
    ] {
        assert!(err.contains(want), "{t}: {err:?} lacks {want:?}");
    }
}
