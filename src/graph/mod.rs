//! The graph layer: IR, autodiff, lowering to a planned program.

pub mod autodiff;
pub mod cost;
mod decode;
pub mod exec;
pub mod fuse;
pub mod ir;
pub mod kernel;
pub mod plan;

pub use exec::Session;
pub use ir::{Graph, NodeId, Role, ScalarId, ValueId};
pub use plan::{compile, Binding, Launch, Module, Program, Slot};
