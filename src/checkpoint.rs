//! A training run's folder: what `checkpoint.json` records, how it is
//! checked on load, the lock that keeps two trainings out of one folder,
//! and the single atomic step that publishes a checkpoint.
//!
//! Layout (every top-level file is a link through `current`, so the one
//! rename of `current` switches all of them at once, and a kill at any
//! instant leaves files that agree with each other):
//!
//! ```text
//! run/
//!   .gpurt-lock                       held (flock) while a training writes here
//!   current -> ckpt/step-000000056    the commit point
//!   checkpoint.json  -> current/checkpoint.json
//!   model.safetensors, metrics.csv, metrics.json, training.png -> current/...
//!   ckpt/step-000000056/              weights, optimiser state, metrics, plot
//! ```

use crate::data::tokenize::TokenizerSettings;
use crate::data::Normalizer;
use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use crate::nn::ModelSpec;
use crate::testhook;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const CHECKPOINT: &str = "checkpoint.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";
/// The best epoch's weights, kept beside the latest under early stopping.
pub const BEST_FILE: &str = "best.safetensors";
pub const FORMAT: &str = "gpurt-checkpoint-v1";
/// The most epochs a run may ask for: far beyond any real run, and small
/// enough that epoch and step arithmetic cannot wrap.
pub const MAX_EPOCHS: usize = 1_000_000;
/// Files of a checkpoint folder that are also linked at the top of the run.
pub const PUBLISHED: &[&str] = &[
    CHECKPOINT,
    MODEL_FILE,
    "metrics.csv",
    "metrics.json",
    "training.png",
];
const CURRENT: &str = "current";
const LOCK: &str = ".gpurt-lock";
const CKPT_DIR: &str = "ckpt";
const PARTIAL: &str = ".partial-";

/// What `checkpoint.json` records: enough to rebuild the model, its input
/// pipeline and the point training reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub format: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the next epoch already trained (after a Ctrl-C stop).
    #[serde(default)]
    pub batch: usize,
    /// The training batch size (absent in checkpoints of older versions).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Data-parallel ranks of the run (absent: one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<usize>,
    pub step: u64,
    /// Folder (relative to the run) holding this checkpoint's weights and
    /// optimiser state.
    pub files: String,
    pub spec: ModelSpec,
    pub input: Vec<usize>,
    pub classes: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub seed: u64,
    pub data: String,
    /// Under early stopping: the epoch whose weights are `best.safetensors`,
    /// the run's model for `eval` and `predict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// A text run's class names and tokenizer settings; its vocabulary is
    /// [`TOKENIZER`] at the top of the run folder. `input` is then `[T]`
    /// and the normaliser is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextRun>,
}

/// What a text run adds to its checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextRun {
    /// Class names, by label.
    pub classes: Vec<String>,
    pub tokenizer: TokenizerSettings,
}

/// A text run's vocabulary (Hugging Face `tokenizer.json`), written once
/// when the run starts.
pub const TOKENIZER: &str = "tokenizer.json";
/// A text run's documents: which trained, validated and tested (the
/// test texts themselves, so `eval` needs no source data).
pub const SPLIT: &str = "split.json";

