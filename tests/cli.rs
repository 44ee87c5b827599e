//! The built `gpurt` binary, end to end: help, a short train, eval,
//! predict, resume, and every bad input the user can give it. Each failure
//! must be one clear line on stderr and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::mnist::{idx_images, idx_labels, tiny_mnist};

#[path = "cli/crash.rs"]
mod crash;
#[path = "cli/cuda.rs"]
mod cuda;
#[path = "cli/dist.rs"]
mod dist;
#[path = "cli/properties.rs"]
mod properties;
#[path = "cli/reliability.rs"]
mod reliability;
#[path = "cli/text.rs"]
mod text;
#[path = "cli/wgpu.rs"]
mod wgpu;

fn gpurt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(args)
        .output()
        .expect("run gpurt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn data_arg(dir: &Path) -> String {
    format!("mnist:{}", dir.display())
}

fn assert_fails_with(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got success; stdout: {}",
        stdout(o)
    );
    let e = stderr(o);
    assert!(!e.contains("panicked"), "panic instead of an error: {e}");
    let last = e
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect::<Vec<_>>();
    assert_eq!(last.len(), 1, "expected one error line, got: {e}");
    for n in needles {
        assert!(
            last[0].contains(n),
            "error line {:?} does not mention {n:?}",
            last[0]
        );
    }
}

/// `gpurt train` on the dataset in `data`, quiet, into `out`, with `extra`.
fn train_on(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let d = data_arg(data);
    let base = ["train", "--data", d.as_str(), "--quiet", "--out", path(out)];
    gpurt(&[&base[..], extra].concat())
}

#[test]
fn help_lists_commands_and_options() {
    let o = gpurt(&["--help"]);
    assert!(o.status.success());
    for c in ["train", "eval", "predict", "devices"] {
        assert!(stdout(&o).contains(c), "--help lacks {c}");
    }
    let o = gpurt(&["train", "--help"]);
    for opt in [
        "--model",
        "--data",
        "--epochs",
        "--batch",
        "--optimizer",
        "--lr",
        "--lr-schedule",
        "--warmup",
        "--weight-decay",
        "--seed",
        "--device",
        "--out",
        "--resume",
        "--val-split",
    ] {
        assert!(stdout(&o).contains(opt), "train --help lacks {opt}");
    }
}

#[test]
fn bad_arguments_exit_non_zero() {
    assert!(!gpurt(&["train", "--epochs", "many"]).status.success());
    assert_fails_with(&gpurt(&["train", "--optimizer", "adagrad"]), &["adagrad"]);
    assert_fails_with(&gpurt(&["train", "--device", "tpu"]), &["tpu"]);
    assert_fails_with(&gpurt(&["train", "--data", "imagenet:/x"]), &["imagenet"]);
    assert!(!gpurt(&["frobnicate"]).status.success());
    assert_fails_with(
        &gpurt(&[
            "serve",
            "--run",
            env!("CARGO_MANIFEST_DIR"),
            "--threads-per-worker",
            "0",
        ]),
        &["--threads-per-worker must be at least 1"],
    );
}

/// `GPURT_CPU_ISA`: a forced set shows in the device line; a misspelt one
/// or one this CPU lacks stops the CLI with one error line.
#[test]
fn cpu_instruction_set_is_forced_or_refused() {
    let with = |v: &str| {
        Command::new(env!("CARGO_BIN_EXE_gpurt"))
            .arg("devices")
            .env("GPURT_CPU_ISA", v)
            .output()
            .expect("run gpurt")
    };
    let o = with("scalar");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("cpu (") && stdout(&o).contains(", scalar"),
        "{}",
        stdout(&o)
    );
    let o = with("sse9");
    assert_eq!(o.status.code(), Some(2));
    assert_fails_with(&o, &["GPURT_CPU_ISA='sse9'", "avx2"]);
    #[cfg(target_arch = "x86_64")]
    {
        let o = with("neon");
        assert_eq!(o.status.code(), Some(2));
        assert_fails_with(&o, &["cannot run neon", "scalar"]);
    }
}

#[test]
fn devices_reports_cpu_and_auto() {
    let o = gpurt(&["devices"]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.contains("cpu") && s.contains("auto ->"), "{s}");
    assert!(s.contains("cuda") && s.contains("unavailable"), "{s}");
}

