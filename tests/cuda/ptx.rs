//! The committed PTX and the CUDA launch plan, checked without a GPU:
//!
//! - every kernels/*.ptx declares ISA 8.0 for sm_80 (loads on CUDA 12 and
//!   13 drivers);
//! - tools/verify-ptx.sh: ptxas (CUDA 12.0, from tools/ci-setup-cuda.sh)
//!   assembles every file for sm_80 and sm_90 with no error and no spills,
//!   and a rebuild from kernels/*.cu reproduces every file byte for byte
//!   (SKIPPED without the tools, unless CI is set);
//! - every kernel name in the launch table exists as a `.entry`;
//! - every call the planner makes, for every op case, the train steps and
//!   the benchmark shapes, on three device sizes, matches its kernel's PTX
//!   parameter list, fits the grid limits and points inside its buffers;
//! - the cases reach every kernel entry and every op variant, including
//!   in-place launches.

#![cfg(feature = "cuda")]

use super::bench::benches;
use crate::common::catalogue;

use gpurt::backend::cuda::args::{Arg, Buf};
use gpurt::backend::cuda::plan::{plan, Target};
use gpurt::backend::cuda::ptx;
use gpurt::graph::plan::Module;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn entries() -> BTreeSet<String> {
    ptx::FILES
        .iter()
        .flat_map(|f| ptx::entries(f.text).into_iter().map(|(n, _)| n.to_string()))
        .collect()
}

#[test]
fn ptx_is_isa_8_0_for_sm_80() {
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(root().join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk.len(),
        ptx::FILES.len(),
        "every kernels/*.cu must be embedded (ptx::FILES)"
    );
    for f in ptx::FILES {
        assert!(
            root().join(format!("kernels/{}.cu", f.name)).exists(),
            "{}.ptx has no source",
            f.name
        );
        let head: Vec<&str> = f
            .text
            .lines()
            .filter(|l| l.starts_with('.'))
            .take(3)
            .collect();
        assert_eq!(
            head,
            [".version 8.0", ".target sm_80", ".address_size 64"],
            "kernels/{}.ptx",
            f.name
        );
    }
}

#[test]
fn ptx_assembles_without_spills_and_rebuilds_byte_for_byte() {
    let tools = std::env::var_os("GPURT_PTX_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ptx-tools"));
    if !tools.join("env").exists() {
        assert!(
            !ci(),
            "CI: no PTX tools in {} (tools/ci-setup-cuda.sh must run first)",
            tools.display()
        );
        println!(
            "SKIPPED: ptx_assembles_without_spills_and_rebuilds_byte_for_byte: no PTX tools ({}; run tools/ci-setup-cuda.sh)",
            tools.display()
        );
        return;
    }
    let out = Command::new("bash")
        .arg(root().join("tools/verify-ptx.sh"))
        .env("GPURT_PTX_TOOLS", &tools)
        .output()
        .expect("run tools/verify-ptx.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tools/verify-ptx.sh failed:\n{text}");
    assert!(text.contains("verify-ptx: OK"));
    assert!(text.contains("reproduced byte for byte"));
}

/// String literals of the launch table (the planner and its per-family
/// lowering files) that name kernels.
#[test]
fn kernel_names_in_the_launch_table_exist_in_ptx() {
    let src: String = ["plan.rs", "dense.rs", "reduce.rs"]
        .iter()
        .map(|f| std::fs::read_to_string(root().join("src/backend/cuda").join(f)).unwrap())
        .collect();
    // Literals of the planner that are not kernel names.
    let not_kernels = ["cuda", "max_pool2d", "avg_pool2d"];
    let known = entries();
    let mut named = 0;
    for lit in src.split('"').skip(1).step_by(2) {
        let ident = !lit.is_empty()
            && lit
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ident || not_kernels.contains(&lit) {
            continue;
        }
        assert!(
            known.contains(lit),
            "the CUDA lowering launches \"{lit}\", which no kernels/*.ptx defines"
        );
        named += 1;
    }
    assert!(
        named >= 40,
        "found only {named} kernel names in the lowering"
    );
}

