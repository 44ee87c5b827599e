//! Data-parallel training: the workers of one run and the collective
//! operations between them.
//!
//! Every worker (rank) runs the same compiled step on its shard of the
//! global batch; the gradients are summed across ranks between the backward
//! pass and the optimiser update (see `model::Classifier`), so every rank
//! applies the same update and the weights stay identical. The engines are
//! the standard ones, never a home-made protocol: MPI on the host (the
//! `mpi` feature, Open MPI through the `mpi` crate; `mpirun` starts the
//! workers) and NCCL on CUDA devices (the `nccl` feature, loaded at run
//! time). Without either a run is one process ([`Solo`]).
//!
//! Every collective runs under a watchdog: a rank that waits longer than
//! the run's timeout for its peers (one died or hung) prints why and exits,
//! so a job never hangs even where the launcher does not kill the rest.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operations a data-parallel run needs, over host memory. Every rank
/// calls each of them in the same order (they are collective).
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// What carries the collectives, for logs (`mpi (Open MPI v4.1.4)`).
    fn describe(&self) -> String;
    /// Sum `buf` across ranks; every rank receives the same sums.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Collective::all_reduce_sum`] in double precision (metrics,
    /// counts).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Rank 0's `buf` on every rank.
    fn broadcast(&self, buf: &mut [u8]) -> Result<()>;
    /// Ends the job from any rank: MPI's abort takes the other ranks down
    /// with this one.
    fn abort(&self, code: i32) -> !;
}

/// A single process: every collective is the identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn describe(&self) -> String {
        "single process".into()
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `--world`: how many workers the run has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldSpec {
    /// Read the launcher's environment (`mpirun`, `mpiexec`, `srun`): one
    /// process when there is none.
    Auto,
    /// Exactly this many ranks; the launcher must agree.
    Size(usize),
}

impl std::str::FromStr for WorldSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WorldSpec::Auto),
            n => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(WorldSpec::Size(n)),
                _ => Err(Error::Usage(format!(
                    "--world '{s}': expected auto or a number of ranks (1 or more)"
                ))),
            },
        }
    }
}

/// The (rank, size) a launcher gave this process, from its environment:
/// Open MPI, MPICH/Hydra (and Intel MPI), PMIx, or Slurm's `srun`.
pub fn launcher_env() -> Option<(usize, usize)> {
    let get = |k: &str| std::env::var(k).ok()?.trim().parse::<usize>().ok();
    [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("PMIX_RANK", "PMIX_SIZE"),
        ("SLURM_PROCID", "SLURM_NTASKS"),
    ]
    .iter()
    .find_map(|(r, s)| Some((get(r)?, get(s)?)))
}

/// Join the run's workers: MPI when a launcher started several (or
/// `--world N` asks for them), a single process otherwise. `timeout` bounds
/// how long any collective may wait for the other ranks.
pub fn join(spec: WorldSpec, timeout: Duration) -> Result<Box<dyn Collective>> {
    let launched = launcher_env();
    let want = match spec {
        WorldSpec::Size(n) => n,
        WorldSpec::Auto => launched.map_or(1, |(_, n)| n),
    };
    if let (Some((_, n)), WorldSpec::Size(w)) = (launched, spec) {
        if n != w {
            return Err(Error::Dist(format!(
                "--world {w} but the launcher started {n} processes"
            )));
        }
    }
    if want == 1 {
        return Ok(Box::new(Solo));
    }
    if launched.is_none() {
        return Err(Error::Dist(format!(
            "--world {want} needs a launcher: run `mpirun -n {want} gpurt train ...`"
        )));
    }
    open_mpi(want, timeout)
}

#[cfg(feature = "mpi")]
fn open_mpi(want: usize, timeout: Duration) -> Result<Box<dyn Collective>> {
    let m = mpi::Mpi::init(Watchdog::start(timeout))?;
    if m.world() != want {
        return Err(Error::Dist(format!(
            "the launcher's environment says {want} ranks but MPI reports {}",
            m.world()
        )));
    }
    Ok(Box::new(m))
}

#[cfg(not(feature = "mpi"))]
fn open_mpi(want: usize, _: Duration) -> Result<Box<dyn Collective>> {
    Err(Error::Dist(format!(
        "started as one of {want} ranks, but this gpurt was built without MPI: rebuild with `cargo build --release --features mpi` (needs Open MPI: libopenmpi-dev)"
    )))
}

/// Bounds every collective: a thread checks once a second whether one has
/// run longer than the timeout, and if so ends the process with a message
/// (a peer died or hung; MPI's own failure handling varies by launcher).
#[derive(Clone)]
pub struct Watchdog {
    /// Milliseconds since `epoch` when the running collective started, or
    /// 0 when none runs.
    started: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watchdog {
    pub fn start(timeout: Duration) -> Watchdog {
        let w = Watchdog {
            started: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        let seen = w.clone();
        let spawned = std::thread::Builder::new()
            .name("gpurt-dist-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                let s = seen.started.load(Ordering::Relaxed);
                if s == 0 {
                    continue;
                }
                let waited = seen.now_ms().saturating_sub(s);
                if waited > timeout.as_millis() as u64 {
                    eprintln!(
                        "error: data-parallel: a collective has waited {:.0} s for the other ranks (--dist-timeout {} s): a rank died or hung; stopping this one",
                        waited as f64 / 1e3,
                        timeout.as_secs()
                    );
                    // Not `exit`: its handlers could wait on the very
                    // collective that is stuck.
                    hard_exit(3);
                }
            });
        if let Err(e) = spawned {
            eprintln!(
                "warning: data-parallel: no watchdog thread ({e}): a dead rank may hang this one"
            );
        }
        w
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Runs `f` (one collective) under the watchdog.
    pub fn guard<T>(&self, f: impl FnOnce() -> T) -> T {
        self.started.store(self.now_ms(), Ordering::Relaxed);
        let r = f();
        self.started.store(0, Ordering::Relaxed);
        r
    }
}

/// End the process now, running no exit handlers.
fn hard_exit(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` takes no pointers and does not return; skipping the
    // exit handlers is the point (one may block on the stuck collective).
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_spec_parses_and_refuses() {
        assert_eq!("auto".parse::<WorldSpec>().unwrap(), WorldSpec::Auto);
        assert_eq!("2".parse::<WorldSpec>().unwrap(), WorldSpec::Size(2));
        for bad in ["0", "-1", "two", ""] {
            let e = bad.parse::<WorldSpec>().unwrap_err().to_string();
            assert!(e.contains("--world"), "{e}");
        }
    }

    #[test]
    fn one_rank_is_solo() {
        let c = join(WorldSpec::Size(1), Duration::from_secs(1)).unwrap();
        assert_eq!((c.rank(), c.world()), (0, 1));
        let mut v = [1.5f32, -2.0];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
    }
}