#[test]
fn train_eval_predict_resume() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 640, 200);
    let out = t.path().join("run");
    let common = [
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--batch",
        "32",
        "--quiet",
        "--seed",
        "5",
    ];
    let o = gpurt(
        &[
            &["train", "--epochs", "2", "--out", out.to_str().unwrap()],
            &common[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("epoch 1/2") && s.contains("epoch 2/2") && s.contains("val loss"),
        "{s}"
    );
    for f in [
        "model.safetensors",
        "checkpoint.json",
        "metrics.csv",
        "metrics.json",
        "training.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ck = gpurt::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!((ck.epoch, ck.batch), (2, 0));
    assert!(ck.model_file(&out).exists() && ck.optim_file(&out).exists());
    let test_line = s.lines().find(|l| l.starts_with("test:")).unwrap();
    let acc = test_line
        .split("accuracy ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .to_string();

    // eval reproduces the trainer's test accuracy.
    let o = gpurt(&["eval", "--run", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("accuracy {acc}%")),
        "eval: {} vs trainer {acc}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("precision") && stdout(&o).contains("recall"));
    let o = gpurt(&["eval", "--run", out.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("eval --json is JSON");
    assert!(v["report"]["macro_f1"].as_f64().is_some());

    // predict on an IDX file and on a PNG.
    let o = gpurt(&[
        "predict",
        "--run",
        out.to_str().unwrap(),
        "--top-k",
        "2",
        data.join("t10k-images-idx3-ubyte").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 200);
    let png = t.path().join("digit.png");
    gpurt::data::save_png_gray(&png, 28, 28, &idx_images(1, 9)[16..]).unwrap();
    let o = gpurt(&[
        "predict",
        "--run",
        out.to_str().unwrap(),
        "--json",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["top"].as_array().unwrap().len(), 3);

    // Resume: 1 epoch, then resume to 2, equals the uninterrupted 2-epoch run.
    let out1 = t.path().join("run1");
    let o = gpurt(
        &[
            &["train", "--epochs", "1", "--out", out1.to_str().unwrap()],
            &common[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gpurt(
        &[
            &[
                "train",
                "--epochs",
                "2",
                "--out",
                out1.to_str().unwrap(),
                "--resume",
                out1.to_str().unwrap(),
            ],
            &common[..],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let a = gpurt::weights::load(&out.join("model.safetensors")).unwrap();
    let b = gpurt::weights::load(&out1.join("model.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, (ta, _)) in &a.tensors {
        let tb = &b.tensors[name].0;
        assert!(
            ta.data
                .iter()
                .zip(&tb.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs after resume"
        );
    }
}

fn expect_data_error(setup: impl Fn(&Path), needles: &[&str]) {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 100, 20);
    setup(&data);
    let out = t.path().join("run");
    // An existing checkpoint must survive a failed run untouched.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"precious").unwrap();
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, needles);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"precious"
    );
}

#[test]
fn missing_data_folder() {
    let o = gpurt(&["train", "--data", "mnist:/nonexistent/mnist", "--quiet"]);
    assert_fails_with(&o, &["/nonexistent/mnist"]);
}

#[test]
fn wrong_idx_magic() {
    expect_data_error(
        |d| {
            let p = d.join("train-images-idx3-ubyte");
            let mut b = std::fs::read(&p).unwrap();
            b[3] = 9;
            std::fs::write(p, b).unwrap();
        },
        &["train-images-idx3-ubyte", "magic"],
    );
}

#[test]
fn truncated_file() {
    expect_data_error(
        |d| {
            let p = d.join("train-images-idx3-ubyte");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(p, &b[..b.len() - 100]).unwrap();
        },
        &["train-images-idx3-ubyte"],
    );
}

#[test]
fn image_and_label_counts_disagree() {
    expect_data_error(
        |d| std::fs::write(d.join("train-labels-idx1-ubyte"), idx_labels(90)).unwrap(),
        &["100", "90"],
    );
}

#[test]
fn label_out_of_range() {
    expect_data_error(
        |d| {
            let p = d.join("train-labels-idx1-ubyte");
            let mut b = std::fs::read(&p).unwrap();
            b[8 + 17] = 12;
            std::fs::write(p, b).unwrap();
        },
        &["label", "12"],
    );
}

fn spec_error(toml: &str, needles: &[&str]) {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 100, 20);
    let spec = t.path().join("model.toml");
    std::fs::write(&spec, toml).unwrap();
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        spec.to_str().unwrap(),
        "--out",
        t.path().join("run").to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, needles);
}

/// Model graphs: a cycle, an input naming no layer, and an add of two
/// shapes each fail with one error line naming the layers, exit 1.
#[test]
fn bad_model_graphs_name_the_layers() {
    spec_error(
        "[[layer]]\ntype = \"conv2d\"\nname = \"a\"\ninputs = [\"b\"]\nfilters = 2\nkernel = 1\n\
         [[layer]]\ntype = \"relu\"\nname = \"b\"\n",
        &[
            "model.toml",
            "cycle",
            "layer 2 'b' (relu) -> layer 1 'a' (conv2d) -> layer 2 'b' (relu)",
        ],
    );
    spec_error(
        "[[layer]]\ntype = \"add\"\nname = \"sum\"\ninputs = [\"input\", \"stem\"]\n",
        &[
            "model.toml",
            "layer 1 'sum' (add)",
            "input 'stem' names no layer",
        ],
    );
    spec_error(
        "[[layer]]\ntype = \"max_pool2d\"\nname = \"half\"\n\
         [[layer]]\ntype = \"add\"\nname = \"skip\"\ninputs = [\"half\", \"input\"]\n\
         [[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 10\n",
        &[
            "layer 2 'skip' (add)",
            "layer 1 'half' (max_pool2d) gives",
            "'input' gives",
        ],
    );
}

#[test]
fn unknown_model_layer() {
    spec_error(
        "[[layer]]\ntype = \"lstm\"\nunits = 4\n",
        &["model.toml", "lstm"],
    );
}

#[test]
fn model_spec_shapes_do_not_fit() {
    // Three 2x2 poolings take 28 -> 3; a 5x5 convolution cannot fit.
    let spec = "[[layer]]\ntype = \"max_pool2d\"\n[[layer]]\ntype = \"max_pool2d\"\n[[layer]]\ntype = \"max_pool2d\"\n[[layer]]\ntype = \"conv2d\"\nfilters = 8\nkernel = 5\n";
    spec_error(spec, &["layer 4", "conv2d"]);
}

#[test]
fn unknown_model_name() {
    let o = gpurt(&[
        "train",
        "--model",
        "resnet9000",
        "--quiet",
        "--limit",
        "100",
    ]);
    assert_fails_with(&o, &["resnet9000"]);
}

#[test]
fn unwritable_output_folder() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 100, 20);
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out: PathBuf = file.join("run");
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, &["a-file"]);
}

#[test]
fn eval_of_missing_run() {
    let o = gpurt(&["eval", "--run", "/nonexistent/run"]);
    assert_fails_with(&o, &["/nonexistent/run", "checkpoint.json"]);
}

#[test]
fn diverging_training_stops_with_step_and_tensor() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 200, 20);
    let out = t.path().join("run");
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, &["non-finite", "step", "fc"]);
    assert!(
        !out.join("model.safetensors").exists(),
        "a diverged run must not write a checkpoint"
    );
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 100, 20);
    let spec = t.path().join("huge.toml");
    std::fs::write(&spec, "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 1099511627776\n[[layer]]\ntype = \"dense\"\nunits = 10\n").unwrap();
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        spec.to_str().unwrap(),
        "--out",
        t.path().join("r").to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, &["limit"]);
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--batch",
        "4611686018427387904",
        "--out",
        t.path().join("r2").to_str().unwrap(),
        "--quiet",
    ]);
    assert_fails_with(&o, &[]);
    // A weights file whose header claims 4 GiB.
    let run = t.path().join("run");
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&data),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch",
        "16",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut f = (4u64 << 30).to_le_bytes().to_vec();
    f.extend(b"{}");
    let ck = gpurt::checkpoint::Checkpoint::load(&run).unwrap();
    std::fs::write(ck.model_file(&run), f).unwrap();
    let o = gpurt(&["eval", "--run", run.to_str().unwrap()]);
    assert_fails_with(&o, &["model.safetensors"]);
}

