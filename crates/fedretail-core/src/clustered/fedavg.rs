//! Clustered federated learning for FedAvg: the tree of group models of
//! [`crate::clustered`], trained by local SGD instead of exact Newton steps.
//!
//! - Each round a store descends the tree by training loss (IFCA's rule), runs its
//!   local epochs from the leaf's model and sends, in that leaf's block, its row count
//!   `n`, its delta times `n`, and the outer product of its delta times `n`.
//! - A leaf's model moves by the row-weighted mean delta of its stores: FedAvg within
//!   the group. A leaf no store reached keeps its model.
//! - Every `rounds_per_level` rounds the leaf whose stores' deltas spread most is split
//!   (CFL's idea, Sattler et al. 2020, from sums only): the top eigenpair of the
//!   weighted covariance of the deltas, `S/W - m m^T`, gives the direction in which the
//!   stores pull apart, and the two children start one spread either side of it.
//!
//! With one group it is [`FedAvg`] with f64 updates, bit for bit (tested).

use super::{check_groups, grow_tree, node_len, top_eigenpair, tree_nodes, ClusterTree};
use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::fedavg::{FedAvg, FedAvgConfig};
use crate::newton::unpack_upper;
use crate::params::{ModelLayout, ModelParameters};
use crate::sampling::StoreSampler;
use crate::strategy::{
    applied, check_aggregate, Applied, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision,
};
use nalgebra::DMatrix;

/// Values of one node's block in a store's update: stores, rows, the row-weighted
/// delta and the row-weighted outer product of the delta (packed upper triangle).
pub fn delta_block_len(d: usize) -> usize {
    2 + d + d * (d + 1) / 2
}

/// Length of a store's update in a clustered FedAvg round.
pub fn clustered_delta_len(d: usize, max_groups: usize) -> usize {
    tree_nodes(max_groups) * delta_block_len(d)
}

/// Write one store's local `delta` (from `leaf`'s model, over `rows` training rows)
/// into `leaf`'s block of `out`; every other block stays zero.
pub fn write_leaf_delta(out: &mut [f64], leaf: usize, rows: u64, delta: &[f64]) {
    let d = delta.len();
    let len = delta_block_len(d);
    let block = &mut out[leaf * len..(leaf + 1) * len];
    let n = rows as f64;
    block[0] = 1.0;
    block[1] = n;
    let (sum, outer) = block[2..].split_at_mut(d);
    for (s, &x) in sum.iter_mut().zip(delta) {
        *s = n * x;
    }
    let mut k = 0;
    for i in 0..d {
        for j in i..d {
            outer[k] = n * delta[i] * delta[j];
            k += 1;
        }
    }
}

/// A leaf's sums, split into their parts.
struct DeltaBlock<'a> {
    stores: f64,
    rows: f64,
    sum: &'a [f64],
    outer: &'a [f64],
}

