//! The store-side analytics tasks of a job: customer anomalies and segments (seed 001),
//! receipt anomalies and churn scores. Each wraps a generic learner ([`ClusterTask`],
//! [`ClassifierTask`]) with what the store needs to get its own results from the final
//! model: ids, ground truth where the store has it, and words for what a cluster or a
//! flag means. Results are tables for the store's results folder; only the metrics
//! from [`LocalTask::evaluate`] travel.

use crate::classify::{
    classification_metrics, predict_proba, sgd, stratified_split, with_own_head, ClassifierKind,
    ClassifierTask, LabeledRows,
};
use crate::clustering::{silhouette, ClusterTask, PointSet};
use crate::metrics::ranking::{precision_at_k, roc_auc};
use crate::task::{LocalTask, ResultTable, StoreResults, TaskError, TaskMetrics};
use crate::words::{describe_customer_anomaly, describe_segment, flag_reason};
use fedretail_core::kmeans::{
    cluster_statistics_len, fit_bisecting_kmeans, ClusterTree, KMeansConfig,
};
use fedretail_core::{LocalSgd, LocalWork, ModelLayout, SamplingConfig};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What a clustering job is for: it decides the score, the words and the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterPurpose {
    /// Seed 001: customers far from their centroid or in a small cluster are unusual.
    CustomerAnomaly,
    /// Receipts far from every receipt centroid are unusual.
    ReceiptAnomaly,
    /// RFM segments named in words.
    Segments,
}

impl ClusterPurpose {
    fn task_name(&self) -> &'static str {
        match self {
            ClusterPurpose::CustomerAnomaly => "customer_anomaly",
            ClusterPurpose::ReceiptAnomaly => "receipt_anomaly",
            ClusterPurpose::Segments => "segments",
        }
    }
}

/// Settings of a store's clustering task (from the job's task spec).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub clusters: usize,
    pub max_iterations: u32,
    pub seed: u64,
    pub flag_share: f64,
    pub silhouette_points: usize,
    /// The seed's meta-model: the store's statistics are of its own clusters' centroids
    /// weighted by their sizes, not of its points, so the federation clusters the
    /// stores' clusters (the coordinator still sees only sums).
    pub meta: bool,
}

/// A store's clustering task with the ids of its points.
pub struct LabelledClusterTask {
    purpose: ClusterPurpose,
    features: &'static [&'static str],
    ids: Vec<String>,
    /// Ground truth where the store has it (synthetic networks do); empty otherwise.
    truth: Vec<bool>,
    inner: ClusterTask,
    settings: ClusterSettings,
    local_only: OnceLock<Result<Vec<f64>, TaskError>>,
    /// The store's own leaf centroids and their sizes (for the meta-model).
    summary: OnceLock<Result<WeightedPoints, TaskError>>,
}

/// Points (row-major) and one weight per point.
type WeightedPoints = (Vec<f64>, Vec<f64>);

/// How one model reads a store's points.
struct Reading {
    labels: Vec<usize>,
    distances: Vec<f64>,
    scores: Vec<f64>,
    centroids: Vec<f64>,
    leaves: usize,
}

