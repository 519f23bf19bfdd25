//! Clustering at a store: the local side of federated (bisecting) k-means, and the
//! evaluation the seeds run with `model_evaluate`: silhouette, cluster sizes and
//! per-cluster feature means.

use crate::task::{LocalTask, TaskError, TaskMetrics};
use fedretail_core::kmeans::{bisecting_kmeans_layout, cluster_statistics_len, ClusterTree};
use fedretail_core::{LocalWork, ModelLayout};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Points (row-major) a store clusters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointSet {
    pub dim: usize,
    pub values: Vec<f64>,
}

impl PointSet {
    pub fn new(dim: usize) -> Self {
        PointSet {
            dim,
            values: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> std::slice::ChunksExact<'_, f64> {
        self.values.chunks_exact(self.dim)
    }
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Mean silhouette of `points` labelled `labels` (cluster count `k`), on at most
/// `max_points` points: exact (all pairs) when the store has no more, otherwise on a
/// seeded uniform sample, which is what keeps it O(max_points^2) for large stores.
/// Points alone in their cluster score 0, as in scikit-learn. None with fewer than two
/// clusters in use.
pub fn silhouette(
    points: &PointSet,
    labels: &[usize],
    k: usize,
    max_points: usize,
    seed: u64,
) -> Option<f64> {
    let n = points.len();
    let idx: Vec<usize> = if n <= max_points {
        (0..n).collect()
    } else {
        let mut v = sample(&mut ChaCha8Rng::seed_from_u64(seed), n, max_points).into_vec();
        v.sort_unstable();
        v
    };
    let mut counts = vec![0usize; k];
    for &i in &idx {
        counts[labels[i]] += 1;
    }
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        return None;
    }
    let mut sums = vec![0.0; k];
    let mut total = 0.0;
    for &i in &idx {
        sums.iter_mut().for_each(|s| *s = 0.0);
        for &j in &idx {
            if i != j {
                sums[labels[j]] += distance(points.row(i), points.row(j));
            }
        }
        let own = labels[i];
        if counts[own] <= 1 {
            continue;
        }
        let a = sums[own] / (counts[own] - 1) as f64;
        let b = (0..k)
            .filter(|&c| c != own && counts[c] > 0)
            .map(|c| sums[c] / counts[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let s = if a.max(b) > 0.0 {
            (b - a) / a.max(b)
        } else {
            0.0
        };
        total += s;
    }
    Some(total / idx.len() as f64)
}

/// The simplified silhouette (distances to centroids instead of to all points): O(n k),
/// for stores too large even for a sample to be cheap.
pub fn simplified_silhouette(
    points: &PointSet,
    labels: &[usize],
    centroids: &[f64],
) -> Option<f64> {
    let dim = points.dim;
    let k = centroids.len() / dim;
    if k < 2 || points.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for (x, &own) in points.rows().zip(labels) {
        let a = distance(x, &centroids[own * dim..(own + 1) * dim]);
        let b = (0..k)
            .filter(|&c| c != own)
            .map(|c| distance(x, &centroids[c * dim..(c + 1) * dim]))
            .fold(f64::INFINITY, f64::min);
        total += if a.max(b) > 0.0 {
            (b - a) / a.max(b)
        } else {
            0.0
        };
    }
    Some(total / points.len() as f64)
}

/// What a clustering looks like on a store's data: sizes and feature means per cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterSummary {
    pub label: usize,
    pub size: usize,
    pub means: Vec<f64>,
}

pub fn summarize(points: &PointSet, labels: &[usize], k: usize) -> Vec<ClusterSummary> {
    let dim = points.dim;
    let mut out: Vec<ClusterSummary> = (0..k)
        .map(|label| ClusterSummary {
            label,
            size: 0,
            means: vec![0.0; dim],
        })
        .collect();
    for (x, &l) in points.rows().zip(labels) {
        out[l].size += 1;
        for (m, v) in out[l].means.iter_mut().zip(x) {
            *m += v;
        }
    }
    for c in &mut out {
        if c.size > 0 {
            c.means.iter_mut().for_each(|m| *m /= c.size as f64);
        }
    }
    out
}

/// A store's side of federated bisecting k-means.
#[derive(Debug, Clone)]
pub struct ClusterTask {
    pub name: &'static str,
    pub num_clusters: usize,
    pub points: PointSet,
    /// Silhouette sample cap for evaluation.
    pub silhouette_points: usize,
}

impl ClusterTask {
    fn tree<'a>(&self, global: &'a [f64]) -> Result<ClusterTree<'a>, TaskError> {
        ClusterTree::new(global, self.num_clusters, self.points.dim).map_err(|_| {
            TaskError::WrongParameterCount {
                task: self.name,
                expected: self.layout().len(),
                got: global.len(),
            }
        })
    }

