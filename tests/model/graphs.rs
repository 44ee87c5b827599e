//! Model graphs: layers wired by name. Branches that add or concatenate
//! reproduce the one-convolution model they are algebraically equal to;
//! bad wiring is refused with the layers named; the ResNet presets carry
//! torchvision's names and sizes.

use gpurt::backend::cpu::CpuBackend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use rand::{Rng, SeedableRng};

fn classifier(spec: ModelSpec, input: Vec<usize>, batch: usize) -> Classifier {
    let cfg = ClassifierConfig {
        spec,
        input,
        classes: 10,
        train_batch: None,
        infer_batch: batch,
        optim: OptimConfig::new(OptimizerKind::Sgd),
        seed: 5,
        fuse: true,
    };
    Classifier::new(cfg, &CpuBackend::new()).unwrap()
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

fn tensor(c: &mut Classifier, name: &str) -> Vec<f32> {
    let all = c.model_tensors().unwrap();
    all.into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .1
        .data
}

fn logits(c: &mut Classifier, x: &[f32], batch: usize) -> Vec<f32> {
    let mut out = vec![0.0; batch * 10];
    c.infer(x, &mut out).unwrap();
    out
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

const BRANCHES: &str = r#"
name = "two-branches"
[[layer]]
type = "conv2d"
name = "a"
inputs = ["input"]
filters = 4
kernel = 3
padding = 1
[[layer]]
type = "conv2d"
name = "b"
inputs = ["input"]
filters = 4
kernel = 3
padding = 1
bias = false
[[layer]]
type = "JOIN"
name = "join"
inputs = ["a", "b"]
[[layer]]
type = "relu"
[[layer]]
type = "flatten"
[[layer]]
type = "dense"
name = "head"
units = 10
"#;

/// The one-convolution model the branch models equal: conv `name`
/// (3x3, padding 1), relu, flatten, dense `head`.
fn one_conv(name: &str, filters: usize, bias: bool) -> ModelSpec {
    ModelSpec::from_toml(&format!(
        "[[layer]]\ntype = \"conv2d\"\nname = \"{name}\"\nfilters = {filters}\nkernel = 3\n\
         padding = 1\nbias = {bias}\n[[layer]]\ntype = \"relu\"\n[[layer]]\ntype = \"flatten\"\n\
         [[layer]]\ntype = \"dense\"\nname = \"head\"\nunits = 10\n"
    ))
    .unwrap()
}

/// `conv_a(x) + conv_b(x)` is one convolution with the summed weights.
#[test]
fn add_of_two_branches_equals_one_conv_with_summed_weights() {
    let spec = ModelSpec::from_toml(&BRANCHES.replace("JOIN", "add")).unwrap();
    let (batch, input) = (3, vec![2, 7, 5]);
    let mut graph = classifier(spec, input.clone(), batch);
    let seq = one_conv("a", 4, true);
    let mut one = classifier(seq, input, batch);
    let wa = tensor(&mut graph, "a.weight");
    let wb = tensor(&mut graph, "b.weight");
    let sum: Vec<f32> = wa.iter().zip(&wb).map(|(a, b)| a + b).collect();
    let s = one.session_mut();
    s.write_persistent("a.weight", &sum).unwrap();
    for name in ["a.bias", "head.weight", "head.bias"] {
        let v = tensor(&mut graph, name);
        one.session_mut().write_persistent(name, &v).unwrap();
    }
    let x = random(batch * 2 * 7 * 5, 1);
    let (g, o) = (logits(&mut graph, &x, batch), logits(&mut one, &x, batch));
    assert!(g.iter().any(|v| v.abs() > 1e-3));
    assert_close("add branches vs summed conv", &g, &o, 1e-5);
}

/// `concat(conv_a(x), conv_b(x))` on channels is one convolution with the
/// filters stacked.
#[test]
fn concat_of_two_branches_equals_one_conv_with_stacked_filters() {
    let spec = ModelSpec::from_toml(&BRANCHES.replace("JOIN", "concat")).unwrap();
    let (batch, input) = (2, vec![3, 6, 9]);
    let mut graph = classifier(spec, input.clone(), batch);
    let seq = one_conv("ab", 8, false);
    let mut one = classifier(seq, input, batch);
    // Branch b has no bias: a's bias goes in by zeroing it (the stacked
    // conv has none).
    let zeros = vec![0.0; 4];
    graph
        .session_mut()
        .write_persistent("a.bias", &zeros)
        .unwrap();
    let mut stacked = tensor(&mut graph, "a.weight");
    stacked.extend(tensor(&mut graph, "b.weight"));
    one.session_mut()
        .write_persistent("ab.weight", &stacked)
        .unwrap();
    for name in ["head.weight", "head.bias"] {
        let v = tensor(&mut graph, name);
        one.session_mut().write_persistent(name, &v).unwrap();
    }
    let x = random(batch * 3 * 6 * 9, 2);
    let (g, o) = (logits(&mut graph, &x, batch), logits(&mut one, &x, batch));
    assert!(g.iter().any(|v| v.abs() > 1e-3));
    assert_close("concat branches vs stacked conv", &g, &o, 1e-5);
}

/// The error a spec gets when built for a 1x8x8 input.
fn refused(text: &str) -> String {
    let e = match ModelSpec::from_toml(text) {
        Err(e) => e,
        Ok(spec) => spec
            .declare(&[1, 8, 8])
            .expect_err("the spec should be refused"),
    };
    e.to_string()
}

fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "'{n}' not in: {text}");
    }
    assert!(!text.contains('\n'), "one line expected: {text}");
}

