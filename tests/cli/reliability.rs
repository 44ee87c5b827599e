//! The defects found by feeding the CLI bad files, odd flags and faults
//! (the reliability issue), one test each; the kill windows, the folder
//! lock and Ctrl-C are in `tests/cli/crash.rs`, driven by fault points.

use super::*;
use gpurt::checkpoint::Checkpoint;
use serde_json::{json, Value};

/// A finished one-epoch MLP run on tiny MNIST, in a fresh temp folder.
struct Base {
    t: tempfile::TempDir,
    data: String,
    run: PathBuf,
}

fn base() -> Base {
    let t = tmp();
    let dir = t.path().join("mnist");
    tiny_mnist(&dir, 480, 60);
    let data = data_arg(&dir);
    let run = t.path().join("base");
    let o = gpurt(&train(&data, &run, &["--epochs", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    Base { t, data, run }
}

/// `train` on `data` into `out` with the settings every test here shares.
fn train<'a>(data: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        data,
        "--model",
        "mlp",
        "--batch",
        "16",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    a
}

fn copy_run(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .args(["-a", path(from), path(to)])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Rewrite the run's `checkpoint.json` (the file its link points at).
fn edit_checkpoint(run: &Path, edit: impl FnOnce(&mut Value)) {
    let p = run.join("checkpoint.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Rewrite one tensor of a safetensors file in place.
fn edit_tensor(file: &Path, name: &str, edit: impl FnOnce(&mut [f32])) {
    let mut w = gpurt::weights::load(file).unwrap();
    edit(&mut w.tensors.get_mut(name).unwrap().0.data);
    let refs: Vec<(String, &gpurt::Tensor)> =
        w.tensors.iter().map(|(n, (t, _))| (n.clone(), t)).collect();
    gpurt::weights::save(file, &refs, gpurt::DType::F32, Some(w.metadata.clone())).unwrap();
}

fn png(b: &Base) -> PathBuf {
    let p = b.t.path().join("digit.png");
    gpurt::data::save_png_gray(&p, 28, 28, &idx_images(1, 9)[16..]).unwrap();
    p
}

// 1 (and the minor one: resuming an MLP run needs no --model).
#[test]
fn resume_without_out_continues_in_the_resumed_folder() {
    let b = base();
    let root = b.t.path();
    let latest = root.join("runs/latest");
    let o = gpurt(&train(&b.data, &latest, &["--epochs", "1", "--seed", "3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let latest_ck = std::fs::read(latest.join("checkpoint.json")).unwrap();

    let o = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .current_dir(root)
        .args([
            "train", "--data", &b.data, "--batch", "16", "--quiet", "--epochs", "2", "--resume",
            "base",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        Checkpoint::load(&b.run).unwrap().epoch,
        2,
        "base was not continued"
    );
    assert_eq!(
        std::fs::read(latest.join("checkpoint.json")).unwrap(),
        latest_ck,
        "runs/latest was touched"
    );

    // A --model that contradicts the checkpoint names both and the fix.
    let o = gpurt(&[
        "train",
        "--data",
        &b.data,
        "--model",
        "cnn",
        "--batch",
        "16",
        "--quiet",
        "--epochs",
        "3",
        "--resume",
        path(&b.run),
    ]);
    assert_fails_with(&o, &["'mlp'", "'cnn'", "--model mlp"]);
}

// 3
#[test]
fn adam_divergence_with_finite_losses_stops_and_keeps_the_checkpoint() {
    let b = base();
    for lr in ["1e3", "3"] {
        let d = b.t.path().join(format!("d{lr}"));
        copy_run(&b.run, &d);
        let before = std::fs::read(d.join("model.safetensors")).unwrap();
        let o = gpurt(&train(
            &b.data,
            &d,
            &["--lr", lr, "--epochs", "3", "--resume", path(&d)],
        ));
        assert_fails_with(&o, &["diverged", "epoch 1, step 27", "is kept in"]);
        assert_eq!(Checkpoint::load(&d).unwrap().epoch, 1, "lr {lr}");
        assert_eq!(std::fs::read(d.join("model.safetensors")).unwrap(), before);
    }
}

// 4 and 13: every number of checkpoint.json is checked where it is read.
#[test]
fn checkpoint_numbers_that_cannot_be_are_refused() {
    let b = base();
    let digit = png(&b);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("mean", json!([0.1, 0.2]), "2 means"),
        ("mean", json!([]), "0 means"),
        ("std", json!([]), "0 deviations"),
        ("std", json!([0.1, 0.2]), "2 deviations"),
        ("std", json!([0.0]), "std 0"),
        ("std", json!([-0.3]), "std -0.3"),
        ("mean", json!([1e39]), "mean"),
        ("format", json!("gpurt-checkpoint-v9"), "unknown format"),
        ("epoch", json!(u64::MAX), "epoch"),
        ("input", json!([1, 28]), "input"),
    ];
    for (key, value, needle) in cases {
        let run =
            b.t.path()
                .join(format!("r-{key}-{}", value.to_string().len()));
        copy_run(&b.run, &run);
        edit_checkpoint(&run, |v| v[key] = value.clone());
        for cmd in [
            vec!["predict", "--run", path(&run), path(&digit)],
            vec!["eval", "--run", path(&run)],
            train(&b.data, &run, &["--epochs", "2", "--resume", path(&run)]),
        ] {
            let o = gpurt(&cmd);
            assert_fails_with(&o, &["checkpoint.json", needle]);
        }
    }
    // A batch count past the end of the epoch.
    let run = b.t.path().join("r-batch");
    copy_run(&b.run, &run);
    edit_checkpoint(&run, |v| v["batch"] = json!(1_000_000_000u64));
    let o = gpurt(&train(
        &b.data,
        &run,
        &["--epochs", "2", "--resume", path(&run)],
    ));
    assert_fails_with(&o, &["1000000000 batches into an epoch of 27"]);
}

// 5
#[test]
fn non_finite_and_impossible_tensors_are_refused() {
    let b = base();
    let digit = png(&b);
    let ck = Checkpoint::load(&b.run).unwrap();
    for (tensor, value) in [("fc2.bias", f32::NAN), ("fc1.weight", f32::INFINITY)] {
        let run = b.t.path().join(format!("r-{tensor}"));
        copy_run(&b.run, &run);
        edit_tensor(&ck.model_file(&run), tensor, |d| d[3] = value);
        let o = gpurt(&["predict", "--run", path(&run), path(&digit)]);
        assert_fails_with(&o, &[tensor, &format!("{value}"), "index 3"]);
        let o = gpurt(&["eval", "--run", path(&run)]);
        assert_fails_with(&o, &[tensor]);
    }
    let run = b.t.path().join("r-adam");
    copy_run(&b.run, &run);
    edit_tensor(&ck.optim_file(&run), "optim.exp_avg_sq.fc1.bias", |d| {
        d[0] = -1e-3
    });
    let o = gpurt(&train(
        &b.data,
        &run,
        &["--epochs", "2", "--resume", path(&run)],
    ));
    assert_fails_with(&o, &["optim.exp_avg_sq.fc1.bias", ">= 0"]);
}

// 6
#[test]
fn checkpoint_cleanup_keeps_folders_the_user_made() {
    let b = base();
    let ck = Checkpoint::load(&b.run).unwrap();
    let keep = b.run.join("ckpt/keep-epoch1");
    copy_run(&b.run.join(&ck.files), &keep);
    let o = gpurt(&train(
        &b.data,
        &b.run,
        &["--epochs", "2", "--resume", path(&b.run)],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        keep.join("model.safetensors").is_file(),
        "keep-epoch1 was deleted"
    );
    assert!(
        !b.run.join(&ck.files).exists(),
        "gpurt's own old folder stays"
    );
}

// 8
#[test]
fn every_splits_image_shape_is_checked_before_training() {
    let t = tmp();
    for (rows, cols) in [(32u32, 32u32), (14, 56)] {
        let dir = t.path().join(format!("mnist-{rows}x{cols}"));
        tiny_mnist(&dir, 200, 20);
        let mut test = vec![0, 0, 8, 3];
        for d in [20, rows, cols] {
            test.extend(d.to_be_bytes());
        }
        test.extend(
            idx_images(20, 4)[16..]
                .iter()
                .cycle()
                .take((20 * rows * cols) as usize),
        );
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), test).unwrap();
        let out = t.path().join(format!("run-{rows}"));
        let o = gpurt(&train(&data_arg(&dir), &out, &["--epochs", "1"]));
        assert_fails_with(
            &o,
            &[&format!("test images are 1x{rows}x{cols}"), "1x28x28"],
        );
        assert!(!stdout(&o).contains("epoch 1/"), "it trained first");
        assert!(!out.exists(), "a refused run created its folder");
    }
}

// 10
#[test]
fn unknown_keys_are_refused_on_every_layer() {
    let t = tmp();
    let spec = t.path().join("m.toml");
    let plan = |layers: &str| {
        std::fs::write(&spec, format!("name = \"m\"\n{layers}")).unwrap();
        gpurt(&["plan", "--model", path(&spec)])
    };
    let head = "[[layer]]\ntype = \"conv2d\"\nfilters = 4\nkernel = 3\n";
    let tail = "[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"dense\"\nunits = 10\n";
    for (kind, extra) in [
        ("relu", "slope = 0.1"),
        ("tanh", "foo = 1"),
        ("gelu", "approximate = \"tanh\""),
        ("sigmoid", "foo = 1"),
        ("global_avg_pool", "keepdim = true"),
        ("batch_norm2d", "affine = false"),
        ("dropout", "rate = 0.1\ninplace = true"),
    ] {
        let o = plan(&format!(
            "{head}[[layer]]\ntype = \"{kind}\"\n{extra}\n{tail}"
        ));
        let key = extra.lines().last().unwrap().split(' ').next().unwrap();
        assert_fails_with(&o, &["m.toml", &format!("layer 2 ({kind})"), key]);
    }
    let o = plan(
        &format!("{head}{tail}").replace("type = \"flatten\"", "type = \"flatten\"\nstart_dim = 1"),
    );
    assert_fails_with(&o, &["layer 2 (flatten)", "start_dim"]);
    // batch norm's own settings are accepted.
    let o = plan(&format!(
        "{head}[[layer]]\ntype = \"batch_norm2d\"\nmomentum = 0.2\neps = 1e-3\n{tail}"
    ));
    assert!(o.status.success(), "{}", stderr(&o));
}

// 11
#[test]
fn stop_messages_are_true_and_weight_decay_is_checked() {
    let b = base();
    let out = b.t.path().join("sgd");
    let o = gpurt(&train(
        &b.data,
        &out,
        &["--optimizer", "sgd", "--lr", "1e3", "--epochs", "3"],
    ));
    assert_fails_with(&o, &["no checkpoint was saved"]);
    assert!(!stderr(&o).contains("kept in"), "{}", stderr(&o));
    for wd in ["NaN", "inf", "-0.1"] {
        let flag = format!("--weight-decay={wd}");
        let o = gpurt(&train(&b.data, &out, &[&flag]));
        assert_fails_with(&o, &["--weight-decay", wd]);
    }
}

// 12 and 14: flags that would wrap arithmetic or make no sense.
#[test]
fn flags_that_would_wrap_or_blank_the_input_are_refused() {
    let b = base();
    let out = b.t.path().join("x");
    let o = gpurt(&train(
        &b.data,
        &out,
        &["--epochs", "4611686018427387904", "--lr-schedule", "cosine"],
    ));
    assert_fails_with(&o, &["--epochs 4611686018427387904"]);
    let o = gpurt(&train(&b.data, &out, &["--crop-pad", "1000"]));
    assert_fails_with(&o, &["--crop-pad 1000", "28x28", "at most 14"]);
    assert!(!out.exists());
}

// Minor: a mid-epoch resume must keep the batch size.
#[test]
fn mid_epoch_resume_with_another_batch_size_is_refused() {
    let b = base();
    edit_checkpoint(&b.run, |v| {
        v["epoch"] = json!(0);
        v["batch"] = json!(3);
        v["step"] = json!(3);
    });
    let o = gpurt(&[
        "train",
        "--data",
        &b.data,
        "--batch",
        "32",
        "--quiet",
        "--resume",
        path(&b.run),
    ]);
    assert_fails_with(&o, &["--batch 16", "got 32"]);
}

// Minor: an OS error is said once; a failed resume creates nothing.
#[test]
fn os_errors_once_and_failed_resume_leaves_no_folder() {
    let o = gpurt(&["eval", "--run", "/nonexistent/run"]);
    assert_eq!(
        stderr(&o).matches("No such file or directory").count(),
        1,
        "{}",
        stderr(&o)
    );
    let t = tmp();
    let out = t.path().join("new");
    let o = gpurt(&[
        "train",
        "--quiet",
        "--resume",
        "/nonexistent/run",
        "--out",
        path(&out),
    ]);
    assert_fails_with(&o, &["/nonexistent/run"]);
    assert!(!out.exists());
}

// Minor: the same run twice gives the same checkpoint files, byte for byte.
#[test]
fn checkpoints_are_byte_reproducible() {
    let b = base();
    let again = b.t.path().join("again");
    let o = gpurt(&train(&b.data, &again, &["--epochs", "1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = Checkpoint::load(&b.run).unwrap();
    for f in ["model.safetensors", "optim.safetensors", "checkpoint.json"] {
        assert_eq!(
            std::fs::read(b.run.join(&ck.files).join(f)).unwrap(),
            std::fs::read(again.join(&ck.files).join(f)).unwrap(),
            "{f} differs"
        );
    }
}
