//! Models as layers wired by name (Keras' functional API in spirit; a plain
//! list is the Sequential case): presets, a TOML spec, and building into a
//! graph with PyTorch parameter names.

mod build;
pub mod fold;
pub mod init;
pub mod layer;
mod resnet;
pub mod spec;
mod text;

pub use build::INPUT;
pub use layer::{Layer, Node};
pub use spec::ModelSpec;