#[test]
fn a_cycle_is_refused_naming_its_layers() {
    let e = refused(
        r#"
[[layer]]
type = "conv2d"
name = "a"
inputs = ["c"]
filters = 2
kernel = 1
[[layer]]
type = "relu"
name = "b"
[[layer]]
type = "conv2d"
name = "c"
filters = 2
kernel = 1
"#,
    );
    assert_mentions(
        &e,
        &[
            "cycle",
            "layer 3 'c' (conv2d) -> layer 1 'a' (conv2d) -> layer 2 'b' (relu) -> layer 3 'c'",
        ],
    );
    let e = refused("[[layer]]\ntype = \"relu\"\nname = \"r\"\ninputs = [\"r\"]\n");
    assert_mentions(&e, &["cycle", "layer 1 'r' (relu) -> layer 1 'r' (relu)"]);
}

#[test]
fn a_dangling_input_name_is_refused() {
    let e = refused(
        "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"add\"\nname = \"sum\"\ninputs = [\"flatten\", \"input\"]\n",
    );
    assert_mentions(
        &e,
        &["layer 2 'sum' (add)", "input 'flatten' names no layer"],
    );
}

#[test]
fn mismatched_shapes_at_an_add_are_refused_naming_both_sides() {
    let e = refused(
        r#"
[[layer]]
type = "conv2d"
name = "down"
filters = 4
kernel = 3
stride = 2
[[layer]]
type = "add"
name = "skip"
inputs = ["down", "input"]
"#,
    );
    assert_mentions(
        &e,
        &[
            "layer 2 'skip' (add)",
            "layer 1 'down' (conv2d) gives [1, 4, 3, 3]",
            "'input' gives [1, 1, 8, 8]",
        ],
    );
    let e = refused(
        r#"
[[layer]]
type = "avg_pool2d"
name = "half"
[[layer]]
type = "concat"
name = "cat"
inputs = ["input", "half"]
"#,
    );
    assert_mentions(&e, &["layer 2 'cat' (concat)", "channels", "[1, 1, 4, 4]"]);
}

#[test]
fn other_wiring_mistakes_are_refused() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[[layer]]\ntype = \"relu\"\nname = \"r\"\n[[layer]]\ntype = \"tanh\"\nname = \"r\"\n",
            &["layer 2 'r' (tanh)", "already used by layer 1 'r' (relu)"],
        ),
        (
            "[[layer]]\ntype = \"add\"\n",
            &["layer 1 (add)", "needs `inputs", "at least 2"],
        ),
        (
            "[[layer]]\ntype = \"add\"\ninputs = [\"input\"]\n",
            &["layer 1 (add)", "at least 2 inputs, got 1"],
        ),
        (
            "[[layer]]\ntype = \"relu\"\ninputs = [\"input\", \"input\"]\n",
            &["layer 1 (relu)", "takes one input, got 2"],
        ),
        (
            "[[layer]]\ntype = \"relu\"\nname = \"input\"\n",
            &["layer 1 'input' (relu)", "not 'input'"],
        ),
        (
            "[[layer]]\ntype = \"relu\"\nname = \"side\"\n[[layer]]\ntype = \"flatten\"\ninputs = [\"input\"]\n[[layer]]\ntype = \"dense\"\nunits = 10\n",
            &["layer 1 'side' (relu)", "does not lead to the output", "layer 3 (dense)"],
        ),
        (
            "output = \"nope\"\n[[layer]]\ntype = \"flatten\"\n",
            &["output 'nope' names no layer"],
        ),
        (
            "[[layer]]\ntype = \"conv2d\"\nfilters = 1\nkernel = 1\n[[layer]]\ntype = \"conv2d\"\nname = \"conv1\"\nfilters = 1\nkernel = 1\n",
            &["layer 2 'conv1' (conv2d)", "'conv1.*' clash", "layer 1 (conv2d)"],
        ),
        (
            "[[layer]]\ntype = \"relu\"\nname = \"has space\"\n",
            &["layer 1 'has space' (relu)", "letters, digits"],
        ),
    ];
    for (text, needles) in cases {
        assert_mentions(&refused(text), needles);
    }
}

