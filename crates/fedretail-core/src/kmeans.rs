//! Federated k-means, exact. Each round a store sends, per cluster, the weighted sum
//! of its points, their weight and their squared error: sums over points, so the
//! aggregate is the same whichever store holds which point, and one federated round
//! is one centralized Lloyd step on the union of the data.
//!
//! Two strategies share that statistic:
//! - [`FedKMeans`]: flat Lloyd iterations from given centroids.
//! - [`FedBisectingKMeans`]: the hierarchical variant the seeds use (Spark's
//!   `bisecting_kmeans`): start with one cluster, repeatedly split the leaf with the
//!   largest squared error in two by 2-means on that leaf's points only, until there
//!   are `num_clusters` leaves. A point belongs to the leaf it reaches by descending
//!   the tree to the nearer child at each split, in training and in prediction.
//!
//! The whole state of a bisecting run (tree, split in progress, iteration) lives in the
//! model parameters, so a checkpointed model resumes exactly.

use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::params::{ModelLayout, ModelParameters, Segment};
use crate::sampling::{SamplingConfig, StoreSampler};
use crate::strategy::{Applied, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Node status in the bisecting tree.
const UNUSED: f64 = 0.0;
const LEAF: f64 = 1.0;
const INTERNAL: f64 = 2.0;
/// A leaf whose split left one side empty: it is kept whole.
const FINAL_LEAF: f64 = 3.0;

/// Values per node in the tree segment: status, left child, right child.
const TREE_FIELDS: usize = 3;
/// State segment: initialised, node being split (-1: none), iteration, complete.
const STATE_LEN: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansConfig {
    /// Clusters wanted (leaves of the bisecting tree).
    pub num_clusters: usize,
    /// Feature dimension.
    pub dim: usize,
    /// Lloyd iterations per split (bisecting) or in all (flat).
    pub max_iterations: u32,
    /// A split stops early when no centroid moves more than this (in feature units).
    pub tolerance: f64,
    /// Seeds the direction in which a cluster is split.
    pub seed: u64,
    pub sampling: SamplingConfig,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            num_clusters: 3,
            dim: 1,
            max_iterations: 20,
            tolerance: 1e-6,
            seed: 2,
            sampling: SamplingConfig::default(),
        }
    }
}

impl KMeansConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.num_clusters == 0 || self.num_clusters > 1024 {
            return Err(ConfigError::out_of_range(
                "num_clusters",
                "in 1..=1024",
                self.num_clusters,
            ));
        }
        if self.dim == 0 {
            return Err(ConfigError::out_of_range("dim", ">= 1", 0));
        }
        if self.max_iterations == 0 {
            return Err(ConfigError::out_of_range("max_iterations", ">= 1", 0));
        }
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::out_of_range(
                "tolerance",
                ">= 0",
                self.tolerance,
            ));
        }
        Ok(())
    }
}

/// Length of the per-cluster statistics for `clusters` clusters of dimension `dim`:
/// `[sum (dim), weight, squared error]` per cluster.
pub fn cluster_statistics_len(clusters: usize, dim: usize) -> usize {
    clusters * (dim + 2)
}

#[inline]
fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

#[inline]
fn add_point(stats: &mut [f64], cluster: usize, dim: usize, x: &[f64], w: f64, sq_err: f64) {
    let s = &mut stats[cluster * (dim + 2)..(cluster + 1) * (dim + 2)];
    for (acc, v) in s[..dim].iter_mut().zip(x) {
        *acc += w * v;
    }
    s[dim] += w;
    s[dim + 1] += w * sq_err;
}

