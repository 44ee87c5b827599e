//! What a run trains, validates and tests on: images (MNIST, CIFAR-10)
//! or text (a folder per class or a CSV/TSV), read, cleaned, split and
//! made into [`Examples`] before the model is built.

use super::options::{TextOptions, TrainOptions};
use crate::checkpoint::{Checkpoint, TextRun, SPLIT, TOKENIZER};
use crate::data::sequences::TokenizedSet;
use crate::data::text::{self, Column, TableSpec, TextDataset, TextSource};
use crate::data::tokenize::TextTokenizer;
use crate::data::{DataSpec, Examples, Normalizer, Split};
use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// A run's data, whatever its kind.
pub(super) struct RunData {
    pub train: Examples,
    pub val: Examples,
    pub test: Examples,
    /// One example's shape: `[C, H, W]`, or `[T]` for text.
    pub input: Vec<usize>,
    pub classes: usize,
    /// Images: the normaliser fitted on the training split.
    pub norm: Option<Normalizer>,
    /// Text: what the checkpoint records, and the files the run folder
    /// gets (written once the folder is locked).
    pub text: Option<TextData>,
    /// "images" or "documents", for messages.
    pub unit: &'static str,
}

pub(super) struct TextData {
    pub run: TextRun,
    pub tokenizer: TextTokenizer,
    /// `split.json`'s contents.
    pub split: serde_json::Value,
}

impl RunData {
    /// Writes a text run's tokenizer and split into `out` (atomically).
    pub fn write_files(&self, out: &Path) -> Result<()> {
        let Some(t) = &self.text else { return Ok(()) };
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        t.tokenizer.save(&out.join(TOKENIZER))?;
        let json = serde_json::to_vec_pretty(&t.split).map_err(|e| Error::Usage(e.to_string()))?;
        crate::weights::write_atomic(&out.join(SPLIT), &json)
    }
}

/// Reads the data `o` names; a resumed text run reuses its tokenizer.
pub(super) fn load(
    o: &TrainOptions,
    resume: Option<(&Checkpoint, &Path)>,
    log: &mut dyn FnMut(&str),
) -> Result<RunData> {
    match &o.data {
        DataSpec::Text(path) => load_text(o, path, resume, log),
        _ => load_images(o),
    }
}

fn load_images(o: &TrainOptions) -> Result<RunData> {
    let mut full = o.data.load(Split::Train)?;
    if let Some(n) = o.limit {
        full = full.subset(n.min(full.len()));
    }
    let test = Arc::new(o.data.load(Split::Test)?);
    let input = vec![full.channels, full.height, full.width];
    if [test.channels, test.height, test.width] != input[..] {
        return Err(Error::Usage(format!(
            "{}: test images are {}x{}x{} but training images are {}x{}x{}",
            o.data, test.channels, test.height, test.width, input[0], input[1], input[2]
        )));
    }
    o.augment.check(input[1], input[2])?;
    let (train_set, val_set) = full.split_validation(o.val_split, o.seed)?;
    let norm = Normalizer::fit(&train_set);
    let classes = train_set.num_classes();
    let images = |set, augment| Examples::Images {
        set: Arc::new(set),
        norm: norm.clone(),
        augment,
    };
    Ok(RunData {
        train: images(train_set, o.augment),
        val: images(val_set, crate::data::Augment::none()),
        test: Examples::Images {
            set: test,
            norm: norm.clone(),
            augment: crate::data::Augment::none(),
        },
        input,
        classes,
        norm: Some(norm),
        text: None,
        unit: "images",
    })
}

/// A folder per class, or a CSV/TSV file with the columns the options name.
pub fn text_source(path: &Path, t: &TextOptions) -> TextSource {
    if path.is_dir() {
        return TextSource::Folder(path.to_path_buf());
    }
    let mut spec = TableSpec::new(path);
    spec.header = !t.no_header;
    let column = |given: &Option<String>, default_name: &str, default_index: usize| match given {
        Some(c) => match c.parse::<usize>() {
            Ok(i) => Column::Index(i),
            Err(_) => Column::Name(c.clone()),
        },
        None if t.no_header => Column::Index(default_index),
        None => Column::Name(default_name.into()),
    };
    spec.label = column(&t.label_column, "label", 0);
    spec.text = column(&t.text_column, "text", 1);
    TextSource::Table(spec)
}

