//! Clustered federated learning on the exact Newton path: stores fall into groups
//! with a model each, found from their data rather than declared.
//!
//! The model is a binary tree of `2K - 1` nodes, each a full copy of the task's model,
//! and a small `cluster_tree` segment saying which nodes are in use and whose children
//! they are. As with bisecting k-means, the whole state is in the parameter vector, so a
//! checkpoint or a restart needs nothing else.
//!
//! - Each round a store descends the tree, at every split taking the child whose model
//!   has the lower loss on its training rows (IFCA's rule), and sends the Newton
//!   statistics of the leaf it reached in that leaf's block. The coordinator takes one
//!   exact Newton step per leaf, so a leaf's model is the centralized fit of its stores.
//! - Every `rounds_per_level` rounds the leaf whose stores disagree most is split (CFL's
//!   idea, from sums only): stores also send the outer product of their gradient, so the
//!   coordinator knows `S = sum g_i g_i^T` per leaf without seeing any one `g_i`. The top
//!   eigenvector of `S`, whitened by the leaf's Hessian, is the direction along which the
//!   stores' own optima spread; the two children start on either side of the parent.
//! - A node keeps its model once split, so the root stays the network-wide model and a
//!   store can score every model on its path on its own validation days and keep the
//!   depth that serves it best: the number of groups is chosen by validation.
//!
//! With one group it is [`FedNewton`] step for step (tested).

use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::newton::{newton_statistics_len, unpack_upper, FedNewton, FedNewtonConfig, L2Penalty};
use crate::params::{ModelLayout, ModelParameters, Segment};
use crate::sampling::StoreSampler;
use crate::strategy::{
    applied, check_aggregate, Applied, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision,
};
use nalgebra::{DMatrix, DVector};

/// The segment holding the tree's state.
pub const TREE_SEGMENT: &str = "cluster_tree";
/// Most groups a job may ask for (each adds two copies of the model and statistics).
pub const MAX_GROUPS: usize = 8;

/// Default [`ClusteredNewtonConfig::group_pull`].
pub const GROUP_PULL: f64 = 20.0;

pub(crate) const UNUSED: f64 = 0.0;
pub(crate) const LEAF: f64 = 1.0;
pub(crate) const SPLIT: f64 = 2.0;

/// Nodes of a tree with `max_groups` leaves.
pub fn tree_nodes(max_groups: usize) -> usize {
    2 * max_groups.max(1) - 1
}

/// Per node its state and its parent + 1, then rounds since the last split and whether
/// splitting is over.
pub(crate) fn meta_len(nodes: usize) -> usize {
    2 * nodes + 2
}

pub(crate) fn check_groups(max_groups: usize) -> Result<(), ConfigError> {
    if (1..=MAX_GROUPS).contains(&max_groups) {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(
            "task.groups",
            "in 1..=8",
            max_groups,
        ))
    }
}

/// The layout of a tree of `base` models with up to `max_groups` leaves.
pub fn clustered_layout(base: &ModelLayout, max_groups: usize) -> Result<ModelLayout, ConfigError> {
    check_groups(max_groups)?;
    let nodes = tree_nodes(max_groups);
    let mut segments = Vec::with_capacity(nodes * base.segments().len() + 1);
    for j in 0..nodes {
        for s in base.segments() {
            segments.push(Segment::new(
                format!("g{j}.{}", s.name),
                s.len,
                s.regularized,
            ));
        }
    }
    segments.push(Segment::new(TREE_SEGMENT, meta_len(nodes), false));
    ModelLayout::new(segments)
}

/// Where a clustered job starts: every node a copy of `base`, the root the one leaf.
pub fn clustered_initial(
    base: &ModelParameters,
    max_groups: usize,
) -> Result<ModelParameters, ConfigError> {
    let layout = clustered_layout(base.layout(), max_groups)?;
    let nodes = tree_nodes(max_groups);
    let mut values = Vec::with_capacity(layout.len());
    for _ in 0..nodes {
        values.extend_from_slice(base.values());
    }
    let mut meta = vec![UNUSED; meta_len(nodes)];
    meta[0] = LEAF;
    values.extend_from_slice(&meta);
    ModelParameters::from_values(layout, values)
}

/// Length of one node's block of statistics for a model of `d` parameters:
/// `[stores, rows, gradient (d), Hessian (packed), sum of g g^T (packed)]`.
pub fn group_block_len(d: usize) -> usize {
    2 + newton_statistics_len(d) + d * (d + 1) / 2
}

/// Length of a store's update in a clustered Newton round.
pub fn clustered_statistics_len(d: usize, max_groups: usize) -> usize {
    tree_nodes(max_groups) * group_block_len(d)
}

/// Ridge of the Newton step a store takes on its own rows for the split statistics.
pub const SPLIT_RIDGE: f64 = 1.0;

