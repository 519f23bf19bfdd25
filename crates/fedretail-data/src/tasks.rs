//! From a job's task spec to the store's [`LocalTask`]: the features the task needs,
//! computed in SQL over the store's own export, wrapped in the store-side learner that
//! can also turn the final model into the store's results. A store whose data cannot
//! serve a task (no customer ids, too few customers, too short a history) gets
//! [`DataError::CannotServe`] with the reason, which its agent reports instead of an
//! update.
//!
//! ```no_run
//! # async fn run() -> Result<(), fedretail_data::DataError> {
//! use fedretail_core::TaskKind;
//! use fedretail_data::{build_local_task, StoreSource};
//! let source = StoreSource::from_dir("network/store-001".as_ref());
//! let spec = TaskKind::Segments.default_spec().checked().unwrap();
//! let task = build_local_task("store-001", &source, &spec).await?;
//! println!("{} customers", task.num_train_examples());
//! # Ok(()) }
//! ```

use crate::customer_sql::{
    load_churn_rows, load_customer_points, load_transaction_points, CustomerFeatureSet,
    FeatureWindow,
};
use crate::demand_sql::{load_demand_dataset, DemandSpec};
use crate::error::DataError;
use crate::source::StoreSource;
use crate::tabular::StoreTable;
use fedretail_core::tabular::TableSummary;
use fedretail_core::task::{
    ChurnTaskOptions, ClusterFit, ClusterTaskOptions, DemandTaskOptions, TabularTaskOptions,
    CUSTOMER_ANOMALY_FEATURES, SEGMENT_FEATURES, TRANSACTION_FEATURES,
};
use fedretail_core::{BoxFuture, CheckedTask, TaskSpec};
use fedretail_models::classify::stratified_split;
use fedretail_models::demand::DemandOptions;
use fedretail_models::{
    ChurnScoring, ChurnTask, ClassifierTask, ClusterPurpose, ClusterSettings, DemandTask,
    GroupedTask, LabeledRows, LabelledClusterTask, LocalTask, OwnHead, TableScoring, TabularTask,
};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// The store's task for `spec`, prepared from its export.
pub fn build_local_task<'a>(
    store_id: &'a str,
    source: &'a StoreSource,
    spec: &'a CheckedTask,
) -> BoxFuture<'a, Result<Arc<dyn LocalTask>, DataError>> {
    Box::pin(async move { build_cached(store_id, source, spec, None).await })
}

/// Demand, customer, receipt and churn features a store computed, by what they depend on: the
/// task's window options and the export's files as they were (size, modification time)
/// with the store's view, so a queue of jobs on the same features computes them once
/// and an export that changes is read again. Only the current version is kept.
#[derive(Default)]
pub struct FeatureCache {
    entries: std::sync::Mutex<HashMap<String, Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for FeatureCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.lock().len();
        write!(f, "FeatureCache({n} entries)")
    }
}

type CacheEntries = HashMap<String, Arc<dyn Any + Send + Sync>>;

impl FeatureCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheEntries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the store's features depend on besides the task options.
fn export_version(source: &StoreSource) -> String {
    let files = [
        Some(&source.transactions),
        source.promotions.as_ref(),
        source.labels.as_ref(),
    ];
    let mut v: Vec<String> = files
        .into_iter()
        .flatten()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => format!("{}:{}:{:?}", p.display(), m.len(), m.modified().ok()),
            Err(_) => format!("{}:-", p.display()),
        })
        .collect();
    v.push(source.view_sql.clone().unwrap_or_default());
    v.join("|")
}

/// `load`'s value through the cache (when there is one) under `key`.
async fn through<T, F>(
    cache: Option<(&FeatureCache, &str)>,
    key: String,
    load: F,
) -> Result<T, DataError>
where
    T: Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<T, DataError>>,
{
    let Some((cache, version)) = cache else {
        return load.await;
    };
    let key = format!("{key}|{version}");
    let hit = cache
        .lock()
        .get(&key)
        .and_then(|v| v.downcast_ref::<T>().cloned());
    if let Some(v) = hit {
        return Ok(v);
    }
    let v = load.await?;
    let mut entries = cache.lock();
    entries.retain(|k, _| k.ends_with(version));
    entries.insert(key, Arc::new(v.clone()));
    Ok(v)
}