/// Reads and cleans one text source, naming it in errors.
fn read_clean(path: &Path, t: &TextOptions) -> Result<(TextDataset, text::CleaningReport)> {
    let (docs, latin1) = text::read(&text_source(path, t))?;
    text::clean(docs, latin1, &path.display().to_string())
}

fn load_text(
    o: &TrainOptions,
    path: &Path,
    resume: Option<(&Checkpoint, &Path)>,
    log: &mut dyn FnMut(&str),
) -> Result<RunData> {
    let t = &o.text;
    let (full, report) = read_clean(path, t)?;
    log(&format!("{}: {report}", path.display()));
    let (train, test) = match &t.test_data {
        Some(tp) => {
            let (test, test_report) = read_clean(tp, t)?;
            log(&format!("{}: {test_report}", tp.display()));
            let test = text::align_classes(&full, &test)?;
            // A document in both sets would be tested on what was trained.
            let seen: std::collections::HashSet<&str> =
                full.texts.iter().map(String::as_str).collect();
            let keep: Vec<usize> = (0..test.len())
                .filter(|&i| !seen.contains(test.texts[i].as_str()))
                .collect();
            if keep.len() < test.len() {
                log(&format!(
                    "{} test documents also in the training data dropped",
                    test.len() - keep.len()
                ));
            }
            (full.clone(), test.subset(&keep))
        }
        None => {
            let (tr, te) = text::stratified_split(&full, t.test_split, o.seed);
            (full.subset(&tr), full.subset(&te))
        }
    };
    let mut train = train;
    if let Some(n) = o.limit.filter(|&n| n < train.len()) {
        // A stratified sample, so every class stays in a short run.
        let (_, keep) = text::stratified_split(&train, n as f64 / train.len() as f64, o.seed);
        train = train.subset(&keep);
    }
    let (tr, va) = match o.val_split > 0.0 {
        true => text::stratified_split(&train, f64::from(o.val_split), o.seed ^ 0x76616c),
        false => ((0..train.len()).collect(), Vec::new()),
    };
    let (train, val) = (train.subset(&tr), train.subset(&va));
    if test.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no test documents (use --test-split above 0 or --test-data)",
            path.display()
        )));
    }
    let tokenizer = match resume {
        Some((ck, dir)) => {
            let settings = ck
                .text
                .as_ref()
                .ok_or_else(|| {
                    Error::Usage(format!("{}: the run is not a text run", dir.display()))
                })?
                .tokenizer
                .clone();
            TextTokenizer::load(&dir.join(TOKENIZER), settings)?
        }
        None => TextTokenizer::train(&train.texts, &t.tokenizer)?,
    };
    let encode = |ds: &TextDataset| TokenizedSet::encode(ds, &tokenizer).map(Arc::new);
    let (train_ids, val_ids, test_ids) = (encode(&train)?, encode(&val)?, encode(&test)?);
    log(&format!(
        "split (seed {}): {} train / {} val / {} test documents, classes {}; vocabulary {} tokens, {:.0} tokens per training document (max {})",
        o.seed,
        train.len(),
        val.len(),
        test.len(),
        train
            .classes
            .iter()
            .zip(train.counts())
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        tokenizer.vocab_size(),
        train_ids.mean_len(),
        tokenizer.settings.max_len
    ));
    let docs = |ds: &TextDataset, with_text: bool| -> Vec<serde_json::Value> {
        (0..ds.len())
            .map(|i| {
                let mut v = serde_json::json!({ "origin": ds.origins[i], "label": ds.labels[i] });
                if with_text {
                    v["text"] = ds.texts[i].clone().into();
                }
                v
            })
            .collect()
    };
    let split = serde_json::json!({
        "seed": o.seed,
        "max_len": tokenizer.settings.max_len,
        "classes": train.classes,
        "train": docs(&train, false),
        "val": docs(&val, false),
        "test": docs(&test, true),
    });
    let run = TextRun {
        classes: train.classes.clone(),
        tokenizer: tokenizer.settings.clone(),
    };
    Ok(RunData {
        train: Examples::Text(train_ids),
        val: Examples::Text(val_ids),
        test: Examples::Text(test_ids),
        input: vec![tokenizer.settings.max_len],
        classes: train.classes.len(),
        norm: None,
        text: Some(TextData {
            run,
            tokenizer,
            split,
        }),
        unit: "documents",
    })
}
