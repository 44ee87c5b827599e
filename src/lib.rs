//! gpurt: a compact runtime that compiles a whole training step once and
//! replays it on the CPU, on wgpu (WGSL) or on CUDA (PTX).
//!
//! Data flows one way: model spec -> [`graph::Graph`] -> autodiff and
//! optimiser nodes -> [`graph::plan`] (schedule + arena) -> a
//! [`backend::Backend`] -> [`graph::Session`] that replays it.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod dist;
pub mod embed;
pub mod error;
pub mod eval;
pub mod graph;
pub mod inspect;
pub mod math;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod serve;
pub mod tensor;
#[cfg(test)]
pub(crate) mod test_support;
pub mod testhook;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::{DType, Shape, Tensor};
