//! Crash-safe training, driven through the fault points of
//! `gpurt::testhook` (no sleeping and hoping):
//! - a run SIGKILLed at every point of training and checkpointing leaves a
//!   folder whose files agree with each other, and resuming it ends with
//!   the same weights and metrics, bit for bit, as a run never interrupted;
//! - a second training into a folder in use is refused, and a lock left by
//!   a killed run does not block;
//! - Ctrl-C saves, then exits 130.

use crate::common::mnist::tiny_mnist;
use gpurt::checkpoint::Checkpoint;
use gpurt::metrics::EpochMetrics;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EPOCHS: &str = "3";
/// Steps per epoch of the runs below: 432 training images, batch 16.
const STEPS_PER_EPOCH: usize = 27;

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: String,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    tiny_mnist(&root.join("mnist"), 480, 40);
    let data = format!("mnist:{}", root.join("mnist").display());
    Fixture {
        _tmp: t,
        root,
        data,
    }
}

fn args(f: &Fixture, out: &Path) -> Vec<String> {
    [
        "train", "--data", &f.data, "--model", "mlp", "--batch", "16", "--epochs", EPOCHS,
        "--seed", "9", "--quiet", "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn gpurt(args: &[String], envs: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gpurt"));
    c.args(args).envs(envs.iter().map(|(k, v)| (k, v)));
    c
}

