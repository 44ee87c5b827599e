//! Evaluation and prediction over a dataset with a compiled classifier.

use crate::data::{Augment, Dataset, Examples, Normalizer, Shard};
use crate::dist::{Collective, Solo};
use crate::error::Result;
use crate::metrics::ConfusionMatrix;
use crate::model::Classifier;
use std::sync::Arc;

/// Mean cross-entropy, accuracy and confusion matrix over a dataset.
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub confusion: ConfusionMatrix,
}

/// Row-wise log-sum-exp cross-entropy and argmax, in f64 on the host (the
/// logits are tiny next to the forward pass that produced them).
pub fn score_logits(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    rows: usize,
    cm: &mut ConfusionMatrix,
) -> Result<f64> {
    let mut loss = 0.0;
    for (i, row) in logits.chunks(classes).take(rows).enumerate() {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let t = labels[i] as usize;
        loss += lse - row[t] as f64;
        cm.add(t, argmax(row))?;
    }
    Ok(loss)
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Loss, accuracy and confusion matrix of `model` over an image set.
pub fn evaluate(
    model: &mut Classifier,
    data: &Arc<Dataset>,
    norm: &Normalizer,
) -> Result<Evaluation> {
    evaluate_examples(
        model,
        &Examples::Images {
            set: Arc::clone(data),
            norm: norm.clone(),
            augment: Augment::none(),
        },
    )
}

/// Loss, accuracy and confusion matrix of `model` over any examples, in
/// order, with the inference program's batch.
pub fn evaluate_examples(model: &mut Classifier, data: &Examples) -> Result<Evaluation> {
    evaluate_shard(model, data, Shard::WHOLE, &Solo)
}

/// [`evaluate_examples`] split across the ranks of a data-parallel run:
/// each scores its `shard` and the sums are combined, so every rank gets
/// the whole set's figures.
pub fn evaluate_shard(
    model: &mut Classifier,
    data: &Examples,
    shard: Shard,
    group: &dyn Collective,
) -> Result<Evaluation> {
    let classes = model.config.classes;
    let batch = model.config.infer_batch;
    let mut cm = ConfusionMatrix::new(classes);
    let mut logits = vec![0.0; batch * classes];
    let mut loss = 0.0;
    for b in data.shard_batches(batch, None, 0, false, shard)? {
        model.infer_input(&b.input(), &mut logits)?;
        loss += score_logits(&logits, &b.y, classes, b.len, &mut cm)?;
    }
    if group.world() > 1 {
        loss = sum_across(group, loss, &mut cm)?;
    }
    let n = data.len().max(1) as f64;
    Ok(Evaluation {
        loss: loss / n,
        accuracy: cm.accuracy(),
        confusion: cm,
    })
}

/// The ranks' `loss` and confusion counts summed (in f64: counts are
/// exact below 2^53). Returns the summed loss; `cm` holds the summed
/// counts.
pub fn sum_across(group: &dyn Collective, loss: f64, cm: &mut ConfusionMatrix) -> Result<f64> {
    let mut v: Vec<f64> = std::iter::once(loss)
        .chain(cm.counts.iter().map(|&c| c as f64))
        .collect();
    group.all_reduce_sum_f64(&mut v)?;
    for (c, s) in cm.counts.iter_mut().zip(&v[1..]) {
        *c = *s as u64;
    }
    Ok(v[0])
}

/// Softmax probabilities of one row, and the top `k` (class, probability).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    let mut p: Vec<(usize, f32)> = e.iter().map(|v| v / s).enumerate().collect();
    p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    p.truncate(k);
    p
}
