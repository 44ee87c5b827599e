//! Classification metrics (confusion matrix, per-class precision, recall and
//! F1, macro averages) and the per-epoch training log written as CSV and
//! JSON.
//!
//! Undefined ratios (a class never predicted, or never present) count as 0,
//! matching scikit-learn's `zero_division=0`, so the numbers can be compared
//! with a PyTorch/sklearn reference run directly.

use crate::error::{Error, Result};
use crate::weights::write_atomic;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    pub classes: usize,
    /// Row-major `classes x classes`: row = true class, column = predicted.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> Self {
        ConfusionMatrix {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Record one prediction. A class index out of range is a caller bug
    /// (e.g. a label file with more classes than the model) and is reported
    /// rather than silently dropped.
    pub fn add(&mut self, truth: usize, pred: usize) -> Result<()> {
        if truth >= self.classes || pred >= self.classes {
            return Err(Error::Usage(format!(
                "confusion matrix: class out of range (truth {truth}, predicted {pred}, \
                 {} classes)",
                self.classes
            )));
        }
        self.counts[truth * self.classes + pred] += 1;
        Ok(())
    }

    /// Number of samples with true class `truth` predicted as `pred`; 0 out of range.
    pub fn get(&self, truth: usize, pred: usize) -> u64 {
        if truth >= self.classes || pred >= self.classes {
            return 0;
        }
        self.counts[truth * self.classes + pred]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of samples on the diagonal; 0 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.classes).map(|c| self.get(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Of the samples predicted as `c`, the fraction that truly are `c`.
    pub fn precision(&self, c: usize) -> f64 {
        ratio(self.get(c, c), self.predicted(c))
    }

    /// Of the samples that truly are `c`, the fraction predicted as `c`.
    pub fn recall(&self, c: usize) -> f64 {
        ratio(self.get(c, c), self.support(c))
    }

    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fn f1(&self, c: usize) -> f64 {
        let (p, r) = (self.precision(c), self.recall(c));
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    /// Unweighted mean of per-class F1 over all classes, including classes
    /// absent from the data (as sklearn does when given the label list).
    pub fn macro_f1(&self) -> f64 {
        self.macro_mean(|c| self.f1(c))
    }

    /// Number of samples whose true class is `c` (row sum).
    pub fn support(&self, c: usize) -> u64 {
        (0..self.classes).map(|p| self.get(c, p)).sum()
    }

    /// Number of samples predicted as `c` (column sum).
    fn predicted(&self, c: usize) -> u64 {
        (0..self.classes).map(|t| self.get(t, c)).sum()
    }

    fn macro_mean(&self, per_class: impl Fn(usize) -> f64) -> f64 {
        if self.classes == 0 {
            return 0.0;
        }
        (0..self.classes).map(per_class).sum::<f64>() / self.classes as f64
    }

    /// All the metrics in one serialisable value.
    pub fn report(&self) -> ClassificationReport {
        let per_class = (0..self.classes)
            .map(|c| ClassMetrics {
                class: c,
                name: None,
                precision: self.precision(c),
                recall: self.recall(c),
                f1: self.f1(c),
                support: self.support(c),
            })
            .collect();
        let confusion = (0..self.classes)
            .map(|t| (0..self.classes).map(|p| self.get(t, p)).collect())
            .collect();
        ClassificationReport {
            accuracy: self.accuracy(),
            total: self.total(),
            per_class,
            macro_precision: self.macro_mean(|c| self.precision(c)),
            macro_recall: self.macro_mean(|c| self.recall(c)),
            macro_f1: self.macro_f1(),
            confusion,
        }
    }
}

/// `num / den`, or 0 when `den` is 0 (sklearn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    pub class: usize,
    /// The class's name, where the dataset has names (Fashion-MNIST,
    /// CIFAR-10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of samples whose true class is this one.
    pub support: u64,
}

/// Everything an evaluation reports, ready for JSON or for printing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    /// Number of samples evaluated.
    pub total: u64,
    pub per_class: Vec<ClassMetrics>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    /// Row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl fmt::Display for ClassificationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_table(f)?;
        writeln!(f)?;
        self.fmt_confusion(f)
    }
}

