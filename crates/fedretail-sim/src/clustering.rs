//! Federated clustering over a network directory, the seed 001 workflow: customer
//! features in SQL at each store, bisecting k-means three ways (each store alone; the
//! seed's meta-model clustered from the stores' local cluster centroids, weighted by
//! cluster size; and exact federated bisecting k-means, which equals the centralized
//! fit), evaluated on every store's own data by silhouette and, against the synthetic
//! network's ground truth, as anomaly detectors. Also RFM customer segments described
//! in words.
//!
//! In process, through the same [`Strategy`](fedretail_core::Strategy) and
//! [`LocalTask`] seam the agents drive.

use crate::inprocess::run_until;
use crate::prepare::{business_type_of, store_dirs};
use crate::{SimError, SkippedStore};
use fedretail_core::kmeans::{fit_bisecting_kmeans, ClusterTree, FedBisectingKMeans, KMeansConfig};
use fedretail_core::{LocalBoxFuture, SamplingConfig};
use fedretail_data::{
    load_customer_points, load_transaction_points, CustomerFeatureSet, FeatureWindow, StoreSource,
    CUSTOMER_ANOMALY_FEATURES, SEGMENT_FEATURES, TRANSACTION_FEATURES,
};
use fedretail_models::analytics::rarity_scores;
use fedretail_models::clustering::{silhouette, summarize};
use fedretail_models::metrics::ranking::{precision_at_k, roc_auc};
use fedretail_models::words::describe_customer_anomaly;
pub use fedretail_models::words::describe_segment;
use fedretail_models::{ClusterTask, LocalTask, PointSet};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusteringOptions {
    /// Days of history up to each store's last day (the seed's date window).
    pub window_days: u32,
    /// Clusters of customers (anomaly and segments).
    pub customer_clusters: usize,
    /// Clusters of receipts (transaction anomalies).
    pub transaction_clusters: usize,
    /// Lloyd iterations per split.
    pub max_iterations: u32,
    /// Silhouette is exact up to this many points a store, sampled above it.
    pub silhouette_points: usize,
    /// The per-store threshold flags this share of a store's receipts.
    pub flag_share: f64,
    /// A store with fewer points is skipped and listed.
    pub min_points: usize,
    pub seed: u64,
}

impl Default for ClusteringOptions {
    fn default() -> Self {
        ClusteringOptions {
            window_days: 180,
            customer_clusters: 6,
            transaction_clusters: 8,
            max_iterations: 15,
            silhouette_points: 600,
            flag_share: 0.01,
            min_points: 30,
            seed: 2,
        }
    }
}

/// Progress, for a progress bar.
#[derive(Debug, Clone)]
pub enum ClusteringEvent {
    StoreLoaded {
        store_id: String,
        done: usize,
        total: usize,
    },
    Stage(&'static str),
}

/// The three models of one level (customers or receipts), fitted.
struct FittedLevel {
    k: usize,
    dim: usize,
    local: Vec<Vec<f64>>,
    meta: Vec<f64>,
    federated: Vec<f64>,
    federated_rounds: u64,
    bytes_up: u64,
    /// Largest centroid difference between federated and centralized fits.
    centralized_gap: f64,
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError::Runtime(e.to_string())
}

fn config(k: usize, dim: usize, o: &ClusteringOptions) -> KMeansConfig {
    KMeansConfig {
        num_clusters: k,
        dim,
        max_iterations: o.max_iterations,
        tolerance: 1e-6,
        seed: o.seed,
        sampling: SamplingConfig::default(),
    }
}

fn tree(values: &[f64], k: usize, dim: usize) -> Result<ClusterTree<'_>, SimError> {
    ClusterTree::new(values, k, dim).map_err(err)
}