#[test]
fn bench_measures_every_case_on_the_cpu() {
    let o = gpurt(&["bench", "--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("bench --json is JSON");
    let results = v["results"].as_array().unwrap();
    assert!(results.len() >= 10, "{v}");
    for r in results {
        assert!(r["skipped"].is_null(), "skipped: {r}");
        assert!(
            r["value"]
                .as_f64()
                .is_some_and(|x| x.is_finite() && x > 0.0),
            "no figure: {r}"
        );
    }
}

/// `--lr-schedule plateau` (PyTorch's ReduceLROnPlateau): the rate of each
/// epoch in metrics.csv is the one the validation losses before it give,
/// and on this overfitting setup it is reduced at least once.
#[test]
fn plateau_schedule_follows_the_validation_loss() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 400, 20);
    let out = t.path().join("run");
    let o = train_on(
        &data,
        &out,
        &[
            "--model",
            "mlp",
            "--lr",
            "0.02",
            "--epochs",
            "8",
            "--batch",
            "32",
            "--val-split",
            "0.25",
            "--lr-schedule",
            "plateau",
            "--plateau-patience",
            "0",
            "--plateau-factor",
            "0.5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (val, lr) = (col("val_loss"), col("lr"));
    let rows: Vec<(f64, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[val].parse().unwrap(), f[lr].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 8);
    let p = gpurt::optim::Plateau {
        factor: 0.5,
        patience: 0,
        min_lr: 0.0,
    };
    for (e, &(_, lr)) in rows.iter().enumerate() {
        let want = p.lr(0.02, rows[..e].iter().map(|r| r.0));
        assert_eq!(lr, want as f64, "epoch {}: {csv}", e + 1);
    }
    assert!(rows.iter().any(|r| r.1 < 0.02), "never reduced: {csv}");
}

#[test]
fn plateau_settings_need_the_plateau_schedule_and_validation() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 64, 8);
    let out = t.path().join("run");
    let run = |extra: &[&str]| train_on(&data, &out, &[&["--epochs", "1"][..], extra].concat());
    assert_fails_with(
        &run(&["--plateau-factor", "0.5"]),
        &["--lr-schedule plateau"],
    );
    assert_fails_with(
        &run(&["--lr-schedule", "plateau", "--val-split", "0"]),
        &["--val-split"],
    );
    assert_fails_with(
        &run(&["--lr-schedule", "plateau", "--plateau-factor", "2"]),
        &["--plateau-factor", "(0, 1)"],
    );
}