fn modules() -> Vec<(String, std::sync::Arc<Module>)> {
    let mut v: Vec<(String, std::sync::Arc<Module>)> = catalogue::op_cases()
        .into_iter()
        .chain(catalogue::model_cases())
        .map(|p| (p.name, p.module))
        .collect();
    v.extend(
        benches()
            .into_iter()
            .map(|b| (b.key.to_string(), std::sync::Arc::new(b.module))),
    );
    v
}

#[test]
fn every_call_matches_its_kernel_and_stays_in_bounds() {
    let mut used = BTreeSet::new();
    for (name, m) in modules() {
        for sms in [1, 16, 132] {
            let p = plan(&m, Target { sms }).unwrap_or_else(|e| panic!("{name}: {e}"));
            for pc in &p.programs {
                for (li, c) in &pc.calls {
                    let what = format!("{name} ({sms} SMs) launch {li} {}", c.kernel);
                    let (_, params) =
                        ptx::find(c.kernel).unwrap_or_else(|| panic!("{what}: no such entry"));
                    ptx::check_args(c.kernel, &params, &c.args)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(
                        c.grid.iter().all(|&g| g >= 1),
                        "{what}: empty grid {:?}",
                        c.grid
                    );
                    assert!(
                        c.grid[0] < 1 << 31 && c.grid[1] <= 65_535 && c.grid[2] <= 65_535,
                        "{what}: grid {:?}",
                        c.grid
                    );
                    for a in &c.args {
                        if let Arg::Ptr(buf, off) = a {
                            let limit = match buf {
                                Buf::Arena => 4 * m.arena_words,
                                Buf::Work => p.work_bytes,
                                Buf::Meta => p.meta.len(),
                                Buf::Scalars => 4 * p.scalars,
                            };
                            assert!(
                                *off < limit.max(1),
                                "{what}: {buf:?} offset {off} beyond {limit}"
                            );
                        }
                    }
                    used.insert(c.kernel.to_string());
                }
            }
        }
    }
    let unused: Vec<String> = entries().difference(&used).cloned().collect();
    assert!(unused.is_empty(), "kernels no case launches: {unused:?}");
}

#[test]
fn cases_cover_every_op_and_in_place_launches() {
    let mut ops = BTreeSet::new();
    let mut in_place = BTreeSet::new();
    for (_, m) in modules() {
        for p in &m.programs {
            for l in &p.launches {
                ops.insert(l.op.kernel_name());
                if l.inplace.is_some() {
                    in_place.insert(l.op.kernel_name());
                }
            }
        }
    }
    let all = [
        "matmul",
        "linear",
        "conv2d_forward",
        "conv2d_grad_input",
        "conv2d_grad_weight",
        "conv2d_grad_bias",
        "maxpool2d_forward",
        "maxpool2d_backward",
        "avgpool2d_forward",
        "avgpool2d_backward",
        "global_avgpool_forward",
        "global_avgpool_backward",
        "relu",
        "gelu",
        "sigmoid",
        "tanh",
        "relu_backward",
        "gelu_backward",
        "sigmoid_backward",
        "tanh_backward",
        "add",
        "sub",
        "mul",
        "div",
        "scale",
        "fill",
        "sum_to",
        "broadcast_to",
        "transpose",
        "softmax",
        "log_softmax",
        "softmax_backward",
        "log_softmax_backward",
        "cross_entropy",
        "cross_entropy_backward",
        "act_backward_bias",
        "elementwise",
        "dropout",
        "batchnorm2d_train",
        "batchnorm2d_infer",
        "batchnorm2d_backward",
        "sgd_update",
        "adam_update",
        "adamw_update",
    ];
    let missing: Vec<&&str> = all.iter().filter(|k| !ops.contains(**k)).collect();
    assert!(missing.is_empty(), "ops no case launches: {missing:?}");
    assert!(!in_place.is_empty(), "no case has an in-place launch");
    println!("in-place launches covered: {in_place:?}");
}
