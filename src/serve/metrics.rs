//! The server's counters and histograms, written in Prometheus' text
//! exposition format. Lock-free atomics: the hot path only adds.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds of the batch-size histogram, in examples.
const BATCH_BOUNDS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram with fixed bounds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in micro-units (µs or examples × 10⁶).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.sum_micro.fetch_add((v * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The kinds of failed request, as the `kind` label says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    UnknownModel,
    TooLarge,
    Overloaded,
    Timeout,
    Internal,
}

impl ErrorKind {
    const ALL: [ErrorKind; 6] = [
        ErrorKind::BadRequest,
        ErrorKind::UnknownModel,
        ErrorKind::TooLarge,
        ErrorKind::Overloaded,
        ErrorKind::Timeout,
        ErrorKind::Internal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            404 => ErrorKind::UnknownModel,
            413 => ErrorKind::TooLarge,
            503 => ErrorKind::Overloaded,
            504 => ErrorKind::Timeout,
            400..=499 => ErrorKind::BadRequest,
            _ => ErrorKind::Internal,
        }
    }
}

/// One model's figures.
pub struct ModelMetrics {
    pub name: String,
    pub requests: AtomicU64,
    pub examples: AtomicU64,
    errors: [AtomicU64; 6],
    pub latency: Histogram,
    pub batch_size: Histogram,
    pub queue_depth: AtomicU64,
    pub reloads: AtomicU64,
}

impl ModelMetrics {
    pub fn new(name: &str) -> Self {
        ModelMetrics {
            name: name.to_owned(),
            requests: AtomicU64::new(0),
            examples: AtomicU64::new(0),
            errors: Default::default(),
            latency: Histogram::new(&LATENCY_BOUNDS),
            batch_size: Histogram::new(&BATCH_BOUNDS),
            queue_depth: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Relaxed)
    }
}

/// Requests that named no served model (or no route).
#[derive(Default)]
pub struct ServerMetrics {
    pub unrouted_errors: AtomicU64,
}

/// The `/metrics` page for every model.
pub fn render(models: &[&ModelMetrics], server: &ServerMetrics) -> String {
    let mut out = String::new();
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    // One value per model: (name, type, help, the model's value).
    type PerModel = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ModelMetrics) -> u64,
    );
    let simple: [PerModel; 4] = [
        (
            "gpurt_requests_total",
            "counter",
            "Inference requests received.",
            |m| m.requests.load(Relaxed),
        ),
        (
            "gpurt_examples_total",
            "counter",
            "Examples classified.",
            |m| m.examples.load(Relaxed),
        ),
        (
            "gpurt_queue_depth",
            "gauge",
            "Requests waiting for a worker.",
            |m| m.queue_depth.load(Relaxed),
        ),
        (
            "gpurt_reloads_total",
            "counter",
            "Successful hot reloads.",
            |m| m.reloads.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in simple {
        family(&mut out, name, kind, help);
        for m in models {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", m.name, value(m));
        }
    }
    family(
        &mut out,
        "gpurt_request_errors_total",
        "counter",
        "Failed requests by kind.",
    );
    for m in models {
        for k in ErrorKind::ALL {
            let _ = writeln!(
                out,
                "gpurt_request_errors_total{{model=\"{}\",kind=\"{}\"}} {}",
                m.name,
                k.label(),
                m.errors(k)
            );
        }
    }
    let _ = writeln!(
        out,
        "gpurt_request_errors_total{{model=\"\",kind=\"unknown_model\"}} {}",
        server.unrouted_errors.load(Relaxed)
    );
    family(
        &mut out,
        "gpurt_batch_size",
        "histogram",
        "Examples per predictor run.",
    );
    for m in models {
        m.batch_size.write(
            &mut out,
            "gpurt_batch_size",
            &format!("model=\"{}\"", m.name),
        );
    }
    family(
        &mut out,
        "gpurt_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response.",
    );
    for m in models {
        m.latency.write(
            &mut out,
            "gpurt_request_duration_seconds",
            &format!("model=\"{}\"", m.name),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = ModelMetrics::new("m");
        for v in [0.00005, 0.0003, 0.0003, 7.0] {
            m.latency.observe(v);
        }
        let page = render(&[&m], &ServerMetrics::default());
        assert!(page.contains("gpurt_request_duration_seconds_bucket{model=\"m\",le=\"0.0001\"} 1"));
        assert!(page.contains("gpurt_request_duration_seconds_bucket{model=\"m\",le=\"0.0005\"} 3"));
        assert!(page.contains("gpurt_request_duration_seconds_bucket{model=\"m\",le=\"5\"} 3"));
        assert!(page.contains("gpurt_request_duration_seconds_bucket{model=\"m\",le=\"+Inf\"} 4"));
        assert!(page.contains("gpurt_request_duration_seconds_count{model=\"m\"} 4"));
    }
}
