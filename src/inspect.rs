//! `gpurt plan`: what the compiler does to a model's train step, launch by
//! launch, before and after fusion, and where the memory goes.

use crate::error::Result;
use crate::graph::cost;
use crate::graph::fuse::{fuse, Fusion};
use crate::graph::plan::{self, Module, Program};
use crate::model::{Classifier, ClassifierConfig, INFER, TRAIN};
use crate::nn::fold::fold_batch_norm;
use std::fmt::Write;

pub struct PlanReport {
    pub unfused: Module,
    pub fused: Module,
    pub fusions: Vec<Fusion>,
    /// The inference program's kernels (fused), as trained and with batch
    /// norm folded into the convolutions, and how many batch norms folded.
    pub infer: Vec<&'static str>,
    pub infer_folded: Vec<&'static str>,
    pub folded: usize,
}

/// The kernel names of a config's fused inference program at batch 1.
fn infer_kernels(config: &ClassifierConfig) -> Result<Vec<&'static str>> {
    let mut g = Classifier::infer_graph(config, 1)?;
    fuse(&mut g);
    let m = plan::compile(&[(INFER, &g)])?;
    Ok(m.programs[0]
        .launches
        .iter()
        .filter(|l| !l.op.is_view())
        .map(|l| l.op.kernel_name())
        .collect())
}

impl PlanReport {
    pub fn new(config: &ClassifierConfig) -> Result<Self> {
        let batch = config.train_batch.unwrap_or(config.infer_batch);
        let g = Classifier::train_graph(config, batch)?;
        let unfused = plan::compile(&[(TRAIN, &g)])?;
        let mut gf = g.clone();
        let fusions = fuse(&mut gf);
        let fused = plan::compile(&[(TRAIN, &gf)])?;
        // Folding needs values only for its arithmetic; the plan is the same
        // for any weights.
        let decls = config.spec.declare(&config.input)?;
        let init = crate::nn::init::init_params(&decls, 0);
        let f = fold_batch_norm(&config.spec, &init)?;
        let folded = f.count;
        let folded_cfg = ClassifierConfig {
            spec: f.spec,
            ..config.clone()
        };
        Ok(PlanReport {
            unfused,
            fused,
            fusions,
            infer: infer_kernels(config)?,
            infer_folded: infer_kernels(&folded_cfg)?,
            folded,
        })
    }

    pub fn launches_before(&self) -> usize {
        self.unfused.programs[0].launches.len()
    }
    pub fn launches_after(&self) -> usize {
        self.fused.programs[0].launches.len()
    }
    /// Transient words of the fused program against the sum of all its
    /// transient tensor sizes.
    pub fn arena_ratio(&self) -> f64 {
        let p = &self.fused.programs[0];
        p.transient_words as f64 / p.naive_words.max(1) as f64
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let table = |s: &mut String, title: &str, p: &Program| {
            let _ = writeln!(s, "{title}: {} launches", p.launches.len());
            let _ = writeln!(
                s,
                "  {:>3}  {:<24} {:>12} {:>12}  output",
                "#", "kernel", "MFLOP", "KiB moved"
            );
            for (i, l) in p.launches.iter().enumerate() {
                let mut shape = l
                    .write_shapes
                    .first()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if l.inplace.is_some() {
                    shape.push_str(" (in place)");
                }
                let _ = writeln!(
                    s,
                    "  {:>3}  {:<24} {:>12.3} {:>12.1}  {shape}",
                    i + 1,
                    l.op.kernel_name(),
                    cost::flops(l) as f64 / 1e6,
                    cost::bytes(l) as f64 / 1024.0
                );
            }
            let f: u64 = p.launches.iter().map(cost::flops).sum();
            let b: u64 = p.launches.iter().map(cost::bytes).sum();
            let _ = writeln!(
                s,
                "  total {:.1} MFLOP, {:.1} MiB moved",
                f as f64 / 1e6,
                b as f64 / (1 << 20) as f64
            );
        };
        table(&mut s, "before fusion", &self.unfused.programs[0]);
        let _ = writeln!(s);
        let _ = writeln!(s, "fusions applied ({}):", self.fusions.len());
        for f in &self.fusions {
            let _ = writeln!(
                s,
                "  {:<20} -{} launch(es) -{:.1} KiB  {}",
                f.rule,
                f.launches_saved,
                f.bytes_saved as f64 / 1024.0,
                f.detail
            );
        }
        let _ = writeln!(s);
        table(&mut s, "after fusion", &self.fused.programs[0]);
        let p = &self.fused.programs[0];
        let mib = |w: usize| w as f64 * 4.0 / (1 << 20) as f64;
        let params: usize = self
            .fused
            .persistent
            .iter()
            .filter(|b| !b.name.starts_with("optim.") && !b.name.contains("running_"))
            .map(|b| b.slot.len)
            .sum();
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "launches: {} before, {} after fusion ({:.0}%)",
            self.launches_before(),
            self.launches_after(),
            100.0 * self.launches_after() as f64 / self.launches_before().max(1) as f64
        );
        let _ = writeln!(
            s,
            "parameters: {:.3} MiB; optimiser state and running stats: {:.3} MiB",
            mib(params),
            mib(self.fused.persistent_words - params)
        );
        let _ = writeln!(
            s,
            "activations and gradients: arena {:.3} MiB vs {:.3} MiB if every tensor had its own buffer ({:.0}%)",
            mib(p.transient_words),
            mib(p.naive_words),
            100.0 * self.arena_ratio()
        );
        let _ = writeln!(
            s,
            "total arena: {:.3} MiB, known before the first launch",
            mib(self.fused.arena_words)
        );
        let count = |ks: &[&str], name: &str| ks.iter().filter(|k| k.starts_with(name)).count();
        let _ = writeln!(
            s,
            "inference: {} launches ({} batchnorm2d_infer); with batch norm folded into {} convolutions: {} launches ({} batchnorm2d_infer)",
            self.infer.len(),
            count(&self.infer, "batchnorm2d"),
            self.folded,
            self.infer_folded.len(),
            count(&self.infer_folded, "batchnorm2d"),
        );
        s
    }
}
