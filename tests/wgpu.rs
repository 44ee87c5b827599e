//! The wgpu backend against the CPU backend: every op, whole train steps,
//! shader validation and profiling helpers.

#![cfg(feature = "wgpu")]

#[path = "wgpu/parity.rs"]
mod parity;
#[path = "wgpu/profile.rs"]
mod profile;
#[path = "wgpu/shaders.rs"]
mod shaders;
#[path = "wgpu/train.rs"]
mod train;