/// Write one store's Newton statistics (`[gradient, packed Hessian]` of its leaf's model
/// on its `rows` training rows) into `leaf`'s block of `out`, with the outer product of
/// its own Newton step from that model (ridge [`SPLIT_RIDGE`] on the `mask`ed
/// parameters): where its data alone would move the model. Every other block stays zero.
pub fn write_leaf_statistics(
    out: &mut [f64],
    leaf: usize,
    rows: u64,
    stats: &[f64],
    mask: &[bool],
) {
    let d = mask.len();
    let block = &mut out[leaf * group_block_len(d)..(leaf + 1) * group_block_len(d)];
    block[0] = 1.0;
    block[1] = rows as f64;
    block[2..2 + stats.len()].copy_from_slice(stats);
    let Some(step) = own_step(stats, mask) else {
        return; // No step of its own: the store adds nothing to the spread.
    };
    let outer = &mut block[2 + stats.len()..];
    let mut k = 0;
    for i in 0..d {
        for j in i..d {
            outer[k] = step[i] * step[j];
            k += 1;
        }
    }
}

/// `(H + ridge)^-1 g` from a store's packed statistics.
fn own_step(stats: &[f64], mask: &[bool]) -> Option<DVector<f64>> {
    let d = mask.len();
    let (g, h) = stats.split_at(d);
    let mut h = DMatrix::from_row_slice(d, d, &unpack_upper(h, d));
    for (i, &m) in mask.iter().enumerate() {
        h[(i, i)] += if m { SPLIT_RIDGE } else { 1e-9 };
    }
    let step = h.cholesky()?.solve(&DVector::from_column_slice(g));
    step.iter().all(|v| v.is_finite()).then_some(step)
}

/// A read-only view of a clustered model: node models and the tree's shape.
#[derive(Debug, Clone, Copy)]
pub struct ClusterTree<'a> {
    values: &'a [f64],
    d: usize,
    nodes: usize,
}

impl<'a> ClusterTree<'a> {
    /// The tree in `values` of `max_groups` leaves over a model of `d` parameters,
    /// checked: a coordinator's tree with a state or parent out of place is refused.
    pub fn new(values: &'a [f64], d: usize, max_groups: usize) -> Result<Self, String> {
        let nodes = tree_nodes(max_groups);
        let expected = nodes * d + meta_len(nodes);
        if values.len() != expected {
            return Err(format!(
                "a tree of {max_groups} groups has {expected} values, got {}",
                values.len()
            ));
        }
        let tree = ClusterTree { values, d, nodes };
        tree.check()?;
        Ok(tree)
    }

    fn meta(&self) -> &'a [f64] {
        &self.values[self.nodes * self.d..]
    }

    fn state(&self, j: usize) -> f64 {
        self.meta()[j]
    }

    /// The node a node was split from (None for the root).
    pub fn parent(&self, j: usize) -> Option<usize> {
        let p = self.meta()[self.nodes + j];
        (p >= 1.0).then(|| p as usize - 1)
    }

    fn check(&self) -> Result<(), String> {
        if self.state(0) == UNUSED || self.parent(0).is_some() {
            return Err("the tree's root is not in use".into());
        }
        for j in 0..self.nodes {
            let (s, p) = (self.state(j), self.meta()[self.nodes + j]);
            if ![UNUSED, LEAF, SPLIT].contains(&s) || p.fract() != 0.0 || p < 0.0 {
                return Err(format!("tree node {j} has state {s} and parent {p}"));
            }
            if let Some(parent) = self.parent(j) {
                // Children come after their parent, so a descent always ends.
                if parent >= j || self.state(parent) != SPLIT || s == UNUSED {
                    return Err(format!("tree node {j} has parent {parent} out of place"));
                }
            }
            if s == SPLIT && self.children(j).is_none() {
                return Err(format!("tree node {j} is split but has not two children"));
            }
        }
        Ok(())
    }

    pub fn model(&self, j: usize) -> &'a [f64] {
        &self.values[j * self.d..(j + 1) * self.d]
    }

    /// The two children of a split node.
    pub fn children(&self, j: usize) -> Option<(usize, usize)> {
        let mut kids = (0..self.nodes).filter(|&c| self.parent(c) == Some(j));
        match (kids.next(), kids.next(), kids.next()) {
            (Some(a), Some(b), None) => Some((a, b)),
            _ => None,
        }
    }

    pub fn leaves(&self) -> Vec<usize> {
        (0..self.nodes).filter(|&j| self.state(j) == LEAF).collect()
    }

    /// Nodes from the root to a leaf, taking at every split the child with the lower
    /// `loss` (IFCA's rule); the first child on a tie.
    pub fn path(&self, mut loss: impl FnMut(&[f64]) -> f64) -> Vec<usize> {
        let mut path = vec![0];
        let mut j = 0;
        while let Some((a, b)) = self.children(j) {
            j = if loss(self.model(b)) < loss(self.model(a)) {
                b
            } else {
                a
            };
            path.push(j);
        }
        path
    }

    pub(crate) fn rounds_since_split(&self) -> f64 {
        self.meta()[2 * self.nodes]
    }

    pub(crate) fn splitting_over(&self) -> bool {
        self.meta()[2 * self.nodes + 1] != 0.0
    }
}