/// `--early-stop` (Keras' EarlyStopping with restore_best_weights): the run
/// stops once `patience` epochs bring no better validation loss, records
/// the best epoch, keeps its weights as `best.safetensors`, reports the
/// test accuracy of those weights, and `gpurt eval --run` reproduces it.
#[test]
fn early_stopping_keeps_the_best_epoch_as_the_run_model() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 400, 60);
    let out = t.path().join("run");
    let o = train_on(
        &data,
        &out,
        &[
            "--model",
            "mlp",
            "--lr",
            "0.02",
            "--epochs",
            "30",
            "--batch",
            "32",
            "--val-split",
            "0.25",
            "--early-stop",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stdout(&o);
    assert!(log.contains("early stop after epoch"), "{log}");
    let ck: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("checkpoint.json")).unwrap()).unwrap();
    let (last, best) = (
        ck["epoch"].as_u64().unwrap() as usize,
        ck["best_epoch"].as_u64().unwrap() as usize,
    );
    assert!(last < 30, "did not stop early: {log}");
    // The best epoch is the one with the lowest validation loss, and the
    // run stopped exactly `patience` epochs after it.
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let losses: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    let argmin = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
        .unwrap();
    assert_eq!(best, argmin + 1, "{csv}");
    assert_eq!(last, best + 2, "{csv}");
    let folder = out.join("current");
    let best_w = std::fs::read(folder.join("best.safetensors")).unwrap();
    assert_ne!(
        best_w,
        std::fs::read(folder.join("model.safetensors")).unwrap()
    );
    let acc = log
        .lines()
        .find(|l| l.starts_with("test:"))
        .and_then(|l| l.split("accuracy ").nth(1))
        .and_then(|a| a.split('%').next())
        .unwrap()
        .to_string();
    let e = gpurt(&["eval", "--run", path(&out)]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(
        stdout(&e).contains(&format!("accuracy {acc}%")),
        "{}\n{log}",
        stdout(&e)
    );
}

#[test]
fn early_stop_settings_are_checked() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 64, 8);
    let out = t.path().join("run");
    let run = |extra: &[&str]| train_on(&data, &out, &[&["--epochs", "1"][..], extra].concat());
    assert_fails_with(&run(&["--monitor", "val_acc"]), &["--early-stop"]);
    assert_fails_with(
        &run(&["--early-stop", "2", "--val-split", "0"]),
        &["--val-split"],
    );
    assert_fails_with(
        &run(&["--early-stop", "2", "--monitor", "loss"]),
        &["val_loss or val_acc"],
    );
}