impl LabelledClusterTask {
    pub fn new(
        purpose: ClusterPurpose,
        features: &'static [&'static str],
        ids: Vec<String>,
        truth: Vec<bool>,
        points: PointSet,
        settings: ClusterSettings,
    ) -> Self {
        let inner = ClusterTask {
            name: purpose.task_name(),
            num_clusters: settings.clusters,
            points,
            silhouette_points: settings.silhouette_points,
        };
        LabelledClusterTask {
            purpose,
            features,
            ids,
            truth,
            inner,
            settings,
            local_only: OnceLock::new(),
            summary: OnceLock::new(),
        }
    }

    pub fn points(&self) -> &PointSet {
        &self.inner.points
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The bisecting k-means this store would fit alone, by the same rounds.
    pub fn local_only_model(&self) -> Result<&[f64], TaskError> {
        let fitted = self.local_only.get_or_init(|| {
            let config = KMeansConfig {
                num_clusters: self.settings.clusters,
                dim: self.inner.points.dim,
                max_iterations: self.settings.max_iterations,
                tolerance: 1e-6,
                seed: self.settings.seed,
                sampling: SamplingConfig::default(),
            };
            fit_bisecting_kmeans(&config, &self.inner.points.values, &[])
                .map(|m| m.into_values())
                .map_err(|e| TaskError::Diverged(format!("local clustering: {e}")))
        });
        fitted.as_deref().map_err(Clone::clone)
    }

    /// What the seed's meta-model clusters for this store: the leaf centroids of its own
    /// model, each weighted by how many of its points fall in it.
    fn summary_points(&self) -> Result<&WeightedPoints, TaskError> {
        let fitted = self.summary.get_or_init(|| {
            let model = self.local_only_model()?;
            let dim = self.inner.points.dim;
            let tree = ClusterTree::new(model, self.settings.clusters, dim)
                .map_err(|e| TaskError::Diverged(e.to_string()))?;
            let mut sizes = vec![0.0; tree.leaves().len()];
            for x in self.inner.points.rows() {
                sizes[tree.predict(x).0] += 1.0;
            }
            Ok((tree.leaf_centroids(), sizes))
        });
        fitted.as_ref().map_err(Clone::clone)
    }

    fn read(&self, model: &[f64]) -> Result<Reading, TaskError> {
        let (labels, distances) = self.inner.predict(model)?;
        let tree = ClusterTree::new(model, self.settings.clusters, self.inner.points.dim)
            .map_err(|e| TaskError::Diverged(e.to_string()))?;
        let centroids = tree.leaf_centroids();
        let leaves = tree.leaves().len().max(1);
        let scores = match self.purpose {
            ClusterPurpose::CustomerAnomaly => rarity_scores(&labels, &distances, leaves),
            _ => distances.clone(),
        };
        Ok(Reading {
            labels,
            distances,
            scores,
            centroids,
            leaves,
        })
    }

    fn put_scores(&self, m: &mut TaskMetrics, which: &str, r: &Reading) {
        let s = &self.settings;
        if let Some(v) = silhouette(
            &self.inner.points,
            &r.labels,
            r.leaves,
            s.silhouette_points,
            s.seed,
        ) {
            m.insert(format!("silhouette_{which}"), v);
        }
        let positives = self.truth.iter().filter(|&&t| t).count();
        if self.truth.len() == r.scores.len() && positives > 0 {
            if let Some(v) = roc_auc(&r.scores, &self.truth) {
                m.insert(format!("auc_{which}"), v);
            }
            if let Some(v) = precision_at_k(&r.scores, &self.truth, positives) {
                m.insert(format!("precision_at_k_{which}"), v);
            }
        }
    }
}

/// The seed's reading of a customer clustering: distance to the centroid plus
/// ln(1 / share of the store's customers in that cluster), in standardized units.
pub fn rarity_scores(labels: &[usize], distances: &[f64], k: usize) -> Vec<f64> {
    let mut counts = vec![0usize; k.max(1)];
    for &l in labels {
        if let Some(c) = counts.get_mut(l) {
            *c += 1;
        }
    }
    let n = labels.len().max(1) as f64;
    labels
        .iter()
        .zip(distances)
        .map(|(&l, &d)| {
            let share = counts.get(l).copied().unwrap_or(1).max(1) as f64 / n;
            d + (1.0 / share).ln()
        })
        .collect()
}

