//! NCCL all-reduce on CUDA devices (the `nccl` feature): cudarc's
//! bindings, loaded at run time like the driver, so a machine without
//! `libnccl.so.2` gets a one-line error and never a panic. One process per
//! GPU; NCCL's unique id travels from rank 0 over the host collective
//! (MPI) when the communicator is made.

use super::Collective;
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, CudaViewMut};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

/// Whether the NCCL library can be loaded here.
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names;
    // nothing from it is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// A communicator over the ranks of a host group, on one CUDA stream.
pub struct Nccl {
    comm: Comm,
}

// SAFETY: an NCCL communicator may be used from any thread as long as
// calls on it do not overlap; its owner (a CUDA executable) is used through
// `&mut self`, one call at a time.
unsafe impl Send for Nccl {}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Dist(format!("NCCL {what}: {e:?}"))
}

/// Ok where NCCL loads; else the one-line error that says what to install.
pub fn require() -> Result<()> {
    match available() {
        true => Ok(()),
        false => Err(Error::Dist(
            "NCCL (libnccl.so.2) is not on this machine: install it (the libnccl2 package, or the nvidia-nccl-cu12 wheel with its lib folder on LD_LIBRARY_PATH)".into(),
        )),
    }
}

impl Nccl {
    /// Joins the ranks of `group` on `stream` (collective: every rank
    /// calls it). Rank 0 makes the unique id; `group` hands it out.
    pub fn join(stream: Arc<CudaStream>, group: &dyn Collective) -> Result<Nccl> {
        require()?;
        let mut id = [0u8; 128];
        if group.rank() == 0 {
            let made = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            for (b, c) in id.iter_mut().zip(made.internal()) {
                *b = *c as u8;
            }
        }
        group.broadcast(&mut id)?;
        let comm = Comm::from_rank(
            stream,
            group.rank(),
            group.world(),
            Id::uninit(id.map(|b| b as std::ffi::c_char)),
        )
        .map_err(|e| nccl_err("ncclCommInitRank", e))?;
        Ok(Nccl { comm })
    }

    /// A communicator of one rank (the GPU check: NCCL loads and runs).
    pub fn solo(stream: Arc<CudaStream>) -> Result<Nccl> {
        Self::join(stream, &super::Solo)
    }

    /// Sum `buf` across the ranks, in place, queued on the stream.
    pub fn all_reduce_sum(&self, buf: &mut CudaViewMut<'_, f32>) -> Result<()> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map_err(|e| nccl_err("ncclAllReduce", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Without the library (this machine, CI) the answer is an error that
    /// names it, not a panic; with it, nothing to check here.
    #[test]
    fn a_missing_library_is_a_clean_error() {
        match super::require() {
            Ok(()) => eprintln!("NCCL loads here"),
            Err(e) => assert!(e.to_string().contains("libnccl.so.2"), "{e}"),
        }
    }
}