async fn build_cached(
    store_id: &str,
    source: &StoreSource,
    spec: &CheckedTask,
    cache: Option<&FeatureCache>,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let version = cache.map(|_| export_version(source)).unwrap_or_default();
    let cache = cache.map(|c| (c, version.as_str()));
    match spec.spec() {
        TaskSpec::Demand(o) => demand(store_id, source, o, cache).await,
        TaskSpec::CustomerAnomaly(o) | TaskSpec::Segments(o) => {
            let (purpose, features) = match spec.spec() {
                TaskSpec::Segments(_) => (ClusterPurpose::Segments, &SEGMENT_FEATURES[..]),
                _ => (
                    ClusterPurpose::CustomerAnomaly,
                    &CUSTOMER_ANOMALY_FEATURES[..],
                ),
            };
            let clusters = spec.clusters().unwrap_or(6);
            customers(source, o, purpose, features, clusters, cache).await
        }
        TaskSpec::ReceiptAnomaly(o) => {
            let clusters = spec.clusters().unwrap_or(8);
            receipts(source, o, &TRANSACTION_FEATURES, clusters, cache).await
        }
        TaskSpec::Churn(o) => churn(source, o, cache).await,
        TaskSpec::Tabular(o) => tabular(source, o).await,
    }
}

/// The store's table for a tabular task, or why it cannot serve.
async fn store_table(
    source: &StoreSource,
    o: &TabularTaskOptions,
) -> Result<StoreTable, DataError> {
    let path = source.table_path(&o.file);
    let table = StoreTable::load(
        &path,
        &o.target,
        &o.positive,
        &o.exclude,
        o.test_fraction,
        o.seed,
    )
    .await
    .map_err(|e| DataError::CannotServe {
        task: "tabular",
        reason: e.to_string(),
    })?;
    if let Some(reason) = table.unusable(o.min_train_rows) {
        return Err(DataError::CannotServe {
            task: "tabular",
            reason,
        });
    }
    Ok(table)
}

/// A store's description of its table: aggregates of its training rows, for the
/// encoding the stores agree on before round 1.
pub fn describe_table<'a>(
    source: &'a StoreSource,
    spec: &'a CheckedTask,
) -> BoxFuture<'a, Result<TableSummary, DataError>> {
    Box::pin(async move {
        let TaskSpec::Tabular(o) = spec.spec() else {
            return Err(DataError::Spec(format!(
                "task '{}' has no table to describe",
                spec.kind()
            )));
        };
        let table = store_table(source, o).await?;
        Ok(table.silo().summary(o.min_category_rows))
    })
}

async fn tabular(
    source: &StoreSource,
    o: &TabularTaskOptions,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let Some(encoding) = &o.encoding else {
        return Err(DataError::Spec(
            "a tabular task needs the encoding the stores agreed before it can train".into(),
        ));
    };
    let table = store_table(source, o).await?;
    let silo = table.silo();
    let (train, test) = silo.encode(encoding)?;
    let (rows, held_out) = silo.encode_all(encoding)?;
    let task: Arc<dyn LocalTask> = Arc::new(TabularTask {
        inner: ClassifierTask {
            name: "tabular",
            kind: o.model,
            train,
            test,
            dp: None,
            own_head: if o.personal_head {
                OwnHead::on()
            } else {
                OwnHead::off()
            },
        },
        scoring: TableScoring {
            rows,
            lines: table.lines(),
            held_out,
        },
    });
    grouped(task, o.groups)
}

/// The task itself, or with `groups > 1` a tree of group models around it.
fn grouped(task: Arc<dyn LocalTask>, groups: u32) -> Result<Arc<dyn LocalTask>, DataError> {
    if groups <= 1 {
        return Ok(task);
    }
    GroupedTask::try_new(task, groups as usize)
        .map(|t| Arc::new(t) as Arc<dyn LocalTask>)
        .map_err(|e| DataError::Spec(e.to_string()))
}

async fn demand(
    store_id: &str,
    source: &StoreSource,
    o: &DemandTaskOptions,
    cache: Option<(&FeatureCache, &str)>,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let spec = DemandSpec {
        holdout_days: o.holdout_days,
        horizon_days: o.horizon_days,
        validation_days: o.validation_days,
    };
    let key = format!("demand|{store_id}|{spec:?}");
    let load = async {
        load_demand_dataset(store_id, source, &spec)
            .await
            .map(Arc::new)
    };
    let data = match through(cache, key, load).await {
        Err(e @ DataError::TooLittleHistory { .. }) => {
            return Err(DataError::CannotServe {
                task: "demand",
                reason: e.to_string(),
            })
        }
        other => other?,
    };
    let options = DemandOptions {
        interval: o.interval,
        ..Default::default()
    };
    grouped(Arc::new(DemandTask::new(data, options)), o.groups)
}

fn settings(o: &ClusterTaskOptions, clusters: usize) -> ClusterSettings {
    ClusterSettings {
        clusters,
        max_iterations: o.max_iterations,
        seed: o.seed,
        flag_share: o.flag_share,
        silhouette_points: o.silhouette_points,
        meta: o.fit == ClusterFit::Meta,
    }
}

fn too_few(task: &'static str, what: &str, got: usize, needed: usize) -> DataError {
    let reason = if got == 0 && what == "customers" {
        "the export has no customer ids (the column is missing or empty); customer tasks \
         need them"
            .to_string()
    } else {
        format!("only {got} {what} in the window (at least {needed} needed)")
    };
    DataError::CannotServe { task, reason }
}