/// IFCA-style clustered Newton; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusteredNewtonConfig {
    pub newton: FedNewtonConfig,
    pub max_groups: usize,
    /// Newton rounds at each size of the tree before the next split.
    pub rounds_per_level: u64,
    /// Strength of a group model's pull toward the model it was split from.
    pub group_pull: f64,
}

impl Default for ClusteredNewtonConfig {
    fn default() -> Self {
        ClusteredNewtonConfig {
            newton: FedNewtonConfig::default(),
            max_groups: 3,
            rounds_per_level: 6,
            group_pull: GROUP_PULL,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusteredNewton {
    config: ClusteredNewtonConfig,
    sampler: StoreSampler,
}

impl ClusteredNewton {
    pub fn try_new(config: ClusteredNewtonConfig) -> Result<Self, ConfigError> {
        check_groups(config.max_groups)?;
        if !(config.group_pull >= 0.0 && config.group_pull.is_finite()) {
            return Err(ConfigError::out_of_range(
                "group_pull",
                ">= 0",
                config.group_pull,
            ));
        }
        if config.rounds_per_level == 0 {
            return Err(ConfigError::out_of_range("rounds_per_level", ">= 1", 0));
        }
        FedNewton::try_new(config.newton.clone())?;
        let sampler = StoreSampler::new(config.newton.sampling)?;
        Ok(ClusteredNewton { config, sampler })
    }

    /// Parameters of one node's model, from the tree's layout.
    fn base_len(&self, layout_len: usize) -> usize {
        node_len(layout_len, self.config.max_groups)
    }
}

/// Parameters of one node's model in a tree of `max_groups` leaves whose layout has
/// `layout_len` values.
pub(crate) fn node_len(layout_len: usize, max_groups: usize) -> usize {
    let nodes = tree_nodes(max_groups);
    layout_len.saturating_sub(meta_len(nodes)) / nodes
}

/// The largest eigenvalue of a symmetric matrix and its unit eigenvector; None when
/// it is not positive (no spread to split along).
pub(crate) fn top_eigenpair(m: DMatrix<f64>) -> Option<(f64, DVector<f64>)> {
    let eig = m.symmetric_eigen();
    let (top, lambda) = eig
        .eigenvalues
        .iter()
        .copied()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(&y.1))?;
    if lambda.is_nan() || lambda <= 1e-12 {
        return None;
    }
    Some((lambda, eig.eigenvectors.column(top).into_owned()))
}

/// A leaf's statistics, split into their parts.
struct Block<'a> {
    stores: f64,
    gradient: &'a [f64],
    hessian: &'a [f64],
    outer: &'a [f64],
}

fn block(sum: &[f64], j: usize, d: usize) -> Block<'_> {
    let b = &sum[j * group_block_len(d)..(j + 1) * group_block_len(d)];
    let s = newton_statistics_len(d);
    Block {
        stores: b[0],
        gradient: &b[2..2 + d],
        hessian: &b[2 + d..2 + s],
        outer: &b[2 + s..],
    }
}

impl Strategy for ClusteredNewton {
    fn name(&self) -> &'static str {
        "clustered_newton"
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::ClusteredSecondOrderStatistics,
            precision: UpdatePrecision::F64,
            server_clip: None,
        })
    }

    fn update_len(&self, layout: &ModelLayout) -> usize {
        clustered_statistics_len(self.base_len(layout.len()), self.config.max_groups)
    }

    fn update_weight(&self, _num_examples: u64) -> f64 {
        1.0
    }

    fn is_finished(&self, global: &ModelParameters) -> bool {
        let d = self.base_len(global.layout().len());
        ClusterTree::new(global.values(), d, self.config.max_groups)
            .is_ok_and(|t| t.splitting_over())
    }

    fn round_limit(&self) -> Option<u64> {
        Some(self.config.rounds_per_level * self.config.max_groups as u64)
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
        let mask = base_mask(layout, d);
        let all = vec![true; d];
        let mask = (mask, all);
        let mut next = global.values().to_vec();
        for leaf in tree.leaves() {
            let b = block(&aggregate.weighted_sum, leaf, d);
            if b.stores < 0.5 {
                continue; // No store in this group this round: it keeps its model.
            }
            let penalty = group_penalty(&tree, leaf, &mask, &self.config);
            let w = tree.model(leaf);
            let stepped = FedNewton::newton_step(
                w,
                b.gradient,
                b.hessian,
                &penalty,
                self.config.newton.max_step,
            )
            .ok_or(StrategyError::NotPositiveDefinite { round })?;
            next[leaf * d..(leaf + 1) * d].copy_from_slice(&stepped);
        }
        self.grow(&mut next, &tree, &aggregate.weighted_sum, d);
        applied(global, next)
    }
}

