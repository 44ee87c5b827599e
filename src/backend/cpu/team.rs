//! A small, latency-first thread team for batch-1 inference.
//!
//! Handing half a batch-1 convolution to rayon's pool costs more than the
//! half is worth: an idle pool thread sleeps, and waking it (a futex, then
//! a halted vCPU to resume) took tens of microseconds here, the whole
//! layer's time. A [`Team`] keeps its helpers spinning for a short while
//! after each job (as OpenMP runtimes do: `GOMP_SPINCOUNT`,
//! `KMP_BLOCKTIME`), so a job handed over within that window starts in
//! well under a microsecond; past it the helpers park and cost nothing.
//! [`Team::prime`] wakes parked helpers ahead of the first job of a call,
//! so their wake-up overlaps the caller's own work.
//!
//! A job is split into one share per member, and a share goes to whoever
//! claims it first: a helper claims its own when it sees the job, and the
//! caller, once its own share is done, takes every share not yet claimed.
//! So a helper that is slow to come (parked, or without a core of its own:
//! the process confined to fewer cores than members, or its vCPU not
//! running) costs the caller its share's time, never a wait for the
//! helper. While it waits for shares helpers hold, the caller yields the
//! core now and then, as helpers do while they spin, so that a member
//! sharing its core gets to finish. (Without this, a 2-member predictor
//! confined to one core took 8 ms per batch-1 CNN inference instead of
//! 59 µs: the caller spun through its time slice waiting for a helper
//! that could not run.)
//!
//! Kernels reach the team of the current call through
//! [`super::par::split_rows`]; a predictor built with
//! [`crate::embed::Predictor::threads`] owns one.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// A job: called once per member with the member's index (0 = caller).
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// The caller plus `size - 1` helper threads.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    threads: Vec<Thread>,
    /// Shares per job: the caller's and one per helper.
    size: usize,
}

struct Shared {
    /// Bumped once per job; helpers start when it moves.
    epoch: AtomicU64,
    /// The current job, valid while its epoch's `done` count is short.
    job: Mutex<Option<&'static Job<'static>>>,
    /// The current job's epoch (bits 8 and up) and the shares claimed
    /// (bit `member`): a claim is a compare-and-swap that fails once the
    /// epoch has moved on, so a helper late for one job cannot take a
    /// share of the next with the old job in hand.
    claims: AtomicU64,
    /// Shares of the current job finished, by whoever ran them.
    done: AtomicUsize,
    /// A helper's panic message, re-raised on the caller.
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// Helpers parked (not spinning).
    parked: AtomicUsize,
    stop: AtomicBool,
    spin: Duration,
}

/// How long helpers spin after a job before parking, unless the team is
/// built with another: long enough to cover the gap between the layers of
/// one call and between back-to-back calls, short enough that an idle
/// service gives its cores back almost at once.
pub const DEFAULT_SPIN: Duration = Duration::from_millis(1);

