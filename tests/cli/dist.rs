//! Data-parallel training under a real MPI launcher (`mpirun -n 2` on this
//! machine, Open MPI in CI):
//! - 2 ranks at batch 32 end 20 steps with the weights of 1 process at
//!   batch 64, to 1e-6 of each tensor's largest value (not bit for bit:
//!   each rank sums its 32 rows' gradients before the ranks' sums are
//!   added, a different order of f32 additions than one sum of 64);
//! - a rank killed mid-epoch ends the job within a bounded time with the
//!   last checkpoint intact, and resuming under `mpirun` ends bit-identical
//!   to a run never interrupted;
//! - a rank that hangs makes the others stop after `--dist-timeout`.
//!
//! They need a build with `--features mpi` and `mpirun` on the PATH; else
//! they print SKIPPED, or fail where CI sets `GPURT_REQUIRE_MPI=1`.

use crate::common::mnist::tiny_mnist;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `mpirun` with what it needs here (root in containers, more ranks than
/// cores), or None with a SKIPPED line.
fn mpirun(test: &str) -> Option<Command> {
    let have = cfg!(feature = "mpi")
        && Command::new("mpirun")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !have {
        let why = if cfg!(feature = "mpi") {
            "mpirun is not on the PATH (apt-get install openmpi-bin)"
        } else {
            "built without --features mpi"
        };
        assert!(
            std::env::var("GPURT_REQUIRE_MPI").as_deref() != Ok("1"),
            "{test}: GPURT_REQUIRE_MPI=1 but {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-n", "2"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // One thread per rank: two ranks share this machine's cores.
        .env("RAYON_NUM_THREADS", "1");
    Some(c)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: String,
}

fn fixture(train: usize) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().to_path_buf();
    tiny_mnist(&root.join("mnist"), train, 40);
    let data = format!("mnist:{}", root.join("mnist").display());
    Fixture {
        _tmp: t,
        root,
        data,
    }
}

fn train_args(f: &Fixture, out: &Path, batch: usize, extra: &[&str]) -> Vec<String> {
    let b = batch.to_string();
    let mut a: Vec<String> = [
        "train", "--data", &f.data, "--batch", &b, "--seed", "5", "--quiet", "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<(String, Vec<f32>)> = gpurt::weights::load(&dir.join("model.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, (t, _))| (n, t.data))
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// The flags of a short SGD run of `model`, then `extra`: one epoch, no
/// validation split (20 steps of global batch 64 over 1280 images).
fn sgd_steps<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--model",
        model,
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--epochs",
        "1",
        "--val-split",
        "0",
    ];
    a.extend_from_slice(extra);
    a
}

/// 20 steps: 1280 training images, no validation split, global batch 64.
#[test]
fn two_ranks_match_one_process_at_twice_the_batch() {
    let Some(mut mpi) = mpirun("two_ranks_match_one_process_at_twice_the_batch") else {
        return;
    };
    let f = fixture(1280);
    for model in ["mlp", "cnn"] {
        let common = sgd_steps(model, &[]);
        let (two, one) = (
            f.root.join(format!("two-{model}")),
            f.root.join(format!("one-{model}")),
        );
        let o = mpi
            .arg(env!("CARGO_BIN_EXE_gpurt"))
            .args(train_args(&f, &two, 32, &common))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("data-parallel: 2 ranks over mpi"),
            "{}",
            text(&o)
        );
        mpi = mpirun("again").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
            .env("RAYON_NUM_THREADS", "1")
            .args(train_args(&f, &one, 64, &common))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let init = {
            let decls = gpurt::nn::ModelSpec::resolve(model, 10)
                .unwrap()
                .declare(&[1, 28, 28])
                .unwrap();
            gpurt::nn::init::init_params(&decls, 5)
        };
        let (a, b) = (tensors(&two), tensors(&one));
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            eprintln!(
                "{model} {name}: max |2 ranks - 1 process| / max |w| = {:.2e}",
                diff / scale
            );
            assert!(
                diff <= 1e-6 * scale,
                "{model} {name}: {diff} vs scale {scale}"
            );
            let (_, start) = init.iter().find(|(n, _)| n == name).unwrap();
            assert!(start.data != *y, "{model} {name}: did not train");
        }
    }
}