/// Index of the nearest centroid (ties: the lower index) and its squared distance.
pub fn nearest(centroids: &[f64], dim: usize, x: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (c, centroid) in centroids.chunks_exact(dim).enumerate() {
        let d = squared_distance(centroid, x);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// Flat k-means statistics of `points` (row-major, `dim` per row; `weights` one per
/// row or empty for all 1) against `centroids`, added into `out`.
pub fn add_flat_statistics(
    centroids: &[f64],
    dim: usize,
    points: &[f64],
    weights: &[f64],
    out: &mut [f64],
) {
    for (i, x) in points.chunks_exact(dim).enumerate() {
        let w = weights.get(i).copied().unwrap_or(1.0);
        let (c, d) = nearest(centroids, dim, x);
        add_point(out, c, dim, x, w, d);
    }
}

/// Centroids from summed statistics; a cluster with no weight keeps its old centroid.
/// Returns the new centroids and the largest distance any centroid moved.
pub fn centroids_from_statistics(old: &[f64], dim: usize, stats: &[f64]) -> (Vec<f64>, f64) {
    let mut new = old.to_vec();
    let mut shift = 0.0f64;
    for (c, s) in stats.chunks_exact(dim + 2).enumerate() {
        let weight = s[dim];
        if weight > 0.0 {
            let centroid = &mut new[c * dim..(c + 1) * dim];
            for (v, sum) in centroid.iter_mut().zip(&s[..dim]) {
                *v = sum / weight;
            }
            shift = shift.max(squared_distance(centroid, &old[c * dim..(c + 1) * dim]).sqrt());
        }
    }
    (new, shift)
}

// ---------------------------------------------------------------------------------
// Flat k-means.

/// Layout of a flat k-means model: one segment of `k * dim` centroid coordinates.
pub fn flat_kmeans_layout(num_clusters: usize, dim: usize) -> Result<ModelLayout, ConfigError> {
    ModelLayout::new(vec![Segment::new("centroids", num_clusters * dim, false)])
}

/// Federated Lloyd iterations from the global centroids.
#[derive(Debug, Clone)]
pub struct FedKMeans {
    config: KMeansConfig,
    sampler: StoreSampler,
}

impl FedKMeans {
    pub fn try_new(config: KMeansConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let sampler = StoreSampler::new(config.sampling)?;
        Ok(FedKMeans { config, sampler })
    }
}

impl Strategy for FedKMeans {
    fn name(&self) -> &'static str {
        "kmeans"
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::ClusterStatistics,
            precision: UpdatePrecision::F64,
            server_clip: None,
        })
    }

    fn update_len(&self, _layout: &ModelLayout) -> usize {
        cluster_statistics_len(self.config.num_clusters, self.config.dim)
    }

    fn update_weight(&self, _num_examples: u64) -> f64 {
        // Statistics are already sums over points.
        1.0
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let dim = self.config.dim;
        let expected = cluster_statistics_len(self.config.num_clusters, dim);
        check_aggregate(aggregate, expected, round)?;
        let (centroids, shift) =
            centroids_from_statistics(global.values(), dim, &aggregate.weighted_sum);
        crate::strategy::check_finite_model(&centroids)?;
        let parameters =
            ModelParameters::from_values(global.layout().clone(), centroids).map_err(|_| {
                StrategyError::AggregateShape {
                    expected: global.layout().len(),
                    got: aggregate.weighted_sum.len(),
                }
            })?;
        Ok(Applied {
            parameters,
            step_norm: shift,
        })
    }
}

