//! Labelled text: loading, cleaning and the train/test split.
//!
//! Two layouts users already have are read:
//!
//! * a folder per class of `.txt` files (Keras's
//!   `text_dataset_from_directory` convention): the label is the folder name;
//! * a CSV or TSV file with a label column and a text column, named by
//!   header or given by index (the `csv` crate parses the quoting).
//!
//! Cleaning, reported in one [`CleaningReport`] line: bytes that are not
//! UTF-8 are decoded as Latin-1 (each byte one code point, so nothing is
//! lost) and counted; empty documents are dropped and counted; exact
//! duplicates (same text after trimming) are kept once. Removing them before
//! the split means two copies can never land on both sides of it.

use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a text dataset comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum TextSource {
    /// `dir/<label>/*.txt`.
    Folder(PathBuf),
    /// A delimited file: one document per row.
    Table(TableSpec),
}

/// A CSV/TSV file and which columns hold the label and the text.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    pub path: PathBuf,
    /// `b','` or `b'\t'`.
    pub delimiter: u8,
    /// Whether the first row names the columns.
    pub header: bool,
    pub label: Column,
    pub text: Column,
}

/// A column by header name or by 0-based index.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Name(String),
    Index(usize),
}

impl TableSpec {
    /// A table at `path` with defaults taken from its extension (`.tsv`:
    /// tabs, otherwise commas), a header row, and columns `label`, `text`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let tsv = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
        TableSpec {
            path,
            delimiter: if tsv { b'\t' } else { b',' },
            header: true,
            label: Column::Name("label".into()),
            text: Column::Name("text".into()),
        }
    }
}

/// One document as read, before cleaning.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDoc {
    pub text: String,
    pub label: String,
    /// Where it came from (`file` or `file:row`), for messages.
    pub origin: String,
}

/// What reading and cleaning did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleaningReport {
    pub read: usize,
    pub latin1: usize,
    pub empty: usize,
    pub duplicates: usize,
    /// Duplicates whose copies carried different labels (the first kept).
    pub conflicting: usize,
}

impl CleaningReport {
    pub fn kept(&self) -> usize {
        self.read - self.empty - self.duplicates
    }
}

impl fmt::Display for CleaningReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "cleaning: {} documents read, {} decoded as Latin-1, {} empty dropped, {} exact duplicates removed",
            self.read, self.latin1, self.empty, self.duplicates
        )?;
        if self.conflicting > 0 {
            write!(f, " ({} with a different label)", self.conflicting)?;
        }
        write!(f, ": {} kept", self.kept())
    }
}

/// Cleaned documents with labels as indices into `classes` (sorted names).
#[derive(Clone, Debug, PartialEq)]
pub struct TextDataset {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
    pub classes: Vec<String>,
    /// Where each document came from (`file` or `file:row`).
    pub origins: Vec<String>,
}

impl TextDataset {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The documents at `idx`, same classes.
    pub fn subset(&self, idx: &[usize]) -> TextDataset {
        TextDataset {
            texts: idx.iter().map(|&i| self.texts[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
            origins: idx.iter().map(|&i| self.origins[i].clone()).collect(),
        }
    }

    /// Documents per class, in class order.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

/// Decodes `bytes` as UTF-8, or as Latin-1 when they are not (returns
/// whether it fell back). A UTF-8 byte-order mark is dropped.
pub fn decode(bytes: &[u8]) -> (String, bool) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (bytes.iter().map(|&b| char::from(b)).collect(), true),
    }
}

/// Reads every document of `src`, with the Latin-1 count.
pub fn read(src: &TextSource) -> Result<(Vec<RawDoc>, usize)> {
    match src {
        TextSource::Folder(dir) => read_folder(dir),
        TextSource::Table(t) => read_table(t),
    }
}

fn io(path: &Path, error: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn format(path: &Path, detail: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// `dir/<label>/*.txt`, labels and files in name order.
fn read_folder(dir: &Path) -> Result<(Vec<RawDoc>, usize)> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| io(dir, e)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(format(
            dir,
            "no class folders (expected <dir>/<label>/*.txt)",
        ));
    }
    let (mut docs, mut latin1) = (Vec::new(), 0);
    for class in classes {
        let label = class
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class)
            .map_err(|e| io(&class, e))?
            .map(|e| e.map(|e| e.path()).map_err(|e| io(&class, e)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| io(&f, e))?;
            let (text, fell_back) = decode(&bytes);
            latin1 += usize::from(fell_back);
            docs.push(RawDoc {
                text,
                label: label.clone(),
                origin: f.display().to_string(),
            });
        }
    }
    Ok((docs, latin1))
}

/// The column index `c` names in `header` (or its index as given).
fn column_index(t: &TableSpec, c: &Column, header: Option<&csv::ByteRecord>) -> Result<usize> {
    match (c, header) {
        (Column::Index(i), _) => Ok(*i),
        (Column::Name(n), Some(h)) => {
            h.iter()
                .position(|f| decode(f).0.trim() == n)
                .ok_or_else(|| {
                    let known: Vec<String> = h.iter().map(|f| decode(f).0).collect();
                    format(
                        &t.path,
                        format!("no column named '{n}' in the header ({})", known.join(", ")),
                    )
                })
        }
        (Column::Name(n), None) => Err(format(
            &t.path,
            format!("column '{n}' named, but the file has no header row: give its index"),
        )),
    }
}