/// `output` picks the model's output; layers after it are allowed when
/// they feed it.
#[test]
fn output_names_the_model_output() {
    let spec = ModelSpec::from_toml(
        r#"
output = "logits"
[[layer]]
type = "dense"
name = "logits"
inputs = ["flat"]
units = 10
[[layer]]
type = "flatten"
name = "flat"
inputs = ["input"]
"#,
    )
    .unwrap();
    let d = spec.declare(&[1, 4, 4]).unwrap();
    let names: Vec<&str> = d.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["logits.weight", "logits.bias"]);
    assert_eq!(d[0].shape.0, [10, 16]);
}

/// ResNet-6n+2: torchvision's names, 6n+1 3x3 convs plus two 1x1
/// projections, and the parameter count the architecture gives.
#[test]
fn resnet_presets_have_torchvision_names_and_sizes() {
    for (depth, n) in [(20, 3), (32, 5), (56, 9)] {
        let spec = ModelSpec::preset(&format!("resnet{depth}"), 10).unwrap();
        let d = spec.declare(&[1, 28, 28]).unwrap();
        let get = |name: &str| {
            d.iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("resnet{depth}: no {name}"))
                .shape
                .0
                .clone()
        };
        assert_eq!(get("conv1.weight"), [16, 1, 3, 3]);
        assert_eq!(get("bn1.running_var"), [16]);
        assert_eq!(get("layer1.0.conv1.weight"), [16, 16, 3, 3]);
        assert_eq!(get(&format!("layer1.{}.bn2.bias", n - 1)), [16]);
        assert_eq!(get("layer2.0.conv1.weight"), [32, 16, 3, 3]);
        assert_eq!(get("layer2.0.downsample.0.weight"), [32, 16, 1, 1]);
        assert_eq!(get("layer2.0.downsample.1.running_mean"), [32]);
        assert_eq!(get("layer3.0.downsample.0.weight"), [64, 32, 1, 1]);
        assert_eq!(
            get(&format!("layer3.{}.conv2.weight", n - 1)),
            [64, 64, 3, 3]
        );
        assert_eq!(get("fc.weight"), [10, 64]);
        assert_eq!(get("fc.bias"), [10]);
        let convs = d
            .iter()
            .filter(|p| p.name.ends_with("conv1.weight") || p.name.ends_with("conv2.weight"))
            .count();
        assert_eq!(convs, 6 * n + 1, "resnet{depth}");
        assert!(d
            .iter()
            .all(|p| !p.name.contains("conv") || !p.name.ends_with(".bias")));
        // Weights: 3x3 convs per stage, projections, dense; plus 2 learnable
        // values per batch-norm channel (running statistics are state).
        let convs3: usize = 16 * 9
            + (2 * n * 16 * 16 * 9)
            + (32 * 16 * 9 + (2 * n - 1) * 32 * 32 * 9)
            + (64 * 32 * 9 + (2 * n - 1) * 64 * 64 * 9);
        let proj = 32 * 16 + 64 * 32;
        let bn_channels = 16 + 2 * n * (16 + 32 + 64) + 32 + 64;
        let want = convs3 + proj + 2 * bn_channels + 64 * 10 + 10;
        let learnable: usize = d
            .iter()
            .filter(|p| !p.name.contains("running_"))
            .map(|p| p.shape.numel())
            .sum();
        assert_eq!(learnable, want, "resnet{depth}");
    }
    assert!(ModelSpec::preset("resnet21", 10).is_none());
}