fn fit_level(
    stores: &[(String, PointSet)],
    k: usize,
    o: &ClusteringOptions,
) -> Result<FittedLevel, SimError> {
    let dim = stores.first().map_or(1, |s| s.1.dim);
    let cfg = config(k, dim, o);
    // Each store alone.
    let mut local = Vec::with_capacity(stores.len());
    let mut leaf_points = Vec::new();
    let mut leaf_weights = Vec::new();
    for (_, points) in stores {
        let model = fit_bisecting_kmeans(&cfg, &points.values, &[])
            .map_err(err)?
            .into_values();
        let t = tree(&model, k, dim)?;
        // The seed's meta-model: what a store shares is its cluster centroids and sizes.
        let mut sizes = vec![0.0; t.leaves().len()];
        for x in points.rows() {
            sizes[t.predict(x).0] += 1.0;
        }
        leaf_points.extend(t.leaf_centroids());
        leaf_weights.extend(sizes);
        local.push(model);
    }
    let meta = fit_bisecting_kmeans(&cfg, &leaf_points, &leaf_weights)
        .map_err(err)?
        .into_values();
    // Exact federated bisecting k-means.
    let mut strategy = FedBisectingKMeans::try_new(cfg.clone()).map_err(err)?;
    let init = strategy.initial_model().map_err(err)?;
    let max_rounds = strategy.max_rounds();
    let tasks: Vec<(String, Arc<dyn LocalTask>)> = stores
        .iter()
        .map(|(id, points)| {
            let t: Arc<dyn LocalTask> = Arc::new(ClusterTask {
                name: "cluster",
                num_clusters: k,
                points: points.clone(),
                silhouette_points: o.silhouette_points,
            });
            (id.clone(), t)
        })
        .collect();
    let run = run_until(&mut strategy, &tasks, init, max_rounds, &mut |_, m| {
        ClusterTree::new(m.values(), k, dim).is_ok_and(|t| t.is_complete())
    })
    .map_err(err)?;
    let federated = run.parameters.into_values();
    // The centralized reference, on pooled points (only the harness can do this).
    let pooled: Vec<f64> = stores
        .iter()
        .flat_map(|(_, p)| p.values.iter().copied())
        .collect();
    let central = fit_bisecting_kmeans(&cfg, &pooled, &[])
        .map_err(err)?
        .into_values();
    let gap = federated
        .iter()
        .zip(&central)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    Ok(FittedLevel {
        k,
        dim,
        local,
        meta,
        federated,
        federated_rounds: run.rounds,
        bytes_up: run.bytes_up,
        centralized_gap: gap,
    })
}