impl Checkpoint {
    /// Read and check `dir/checkpoint.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(CHECKPOINT);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        Self::parse(&p, &bytes)
    }

    /// Parse and check a `checkpoint.json`'s bytes; `label` names the file
    /// in errors.
    pub fn parse(label: &Path, bytes: &[u8]) -> Result<Self> {
        if bytes.len() > 1 << 20 {
            return Err(Error::format(label, "larger than 1 MiB"));
        }
        let ck: Checkpoint =
            serde_json::from_slice(bytes).map_err(|e| Error::format(label, e.to_string()))?;
        ck.validate().map_err(|d| Error::format(label, d))?;
        Ok(ck)
    }

    /// Every number a resume, `eval` or `predict` relies on, checked
    /// against what `gpurt train` can have written.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "unknown format '{}' (this gpurt reads '{FORMAT}')",
                self.format
            ));
        }
        if Path::new(&self.files).is_absolute() || self.files.contains("..") {
            return Err(format!(
                "checkpoint folder '{}' is outside the run",
                self.files
            ));
        }
        if !(1..=1 << 16).contains(&self.classes) {
            return Err(format!("classes {} is not in 1..=65536", self.classes));
        }
        if let Some(t) = &self.text {
            return self.validate_text(t).and_then(|_| self.validate_progress());
        }
        let [c, h, w] = self.input[..] else {
            return Err(format!("input {:?} is not [C, H, W]", self.input));
        };
        let numel = [c, h, w]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d).filter(|_| d > 0));
        if !matches!(numel, Some(n) if n <= 1 << 26) {
            return Err(format!("input {:?} is empty or too large", self.input));
        }
        if self.mean.len() != c || self.std.len() != c {
            return Err(format!(
                "the normaliser has {} means and {} deviations for {c} channels",
                self.mean.len(),
                self.std.len()
            ));
        }
        // Pixels are scaled to [0, 1] before normalising, so these are the
        // only values a fitted normaliser can hold.
        if let Some(m) = self.mean.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(format!(
                "mean {m} is outside [0, 1] (pixels are scaled to [0, 1])"
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(1e-6..=1.0).contains(*s)) {
            return Err(format!("std {s} is outside [1e-6, 1]"));
        }
        self.validate_progress()
    }

    /// A text run's input, classes and tokenizer settings.
    fn validate_text(&self, t: &TextRun) -> std::result::Result<(), String> {
        let [len] = self.input[..] else {
            return Err(format!("text input {:?} is not [T]", self.input));
        };
        if !(1..=1 << 16).contains(&len) || len != t.tokenizer.max_len {
            return Err(format!(
                "text input [{len}] does not match the tokenizer's max_len {} (1..=65536)",
                t.tokenizer.max_len
            ));
        }
        if !self.mean.is_empty() || !self.std.is_empty() {
            return Err("a text run has no normaliser".into());
        }
        if t.classes.len() != self.classes || t.classes.iter().any(String::is_empty) {
            return Err(format!(
                "{} class names for {} classes",
                t.classes.len(),
                self.classes
            ));
        }
        Ok(())
    }

    /// Epoch, batch and best-epoch counters.
    fn validate_progress(&self) -> std::result::Result<(), String> {
        if self.epoch > MAX_EPOCHS {
            return Err(format!("epoch {} is more than {MAX_EPOCHS}", self.epoch));
        }
        if self.batch_size == Some(0) {
            return Err("batch_size is 0".into());
        }
        if let Some(b) = self.best_epoch {
            if b == 0 || b > self.epoch {
                return Err(format!(
                    "best_epoch {b} is not one of the {} epochs run",
                    self.epoch
                ));
            }
        }
        Ok(())
    }

    /// The weights of this checkpoint.
    pub fn model_file(&self, dir: &Path) -> PathBuf {
        dir.join(&self.files).join(MODEL_FILE)
    }
    pub fn optim_file(&self, dir: &Path) -> PathBuf {
        dir.join(&self.files).join(OPTIM_FILE)
    }
    /// The run's model: the best epoch's weights under early stopping,
    /// else the latest.
    pub fn run_model_file(&self, dir: &Path) -> PathBuf {
        match self.best_epoch {
            Some(_) => dir.join(&self.files).join(BEST_FILE),
            None => self.model_file(dir),
        }
    }

    /// The normaliser recorded in this checkpoint.
    pub fn normalizer(&self) -> Normalizer {
        Normalizer {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }

    /// The metrics rows of the epochs this checkpoint completed, from its
    /// own folder (or the top of the run, for runs of older versions).
    pub fn metrics(&self, dir: &Path) -> Vec<EpochMetrics> {
        let read = |p: PathBuf| -> Option<Vec<EpochMetrics>> {
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        };
        let mut rows = read(dir.join(&self.files).join("metrics.json"))
            .or_else(|| read(dir.join("metrics.json")))
            .unwrap_or_default();
        rows.retain(|r| r.epoch <= self.epoch);
        rows
    }
}

/// Exclusive use of a run folder while a training writes to it. The lock
/// is an OS file lock, so a process killed with SIGKILL releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Create `dir` if needed and lock it, or say who holds it.
pub fn lock(dir: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    file.set_len(0).map_err(|e| Error::io(&path, e))?;
    std::io::Write::write_all(
        &mut &file,
        format!("pid {}\n", std::process::id()).as_bytes(),
    )
    .map_err(|e| Error::io(&path, e))?;
    testhook::point("locked");
    Ok(RunLock { _file: file })
}

