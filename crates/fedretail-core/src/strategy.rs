use crate::aggregate::Aggregate;
use crate::error::StrategyError;
use crate::params::{ModelLayout, ModelParameters};

/// A store's identifier as the network knows it (e.g. `store-007`).
pub type StoreId = String;

/// Numeric precision a store uses to send its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePrecision {
    /// Half the bytes; right for FedAvg deltas.
    F32,
    /// Exact sums; right for sufficient statistics.
    F64,
}

/// Mini-batch SGD over a store's training rows, starting from the global parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalSgd {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// L2 penalty on regularised segments, per training example.
    pub l2: f64,
    /// FedProx's proximal term: `mu/2 |w - w_global|^2` is added to the local loss,
    /// so stores with very different data drift less from the shared model in their
    /// local steps. 0 is plain FedAvg.
    pub proximal_mu: f64,
    /// Seeds the local shuffle; identical data and seed give identical updates.
    pub seed: u64,
    /// At least this many mini-batch steps a round: a tiny store passes over its rows
    /// more than `epochs` times, so it does about the work a large one does in one
    /// epoch (0: exactly `epochs`). DP-SGD keeps `epochs`: its accounting fixes them.
    pub min_steps: u32,
}

impl Default for LocalSgd {
    fn default() -> Self {
        LocalSgd {
            epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            l2: 0.0,
            proximal_mu: 0.0,
            seed: 0,
            min_steps: 0,
        }
    }
}

impl LocalSgd {
    /// Epochs over `rows` training rows: `epochs`, or more when they would take fewer
    /// than `min_steps` mini-batch steps.
    pub fn epochs_for(&self, rows: usize) -> u32 {
        let per_epoch = rows.div_ceil(self.batch_size.max(1) as usize).max(1);
        let needed = (self.min_steps as usize).div_ceil(per_epoch);
        self.epochs.max(needed.min(u32::MAX as usize) as u32)
    }

    /// One step of `w` along the mean gradient `grad * inv`, with the L2 penalty on
    /// the `mask`ed coordinates and FedProx's pull toward `anchor` (the global model).
    #[inline]
    pub fn step(&self, w: &mut [f64], grad: &[f64], inv: f64, mask: &[bool], anchor: &[f64]) {
        let (l2, mu) = (self.l2, self.proximal_mu);
        for k in 0..w.len() {
            let pen = if mask[k] { l2 * w[k] } else { 0.0 };
            w[k] -= self.learning_rate * (grad[k] * inv + pen + mu * (w[k] - anchor[k]));
        }
    }
}

/// The work a store does in a round, starting from the global parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalWork {
    /// Local SGD; the store returns `local_parameters - global_parameters`.
    LocalEpochs(LocalSgd),
    /// The gradient and Hessian of the local loss at the global parameters, packed as
    /// `[gradient (d), upper triangle of the Hessian (d(d+1)/2)]`.
    SecondOrderStatistics,
    /// Per-cluster sums, weights and squared errors of the store's points under the
    /// global clustering (see [`crate::kmeans`]).
    ClusterStatistics,
    /// Descend the clustered model's tree by training loss and send the Newton
    /// statistics of the leaf reached, in its block (see [`crate::clustered`]).
    ClusteredSecondOrderStatistics,
    /// Descend the clustered model's tree by training loss, run local SGD on the leaf
    /// reached and send its delta, in its block (see [`crate::clustered::fedavg`]).
    ClusteredLocalEpochs(LocalSgd),
}

/// Who takes part in a round and with what work.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlan {
    pub stores: Vec<StoreId>,
    pub work: LocalWork,
    pub precision: UpdatePrecision,
    /// The coordinator scales each update down to this L2 norm before folding it in
    /// (server-side clipping, set by a DP wrapper); None folds updates as they come.
    pub server_clip: Option<f64>,
}

/// A new global model and how far it moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub parameters: ModelParameters,
    /// L2 norm of the change to the global parameters.
    pub step_norm: f64,
}

