//! Fusion: fused == unfused on randomly generated graphs (forward and
//! gradients, 200+ cases per run), and the plan figures for the small CNN
//! train step that the fusion issue promises.

use crate::common::{assert_close, fused, random_data, rng, run_cpu, Scalars};
use gpurt::graph::autodiff::gradients;
use gpurt::graph::ir::{Graph, ValueId};
use gpurt::inspect::PlanReport;
use gpurt::model::ClassifierConfig;
use gpurt::nn::ModelSpec;
use gpurt::ops::{Activation, BinaryKind};
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::tensor::DType;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

const DIMS: [usize; 5] = [1, 3, 7, 5, 33];
const ACTS: [Activation; 4] = [
    Activation::Relu,
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Tanh,
];
const KINDS: [BinaryKind; 4] = [
    BinaryKind::Add,
    BinaryKind::Sub,
    BinaryKind::Mul,
    BinaryKind::Div,
];

/// A random graph of elementwise chains, broadcasts and reductions over
/// inputs `x` (rank 1-3), `v` (x's last axis, broadcast) and `s` ([1]).
/// Returns the graph and its differentiable inputs.
fn random_graph(r: &mut ChaCha8Rng, with_grad: bool) -> (Graph, Vec<ValueId>) {
    let rank = r.random_range(1..=3);
    let shape: Vec<usize> = (0..rank)
        .map(|_| DIMS[r.random_range(0..DIMS.len())])
        .collect();
    let mut g = Graph::new(false);
    let x = g.input("x", shape.clone(), DType::F32).unwrap();
    let v = g.input("v", [*shape.last().unwrap()], DType::F32).unwrap();
    let s = g.input("s", [1], DType::F32).unwrap();
    let mut full = vec![x]; // values with x's shape
    let steps = r.random_range(2..=9);
    for _ in 0..steps {
        let a = full[r.random_range(0..full.len())];
        let y = match r.random_range(0..7) {
            0 | 1 => g.act(ACTS[r.random_range(0..4)], a).unwrap(),
            2 => {
                let b = full[r.random_range(0..full.len())];
                let k = KINDS[r.random_range(0..3)]; // no div by arbitrary values
                g.binary(k, a, b).unwrap()
            }
            3 => {
                let b = if r.random_bool(0.5) { v } else { s };
                let k = KINDS[r.random_range(0..3)];
                if r.random_bool(0.5) {
                    g.binary(k, a, b).unwrap()
                } else {
                    g.binary(k, b, a).unwrap()
                }
            }
            4 => g.scale(a, r.random_range(-2.0f32..2.0)).unwrap(),
            5 => {
                // reduce over a random axis, then broadcast back by a binary op
                let axis = r.random_range(0..rank);
                let m = g.sum(a, &[axis], true).unwrap();
                g.binary(BinaryKind::Add, a, m).unwrap()
            }
            _ => {
                // division by a value kept away from zero: 1 + sigmoid(.)
                let d = g.act(Activation::Sigmoid, a).unwrap();
                let one = g.binary(BinaryKind::Div, d, s).unwrap();
                g.binary(BinaryKind::Mul, one, a).unwrap()
            }
        };
        full.push(y);
    }
    let last = *full.last().unwrap();
    g.set_output("y", last);
    if r.random_bool(0.3) {
        let mid = full[r.random_range(1..full.len())];
        g.set_output("mid", mid);
    }
    let total = g.sum(last, &(0..rank).collect::<Vec<_>>(), false).unwrap();
    g.set_output("total", total);
    let wrt = vec![x, v, s];
    if with_grad {
        let w = g.input("w", shape, DType::F32).unwrap();
        let weighted = g.mul(last, w).unwrap();
        let loss = g
            .sum(weighted, &(0..rank).collect::<Vec<_>>(), false)
            .unwrap();
        let loss = g.reshape(loss, [1]).unwrap();
        let grads = gradients(&mut g, loss, &wrt).unwrap();
        for (i, d) in grads.into_iter().enumerate() {
            g.set_output(&format!("d{i}"), d);
        }
    }
    (g, wrt)
}

