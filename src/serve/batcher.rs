//! Dynamic batching: requests queue as jobs; each worker thread owns one
//! set of predictors (one per batch size, all compiled before the first
//! request) and runs as many queued jobs together as fit `max_batch`.
//!
//! How long a worker waits for company: it always takes every job already
//! queued; it then waits (at most `max_delay`) only for the requests the
//! HTTP side was decoding when the batch began, i.e. those known to be on
//! their way. A lone request is therefore never delayed, a steady stream
//! does not hold every batch to the deadline, and under load the queue
//! that builds while a batch runs forms the next batch.

use super::metrics::ModelMetrics;
use super::model::Limits;
use super::request::{InputSpec, Rows};
use crate::checkpoint::Checkpoint;
use crate::data::{DataSpec, Normalizer};
use crate::embed::{Predictor, SharedWeights, TextPredictor};
use crate::error::{Error, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One loaded run: what responses and metadata report.
#[derive(Debug)]
pub struct Version {
    /// 1 at start, +1 per reload.
    pub generation: u64,
    pub run: PathBuf,
    pub input: InputSpec,
    pub class_names: Vec<String>,
    /// The model spec's name (`cnn`, `transformer`, a TOML path).
    pub model: String,
    pub device: String,
}

/// Examples of one request as the worker receives them.
pub enum Payload {
    /// Normalised `n × row` values (FP32 requests).
    Values(Vec<f32>),
    /// Raw `n × row` pixels, normalised by the worker with its version's
    /// statistics (UINT8 and PNG requests), so a reload cannot pair one
    /// run's statistics with another's weights.
    Pixels(Vec<u8>),
    Texts(Vec<String>),
}

impl From<Rows> for Payload {
    fn from(r: Rows) -> Self {
        match r {
            Rows::Values(v) => Payload::Values(v),
            Rows::Pixels(p) => Payload::Pixels(p),
            Rows::Texts(t) => Payload::Texts(t),
        }
    }
}

/// A computed answer: the logits of the job's examples and the version
/// whose weights computed them.
pub struct Answer {
    pub logits: Vec<f32>,
    pub version: Arc<Version>,
    /// Examples in the predictor run that computed this job.
    pub batch: usize,
}

pub struct Job {
    pub payload: Payload,
    pub n: usize,
    pub reply: tokio::sync::oneshot::Sender<std::result::Result<Answer, String>>,
}

/// Batch sizes compiled per worker, from 1 up to `max_batch`, each about
/// `growth` times the last (at least one more), so that a batch pads by
/// less than that factor.
pub fn batch_sizes(max_batch: usize, growth: f64) -> Vec<usize> {
    let mut v = vec![1usize];
    while let Some(&last) = v.last().filter(|&&b| b < max_batch) {
        let next = (last as f64 * growth).ceil() as usize;
        v.push(next.max(last + 1).min(max_batch));
    }
    v
}

/// [`batch_sizes`]' growth on `backend`. On the CPU a padded example
/// costs as much as a real one (with powers of two, batches of 17 ran as
/// 32), and a size costs nothing to compile: fine steps, 13 sizes up to
/// 32. A GPU's time hardly grows with a small batch, and each size costs
/// its pipelines at start: powers of two.
pub fn batch_growth(backend: &dyn crate::backend::Backend) -> f64 {
    if backend.is_cpu() {
        1.25
    } else {
        2.0
    }
}

/// A worker's predictors, one per batch size, smallest first.
pub enum Engine {
    Image {
        predictors: Vec<Predictor>,
        normalizer: Normalizer,
        channels: usize,
        row: usize,
        staging: Vec<f32>,
    },
    Text {
        predictors: Vec<TextPredictor>,
    },
}

/// Load `run` and compile one engine per worker on `limits.device`.
pub fn load(run: &Path, limits: &Limits, generation: u64) -> Result<(Vec<Engine>, Version)> {
    let (device, max_batch, workers) = (&limits.device, limits.max_batch, limits.workers);
    let ck = Checkpoint::load(run)?;
    let backend = crate::backend::select(device)?;
    let sizes = batch_sizes(max_batch, batch_growth(backend.as_ref()));
    let mut engines = Vec::with_capacity(workers);
    let (input, class_names) = match &ck.text {
        Some(text) => {
            for _ in 0..workers {
                let predictors = sizes
                    .iter()
                    .map(|&b| TextPredictor::new(run, b, backend.as_ref()))
                    .collect::<Result<Vec<_>>>()?;
                engines.push(Engine::Text { predictors });
            }
            (
                InputSpec::Text {
                    max_len: ck.input[0],
                },
                text.classes.clone(),
            )
        }
        None => {
            let weights = SharedWeights::from_run(run)?;
            let dims: [usize; 3] = ck.input.clone().try_into().map_err(|_| {
                Error::Usage(format!(
                    "{}: input {:?} is not an image [c, h, w]",
                    run.display(),
                    ck.input
                ))
            })?;
            let normalizer = ck.normalizer();
            let row = dims.iter().product::<usize>();
            for _ in 0..workers {
                let predictors = sizes
                    .iter()
                    .map(|&b| {
                        // A team helps one image (its convolutions split);
                        // batches run image groups on the worker alone.
                        let threads = if b == 1 { limits.threads_per_worker } else { 1 };
                        Predictor::new(&weights, b, backend.as_ref())?.threads(threads)
                    })
                    .collect::<Result<Vec<_>>>()?;
                engines.push(Engine::Image {
                    predictors,
                    normalizer: normalizer.clone(),
                    channels: dims[0],
                    row,
                    staging: vec![0.0; max_batch * row],
                });
            }
            let names = ck
                .data
                .parse::<DataSpec>()
                .ok()
                .and_then(|d| d.class_names());
            let class_names = (0..ck.classes)
                .map(|k| match names.and_then(|n| n.get(k)) {
                    Some(n) => (*n).to_owned(),
                    None => k.to_string(),
                })
                .collect();
            (InputSpec::Image { dims, normalizer }, class_names)
        }
    };
    let version = Version {
        generation,
        run: run.to_path_buf(),
        input,
        class_names,
        model: ck.spec.name.clone(),
        device: backend.name(),
    };
    Ok((engines, version))
}

impl Engine {
    /// The logits of `parts`' examples (each a payload of `n` examples), in
    /// order, from one predictor run, and the batch size that ran.
    pub fn run(&mut self, parts: &[(&Payload, usize)], rows: usize) -> Result<(Vec<f32>, usize)> {
        match self {
            Engine::Image {
                predictors,
                normalizer,
                channels,
                row,
                staging,
            } => {
                let p = smallest_fitting(predictors, rows, |p| p.input_shape().0[0]);
                let batch = p.input_shape().0[0];
                let mut at = 0;
                for &(payload, n) in parts {
                    let len = n * *row;
                    let dst = &mut staging[at..at + len];
                    match payload {
                        Payload::Values(v) => dst.copy_from_slice(v),
                        Payload::Pixels(px) => {
                            for (s, d) in px.chunks(*row).zip(dst.chunks_mut(*row)) {
                                normalizer.normalize_into(s, *channels, d);
                            }
                        }
                        Payload::Texts(_) => {
                            return Err(Error::Usage("text sent to an image model".into()))
                        }
                    }
                    at += len;
                }
                staging[at..batch * *row].fill(0.0);
                let logits = p.run(&staging[..batch * *row])?;
                let classes = logits.len() / batch;
                Ok((logits[..rows * classes].to_vec(), batch))
            }
            Engine::Text { predictors } => {
                let p = smallest_fitting(predictors, rows, |p| p.batch());
                let batch = p.batch();
                let mut texts: Vec<&str> = Vec::with_capacity(rows);
                for &(payload, _) in parts {
                    match payload {
                        Payload::Texts(t) => texts.extend(t.iter().map(String::as_str)),
                        _ => return Err(Error::Usage("numbers sent to a text model".into())),
                    }
                }
                let logits = p.run(&texts)?;
                let classes = logits.len() / batch;
                Ok((logits[..rows * classes].to_vec(), batch))
            }
        }
    }
}

fn smallest_fitting<T>(ps: &mut [T], rows: usize, size: impl Fn(&T) -> usize) -> &mut T {
    let i = ps
        .iter()
        .position(|p| size(p) >= rows)
        .unwrap_or(ps.len() - 1);
    &mut ps[i]
}

/// What a worker shares with the HTTP side.
pub struct Shared {
    /// Requests being decoded, not yet queued: the batcher waits for them.
    pub decoding: AtomicUsize,
    /// Requests between the handler's start and its answer (decoding,
    /// queued or computing): the fast path is for a request alone in it.
    pub in_flight: AtomicUsize,
    pub metrics: Arc<ModelMetrics>,
    pub max_batch: usize,
    pub max_delay: Duration,
    pub test_batch_delay: Duration,
    /// How long the last one-example run took, in µs (0: none yet). The
    /// fast path runs on an HTTP thread, so a model slower than
    /// [`ALONE_MAX_US`] (a large text model, a slow adapter) stays queued.
    pub solo_us: AtomicU64,
    /// When the workers last started a queued batch, in µs from `epoch`:
    /// under load a moment with one request in flight is a gap in a
    /// stream, not an idle model, and the fast path then cost an HTTP
    /// thread a one-example run and a worker its engine (at concurrency
    /// 64, 555 of 1,902 runs were such one-example runs).
    pub last_batch_us: AtomicU64,
    pub epoch: Instant,
}

/// The longest one-example run the HTTP side may do itself, in µs.
pub const ALONE_MAX_US: u64 = 1000;

/// How long the workers must have started no batch before a lone request
/// may skip the queue, in µs.
pub const QUIET_US: u64 = 1000;

impl Shared {
    fn note_solo(&self, start: Instant) {
        let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.solo_us.store(us.max(1), Ordering::Relaxed);
    }

    /// Whether a lone request may run on the HTTP thread: its runs are
    /// short and the workers have been quiet for [`QUIET_US`].
    pub fn may_run_alone(&self) -> bool {
        let now = self.now_us();
        self.solo_us.load(Ordering::Relaxed) <= ALONE_MAX_US
            && now.saturating_sub(self.last_batch_us.load(Ordering::Relaxed)) >= QUIET_US
    }

    /// An `epoch` for a model that has run no batch: quiet already.
    pub fn quiet_epoch() -> Instant {
        let now = Instant::now();
        now.checked_sub(Duration::from_micros(QUIET_US))
            .unwrap_or(now)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A worker starts a queued batch.
    fn note_batch(&self) {
        self.last_batch_us.store(self.now_us(), Ordering::Relaxed);
    }
}

/// A worker's engine and the version its weights are, locked for each
/// batch: by the worker, by a reload swapping both between two batches,
/// and by the HTTP side's fast path for a lone request
/// ([`run_alone`]).
pub struct Station {
    pub engine: Engine,
    pub version: Arc<Version>,
}

pub type Seat = Arc<Mutex<Station>>;

/// Run a lone single-example job on the calling thread with the first
/// free worker's engine, skipping the queue: when nothing else is queued
/// or being decoded there is nobody to batch with, and handing the job
/// to a sleeping worker and the answer back costs two thread wake-ups,
/// most of a small model's serving overhead. `None`: every engine was
/// busy, so the job belongs in the queue.
pub fn run_alone(
    seats: &[Seat],
    payload: &Payload,
    shared: &Shared,
) -> Option<std::result::Result<Answer, String>> {
    for seat in seats {
        let mut st = match seat.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => continue,
        };
        shared.metrics.batch_size.observe(1.0);
        let st = &mut *st;
        let start = Instant::now();
        let result = guarded_run(&mut st.engine, &[(payload, 1)], 1);
        shared.note_solo(start);
        return Some(result.map(|(logits, batch)| Answer {
            logits,
            version: st.version.clone(),
            batch,
        }));
    }
    None
}

/// A worker's loop; returns when the queue is closed and drained.
pub fn work(rx: Receiver<Job>, seat: Seat, shared: Arc<Shared>) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut rows = first.n;
        let mut jobs = vec![first];
        // Requests being decoded right now are queued within tens of µs:
        // wait for those (not for later arrivals), at most `max_delay`.
        let mut awaited = shared.decoding.load(Ordering::Acquire);
        let deadline = Instant::now() + shared.max_delay;
        while rows < shared.max_batch {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => {
                    // A request that failed to decode is no longer awaited.
                    awaited = awaited.min(shared.decoding.load(Ordering::Acquire));
                    let now = Instant::now();
                    if awaited == 0 || now >= deadline {
                        None
                    } else {
                        match rx.recv_timeout((deadline - now).min(Duration::from_micros(100))) {
                            Ok(j) => Some(j),
                            Err(RecvTimeoutError::Timeout) => continue,
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    }
                }
            };
            let Some(job) = next else { break };
            if rows + job.n > shared.max_batch {
                carry = Some(job);
                break;
            }
            rows += job.n;
            awaited = awaited.saturating_sub(1);
            jobs.push(job);
        }
        shared
            .metrics
            .queue_depth
            .store(rx.len() as u64, Ordering::Relaxed);
        // A request whose client gave up (timeout) is not computed.
        jobs.retain(|j| !j.reply.is_closed());
        let rows: usize = jobs.iter().map(|j| j.n).sum();
        if rows == 0 {
            continue;
        }
        if !shared.test_batch_delay.is_zero() {
            std::thread::sleep(shared.test_batch_delay);
        }
        shared.metrics.batch_size.observe(rows as f64);
        shared.note_batch();
        let parts: Vec<(&Payload, usize)> = jobs.iter().map(|j| (&j.payload, j.n)).collect();
        let mut st = seat.lock().unwrap_or_else(|p| p.into_inner());
        let start = Instant::now();
        let result = guarded_run(&mut st.engine, &parts, rows);
        if rows == 1 {
            shared.note_solo(start);
        }
        let version = st.version.clone();
        drop(st);
        drop(parts);
        match result {
            Ok((logits, batch)) => {
                let classes = logits.len() / rows;
                let mut at = 0;
                for job in jobs {
                    let len = job.n * classes;
                    let _ = job.reply.send(Ok(Answer {
                        logits: logits[at..at + len].to_vec(),
                        version: version.clone(),
                        batch,
                    }));
                    at += len;
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// [`Engine::run`], with a panic caught and reported as an error.
pub fn guarded_run(
    engine: &mut Engine,
    parts: &[(&Payload, usize)],
    rows: usize,
) -> std::result::Result<(Vec<f32>, usize), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(parts, rows))) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the predictor panicked".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_one_example_runs_take_the_http_thread() {
        let s = Shared {
            decoding: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            metrics: Arc::new(ModelMetrics::new("m")),
            max_batch: 4,
            max_delay: Duration::ZERO,
            test_batch_delay: Duration::ZERO,
            solo_us: AtomicU64::new(0),
            last_batch_us: AtomicU64::new(0),
            epoch: Shared::quiet_epoch(),
        };
        assert!(s.may_run_alone(), "no run yet: try the fast path once");
        s.solo_us.store(ALONE_MAX_US + 1, Ordering::Relaxed);
        assert!(!s.may_run_alone());
        s.note_solo(Instant::now());
        assert!(s.may_run_alone());
        // A queued batch just started: the workers are not quiet.
        s.note_batch();
        assert!(!s.may_run_alone());
        std::thread::sleep(Duration::from_micros(2 * QUIET_US));
        assert!(s.may_run_alone());
    }

    #[test]
    fn batch_sizes_cover_every_count_with_padding_below_the_growth() {
        assert_eq!(batch_sizes(1, 2.0), vec![1]);
        assert_eq!(batch_sizes(32, 2.0), vec![1, 2, 4, 8, 16, 32]);
        assert_eq!(batch_sizes(48, 2.0), vec![1, 2, 4, 8, 16, 32, 48]);
        let fine = batch_sizes(32, 1.25);
        assert_eq!(fine, vec![1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 32]);
        for (growth, max) in [(1.25, 32), (1.25, 256), (2.0, 100)] {
            let sizes = batch_sizes(max, growth);
            for rows in 1..=max {
                let run = *sizes.iter().find(|&&s| s >= rows).unwrap();
                assert!(
                    (run as f64) < rows as f64 * growth + 1.0,
                    "{rows} rows run as {run} ({sizes:?})"
                );
            }
        }
    }
}