/// Kill rank 1 at the 10th step of epoch 2: `mpirun` ends the job (well
/// inside the bound), epoch 1's checkpoint is whole, and resuming under
/// `mpirun` ends with the weights of an uninterrupted 2-rank run.
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_exactly() {
    let Some(mpi) = mpirun("a_killed_rank_ends_the_job_and_the_run_resumes_exactly") else {
        return;
    };
    // 480 images, 10% validation: 432 train, 13 steps of 32 per epoch.
    let f = fixture(480);
    let common = ["--model", "mlp", "--epochs", "3"];
    let run = |mut c: Command, out: &Path, envs: &[(&str, &str)], extra: &[&str]| {
        let mut a = common.to_vec();
        a.extend_from_slice(extra);
        c.arg(env!("CARGO_BIN_EXE_gpurt"))
            .args(train_args(&f, out, 16, &a))
            .envs(envs.iter().copied());
        let t = Instant::now();
        (c.output().unwrap(), t.elapsed())
    };
    let whole = f.root.join("whole");
    let (o, _) = run(mpi, &whole, &[], &[]);
    assert!(o.status.success(), "{}", text(&o));

    let cut = f.root.join("cut");
    let (o, took) = run(
        mpirun("kill").unwrap(),
        &cut,
        &[("GPURT_TEST_KILL_AT", "step#23"), ("GPURT_TEST_RANK", "1")],
        &[],
    );
    assert!(
        !o.status.success(),
        "the job survived a dead rank: {}",
        text(&o)
    );
    assert!(took < Duration::from_secs(60), "took {took:?} to stop");
    let ck = gpurt::checkpoint::Checkpoint::load(&cut).unwrap();
    assert_eq!((ck.epoch, ck.batch), (1, 0), "{}", text(&o));
    let cut_str = cut.display().to_string();
    let (o, _) = run(
        mpirun("resume").unwrap(),
        &cut,
        &[],
        &["--resume", &cut_str],
    );
    assert!(o.status.success(), "{}", text(&o));
    let bits = |d: &Path| -> Vec<(String, Vec<u32>)> {
        tensors(d)
            .into_iter()
            .map(|(n, v)| (n, v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    assert!(
        bits(&cut) == bits(&whole),
        "resumed weights differ from the uninterrupted run's"
    );
}

/// Rank 1 stops answering (paused at a fault point): rank 0's watchdog
/// ends the job after --dist-timeout with a message that says why.
#[test]
fn a_hung_rank_is_stopped_by_the_watchdog() {
    let Some(mut mpi) = mpirun("a_hung_rank_is_stopped_by_the_watchdog") else {
        return;
    };
    let f = fixture(480);
    let gate = f.root.join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let out = f.root.join("hung");
    let t = Instant::now();
    let o = mpi
        .arg(env!("CARGO_BIN_EXE_gpurt"))
        .args(train_args(
            &f,
            &out,
            16,
            &["--model", "mlp", "--epochs", "1", "--dist-timeout", "2"],
        ))
        .env("GPURT_TEST_PAUSE_AT", format!("step#3:{}", gate.display()))
        .env("GPURT_TEST_RANK", "1")
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("waited") && text(&o).contains("--dist-timeout 2 s"),
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(40), "took {took:?}");
}

/// Without a launcher: `--world 2` says how to start the ranks, a bad
/// `--world` is refused, and neither touches the output folder. Any build.
#[test]
fn world_flag_is_checked_without_a_launcher() {
    let f = fixture(480);
    for (world, needle) in [
        ("2", "needs a launcher: run `mpirun -n 2"),
        ("two", "--world 'two': expected auto or a number"),
        ("0", "--world '0'"),
    ] {
        let out = f.root.join(format!("w{world}"));
        let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
            .args(train_args(
                &f,
                &out,
                16,
                &["--model", "mlp", "--world", world],
            ))
            .output()
            .unwrap();
        assert!(!o.status.success(), "{}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            e.lines()
                .any(|l| l.starts_with("error:") && l.contains(needle)),
            "{e}"
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(!out.exists(), "--world {world} wrote {}", out.display());
    }
    // A count that disagrees with the launcher's (its environment is read
    // before MPI starts, so no launcher is needed to reach this).
    let out = f.root.join("mismatch");
    let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(train_args(
            &f,
            &out,
            16,
            &["--model", "mlp", "--world", "3"],
        ))
        .env("OMPI_COMM_WORLD_RANK", "0")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("--world 3 but the launcher started 2 processes"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}

/// The host path of a device backend: 2 ranks on wgpu (lavapipe in CI)
/// against 2 ranks on the CPU, 20 SGD steps, to 1e-5 of each tensor's
/// largest value (the backends' kernels sum in different orders).
#[cfg(feature = "wgpu")]
#[test]
fn two_wgpu_ranks_train_as_two_cpu_ranks() {
    let test = "two_wgpu_ranks_train_as_two_cpu_ranks";
    if let Err(e) = gpurt::backend::wgpu::open(None) {
        assert!(
            std::env::var("GPURT_REQUIRE_WGPU").as_deref() != Ok("1"),
            "{test}: GPURT_REQUIRE_WGPU=1 but no wgpu adapter: {e}"
        );
        eprintln!("SKIPPED {test}: no wgpu adapter ({e})");
        return;
    }
    let Some(_) = mpirun(test) else { return };
    let f = fixture(1280);
    let mut runs = Vec::new();
    for device in ["wgpu", "cpu"] {
        let out = f.root.join(device);
        let common = sgd_steps("mlp", &["--device", device]);
        let o = mpirun(test)
            .unwrap()
            .arg(env!("CARGO_BIN_EXE_gpurt"))
            .args(train_args(&f, &out, 32, &common))
            .output()
            .unwrap();
        assert!(o.status.success(), "{device}: {}", text(&o));
        runs.push(tensors(&out));
    }
    for ((name, x), (_, y)) in runs[0].iter().zip(&runs[1]) {
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        eprintln!("{name}: max |wgpu - cpu| / max |w| = {:.2e}", diff / scale);
        assert!(diff <= 1e-5 * scale, "{name}: {diff} vs scale {scale}");
    }
}