impl Team {
    /// A team of `size` members (the caller and `size - 1` helpers).
    pub fn new(size: usize, spin: Duration) -> std::io::Result<Team> {
        assert!(
            size <= 8,
            "a team has at most 8 members (claims are 8 bits)"
        );
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            claims: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: Mutex::new(None),
            parked: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            spin,
        });
        let mut helpers = Vec::new();
        for member in 1..size.max(1) {
            let s = Arc::clone(&shared);
            helpers.push(
                std::thread::Builder::new()
                    .name(format!("gpurt-team-{member}"))
                    .spawn(move || s.serve(member))?,
            );
        }
        let threads = helpers.iter().map(|h| h.thread().clone()).collect();
        Ok(Team {
            shared,
            helpers,
            threads,
            size: size.max(1),
        })
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Wakes parked helpers, so that they are spinning by the time the
    /// next job comes.
    pub fn prime(&self) {
        if self.shared.parked.load(SeqCst) > 0 {
            for t in &self.threads {
                t.unpark();
            }
        }
    }

    /// Runs `job(share)` for every share `0..size`, the caller's share
    /// and every share no helper has claimed on this thread, and returns
    /// when all are done. A helper's panic is raised here.
    pub fn run(&self, job: &Job<'_>) {
        let shares = self.size();
        if shares == 1 {
            return job(0);
        }
        // SAFETY: a helper calls `job` only for a share it claimed under
        // this job's epoch, and this function does not return (not even by
        // unwinding: every share's panic is caught) until every share has
        // been counted done, so the borrow outlives every use.
        let erased: &'static Job<'static> =
            unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        *self.shared.job.lock().expect("team job lock") = Some(erased);
        self.shared.done.store(0, SeqCst);
        let epoch = self.shared.epoch.load(SeqCst) + 1;
        // Share 0 is the caller's from the start.
        self.shared.claims.store(epoch << 8 | 1, SeqCst);
        self.shared.epoch.store(epoch, SeqCst);
        self.prime();
        let mut mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        self.shared.done.fetch_add(1, SeqCst);
        for share in 1..shares {
            if self.shared.claim(epoch, share) {
                let r = catch_unwind(AssertUnwindSafe(|| job(share)));
                self.shared.done.fetch_add(1, SeqCst);
                if mine.is_ok() {
                    mine = r;
                }
            }
        }
        let mut polls = 0u32;
        while self.shared.done.load(SeqCst) < shares {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(YIELD_EVERY) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *self.shared.job.lock().expect("team job lock") = None;
        let helper_panic = self.shared.panicked.lock().expect("team lock").take();
        if let Some(p) = helper_panic {
            resume_unwind(p);
        }
        if let Err(p) = mine {
            resume_unwind(p);
        }
    }
}

/// Spin polls between two `yield_now` calls of a waiting member: rare
/// enough to cost nothing measurable on a core of its own (a `sched_yield`
/// with nothing else to run returns at once), often enough that a member
/// sharing a core with the one it waits for lets it run.
const YIELD_EVERY: u32 = 256;

