//! Fault points for the crash tests: named places in training and
//! checkpointing where a test can make the process die or wait, so every
//! kill window is reached deterministically instead of by sleeping.
//!
//! Compiled in only with the `test-hooks` cargo feature, which the tests
//! enable; even then inert unless `GPURT_TEST_KILL_AT` or
//! `GPURT_TEST_PAUSE_AT` is set (read once; an unset point costs one atomic
//! load):
//! - `GPURT_TEST_KILL_AT=point` or `point#n`: SIGKILL this process the n-th
//!   time (default first) it reaches `point`.
//! - `GPURT_TEST_PAUSE_AT=point#n:DIR`: the n-th time, create `DIR/paused`
//!   and wait until `DIR/go` exists.
//!
//! - `GPURT_TEST_RANK=r` with either: only rank `r` of a data-parallel run
//!   (as the launcher's environment numbers it) dies or waits.
//!
//! Every point reached is also printed to stderr as `testhook: point` when
//! either variable is set, so a test can follow the run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// Every fault point, in the order a training run reaches them.
pub const POINTS: &[&str] = &[
    "locked",
    "step",
    "ckpt-begin",
    "ckpt-optim-written",
    "ckpt-model-written",
    "ckpt-metrics-written",
    "ckpt-folder-renamed",
    "ckpt-committed",
    "ckpt-linked",
    "ckpt-cleaned",
];

struct Hooks {
    kill: Option<(String, usize)>,
    pause: Option<(String, usize, PathBuf)>,
    seen: Mutex<HashMap<&'static str, usize>>,
}

fn parse_point(s: &str) -> (String, usize) {
    match s.split_once('#') {
        Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
        None => (s.to_string(), 1),
    }
}

fn hooks() -> Option<&'static Hooks> {
    static HOOKS: OnceLock<Option<Hooks>> = OnceLock::new();
    HOOKS
        .get_or_init(|| {
            let this_rank = crate::dist::launcher_env().map_or(0, |(r, _)| r);
            let for_me = std::env::var("GPURT_TEST_RANK")
                .ok()
                .and_then(|r| r.parse::<usize>().ok())
                .is_none_or(|r| r == this_rank);
            let kill = std::env::var("GPURT_TEST_KILL_AT")
                .ok()
                .filter(|_| for_me)
                .map(|s| parse_point(&s));
            let pause = std::env::var("GPURT_TEST_PAUSE_AT")
                .ok()
                .filter(|_| for_me)
                .and_then(|s| {
                    let (point, dir) = s.split_once(':')?;
                    let (p, n) = parse_point(point);
                    Some((p, n, PathBuf::from(dir)))
                });
            (kill.is_some() || pause.is_some()).then(|| Hooks {
                kill,
                pause,
                seen: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
}

/// Mark that the run reached `point` (one of [`POINTS`]). Without the
/// `test-hooks` feature this is empty.
#[inline]
pub fn point(point: &'static str) {
    if cfg!(feature = "test-hooks") {
        reached(point);
    }
}

fn reached(point: &'static str) {
    let Some(h) = hooks() else { return };
    debug_assert!(POINTS.contains(&point), "unknown test point {point}");
    let n = {
        let mut seen = h.seen.lock().unwrap_or_else(|e| e.into_inner());
        let c = seen.entry(point).or_insert(0);
        *c += 1;
        *c
    };
    eprintln!("testhook: {point}");
    if let Some((p, at)) = &h.kill {
        if p == point && *at == n {
            kill_self();
        }
    }
    if let Some((p, at, dir)) = &h.pause {
        if p == point && *at == n {
            let _ = std::fs::write(dir.join("paused"), std::process::id().to_string());
            while !dir.join("go").exists() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// Die as `kill -9` would: no destructors, no buffered writes flushed.
fn kill_self() -> ! {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
    }
    std::process::abort()
}