/// Labels and distances of `points` under a bisecting model.
fn assign(model: &[f64], k: usize, points: &PointSet) -> Result<(Vec<usize>, Vec<f64>), SimError> {
    let t = tree(model, k, points.dim)?;
    Ok(points
        .rows()
        .map(|x| {
            let (l, d2) = t.predict(x);
            (l, d2.sqrt())
        })
        .unzip())
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelScores {
    pub silhouette: Option<f64>,
    pub auc: Option<f64>,
    pub precision_at_k: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreAnomalyReport {
    pub store_id: String,
    pub business_type: String,
    pub customers: usize,
    pub labelled_customers: usize,
    pub customer_local: ModelScores,
    pub customer_meta: ModelScores,
    pub customer_federated: ModelScores,
    pub receipts: usize,
    pub labelled_receipts: usize,
    pub receipt_local: ModelScores,
    pub receipt_federated: ModelScores,
    /// Receipts above the store's calibrated threshold under the federated model.
    pub flagged_receipts: usize,
    pub flagged_precision: Option<f64>,
    pub flagged_recall: Option<f64>,
    pub threshold: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupScores {
    pub group: String,
    pub stores: usize,
    pub customer_auc_local: Option<f64>,
    pub customer_auc_meta: Option<f64>,
    pub customer_auc_federated: Option<f64>,
    pub receipt_auc_local: Option<f64>,
    pub receipt_auc_federated: Option<f64>,
    pub silhouette_local: Option<f64>,
    pub silhouette_meta: Option<f64>,
    pub silhouette_federated: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterDescription {
    pub cluster: usize,
    /// Share of all points (summed store counts, an aggregate).
    pub share: f64,
    /// Centroid in standardized units, by feature.
    pub means: BTreeMap<String, f64>,
    pub description: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AnomalyReport {
    pub task: String,
    pub options: ClusteringOptions,
    pub wall_seconds: f64,
    pub customer_features: Vec<String>,
    pub receipt_features: Vec<String>,
    pub rounds_customers: u64,
    pub rounds_receipts: u64,
    pub bytes_up: u64,
    /// Federated vs centralized bisecting k-means, largest centroid difference.
    pub centralized_gap_customers: f64,
    pub centralized_gap_receipts: f64,
    pub federated_customer_clusters: Vec<ClusterDescription>,
    pub by_business_type: Vec<GroupScores>,
    pub overall: GroupScores,
    pub stores: Vec<StoreAnomalyReport>,
    pub skipped: Vec<SkippedStore>,
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = v.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn group_scores(group: &str, stores: &[&StoreAnomalyReport]) -> GroupScores {
    GroupScores {
        group: group.to_string(),
        stores: stores.len(),
        customer_auc_local: mean(stores.iter().map(|s| s.customer_local.auc)),
        customer_auc_meta: mean(stores.iter().map(|s| s.customer_meta.auc)),
        customer_auc_federated: mean(stores.iter().map(|s| s.customer_federated.auc)),
        receipt_auc_local: mean(stores.iter().map(|s| s.receipt_local.auc)),
        receipt_auc_federated: mean(stores.iter().map(|s| s.receipt_federated.auc)),
        silhouette_local: mean(stores.iter().map(|s| s.customer_local.silhouette)),
        silhouette_meta: mean(stores.iter().map(|s| s.customer_meta.silhouette)),
        silhouette_federated: mean(stores.iter().map(|s| s.customer_federated.silhouette)),
    }
}

struct LoadedStore {
    store_id: String,
    business_type: String,
    customers: PointSet,
    customer_labels: Vec<bool>,
    receipts: PointSet,
    receipt_labels: Vec<bool>,
}

async fn load_stores(
    root: &Path,
    set: CustomerFeatureSet,
    with_receipts: bool,
    o: &ClusteringOptions,
    on_event: &dyn Fn(ClusteringEvent),
) -> Result<(Vec<LoadedStore>, Vec<SkippedStore>), SimError> {
    let dirs = store_dirs(root)?;
    if dirs.is_empty() {
        return Err(SimError::NoStores(root.display().to_string()));
    }
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let mut loaded = Vec::new();
    let mut skipped = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let store_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let source = StoreSource::from_dir(dir);
        let labels_path = dir.join("anomaly_labels.csv");
        let labels = labels_path.exists().then_some(labels_path.as_path());
        let result = async {
            let c = load_customer_points(&source, &window, set, labels).await?;
            let r = if with_receipts {
                Some(load_transaction_points(&source, &window, labels).await?)
            } else {
                None
            };
            Ok::<_, fedretail_data::DataError>((c, r))
        }
        .await;
        on_event(ClusteringEvent::StoreLoaded {
            store_id: store_id.clone(),
            done: i + 1,
            total: dirs.len(),
        });
        match result {
            Ok((c, _)) if c.points.len() < o.min_points => skipped.push(SkippedStore {
                store_id,
                reason: format!(
                    "only {} customers in the window (at least {} needed)",
                    c.points.len(),
                    o.min_points
                ),
            }),
            Ok((c, r)) => {
                let (receipts, receipt_labels) = match r {
                    Some(r) => (r.points, r.labels),
                    None => (PointSet::new(TRANSACTION_FEATURES.len()), Vec::new()),
                };
                loaded.push(LoadedStore {
                    store_id,
                    business_type: business_type_of(dir),
                    customers: c.points,
                    customer_labels: c.labels,
                    receipts,
                    receipt_labels,
                })
            }
            Err(e) => skipped.push(SkippedStore {
                store_id,
                reason: e.to_string(),
            }),
        }
    }
    if loaded.is_empty() {
        return Err(SimError::AllSkipped(
            skipped
                .first()
                .map(|s| s.reason.clone())
                .unwrap_or_default(),
        ));
    }
    Ok((loaded, skipped))
}

fn scores_for(
    model: &[f64],
    k: usize,
    points: &PointSet,
    labels: &[bool],
    customer: bool,
    o: &ClusteringOptions,
) -> Result<(ModelScores, Vec<f64>), SimError> {
    let (assigned, dist) = assign(model, k, points)?;
    let score = if customer {
        rarity_scores(&assigned, &dist, k)
    } else {
        dist
    };
    let positives = labels.iter().filter(|&&l| l).count();
    Ok((
        ModelScores {
            silhouette: silhouette(points, &assigned, k, o.silhouette_points, o.seed),
            auc: roc_auc(&score, labels),
            precision_at_k: (positives > 0)
                .then(|| precision_at_k(&score, labels, positives))
                .flatten(),
        },
        score,
    ))
}

/// Anomaly detection at customer and receipt level, local vs meta vs federated.
pub fn run_anomaly<'a>(
    root: &'a Path,
    o: &'a ClusteringOptions,
    on_event: &'a dyn Fn(ClusteringEvent),
) -> LocalBoxFuture<'a, Result<AnomalyReport, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let (stores, skipped) =
            load_stores(root, CustomerFeatureSet::Anomaly, true, o, on_event).await?;
        on_event(ClusteringEvent::Stage(
            "customer clusters: local, meta, federated",
        ));
        let customers: Vec<(String, PointSet)> = stores
            .iter()
            .map(|s| (s.store_id.clone(), s.customers.clone()))
            .collect();
        let c = fit_level(&customers, o.customer_clusters, o)?;
        on_event(ClusteringEvent::Stage("receipt clusters: local, federated"));
        let receipts: Vec<(String, PointSet)> = stores
            .iter()
            .filter(|s| s.receipts.len() >= o.transaction_clusters)
            .map(|s| (s.store_id.clone(), s.receipts.clone()))
            .collect();
        let r = fit_level(&receipts, o.transaction_clusters, o)?;
        on_event(ClusteringEvent::Stage("evaluating at every store"));
        let mut reports = Vec::new();
        let mut receipt_index = 0;
        for (i, s) in stores.iter().enumerate() {
            let mut report = customer_anomaly(s, &c, i, o)?;
            if s.receipts.len() >= o.transaction_clusters {
                receipt_anomaly(&mut report, s, &r, receipt_index, o)?;
                receipt_index += 1;
            }
            reports.push(report);
        }
        let mut groups: BTreeMap<String, Vec<&StoreAnomalyReport>> = BTreeMap::new();
        for s in &reports {
            groups.entry(s.business_type.clone()).or_default().push(s);
        }
        let by_business_type = groups.iter().map(|(g, v)| group_scores(g, v)).collect();
        let all: Vec<&StoreAnomalyReport> = reports.iter().collect();
        let overall = group_scores("all", &all);
        let federated_customer_clusters = describe(
            &c.federated,
            c.k,
            c.dim,
            &customers,
            &CUSTOMER_ANOMALY_FEATURES,
            describe_customer_anomaly,
        )?;
        Ok(AnomalyReport {
            task: "anomaly".into(),
            options: o.clone(),
            wall_seconds: started.elapsed().as_secs_f64(),
            customer_features: CUSTOMER_ANOMALY_FEATURES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            receipt_features: TRANSACTION_FEATURES.iter().map(|s| s.to_string()).collect(),
            rounds_customers: c.federated_rounds,
            rounds_receipts: r.federated_rounds,
            bytes_up: c.bytes_up + r.bytes_up,
            centralized_gap_customers: c.centralized_gap,
            centralized_gap_receipts: r.centralized_gap,
            federated_customer_clusters,
            by_business_type,
            overall,
            stores: reports,
            skipped,
        })
    })
}

/// A store's customer scores under its own, the meta and the federated clusters.
fn customer_anomaly(
    s: &LoadedStore,
    c: &FittedLevel,
    i: usize,
    o: &ClusteringOptions,
) -> Result<StoreAnomalyReport, SimError> {
    let score = |centroids: &[f64]| {
        scores_for(centroids, c.k, &s.customers, &s.customer_labels, true, o).map(|x| x.0)
    };
    Ok(StoreAnomalyReport {
        store_id: s.store_id.clone(),
        business_type: s.business_type.clone(),
        customers: s.customers.len(),
        labelled_customers: s.customer_labels.iter().filter(|&&l| l).count(),
        customer_local: score(&c.local[i])?,
        customer_meta: score(&c.meta)?,
        customer_federated: score(&c.federated)?,
        receipts: s.receipts.len(),
        labelled_receipts: s.receipt_labels.iter().filter(|&&l| l).count(),
        receipt_local: ModelScores::default(),
        receipt_federated: ModelScores::default(),
        flagged_receipts: 0,
        flagged_precision: None,
        flagged_recall: None,
        threshold: f64::NAN,
    })
}

/// A store's receipt scores, and the receipts it flags: the top `flag_share` of its
/// own scores under the federated clusters (a threshold calibrated per store).
fn receipt_anomaly(
    report: &mut StoreAnomalyReport,
    s: &LoadedStore,
    r: &FittedLevel,
    index: usize,
    o: &ClusteringOptions,
) -> Result<(), SimError> {
    let (local, _) = scores_for(
        &r.local[index],
        r.k,
        &s.receipts,
        &s.receipt_labels,
        false,
        o,
    )?;
    let (federated, scores) =
        scores_for(&r.federated, r.k, &s.receipts, &s.receipt_labels, false, o)?;
    let mut sorted = scores.clone();
    sorted.sort_by(f64::total_cmp);
    let q = ((1.0 - o.flag_share) * (sorted.len() - 1) as f64).round() as usize;
    let threshold = sorted[q.min(sorted.len() - 1)];
    let flagged: Vec<bool> = scores.iter().map(|&v| v > threshold).collect();
    let hits = flagged
        .iter()
        .zip(&s.receipt_labels)
        .filter(|(&f, &l)| f && l)
        .count();
    let n_flagged = flagged.iter().filter(|&&f| f).count();
    report.receipt_local = local;
    report.receipt_federated = federated;
    report.flagged_receipts = n_flagged;
    report.flagged_precision = (n_flagged > 0).then(|| hits as f64 / n_flagged as f64);
    report.flagged_recall =
        (report.labelled_receipts > 0).then(|| hits as f64 / report.labelled_receipts as f64);
    report.threshold = threshold;
    Ok(())
}

/// Global clusters with their share (from per-store counts) and a description.
fn describe(
    model: &[f64],
    k: usize,
    dim: usize,
    stores: &[(String, PointSet)],
    names: &[&str],
    words: fn(&BTreeMap<String, f64>) -> String,
) -> Result<Vec<ClusterDescription>, SimError> {
    let t = tree(model, k, dim)?;
    let centroids = t.leaf_centroids();
    let leaves = centroids.len() / dim.max(1);
    let mut counts = vec![0usize; leaves];
    for (_, points) in stores {
        let (labels, _) = assign(model, k, points)?;
        for s in summarize(points, &labels, leaves) {
            counts[s.label] += s.size;
        }
    }
    let total = counts.iter().sum::<usize>().max(1) as f64;
    Ok((0..leaves)
        .map(|c| {
            let means: BTreeMap<String, f64> = names
                .iter()
                .zip(&centroids[c * dim..(c + 1) * dim])
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            ClusterDescription {
                cluster: c,
                share: counts[c] as f64 / total,
                description: words(&means),
                means,
            }
        })
        .collect())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreSegmentReport {
    pub store_id: String,
    pub business_type: String,
    pub customers: usize,
    pub silhouette_local: Option<f64>,
    pub silhouette_meta: Option<f64>,
    pub silhouette_federated: Option<f64>,
    /// Share of the store's customers in each federated segment.
    pub segment_shares: Vec<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentReport {
    pub task: String,
    pub options: ClusteringOptions,
    pub wall_seconds: f64,
    pub features: Vec<String>,
    pub rounds: u64,
    pub bytes_up: u64,
    pub centralized_gap: f64,
    pub segments: Vec<ClusterDescription>,
    pub overall: GroupScores,
    pub stores: Vec<StoreSegmentReport>,
    pub skipped: Vec<SkippedStore>,
}

/// RFM customer segments: federated bisecting k-means, described in words.
pub fn run_segments<'a>(
    root: &'a Path,
    o: &'a ClusteringOptions,
    on_event: &'a dyn Fn(ClusteringEvent),
) -> LocalBoxFuture<'a, Result<SegmentReport, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let (stores, skipped) =
            load_stores(root, CustomerFeatureSet::Segments, false, o, on_event).await?;
        on_event(ClusteringEvent::Stage("segments: local, meta, federated"));
        let customers: Vec<(String, PointSet)> = stores
            .iter()
            .map(|s| (s.store_id.clone(), s.customers.clone()))
            .collect();
        let c = fit_level(&customers, o.customer_clusters, o)?;
        on_event(ClusteringEvent::Stage("evaluating at every store"));
        let segments = describe(
            &c.federated,
            c.k,
            c.dim,
            &customers,
            &SEGMENT_FEATURES,
            describe_segment,
        )?;
        let mut reports = Vec::new();
        let sil = |model: &[f64], points: &PointSet| -> Result<Option<f64>, SimError> {
            let (labels, _) = assign(model, c.k, points)?;
            Ok(silhouette(
                points,
                &labels,
                c.k,
                o.silhouette_points,
                o.seed,
            ))
        };
        for (i, s) in stores.iter().enumerate() {
            let (labels, _) = assign(&c.federated, c.k, &s.customers)?;
            let mut shares = vec![0.0; segments.len()];
            for &l in &labels {
                if l < shares.len() {
                    shares[l] += 1.0 / labels.len().max(1) as f64;
                }
            }
            reports.push(StoreSegmentReport {
                store_id: s.store_id.clone(),
                business_type: s.business_type.clone(),
                customers: s.customers.len(),
                silhouette_local: sil(&c.local[i], &s.customers)?,
                silhouette_meta: sil(&c.meta, &s.customers)?,
                silhouette_federated: sil(&c.federated, &s.customers)?,
                segment_shares: shares,
            });
        }
        let overall = GroupScores {
            group: "all".into(),
            stores: reports.len(),
            silhouette_local: mean(reports.iter().map(|s| s.silhouette_local)),
            silhouette_meta: mean(reports.iter().map(|s| s.silhouette_meta)),
            silhouette_federated: mean(reports.iter().map(|s| s.silhouette_federated)),
            ..Default::default()
        };
        Ok(SegmentReport {
            task: "segments".into(),
            options: o.clone(),
            wall_seconds: started.elapsed().as_secs_f64(),
            features: SEGMENT_FEATURES.iter().map(|s| s.to_string()).collect(),
            rounds: c.federated_rounds,
            bytes_up: c.bytes_up,
            centralized_gap: c.centralized_gap,
            segments,
            overall,
            stores: reports,
            skipped,
        })
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("  -  ".into(), |v| format!("{v:.3}"))
}

pub fn render_anomaly(r: &AnomalyReport) -> String {
    let mut s = format!(
        "\nanomaly — {} stores, {:.1} s; federated bisecting k-means: {} rounds (customers), {} rounds (receipts), {} KiB up\n\
         federated = centralized to {:.1e} (customers) and {:.1e} (receipts)\n\n",
        r.stores.len(),
        r.wall_seconds,
        r.rounds_customers,
        r.rounds_receipts,
        r.bytes_up / 1024,
        r.centralized_gap_customers,
        r.centralized_gap_receipts
    );
    s.push_str("  business type  stores   customer AUC local  meta   federated   receipt AUC local  federated   silhouette local  meta   federated\n");
    for g in r.by_business_type.iter().chain(std::iter::once(&r.overall)) {
        s.push_str(&format!(
            "  {:<13} {:>6}   {:>17}  {:>5}  {:>9}   {:>16}  {:>9}   {:>15}  {:>5}  {:>9}\n",
            g.group,
            g.stores,
            fmt(g.customer_auc_local),
            fmt(g.customer_auc_meta),
            fmt(g.customer_auc_federated),
            fmt(g.receipt_auc_local),
            fmt(g.receipt_auc_federated),
            fmt(g.silhouette_local),
            fmt(g.silhouette_meta),
            fmt(g.silhouette_federated),
        ));
    }
    let flagged: usize = r.stores.iter().map(|x| x.flagged_receipts).sum();
    let labelled: usize = r.stores.iter().map(|x| x.labelled_receipts).sum();
    let precision = mean(r.stores.iter().map(|x| x.flagged_precision));
    s.push_str(&format!(
        "\n  per-store threshold (top {:.1} % of each store's receipts): {flagged} flagged, mean precision {}, {labelled} labelled anomalies in all\n",
        r.options.flag_share * 100.0,
        fmt(precision)
    ));
    s.push_str("\n  federated customer clusters:\n");
    for c in &r.federated_customer_clusters {
        s.push_str(&format!(
            "    {:>2}  {:>5.1} %  {}\n",
            c.cluster,
            c.share * 100.0,
            c.description
        ));
    }
    for k in &r.skipped {
        s.push_str(&format!("  skipped {}: {}\n", k.store_id, k.reason));
    }
    s
}

pub fn render_segments(r: &SegmentReport) -> String {
    let mut s = format!(
        "\nsegments — {} stores, {:.1} s; federated bisecting k-means on RFM features: {} rounds, {} KiB up, federated = centralized to {:.1e}\n\n",
        r.stores.len(),
        r.wall_seconds,
        r.rounds,
        r.bytes_up / 1024,
        r.centralized_gap
    );
    for c in &r.segments {
        s.push_str(&format!(
            "  {:>2}  {:>5.1} %  {}\n",
            c.cluster,
            c.share * 100.0,
            c.description
        ));
    }
    s.push_str(&format!(
        "\n  mean silhouette on each store's own customers: local {}   meta-model {}   federated {}\n",
        fmt(r.overall.silhouette_local),
        fmt(r.overall.silhouette_meta),
        fmt(r.overall.silhouette_federated)
    ));
    for k in &r.skipped {
        s.push_str(&format!("  skipped {}: {}\n", k.store_id, k.reason));
    }
    s
}
