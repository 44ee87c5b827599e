//! Labelled examples of any kind, as the trainer and the evaluator see
//! them: something that yields batches of an epoch.

use super::loader::{Augment, Batch, BatchLoader};
use super::sequences::TokenizedSet;
use super::shard::Shard;
use super::{Dataset, Normalizer};
use crate::error::{Error, Result};
use std::sync::Arc;

pub enum Examples {
    /// Images, normalised on the loader thread; `augment` applies to
    /// shuffled (training) epochs only.
    Images {
        set: Arc<Dataset>,
        norm: Normalizer,
        augment: Augment,
    },
    /// Tokenised documents.
    Text(Arc<TokenizedSet>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Examples::Images { set, .. } => set.len(),
            Examples::Text(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of `epoch`, shuffled by `shuffle`'s seed when given
    /// (and then augmented); with `drop_last` a final partial batch is
    /// skipped, otherwise padded.
    pub fn batches(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        epoch: u64,
        drop_last: bool,
    ) -> Result<Box<dyn ExactSizeIterator<Item = Batch> + Send>> {
        self.shard_batches(batch, shuffle, epoch, drop_last, Shard::WHOLE)
    }

    /// [`Examples::batches`] for one rank of a data-parallel run (see
    /// [`Shard`]): `batch` is the per-rank batch.
    pub fn shard_batches(
        &self,
        batch: usize,
        shuffle: Option<u64>,
        epoch: u64,
        drop_last: bool,
        shard: Shard,
    ) -> Result<Box<dyn ExactSizeIterator<Item = Batch> + Send>> {
        if batch == 0 {
            return Err(Error::Usage("batch size must be at least 1".into()));
        }
        Ok(match self {
            Examples::Images { set, norm, augment } => {
                let augment = match shuffle {
                    Some(_) => *augment,
                    None => Augment::none(),
                };
                Box::new(BatchLoader::new(
                    Arc::clone(set),
                    norm.clone(),
                    batch,
                    shuffle,
                    epoch,
                    augment,
                    drop_last,
                    shard,
                )?)
            }
            Examples::Text(t) => Box::new(t.batches(batch, shuffle, epoch, drop_last, shard)),
        })
    }
}