/// The penalty of `node`'s fit: the root's is the job's ridge; a group's pulls it
/// toward the model it was split from, so a group of few stores keeps the network's
/// effects where its own rows say little (a hierarchical prior). `masks` are the
/// model's regularisation mask and all-true. Public so a yardstick fits the same objective.
pub fn group_penalty<'a>(
    tree: &ClusterTree<'a>,
    node: usize,
    masks: &'a (Vec<bool>, Vec<bool>),
    config: &ClusteredNewtonConfig,
) -> L2Penalty<'a> {
    match tree.parent(node) {
        None => L2Penalty {
            mask: &masks.0,
            l2: config.newton.l2,
            center: None,
        },
        Some(p) => L2Penalty {
            mask: &masks.1,
            l2: config.group_pull,
            center: Some(tree.model(p)),
        },
    }
}

/// The regularisation mask of one node's model (the same for every node).
fn base_mask(layout: &ModelLayout, d: usize) -> Vec<bool> {
    let mut mask = layout.regularization_mask();
    mask.truncate(d);
    mask
}

impl ClusteredNewton {
    fn grow(&self, next: &mut [f64], tree: &ClusterTree<'_>, sum: &[f64], d: usize) {
        let (groups, level) = (self.config.max_groups, self.config.rounds_per_level);
        grow_tree(next, tree, d, groups, level, |leaf| {
            split_direction(block(sum, leaf, d), &self.config.newton)
        });
    }
}

/// Count the round; at the end of a level (`rounds_per_level` rounds) split the leaf
/// whose stores disagree most (`split(leaf)`: how much, and the step from its model to
/// a child's start), or say splitting is over when the tree is full or no leaf can
/// split. Shared by the Newton and the FedAvg trees.
pub(crate) fn grow_tree(
    next: &mut [f64],
    tree: &ClusterTree<'_>,
    d: usize,
    max_groups: usize,
    rounds_per_level: u64,
    split: impl Fn(usize) -> Option<(f64, Vec<f64>)>,
) {
    let nodes = tree_nodes(max_groups);
    let meta_at = nodes * d;
    let since = tree.rounds_since_split() + 1.0;
    next[meta_at + 2 * nodes] = since;
    if since < rounds_per_level as f64 || tree.splitting_over() {
        return;
    }
    let free: Vec<usize> = (0..nodes)
        .filter(|&j| next[meta_at + j] == UNUSED)
        .collect();
    let best = tree
        .leaves()
        .into_iter()
        .filter_map(|leaf| split(leaf).map(|(score, delta)| (leaf, score, delta)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let (Some((leaf, _, delta)), [a, b, ..]) = (best, free.as_slice()) else {
        next[meta_at + 2 * nodes + 1] = 1.0;
        return;
    };
    let parent: Vec<f64> = next[leaf * d..(leaf + 1) * d].to_vec();
    for (child, sign) in [(*a, 1.0), (*b, -1.0)] {
        for k in 0..d {
            next[child * d + k] = parent[k] + sign * delta[k];
        }
        next[meta_at + child] = LEAF;
        next[meta_at + nodes + child] = (leaf + 1) as f64;
    }
    next[meta_at + leaf] = SPLIT;
    next[meta_at + 2 * nodes] = 0.0;
}

/// How far a leaf's stores disagree and the step from its model to a child's start:
/// the top eigenpair of `S`, the sum of the outer products of the stores' own Newton
/// steps, so the children start one root-mean-square spread apart along the direction
/// in which the stores' own optima differ most (capped at the trust region). None for a
/// leaf of fewer than two stores or with no spread.
fn split_direction(b: Block<'_>, newton: &FedNewtonConfig) -> Option<(f64, Vec<f64>)> {
    if b.stores < 1.5 {
        return None;
    }
    let d = b.gradient.len();
    let s = DMatrix::from_row_slice(d, d, &unpack_upper(b.outer, d));
    let (lambda, v) = top_eigenpair(s)?;
    let mut delta: DVector<f64> = v * (lambda / b.stores).sqrt();
    let norm = delta.norm();
    if norm > newton.max_step {
        delta *= newton.max_step / norm;
    }
    Some((lambda, delta.iter().copied().collect()))
}

pub mod fedavg;

#[cfg(test)]
mod tests;
