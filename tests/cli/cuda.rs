//! The built binary when CUDA cannot be used: `gpurt devices` says CUDA is
//! unavailable and why, `gpurt train --device cuda` exits non-zero with
//! that reason on one line, `--device auto` falls back, and nothing panics.
//! On a machine where CUDA works, the failure checks print SKIPPED.

#![cfg(feature = "cuda")]

use std::process::{Command, Output};

fn gpurt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(args)
        .output()
        .expect("run gpurt")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn no_panic(what: &str, o: &Output) {
    let (out, err) = text(o);
    for s in [&out, &err] {
        assert!(!s.contains("panicked"), "{what} panicked:\n{out}\n{err}");
        assert!(
            !s.contains("RUST_BACKTRACE"),
            "{what} panicked:\n{out}\n{err}"
        );
    }
}

/// The reason CUDA is unusable here, or None (then these checks skip).
fn unavailable(test: &str) -> Option<String> {
    match gpurt::backend::cuda::unavailable() {
        Some(why) => Some(why),
        None => {
            println!("SKIPPED: {test}: a CUDA device is available");
            None
        }
    }
}

#[test]
fn devices_says_why_cuda_is_unavailable() {
    let o = gpurt(&["devices"]);
    no_panic("gpurt devices", &o);
    assert!(o.status.success(), "gpurt devices failed: {:?}", text(&o));
    let Some(why) = unavailable("devices_says_why_cuda_is_unavailable") else {
        return;
    };
    let (out, _) = text(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("cuda"))
        .unwrap_or_else(|| panic!("no cuda line in:\n{out}"));
    assert!(line.contains("unavailable"), "{line}");
    assert!(line.contains(&why), "{line} should say why: {why}");
    assert!(out.lines().any(|l| l.starts_with("auto ->")), "{out}");
}

#[test]
fn train_on_cuda_fails_with_one_clear_line() {
    let Some(why) = unavailable("train_on_cuda_fails_with_one_clear_line") else {
        return;
    };
    for device in ["cuda", "cuda:0", "cuda:7"] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("run");
        let o = gpurt(&[
            "train",
            "--device",
            device,
            "--epochs",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        no_panic("gpurt train --device cuda", &o);
        assert!(!o.status.success(), "--device {device} must fail here");
        let (_, err) = text(&o);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected:\n{err}");
        assert!(lines[0].starts_with("error: device cuda:"), "{}", lines[0]);
        assert!(
            lines[0].contains(&why),
            "{} should contain: {why}",
            lines[0]
        );
    }
}

#[test]
fn opening_cuda_never_panics() {
    // The library API: both calls return, whatever the machine has.
    let r = std::panic::catch_unwind(|| {
        let _ = gpurt::backend::cuda::open(0);
        let _ = gpurt::backend::cuda::open(usize::MAX);
        gpurt::backend::cuda::describe()
    });
    let lines = r.expect("cuda::open/describe panicked");
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|(name, _, detail)| name.starts_with("cuda") && !detail.is_empty()));
}