/// A federated algorithm. It decides only who takes part with what work
/// ([`Strategy::configure_round`]) and how the aggregate of the replies becomes the new
/// global model ([`Strategy::apply`]); the round driver owns the loop, the transport
/// and the streaming aggregation, so every strategy is one small file and privacy or
/// robustness can wrap any of them.
pub trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// Choose the stores for `round` among those available, and their work.
    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError>;

    /// Length of the update vector each store sends for a model of this layout.
    fn update_len(&self, layout: &ModelLayout) -> usize {
        layout.len()
    }

    /// Weight of a store's update in the aggregate, from its training rows.
    fn update_weight(&self, num_examples: u64) -> f64;

    /// Whether `global` is final, so the job stops before its round limit (k-means
    /// ends when its tree is complete; averaging strategies run every round).
    fn is_finished(&self, _global: &ModelParameters) -> bool {
        false
    }

    /// Rounds after which the strategy is surely finished, if it knows.
    fn round_limit(&self) -> Option<u64> {
        None
    }

    /// Turn the round's aggregate into the next global model.
    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError>;
}

/// The round's aggregate has the `expected` length and at least one update in it.
pub(crate) fn check_aggregate(
    round: u64,
    aggregate: &Aggregate,
    expected: usize,
) -> Result<(), StrategyError> {
    if aggregate.weighted_sum.len() != expected {
        return Err(StrategyError::AggregateShape {
            expected,
            got: aggregate.weighted_sum.len(),
        });
    }
    if aggregate.num_updates == 0 {
        return Err(StrategyError::EmptyRound { round });
    }
    Ok(())
}

/// `next` as the new global model in `global`'s layout, checked finite, with how far
/// it moved.
pub(crate) fn applied(global: &ModelParameters, next: Vec<f64>) -> Result<Applied, StrategyError> {
    check_finite_model(&next)?;
    let step_norm = next
        .iter()
        .zip(global.values())
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let got = next.len();
    let parameters = ModelParameters::from_values(global.layout().clone(), next).map_err(|_| {
        StrategyError::AggregateShape {
            expected: global.layout().len(),
            got,
        }
    })?;
    Ok(Applied {
        parameters,
        step_norm,
    })
}

pub fn check_finite_model(values: &[f64]) -> Result<(), StrategyError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(StrategyError::NonFiniteModel { index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_store_runs_enough_epochs_for_the_minimum_steps_and_a_large_one_its_epochs() {
        let s = LocalSgd {
            min_steps: 20,
            ..LocalSgd::default()
        };
        // 70 rows in batches of 32: 3 steps an epoch, so 7 epochs for 20 steps.
        assert_eq!(s.epochs_for(70), 7);
        assert_eq!(s.epochs_for(2000), 1);
        assert_eq!(s.epochs_for(0), 20, "no rows: one (empty) step an epoch");
        // Without a minimum every store runs its epochs: plain FedAvg.
        let plain = LocalSgd {
            epochs: 3,
            ..LocalSgd::default()
        };
        assert_eq!(plain.epochs_for(5), 3);
        assert_eq!(plain.epochs_for(100_000), 3);
    }

    #[test]
    fn a_local_step_is_plain_sgd_without_the_proximal_term() {
        let s = LocalSgd {
            learning_rate: 0.5,
            l2: 0.1,
            ..LocalSgd::default()
        };
        let (mut w, anchor) = (vec![1.0, 2.0], vec![-7.0, 9.0]);
        s.step(&mut w, &[0.4, -0.2], 0.5, &[true, false], &anchor);
        // w - lr (g / batch + l2 w on the masked coordinate); the anchor plays no part.
        assert_eq!(w, vec![1.0 - 0.5 * (0.2 + 0.1), 2.0 + 0.5 * 0.1]);
    }

    #[test]
    fn a_proximal_term_with_lr_mu_one_lands_each_step_on_the_anchor_minus_the_gradient() {
        // w - lr (g + mu (w - a)) = a - lr g when lr mu = 1: FedProx's limit of no drift.
        let s = LocalSgd {
            learning_rate: 0.25,
            proximal_mu: 4.0,
            ..LocalSgd::default()
        };
        let (mut w, anchor) = (vec![3.0, -1.0], vec![0.5, 0.5]);
        s.step(&mut w, &[0.0, 2.0], 1.0, &[true, true], &anchor);
        assert_eq!(w, vec![0.5, 0.5 - 0.25 * 2.0]);
    }
}