/// Indices of `scores` from the highest to the lowest.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The score above which a store flags `share` of its points (at least one).
pub fn flag_threshold(scores: &[f64], share: f64) -> f64 {
    if scores.is_empty() {
        return f64::INFINITY;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = ((scores.len() as f64 * share).ceil() as usize).clamp(1, scores.len());
    sorted[k - 1]
}

impl LocalTask for LabelledClusterTask {
    fn task_name(&self) -> &'static str {
        self.purpose.task_name()
    }

    fn layout(&self) -> ModelLayout {
        self.inner.layout()
    }

    fn num_train_examples(&self) -> u64 {
        self.inner.num_train_examples()
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        if !(self.settings.meta && *work == LocalWork::ClusterStatistics) {
            return self.inner.compute_update(global, work);
        }
        let dim = self.inner.points.dim;
        let tree = ClusterTree::new(global, self.settings.clusters, dim)
            .map_err(|e| TaskError::Diverged(e.to_string()))?;
        let (centroids, sizes) = self.summary_points()?;
        let mut out = vec![0.0; cluster_statistics_len(tree.num_nodes(), dim)];
        tree.add_statistics(centroids, sizes, &mut out);
        Ok(out)
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        let mut m = TaskMetrics::new();
        m.insert("points".into(), self.inner.points.len() as f64);
        let federated = self.read(global)?;
        m.insert("clusters".into(), federated.leaves as f64);
        self.put_scores(&mut m, "federated", &federated);
        let local = self.read(self.local_only_model()?)?;
        self.put_scores(&mut m, "local", &local);
        m.insert(
            "labelled".into(),
            self.truth.iter().filter(|&&t| t).count() as f64,
        );
        if self.purpose != ClusterPurpose::Segments {
            let threshold = flag_threshold(&federated.scores, self.settings.flag_share);
            let flagged: Vec<bool> = federated.scores.iter().map(|&s| s >= threshold).collect();
            m.insert(
                "flagged".into(),
                flagged.iter().filter(|&&f| f).count() as f64,
            );
            let hits = flagged
                .iter()
                .zip(&self.truth)
                .filter(|(f, t)| **f && **t)
                .count();
            if !self.truth.is_empty() {
                m.insert("flagged_true".into(), hits as f64);
            }
        }
        Ok(m)
    }

    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        let metrics = self.evaluate(global)?;
        let r = self.read(global)?;
        let tables = match self.purpose {
            ClusterPurpose::Segments => self.segment_tables(&r),
            _ => vec![self.flag_table(&r)],
        };
        Ok(StoreResults { tables, metrics })
    }
}

impl LabelledClusterTask {
    fn centroid_words(&self, r: &Reading, c: usize) -> String {
        let dim = self.inner.points.dim;
        let means: BTreeMap<String, f64> = self
            .features
            .iter()
            .zip(&r.centroids[c * dim..(c + 1) * dim])
            .map(|(n, v)| (n.to_string(), *v))
            .collect();
        match self.purpose {
            ClusterPurpose::Segments => describe_segment(&means),
            _ => describe_customer_anomaly(&means),
        }
    }

    /// Every customer (or each flagged receipt) with its score, cluster, the store's
    /// threshold and, when flagged, why in words.
    fn flag_table(&self, r: &Reading) -> ResultTable {
        let receipts = self.purpose == ClusterPurpose::ReceiptAnomaly;
        let (name, id) = if receipts {
            ("flagged_receipts", "transaction_id")
        } else {
            ("customers", "customer_id")
        };
        let mut table = ResultTable::new(
            name,
            &[
                id,
                "cluster",
                "cluster_description",
                "score",
                "threshold",
                "flagged",
                "reason",
            ],
        );
        let threshold = flag_threshold(&r.scores, self.settings.flag_share);
        let dim = self.inner.points.dim;
        let mut share = vec![0usize; r.leaves];
        r.labels
            .iter()
            .for_each(|&l| share[l.min(r.leaves - 1)] += 1);
        let n = r.labels.len().max(1) as f64;
        let words: Vec<String> = (0..r.leaves).map(|c| self.centroid_words(r, c)).collect();
        for i in descending(&r.scores) {
            let flagged = r.scores[i] >= threshold;
            if receipts && !flagged {
                continue;
            }
            let c = r.labels[i];
            let reason = if flagged {
                flag_reason(
                    self.features,
                    self.inner.points.row(i),
                    &r.centroids[c * dim..(c + 1) * dim],
                    share[c] as f64 / n,
                    r.distances[i],
                    if receipts { "receipts" } else { "customers" },
                )
            } else {
                String::new()
            };
            table.push(vec![
                self.ids.get(i).cloned().unwrap_or_default(),
                c.to_string(),
                words[c].clone(),
                format!("{:.3}", r.scores[i]),
                format!("{threshold:.3}"),
                if flagged { "yes" } else { "no" }.into(),
                reason,
            ]);
        }
        table
    }