impl Shared {
    /// Claims `share` of the job of `epoch`; false if it is taken or that
    /// job is over.
    fn claim(&self, epoch: u64, share: usize) -> bool {
        let bit = 1u64 << share;
        let mut c = self.claims.load(SeqCst);
        loop {
            if c >> 8 != epoch || c & bit != 0 {
                return false;
            }
            match self.claims.compare_exchange(c, c | bit, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }

    /// A helper's loop: spin for a new epoch, claim its share and run it
    /// (unless the caller took it first), count it done; park after
    /// `spin` without a job.
    fn serve(&self, member: usize) {
        let mut seen = 0u64;
        let mut idle_since = Instant::now();
        let mut polls = 0u32;
        loop {
            let now = self.epoch.load(SeqCst);
            if self.stop.load(SeqCst) {
                return;
            }
            if now != seen {
                seen = now;
                // Claim first: a claim under this epoch holds the caller,
                // so the job read next is this epoch's.
                if self.claim(now, member) {
                    let job = *self.job.lock().expect("team job lock");
                    if let Some(job) = job {
                        if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(member))) {
                            *self.panicked.lock().expect("team lock") = Some(p);
                        }
                    }
                    self.done.fetch_add(1, SeqCst);
                }
                idle_since = Instant::now();
                continue;
            }
            if idle_since.elapsed() < self.spin {
                // Read the clock once per 64 polls of the epoch (a `pause`
                // is tens of cycles on some cores; a clock read more), and
                // yield now and then (see `YIELD_EVERY`).
                for _ in 0..64 {
                    if self.epoch.load(SeqCst) != seen {
                        break;
                    }
                    std::hint::spin_loop();
                }
                polls = polls.wrapping_add(64);
                if polls.is_multiple_of(YIELD_EVERY) {
                    std::thread::yield_now();
                }
                continue;
            }
            // Park, unless a job came in since the check above (the caller
            // bumps the epoch, then reads `parked`: one of the two sees
            // the other). No timeout: an idle team costs nothing; a job,
            // `prime` or drop unparks, after which the helper spins again.
            self.parked.fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == seen && !self.stop.load(SeqCst) {
                std::thread::park();
            }
            self.parked.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("size", &self.size())
            .field("spin", &self.shared.spin)
            .finish()
    }
}

/// Whether a caller's calls run on its team or alone, chosen by their
/// measured times. A team is not always faster: where the cores move cache
/// lines between them slowly (this VM, at times: batch-1 CIFAR CNN 70 µs
/// on a team of two against 59 alone, 35 against 59 at other times), the
/// members' shared data costs more than the split saves, and which case a
/// process is in can change while it runs. So the caller keeps the last
/// times of each way, tries the other way for [`PROBE`] calls every
/// [`PERIOD`], and runs the way whose median is lower (by 3% at least, so
/// that noise does not make it flip). Allocation-free.
#[derive(Clone, Debug)]
pub struct TeamChoice {
    on_team: bool,
    /// Calls since the last probe ended.
    calls: u32,
    /// Calls left in the current probe (of the other way), 0 outside one.
    probe: u32,
    /// The last [`KEPT`] times of each way: `[alone, team]`.
    times: [[f64; KEPT]; 2],
    kept: [usize; 2],
}

/// Calls between two probes of the way not in use: few enough that the
/// probes, 0.3% of the calls, stay out of the 99th percentile (one in 44
/// calls, 2.3%, raised it from 52 to 61 µs where the team was faster).
pub const PERIOD: u32 = 4096;
/// Calls per probe; the first [`WARM_UP`] are not counted (a parked
/// helper's wake-up, cold caches).
pub const PROBE: u32 = 12;
const WARM_UP: u32 = 4;
/// Times kept per way.
const KEPT: usize = 16;
/// Calls before the first probe.
const FIRST_PROBE: u32 = 64;

impl Default for TeamChoice {
    fn default() -> Self {
        TeamChoice {
            on_team: true,
            calls: 0,
            // The first probe comes early: after a few team calls.
            probe: 0,
            times: [[0.0; KEPT]; 2],
            kept: [0; 2],
        }
    }
}

impl TeamChoice {
    /// Whether the next call runs on the team.
    pub fn use_team(&self) -> bool {
        self.on_team != (self.probe > 0)
    }

    /// Records the last call's time (seconds) and picks the next call's way.
    pub fn record(&mut self, secs: f64) {
        let way = usize::from(self.use_team());
        let counted = self.probe == 0 || self.probe <= PROBE - WARM_UP;
        if counted {
            let k = self.kept[way] % KEPT;
            self.times[way][k] = secs;
            self.kept[way] += 1;
        }
        if self.probe > 0 {
            self.probe -= 1;
            if self.probe == 0 {
                self.decide();
            }
            return;
        }
        self.calls += 1;
        // The first probe soon (once the first calls' wake-ups and cold
        // caches are out of the kept times), then every PERIOD.
        let due = if self.kept[usize::from(!self.on_team)] == 0 {
            FIRST_PROBE
        } else {
            PERIOD
        };
        if self.calls >= due {
            self.calls = 0;
            self.probe = PROBE;
            // The probed way is judged on this probe's times alone: times
            // kept from before (when it may have been slower, the reason
            // it was left) held its median there.
            self.kept[usize::from(!self.on_team)] = 0;
        }
    }

    fn median(&self, way: usize) -> f64 {
        let n = self.kept[way].min(KEPT);
        let mut t = self.times[way];
        let t = &mut t[..n];
        t.sort_by(f64::total_cmp);
        t[n / 2]
    }