#[test]
fn random_graphs_fused_equal_unfused() {
    let mut r = rng(2024);
    let (mut cases, mut chains) = (0, 0);
    for case in 0..240 {
        let with_grad = case % 2 == 1;
        let (g, _) = random_graph(&mut r, with_grad);
        // s is a divisor in some graphs: keep it away from zero.
        let mut data = random_data(&g, &mut r, 1);
        let s = g.inputs().into_iter().find(|(n, _)| n == "s").unwrap().1;
        data.insert(s, vec![1.5]);
        let f = fused(&g);
        let mut gf = g.clone();
        let fusions = gpurt::graph::fuse::fuse(&mut gf);
        chains += fusions.iter().any(|f| f.rule == "elementwise_chain") as usize;
        let want = run_cpu(&g, &data, &Scalars::new());
        let got = run_cpu(&f, &data, &Scalars::new());
        for (name, w) in &want {
            assert_close(
                &format!("case {case} output {name} (fusions {fusions:?})"),
                &got[name],
                w,
                1e-5,
            );
        }
        cases += 1;
    }
    assert!(cases >= 200);
    // The generator must actually exercise the chain rule.
    assert!(
        chains >= cases / 4,
        "only {chains} of {cases} graphs had an elementwise chain"
    );
}

fn cnn_config(input: Vec<usize>) -> ClassifierConfig {
    ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input,
        classes: 10,
        train_batch: Some(64),
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 0,
        fuse: true,
    }
}

#[test]
fn cnn_train_step_plan_meets_the_fusion_targets() {
    for input in [vec![3, 32, 32], vec![1, 28, 28]] {
        let r = PlanReport::new(&cnn_config(input.clone())).unwrap();
        let (before, after) = (r.launches_before(), r.launches_after());
        assert!(
            after as f64 <= 0.6 * before as f64,
            "{input:?}: {after} launches after fusion vs {before} before"
        );
        assert!(
            r.arena_ratio() <= 0.6,
            "{input:?}: arena is {:.0}% of the sum of tensor sizes",
            100.0 * r.arena_ratio()
        );
        let text = r.render();
        assert!(
            text.contains("epilogue")
                && text.contains("multi_tensor_update")
                && text.contains("act_backward_bias"),
            "{text}"
        );
    }
}

#[test]
fn cnn_train_steps_fused_equal_unfused() {
    use gpurt::backend::cpu::CpuBackend;
    use gpurt::model::Classifier;
    let mut cfg = cnn_config(vec![1, 28, 28]);
    cfg.train_batch = Some(8);
    let mut a = Classifier::new(cfg.clone(), &CpuBackend::new()).unwrap();
    cfg.fuse = false;
    let mut b = Classifier::new(cfg, &CpuBackend::new()).unwrap();
    let mut r = rng(5);
    for step in 0..3 {
        let x: Vec<f32> = (0..8 * 784).map(|_| r.random_range(-1.0f32..1.0)).collect();
        let y: Vec<u32> = (0..8).map(|_| r.random_range(0..10)).collect();
        let (la, lb) = (
            a.train_step(&x, &y, 1e-3).unwrap(),
            b.train_step(&x, &y, 1e-3).unwrap(),
        );
        assert!(
            ((la - lb) / lb).abs() < 1e-5,
            "step {step}: loss {la} fused vs {lb} unfused"
        );
    }
    for ((n, ta), (_, tb)) in a
        .model_tensors()
        .unwrap()
        .iter()
        .zip(b.model_tensors().unwrap())
    {
        let ta: Vec<f64> = ta.data.iter().map(|&v| v as f64).collect();
        let tb: Vec<f64> = tb.data.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{n} after 3 steps"), &ta, &tb, 1e-5);
    }
}

/// The fused graph holds only nodes that run: every rule's leftovers and
/// every dead node are removed, and producers point at the right nodes.
#[test]
fn fusion_leaves_no_dead_nodes() {
    use gpurt::model::Classifier;
    let cfg = cnn_config(vec![1, 28, 28]);
    let mut g = Classifier::train_graph(&cfg, 4).unwrap();
    let before = g.nodes.len();
    gpurt::graph::fuse::fuse(&mut g);
    assert!(g.nodes.len() < before, "{} -> {}", before, g.nodes.len());
    let live = gpurt::graph::plan::live_nodes(&g);
    assert!(live.iter().all(|&l| l), "dead nodes after fusion");
    for (i, n) in g.nodes.iter().enumerate() {
        assert!(
            !n.outputs.is_empty() || !n.mutates.is_empty(),
            "node {i} is empty"
        );
        for o in &n.outputs {
            assert_eq!(g.value(*o).producer.map(|p| p.0 as usize), Some(i));
        }
    }
}

