//! The embedding API: zero heap allocations per call (counted by a global
//! allocator), a clear error for a wrong input shape, `Send`, and results
//! identical to the training-side inference program.

use gpurt::backend::cpu::CpuBackend;
use gpurt::embed::{Predictor, SharedWeights};
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

struct Counting;

thread_local! {
    /// Allocations made by this thread (tests run on parallel threads, so a
    /// global count would include the other tests' allocations).
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations by every thread (a predictor's helper threads included):
/// read only by tests holding [`SERIAL`].
static ALL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// Held by each test of this file, so that [`ALL_ALLOCS`] counts one
/// test's threads only.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn count() {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    ALL_ALLOCS.fetch_add(1, Ordering::SeqCst);
}

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

// SAFETY: delegates to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn weights() -> (SharedWeights, tempfile::TempDir) {
    let cfg = ClassifierConfig {
        spec: ModelSpec::cnn(10),
        input: vec![3, 32, 32],
        classes: 10,
        train_batch: None,
        infer_batch: 1,
        optim: OptimConfig::new(OptimizerKind::Adam),
        seed: 11,
        fuse: true,
    };
    let mut c = Classifier::new(cfg, &CpuBackend::new()).unwrap();
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("w.safetensors");
    c.save_weights(&p, gpurt::DType::F32).unwrap();
    (
        SharedWeights::from_file(ModelSpec::cnn(10), vec![3, 32, 32], 10, &p).unwrap(),
        t,
    )
}

fn input(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + k) * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

#[test]
fn run_allocates_nothing_per_call() {
    let _serial = serial();
    let (w, _t) = weights();
    let mut p = Predictor::new(&w, 1, &CpuBackend::new()).unwrap();
    let xs: Vec<Vec<f32>> = (0..4).map(|k| input(3 * 32 * 32, k)).collect();
    for x in &xs {
        p.run(x).unwrap(); // warm-up: thread pools and scratch buffers
    }
    // The counter sees this thread's allocations (a vacuous pass otherwise).
    let probe = allocs();
    drop(std::hint::black_box(vec![1u8; 64]));
    assert_eq!(allocs(), probe + 1);
    let before = allocs();
    let mut sum = 0.0;
    for i in 0..200 {
        sum += p.run(&xs[i % 4]).unwrap()[0];
    }
    let after = allocs();
    assert!(sum.is_finite());
    // Running on the caller's thread leaves that thread's parallelism alone.
    assert_eq!(
        gpurt::backend::cpu::par::threads(),
        rayon::current_num_threads()
    );
    assert_eq!(
        after - before,
        0,
        "{} heap allocations in 200 calls",
        after - before
    );
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let _serial = serial();
    let (w, _t) = weights();
    let mut p = Predictor::new(&w, 2, &CpuBackend::new()).unwrap();
    let e = p.run(&[0.5; 100]).unwrap_err().to_string();
    assert!(e.contains("[2, 3, 32, 32]") && e.contains("100"), "{e}");
}

#[test]
fn predictor_is_send_and_matches_batch_inference() {
    let _serial = serial();
    fn is_send<T: Send>() {}
    is_send::<Predictor>();
    let (w, _t) = weights();
    let x = input(4 * 3 * 32 * 32, 3);
    let mut p4 = Predictor::new(&w, 4, &CpuBackend::new()).unwrap();
    let batch = p4.run(&x).unwrap().to_vec();
    let mut p1 = Predictor::new(&w, 1, &CpuBackend::new()).unwrap();
    for i in 0..4 {
        let one = p1.run(&x[i * 3072..(i + 1) * 3072]).unwrap();
        let want = &batch[i * 10..(i + 1) * 10];
        let err: f32 = one
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-4, "row {i}: {one:?} vs {want:?}");
    }
}

/// A predictor on two threads (its helper splits the convolutions' output
/// channels): the same logits, bit for bit, as on one, and no allocation
/// per call on either thread once warm.
#[test]
fn a_team_predictor_matches_one_thread_and_allocates_nothing() {
    let _serial = serial();
    let (w, _t) = weights();
    let mut one = Predictor::new(&w, 1, &CpuBackend::new()).unwrap();
    let mut two = Predictor::new(&w, 1, &CpuBackend::new())
        .unwrap()
        .threads(2)
        .unwrap();
    let xs: Vec<Vec<f32>> = (0..4).map(|k| input(3 * 32 * 32, k)).collect();
    for x in &xs {
        let a = one.run(x).unwrap().to_vec();
        let b = two.run(x).unwrap().to_vec();
        assert!(a.iter().any(|&v| v != 0.0));
        assert_eq!(a, b, "two threads changed the logits");
    }
    let probe = ALL_ALLOCS.load(Ordering::SeqCst);
    drop(std::hint::black_box(vec![1u8; 64]));
    assert!(ALL_ALLOCS.load(Ordering::SeqCst) > probe);
    // The counter sees every thread of the process, the test harness's
    // too, which can start the next test's thread during a window (one
    // window of 200 calls saw a single allocation in 1 run of 3, never
    // with this test alone): the fewest of three windows must be none. An
    // allocation per call would be 200 in each.
    let mut sum = 0.0;
    let n = (0..3)
        .map(|_| {
            let before = ALL_ALLOCS.load(Ordering::SeqCst);
            for i in 0..200 {
                sum += two.run(&xs[i % 4]).unwrap()[0];
            }
            ALL_ALLOCS.load(Ordering::SeqCst) - before
        })
        .min()
        .unwrap();
    assert!(sum.is_finite());
    assert_eq!(n, 0, "{n} heap allocations in 200 two-thread calls");
    assert!(Predictor::new(&w, 1, &CpuBackend::new())
        .unwrap()
        .threads(0)
        .is_err());
}

/// This target again on each narrower instruction set the host has (the
/// AVX2 convolution tiles pack their left operand into a kept buffer:
/// still no allocation per call).
#[test]
fn every_instruction_set_allocates_nothing_per_call() {
    gpurt::backend::cpu::isa::rerun_tests_on_other_sets(
        "every_instruction_set_allocates_nothing",
        &[],
    );
}
