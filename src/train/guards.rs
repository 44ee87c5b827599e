//! Divergence guards: training stops, keeping the last checkpoint, when
//! the loss leaves the range a healthy run stays in.

use super::save::RunInfo;
use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;

/// A batch loss this many times that of guessing uniformly (ln classes)
/// is not a spike of healthy training but divergence.
pub(super) const DIVERGED_BATCH: f64 = 100.0;

/// Batch losses the running median is taken over, and how many it needs.
const WATCH_WINDOW: usize = 200;
const WATCH_MIN: usize = 50;
/// A batch loss this many times the running median, and above guessing,
/// is divergence even though it is finite.
pub(super) const DIVERGED_MEDIAN: f64 = 10.0;

/// The recent batch losses, for the running-median divergence guard: a
/// run that had learned (its median far below guessing) and then jumps
/// back above guessing is diverging, whatever the absolute numbers.
pub(super) struct LossWatch {
    pub(super) recent: std::collections::VecDeque<f32>,
    /// Reused for the median, so a step allocates nothing here.
    scratch: Vec<f32>,
}

impl LossWatch {
    pub(super) fn new() -> Self {
        LossWatch {
            recent: std::collections::VecDeque::with_capacity(WATCH_WINDOW),
            scratch: Vec::with_capacity(WATCH_WINDOW),
        }
    }

    /// The running median if `loss` is over [`DIVERGED_MEDIAN`] times it
    /// and over `floor`; otherwise records `loss` and returns None.
    pub(super) fn diverged(&mut self, loss: f32, floor: f64) -> Option<f64> {
        if self.recent.len() >= WATCH_MIN {
            let v = &mut self.scratch;
            v.clear();
            v.extend(self.recent.iter().copied());
            let mid = v.len() / 2;
            let median = f64::from(*v.select_nth_unstable_by(mid, f32::total_cmp).1);
            let loss = f64::from(loss);
            if loss > DIVERGED_MEDIAN * median && loss > floor {
                return Some(median);
            }
        }
        if self.recent.len() == WATCH_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(loss);
        None
    }
}

/// Stop, keeping the last checkpoint, when an epoch's training loss is far
/// above both chance and the best epoch so far: a healthy run never jumps
/// like this, while a too-large learning rate (Adam at `--lr 3`) does
/// without ever producing a NaN.
pub(super) fn check_divergence(
    rows: &[EpochMetrics],
    epoch: usize,
    loss: f64,
    chance: f64,
    step: u64,
    run: &RunInfo,
) -> Result<()> {
    let best = rows
        .iter()
        .map(|r| r.train_loss)
        .fold(f64::INFINITY, f64::min);
    let limit = if best.is_finite() {
        (4.0 * best).max(2.0 * chance)
    } else {
        2.0 * chance
    };
    if loss > limit {
        return Err(Error::Diverged {
            step,
            detail: format!(
                "epoch {epoch} ended with training loss {loss:.4e}, above {limit:.3} (twice that of guessing, or four times the best epoch so far); {}",
                run.advice()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard needs WATCH_MIN losses, then stops a loss over ten times
    /// the median that is also above guessing, and nothing less.
    #[test]
    fn loss_watch_stops_a_jump_over_the_running_median() {
        let chance = 10f64.ln();
        let mut w = LossWatch::new();
        // Early on anything passes (the model has not learned yet).
        assert_eq!(w.diverged(50.0, chance), None);
        for i in 0..WATCH_MIN {
            let l = 0.1 + 0.001 * (i % 7) as f32;
            assert_eq!(w.diverged(l, chance), None);
        }
        // 20x the median but below guessing: a noisy batch, not divergence.
        assert_eq!(w.diverged(2.0, chance), None);
        // Above guessing and over 10x the median (0.1-ish): stopped.
        let m = w.diverged(3.0, chance).expect("diverged");
        assert!((0.1..0.11).contains(&m), "median {m}");
        // The window slides: after a slow rise to 1 (each loss within ten
        // times the median), 3 is within ten times the new median.
        for _ in 0..WATCH_WINDOW {
            assert_eq!(w.diverged(1.0, chance), None);
        }
        assert_eq!(w.diverged(3.0, chance), None);
        assert_eq!(w.recent.len(), WATCH_WINDOW);
    }
}
