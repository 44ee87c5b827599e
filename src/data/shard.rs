//! Which examples of an epoch one worker of a data-parallel run sees.
//!
//! Every rank computes the same epoch order (same seed, same epoch), then
//! keeps its part of each global batch: global batch `k` holds
//! `batch × world` consecutive examples of the order and rank `r` takes the
//! `r`-th block of `batch` of them. So the union of the ranks' `k`-th
//! batches is exactly the single-process `k`-th batch at `batch × world`,
//! which is what makes a 2-rank run comparable step for step with one
//! process at twice the batch. (PyTorch's `DistributedSampler` deals the
//! order out round-robin instead, which visits the same examples per epoch
//! but batches them differently from a single process.)

/// One worker's place in a data-parallel run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    /// The whole data set: a single process.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    pub fn is_whole(self) -> bool {
        self.world <= 1
    }

    /// This rank's examples of `order`, in visiting order, for batches of
    /// `batch` per rank. With `drop_last` only whole global batches count
    /// (every rank runs the same number of full steps); otherwise the tail
    /// shorter than a global batch is split into `world` near-equal blocks
    /// (evaluation: every example is seen by exactly one rank).
    pub fn select(self, order: &[usize], batch: usize, drop_last: bool) -> Vec<usize> {
        if self.is_whole() {
            return order.to_vec();
        }
        let global = batch.max(1) * self.world;
        let full = order.len() / global;
        let mut mine = Vec::with_capacity(full * batch + batch);
        for k in 0..full {
            let start = k * global + self.rank * batch;
            mine.extend_from_slice(&order[start..start + batch]);
        }
        if !drop_last {
            let tail = &order[full * global..];
            let per = tail.len().div_ceil(self.world);
            let start = (self.rank * per).min(tail.len());
            mine.extend_from_slice(&tail[start..(start + per).min(tail.len())]);
        }
        mine
    }

    /// How many examples [`Shard::select`] keeps of `n`.
    pub fn len(self, n: usize, batch: usize, drop_last: bool) -> usize {
        if self.is_whole() {
            return n;
        }
        let global = batch.max(1) * self.world;
        let (full, tail) = (n / global, n % global);
        let per = tail.div_ceil(self.world);
        let block = match drop_last {
            true => 0,
            false => tail.saturating_sub(self.rank * per).min(per),
        };
        full * batch + block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranks' k-th batches together are the single process's k-th
    /// batch at `batch × world`, and with the tail every example is seen
    /// once.
    #[test]
    fn ranks_partition_each_global_batch() {
        let order: Vec<usize> = (0..103).map(|i| (i * 37) % 103).collect();
        for world in [2, 3] {
            let batch = 8;
            let parts: Vec<Vec<usize>> = (0..world)
                .map(|rank| Shard { rank, world }.select(&order, batch, true))
                .collect();
            let steps = 103 / (batch * world);
            for p in &parts {
                assert_eq!(p.len(), steps * batch);
            }
            for k in 0..steps {
                let mut joined = Vec::new();
                for p in &parts {
                    joined.extend_from_slice(&p[k * batch..(k + 1) * batch]);
                }
                assert_eq!(joined, order[k * batch * world..(k + 1) * batch * world]);
            }
            for rank in 0..world {
                let s = Shard { rank, world };
                for drop in [true, false] {
                    assert_eq!(s.len(103, batch, drop), s.select(&order, batch, drop).len());
                }
            }
            let mut all: Vec<usize> = (0..world)
                .flat_map(|rank| Shard { rank, world }.select(&order, batch, false))
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..103).collect::<Vec<_>>(), "world {world}");
        }
        assert_eq!(Shard::WHOLE.select(&order, 8, true), order);
    }
}