fn run(args: &[String], envs: &[(&str, String)]) -> Output {
    gpurt(args, envs).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let w = gpurt::weights::load(&dir.join("model.safetensors")).unwrap();
    w.tensors
        .into_iter()
        .map(|(n, (t, _))| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn metrics(dir: &Path) -> Vec<EpochMetrics> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

/// Every file of a run folder says the same thing. Returns the checkpoint,
/// or None when no checkpoint was ever published.
fn check_agrees(dir: &Path, what: &str) -> Option<Checkpoint> {
    if !dir.join("checkpoint.json").exists() {
        for f in [
            "model.safetensors",
            "metrics.csv",
            "metrics.json",
            "training.png",
        ] {
            assert!(!dir.join(f).exists(), "{what}: {f} without a checkpoint");
        }
        return None;
    }
    let ck = Checkpoint::load(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    let top = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(
        top,
        std::fs::read(ck.model_file(dir)).unwrap(),
        "{what}: top-level weights are not the checkpoint's"
    );
    let optim = gpurt::weights::load(&ck.optim_file(dir)).unwrap();
    assert_eq!(optim.metadata["step"], ck.step.to_string(), "{what}");
    assert_eq!(
        ck.step as usize,
        ck.epoch * STEPS_PER_EPOCH + ck.batch,
        "{what}: step and epoch disagree"
    );
    let rows: Vec<usize> = metrics(dir).iter().map(|r| r.epoch).collect();
    assert_eq!(
        rows,
        (1..=ck.epoch).collect::<Vec<_>>(),
        "{what}: metrics.json"
    );
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + ck.epoch, "{what}: metrics.csv");
    assert!(dir.join("training.png").is_file(), "{what}: training.png");
    Some(ck)
}

#[test]
fn sigkill_at_every_fault_point_leaves_agreeing_files_and_resumes_exactly() {
    let f = fixture();
    let base = f.root.join("base");
    let o = run(&args(&f, &base), &[]);
    assert!(o.status.success(), "{}", text(&o));
    let want = weights(&base);
    let want_epochs: Vec<usize> = metrics(&base).iter().map(|r| r.epoch).collect();
    assert_eq!(want_epochs, [1, 2, 3]);

    let mut cases: Vec<String> = Vec::new();
    for p in gpurt::testhook::POINTS {
        // The first and second time: before and after a checkpoint exists
        // (the lock is taken once).
        cases.push(format!("{p}#1"));
        if *p != "locked" {
            cases.push(format!("{p}#2"));
        }
    }
    // Mid-epoch 2, with a checkpoint of epoch 1 in place.
    cases.push(format!("step#{}", STEPS_PER_EPOCH + 7));
    for case in &cases {
        let out = f.root.join(case.replace('#', "-"));
        let o = run(&args(&f, &out), &[("GPURT_TEST_KILL_AT", case.clone())]);
        assert_eq!(
            o.status.code(),
            None,
            "{case}: was not killed: {}",
            text(&o)
        );
        let resumed = match check_agrees(&out, case) {
            Some(_) => {
                let mut a = args(&f, &out);
                a.extend(["--resume".into(), out.display().to_string()]);
                run(&a, &[])
            }
            None => run(&args(&f, &out), &[]),
        };
        assert!(resumed.status.success(), "{case}: {}", text(&resumed));
        check_agrees(&out, case).expect("a finished run has a checkpoint");
        assert_eq!(
            weights(&out),
            want,
            "{case}: weights differ from the uninterrupted run"
        );
        let epochs: Vec<usize> = metrics(&out).iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, want_epochs, "{case}: metrics rows");
        let ckpts = std::fs::read_dir(out.join("ckpt")).unwrap().count();
        assert_eq!(ckpts, 1, "{case}: old checkpoint folders left behind");
    }
}

/// Start a training that stops at the n-th `point` until told to go on.
fn start_paused(args: &[String], point: &str, gate: &Path) -> Child {
    std::fs::create_dir_all(gate).unwrap();
    let child = gpurt(
        args,
        &[("GPURT_TEST_PAUSE_AT", format!("{point}:{}", gate.display()))],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    while !gate.join("paused").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn a_folder_in_use_is_refused_and_a_killed_runs_lock_is_not() {
    let f = fixture();
    let out = f.root.join("run");
    let gate = f.root.join("gate");
    let first = start_paused(&args(&f, &out), "step#2", &gate);
    let second = run(&args(&f, &out), &[]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let e = text(&second);
    assert!(
        e.contains("in use by another training") && e.contains(&format!("pid {}", first.id())),
        "{e}"
    );
    std::fs::write(gate.join("go"), "").unwrap();
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "the first run: {}", text(&o));
    check_agrees(&out, "after the first run").unwrap();

    // A run killed while holding the folder does not lock it for good.
    let out2 = f.root.join("run2");
    let gate2 = f.root.join("gate2");
    let mut killed = start_paused(&args(&f, &out2), "step#2", &gate2);
    signal(&killed, "-KILL");
    killed.wait().unwrap();
    let o = run(&args(&f, &out2), &[]);
    assert!(o.status.success(), "after a stale lock: {}", text(&o));
}

#[test]
fn ctrl_c_saves_then_exits_130() {
    let f = fixture();
    let out = f.root.join("run");
    let gate = f.root.join("gate");
    let mut child = start_paused(&args(&f, &out), "step#3", &gate);
    // The Ctrl-C handler runs on its own thread: release the run only once
    // it has seen the signal (it says so on stderr).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    signal(&child, "-INT");
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the Ctrl-C handler never reported");
        if line.contains("stopping after this batch") {
            break;
        }
    }
    std::fs::write(gate.join("go"), "").unwrap();
    let o = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        reader.join().unwrap()
    );
    assert_eq!(o.status.code(), Some(130), "{all}");
    assert!(all.contains("interrupted after epoch 1, batch 3"), "{all}");
    let ck = check_agrees(&out, "after Ctrl-C").unwrap();
    assert_eq!((ck.epoch, ck.batch, ck.step), (0, 3, 3));
    let mut a = args(&f, &out);
    a.extend(["--resume".into(), out.display().to_string()]);
    // A mid-epoch checkpoint of a 2-rank run does not resume in one
    // process: each rank's batches would no longer be the ones it left.
    let record = std::fs::canonicalize(out.join("checkpoint.json")).unwrap();
    let json = std::fs::read_to_string(&record).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["world"] = 2.into();
    std::fs::write(&record, v.to_string()).unwrap();
    let o = run(&a, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("with 2 rank(s); resume it with the same number of ranks (got 1)"),
        "{}",
        text(&o)
    );
    std::fs::write(&record, json).unwrap();
    let o = run(&a, &[]);
    assert!(o.status.success(), "{}", text(&o));
}
