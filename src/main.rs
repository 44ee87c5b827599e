//! The `gpurt` command. Errors print as one line and exit non-zero.

use anyhow::{bail, Context, Result};
use clap::Parser;
use gpurt::backend::{self, DeviceSpec};
use gpurt::checkpoint;
use gpurt::cli::{BenchArgs, Cli, Command, EvalArgs, PlanArgs, PredictArgs};
use gpurt::data::{self, DataSpec, Split};
use gpurt::eval::{evaluate, top_k};
use gpurt::train::{self, load_run};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

mod text_cli;

fn main() {
    let start = std::time::Instant::now();
    restore_sigpipe();
    // Mesa's Vulkan drivers complain on stderr when this is unset.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    // A misspelt or unsupported GPURT_CPU_ISA must not quietly time the
    // widest kernels instead.
    if let Err(e) = gpurt::backend::cpu::isa::from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = run(cli, start) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so printing to a closed pipe (`gpurt predict ...
/// | head`) panics; a command-line tool should end quietly, as Unix tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: first thing in main, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli, start: std::time::Instant) -> Result<()> {
    match cli.command {
        Command::Train(a) => {
            let mut opts = a.options()?;
            opts.progress &= std::io::stderr().is_terminal();
            let _ = ctrlc::set_handler(|| {
                if train::STOP.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    std::process::exit(130);
                }
                eprintln!("\nstopping after this batch (Ctrl-C again to quit now)");
            });
            let s = train::train(&opts, &mut |l| println!("{l}"))?;
            if s.interrupted() {
                // Saved, but not finished: scripts must be able to tell.
                std::process::exit(130);
            }
            if s.rank != 0 {
                return Ok(());
            }
            // Under early stopping the run's model is the best epoch's.
            let model = match checkpoint::Checkpoint::load(&s.out) {
                Ok(ck) if ck.best_epoch.is_some() => "current/best.safetensors",
                _ => "model.safetensors",
            };
            println!(
                "saved {}/{model}; `gpurt eval --run {}` reproduces the test accuracy",
                s.out.display(),
                s.out.display()
            );
            Ok(())
        }
        Command::Eval(a) => eval(a),
        Command::Predict(a) => predict(a),
        Command::Plan(a) => plan(a),
        Command::Bench(a) => bench(a, start),
        #[cfg(feature = "serve")]
        Command::Serve(a) => {
            gpurt::serve::run_until_signal(a.config()?)?;
            Ok(())
        }
        Command::Devices => {
            for (name, ok, detail) in backend::describe() {
                println!(
                    "{name:5} {} {detail}",
                    if ok { "available  " } else { "unavailable" }
                );
            }
            let auto = backend::select(&DeviceSpec::Auto)?;
            println!("auto -> {}", auto.name());
            Ok(())
        }
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let device: DeviceSpec = a.device.parse()?;
    let (mut model, ck) = load_run(&a.run, &device, 256)?;
    if ck.text.is_some() {
        return text_cli::eval(&a, &mut model, &ck);
    }
    let spec: DataSpec = a.data.clone().unwrap_or_else(|| ck.data.clone()).parse()?;
    let test = Arc::new(spec.load(Split::Test)?);
    if [test.channels, test.height, test.width] != ck.input[..] {
        bail!(
            "{}: images are {}x{}x{} but the model expects {:?}",
            spec,
            test.channels,
            test.height,
            test.width,
            ck.input
        );
    }
    let e = evaluate(&mut model, &test, &ck.normalizer())?;
    let report = e.confusion.report().named(spec.class_names());
    if a.json {
        let v = serde_json::json!({ "run": a.run, "data": spec.to_string(), "loss": e.loss, "report": report });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} on {} ({} test images): loss {:.4}, accuracy {:.2}%",
            a.run.display(),
            spec,
            test.len(),
            e.loss,
            e.accuracy * 100.0
        );
        println!("{report}");
    }
    Ok(())
}

