//! `gpurt eval` and `gpurt predict` for text runs: the run's tokenizer,
//! class names and test documents (`split.json`), or new labelled text.

use anyhow::{bail, Context, Result};
use gpurt::backend::DeviceSpec;
use gpurt::checkpoint::{Checkpoint, SPLIT};
use gpurt::cli::{EvalArgs, PredictArgs};
use gpurt::data::sequences::TokenizedSet;
use gpurt::data::text::{self, TextDataset};
use gpurt::data::{DataSpec, Examples};
use gpurt::embed::TextPredictor;
use gpurt::eval::{evaluate_examples, top_k};
use gpurt::model::Classifier;
use gpurt::train::{self, TextOptions};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

/// The test documents `split.json` recorded.
fn split_test(run: &Path, classes: &[String]) -> Result<TextDataset> {
    let path = run.join(SPLIT);
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))?;
    let bad = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    let test = v["test"]
        .as_array()
        .ok_or_else(|| bad("no \"test\" list"))?;
    let mut ds = TextDataset {
        texts: Vec::new(),
        labels: Vec::new(),
        classes: classes.to_vec(),
        origins: Vec::new(),
    };
    for (i, d) in test.iter().enumerate() {
        let text = d["text"]
            .as_str()
            .ok_or_else(|| bad(&format!("test entry {i} has no text")))?;
        let label = d["label"]
            .as_u64()
            .filter(|&l| (l as usize) < classes.len())
            .ok_or_else(|| {
                bad(&format!(
                    "test entry {i} has no label below {}",
                    classes.len()
                ))
            })?;
        ds.texts.push(text.to_owned());
        ds.labels.push(label as u32);
        ds.origins
            .push(d["origin"].as_str().unwrap_or("").to_owned());
    }
    Ok(ds)
}

pub fn eval(a: &EvalArgs, model: &mut Classifier, ck: &Checkpoint) -> Result<()> {
    let names = &ck.text.as_ref().expect("a text run").classes;
    let tok = train::load_tokenizer(&a.run, ck)?;
    let (ds, what) = match &a.data {
        None => (split_test(&a.run, names)?, "its test split".to_string()),
        Some(d) => {
            let DataSpec::Text(path) = d.parse::<DataSpec>()? else {
                bail!("{d}: the run is a text model; evaluate it on text:DIR or text:FILE.csv");
            };
            let opts = TextOptions {
                label_column: a.label_column.clone(),
                text_column: a.text_column.clone(),
                no_header: a.no_header,
                ..Default::default()
            };
            let (docs, latin1) = text::read(&train::text_source(&path, &opts))?;
            let (ds, report) = text::clean(docs, latin1, &path.display().to_string())?;
            eprintln!("{}: {report}", path.display());
            let run_classes = TextDataset {
                texts: vec![],
                labels: vec![],
                classes: names.clone(),
                origins: vec![],
            };
            (text::align_classes(&run_classes, &ds)?, d.clone())
        }
    };
    let set = TokenizedSet::encode(&ds, &tok)?;
    let e = evaluate_examples(model, &Examples::Text(Arc::new(set)))?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let report = e.confusion.report().named(Some(&refs));
    if a.json {
        let v = serde_json::json!({ "run": a.run, "data": what, "loss": e.loss, "report": report });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} on {what} ({} documents): loss {:.4}, accuracy {:.2}%",
            a.run.display(),
            ds.len(),
            e.loss,
            e.accuracy * 100.0
        );
        println!("{report}");
    }
    Ok(())
}

/// Each file is one document; `-` reads one document per line of stdin.
pub fn predict(a: &PredictArgs, device: &DeviceSpec) -> Result<()> {
    const BATCH: usize = 32;
    let mut p = TextPredictor::from_run(&a.run, BATCH, device)?;
    let classes = p.classes().to_vec();
    let mut out = Vec::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut flush = |p: &mut TextPredictor, pending: &mut Vec<(String, String)>| -> Result<()> {
        let texts: Vec<&str> = pending.iter().map(|(_, t)| t.as_str()).collect();
        let logits = p.run(&texts)?.to_vec();
        for (i, (name, _)) in pending.iter().enumerate() {
            let row = &logits[i * classes.len()..(i + 1) * classes.len()];
            let top = top_k(row, a.top_k.max(1));
            if a.json {
                out.push(serde_json::json!({
                    "input": name,
                    "class": top[0].0,
                    "name": classes[top[0].0],
                    "top": top.iter().map(|(k, pr)| serde_json::json!({"class": k, "name": classes[*k], "probability": pr})).collect::<Vec<_>>(),
                }));
            } else {
                let rest: Vec<String> = top
                    .iter()
                    .map(|(k, pr)| format!("{}: {:.2}%", classes[*k], pr * 100.0))
                    .collect();
                println!("{name}: {} ({})", classes[top[0].0], rest.join(", "));
            }
        }
        pending.clear();
        Ok(())
    };
    for input in &a.inputs {
        if input.as_os_str() == "-" {
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.context("reading standard input")?;
                if line.trim().is_empty() {
                    continue;
                }
                pending.push((format!("stdin:{}", i + 1), line));
                if pending.len() == BATCH {
                    flush(&mut p, &mut pending)?;
                }
            }
        } else {
            let bytes = std::fs::read(input).with_context(|| input.display().to_string())?;
            let (doc, _) = text::decode(&bytes);
            pending.push((input.display().to_string(), doc));
            if pending.len() == BATCH {
                flush(&mut p, &mut pending)?;
            }
        }
    }
    if !pending.is_empty() {
        flush(&mut p, &mut pending)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
