//! The data-parallel step without MPI: two ranks as two threads of this
//! process, joined by an in-memory `Collective`, so the split step (the
//! gradient program, the summed region, the update program) is checked in
//! every build. The MPI runs themselves are in tests/cli/dist.rs.

use gpurt::backend::cpu::CpuBackend;
use gpurt::dist::Collective;
use gpurt::model::{Classifier, ClassifierConfig};
use gpurt::nn::ModelSpec;
use gpurt::optim::{OptimConfig, OptimizerKind};
use gpurt::Result;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Barrier, Mutex};

/// Both ranks' buffers side by side; every operation is: post, wait, read
/// both, wait (so a slot is not overwritten while the other rank reads).
struct Shared {
    barrier: Barrier,
    f32s: [Mutex<Vec<f32>>; 2],
    f64s: [Mutex<Vec<f64>>; 2],
    bytes: Mutex<Vec<u8>>,
}

struct Pair {
    rank: usize,
    shared: Arc<Shared>,
}

fn pair() -> (Pair, Pair) {
    let shared = Arc::new(Shared {
        barrier: Barrier::new(2),
        f32s: Default::default(),
        f64s: Default::default(),
        bytes: Mutex::new(Vec::new()),
    });
    (
        Pair {
            rank: 0,
            shared: Arc::clone(&shared),
        },
        Pair { rank: 1, shared },
    )
}

impl Pair {
    /// Post `buf`, wait, add both ranks' (in rank order, so the ranks get
    /// the same bits), wait.
    fn sum<T: Copy + std::ops::Add<Output = T>>(&self, slots: &[Mutex<Vec<T>>; 2], buf: &mut [T]) {
        *slots[self.rank].lock().unwrap() = buf.to_vec();
        self.shared.barrier.wait();
        {
            let (a, b) = (slots[0].lock().unwrap(), slots[1].lock().unwrap());
            for (o, (&x, &y)) in buf.iter_mut().zip(a.iter().zip(b.iter())) {
                *o = x + y;
            }
        }
        self.shared.barrier.wait();
    }
}

impl Collective for Pair {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        2
    }
    fn describe(&self) -> String {
        "two threads".into()
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.sum(&self.shared.f32s, buf);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum(&self.shared.f64s, buf);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [u8]) -> Result<()> {
        let s = &self.shared;
        if self.rank == 0 {
            *s.bytes.lock().unwrap() = buf.to_vec();
        }
        s.barrier.wait();
        if self.rank != 0 {
            buf.copy_from_slice(&s.bytes.lock().unwrap());
        }
        s.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}

fn config(spec: ModelSpec, input: Vec<usize>, batch: usize) -> ClassifierConfig {
    ClassifierConfig {
        spec,
        input,
        classes: 10,
        train_batch: Some(batch),
        infer_batch: 4,
        optim: OptimConfig::new(OptimizerKind::Sgd),
        seed: 3,
        fuse: true,
    }
}

/// `steps` random global batches of `global` examples of `len` values.
fn batches(steps: usize, global: usize, len: usize) -> Vec<(Vec<f32>, Vec<u32>)> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    (0..steps)
        .map(|_| {
            let x = (0..global * len)
                .map(|_| r.random_range(-1.0f32..1.0))
                .collect();
            let y = (0..global).map(|_| r.random_range(0..10u32)).collect();
            (x, y)
        })
        .collect()
}

/// Trains rank `rank` of 2 on its half of every global batch.
fn rank_run(
    c: &Pair,
    cfg: ClassifierConfig,
    data: &[(Vec<f32>, Vec<u32>)],
) -> Vec<(String, gpurt::Tensor)> {
    let per = cfg.train_batch.unwrap();
    let len: usize = cfg.input.iter().product();
    let mut m = Classifier::data_parallel(cfg, &CpuBackend::new(), 2).unwrap();
    for (x, y) in data {
        let (x, y) = (
            &x[c.rank * per * len..(c.rank + 1) * per * len],
            &y[c.rank * per..(c.rank + 1) * per],
        );
        let input = gpurt::model::Input::Pixels(x);
        assert!(m.train_step_on(&input, y, 0.05, c).unwrap().is_finite());
    }
    m.model_tensors().unwrap()
}

fn two_ranks(
    spec: &ModelSpec,
    input: &[usize],
    per: usize,
    data: &[(Vec<f32>, Vec<u32>)],
) -> [Vec<(String, gpurt::Tensor)>; 2] {
    let (a, b) = pair();
    std::thread::scope(|s| {
        let h = s.spawn(|| rank_run(&b, config(spec.clone(), input.to_vec(), per), data));
        let first = rank_run(&a, config(spec.clone(), input.to_vec(), per), data);
        [first, h.join().unwrap()]
    })
}

fn bits(t: &[(String, gpurt::Tensor)]) -> Vec<(String, Vec<u32>)> {
    t.iter()
        .map(|(n, t)| (n.clone(), t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// MLP, SGD with momentum, 12 steps: two ranks at batch 8 hold the same
/// weights (bit for bit) as each other and, to 1e-6 of each tensor's
/// largest value, as one process at batch 16 (the sums of the gradients
/// over the batch are taken in another order).
#[test]
fn two_thread_ranks_match_one_process_at_twice_the_batch() {
    let (spec, input) = (ModelSpec::mlp(10), vec![1, 28, 28]);
    let data = batches(12, 16, 28 * 28);
    let [r0, r1] = two_ranks(&spec, &input, 8, &data);
    assert!(bits(&r0) == bits(&r1), "the ranks' weights differ");
    let mut one = Classifier::new(config(spec, input, 16), &CpuBackend::new()).unwrap();
    for (x, y) in &data {
        one.train_step(x, y, 0.05).unwrap();
    }
    let single = one.model_tensors().unwrap();
    for ((name, a), (_, b)) in r0.iter().zip(&single) {
        let scale = b.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-6 * scale, "{name}: {diff} vs {scale}");
    }
}

/// A batch-norm ResNet: the ranks see different data, yet keep identical
/// weights and running statistics (summed and averaged with the
/// gradients each step), and the statistics did move.
#[test]
fn running_statistics_stay_identical_across_ranks() {
    let (spec, input) = (ModelSpec::resnet(8, 10), vec![1, 9, 11]);
    let data = batches(4, 6, 9 * 11);
    let [r0, r1] = two_ranks(&spec, &input, 3, &data);
    assert!(bits(&r0) == bits(&r1), "the ranks' state differs");
    let stats: Vec<&(String, gpurt::Tensor)> = r0
        .iter()
        .filter(|(n, _)| n.ends_with("running_mean"))
        .collect();
    assert!(!stats.is_empty());
    assert!(
        stats.iter().any(|(_, t)| t.data.iter().any(|&v| v != 0.0)),
        "running means never moved"
    );
}