    /// Every customer's segment, and one row per segment describing it.
    fn segment_tables(&self, r: &Reading) -> Vec<ResultTable> {
        let words: Vec<String> = (0..r.leaves).map(|c| self.centroid_words(r, c)).collect();
        let mut customers = ResultTable::new(
            "segments",
            &["customer_id", "segment", "segment_name", "distance"],
        );
        let mut sizes = vec![0usize; r.leaves];
        for (i, &c) in r.labels.iter().enumerate() {
            sizes[c] += 1;
            customers.push(vec![
                self.ids.get(i).cloned().unwrap_or_default(),
                c.to_string(),
                words[c].clone(),
                format!("{:.3}", r.distances[i]),
            ]);
        }
        let mut columns = vec!["segment", "segment_name", "customers", "share"];
        columns.extend(self.features.iter().copied());
        let mut summary = ResultTable::new("segment_summary", &columns);
        let dim = self.inner.points.dim;
        let n = r.labels.len().max(1) as f64;
        for c in 0..r.leaves {
            let mut row = vec![
                c.to_string(),
                words[c].clone(),
                sizes[c].to_string(),
                format!("{:.3}", sizes[c] as f64 / n),
            ];
            row.extend(
                r.centroids[c * dim..(c + 1) * dim]
                    .iter()
                    .map(|v| format!("{v:.3}")),
            );
            summary.push(row);
        }
        vec![customers, summary]
    }
}

/// Epochs a store may fine-tune the federated classifier on its own rows.
const FINE_TUNE_EPOCHS: u32 = 20;
/// The pull of a store's own head toward the federated one (see [`with_own_head`]).
pub const OWN_HEAD_PULL: f64 = 10.0;

/// The federated model fine-tuned on the store's own training rows, with early
/// stopping: a fifth of them (by class) held back for validation, one epoch of the
/// SGD FedAvg runs at a time on the rest, kept while the validation log-loss improves
/// (three epochs of patience). Zero epochs is the federated model itself, which is
/// what a store keeps when its own rows do not improve on it. Returns the model and
/// the epochs kept.
pub fn fine_tune(inner: &ClassifierTask, global: &[f64], max_epochs: u32) -> (Vec<f64>, u32) {
    let (fit, validation) = stratified_split(&inner.train, 0.2, 11);
    if fit.is_empty() || validation.is_empty() {
        return (global.to_vec(), 0);
    }
    let loss = |w: &[f64]| {
        classification_metrics(inner.kind, w, &validation)
            .get("log_loss")
            .copied()
            .unwrap_or(f64::INFINITY)
    };
    let rate = learning_rate(inner.kind);
    let (mut best, mut best_loss, mut best_epoch) = (global.to_vec(), loss(global), 0);
    let mut w = global.to_vec();
    for epoch in 1..=max_epochs {
        let s = LocalSgd {
            epochs: 1,
            batch_size: 32,
            learning_rate: rate,
            l2: 1e-4,
            seed: u64::from(epoch),
            ..LocalSgd::default()
        };
        sgd(inner.kind, &fit, &mut w, &s);
        let l = loss(&w);
        if l < best_loss {
            best.copy_from_slice(&w);
            (best_loss, best_epoch) = (l, epoch);
        } else if epoch - best_epoch >= 3 {
            break;
        }
    }
    (best, best_epoch)
}

fn learning_rate(kind: ClassifierKind) -> f64 {
    match kind {
        ClassifierKind::Logistic => 0.1,
        ClassifierKind::Mlp { .. } => 0.05,
    }
}

/// AUC on the store's held-out rows of the same classifier trained on the store alone:
/// 20 epochs of the SGD the federation's FedAvg runs.
fn store_alone_auc(inner: &ClassifierTask) -> Option<f64> {
    let kind = inner.kind;
    let mut local = kind.initial_parameters(inner.test.dim(), 7);
    let rate = learning_rate(kind);
    let s = LocalSgd {
        epochs: 20,
        batch_size: 32,
        learning_rate: rate,
        l2: 1e-4,
        seed: 7,
        ..LocalSgd::default()
    };
    sgd(kind, &inner.train, &mut local, &s);
    roc_auc(
        &predict_proba(kind, &local, &inner.test),
        inner.test.labels(),
    )
}

/// What a store does with a classifier besides training it: the metrics it adds to the
/// shared ones, and the table of scores it keeps. [`ScoringTask`] does the rest.
pub trait Scoring: Send + Sync {
    fn task_name(&self) -> &'static str;
    /// Metrics beyond the classifier's own and the store-alone baseline.
    fn add_metrics(&self, inner: &ClassifierTask, m: &mut TaskMetrics);
    /// The store's table of scores under `global`.
    fn table(&self, inner: &ClassifierTask, global: &[f64]) -> ResultTable;
}

/// A classifier task that scores the store's own rows at the end: churn, tabular.
pub struct ScoringTask<S> {
    pub inner: ClassifierTask,
    pub scoring: S,
}