fn read_table(t: &TableSpec) -> Result<(Vec<RawDoc>, usize)> {
    let file = std::fs::File::open(&t.path).map_err(|e| io(&t.path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(t.delimiter)
        .has_headers(t.header)
        .flexible(false)
        .from_reader(std::io::BufReader::new(file));
    let header = if t.header {
        Some(rdr.byte_headers().map_err(|e| csv_error(t, e))?.clone())
    } else {
        None
    };
    let (li, ti) = (
        column_index(t, &t.label, header.as_ref())?,
        column_index(t, &t.text, header.as_ref())?,
    );
    let (mut docs, mut latin1) = (Vec::new(), 0);
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(t, e)),
        }
        let row = rec.position().map_or(0, |p| p.line());
        let field = |i: usize| {
            rec.get(i).ok_or_else(|| {
                format(
                    &t.path,
                    format!("row {row}: {} columns, no column {i}", rec.len()),
                )
            })
        };
        let (label, lf) = decode(field(li)?);
        let (text, tf) = decode(field(ti)?);
        latin1 += usize::from(lf || tf);
        docs.push(RawDoc {
            text,
            label: label.trim().to_owned(),
            origin: format!("{}:{row}", t.path.display()),
        });
    }
    Ok((docs, latin1))
}

/// A parse error with its row (the `csv` crate's own lines are 1-based).
fn csv_error(t: &TableSpec, e: csv::Error) -> Error {
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => format!(
            "row {}: {len} columns where the first row has {expected_len}",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        _ => e.to_string(),
    };
    format(&t.path, detail)
}

/// Drops empty documents and exact duplicates (first copy kept), and maps
/// labels to sorted class indices. An empty result is an error naming `what`.
pub fn clean(
    docs: Vec<RawDoc>,
    latin1: usize,
    what: &str,
) -> Result<(TextDataset, CleaningReport)> {
    let mut report = CleaningReport {
        read: docs.len(),
        latin1,
        ..Default::default()
    };
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut kept = Vec::new();
    for d in docs {
        let body = d.text.trim();
        if body.is_empty() {
            report.empty += 1;
            continue;
        }
        if d.label.is_empty() {
            return Err(Error::Usage(format!("{}: empty label", d.origin)));
        }
        if let Some(label) = seen.get(body) {
            report.duplicates += 1;
            report.conflicting += usize::from(*label != d.label);
            continue;
        }
        seen.insert(body.to_owned(), d.label.clone());
        kept.push((body.to_owned(), d.label, d.origin));
    }
    if kept.is_empty() {
        return Err(Error::Usage(format!(
            "{what}: no documents left ({report})"
        )));
    }
    let classes: Vec<String> = kept
        .iter()
        .map(|(_, l, _)| l.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let labels = kept.iter().map(|(_, l, _)| index[l.as_str()]).collect();
    let origins = kept.iter().map(|(_, _, o)| o.clone()).collect();
    let texts = kept.into_iter().map(|(t, _, _)| t).collect();
    Ok((
        TextDataset {
            texts,
            labels,
            classes,
            origins,
        },
        report,
    ))
}

/// Re-labels `test` onto `train`'s classes; a label only the test set has
/// is an error naming it.
pub fn align_classes(train: &TextDataset, test: &TextDataset) -> Result<TextDataset> {
    let unknown: Vec<&str> = test
        .classes
        .iter()
        .filter(|c| !train.classes.contains(c))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Usage(format!(
            "test labels not in the training data: {} (training has {})",
            unknown.join(", "),
            train.classes.join(", ")
        )));
    }
    let map: Vec<u32> = test
        .classes
        .iter()
        .map(|c| train.classes.iter().position(|t| t == c).expect("checked") as u32)
        .collect();
    Ok(TextDataset {
        texts: test.texts.clone(),
        labels: test.labels.iter().map(|&l| map[l as usize]).collect(),
        classes: train.classes.clone(),
        origins: test.origins.clone(),
    })
}

