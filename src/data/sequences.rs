//! Tokenised documents and their batches. Every batch is padded to the
//! run's `max_len` with id 0, so the step compiles once; each row's length
//! travels with it, and the kernels skip the padding (attention, pooling).

use super::loader::{Batch, BatchInput};
use super::shard::Shard;
use super::text::TextDataset;
use super::tokenize::TextTokenizer;
use super::{mix64, permutation};
use crate::error::Result;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;

/// Seeds the epoch order apart from other streams of the same seed.
const TEXT_ORDER_DOMAIN: u64 = 0x7465_7874_6f72_6400;

/// Documents as token ids (each at most `max_len` long) with labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizedSet {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<u32>,
    pub max_len: usize,
}

impl TokenizedSet {
    /// Tokenises every document of `ds` (in parallel; the result does not
    /// depend on the thread count).
    pub fn encode(ds: &TextDataset, tok: &TextTokenizer) -> Result<TokenizedSet> {
        let ids = ds
            .texts
            .par_iter()
            .map(|t| tok.encode(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(TokenizedSet {
            ids,
            labels: ds.labels.clone(),
            max_len: tok.settings.max_len,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Mean tokens per document (after truncation).
    pub fn mean_len(&self) -> f64 {
        let total: usize = self.ids.iter().map(Vec::len).sum();
        total as f64 / self.len().max(1) as f64
    }

    /// Rows `rows` as one batch of `batch` rows (the rest zero padding
    /// with label 0, and `len` = the real rows).
    pub fn batch(&self, rows: &[usize], batch: usize) -> Batch {
        let t = self.max_len;
        let mut ids = vec![0u32; batch * t];
        let mut lengths = vec![0u32; batch];
        let mut y = vec![0u32; batch];
        for (r, &i) in rows.iter().enumerate() {
            let doc = &self.ids[i][..self.ids[i].len().min(t)];
            ids[r * t..r * t + doc.len()].copy_from_slice(doc);
            lengths[r] = doc.len() as u32;
            y[r] = self.labels[i];
        }
        Batch {
            input: BatchInput::Tokens { ids, lengths },
            y,
            len: rows.len(),
        }
    }

    /// The batches of epoch `epoch`: in a seeded order that depends on
    /// `(seed, epoch)` when `shuffle` is set, else in order; with
    /// `drop_last` a final partial batch is skipped.
    pub fn batches(
        self: &Arc<Self>,
        batch: usize,
        shuffle: Option<u64>,
        epoch: u64,
        drop_last: bool,
        shard: Shard,
    ) -> impl ExactSizeIterator<Item = Batch> + Send + 'static {
        let order = match shuffle {
            Some(seed) => {
                let key = mix64(seed ^ mix64(epoch ^ TEXT_ORDER_DOMAIN));
                permutation(self.len(), &mut ChaCha8Rng::seed_from_u64(key))
            }
            None => (0..self.len()).collect(),
        };
        let order = shard.select(&order, batch, drop_last);
        let n = order.len();
        let count = match drop_last {
            true => n / batch.max(1),
            false => n.div_ceil(batch.max(1)),
        };
        let me = Arc::clone(self);
        (0..count).map(move |b| {
            let rows = &order[b * batch..((b + 1) * batch).min(n)];
            me.batch(rows, batch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Arc<TokenizedSet> {
        Arc::new(TokenizedSet {
            ids: vec![vec![5, 6, 7], vec![], vec![9; 10], vec![2]],
            labels: vec![0, 1, 2, 1],
            max_len: 4,
        })
    }

    /// Padding with 0, truncation to max_len, lengths and the padded rows
    /// of a last partial batch.
    #[test]
    fn batches_pad_truncate_and_count() {
        let b: Vec<Batch> = set().batches(3, None, 0, false, Shard::WHOLE).collect();
        assert_eq!(b.len(), 2);
        let BatchInput::Tokens { ids, lengths } = &b[0].input else {
            panic!("text batch")
        };
        assert_eq!(ids, &[5, 6, 7, 0, 0, 0, 0, 0, 9, 9, 9, 9]);
        assert_eq!(lengths, &[3, 0, 4]);
        assert_eq!(b[0].y, [0, 1, 2]);
        let BatchInput::Tokens { lengths, .. } = &b[1].input else {
            panic!("text batch")
        };
        assert_eq!((b[1].len, lengths.as_slice()), (1, &[1, 0, 0][..]));
        assert_eq!(set().batches(3, None, 0, true, Shard::WHOLE).count(), 1);
    }

    /// Shuffled epochs visit every document once, in an order set by
    /// (seed, epoch).
    #[test]
    fn shuffled_epochs_are_seeded_permutations() {
        let labels = |seed, epoch| -> Vec<u32> {
            set()
                .batches(1, Some(seed), epoch, false, Shard::WHOLE)
                .map(|b| b.y[0])
                .collect()
        };
        let mut a = labels(1, 1);
        assert_eq!(a, labels(1, 1));
        a.sort_unstable();
        assert_eq!(a, [0, 1, 1, 2]);
    }
}
