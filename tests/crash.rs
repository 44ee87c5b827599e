//! Crash-safe training: a run killed with SIGKILL mid-epoch, during a
//! checkpoint write, or just after one, resumes from the last complete
//! checkpoint and ends with the same weights, bit for bit, as a run that
//! was never interrupted.

mod common;

use common::mnist::tiny_mnist;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const EPOCHS: &str = "3";

fn args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train", "--data", data, "--model", "mlp", "--batch", "16", "--epochs", EPOCHS, "--seed",
        "9", "--out", out, "--quiet",
    ]
}

/// Run gpurt, and SIGKILL it `after_ms` after the `nth` line containing
/// `marker` (on stdout or stderr). Returns whether it was killed.
fn run_and_kill(
    args: &[&str],
    envs: &[(&str, &str)],
    marker: &str,
    nth: usize,
    after_ms: u64,
) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t1 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(t1.send(l)))
    });
    std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    let mut seen = 0;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(120)) {
        if line.contains(marker) {
            seen += 1;
            if seen == nth {
                std::thread::sleep(Duration::from_millis(after_ms));
                let killed = child.try_wait().unwrap().is_none();
                child.kill().unwrap(); // SIGKILL on Unix
                child.wait().unwrap();
                return killed;
            }
        }
    }
    child.wait().unwrap();
    false
}

fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let w = gpurt::weights::load(&dir.join("model.safetensors")).unwrap();
    w.tensors
        .into_iter()
        .map(|(n, (t, _))| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn resume(data: &str, out: &str) {
    let mut a = args(data, out);
    a.extend(["--resume", out]);
    let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(&a)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("resumed from"),
        "did not resume"
    );
}

#[test]
fn sigkill_at_three_points_then_resume_matches_uninterrupted() {
    let t = tempfile::tempdir().unwrap();
    let data_dir = t.path().join("mnist");
    tiny_mnist(&data_dir, 480, 40);
    let data = format!("mnist:{}", data_dir.display());

    let base = t.path().join("base");
    let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(args(&data, base.to_str().unwrap()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = weights(&base);

    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, usize, u64);
    let cases: [Case; 3] = [
        // Mid-epoch: about seven steps (of 27) into epoch 2, after the
        // first checkpoint is complete.
        (
            "mid-epoch",
            &[
                ("GPURT_TEST_CHECKPOINT_DELAY_MS", "0"),
                ("GPURT_TEST_STEP_DELAY_MS", "20"),
            ],
            "checkpoint: saved",
            1,
            150,
        ),
        // During the second checkpoint's write (weights half written).
        (
            "during checkpoint write",
            &[("GPURT_TEST_CHECKPOINT_DELAY_MS", "3000")],
            "checkpoint: writing",
            2,
            200,
        ),
        // Just after the first checkpoint completed.
        (
            "just after a checkpoint",
            &[
                ("GPURT_TEST_CHECKPOINT_DELAY_MS", "0"),
                ("GPURT_TEST_STEP_DELAY_MS", "20"),
            ],
            "checkpoint: saved",
            1,
            0,
        ),
    ];
    for (name, envs, marker, nth, after) in cases {
        let out = t.path().join(name.replace(' ', "-"));
        let killed = run_and_kill(
            &args(&data, out.to_str().unwrap()),
            envs,
            marker,
            nth,
            after,
        );
        assert!(killed, "{name}: the run finished before it could be killed");
        resume(&data, out.to_str().unwrap());
        assert_eq!(
            weights(&out),
            want,
            "{name}: resumed weights differ from the uninterrupted run"
        );
    }
}