impl<S: Scoring> LocalTask for ScoringTask<S> {
    fn task_name(&self) -> &'static str {
        self.scoring.task_name()
    }

    fn layout(&self) -> ModelLayout {
        self.inner.layout()
    }

    fn num_train_examples(&self) -> u64 {
        self.inner.num_train_examples()
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        self.inner.compute_update(global, work)
    }

    fn train_loss(&self, global: &[f64]) -> Option<f64> {
        self.inner.train_loss(global)
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok(self.scored(global)?.0)
    }

    fn kept_state(&self) -> Option<Vec<f64>> {
        self.inner.kept_state()
    }

    fn restore_state(&self, state: &[f64]) -> Result<(), TaskError> {
        self.inner.restore_state(state)
    }

    /// The store scores its rows with the federated model fine-tuned on them (the
    /// federated model itself where fine-tuning did not help on its validation rows).
    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        let (metrics, personal) = self.scored(global)?;
        Ok(StoreResults {
            metrics,
            tables: vec![self.scoring.table(&self.inner, &personal)],
        })
    }
}

impl<S: Scoring> ScoringTask<S> {
    /// Held-out metrics of the federated model, the store alone and the fine-tuned
    /// model, and the fine-tuned model.
    fn scored(&self, global: &[f64]) -> Result<(TaskMetrics, Vec<f64>), TaskError> {
        let mut m = self.inner.evaluate(global)?;
        // Under FedPer the store's model has its own head; everything below starts there.
        let global = &self.inner.model_for(global);
        if let Some(v) = store_alone_auc(&self.inner) {
            m.insert("auc_local".into(), v);
        }
        let (personal, epochs) = fine_tune(&self.inner, global, FINE_TUNE_EPOCHS);
        let p = predict_proba(self.inner.kind, &personal, &self.inner.test);
        if let Some(v) = roc_auc(&p, self.inner.test.labels()) {
            m.insert("auc_personalized".into(), v);
        }
        m.insert("personalized_epochs".into(), f64::from(epochs));
        // FedPer's split: the shared hidden layer, the store's own output layer.
        let head = with_own_head(self.inner.kind, global, &self.inner.train, OWN_HEAD_PULL);
        let p = predict_proba(self.inner.kind, &head, &self.inner.test);
        if let Some(v) = roc_auc(&p, self.inner.test.labels()) {
            m.insert("auc_own_head".into(), v);
        }
        self.scoring.add_metrics(&self.inner, &mut m);
        Ok((m, personal))
    }
}

/// A store's churn task: a classifier trained on customers as of a past cut-off
/// (labelled by whether they bought again), and its customers as of today to score.
pub type ChurnTask = ScoringTask<ChurnScoring>;

/// Today's customers (features over the window up to the last day) and their ids.
pub struct ChurnScoring {
    pub current_ids: Vec<String>,
    pub current: LabeledRows,
}

/// Column of the seed's rule `standardized recency > 1` among the churn features.
const RECENCY: usize = 3;

impl Scoring for ChurnScoring {
    fn task_name(&self) -> &'static str {
        "churn"
    }

    fn add_metrics(&self, inner: &ClassifierTask, m: &mut TaskMetrics) {
        let test = &inner.test;
        let rule: Vec<f64> = (0..test.len())
            .map(|i| test.row(i).0.get(RECENCY).copied().unwrap_or(0.0))
            .collect();
        if let Some(v) = roc_auc(&rule, test.labels()) {
            m.insert("auc_rule".into(), v);
        }
        m.insert("customers_scored".into(), self.current.len() as f64);
    }

    fn table(&self, inner: &ClassifierTask, global: &[f64]) -> ResultTable {
        let p = predict_proba(inner.kind, global, &self.current);
        let mut table = ResultTable::new(
            "churn_scores",
            &["customer_id", "churn_probability", "risk"],
        );
        for i in descending(&p) {
            let risk = match p[i] {
                v if v >= 0.7 => "high",
                v if v >= 0.4 => "medium",
                _ => "low",
            };
            table.push(vec![
                self.current_ids.get(i).cloned().unwrap_or_default(),
                format!("{:.3}", p[i]),
                risk.into(),
            ]);
        }
        table
    }
}

/// A store's tabular task (credit scoring): a classifier on its own table, which it
/// scores row by row at the end.
pub type TabularTask = ScoringTask<TableScoring>;