    fn decide(&mut self) {
        let (cur, other) = (usize::from(self.on_team), usize::from(!self.on_team));
        if self.kept[cur] == 0 || self.kept[other] == 0 {
            return;
        }
        if self.median(other) < 0.97 * self.median(cur) {
            self.on_team = !self.on_team;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_member_runs_each_job_once() {
        let team = Team::new(3, DEFAULT_SPIN).unwrap();
        for round in 0..200u32 {
            let hits: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
            team.run(&|m| {
                hits[m].fetch_add(round + 1, SeqCst);
            });
            for h in &hits {
                assert_eq!(h.load(SeqCst), round + 1);
            }
        }
    }

    /// Shares no helper claims are run by the caller: a team whose helper
    /// never comes (as on a core it shares with the caller, or a vCPU not
    /// running) still finishes every job, each share once, on the caller.
    #[test]
    fn the_caller_runs_the_shares_no_helper_claims() {
        let shared = Team::new(1, DEFAULT_SPIN).unwrap().shared.clone();
        let absent = Team {
            shared,
            helpers: Vec::new(),
            threads: Vec::new(),
            size: 3,
        };
        let me = std::thread::current().id();
        for round in 0..50u32 {
            let hits: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
            absent.run(&|m| {
                assert_eq!(std::thread::current().id(), me);
                hits[m].fetch_add(round + 1, SeqCst);
            });
            for h in &hits {
                assert_eq!(h.load(SeqCst), round + 1);
            }
        }
    }

    /// Runs `calls` calls whose times `time(on_team)` gives; returns how
    /// many ran on the team.
    fn drive(c: &mut TeamChoice, calls: usize, time: impl Fn(bool) -> f64) -> usize {
        (0..calls)
            .map(|_| {
                let team = c.use_team();
                c.record(time(team));
                usize::from(team)
            })
            .sum()
    }

    #[test]
    fn the_faster_way_is_kept_and_the_other_probed_now_and_then() {
        // The team faster: nearly every call on it, the probes alone.
        let mut c = TeamChoice::default();
        let n = 4 * PERIOD as usize;
        let on_team = drive(&mut c, n, |t| if t { 35e-6 } else { 59e-6 });
        assert!(c.use_team());
        assert!(on_team >= n - 6 * PROBE as usize, "{on_team} of {n}");
        assert!(on_team < n, "alone was never probed");
        // The team slower (a slow placement): alone from the first probe on.
        let mut c = TeamChoice::default();
        let on_team = drive(&mut c, n, |t| if t { 70e-6 } else { 59e-6 });
        assert!(!c.use_team());
        assert!(
            on_team <= FIRST_PROBE as usize + 6 * PROBE as usize,
            "{on_team} of {n}"
        );
        // And back at the next probe when the team is faster again (the
        // slow times from before do not count).
        let back = PERIOD as usize + 2 * PROBE as usize;
        drive(&mut c, back, |t| if t { 35e-6 } else { 59e-6 });
        assert!(c.use_team());
        // Within 3%: no flip.
        let mut c = TeamChoice::default();
        drive(&mut c, n, |t| if t { 60e-6 } else { 59e-6 });
        assert!(c.use_team());
    }

    #[test]
    fn parked_helpers_wake_for_the_next_job() {
        let team = Team::new(2, Duration::from_micros(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while team.shared.parked.load(SeqCst) == 0 {
            assert!(Instant::now() < deadline, "an idle helper never parked");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Parked for good (no timed wake-ups that would spin again).
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(team.shared.parked.load(SeqCst), 1);
        let hit = AtomicU32::new(0);
        team.run(&|m| {
            hit.fetch_add(m as u32 + 1, SeqCst);
        });
        assert_eq!(hit.load(SeqCst), 3);
    }

    #[test]
    fn a_helpers_panic_reaches_the_caller_and_the_team_still_works() {
        let team = Team::new(2, DEFAULT_SPIN).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|m| assert_ne!(m, 1, "helper fails"));
        }));
        assert!(r.is_err());
        let hit = AtomicU32::new(0);
        team.run(&|_| {
            hit.fetch_add(1, SeqCst);
        });
        assert_eq!(hit.load(SeqCst), 2);
    }
}