fn check_aggregate(
    aggregate: &Aggregate,
    expected: usize,
    round: u64,
) -> Result<(), StrategyError> {
    if aggregate.num_updates == 0 {
        return Err(StrategyError::EmptyRound { round });
    }
    if aggregate.weighted_sum.len() != expected {
        return Err(StrategyError::AggregateShape {
            expected,
            got: aggregate.weighted_sum.len(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Bisecting k-means.

/// Nodes a tree with `k` leaves can need.
fn max_nodes(num_clusters: usize) -> usize {
    2 * num_clusters - 1
}

/// Layout of a bisecting k-means model: node centroids, the tree, the run's state.
pub fn bisecting_kmeans_layout(
    num_clusters: usize,
    dim: usize,
) -> Result<ModelLayout, ConfigError> {
    let nodes = max_nodes(num_clusters);
    ModelLayout::new(vec![
        Segment::new("centroids", nodes * dim, false),
        Segment::new("tree", nodes * TREE_FIELDS, false),
        Segment::new("state", STATE_LEN, false),
    ])
}

/// The initial (empty) bisecting model: the root is a leaf whose centroid the first
/// round computes.
pub fn bisecting_kmeans_initial(
    num_clusters: usize,
    dim: usize,
) -> Result<ModelParameters, ConfigError> {
    let layout = bisecting_kmeans_layout(num_clusters, dim)?;
    let mut values = vec![0.0; layout.len()];
    let nodes = max_nodes(num_clusters);
    let tree = nodes * dim;
    values[tree] = LEAF;
    values[tree + 1] = -1.0;
    values[tree + 2] = -1.0;
    let state = tree + nodes * TREE_FIELDS;
    values[state + 1] = -1.0;
    ModelParameters::from_values(layout, values)
}

/// A read-only view of a bisecting k-means model's values.
#[derive(Debug, Clone, Copy)]
pub struct ClusterTree<'a> {
    centroids: &'a [f64],
    tree: &'a [f64],
    state: &'a [f64],
    dim: usize,
}

impl<'a> ClusterTree<'a> {
    /// Checks the shape and that every child index points inside the tree, so that a
    /// model from anywhere (a peer, a checkpoint) cannot send descent out of bounds.
    pub fn new(values: &'a [f64], num_clusters: usize, dim: usize) -> Result<Self, ConfigError> {
        let nodes = max_nodes(num_clusters);
        let expected = nodes * dim + nodes * TREE_FIELDS + STATE_LEN;
        if values.len() != expected || dim == 0 {
            return Err(ConfigError::Layout(format!(
                "bisecting k-means model with {num_clusters} clusters of dimension {dim} has {expected} values, got {}",
                values.len()
            )));
        }
        let (centroids, rest) = values.split_at(nodes * dim);
        let (tree, state) = rest.split_at(nodes * TREE_FIELDS);
        for node in tree.chunks_exact(TREE_FIELDS) {
            if node[0] == INTERNAL {
                for &child in &node[1..] {
                    // Children always have higher indices than their parent, which also
                    // rules out cycles.
                    if !(child >= 1.0 && child < nodes as f64 && child.fract() == 0.0) {
                        return Err(ConfigError::Layout(format!(
                            "tree has an invalid child index {child}"
                        )));
                    }
                }
            }
        }
        for (i, node) in tree.chunks_exact(TREE_FIELDS).enumerate() {
            if node[0] == INTERNAL && (node[1] as usize <= i || node[2] as usize <= i) {
                return Err(ConfigError::Layout(format!(
                    "tree node {i} has a child that is not after it"
                )));
            }
        }
        Ok(ClusterTree {
            centroids,
            tree,
            state,
            dim,
        })
    }

    pub fn num_nodes(&self) -> usize {
        self.tree.len() / TREE_FIELDS
    }

    fn status(&self, node: usize) -> f64 {
        self.tree[node * TREE_FIELDS]
    }

    fn children(&self, node: usize) -> (usize, usize) {
        let t = &self.tree[node * TREE_FIELDS..];
        (t[1] as usize, t[2] as usize)
    }

    pub fn centroid(&self, node: usize) -> &'a [f64] {
        &self.centroids[node * self.dim..(node + 1) * self.dim]
    }

    pub fn is_initialized(&self) -> bool {
        self.state[0] > 0.5
    }

    /// True once the tree has all its leaves (or no leaf can be split further).
    pub fn is_complete(&self) -> bool {
        self.state[3] > 0.5
    }

    fn is_leaf(&self, node: usize) -> bool {
        let s = self.status(node);
        s == LEAF || s == FINAL_LEAF
    }

    /// Leaf nodes in index order; a leaf's position here is its cluster label.
    pub fn leaves(&self) -> Vec<usize> {
        (0..self.num_nodes()).filter(|&n| self.is_leaf(n)).collect()
    }

    /// Centroids of the leaves, in label order.
    pub fn leaf_centroids(&self) -> Vec<f64> {
        self.leaves()
            .iter()
            .flat_map(|&n| self.centroid(n).iter().copied())
            .collect()
    }

    /// Descend from the root to the nearer child at each split; calls `visit` on every
    /// node passed (root included) with the squared distance to its centroid.
    #[inline]
    fn descend(&self, x: &[f64], mut visit: impl FnMut(usize, f64)) -> usize {
        let mut node = 0;
        loop {
            visit(node, squared_distance(self.centroid(node), x));
            if self.status(node) != INTERNAL {
                return node;
            }
            let (l, r) = self.children(node);
            let dl = squared_distance(self.centroid(l), x);
            let dr = squared_distance(self.centroid(r), x);
            node = if dr < dl { r } else { l };
        }
    }

    /// The leaf node a point belongs to.
    pub fn leaf_of(&self, x: &[f64]) -> usize {
        self.descend(x, |_, _| {})
    }

    /// Cluster label (position among [`ClusterTree::leaves`]) and squared distance to
    /// that leaf's centroid.
    pub fn predict(&self, x: &[f64]) -> (usize, f64) {
        let leaf = self.leaf_of(x);
        let label = (0..leaf).filter(|&n| self.is_leaf(n)).count();
        (label, squared_distance(self.centroid(leaf), x))
    }

    /// Per-node statistics of `points` (weights: one per row, or empty for all 1)
    /// added into `out` (length [`cluster_statistics_len`] of the node count).
    pub fn add_statistics(&self, points: &[f64], weights: &[f64], out: &mut [f64]) {
        let dim = self.dim;
        for (i, x) in points.chunks_exact(dim).enumerate() {
            let w = weights.get(i).copied().unwrap_or(1.0);
            self.descend(x, |node, d| add_point(out, node, dim, x, w, d));
        }
    }
}

/// Bisecting k-means over the federation, one Lloyd step of the current split per
/// round; see the module docs.
#[derive(Debug, Clone)]
pub struct FedBisectingKMeans {
    config: KMeansConfig,
    sampler: StoreSampler,
}

impl FedBisectingKMeans {
    pub fn try_new(config: KMeansConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let sampler = StoreSampler::new(config.sampling)?;
        Ok(FedBisectingKMeans { config, sampler })
    }

    pub fn config(&self) -> &KMeansConfig {
        &self.config
    }

    pub fn initial_model(&self) -> Result<ModelParameters, ConfigError> {
        bisecting_kmeans_initial(self.config.num_clusters, self.config.dim)
    }

    /// Rounds a run can take at most: one to find the root, then per split one round
    /// to choose the leaf and up to `max_iterations` Lloyd steps.
    pub fn max_rounds(&self) -> u64 {
        1 + (self.config.num_clusters as u64 - 1) * (1 + self.config.max_iterations as u64) + 1
    }

    /// The next model from this round's summed statistics.
    fn next_values(
        &self,
        round: u64,
        values: &[f64],
        stats: &[f64],
    ) -> Result<(Vec<f64>, f64), StrategyError> {
        let (k, dim) = (self.config.num_clusters, self.config.dim);
        let nodes = max_nodes(k);
        let tree_at = nodes * dim;
        let state_at = tree_at + nodes * TREE_FIELDS;
        let view = ClusterTree::new(values, k, dim).map_err(|_| StrategyError::AggregateShape {
            expected: state_at + STATE_LEN,
            got: values.len(),
        })?;
        let step = TreeStep {
            config: &self.config,
            nodes,
            tree_at,
            state_at,
            view,
            values,
            stats,
        };
        if step.view.is_complete() {
            return Ok((values.to_vec(), 0.0));
        }
        if !step.view.is_initialized() {
            return step.first_centroid(round);
        }
        let splitting = values[state_at + 1];
        if splitting >= 0.0 {
            return Ok(step.lloyd(splitting as usize));
        }
        Ok(step.split_worst_leaf())
    }
}

/// One round's move of the bisecting tree, from the summed cluster statistics.
struct TreeStep<'a> {
    config: &'a KMeansConfig,
    nodes: usize,
    tree_at: usize,
    state_at: usize,
    view: ClusterTree<'a>,
    values: &'a [f64],
    stats: &'a [f64],
}

impl TreeStep<'_> {
    /// A node's summed (point sums, weight, squared error).
    fn node_stats(&self, n: usize) -> &[f64] {
        let dim = self.config.dim;
        &self.stats[n * (dim + 2)..(n + 1) * (dim + 2)]
    }

    /// The root: the mean of every point.
    fn first_centroid(&self, round: u64) -> Result<(Vec<f64>, f64), StrategyError> {
        let dim = self.config.dim;
        let s = self.node_stats(0);
        if s[dim] <= 0.0 {
            return Err(StrategyError::EmptyRound { round });
        }
        let mut next = self.values.to_vec();
        for j in 0..dim {
            next[j] = s[j] / s[dim];
        }
        next[self.state_at] = 1.0;
        let step = squared_distance(&next[..dim], &self.values[..dim]).sqrt();
        if self.config.num_clusters == 1 {
            next[self.state_at + 3] = 1.0;
        }
        Ok((next, step))
    }

    /// One Lloyd step of the 2-means on the parent's points; the split ends when it
    /// converges or runs out of iterations.
    fn lloyd(&self, parent: usize) -> (Vec<f64>, f64) {
        let (dim, state_at) = (self.config.dim, self.state_at);
        let mut next = self.values.to_vec();
        let mut step = 0.0;
        let (l, r) = self.view.children(parent);
        for child in [l, r] {
            let s = self.node_stats(child);
            if s[dim] > 0.0 {
                let c = &mut next[child * dim..(child + 1) * dim];
                for j in 0..dim {
                    c[j] = s[j] / s[dim];
                }
                step = f64::max(step, squared_distance(c, self.view.centroid(child)).sqrt());
            }
        }
        let iteration = self.values[state_at + 2] + 1.0;
        next[state_at + 2] = iteration;
        if step <= self.config.tolerance || iteration >= self.config.max_iterations as f64 {
            next[state_at + 1] = -1.0;
            next[state_at + 2] = 0.0;
            if self.node_stats(l)[dim] <= 0.0 || self.node_stats(r)[dim] <= 0.0 {
                // One side is empty: the cluster cannot be split; keep it whole.
                next[self.tree_at + parent * TREE_FIELDS] = FINAL_LEAF;
                for child in [l, r] {
                    next[self.tree_at + child * TREE_FIELDS] = UNUSED;
                }
            }
        }
        (next, step)
    }

    /// Splits the leaf with the largest squared error, or ends the tree.
    fn split_worst_leaf(&self) -> (Vec<f64>, f64) {
        let dim = self.config.dim;
        let mut next = self.values.to_vec();
        let leaves = self.view.leaves();
        let candidate = leaves
            .iter()
            .copied()
            .filter(|&n| self.view.status(n) == LEAF && self.node_stats(n)[dim] >= 2.0)
            .filter(|&n| self.node_stats(n)[dim + 1] > 0.0)
            .fold(None, |best: Option<usize>, n| match best {
                Some(b) if self.node_stats(b)[dim + 1] >= self.node_stats(n)[dim + 1] => Some(b),
                _ => Some(n),
            });
        let nodes = self.nodes;
        let free = (1..nodes).find(|&n| {
            self.view.status(n) == UNUSED && n + 1 < nodes && self.view.status(n + 1) == UNUSED
        });
        match (leaves.len() < self.config.num_clusters, candidate, free) {
            (true, Some(parent), Some(left)) => {
                let step = self.split(&mut next, parent, left);
                (next, step)
            }
            _ => {
                next[self.state_at + 3] = 1.0;
                (next, 0.0)
            }
        }
    }

    /// Opens children `left` and `left + 1` of `parent`, one radius either side of
    /// its centroid along a seeded direction; returns the radius.
    fn split(&self, next: &mut [f64], parent: usize, left: usize) -> f64 {
        let (dim, tree_at) = (self.config.dim, self.tree_at);
        let right = left + 1;
        let s = self.node_stats(parent);
        let radius = (s[dim + 1] / s[dim] / dim as f64).sqrt();
        // Deterministic for (seed, parent): the same run splits the same way.
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ (parent as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut direction: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let norm = direction
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(1e-12);
        direction.iter_mut().for_each(|v| *v /= norm);
        let center = self.view.centroid(parent);
        for j in 0..dim {
            next[left * dim + j] = center[j] - radius * direction[j];
            next[right * dim + j] = center[j] + radius * direction[j];
        }
        let t = tree_at + parent * TREE_FIELDS;
        next[t] = INTERNAL;
        next[t + 1] = left as f64;
        next[t + 2] = right as f64;
        for child in [left, right] {
            let c = tree_at + child * TREE_FIELDS;
            next[c] = LEAF;
            next[c + 1] = -1.0;
            next[c + 2] = -1.0;
        }
        next[self.state_at + 1] = parent as f64;
        next[self.state_at + 2] = 0.0;
        radius
    }
}

impl Strategy for FedBisectingKMeans {
    fn name(&self) -> &'static str {
        "bisecting_kmeans"
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::ClusterStatistics,
            precision: UpdatePrecision::F64,
            server_clip: None,
        })
    }

    fn update_len(&self, _layout: &ModelLayout) -> usize {
        cluster_statistics_len(max_nodes(self.config.num_clusters), self.config.dim)
    }

    fn round_limit(&self) -> Option<u64> {
        Some(self.max_rounds())
    }

    fn is_finished(&self, global: &ModelParameters) -> bool {
        ClusterTree::new(global.values(), self.config.num_clusters, self.config.dim)
            .is_ok_and(|t| t.is_complete())
    }

    fn update_weight(&self, _num_examples: u64) -> f64 {
        1.0
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let expected = cluster_statistics_len(max_nodes(self.config.num_clusters), self.config.dim);
        check_aggregate(aggregate, expected, round)?;
        let (values, step_norm) =
            self.next_values(round, global.values(), &aggregate.weighted_sum)?;
        crate::strategy::check_finite_model(&values)?;
        let parameters =
            ModelParameters::from_values(global.layout().clone(), values).map_err(|_| {
                StrategyError::AggregateShape {
                    expected: global.layout().len(),
                    got: expected,
                }
            })?;
        Ok(Applied {
            parameters,
            step_norm,
        })
    }
}