    /// Cluster label and distance to the centroid for every point.
    pub fn predict(&self, global: &[f64]) -> Result<(Vec<usize>, Vec<f64>), TaskError> {
        let tree = self.tree(global)?;
        Ok(self
            .points
            .rows()
            .map(|x| {
                let (l, d2) = tree.predict(x);
                (l, d2.sqrt())
            })
            .unzip())
    }
}

impl LocalTask for ClusterTask {
    fn task_name(&self) -> &'static str {
        self.name
    }

    fn layout(&self) -> ModelLayout {
        bisecting_kmeans_layout(self.num_clusters, self.points.dim)
            .unwrap_or_else(|_| unreachable!("static layout"))
    }

    fn num_train_examples(&self) -> u64 {
        self.points.len() as u64
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        let tree = self.tree(global)?;
        match work {
            LocalWork::ClusterStatistics => {
                let mut out = vec![0.0; cluster_statistics_len(tree.num_nodes(), self.points.dim)];
                tree.add_statistics(&self.points.values, &[], &mut out);
                Ok(out)
            }
            _ => Err(TaskError::UnsupportedWork {
                task: self.name,
                work: "anything but cluster statistics",
            }),
        }
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        let tree = self.tree(global)?;
        let (labels, dist) = self.predict(global)?;
        let k = tree.leaves().len();
        let mut m = TaskMetrics::new();
        m.insert("points".into(), self.points.len() as f64);
        m.insert("clusters".into(), k as f64);
        if let Some(s) = silhouette(&self.points, &labels, k, self.silhouette_points, 0) {
            m.insert("silhouette".into(), s);
        }
        if !dist.is_empty() {
            m.insert(
                "mean_distance".into(),
                dist.iter().sum::<f64>() / dist.len() as f64,
            );
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silhouette_of_two_tight_far_clusters_is_near_one() {
        let points = PointSet {
            dim: 1,
            values: vec![0.0, 0.1, 10.0, 10.1],
        };
        let s = silhouette(&points, &[0, 0, 1, 1], 2, 100, 0).unwrap();
        assert!(s > 0.98, "{s}");
        // Hand computation for a mixed labelling: point 0: a = 10.0, b = 5.05 ...
        let mixed = silhouette(&points, &[0, 1, 0, 1], 2, 100, 0).unwrap();
        assert!(mixed < 0.0);
        assert!(silhouette(&points, &[0, 0, 0, 0], 2, 100, 0).is_none());
    }

    #[test]
    fn sampled_silhouette_is_close_to_exact() {
        let mut values = Vec::new();
        for i in 0..600 {
            values.push((i % 3) as f64 * 5.0 + (i as f64 * 0.37).sin());
        }
        let points = PointSet { dim: 1, values };
        let labels: Vec<usize> = (0..600).map(|i| i % 3).collect();
        let exact = silhouette(&points, &labels, 3, 10_000, 0).unwrap();
        let sampled = silhouette(&points, &labels, 3, 200, 1).unwrap();
        assert!((exact - sampled).abs() < 0.05, "{exact} vs {sampled}");
        let simplified = simplified_silhouette(&points, &labels, &[0.0, 5.0, 10.0]).unwrap();
        assert!(simplified > 0.5);
    }
}