/// `conv_max_pool` (the CPU's pooled convolution): conv2d (+ bias) (+ an
/// activation) then a 2×2 max pool, fused, gives the unfused result bit
/// for bit where both run the implicit GEMM (fewer than 16 channels; the
/// Winograd path is checked below): random geometries with odd sizes,
/// stride 1 (pooled from the GEMM's rows, on one thread and over the
/// pool, one image and several side by side) and stride 2 (pooled from a
/// buffer), every activation, and NaN inputs (the first NaN of a window
/// wins, as in max_pool2d).
#[test]
fn conv_max_pool_equals_conv_then_pool_bit_for_bit() {
    use gpurt::graph::fuse::{fuse_with, FuseExtras};
    use gpurt::ops::{ConvParams, PoolParams};
    let extras = FuseExtras {
        conv_max_pool: true,
    };
    let mut r = rng(77);
    let (mut fused_cases, mut nan_cases) = (0, 0);
    for case in 0..120 {
        let n = [1, 2, 3, 8][r.random_range(0..4)];
        let (c_in, c_out) = (
            [1, 3, 4][r.random_range(0..3)],
            [1, 5, 16][r.random_range(0..3)],
        );
        let (h, w) = (r.random_range(3..16), r.random_range(3..16));
        let k = r.random_range(1..=3usize).min(h).min(w);
        let p = ConvParams {
            stride: if case % 4 == 3 { (2, 2) } else { (1, 1) },
            pad: (r.random_range(0..2), r.random_range(0..2)),
            dilation: (1, 1),
        };
        let act = [
            None,
            Some(Activation::Relu),
            Some(Activation::Gelu),
            Some(Activation::Tanh),
        ][case % 4];
        let mut g = Graph::new(false);
        let x = g.input("x", [n, c_in, h, w], DType::F32).unwrap();
        let wt = g.param("w", [c_out, c_in, k, k]).unwrap();
        let b = (case % 3 != 0).then(|| g.param("b", [c_out]).unwrap());
        let mut y = g.conv2d(x, wt, b, p).unwrap();
        if let Some(a) = act {
            y = g.act(a, y).unwrap();
        }
        let Ok(y) = g.max_pool2d(y, PoolParams::square(2)) else {
            continue; // an output smaller than the window
        };
        g.set_output("y", y);
        let mut data = random_data(&g, &mut r, 1);
        if case % 5 == 0 {
            let xd = data.get_mut(&x).unwrap();
            for i in (0..xd.len()).step_by(7) {
                xd[i] = f64::NAN;
            }
            nan_cases += 1;
        }
        let mut f = g.clone();
        let fusions = fuse_with(&mut f, extras);
        assert!(
            fusions.iter().any(|f| f.rule == "conv_max_pool"),
            "case {case}: not fused: {fusions:?}"
        );
        fused_cases += 1;
        let want = run_cpu(&g, &data, &Scalars::new());
        let got = run_cpu(&f, &data, &Scalars::new());
        let (want, got) = (&want["y"], &got["y"]);
        if case % 5 != 0 {
            // The f64 reference of the fused op, against the CPU's.
            let vals = crate::common::reference::eval_f64(&f, &data, &Default::default());
            let exact = &vals[f.output("y").unwrap().0 as usize];
            assert_close(&format!("case {case}: f64 reference"), got, exact, 1e-5);
        }
        assert_eq!(want.len(), got.len());
        for (i, (a, b)) in want.iter().zip(got).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "case {case} (n {n}, c {c_in}->{c_out}, {h}x{w}, k {k}, {p:?}, {act:?}) \
                 element {i}: fused {b} vs unfused {a}"
            );
        }
    }
    assert!(
        fused_cases >= 100 && nan_cases >= 15,
        "{fused_cases} / {nan_cases}"
    );
}

