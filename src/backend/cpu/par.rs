//! Intra-op parallelism of the CPU kernels.
//!
//! Kernels parallelise with rayon's global pool. Inside
//! [`on_caller_thread`] they run on the calling thread instead: every
//! parallel loop gets a minimum task length no loop reaches (so rayon runs
//! it inline and never touches its pool), the conv kernels see one thread,
//! and GEMMs run unthreaded. The embedding API uses this: a service already
//! has a worker per core, and handing small kernels to a pool and back
//! costs more than it gains at batch 1.

use rayon::prelude::*;
use std::cell::Cell;

thread_local! {
    static CALLER_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every CPU kernel it launches on this thread.
pub fn on_caller_thread<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous mode even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALLER_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CALLER_ONLY.with(|c| c.replace(true)));
    f()
}

/// Threads the kernels may use here: 1 inside [`on_caller_thread`].
pub fn threads() -> usize {
    if CALLER_ONLY.with(Cell::get) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The minimum length of a rayon task: `want`, or everything in one task
/// (run inline by rayon) inside [`on_caller_thread`].
pub fn min_len(want: usize) -> usize {
    if CALLER_ONLY.with(Cell::get) {
        usize::MAX
    } else {
        want.max(1)
    }
}

/// Planes of `plane_len` elements per rayon task of a plane-parallel loop:
/// about 32K elements each, so the pool's per-task cost stays small (a
/// task per 784-element plane cost the batch-norm kernels 30%).
pub fn planes_per_task(plane_len: usize) -> usize {
    (32 * 1024 / plane_len.max(1)).max(1)
}

/// Elements from which an elementwise loop is split across threads.
pub const ELEMENTWISE_PAR_MIN: usize = 1 << 15;

fn split_elementwise(n: usize) -> bool {
    n >= ELEMENTWISE_PAR_MIN && threads() > 1
}

/// Elements per task of a split elementwise loop: large enough that each
/// task's loop vectorises and rayon's bookkeeping is noise, small enough
/// that two threads share a 1.6M-element map evenly.
const ELEMENTWISE_CHUNK: usize = 1 << 13;

/// `y[i] = f(x[i])`.
pub fn map1(y: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    let run = |(y, x): (&mut [f32], &[f32])| {
        for (y, x) in y.iter_mut().zip(x) {
            *y = f(*x);
        }
    };
    if split_elementwise(y.len()) {
        y.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(x.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(run);
    } else {
        run((y, x));
    }
}

/// `y[i] = f(y[i])`.
pub fn map_inplace(y: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    let run = |y: &mut [f32]| {
        for y in y.iter_mut() {
            *y = f(*y);
        }
    };
    if split_elementwise(y.len()) {
        y.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(run);
    } else {
        run(y);
    }
}

/// `y[i] = f(a[i], b[i])`.
pub fn map2(y: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    let run = |(y, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        for (y, (a, b)) in y.iter_mut().zip(a.iter().zip(b)) {
            *y = f(*a, *b);
        }
    };
    if split_elementwise(y.len()) {
        y.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(
                a.par_chunks(ELEMENTWISE_CHUNK)
                    .zip(b.par_chunks(ELEMENTWISE_CHUNK)),
            )
            .for_each(run);
    } else {
        run((y, (a, b)));
    }
}

/// `y[i] = f(y[i], a[i])`.
pub fn map2_inplace(y: &mut [f32], a: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    let run = |(y, a): (&mut [f32], &[f32])| {
        for (y, a) in y.iter_mut().zip(a) {
            *y = f(*y, *a);
        }
    };
    if split_elementwise(y.len()) {
        y.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(a.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(run);
    } else {
        run((y, a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_thread_scope_runs_loops_inline_and_restores() {
        let me = std::thread::current().id();
        let mut v = vec![0u32; 1 << 16];
        on_caller_thread(|| {
            assert_eq!(threads(), 1);
            v.par_iter_mut()
                .with_min_len(min_len(1))
                .for_each(|x| *x = u32::from(std::thread::current().id() == me));
        });
        assert!(v.iter().all(|&x| x == 1), "a task ran on another thread");
        assert_eq!(threads(), rayon::current_num_threads());
        assert_eq!(min_len(0), 1);
    }
}