/// Batch norm folded into the convolutions (the embedding API's
/// predictor) gives the unfolded model's logits, with no batch-norm
/// launches left; batch norms that do not read a convolution stay.
#[test]
fn batch_norm_folding_matches_the_unfolded_model() {
    use gpurt::embed::{Predictor, SharedWeights};
    use gpurt::inspect::PlanReport;
    let cases = [
        (ModelSpec::resnet(8, 10), vec![1, 9, 11], 0),
        (
            ModelSpec::from_toml(
                r#"
[[layer]]
type = "conv2d"
name = "c"
filters = 3
kernel = 3
[[layer]]
type = "batch_norm2d"
name = "after_conv"
[[layer]]
type = "relu"
[[layer]]
type = "batch_norm2d"
name = "after_relu"
[[layer]]
type = "conv2d"
name = "shared"
filters = 3
kernel = 1
[[layer]]
type = "batch_norm2d"
name = "b"
[[layer]]
type = "add"
inputs = ["b", "shared"]
[[layer]]
type = "flatten"
[[layer]]
type = "dense"
units = 10
"#,
            )
            .unwrap(),
            vec![2, 6, 5],
            2,
        ),
    ];
    for (spec, input, kept) in cases {
        let batch = 3;
        let mut model = classifier(spec.clone(), input.clone(), batch);
        // Running statistics and affine parameters far from 0/1, so a
        // wrong fold shows.
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (name, t) in model.model_tensors().unwrap() {
            let v: Vec<f32> = (0..t.data.len())
                .map(|_| match name.rsplit('.').next().unwrap() {
                    "running_var" => r.random_range(0.2..3.0),
                    "running_mean" | "bias" => r.random_range(-1.0..1.0),
                    "weight" if t.shape.rank() == 1 => r.random_range(0.5..2.0),
                    _ => t.data[0] * 0.0 + r.random_range(-0.5..0.5),
                })
                .collect();
            model.session_mut().write_persistent(&name, &v).unwrap();
        }
        let n: usize = input.iter().product();
        let x = random(batch * n, 4);
        let want = logits(&mut model, &x, batch);
        let weights = SharedWeights::from_model(&mut model).unwrap();
        let mut p = Predictor::new(&weights, batch, &CpuBackend::new()).unwrap();
        let got = p.run(&x).unwrap().to_vec();
        assert!(want.iter().any(|v| v.abs() > 1e-2), "{}", spec.name);
        assert_close(&format!("{} folded", spec.name), &got, &want, 1e-5);

        let cfg = ClassifierConfig {
            spec: spec.clone(),
            input,
            classes: 10,
            train_batch: Some(2),
            infer_batch: 1,
            optim: OptimConfig::new(OptimizerKind::Sgd),
            seed: 0,
            fuse: true,
        };
        let plan = PlanReport::new(&cfg).unwrap();
        let bn = |ks: &[&str]| ks.iter().filter(|k| k.starts_with("batchnorm2d")).count();
        let total_bn = spec
            .layers
            .iter()
            .filter(|l| l.layer.kind() == "batch_norm2d")
            .count();
        assert_eq!(bn(&plan.infer), total_bn, "{}", spec.name);
        assert_eq!(bn(&plan.infer_folded), kept, "{}", spec.name);
        assert_eq!(plan.folded, total_bn - kept);
        // A folded batch norm's launch goes, and a relu after it can then
        // fuse into the convolution's epilogue.
        assert!(
            plan.infer.len() - plan.infer_folded.len() >= total_bn - kept,
            "{}: {:?} folded to {:?}",
            spec.name,
            plan.infer,
            plan.infer_folded
        );
    }
}

/// Folding refuses weights that do not fit the spec (a public function:
/// `SharedWeights` fields are public) instead of indexing out of bounds.
#[test]
fn batch_norm_folding_refuses_tensors_that_do_not_fit() {
    use gpurt::nn::fold::fold_batch_norm;
    let spec = ModelSpec::resnet(8, 10);
    let decls = spec.declare(&[1, 8, 8]).unwrap();
    let mut tensors = gpurt::nn::init::init_params(&decls, 1);
    let bad = tensors
        .iter_mut()
        .find(|(n, _)| n == "bn1.running_var")
        .unwrap();
    bad.1.data.pop();
    let e = fold_batch_norm(&spec, &tensors).err().expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("conv1.weight") && text.contains("bn1"),
        "{text}"
    );
}
