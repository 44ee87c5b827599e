//! The CUDA backend: launch plans and kernels checked on the host
//! (emulation, ptxas), and on a GPU when one is present, over the shared
//! op-case catalogue (tests/common/catalogue.rs).

#![cfg(feature = "cuda")]

mod common;

#[path = "cuda/bench.rs"]
mod bench;
#[path = "cuda/emu.rs"]
mod emu;
#[path = "cuda/parity.rs"]
mod parity;
#[path = "cuda/ptx.rs"]
mod ptx;