/// Pooled convolutions the CPU runs with Winograd F(2×2, 3×3) (3×3,
/// stride 1, 16 channels or more, enough images): fused, they agree with
/// conv-then-pool (the implicit GEMM) and with the f64 reference up to
/// f32 rounding, NaN windows included; odd and padded sizes, a large
/// image (bands of tile rows), the pool's groups of one to 24 images (the
/// unit test beside the kernel calls it with whole batches).
#[test]
fn conv_max_pool_on_the_winograd_path_agrees_with_conv_then_pool() {
    use gpurt::graph::fuse::{fuse_with, FuseExtras};
    use gpurt::ops::{ConvParams, PoolParams};
    let extras = FuseExtras {
        conv_max_pool: true,
    };
    let mut r = rng(78);
    let cases: [(usize, usize, usize, usize, usize, usize); 5] = [
        (32, 32, 64, 13, 13, 0),
        (24, 16, 17, 15, 15, 0),
        (48, 17, 16, 9, 10, 1),
        (4, 16, 16, 34, 30, 1),
        (192, 16, 24, 6, 7, 0),
    ];
    for (case, (n, c_in, c_out, h, w, pad)) in cases.into_iter().enumerate() {
        let act = [Some(Activation::Relu), None, Some(Activation::Tanh)][case % 3];
        let mut g = Graph::new(false);
        let x = g.input("x", [n, c_in, h, w], DType::F32).unwrap();
        let wt = g.param("w", [c_out, c_in, 3, 3]).unwrap();
        let b = g.param("b", [c_out]).unwrap();
        let p = ConvParams {
            stride: (1, 1),
            pad: (pad, pad),
            dilation: (1, 1),
        };
        let mut y = g.conv2d(x, wt, Some(b), p).unwrap();
        if let Some(a) = act {
            y = g.act(a, y).unwrap();
        }
        let y = g.max_pool2d(y, PoolParams::square(2)).unwrap();
        g.set_output("y", y);
        let clean = random_data(&g, &mut r, 1);
        let mut with_nan = clean.clone();
        let xd = with_nan.get_mut(&x).unwrap();
        for i in (0..xd.len()).step_by(997) {
            xd[i] = f64::NAN;
        }
        let mut f = g.clone();
        let fusions = fuse_with(&mut f, extras);
        assert!(
            fusions.iter().any(|f| f.rule == "conv_max_pool"),
            "case {case}: not fused: {fusions:?}"
        );
        // Clean data: against the f64 reference and the unfused graph.
        let got = &run_cpu(&f, &clean, &Scalars::new())["y"];
        let vals = crate::common::reference::eval_f64(&f, &clean, &Default::default());
        let exact = &vals[f.output("y").unwrap().0 as usize];
        assert_close(&format!("case {case}: f64 reference"), got, exact, 1e-5);
        let want = &run_cpu(&g, &clean, &Scalars::new())["y"];
        assert_close(&format!("case {case}: fused vs unfused"), got, want, 1e-5);
        // NaN inputs: the same windows NaN, the rest as close.
        let got = &run_cpu(&f, &with_nan, &Scalars::new())["y"];
        let want = &run_cpu(&g, &with_nan, &Scalars::new())["y"];
        let nan = |v: &[f64]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
        assert_eq!(nan(want), nan(got), "case {case}: NaN windows");
        assert!(nan(got).iter().any(|&b| b), "case {case}: no NaN window");
        let finite = |v: &[f64]| {
            v.iter()
                .map(|&x| if x.is_nan() { 0.0 } else { x })
                .collect::<Vec<_>>()
        };
        assert_close(
            &format!("case {case}: fused vs unfused, NaN inputs"),
            &finite(got),
            &finite(want),
            1e-5,
        );
    }
}