async fn customers(
    source: &StoreSource,
    o: &ClusterTaskOptions,
    purpose: ClusterPurpose,
    features: &'static [&'static str],
    clusters: usize,
    cache: Option<(&FeatureCache, &str)>,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let task = match purpose {
        ClusterPurpose::Segments => "segments",
        _ => "customer_anomaly",
    };
    let set = match purpose {
        ClusterPurpose::Segments => CustomerFeatureSet::Segments,
        _ => CustomerFeatureSet::Anomaly,
    };
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let key = format!("customers|{set:?}|{}", o.window_days);
    let load = load_customer_points(source, &window, set, source.labels.as_deref());
    let c = through(cache, key, load).await?;
    if c.points.len() < o.min_points.max(clusters) {
        return Err(too_few(
            task,
            "customers",
            c.points.len(),
            o.min_points.max(clusters),
        ));
    }
    Ok(Arc::new(LabelledClusterTask::new(
        purpose,
        features,
        c.customer_ids,
        c.labels,
        c.points,
        settings(o, clusters),
    )))
}

async fn receipts(
    source: &StoreSource,
    o: &ClusterTaskOptions,
    features: &'static [&'static str],
    clusters: usize,
    cache: Option<(&FeatureCache, &str)>,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let key = format!("receipts|{}", o.window_days);
    let load = load_transaction_points(source, &window, source.labels.as_deref());
    let r = through(cache, key, load).await?;
    let needed = o.min_points.max(clusters);
    if r.points.len() < needed {
        return Err(too_few(
            "receipt_anomaly",
            "receipts",
            r.points.len(),
            needed,
        ));
    }
    Ok(Arc::new(LabelledClusterTask::new(
        ClusterPurpose::ReceiptAnomaly,
        features,
        r.ids,
        r.labels,
        r.points,
        settings(o, clusters),
    )))
}

async fn churn(
    source: &StoreSource,
    o: &ChurnTaskOptions,
    cache: Option<(&FeatureCache, &str)>,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let key = format!("churn|{}|{}", o.window_days, o.horizon_days);
    let load = load_churn_rows(source, &window, o.horizon_days);
    let rows = match through(cache, key, load).await {
        Err(DataError::Spec(reason)) => {
            return Err(DataError::CannotServe {
                task: "churn",
                reason,
            })
        }
        other => other?,
    };
    let (train, test) = stratified_split(&rows, o.test_fraction, o.seed);
    let classes = train.positives().min(train.len() - train.positives());
    if train.len() < o.min_train_rows || classes == 0 {
        let reason = if rows.is_empty() {
            "the export has no customer ids (the column is missing or empty); customer tasks \
             need them"
                .to_string()
        } else {
            format!(
                "{} training customers, {} of whom churned (needs at least {} and both kinds)",
                train.len(),
                train.positives(),
                o.min_train_rows
            )
        };
        return Err(DataError::CannotServe {
            task: "churn",
            reason,
        });
    }
    let key = format!("churn_today|{}", o.window_days);
    let load = load_customer_points(source, &window, CustomerFeatureSet::Anomaly, None);
    let today = through(cache, key, load).await?;
    let mut current = LabeledRows::new(today.points.dim);
    for row in today.points.rows() {
        current.push(row, false);
    }
    Ok(Arc::new(ChurnTask {
        inner: ClassifierTask {
            name: "churn",
            kind: o.model,
            train,
            test,
            dp: None,
            own_head: OwnHead::off(),
        },
        scoring: ChurnScoring {
            current_ids: today.customer_ids,
            current,
        },
    }))
}

/// A store's export as the source of its tasks: each job's task is built from it when
/// the job asks, reusing features an earlier job computed from the same export.
#[derive(Debug, Clone)]
pub struct StoreExport {
    pub store_id: String,
    pub source: StoreSource,
    cache: Arc<FeatureCache>,
}

impl StoreExport {
    pub fn new(store_id: &str, source: StoreSource) -> Self {
        StoreExport {
            store_id: store_id.to_string(),
            source,
            cache: Arc::default(),
        }
    }

    /// Feature sets held for reuse (all of the export's current version).
    pub fn cached_features(&self) -> usize {
        self.cache.lock().len()
    }
}

fn in_words(e: DataError) -> String {
    match e {
        DataError::CannotServe { reason, .. } => reason,
        other => other.to_string(),
    }
}

impl fedretail_models::TaskSource for StoreExport {
    fn prepare<'a>(&'a self, spec: &'a CheckedTask) -> fedretail_models::PrepareFuture<'a> {
        Box::pin(async move {
            build_cached(&self.store_id, &self.source, spec, Some(&self.cache))
                .await
                .map_err(in_words)
        })
    }

    fn describe<'a>(&'a self, spec: &'a CheckedTask) -> fedretail_models::DescribeFuture<'a> {
        Box::pin(async move { describe_table(&self.source, spec).await.map_err(in_words) })
    }
}
