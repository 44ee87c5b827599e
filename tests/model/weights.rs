//! Weights files against real models: PyTorch-layout files written by the
//! test load into the matching model; save/load round-trips in every dtype;
//! each kind of bad file is a typed error naming the tensor.

use gpurt::backend::cpu::CpuBackend;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::{DType, Error};
use std::path::Path;

fn cnn(batch: Option<usize>) -> Classifier {
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![1, 28, 28],
        classes: 10,
        train_batch: batch,
        infer_batch: 2,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 3,
        fuse: true,
    };
    Classifier::new(cfg, &CpuBackend::new()).unwrap()
}

/// The CNN's PyTorch state_dict names and shapes (OIHW convs, [out, in] linears).
const PYTORCH_CNN: &[(&str, &[usize])] = &[
    ("conv1.weight", &[32, 1, 3, 3]),
    ("conv1.bias", &[32]),
    ("conv2.weight", &[64, 32, 3, 3]),
    ("conv2.bias", &[64]),
    ("conv3.weight", &[64, 64, 3, 3]),
    ("conv3.bias", &[64]),
    ("fc1.weight", &[64, 576]),
    ("fc1.bias", &[64]),
    ("fc2.weight", &[10, 64]),
    ("fc2.bias", &[10]),
];

/// Write a safetensors file by hand (header JSON + little-endian data), as
/// `safetensors.torch.save_file` lays it out, with one tensor's dtype or
/// shape optionally altered.
fn write_pytorch_file(
    path: &Path,
    skip: Option<&str>,
    bad_shape: Option<&str>,
    i64_name: Option<&str>,
) -> Vec<(String, Vec<f32>)> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut values = Vec::new();
    for (k, (name, shape)) in PYTORCH_CNN.iter().enumerate() {
        if Some(*name) == skip {
            continue;
        }
        let mut shape = shape.to_vec();
        if Some(*name) == bad_shape {
            shape.reverse();
        }
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + k * 13) % 101) as f32 / 101.0 - 0.5)
            .collect();
        let start = data.len();
        let dtype = if Some(*name) == i64_name {
            vals.iter()
                .for_each(|v| data.extend(((v * 100.0) as i64).to_le_bytes()));
            "I64"
        } else {
            vals.iter().for_each(|v| data.extend(v.to_le_bytes()));
            "F32"
        };
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
        values.push((name.to_string(), vals));
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(path, file).unwrap();
    values
}

#[test]
fn pytorch_layout_file_loads_into_the_cnn() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("torch.safetensors");
    let values = write_pytorch_file(&p, None, None, None);
    let mut m = cnn(None);
    m.load_weights(&p).unwrap();
    let got = m.model_tensors().unwrap();
    for (name, want) in values {
        let (_, t) = got.iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(t.data, want, "{name}");
    }
}

#[test]
fn save_then_load_is_identical_in_every_dtype() {
    let t = tempfile::tempdir().unwrap();
    let mut m = cnn(Some(4));
    let orig = m.model_tensors().unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let p = t.path().join(format!("m-{dtype}.safetensors"));
        m.save_weights(&p, dtype).unwrap();
        let mut m2 = cnn(None);
        m2.load_weights(&p).unwrap();
        for ((n, a), (_, b)) in orig.iter().zip(m2.model_tensors().unwrap()) {
            let want: Vec<f32> = match dtype {
                DType::F16 => a
                    .data
                    .iter()
                    .map(|v| half::f16::from_f32(*v).to_f32())
                    .collect(),
                DType::BF16 => a
                    .data
                    .iter()
                    .map(|v| half::bf16::from_f32(*v).to_f32())
                    .collect(),
                _ => a.data.clone(),
            };
            assert_eq!(b.data, want, "{n} in {dtype}");
        }
    }
}

fn load_err(f: impl Fn(&Path)) -> String {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("w.safetensors");
    f(&p);
    let mut m = cnn(None);
    let before = m.model_tensors().unwrap();
    let e = m.load_weights(&p).unwrap_err();
    // Nothing is written to the model on a failed load.
    assert_eq!(before, m.model_tensors().unwrap());
    assert!(
        matches!(e, Error::Weights { .. } | Error::Format { .. }),
        "untyped: {e:?}"
    );
    e.to_string()
}

#[test]
fn truncated_file_is_an_error_naming_the_file() {
    let e = load_err(|p| {
        write_pytorch_file(p, None, None, None);
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() - 40]).unwrap();
    });
    assert!(e.contains("w.safetensors"), "{e}");
}

#[test]
fn wrong_dtype_names_the_tensor() {
    let e = load_err(|p| {
        write_pytorch_file(p, None, None, Some("fc1.bias"));
    });
    assert!(e.contains("fc1.bias") && e.contains("I64"), "{e}");
}

#[test]
fn missing_tensor_names_the_tensor() {
    let e = load_err(|p| {
        write_pytorch_file(p, Some("conv2.weight"), None, None);
    });
    assert!(e.contains("conv2.weight") && e.contains("missing"), "{e}");
}

#[test]
fn shape_mismatch_names_tensor_and_shapes() {
    let e = load_err(|p| {
        write_pytorch_file(p, None, Some("fc1.weight"), None);
    });
    assert!(
        e.contains("fc1.weight") && e.contains("[64, 576]") && e.contains("[576, 64]"),
        "{e}"
    );
}

#[test]
fn optimiser_state_round_trips_with_step() {
    let t = tempfile::tempdir().unwrap();
    let mut m = cnn(Some(4));
    let x: Vec<f32> = (0..4 * 784)
        .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let y = [1u32, 2, 3, 4];
    for _ in 0..3 {
        m.train_step(&x, &y, 1e-3).unwrap();
    }
    let p = t.path().join("optim.safetensors");
    m.save_optim(&p).unwrap();
    let mut m2 = cnn(Some(4));
    m2.load_optim(&p).unwrap();
    assert_eq!(m2.step, 3);
    assert_eq!(m.optim_tensors().unwrap(), m2.optim_tensors().unwrap());
}