fn delta_block(sum: &[f64], j: usize, d: usize) -> DeltaBlock<'_> {
    let len = delta_block_len(d);
    let b = &sum[j * len..(j + 1) * len];
    DeltaBlock {
        stores: b[0],
        rows: b[1],
        sum: &b[2..2 + d],
        outer: &b[2 + d..],
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusteredFedAvgConfig {
    pub fedavg: FedAvgConfig,
    pub max_groups: usize,
    /// FedAvg rounds at each size of the tree before the next split.
    pub rounds_per_level: u64,
}

impl Default for ClusteredFedAvgConfig {
    fn default() -> Self {
        ClusteredFedAvgConfig {
            fedavg: FedAvgConfig::default(),
            max_groups: 2,
            rounds_per_level: 6,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusteredFedAvg {
    config: ClusteredFedAvgConfig,
    sampler: StoreSampler,
}

impl ClusteredFedAvg {
    pub fn try_new(config: ClusteredFedAvgConfig) -> Result<Self, ConfigError> {
        check_groups(config.max_groups)?;
        if config.rounds_per_level == 0 {
            return Err(ConfigError::out_of_range("rounds_per_level", ">= 1", 0));
        }
        FedAvg::try_new(config.fedavg.clone())?;
        let sampler = StoreSampler::new(config.fedavg.sampling)?;
        Ok(ClusteredFedAvg { config, sampler })
    }

    /// Parameters of one node's model, from the tree's layout.
    fn base_len(&self, layout_len: usize) -> usize {
        node_len(layout_len, self.config.max_groups)
    }
}

impl Strategy for ClusteredFedAvg {
    fn name(&self) -> &'static str {
        "clustered_fedavg"
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::ClusteredLocalEpochs(self.config.fedavg.local_sgd(round)),
            // Sums of products: f64, as FedAvg's own weighting would be.
            precision: UpdatePrecision::F64,
            server_clip: None,
        })
    }

    fn update_len(&self, layout: &ModelLayout) -> usize {
        clustered_delta_len(self.base_len(layout.len()), self.config.max_groups)
    }

    /// Each store weighs its own block by its rows, so the coordinator adds them as
    /// they come.
    fn update_weight(&self, _num_examples: u64) -> f64 {
        1.0
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let layout = global.layout();
        let d = self.base_len(layout.len());
        let expected = self.update_len(layout);
        check_aggregate(round, aggregate, expected)?;
        let tree = ClusterTree::new(global.values(), d, self.config.max_groups)
            .map_err(|_| StrategyError::AggregateShape { expected, got: 0 })?;
        let eta = self.config.fedavg.server_learning_rate;
        let mut next = global.values().to_vec();
        for leaf in tree.leaves() {
            let b = delta_block(&aggregate.weighted_sum, leaf, d);
            if b.stores < 0.5 || b.rows <= 0.0 {
                continue; // No store in this group this round: it keeps its model.
            }
            // As FedAvg's weighted mean: the sum times the inverse of the weight.
            let inv = 1.0 / b.rows;
            for (w, s) in next[leaf * d..(leaf + 1) * d].iter_mut().zip(b.sum) {
                *w += eta * (s * inv);
            }
        }
        let (groups, level) = (self.config.max_groups, self.config.rounds_per_level);
        let sum = &aggregate.weighted_sum;
        grow_tree(&mut next, &tree, d, groups, level, |leaf| {
            spread(delta_block(sum, leaf, d))
        });
        applied(global, next)
    }
}

/// How far a leaf's stores pull apart and the step from its model to a child's start:
/// the top eigenpair of the row-weighted covariance of their deltas, so the children
/// start one root-mean-square spread apart along the direction in which the stores'
/// local training disagrees most. None for a leaf of fewer than two stores or with no
/// spread.
fn spread(b: DeltaBlock<'_>) -> Option<(f64, Vec<f64>)> {
    if b.stores < 1.5 || b.rows <= 0.0 {
        return None;
    }
    let d = b.sum.len();
    let mut cov = DMatrix::from_row_slice(d, d, &unpack_upper(b.outer, d)) / b.rows;
    let mean: Vec<f64> = b.sum.iter().map(|s| s / b.rows).collect();
    for i in 0..d {
        for j in 0..d {
            cov[(i, j)] -= mean[i] * mean[j];
        }
    }
    let (lambda, v) = top_eigenpair(cov)?;
    let delta = v * lambda.sqrt();
    Some((lambda, delta.iter().copied().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::StreamingWeightedSum;
    use crate::clustered::{clustered_initial, clustered_layout};
    use crate::params::Segment;
    use crate::update::UpdateVector;

    fn base(d: usize) -> ModelParameters {
        let layout = ModelLayout::new(vec![Segment::new("w", d, true)]).unwrap();
        ModelParameters::from_values(layout, (0..d).map(|i| 0.1 * i as f64).collect()).unwrap()
    }

    /// Stores' deltas and row counts; the deltas of group `g` point along `+-e0`.
    fn stores(d: usize) -> Vec<(Vec<f64>, u64)> {
        (0..6)
            .map(|i| {
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                let delta = (0..d)
                    .map(|k| if k == 0 { sign } else { 0.01 * (i + k) as f64 })
                    .collect();
                (delta, 10 + 7 * i as u64)
            })
            .collect()
    }

    #[test]
    fn with_one_group_it_is_fedavg_bit_for_bit() {
        let d = 4;
        let config = FedAvgConfig {
            precision: UpdatePrecision::F64,
            server_learning_rate: 0.7,
            ..FedAvgConfig::default()
        };
        let mut plain = FedAvg::new(config.clone());
        let mut grouped = ClusteredFedAvg::try_new(ClusteredFedAvgConfig {
            fedavg: config,
            max_groups: 1,
            rounds_per_level: 1,
        })
        .unwrap();
        let mut flat = base(d);
        let mut tree = clustered_initial(&base(d), 1).unwrap();
        for round in 1..=3 {
            let mut a = StreamingWeightedSum::new(d);
            let mut b = StreamingWeightedSum::new(grouped.update_len(tree.layout()));
            for (delta, rows) in stores(d) {
                a.push(UpdateVector::F64(delta.clone()), plain.update_weight(rows))
                    .unwrap();
                let mut u = vec![0.0; grouped.update_len(tree.layout())];
                write_leaf_delta(&mut u, 0, rows, &delta);
                b.push(UpdateVector::F64(u), grouped.update_weight(rows))
                    .unwrap();
            }
            flat = plain.apply(round, &flat, &a.finish()).unwrap().parameters;
            tree = grouped.apply(round, &tree, &b.finish()).unwrap().parameters;
            assert_eq!(&tree.values()[..d], flat.values(), "round {round}");
        }
    }

    #[test]
    fn a_leaf_splits_along_the_direction_its_stores_pull_apart() {
        let d = 3;
        let mut s = ClusteredFedAvg::try_new(ClusteredFedAvgConfig {
            max_groups: 2,
            rounds_per_level: 1,
            ..ClusteredFedAvgConfig::default()
        })
        .unwrap();
        let tree = clustered_initial(&base(d), 2).unwrap();
        let len = s.update_len(tree.layout());
        let mut sum = StreamingWeightedSum::new(len);
        for (delta, rows) in stores(d) {
            let mut u = vec![0.0; len];
            write_leaf_delta(&mut u, 0, rows, &delta);
            sum.push(UpdateVector::F64(u), 1.0).unwrap();
        }
        let next = s.apply(1, &tree, &sum.finish()).unwrap().parameters;
        let t = ClusterTree::new(next.values(), d, 2).unwrap();
        assert_eq!(t.leaves(), vec![1, 2]);
        let (a, b) = (t.model(1), t.model(2));
        // The children sit either side of the root along e0, about one spread apart.
        assert!((a[0] - b[0]).abs() > 1.5, "{a:?} {b:?}");
        assert!((a[1] - b[1]).abs() < 0.1 && (a[2] - b[2]).abs() < 0.1);
        assert_eq!(
            clustered_layout(base(d).layout(), 2).unwrap().len(),
            next.values().len()
        );
    }

    #[test]
    fn a_leaf_no_store_reached_keeps_its_model_and_bad_configs_are_named() {
        let d = 2;
        let mut s = ClusteredFedAvg::try_new(ClusteredFedAvgConfig {
            max_groups: 2,
            rounds_per_level: 100,
            ..ClusteredFedAvgConfig::default()
        })
        .unwrap();
        let tree = clustered_initial(&base(d), 2).unwrap();
        let mut sum = StreamingWeightedSum::new(s.update_len(tree.layout()));
        sum.push(
            UpdateVector::F64(vec![0.0; s.update_len(tree.layout())]),
            1.0,
        )
        .unwrap();
        let next = s.apply(1, &tree, &sum.finish()).unwrap().parameters;
        assert_eq!(&next.values()[..d], &tree.values()[..d]);
        let e = ClusteredFedAvg::try_new(ClusteredFedAvgConfig {
            max_groups: 0,
            ..ClusteredFedAvgConfig::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("groups"), "{e}");
    }
}
