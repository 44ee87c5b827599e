//! One served model: its queue, its workers' reload slots and the version
//! now answering. Blocking code (loading, compiling); the HTTP side calls
//! it from `spawn_blocking`.

use super::batcher::{self, Answer, Job, Payload, Seat, Shared, Station, Version};
use super::metrics::ModelMetrics;
use super::request::InputSpec;
use crate::backend::DeviceSpec;
use crate::error::{Error, Result};
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a model is served.
#[derive(Clone, Debug)]
pub struct Limits {
    pub device: DeviceSpec,
    pub workers: usize,
    /// Threads of each worker's batch-1 predictor (`Predictor::threads`).
    pub threads_per_worker: usize,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub max_queue: usize,
    /// Tests only: each worker sleeps this long before every batch, so a
    /// test can fill the queue or pass the timeout deterministically.
    #[doc(hidden)]
    pub test_batch_delay: Duration,
}

pub struct Model {
    pub name: String,
    /// The queue; `None` once the server has stopped.
    tx: RwLock<Option<Sender<Job>>>,
    pub shared: Arc<Shared>,
    limits: Limits,
    current: RwLock<Arc<Version>>,
    seats: Vec<Seat>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl Model {
    /// Load `run`, compile every worker's predictors and start the workers.
    pub fn start(
        name: &str,
        run: PathBuf,
        limits: Limits,
    ) -> Result<(Arc<Model>, Vec<JoinHandle<()>>)> {
        let (engines, version) = batcher::load(&run, &limits, 1)?;
        let version = Arc::new(version);
        let (tx, rx) = crossbeam_channel::bounded(limits.max_queue);
        let shared = Arc::new(Shared {
            decoding: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            metrics: Arc::new(ModelMetrics::new(name)),
            max_batch: limits.max_batch,
            max_delay: limits.max_delay,
            test_batch_delay: limits.test_batch_delay,
            solo_us: AtomicU64::new(0),
            last_batch_us: AtomicU64::new(0),
            epoch: Shared::quiet_epoch(),
        });
        let mut seats = Vec::new();
        let mut handles = Vec::new();
        for (i, engine) in engines.into_iter().enumerate() {
            let seat: Seat = Arc::new(Mutex::new(Station {
                engine,
                version: version.clone(),
            }));
            seats.push(seat.clone());
            let (rx, s) = (rx.clone(), shared.clone());
            let h = std::thread::Builder::new()
                .name(format!("gpurt-serve-{name}-{i}"))
                .spawn(move || batcher::work(rx, seat, s))
                .map_err(|e| Error::Usage(format!("cannot start a worker thread: {e}")))?;
            handles.push(h);
        }
        let model = Arc::new(Model {
            name: name.to_owned(),
            tx: RwLock::new(Some(tx)),
            shared,
            limits,
            current: RwLock::new(version),
            seats,
            reloading: Mutex::new(()),
        });
        Ok((model, handles))
    }

    /// Queue a job; `Err` gives it back when the queue is full or closed.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        let tx = self.tx.read().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                let r = tx.try_send(job).map_err(|e| e.into_inner());
                self.shared
                    .metrics
                    .queue_depth
                    .store(tx.len() as u64, Ordering::Relaxed);
                r
            }
            None => Err(job),
        }
    }

    /// Answer a single-example request on the calling thread when it is
    /// the model's only request in flight (nothing else decoding, queued
    /// or waiting for its answer; a worker free) and its one-example runs
    /// are short: see [`batcher::run_alone`]. `None`: queue it.
    ///
    /// "In flight", not "nothing queued": under load each HTTP thread
    /// finds the queue empty between its own requests, and the first
    /// version, which asked only that, ran 92% of the requests at
    /// concurrency 64 one at a time on the HTTP threads (the batch-size
    /// histogram: 54,427 of 58,748 batches of one).
    pub fn try_alone(
        &self,
        payload: &Payload,
        n: usize,
    ) -> Option<std::result::Result<Answer, String>> {
        if n != 1 || !self.shared.test_batch_delay.is_zero() || !self.shared.may_run_alone() {
            return None;
        }
        let idle = self.shared.in_flight.load(Ordering::Acquire) <= 1
            && self
                .tx
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|tx| tx.is_empty());
        if !idle {
            return None;
        }
        batcher::run_alone(&self.seats, payload, &self.shared)
    }

    /// Close the queue: the workers answer what is queued, then end.
    pub fn close(&self) {
        self.tx.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// The version now answering.
    pub fn version(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.shared.metrics
    }

    /// Load `run` (by default the folder already served) and hand every
    /// worker its new predictors, compiled here, off the request path. Each
    /// engine is swapped between two batches (under its lock), so every
    /// batch runs entirely on one version and no request fails. The input must keep its shape.
    pub fn reload(&self, run: Option<PathBuf>) -> Result<Arc<Version>> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.version();
        let run = run.unwrap_or_else(|| old.run.clone());
        let (engines, version) = batcher::load(&run, &self.limits, old.generation + 1)?;
        let same_input = match (&old.input, &version.input) {
            (InputSpec::Image { dims: a, .. }, InputSpec::Image { dims: b, .. }) => a == b,
            (InputSpec::Text { .. }, InputSpec::Text { .. }) => true,
            _ => false,
        };
        if !same_input {
            return Err(Error::Usage(format!(
                "{}: its input ({}) differs from the served model's ({}); serve it under another name",
                run.display(),
                describe(&version.input),
                describe(&old.input)
            )));
        }
        let version = Arc::new(version);
        for (seat, engine) in self.seats.iter().zip(engines) {
            *seat.lock().unwrap_or_else(|p| p.into_inner()) = Station {
                engine,
                version: version.clone(),
            };
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = version.clone();
        self.shared.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(version)
    }
}

/// `[1, 28, 28]` or `text`.
pub fn describe(input: &InputSpec) -> String {
    match input {
        InputSpec::Image { dims, .. } => format!("{dims:?}"),
        InputSpec::Text { max_len } => format!("text, up to {max_len} tokens"),
    }
}
