//! Text models against PyTorch: weights written by PyTorch
//! (`tests/fixtures/text`, made by tools/make_text_fixtures.py) load under
//! their `state_dict` names into the matching gpurt specs, and the logits
//! agree with PyTorch's on padded batches; gpurt's own weights of the
//! presets save under the names PyTorch's modules use.

use gpurt::backend::cpu::CpuBackend;
use gpurt::embed::{Predictor, SharedWeights};
use gpurt::model::{Classifier, ClassifierConfig, Input};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name)
}

/// PyTorch's logits for the fixture's inputs against gpurt's, on `backend`.
fn pytorch_logits_match(model: &str) {
    let spec = ModelSpec::from_toml_file(&fixture(&format!("{model}.toml"))).unwrap();
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{model}.json"))).unwrap())
            .unwrap();
    let t = j["max_len"].as_u64().unwrap() as usize;
    let classes = j["classes"].as_u64().unwrap() as usize;
    // A JSON array of numbers, or of rows of numbers, flattened.
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        let mut out = Vec::new();
        for x in v.as_array().unwrap() {
            match x.as_array() {
                Some(row) => out.extend(row.iter().map(|y| y.as_f64().unwrap())),
                None => out.push(x.as_f64().unwrap()),
            }
        }
        out
    };
    let ids: Vec<u32> = flat(&j["ids"]).into_iter().map(|v| v as u32).collect();
    let lengths: Vec<u32> = flat(&j["lengths"]).into_iter().map(|v| v as u32).collect();
    let want: Vec<f32> = flat(&j["logits"]).into_iter().map(|v| v as f32).collect();
    let w = SharedWeights::from_file(
        spec,
        vec![t],
        classes,
        &fixture(&format!("{model}.safetensors")),
    )
    .unwrap_or_else(|e| panic!("{model}: {e}"));
    let mut p = Predictor::new(&w, lengths.len(), &CpuBackend::new()).unwrap();
    let got = p
        .run_input(&Input::Tokens {
            ids: &ids,
            lengths: &lengths,
        })
        .unwrap()
        .to_vec();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-5,
        "{model}: logits differ by {worst:e}\n got  {got:?}\n want {want:?}"
    );
}

#[test]
fn pytorch_fasttext_weights_give_pytorch_logits() {
    pytorch_logits_match("fasttext");
}

#[test]
fn pytorch_transformer_weights_give_pytorch_logits() {
    pytorch_logits_match("transformer");
}

/// The presets' parameters carry the names of PyTorch's modules.
#[test]
fn presets_use_pytorch_state_dict_names() {
    let names = |spec: ModelSpec| -> Vec<String> {
        let cfg = ClassifierConfig {
            spec: spec.with_vocab(100),
            input: vec![16],
            classes: 5,
            train_batch: None,
            infer_batch: 1,
            optim: OptimConfig::new(OptimizerKind::AdamW),
            seed: 0,
            fuse: true,
        };
        let c = Classifier::new(cfg, &CpuBackend::new()).unwrap();
        c.decls()
            .iter()
            .map(|d| format!("{} {}", d.name, d.shape))
            .collect()
    };
    assert_eq!(
        names(ModelSpec::fasttext(5)),
        [
            "embedding.weight [100, 64]",
            "fc.weight [5, 64]",
            "fc.bias [5]"
        ]
    );
    let t = names(ModelSpec::transformer(5));
    for want in [
        "embedding.weight [100, 128]",
        "pos_embedding.weight [16, 128]",
        "encoder.layers.0.self_attn.in_proj_weight [384, 128]",
        "encoder.layers.0.self_attn.in_proj_bias [384]",
        "encoder.layers.0.self_attn.out_proj.weight [128, 128]",
        "encoder.layers.1.linear1.weight [512, 128]",
        "encoder.layers.1.linear2.bias [128]",
        "encoder.layers.1.norm2.weight [128]",
        "encoder.norm.bias [128]",
        "fc.weight [5, 128]",
    ] {
        assert!(t.iter().any(|n| n == want), "{want} not in {t:?}");
    }
    assert_eq!(t.len(), 2 + 2 * 12 + 2 + 2);
}