fn predict(a: PredictArgs) -> Result<()> {
    let device: DeviceSpec = a.device.parse()?;
    if checkpoint::Checkpoint::load(&a.run)?.text.is_some() {
        return text_cli::predict(&a, &device);
    }
    let (mut model, ck) = load_run(&a.run, &device, 1)?;
    let norm = ck.normalizer();
    let (c, h, w) = (ck.input[0], ck.input[1], ck.input[2]);
    let mut x = vec![0.0f32; c * h * w];
    let mut logits = vec![0.0f32; ck.classes];
    let mut out = Vec::new();
    // Class names where the run's dataset has them (Fashion-MNIST, CIFAR-10).
    let names = ck
        .data
        .parse::<DataSpec>()
        .ok()
        .and_then(|d| d.class_names());
    let label = |k: usize| match names.and_then(|n| n.get(k)) {
        Some(n) => format!("{k} ({n})"),
        None => k.to_string(),
    };
    let mut classify = |name: &dyn std::fmt::Display, px: &[u8]| -> Result<()> {
        norm.normalize_into(px, c, &mut x);
        model.infer(&x, &mut logits)?;
        let top = top_k(&logits, a.top_k.max(1));
        if a.json {
            let name_of = |k: usize| names.and_then(|n| n.get(k)).copied();
            out.push(serde_json::json!({ "input": name.to_string(), "class": top[0].0, "name": name_of(top[0].0), "top": top.iter().map(|(k, p)| serde_json::json!({"class": k, "name": name_of(*k), "probability": p})).collect::<Vec<_>>() }));
        } else {
            let rest: Vec<String> = top
                .iter()
                .map(|(k, p)| format!("{}: {:.2}%", label(*k), p * 100.0))
                .collect();
            println!("{name}: {} ({})", label(top[0].0), rest.join(", "));
        }
        Ok(())
    };
    // Each file is classified as it is read, and IDX images straight from
    // the file's buffer: memory stays at one file's pixels.
    for p in &a.inputs {
        if is_png(p)? {
            classify(&p.display(), &data::load_png(p, c, h, w)?)?;
        } else {
            let (n, rows, cols, px) = data::read_idx_images(p)?;
            if c != 1 || rows != h || cols != w {
                bail!(
                    "{}: {n} images of {rows}x{cols} but the model expects {c}x{h}x{w}",
                    p.display()
                );
            }
            for (i, img) in px.chunks_exact(h * w).enumerate() {
                classify(&format_args!("{}[{i}]", p.display()), img)?;
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn is_png(p: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
    let mut sig = [0u8; 8];
    let n = f
        .read(&mut sig)
        .with_context(|| format!("{}", p.display()))?;
    Ok(n == 8 && sig == [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A])
}

fn plan(a: PlanArgs) -> Result<()> {
    let spec = gpurt::nn::ModelSpec::resolve(&a.model, a.classes)?;
    let (spec, input) = match a.input.strip_prefix("text:") {
        Some(t) => {
            let t: usize = t.parse().ok().filter(|&t| t > 0).with_context(|| {
                format!("--input text:T needs a token count, got '{}'", a.input)
            })?;
            (spec.with_vocab(a.vocab), vec![t])
        }
        None => {
            let dims: Vec<usize> = a
                .input
                .split(',')
                .map(|d| d.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .ok()
                .filter(|d: &Vec<usize>| d.len() == 3)
                .with_context(|| {
                    format!(
                        "--input must be C,H,W (three numbers) or text:T, got '{}'",
                        a.input
                    )
                })?;
            (spec, dims)
        }
    };
    let cfg = gpurt::model::ClassifierConfig {
        spec,
        input,
        classes: a.classes,
        train_batch: Some(a.step.batch),
        infer_batch: 1,
        optim: gpurt::optim::OptimConfig::new(a.step.optimizer.parse()?),
        seed: 0,
        fuse: true,
    };
    let r = gpurt::inspect::PlanReport::new(&cfg)?;
    println!(
        "model {} input {:?} batch {}\n",
        cfg.spec.name, cfg.input, a.step.batch
    );
    print!("{}", r.render());
    Ok(())
}

fn bench(a: BenchArgs, start: std::time::Instant) -> Result<()> {
    let device: DeviceSpec = a.device.parse()?;
    let backend = backend::select(&device)?;
    eprintln!(
        "benchmarking on {} ({})",
        backend.name(),
        if a.full { "full" } else { "quick" }
    );
    let (peaks, figs) = gpurt::bench::run(backend.as_ref(), !a.full, start)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "device": backend.name(), "peaks": peaks, "results": figs })
            )?
        );
    } else {
        print!("{}", gpurt::bench::render(&peaks, &figs));
    }
    Ok(())
}
