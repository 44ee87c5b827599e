//! Models as a list of layers (Keras Sequential in spirit): presets and a
//! TOML spec, built into a graph with PyTorch parameter names.

pub mod init;
pub mod spec;

pub use spec::{Layer, ModelSpec};
