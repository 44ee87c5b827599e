//! The wgpu backend against the CPU backend: every op case of the shared
//! catalogue (tests/common/catalogue.rs), whole train steps, shader
//! validation and profiling helpers.

#![cfg(feature = "wgpu")]

mod common;

#[path = "wgpu/gate.rs"]
mod gate;
#[path = "wgpu/parity.rs"]
mod parity;
#[path = "wgpu/profile.rs"]
mod profile;
#[path = "wgpu/shaders.rs"]
mod shaders;
#[path = "wgpu/train.rs"]
mod train;