/// The pooled convolution needs the pool's indices unread: a training
/// graph (whose max-pool gradient reads them) keeps the two kernels, and
/// without the extra (the GPU backends) nothing changes.
#[test]
fn conv_max_pool_only_where_the_indices_are_unread_and_asked_for() {
    use gpurt::graph::fuse::{fuse_with, FuseExtras};
    let extras = FuseExtras {
        conv_max_pool: true,
    };
    let cfg = cnn_config(vec![1, 28, 28]);
    let rules = |extras: FuseExtras| -> Vec<Vec<&'static str>> {
        use gpurt::model::Classifier;
        [
            Classifier::train_graph(&cfg, 64),
            Classifier::infer_graph(&cfg, 1),
        ]
        .into_iter()
        .map(|g| {
            let mut g = g.unwrap();
            fuse_with(&mut g, extras).iter().map(|f| f.rule).collect()
        })
        .collect()
    };
    let (with, without) = (rules(extras), rules(FuseExtras::default()));
    // [train, infer]: two pooled convolutions in inference only.
    let count = |v: &[&str]| v.iter().filter(|r| **r == "conv_max_pool").count();
    assert_eq!(
        with.iter().map(|v| count(v)).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert!(without.iter().all(|v| count(v) == 0));
}

/// The pooled convolution's bad inputs are refused by name: its gradient
/// (an inference kernel), and, in a module made or edited by hand, an
/// output that is not the pooled shape or a residual beside the pool.
#[test]
fn a_pooled_convolution_refuses_what_it_cannot_do() {
    use gpurt::graph::kernel::Kernel;
    use gpurt::graph::plan::{Launch, Slot};
    use gpurt::ops::{ConvParams, Op};
    use gpurt::tensor::Shape;
    // Fused before differentiating: no gradient.
    let mut g = Graph::new(true);
    let x = g.input("x", [2, 3, 9, 9], DType::F32).unwrap();
    let w = g.param("w", [8, 3, 3, 3]).unwrap();
    let y = g.conv2d(x, w, None, ConvParams::default()).unwrap();
    let y = g.act(Activation::Relu, y).unwrap();
    let y = g.max_pool2d(y, gpurt::ops::PoolParams::square(2)).unwrap();
    let loss = g.sum(y, &[0, 1, 2, 3], false).unwrap();
    g.set_output("loss", loss);
    let extras = gpurt::graph::fuse::FuseExtras {
        conv_max_pool: true,
    };
    gpurt::graph::fuse::fuse_with(&mut g, extras);
    let e = gradients(&mut g, loss, &[w]).unwrap_err().to_string();
    assert!(
        e.contains("fused max pool") || e.contains("inference kernel"),
        "{e}"
    );
    // Hand-made launches: 9x9 -> 7x7, pooled 3x3.
    let slot = |len| Slot { offset: 0, len };
    let launch = |residual: bool, out: [usize; 4]| Launch {
        op: Op::Conv2d {
            p: ConvParams::default(),
            act: None,
            residual,
            pool: true,
        },
        reads: vec![slot(486), slot(216)],
        writes: vec![slot(out.iter().product())],
        read_shapes: vec![Shape(vec![2, 3, 9, 9]), Shape(vec![8, 3, 3, 3])],
        write_shapes: vec![Shape(out.to_vec())],
        inplace: None,
    };
    assert!(Kernel::describe(&launch(false, [2, 8, 3, 3])).is_ok());
    let e = Kernel::describe(&launch(false, [2, 8, 7, 7]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max-pooled output"), "{e}");
    let mut with_residual = launch(true, [2, 8, 3, 3]);
    with_residual.reads.push(slot(144));
    with_residual.read_shapes.push(Shape(vec![2, 8, 3, 3]));
    let e = Kernel::describe(&with_residual).unwrap_err().to_string();
    assert!(e.contains("residual"), "{e}");
}

/// The pooled convolution's estimated work is the convolution's (its
/// output is pooled, not its arithmetic).
#[test]
fn a_pooled_convolution_costs_what_its_convolution_costs() {
    use gpurt::graph::cost::flops;
    use gpurt::ops::Op;
    let conv_flops = |m: &gpurt::graph::plan::Module| {
        m.programs[0]
            .launches
            .iter()
            .filter(|l| matches!(l.op, Op::Conv2d { .. }))
            .map(flops)
            .sum::<u64>()
    };
    let pooled = crate::common::pooled_conv_module();
    // 2 images, 8 output channels of 7x7, 3x3x3 taps, 2 flops each.
    assert_eq!(conv_flops(&pooled), 2 * 2 * 8 * 7 * 7 * 3 * 3 * 3);
}