/// A seeded stratified split: in each class, `test_fraction` of its
/// documents (rounded, at least one when the class has two or more) go to
/// the test side. Returns (train, test) indices, each sorted.
pub fn stratified_split(
    ds: &TextDataset,
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); ds.classes.len()];
    for (i, &l) in ds.labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7465_7874_5f73_706c);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for mut members in by_class {
        members.shuffle(&mut rng);
        let n = members.len();
        let mut k = (n as f64 * test_fraction).round() as usize;
        if n >= 2 && test_fraction > 0.0 {
            k = k.clamp(1, n - 1);
        }
        test.extend_from_slice(&members[..k.min(n)]);
        train.extend_from_slice(&members[k.min(n)..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// The bundled BBC set, as its README describes it.
    #[test]
    fn bundled_bbc_news_cleans_as_documented() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bbc-news/bbc");
        let (docs, latin1) = read(&TextSource::Folder(dir)).unwrap();
        let (ds, r) = clean(docs, latin1, "bbc").unwrap();
        assert_eq!((r.read, r.latin1, r.empty, r.duplicates), (2225, 1, 0, 98));
        assert_eq!(r.kept(), 2127);
        assert_eq!(
            ds.classes,
            ["business", "entertainment", "politics", "sports", "tech"]
        );
        assert!(ds.texts.iter().any(|t| t.contains('\u{a3}')));
        let (train, test) = stratified_split(&ds, 0.2, 1);
        assert_eq!(train.len() + test.len(), 2127);
        for (all, t) in ds.counts().iter().zip(ds.subset(&test).counts()) {
            assert_eq!(t, (*all as f64 * 0.2).round() as usize);
        }
    }

    #[test]
    fn latin1_fallback_keeps_every_byte() {
        let (s, fell) = decode(b"costs \xA3100");
        assert!(fell);
        assert_eq!(s, "costs \u{a3}100");
        let (s, fell) = decode("costs £100".as_bytes());
        assert!(!fell);
        assert_eq!(s, "costs £100");
        assert_eq!(decode(b"\xEF\xBB\xBFhi").0, "hi");
    }

    #[test]
    fn folder_cleaning_counts_and_split_is_stratified() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..10 {
            write(
                t.path(),
                &format!("sport/{i:03}.txt"),
                format!("match {i}").as_bytes(),
            );
            write(
                t.path(),
                &format!("tech/{i:03}.txt"),
                format!("chip {i}").as_bytes(),
            );
        }
        write(t.path(), "sport/dup.txt", b"match 3\n");
        write(t.path(), "tech/dup.txt", b"match 3");
        write(t.path(), "tech/empty.txt", b"  \n");
        write(t.path(), "tech/pound.txt", b"\xA35 chip");
        write(t.path(), "tech/notes.md", b"ignored");
        let (docs, latin1) = read(&TextSource::Folder(t.path().into())).unwrap();
        let (ds, r) = clean(docs, latin1, "test").unwrap();
        assert_eq!(
            r,
            CleaningReport {
                read: 24,
                latin1: 1,
                empty: 1,
                duplicates: 2,
                conflicting: 1,
            }
        );
        assert_eq!(ds.classes, ["sport", "tech"]);
        assert_eq!(ds.counts(), [10, 11]);
        assert!(r.to_string().ends_with(": 21 kept"), "{r}");
        let (train, test) = stratified_split(&ds, 0.2, 7);
        assert_eq!(train.len() + test.len(), 21);
        assert_eq!(ds.subset(&test).counts(), [2, 2]);
        assert_eq!(stratified_split(&ds, 0.2, 7), (train.clone(), test.clone()));
        assert_ne!(stratified_split(&ds, 0.2, 8).1, test);
    }

    #[test]
    fn tables_by_name_and_index_and_bad_rows() {
        let t = tempfile::tempdir().unwrap();
        let csv = t.path().join("news.csv");
        std::fs::write(&csv, "id,text,label\n1,\"Hello, world\",a\n2,second,b\n").unwrap();
        let mut spec = TableSpec::new(&csv);
        let (docs, _) = read(&TextSource::Table(spec.clone())).unwrap();
        assert_eq!(docs[0].text, "Hello, world");
        assert_eq!(docs[1].label, "b");
        spec.label = Column::Name("topic".into());
        let e = read(&TextSource::Table(spec.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("news.csv") && e.contains("no column named 'topic'"),
            "{e}"
        );

        let tsv = t.path().join("news.tsv");
        std::fs::write(&tsv, "x\tone\n").unwrap();
        let mut spec = TableSpec::new(&tsv);
        spec.header = false;
        spec.label = Column::Index(0);
        spec.text = Column::Index(1);
        let (docs, _) = read(&TextSource::Table(spec)).unwrap();
        assert_eq!(
            (docs[0].label.as_str(), docs[0].text.as_str()),
            ("x", "one")
        );

        std::fs::write(&csv, "text,label\nfine,a\ntoo,many,fields\n").unwrap();
        let e = read(&TextSource::Table(TableSpec::new(&csv)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("news.csv") && e.contains("row 3"), "{e}");
    }

    #[test]
    fn empty_data_and_unknown_test_labels_are_errors() {
        let e = clean(vec![], 0, "data/x").unwrap_err().to_string();
        assert!(e.contains("data/x") && e.contains("no documents"), "{e}");
        let doc = |t: &str, l: &str| RawDoc {
            text: t.into(),
            label: l.into(),
            origin: "f".into(),
        };
        let (train, _) = clean(vec![doc("a", "x"), doc("b", "y")], 0, "train").unwrap();
        let (test, _) = clean(vec![doc("c", "y"), doc("d", "z")], 0, "test").unwrap();
        let e = align_classes(&train, &test).unwrap_err().to_string();
        assert!(e.contains("z") && !e.contains("y,"), "{e}");
        let (test, _) = clean(vec![doc("c", "y")], 0, "test").unwrap();
        assert_eq!(align_classes(&train, &test).unwrap().labels, [1]);
    }
}
