//! Batch-norm folding for inference. At inference a batch norm is a fixed
//! per-channel affine map, so when it reads a convolution (and nothing else
//! reads that convolution) it folds into the convolution's weights and
//! bias: `w' = w·s`, `b' = (b − mean)·s + β` with `s = γ/√(var + ε)`. The
//! folded model has no batch-norm launches and one fewer pass over each
//! activation.
//!
//! This works on a spec and its weights, before anything is compiled: the
//! folded spec names every layer and wires every input explicitly, so
//! dropping the batch-norm layers cannot change any other layer's
//! parameter names or inputs.

use super::build::{output_index, prefixes, wire, Source, INPUT};
use super::layer::{Layer, Node};
use super::spec::ModelSpec;
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};
use std::collections::{HashMap, HashSet};

/// A model with its batch norms folded.
pub struct Folded {
    pub spec: ModelSpec,
    pub tensors: Vec<(String, Tensor)>,
    /// How many batch norms folded.
    pub count: usize,
}

/// A spec and its weights with every foldable batch norm folded. With
/// none foldable, the inputs come back unchanged.
pub fn fold_batch_norm(spec: &ModelSpec, tensors: &[(String, Tensor)]) -> Result<Folded> {
    let unchanged = || {
        Ok(Folded {
            spec: spec.clone(),
            tensors: tensors.to_vec(),
            count: 0,
        })
    };
    let layers = &spec.layers;
    let wires = wire(layers)?;
    let prefix = prefixes(layers)?;
    let output = output_index(spec)?;
    let mut readers = vec![0usize; layers.len()];
    for w in &wires {
        for s in w {
            if let Source::Layer(j) = *s {
                readers[j] += 1;
            }
        }
    }
    // Batch norm j folds into conv i = its input when only j reads i.
    let mut into: HashMap<usize, usize> = HashMap::new();
    for (j, node) in layers.iter().enumerate() {
        if let (Layer::BatchNorm2d { .. }, [Source::Layer(i)]) = (&node.layer, &wires[j][..]) {
            let conv = matches!(layers[*i].layer, Layer::Conv2d { .. });
            if conv && readers[*i] == 1 && *i != output {
                into.insert(j, *i);
            }
        }
    }
    if into.is_empty() {
        return unchanged();
    }
    // Every layer gets a name: its own, its parameter prefix, or a fresh
    // one. A clash (a parameter-free layer named like another's prefix)
    // leaves the model unfolded rather than guessing.
    let mut names = Vec::with_capacity(layers.len());
    let mut seen = HashSet::new();
    for (i, node) in layers.iter().enumerate() {
        let name = match (&node.name, &prefix[i]) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => format!("_{}{}", node.layer.kind(), i + 1),
        };
        if !seen.insert(name.clone()) {
            return unchanged();
        }
        names.push(name);
    }
    // A folded batch norm's readers read its convolution instead.
    let resolve = |j: usize| into.get(&j).copied().unwrap_or(j);
    let source_name = |s: &Source| match *s {
        Source::Input => INPUT.to_string(),
        Source::Layer(j) => names[resolve(j)].clone(),
    };
    let weights: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let get = |name: String| -> Result<&Tensor> {
        weights
            .get(name.as_str())
            .copied()
            .ok_or_else(|| Error::Model(format!("batch-norm folding: no tensor {name}")))
    };
    let mut folded: HashMap<usize, (Tensor, Tensor)> = HashMap::new();
    for (&j, &i) in &into {
        let Layer::BatchNorm2d { eps, .. } = layers[j].layer else {
            unreachable!("only batch norms fold")
        };
        let (cp, bp) = (
            prefix[i].clone().expect("convs have a prefix"),
            prefix[j].clone().expect("batch norms have a prefix"),
        );
        let w = get(format!("{cp}.weight"))?;
        let out = w.shape.0.first().copied().unwrap_or(0);
        let per = w.data.len() / out.max(1);
        let bias = match layers[i].layer {
            Layer::Conv2d { bias: true, .. } => get(format!("{cp}.bias"))?.data.clone(),
            _ => vec![0.0; out],
        };
        let [gamma, beta, mean, var] =
            ["weight", "bias", "running_mean", "running_var"].map(|t| get(format!("{bp}.{t}")));
        let (gamma, beta, mean, var) = (gamma?, beta?, mean?, var?);
        let lens = [
            bias.len(),
            gamma.data.len(),
            beta.data.len(),
            mean.data.len(),
        ];
        if w.data.len() != out * per || lens.iter().chain([&var.data.len()]).any(|&l| l != out) {
            return Err(Error::Model(format!(
                "batch-norm folding: {cp}.weight {} does not fit {bp}'s {} channels",
                w.shape,
                gamma.data.len()
            )));
        }
        let mut wf = w.data.clone();
        let mut bf = vec![0.0f32; out];
        for o in 0..out {
            let s = gamma.data[o] as f64 / (var.data[o] as f64 + eps as f64).sqrt();
            for v in &mut wf[o * per..(o + 1) * per] {
                *v = (*v as f64 * s) as f32;
            }
            bf[o] = ((bias[o] as f64 - mean.data[o] as f64) * s + beta.data[o] as f64) as f32;
        }
        folded.insert(
            i,
            (
                Tensor {
                    shape: w.shape.clone(),
                    data: wf,
                },
                Tensor {
                    shape: Shape(vec![out]),
                    data: bf,
                },
            ),
        );
    }
    let mut out_layers = Vec::new();
    let mut out_tensors = Vec::new();
    for (i, node) in layers.iter().enumerate() {
        if into.contains_key(&i) {
            continue;
        }
        let mut layer = node.layer.clone();
        if let (Layer::Conv2d { bias, .. }, true) = (&mut layer, folded.contains_key(&i)) {
            *bias = true;
        }
        out_layers.push(Node {
            name: Some(names[i].clone()),
            inputs: wires[i].iter().map(source_name).collect(),
            layer,
        });
        if let Some(p) = &prefix[i] {
            match folded.remove(&i) {
                Some((w, b)) => {
                    out_tensors.push((format!("{p}.weight"), w));
                    out_tensors.push((format!("{p}.bias"), b));
                }
                None => {
                    let own = |n: &str| {
                        n.strip_prefix(p.as_str())
                            .and_then(|r| r.strip_prefix('.'))
                            .is_some_and(|t| {
                                matches!(t, "weight" | "bias" | "running_mean" | "running_var")
                            })
                    };
                    out_tensors.extend(tensors.iter().filter(|(n, _)| own(n)).cloned())
                }
            }
        }
    }
    let spec = ModelSpec {
        name: spec.name.clone(),
        layers: out_layers,
        output: Some(names[resolve(output)].clone()),
    };
    Ok(Folded {
        spec,
        tensors: out_tensors,
        count: into.len(),
    })
}
