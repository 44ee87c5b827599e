//! What the ranks of a data-parallel run keep in agreement beyond the
//! per-step gradient sum: the starting state, the epoch's figures, and a
//! check that their weights are still the same.

use crate::dist::Collective;
use crate::error::{Error, Result};
use crate::eval::sum_across;
use crate::metrics::ConfusionMatrix;
use crate::model::Classifier;
use crate::optim::GRAD_PREFIX;

/// The persistent tensors that must match across ranks: parameters,
/// running statistics and optimiser state (not the gradient scratch).
fn state_names(model: &Classifier) -> Vec<String> {
    model
        .session()
        .module()
        .persistent
        .iter()
        .filter(|b| !b.name.starts_with(GRAD_PREFIX))
        .map(|b| b.name.clone())
        .collect()
}

/// Fails unless every rank holds bit-identical state: a hash of it per
/// rank, compared through one small all-reduce (three 21-bit pieces and
/// their squares: the pieces agree everywhere exactly when
/// `world · Σx² = (Σx)²`).
pub(super) fn check_same_weights(model: &mut Classifier, group: &dyn Collective) -> Result<()> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for n in state_names(model) {
        for v in model.session_mut().read_persistent(&n)?.data {
            h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let pieces = [h & 0x1f_ffff, (h >> 21) & 0x1f_ffff, (h >> 42) & 0x1f_ffff];
    let mut v: Vec<f64> = pieces
        .iter()
        .map(|&p| p as f64)
        .chain(pieces.iter().map(|&p| (p * p) as f64))
        .collect();
    group.all_reduce_sum_f64(&mut v)?;
    let w = group.world() as u128;
    let agree = (0..3).all(|i| w * v[3 + i] as u128 == (v[i] as u128).pow(2));
    if !agree {
        return Err(Error::Dist(format!(
            "the ranks' weights differ at step {}: were they started with the same --seed, data and checkpoint?",
            model.step
        )));
    }
    Ok(())
}

/// Rank 0's weights, running statistics and optimiser state on every rank.
pub(super) fn broadcast_state(model: &mut Classifier, group: &dyn Collective) -> Result<()> {
    for n in state_names(model) {
        let mut t = model.session_mut().read_persistent(&n)?;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut t.data);
        group.broadcast(bytes)?;
        if group.rank() != 0 {
            model.session_mut().write_persistent(&n, &t.data)?;
        }
    }
    Ok(())
}

/// The epoch's training loss sum, example count and confusion counts
/// over all ranks.
pub(super) fn epoch_totals(
    group: &dyn Collective,
    loss_sum: f64,
    seen: usize,
    cm: &mut ConfusionMatrix,
) -> Result<(f64, usize)> {
    let mut n = [seen as f64];
    group.all_reduce_sum_f64(&mut n)?;
    Ok((sum_across(group, loss_sum, cm)?, n[0] as usize))
}