/// Bisecting k-means on one party's points, by the same rounds the federation runs:
/// the local-only model, and the centralized reference when given the pooled points.
pub fn fit_bisecting_kmeans(
    config: &KMeansConfig,
    points: &[f64],
    weights: &[f64],
) -> Result<ModelParameters, StrategyError> {
    let mut strategy = FedBisectingKMeans::try_new(config.clone())
        .map_err(|e| StrategyError::Config(e.to_string()))?;
    let mut model = strategy
        .initial_model()
        .map_err(|e| StrategyError::Config(e.to_string()))?;
    let len = strategy.update_len(model.layout());
    for round in 1..=strategy.max_rounds() {
        let view = ClusterTree::new(model.values(), config.num_clusters, config.dim)
            .map_err(|e| StrategyError::Config(e.to_string()))?;
        if view.is_complete() {
            break;
        }
        let mut stats = vec![0.0; len];
        view.add_statistics(points, weights, &mut stats);
        let aggregate = Aggregate {
            weighted_sum: stats,
            total_weight: 1.0,
            num_updates: 1,

            within_clip: 0,
        };
        model = strategy.apply(round, &model, &aggregate)?.parameters;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamingWeightedSum;
    use crate::UpdateVector;
    use proptest::prelude::{any, prop_assert, proptest};

    /// Three well separated blobs in 2-D, deterministic.
    fn blobs(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        let mut out = Vec::new();
        for i in 0..n {
            let (cx, cy) = centers[i % 3];
            out.push(cx + rng.random_range(-1.0..1.0));
            out.push(cy + rng.random_range(-1.0..1.0));
        }
        out
    }

    /// The textbook Lloyd step, written independently of the statistics code.
    fn centralized_lloyd_step(points: &[f64], dim: usize, centroids: &[f64]) -> Vec<f64> {
        let k = centroids.len() / dim;
        let mut sums = vec![0.0; k * dim];
        let mut counts = vec![0usize; k];
        for x in points.chunks(dim) {
            let mut best = 0;
            let mut best_d = f64::INFINITY;
            for c in 0..k {
                let d: f64 = (0..dim)
                    .map(|j| (x[j] - centroids[c * dim + j]).powi(2))
                    .sum();
                if d < best_d {
                    best_d = d;
                    best = c;
                }
            }
            counts[best] += 1;
            for j in 0..dim {
                sums[best * dim + j] += x[j];
            }
        }
        (0..k * dim)
            .map(|i| {
                let c = i / dim;
                if counts[c] == 0 {
                    centroids[i]
                } else {
                    sums[i] / counts[c] as f64
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn one_federated_round_is_one_centralized_lloyd_step(
            seed in any::<u64>(), n in 10usize..200, k in 1usize..6, stores in 1usize..6,
        ) {
            let dim = 3;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let points: Vec<f64> = (0..n * dim).map(|_| rng.random_range(-5.0..5.0)).collect();
            let centroids: Vec<f64> = (0..k * dim).map(|_| rng.random_range(-5.0..5.0)).collect();
            let config = KMeansConfig { num_clusters: k, dim, ..Default::default() };
            let mut strategy = FedKMeans::try_new(config).unwrap();
            let layout = flat_kmeans_layout(k, dim).unwrap();
            let global = ModelParameters::from_values(layout.clone(), centroids.clone()).unwrap();
            // Points are dealt to stores at random.
            let owner: Vec<usize> = (0..n).map(|_| rng.random_range(0..stores)).collect();
            let mut sum = StreamingWeightedSum::new(strategy.update_len(&layout));
            for s in 0..stores {
                let mine: Vec<f64> = (0..n).filter(|&i| owner[i] == s)
                    .flat_map(|i| points[i * dim..(i + 1) * dim].to_vec()).collect();
                let mut stats = vec![0.0; cluster_statistics_len(k, dim)];
                add_flat_statistics(&centroids, dim, &mine, &[], &mut stats);
                sum.push(UpdateVector::F64(stats), strategy.update_weight(0)).unwrap();
            }
            let federated = strategy.apply(1, &global, &sum.finish()).unwrap().parameters;
            let central = centralized_lloyd_step(&points, dim, &centroids);
            for (a, b) in federated.values().iter().zip(&central) {
                prop_assert!((a - b).abs() <= 1e-9, "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn bisecting_finds_three_blobs_and_is_deterministic() {
        let points = blobs(300, 1);
        let config = KMeansConfig {
            num_clusters: 3,
            dim: 2,
            ..Default::default()
        };
        let a = fit_bisecting_kmeans(&config, &points, &[]).unwrap();
        let b = fit_bisecting_kmeans(&config, &points, &[]).unwrap();
        assert_eq!(a.values(), b.values());
        let tree = ClusterTree::new(a.values(), 3, 2).unwrap();
        assert!(tree.is_complete());
        let mut found: Vec<(i64, i64)> = tree
            .leaf_centroids()
            .chunks(2)
            .map(|c| (c[0].round() as i64, c[1].round() as i64))
            .collect();
        found.sort();
        assert_eq!(found, vec![(0, 0), (0, 10), (10, 0)]);
        // Every point of a blob gets the same label.
        let labels: Vec<usize> = points.chunks(2).map(|x| tree.predict(x).0).collect();
        for i in 3..labels.len() {
            assert_eq!(labels[i], labels[i % 3]);
        }
    }

    #[test]
    fn federated_bisecting_equals_pooled_bisecting() {
        let points = blobs(240, 7);
        let config = KMeansConfig {
            num_clusters: 4,
            dim: 2,
            ..Default::default()
        };
        let pooled = fit_bisecting_kmeans(&config, &points, &[]).unwrap();
        let mut strategy = FedBisectingKMeans::try_new(config.clone()).unwrap();
        let mut model = strategy.initial_model().unwrap();
        let parts: Vec<&[f64]> = points.chunks(2 * 80).collect();
        for round in 1..=strategy.max_rounds() {
            let view = ClusterTree::new(model.values(), 4, 2).unwrap();
            if view.is_complete() {
                break;
            }
            let mut sum = StreamingWeightedSum::new(strategy.update_len(model.layout()));
            for part in &parts {
                let mut stats = vec![0.0; strategy.update_len(model.layout())];
                view.add_statistics(part, &[], &mut stats);
                sum.push(UpdateVector::F64(stats), 1.0).unwrap();
            }
            model = strategy
                .apply(round, &model, &sum.finish())
                .unwrap()
                .parameters;
        }
        for (a, b) in model.values().iter().zip(pooled.values()) {
            assert!((a - b).abs() <= 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn weights_count_as_repeated_points() {
        let config = KMeansConfig {
            num_clusters: 2,
            dim: 1,
            ..Default::default()
        };
        let repeated = [0.0, 0.0, 0.0, 1.0, 9.0, 10.0];
        let weighted = [0.0, 1.0, 9.0, 10.0];
        let a = fit_bisecting_kmeans(&config, &repeated, &[]).unwrap();
        let b = fit_bisecting_kmeans(&config, &weighted, &[3.0, 1.0, 1.0, 1.0]).unwrap();
        let ca = ClusterTree::new(a.values(), 2, 1).unwrap().leaf_centroids();
        let cb = ClusterTree::new(b.values(), 2, 1).unwrap().leaf_centroids();
        for (x, y) in ca.iter().zip(&cb) {
            assert!((x - y).abs() < 1e-12);
        }
    }

    #[test]
    fn a_hostile_tree_is_refused_not_followed() {
        let mut model = bisecting_kmeans_initial(2, 1).unwrap().into_values();
        // Root internal, pointing at itself.
        model[3] = INTERNAL;
        model[4] = 0.0;
        model[5] = 99.0;
        assert!(ClusterTree::new(&model, 2, 1).is_err());
    }

    #[test]
    fn identical_points_stop_splitting_cleanly() {
        let config = KMeansConfig {
            num_clusters: 3,
            dim: 2,
            ..Default::default()
        };
        let points = vec![1.0; 20];
        let m = fit_bisecting_kmeans(&config, &points, &[]).unwrap();
        let tree = ClusterTree::new(m.values(), 3, 2).unwrap();
        assert!(tree.is_complete());
        assert_eq!(tree.leaves().len(), 1);
    }
}
