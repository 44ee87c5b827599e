//! The CUDA side of data-parallel training: when the ranks use NCCL, and
//! the one-rank check `tools/gpu-check.sh` runs.

use super::device::probe;
use crate::dist::nccl::{available, Nccl};
use crate::dist::Collective;
use crate::error::{Error, Result};
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// NCCL where every rank can load it, else None (the host path). The ranks
/// agree first, so none waits in NCCL while another waits in MPI.
pub(super) fn join_if_every_rank_can(
    stream: &Arc<CudaStream>,
    group: &dyn Collective,
) -> Result<Option<Nccl>> {
    let mut ok = [f64::from(u8::from(available()))];
    group.all_reduce_sum_f64(&mut ok)?;
    match ok[0] as usize == group.world() {
        true => Ok(Some(Nccl::join(Arc::clone(stream), group)?)),
        false => Ok(None),
    }
}

/// NCCL on one rank: the communicator forms, and an all-reduce of a
/// known buffer gives it back unchanged (`tools/gpu-check.sh` runs this).
pub fn self_test(ordinal: usize) -> Result<String> {
    let dev = probe(ordinal)?;
    dev.ctx
        .bind_to_thread()
        .map_err(|e| dev.err("binding the context", e))?;
    let nccl = crate::dist::nccl::Nccl::solo(Arc::clone(&dev.stream))?;
    let host: Vec<f32> = (0..4099).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut buf = dev
        .stream
        .clone_htod(&host)
        .map_err(|e| dev.err("copying to the device", e))?;
    nccl.all_reduce_sum(&mut buf.as_view_mut())?;
    let back = dev
        .stream
        .clone_dtoh(&buf)
        .map_err(|e| dev.err("copying from the device", e))?;
    if back != host {
        return Err(Error::Dist(format!(
            "NCCL all-reduce over one rank changed the buffer on {}",
            dev.label()
        )));
    }
    Ok(format!(
        "NCCL all-reduce on {} (1 rank, {} floats): unchanged, as it must be",
        dev.label(),
        host.len()
    ))
}