/// `--data fashion-mnist` reads Debian's dataset-fashion-mnist files
/// (tools/ci-setup-data.sh installs them); `eval` and `predict` name the
/// classes. Skipped where the package is absent, except under CI.
#[test]
fn fashion_mnist_trains_and_names_its_classes() {
    let dir = std::path::Path::new(gpurt::data::FASHION_MNIST_DIR);
    if !dir.is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing under CI: tools/ci-setup-data.sh installs it",
            dir.display()
        );
        println!(
            "SKIPPED: fashion_mnist_trains_and_names_its_classes: no {}",
            dir.display()
        );
        return;
    }
    let t = tmp();
    let out = t.path().join("run");
    let o = gpurt(&[
        "train",
        "--data",
        "fashion-mnist",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--limit",
        "3000",
        "--out",
        path(&out),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let acc: f64 = stdout(&o)
        .lines()
        .find(|l| l.starts_with("test:"))
        .and_then(|l| l.split("accuracy ").nth(1))
        .and_then(|a| a.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    // Ten classes: chance is 10%; one epoch on 3,000 images reaches ~70%.
    assert!(acc > 55.0, "test accuracy {acc}%");
    let e = gpurt(&["eval", "--run", path(&out)]);
    assert!(e.status.success(), "{}", stderr(&e));
    for name in ["T-shirt/top", "Ankle boot", "fashion-mnist:"] {
        assert!(stdout(&e).contains(name), "{name}: {}", stdout(&e));
    }
    let images = dir.join("t10k-images-idx3-ubyte.gz");
    let p = gpurt(&["predict", "--run", path(&out), path(&images), "--json"]);
    assert!(p.status.success(), "{}", stderr(&p));
    let v: serde_json::Value = serde_json::from_str(&stdout(&p)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10_000);
    let names = gpurt::data::FASHION_MNIST_CLASSES;
    let class = v[0]["class"].as_u64().unwrap() as usize;
    assert_eq!(v[0]["name"], names[class]);
}

/// `--label-smoothing` trains (its loss includes the smoothing term, so the
/// first epoch's training loss is above plain cross-entropy's on the same
/// seed) and refuses values outside [0, 1).
#[test]
fn label_smoothing_trains_and_is_checked() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 256, 20);
    let train_loss = |smoothing: &str| {
        let out = t.path().join(format!("run-{smoothing}"));
        let o = gpurt(&[
            "train",
            "--data",
            &data_arg(&data),
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--quiet",
            "--label-smoothing",
            smoothing,
            "--out",
            path(&out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        let row = csv.lines().nth(1).unwrap().to_string();
        row.split(',').nth(1).unwrap().parse::<f64>().unwrap()
    };
    let (plain, smoothed) = (train_loss("0"), train_loss("0.3"));
    assert!(smoothed > plain, "smoothed {smoothed} vs plain {plain}");
    for bad in ["1", "-0.1", "nan"] {
        let o = gpurt(&[
            "train",
            "--data",
            &data_arg(&data),
            "--quiet",
            &format!("--label-smoothing={bad}"),
            "--out",
            path(&t.path().join("bad")),
        ]);
        assert_fails_with(&o, &["--label-smoothing"]);
    }
}

/// `--clip-grad-norm` trains and refuses a limit that is not positive.
#[test]
fn clip_grad_norm_trains_and_is_checked() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 128, 20);
    let run = |limit: &str| {
        gpurt(&[
            "train",
            "--data",
            &data_arg(&data),
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--quiet",
            &format!("--clip-grad-norm={limit}"),
            "--out",
            path(&t.path().join(format!("run{limit}"))),
        ])
    };
    let o = run("0.5");
    assert!(o.status.success(), "{}", stderr(&o));
    for bad in ["0", "-1", "inf"] {
        assert_fails_with(&run(bad), &["--clip-grad-norm"]);
    }
}

/// `--rotate` and `--scale` augment training and refuse absurd values.
#[test]
fn rotation_and_zoom_augmentation_train_and_are_checked() {
    let t = tmp();
    let data = t.path().join("mnist");
    tiny_mnist(&data, 128, 20);
    let out = t.path().join("run");
    let run = |extra: &[&str]| train_on(&data, &out, &[&["--epochs", "1"][..], extra].concat());
    let o = run(&["--model", "mlp", "--rotate", "15", "--scale", "0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fails_with(&run(&["--rotate", "200"]), &["--rotate"]);
    assert_fails_with(&run(&["--scale", "1.5"]), &["--scale"]);
}