impl ClassificationReport {
    /// Names the classes (label `i` is `names[i]`); no change without names.
    pub fn named(mut self, names: Option<&[&str]>) -> Self {
        if let Some(names) = names {
            for m in &mut self.per_class {
                m.name = names.get(m.class).map(|n| n.to_string());
            }
        }
        self
    }

    /// Per-class rows, then macro averages and accuracy, sklearn style.
    fn fmt_table(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = support_width(self.total).max("support".len());
        writeln!(
            f,
            "{:>11} {:>9} {:>9} {:>9} {:>w$}",
            "class", "precision", "recall", "f1", "support"
        )?;
        for m in &self.per_class {
            let class = m.name.clone().unwrap_or_else(|| m.class.to_string());
            writeln!(
                f,
                "{:>11} {:>9.4} {:>9.4} {:>9.4} {:>w$}",
                class, m.precision, m.recall, m.f1, m.support
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:>11} {:>9.4} {:>9.4} {:>9.4} {:>w$}",
            "macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.total
        )?;
        writeln!(
            f,
            "{:>11} {:>9} {:>9} {:>9.4} {:>w$}",
            "accuracy", "", "", self.accuracy, self.total
        )
    }

    /// The confusion matrix with a header row of predicted classes; every
    /// column is as wide as the widest count or label.
    fn fmt_confusion(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.confusion.len();
        let widest_count = self.confusion.iter().flatten().copied().max().unwrap_or(0);
        let w = support_width(widest_count).max(support_width(n.saturating_sub(1) as u64));
        writeln!(f, "confusion matrix (rows = true, columns = predicted):")?;
        write!(f, "{:>6}", "")?;
        for c in 0..n {
            write!(f, " {c:>w$}")?;
        }
        writeln!(f)?;
        for (t, row) in self.confusion.iter().enumerate() {
            write!(f, "{t:>6}")?;
            for count in row {
                write!(f, " {count:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Decimal digits needed to print `n`.
fn support_width(n: u64) -> usize {
    n.to_string().len()
}

/// One row of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    /// Fraction in [0, 1].
    pub train_acc: f64,
    /// `None` on epochs without a validation pass.
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_sec: f64,
}

const CSV_HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_sec";

impl EpochMetrics {
    /// One CSV line; `None` is an empty cell. Floats use Rust's shortest
    /// round-trip form so no precision is lost.
    fn csv_line(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            opt(self.val_loss),
            opt(self.val_acc),
            self.lr,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Write `dir/metrics.csv` and `dir/metrics.json` (creating `dir`), each
/// replaced atomically so a run killed mid-write keeps the previous epoch's
/// complete log. Non-finite floats print as `NaN`/`inf` in the CSV and as
/// `null` in the JSON, which has no NaN.
pub fn write_metrics(dir: &Path, rows: &[EpochMetrics]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for row in rows {
        csv.push_str(&row.csv_line());
        csv.push('\n');
    }
    let json_path = dir.join("metrics.json");
    let mut json = serde_json::to_string_pretty(rows)
        .map_err(|e| Error::format(&json_path, format!("cannot serialise metrics: {e}")))?;
    json.push('\n');
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&json_path, json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// truth/pred pairs:
    ///   class 0: 3 samples -> predicted 0,0,1
    ///   class 1: 2 samples -> predicted 1,2
    ///   class 2: 1 sample  -> predicted 0
    /// Columns: pred 0 = 3 (2 correct), pred 1 = 2 (1 correct), pred 2 = 1 (0 correct).
    fn example() -> ConfusionMatrix {
        let mut cm = ConfusionMatrix::new(3);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (1, 2), (2, 0)] {
            cm.add(t, p).unwrap();
        }
        cm
    }

    #[test]
    fn hand_computed_metrics() {
        let cm = example();
        assert_eq!(cm.total(), 6);
        assert!(close(cm.accuracy(), 3.0 / 6.0));
        assert!(close(cm.precision(0), 2.0 / 3.0));
        assert!(close(cm.recall(0), 2.0 / 3.0));
        assert!(close(cm.f1(0), 2.0 / 3.0));
        assert!(close(cm.precision(1), 1.0 / 2.0));
        assert!(close(cm.recall(1), 1.0 / 2.0));
        assert!(close(cm.f1(1), 0.5));
        assert_eq!(cm.precision(2), 0.0);
        assert_eq!(cm.recall(2), 0.0);
        assert_eq!(cm.f1(2), 0.0);
        assert!(close(cm.macro_f1(), (2.0 / 3.0 + 0.5) / 3.0));
    }

    #[test]
    fn unequal_precision_and_recall() {
        // Class 0: tp 1, fp 1 (a class-1 sample), fn 2 -> p 1/2, r 1/3, f1 0.4.
        let mut cm = ConfusionMatrix::new(2);
        for (t, p) in [(0, 0), (0, 1), (0, 1), (1, 0), (1, 1)] {
            cm.add(t, p).unwrap();
        }
        assert!(close(cm.precision(0), 0.5));
        assert!(close(cm.recall(0), 1.0 / 3.0));
        assert!(close(cm.f1(0), 0.4));
        // Class 1: tp 1, fp 2, fn 1 -> p 1/3, r 1/2, f1 0.4.
        assert!(close(cm.f1(1), 0.4));
        assert!(close(cm.macro_f1(), 0.4));
    }

    #[test]
    fn empty_and_out_of_range_do_not_panic() {
        let mut cm = ConfusionMatrix::new(2);
        assert_eq!(cm.accuracy(), 0.0);
        assert_eq!(cm.macro_f1(), 0.0);
        assert!(cm.add(2, 0).is_err());
        assert!(cm.add(0, 5).is_err());
        assert_eq!(cm.total(), 0);
        assert_eq!(cm.precision(9), 0.0);
        let none = ConfusionMatrix::new(0);
        assert_eq!(none.macro_f1(), 0.0);
        let _ = none.report().to_string();
    }

    #[test]
    fn report_values_and_layout() {
        let report = example().report();
        assert_eq!(
            report.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 0]]
        );
        assert_eq!(report.per_class[0].support, 3);
        assert_eq!(report.per_class[2].support, 1);
        assert!(close(report.macro_precision, (2.0 / 3.0 + 0.5) / 3.0));
        assert!(close(report.macro_recall, (2.0 / 3.0 + 0.5) / 3.0));
        let text = report.to_string();
        crate::test_support::assert_mentions(&text, &["precision"]);
        crate::test_support::assert_mentions(&text, &["0.6667"]);
        crate::test_support::assert_mentions(&text, &["macro avg"]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["confusion"][0][1], 1);
        // Confusion rows line up: equal length lines after the title.
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("confusion"))
            .collect();
        let widths: Vec<usize> = lines[1..].iter().map(|l| l.len()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    fn row(epoch: usize, val: Option<(f64, f64)>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 0.5 / epoch as f64,
            train_acc: 0.9,
            val_loss: val.map(|v| v.0),
            val_acc: val.map(|v| v.1),
            lr: 1e-3,
            seconds: 12.5,
            images_per_sec: 4800.0,
        }
    }

    #[test]
    fn writes_csv_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let rows = vec![row(1, Some((0.4, 0.88))), row(2, None)];
        write_metrics(&out, &rows).unwrap();
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "1,0.5,0.9,0.4,0.88,0.001,12.5,4800");
        assert_eq!(lines[2], "2,0.25,0.9,,,0.001,12.5,4800");
        assert_eq!(lines.len(), 3);
        let json = std::fs::read_to_string(out.join("metrics.json")).unwrap();
        let back: Vec<EpochMetrics> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rows);
    }
}
