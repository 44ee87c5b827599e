//! One typed error for the whole library. Every variant names what failed
//! (the op, the shapes, the file or the tensor) so the CLI can print one
//! clear line and exit non-zero.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An op was given inputs whose shapes do not fit its rule.
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: String, detail: String },

    /// A file could not be read or written. The OS error is part of the
    /// message and not also a `source`, so a printed chain says it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A file was read but its contents are not what the format says.
    #[error("{path}: {detail}")]
    Format { path: PathBuf, detail: String },

    /// A weights file does not fit the model (missing tensor, wrong shape, dtype).
    #[error("weights {path}: tensor '{tensor}': {detail}")]
    Weights {
        path: PathBuf,
        tensor: String,
        detail: String,
    },

    /// A model spec (preset or TOML) is invalid.
    #[error("model spec: {0}")]
    Model(String),

    /// A size computation overflowed or exceeds a limit.
    #[error("resource limit: {0}")]
    Limit(String),

    /// A backend failed to initialise or to run.
    #[error("device {device}: {detail}")]
    Device { device: String, detail: String },

    /// A backend cannot be used on this machine (no driver, no adapter, or
    /// not built in): a service can fall back to another device.
    #[error("device {device}: {detail}")]
    Unavailable { device: String, detail: String },

    /// A module's arena does not fit the device (its memory or its limits):
    /// a smaller batch may.
    #[error("device {device}: the arena for program(s) {programs} ({bytes} bytes, {} MiB) does not fit: {detail}", bytes >> 20)]
    ArenaTooLarge {
        device: String,
        programs: String,
        bytes: u64,
        detail: String,
    },

    /// A name the module does not have: a program, input, output,
    /// parameter or runtime scalar.
    #[error("no {what} named '{name}' (there are: {known})")]
    UnknownName {
        what: &'static str,
        name: String,
        known: String,
    },

    /// Data-parallel training: the launcher's world, the collective library
    /// or a collective operation failed.
    #[error("data-parallel: {0}")]
    Dist(String),

    /// Training produced a NaN or infinity.
    #[error("non-finite value at step {step}: {detail}")]
    NonFinite { step: u64, detail: String },

    /// Training diverged: the loss grew far beyond where it was, though finite.
    #[error("training diverged at step {step}: {detail}")]
    Diverged { step: u64, detail: String },

    /// A run folder is being written by another training.
    #[error("{path} is in use by another training ({holder}); wait for it to finish or choose another --out")]
    Locked { path: PathBuf, holder: String },

    /// A caller used the API wrongly (wrong input shape, unknown name).
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }
    pub fn shape(op: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            detail: detail.into(),
        }
    }
}
