//! Properties searched for violations rather than cases written one by
//! one: every extreme value of every numeric `train` flag, and every
//! mutation of every field of `checkpoint.json`. Whatever the input, the
//! CLI either does what it says (exit 0, consistent files, finite
//! numbers) or refuses with one error line and a non-zero exit: never a
//! panic, a wrapped count or a silent NaN.

use super::*;
use gpurt::checkpoint::Checkpoint;
use serde_json::{json, Value};

/// Steps per epoch of the runs below: 432 training images, batch 16.
const STEPS: u64 = 27;

fn outcome(o: &Output, what: &str) -> bool {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{what}: panic: {e}");
    match o.status.code() {
        Some(0) => true,
        Some(1) => {
            assert_eq!(
                e.lines().filter(|l| l.starts_with("error:")).count(),
                1,
                "{what}: not one error line: {e}"
            );
            false
        }
        // clap's usage errors.
        Some(2) => {
            assert!(e.starts_with("error:"), "{what}: {e}");
            false
        }
        c => panic!("{what}: exit {c:?}: {e}"),
    }
}

#[test]
fn no_flag_value_panics_wraps_or_trains_on_nonsense() {
    let t = tmp();
    let dir = t.path().join("mnist");
    tiny_mnist(&dir, 480, 40);
    let data = data_arg(&dir);
    let huge = [
        "18446744073709551615",
        "18446744073709551616",
        "4611686018427387904",
        "9223372036854775808",
        "-1",
        "",
        "x",
        "1e30",
        "NaN",
        "inf",
    ];
    let counts = ["0", "1", "2"];
    let reals = [
        "0", "-0", "1e-30", "0.5", "1", "1e30", "-1", "inf", "-inf", "NaN", "x",
    ];
    let mut flags: Vec<(&str, Vec<&str>)> = vec![
        ("--epochs", [&counts[..], &huge, &["1000001"]].concat()),
        (
            "--batch",
            [&counts[..], &huge, &["431", "432", "433"]].concat(),
        ),
        ("--warmup", [&counts[..], &huge].concat()),
        ("--limit", [&counts[..], &huge, &["16", "17"]].concat()),
        ("--crop-pad", [&counts[..], &huge, &["14", "15"]].concat()),
        ("--seed", [&counts[..], &huge].concat()),
        ("--lr", reals.to_vec()),
        ("--weight-decay", reals.to_vec()),
        (
            "--val-split",
            [&reals[..], &["0.999", "0.9999999"]].concat(),
        ),
    ];
    flags.push(("--lr-schedule", vec!["cosine", "step", "linear", ""]));
    let mut finished = 0;
    for (flag, values) in &flags {
        for v in values {
            let out = t.path().join("run");
            let _ = std::fs::remove_dir_all(&out);
            let arg = format!("{flag}={v}");
            let mut a = vec![
                "train",
                "--data",
                &data,
                "--model",
                "mlp",
                "--quiet",
                "--out",
                path(&out),
                &arg,
            ];
            if *flag != "--epochs" {
                a.extend(["--epochs", "1"]);
            }
            if *flag != "--batch" {
                a.extend(["--batch", "16"]);
            }
            let what = format!("train {arg}");
            let o = gpurt(&a);
            if !outcome(&o, &what) {
                continue;
            }
            finished += 1;
            // It ran: every count in the run folder is what was asked.
            let ck = Checkpoint::load(&out).unwrap();
            let epochs: usize = if *flag == "--epochs" {
                v.parse().unwrap()
            } else {
                1
            };
            assert_eq!((ck.epoch, ck.batch), (epochs, 0), "{what}");
            let rows = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
            assert_eq!(rows.lines().count(), 1 + epochs, "{what}");
            assert!(
                !rows.contains("NaN") && !rows.contains("inf"),
                "{what}: {rows}"
            );
            if ["--batch", "--limit", "--val-split"].contains(flag) {
                assert!(ck.step >= epochs as u64, "{what}: step {}", ck.step);
            } else {
                assert_eq!(ck.step, epochs as u64 * STEPS, "{what}");
            }
        }
    }
    assert!(
        finished > 20,
        "only {finished} runs finished: the search tried too little"
    );
}

/// Values each field of `checkpoint.json` is set to.
fn mutations(v: &Value) -> Vec<Value> {
    let mut m = vec![
        Value::Null,
        json!(true),
        json!("x"),
        json!(-1),
        json!(0),
        json!(1),
        json!(0.5),
        json!(1e39),
        json!(-1e39),
        json!(u64::MAX),
        json!([]),
        json!({}),
        json!([0.0]),
        json!([-1.0]),
        json!([1e-7]),
        json!([2.0]),
        json!([1, 1, 1]),
        json!([0, 28, 28]),
        json!([1, 28, 28, 1]),
        json!([4294967296u64, 4294967296u64, 1]),
    ];
    if let Value::Array(items) = v {
        // Each element in turn replaced.
        for i in 0..items.len() {
            for x in [json!(f64::MAX), json!(-0.0), json!(1e-30), json!("x")] {
                let mut a = items.clone();
                a[i] = x;
                m.push(Value::Array(a));
            }
        }
    }
    m
}

