//! The CUDA backend: launch plans and kernels checked on the host
//! (emulation, ptxas), and on a GPU when one is present.

#![cfg(feature = "cuda")]

#[path = "cuda/bench.rs"]
mod bench;
#[path = "cuda/cases.rs"]
pub mod cases;
#[path = "cuda/emu.rs"]
mod emu;
#[path = "cuda/parity.rs"]
mod parity;
#[path = "cuda/ptx.rs"]
mod ptx;
