//! [`Collective`] over MPI (the `mpi` crate; Open MPI in CI). Host memory
//! only: device backends stage the gradient region through the host, or use
//! NCCL on CUDA.

use super::{Collective, Watchdog};
use crate::error::{Error, Result};
use ::mpi::collective::SystemOperation;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use std::cell::RefCell;

pub struct Mpi {
    world: SimpleCommunicator,
    watchdog: Watchdog,
    /// MPI's all-reduce reads one buffer and writes another: the input is
    /// copied here first (a copy of the gradients costs far less than the
    /// step that made them).
    scratch: RefCell<Vec<f32>>,
    scratch64: RefCell<Vec<f64>>,
    library: String,
    /// Dropped last: finalises MPI.
    _universe: Universe,
}

impl Mpi {
    pub fn init(watchdog: Watchdog) -> Result<Mpi> {
        let universe = ::mpi::initialize()
            .ok_or_else(|| Error::Dist("MPI is already initialised in this process".into()))?;
        let library = ::mpi::environment::library_version()
            .map(|v| v.split(',').next().unwrap_or(&v).trim().to_string())
            .unwrap_or_else(|_| "unknown library".into());
        Ok(Mpi {
            world: universe.world(),
            watchdog,
            scratch: RefCell::new(Vec::new()),
            scratch64: RefCell::new(Vec::new()),
            library,
            _universe: universe,
        })
    }
}

impl Mpi {
    /// MPI_Allreduce(SUM) of `buf`, copied to `send` first.
    fn sum<T: Equivalence + Copy>(&self, buf: &mut [T], send: &mut Vec<T>) {
        send.clear();
        send.extend_from_slice(buf);
        self.watchdog.guard(|| {
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum())
        });
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn describe(&self) -> String {
        format!("mpi ({})", self.library)
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.sum(buf, &mut self.scratch.borrow_mut());
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum(buf, &mut self.scratch64.borrow_mut());
        Ok(())
    }
    fn broadcast(&self, buf: &mut [u8]) -> Result<()> {
        let root = self.world.process_at_rank(0);
        self.watchdog.guard(|| root.broadcast_into(buf));
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