#[test]
fn no_mutation_of_checkpoint_json_panics_or_gives_nan() {
    let t = tmp();
    let dir = t.path().join("mnist");
    tiny_mnist(&dir, 480, 40);
    let data = data_arg(&dir);
    let base = t.path().join("base");
    let o = gpurt(&[
        "train",
        "--data",
        &data,
        "--model",
        "mlp",
        "--batch",
        "16",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        path(&base),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let digit = t.path().join("digit.png");
    gpurt::data::save_png_gray(&digit, 28, 28, &idx_images(1, 9)[16..]).unwrap();
    let text = std::fs::read_to_string(base.join("checkpoint.json")).unwrap();
    let original: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<String> = original.as_object().unwrap().keys().cloned().collect();
    let ck_file = base
        .join(Checkpoint::load(&base).unwrap().files)
        .join("checkpoint.json");
    let (mut tried, mut accepted) = (0, 0);
    for key in &keys {
        let mut variants: Vec<Option<Value>> = vec![None];
        variants.extend(mutations(&original[key]).into_iter().map(Some));
        for value in variants {
            let mut v = original.clone();
            match &value {
                Some(x) => v[key] = x.clone(),
                None => drop(v.as_object_mut().unwrap().remove(key)),
            }
            std::fs::write(&ck_file, serde_json::to_vec(&v).unwrap()).unwrap();
            let what = format!("{key} = {value:?}");
            tried += 1;
            let o = gpurt(&["eval", "--run", path(&base), "--json"]);
            if outcome(&o, &format!("eval with {what}")) {
                accepted += 1;
                let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
                assert!(
                    r["loss"].as_f64().is_some_and(f64::is_finite),
                    "{what}: {r}"
                );
            }
            let o = gpurt(&["predict", "--run", path(&base), "--json", path(&digit)]);
            if outcome(&o, &format!("predict with {what}")) {
                let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
                let p = r[0]["top"][0]["probability"].as_f64();
                assert!(p.is_some_and(|p| (0.0..=1.0).contains(&p)), "{what}: {r}");
            }
        }
    }
    std::fs::write(&ck_file, &text).unwrap();
    assert!(
        tried > 200 && accepted > 0,
        "tried {tried}, accepted {accepted}"
    );
}

/// Resuming from a mutated checkpoint: the numbers that steer training.
#[test]
fn no_mutation_of_resume_numbers_wraps_or_panics() {
    let t = tmp();
    let dir = t.path().join("mnist");
    tiny_mnist(&dir, 480, 40);
    let data = data_arg(&dir);
    let base = t.path().join("base");
    let train = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--data",
            &data,
            "--model",
            "mlp",
            "--batch",
            "16",
            "--quiet",
            "--out",
            path(out),
        ];
        a.extend(extra);
        gpurt(&a)
    };
    let o = train(&base, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for key in ["epoch", "batch", "batch_size", "step", "classes", "seed"] {
        for value in [
            json!(-1),
            json!(0),
            json!(1),
            json!(26),
            json!(27),
            json!(u64::MAX),
            json!(1u64 << 32),
            json!(0.5),
            Value::Null,
        ] {
            let run = t.path().join("r");
            let _ = std::fs::remove_dir_all(&run);
            let ok = Command::new("cp")
                .args(["-a", path(&base), path(&run)])
                .status()
                .unwrap()
                .success();
            assert!(ok);
            let p = run.join("checkpoint.json");
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            v[key] = value.clone();
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            let what = format!("resume with {key} = {value}");
            let o = train(&run, &["--epochs", "2", "--resume", path(&run)]);
            if outcome(&o, &what) {
                // It resumed from where the (mutated) checkpoint says.
                let e0 = v["epoch"].as_u64().unwrap();
                let b0 = v["batch"].as_u64().unwrap_or(0);
                let ck = Checkpoint::load(&run).unwrap();
                if e0 >= 2 {
                    assert_eq!((ck.epoch as u64, ck.step), (e0, STEPS), "{what}");
                } else {
                    assert_eq!((ck.epoch, ck.batch), (2, 0), "{what}");
                    assert_eq!(ck.step, STEPS + (2 - e0) * STEPS - b0, "{what}");
                }
            }
        }
    }
}

/// Output into a pipe closed by the reader (`gpurt predict ... | head`)
/// ends the process quietly, as Unix tools do, instead of a panic.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    use std::process::Stdio;
    let t = tmp();
    let dir = t.path().join("mnist");
    tiny_mnist(&dir, 200, 500);
    let run = t.path().join("run");
    let o = gpurt(&[
        "train",
        "--data",
        &data_arg(&dir),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        path(&run),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let images = dir.join("t10k-images-idx3-ubyte");
    for args in [
        vec!["predict", "--run", path(&run), path(&images)],
        vec!["eval", "--run", path(&run)],
        vec!["--help"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpurt"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        use std::os::unix::process::ExitStatusExt;
        assert!(
            o.status.success() || o.status.signal() == Some(13),
            "{args:?}: {:?} {}",
            o.status,
            stderr(&o)
        );
    }
}