/// Publish checkpoint `step`: `write` fills a fresh folder (it is given the
/// folder and its name relative to the run), which is then renamed into
/// place, and `current` is switched to it with one atomic rename. Only then
/// are older checkpoint folders, ones gpurt wrote and named, removed.
pub fn commit(dir: &Path, step: u64, write: impl FnOnce(&Path, &str) -> Result<()>) -> Result<()> {
    testhook::point("ckpt-begin");
    let ckpt = dir.join(CKPT_DIR);
    let current = std::fs::read_link(dir.join(CURRENT)).ok();
    let mut name = format!("step-{step:09}");
    // Saving the step that is already published (a resume stopped before
    // its first step) must not replace the live folder in place.
    let mut k = 0;
    while current.as_deref() == Some(Path::new(CKPT_DIR).join(&name).as_path()) {
        k += 1;
        name = format!("step-{step:09}.{k}");
    }
    let rel = format!("{CKPT_DIR}/{name}");
    let partial = ckpt.join(format!("{PARTIAL}{name}"));
    remove_dir(&partial)?;
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    write(&partial, &rel)?;
    let fin = ckpt.join(&name);
    remove_dir(&fin)?;
    std::fs::rename(&partial, &fin).map_err(|e| Error::io(&fin, e))?;
    sync_dir(&ckpt);
    testhook::point("ckpt-folder-renamed");
    replace_link(dir, CURRENT, Path::new(&rel))?;
    testhook::point("ckpt-committed");
    for f in PUBLISHED {
        if fin.join(f).exists() {
            replace_link(dir, f, &Path::new(CURRENT).join(f))?;
        }
    }
    testhook::point("ckpt-linked");
    // Older folders are garbage now; failing to remove one is harmless.
    if let Ok(entries) = std::fs::read_dir(&ckpt) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != name && is_ours(&n) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    testhook::point("ckpt-cleaned");
    Ok(())
}

/// Names gpurt gives checkpoint folders: `step-` and nine digits, an
/// optional `.k`, or those with the partial prefix.
fn is_ours(name: &str) -> bool {
    let n = name.strip_prefix(PARTIAL).unwrap_or(name);
    let Some(rest) = n.strip_prefix("step-") else {
        return false;
    };
    let (digits, k) = rest.split_once('.').unwrap_or((rest, "0"));
    digits.len() == 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !k.is_empty()
        && k.bytes().all(|b| b.is_ascii_digit())
}

fn remove_dir(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

/// Atomically make `dir/name` a symbolic link to `target`.
fn replace_link(dir: &Path, name: &str, target: &Path) -> Result<()> {
    let at = dir.join(name);
    if std::fs::read_link(&at).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.link-tmp"));
    let _ = std::fs::remove_file(&tmp);
    symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &at).map_err(|e| Error::io(&at, e))?;
    sync_dir(dir);
    Ok(())
}

#[cfg(unix)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, at)
}

#[cfg(windows)]
fn symlink(target: &Path, at: &Path) -> std::io::Result<()> {
    if target.extension().is_some() {
        std::os::windows::fs::symlink_file(target, at)
    } else {
        std::os::windows::fs::symlink_dir(target, at)
    }
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable; where a platform cannot
    // open a directory, the rename is still atomic.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_gpurt_writes_are_ours() {
        for n in [
            "step-000000028",
            "step-000000028.1",
            ".partial-step-000000028",
        ] {
            assert!(is_ours(n), "{n}");
        }
        for n in [
            "keep-epoch1",
            "step-28",
            "step-000000028-keep",
            "step-000000028.",
            "step-00000002x",
            "mine",
        ] {
            assert!(!is_ours(n), "{n}");
        }
    }

    #[test]
    fn commit_publishes_atomically_and_keeps_foreign_folders() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path();
        let _lock = lock(run).unwrap();
        std::fs::create_dir_all(run.join("ckpt/keep-me")).unwrap();
        for step in [5u64, 9, 9] {
            commit(run, step, |d, rel| {
                std::fs::write(d.join(CHECKPOINT), rel).unwrap();
                std::fs::write(d.join(MODEL_FILE), step.to_string()).unwrap();
                Ok(())
            })
            .unwrap();
        }
        // The third save of step 9 went beside the live one, then replaced it.
        let rel = std::fs::read_to_string(run.join(CHECKPOINT)).unwrap();
        assert_eq!(rel, "ckpt/step-000000009.1");
        assert_eq!(std::fs::read_to_string(run.join(MODEL_FILE)).unwrap(), "9");
        let mut left: Vec<String> = std::fs::read_dir(run.join("ckpt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["keep-me", "step-000000009.1"]);
    }

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let first = lock(t.path()).unwrap();
        let e = lock(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        lock(t.path()).unwrap();
    }
}
