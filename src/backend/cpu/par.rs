//! Intra-op parallelism of the CPU kernels.
//!
//! Kernels parallelise with rayon's global pool. Inside
//! [`on_caller_thread`] they run on the calling thread instead: every
//! parallel loop gets a minimum task length no loop reaches (so rayon runs
//! it inline and never touches its pool), the conv kernels see one thread,
//! and GEMMs run unthreaded. The embedding API uses this: a service already
//! has a worker per core, and handing small kernels to a pool and back
//! costs more than it gains at batch 1.

use super::team::Team;
use rayon::prelude::*;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::sync::{Arc, Mutex};

thread_local! {
    static CALLER_ONLY: Cell<bool> = const { Cell::new(false) };
    /// The team of [`on_team`], taken out while one of its jobs runs (a
    /// nested split runs on the caller alone).
    static TEAM: RefCell<Option<Arc<Team>>> = const { RefCell::new(None) };
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

/// [`on_caller_thread`], with `team` lending its helpers to the kernels
/// that split through [`split_rows`] (the batch-1 convolutions).
pub fn on_team<R>(team: &Arc<Team>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Team>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TEAM.with(|t| *t.borrow_mut() = self.0.take());
        }
    }
    team.prime();
    let _restore = Restore(TEAM.with(|t| t.borrow_mut().replace(Arc::clone(team))));
    on_caller_thread(f)
}

/// The most members [`split_rows`] hands work to.
pub const MAX_TEAM: usize = 8;

/// Splits `rows` rows, at multiples of `align`, between the members of
/// the current [`on_team`] team (or runs them all here without one), and
/// calls `f(rows, a_part, b_part)` once per member with its rows of `a`
/// (`a_row` elements per row) and `b` (`b_row` per row). Members past
/// [`MAX_TEAM`] get nothing. Allocation-free.
pub fn split_rows<A: Send, B: Send>(
    rows: usize,
    align: usize,
    (a, a_row): (&mut [A], usize),
    (b, b_row): (&mut [B], usize),
    f: impl Fn(Range<usize>, &mut [A], &mut [B]) + Sync,
) {
    let team = TEAM.with(|t| t.borrow_mut().take());
    let Some(team) = team else {
        return f(0..rows, &mut a[..rows * a_row], &mut b[..rows * b_row]);
    };
    if team.size() == 1 || rows <= align {
        f(0..rows, &mut a[..rows * a_row], &mut b[..rows * b_row]);
        TEAM.with(|t| *t.borrow_mut() = Some(team));
        return;
    }
    let blocks = rows.div_ceil(align);
    let members = team.size().min(blocks).min(MAX_TEAM);
    // Member m takes blocks [m·blocks/members, (m+1)·blocks/members).
    let bound = |m: usize| (m * blocks / members * align).min(rows);
    /// One member's rows of `a` and `b`, taken by that member.
    type Cell<'a, A, B> = Mutex<Option<(&'a mut [A], &'a mut [B])>>;
    let cells: [Cell<A, B>; MAX_TEAM] = std::array::from_fn(|_| Mutex::new(None));
    let (mut a, mut b) = (&mut a[..rows * a_row], &mut b[..rows * b_row]);
    for (m, cell) in cells.iter().enumerate().take(members) {
        let n = bound(m + 1) - bound(m);
        let (ah, at) = std::mem::take(&mut a).split_at_mut(n * a_row);
        let (bh, bt) = std::mem::take(&mut b).split_at_mut(n * b_row);
        *cell.lock().expect("split cell") = Some((ah, bh));
        (a, b) = (at, bt);
    }
    team.run(&|m| {
        if m < members {
            if let Some((a, b)) = cells[m].lock().expect("split cell").take() {
                f(bound(m)..bound(m + 1), a, b);
            }
        }
    });
    TEAM.with(|t| *t.borrow_mut() = Some(team));
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
    fn split_rows_covers_every_row_once_on_a_team_and_alone() {
        let team = Arc::new(Team::new(2, super::super::team::DEFAULT_SPIN).unwrap());
        for (rows, align) in [(64, 6), (32, 8), (7, 6), (5, 8), (13, 1)] {
            for with_team in [false, true] {
                let (mut a, mut b) = (vec![0.0f32; rows * 3], vec![0.0f32; rows * 2]);
                let go = |a: &mut Vec<f32>, b: &mut Vec<f32>| {
                    split_rows(rows, align, (a, 3), (b, 2), |r, a, b| {
                        assert_eq!(a.len(), r.len() * 3);
                        assert_eq!(b.len(), r.len() * 2);
                        assert!(r.start % align == 0);
                        for (i, row) in r.clone().zip(a.chunks_mut(3)) {
                            row.fill(i as f32 + 1.0);
                        }
                        for (i, row) in r.zip(b.chunks_mut(2)) {
                            row.fill(-(i as f32) - 1.0);
                        }
                    })
                };
                if with_team {
                    on_team(&team, || go(&mut a, &mut b));
                } else {
                    go(&mut a, &mut b);
                }
                for i in 0..rows {
                    assert!(a[i * 3..][..3].iter().all(|&v| v == i as f32 + 1.0));
                    assert!(b[i * 2..][..2].iter().all(|&v| v == -(i as f32) - 1.0));
                }
            }
        }
    }

    #[test]
    fn a_split_too_small_to_share_leaves_the_team_to_the_next() {
        let team = Arc::new(Team::new(2, super::super::team::DEFAULT_SPIN).unwrap());
        on_team(&team, || {
            let (mut a, mut b) = ([0.0f32; 1], [0u32; 1]);
            split_rows(1, 1, (&mut a[..], 1), (&mut b[..], 1), |_, _, _| {});
            // Still on the team: the next split comes in two shares (which
            // thread runs each is the team's business: see `Team::run`).
            let shares = std::sync::atomic::AtomicUsize::new(0);
            let (mut a, mut b) = (vec![0.0f32; 8], vec![0u32; 8]);
            split_rows(8, 1, (&mut a, 1), (&mut b, 1), |rows, _, _| {
                assert_eq!(rows.len(), 4);
                shares.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            assert_eq!(shares.into_inner(), 2, "the second split ran unshared");
        });
    }

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