/// Every row of the store's table in file order (training and held-out), its line in
/// the file, and whether it was held out.
pub struct TableScoring {
    pub rows: LabeledRows,
    pub lines: Vec<u64>,
    pub held_out: Vec<bool>,
}

impl Scoring for TableScoring {
    fn task_name(&self) -> &'static str {
        "tabular"
    }

    fn add_metrics(&self, _inner: &ClassifierTask, m: &mut TaskMetrics) {
        m.insert("rows_scored".into(), self.rows.len() as f64);
    }

    fn table(&self, inner: &ClassifierTask, global: &[f64]) -> ResultTable {
        let p = predict_proba(inner.kind, global, &self.rows);
        let mut table = ResultTable::new("scores", &["line", "actual", "probability", "held_out"]);
        for i in descending(&p) {
            table.push(vec![
                self.lines.get(i).map(u64::to_string).unwrap_or_default(),
                u8::from(self.rows.labels()[i]).to_string(),
                format!("{:.4}", p[i]),
                if self.held_out.get(i) == Some(&true) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
            ]);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs() -> (Vec<String>, PointSet, Vec<bool>) {
        let mut values = Vec::new();
        let mut ids = Vec::new();
        let mut truth = Vec::new();
        for i in 0..60 {
            let c = (i % 3) as f64 * 5.0;
            values.extend([
                c + (i as f64 * 0.37).sin() * 0.3,
                c + (i as f64 * 0.11).cos() * 0.3,
            ]);
            ids.push(format!("c{i}"));
            truth.push(false);
        }
        values.extend([30.0, -30.0]);
        ids.push("odd".into());
        truth.push(true);
        (ids, PointSet { dim: 2, values }, truth)
    }

    const FEATURES: &[&str] = &["avg_order_value", "refund_rate"];

    #[test]
    fn the_outlier_is_flagged_with_a_reason_and_nothing_else_is() {
        let (ids, points, truth) = blobs();
        // Three blobs and the outlier on its own: a rare cluster.
        let settings = ClusterSettings {
            clusters: 4,
            max_iterations: 20,
            seed: 2,
            flag_share: 0.01,
            silhouette_points: 100,
            meta: false,
        };
        let task = LabelledClusterTask::new(
            ClusterPurpose::CustomerAnomaly,
            FEATURES,
            ids,
            truth,
            points,
            settings,
        );
        let model = task.local_only_model().unwrap().to_vec();
        let results = task.results(&model).unwrap();
        let table = &results.tables[0];
        assert_eq!(table.name, "customers");
        assert_eq!(table.rows.len(), 61);
        let flagged: Vec<&Vec<String>> = table.rows.iter().filter(|r| r[5] == "yes").collect();
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert_eq!(flagged[0][0], "odd");
        assert!(!flagged[0][6].is_empty());
        assert_eq!(results.metrics["auc_federated"], 1.0);
        assert_eq!(results.metrics["flagged_true"], 1.0);
    }

    /// A store whose base rate is far from the federated model's: fine-tuning moves the
    /// model toward its rows; zero epochs is the federated model exactly.
    #[test]
    fn fine_tuning_adapts_to_the_store_and_reduces_to_the_global_model() {
        let mut train = LabeledRows::new(1);
        for i in 0..200 {
            let x = (i % 20) as f64 / 10.0 - 1.0;
            train.push(&[x], i % 10 < 8 || x > 0.5);
        }
        let inner = ClassifierTask {
            name: "t",
            kind: ClassifierKind::Logistic,
            train,
            test: LabeledRows::new(1),
            dp: None,
            own_head: crate::classify::OwnHead::off(),
        };
        let global = vec![0.5, -2.0];
        let (same, epochs) = fine_tune(&inner, &global, 0);
        assert_eq!((same, epochs), (global.clone(), 0));
        let (tuned, epochs) = fine_tune(&inner, &global, 20);
        assert!(epochs > 0);
        assert!(
            tuned[1] > global[1] + 0.5,
            "the bias moves toward the store's base rate: {tuned:?}"
        );
    }

    #[test]
    fn threshold_flags_the_requested_share() {
        let scores: Vec<f64> = (0..200).map(|i| i as f64).collect();
        assert_eq!(flag_threshold(&scores, 0.01), 198.0);
        assert_eq!(flag_threshold(&scores[..10], 0.01), 9.0);
    }
}
