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
use fedretail_core::{CheckedTask, TaskSpec};
use fedretail_models::classify::stratified_split;
use fedretail_models::demand::DemandOptions;
use fedretail_models::{
    ChurnScoring, ChurnTask, ClassifierTask, ClusterPurpose, ClusterSettings, DemandTask,
    LabeledRows, LabelledClusterTask, LocalTask, TableScoring, TabularTask,
};
use std::sync::Arc;

/// The store's task for `spec`, prepared from its export.
pub async fn build_local_task(
    store_id: &str,
    source: &StoreSource,
    spec: &CheckedTask,
) -> Result<Arc<dyn LocalTask>, DataError> {
    match spec.spec() {
        TaskSpec::Demand(o) => demand(store_id, source, o).await,
        TaskSpec::CustomerAnomaly(o) | TaskSpec::Segments(o) => {
            let (purpose, features) = match spec.spec() {
                TaskSpec::Segments(_) => (ClusterPurpose::Segments, &SEGMENT_FEATURES[..]),
                _ => (
                    ClusterPurpose::CustomerAnomaly,
                    &CUSTOMER_ANOMALY_FEATURES[..],
                ),
            };
            customers(source, o, purpose, features, spec.clusters().unwrap_or(6)).await
        }
        TaskSpec::ReceiptAnomaly(o) => {
            receipts(
                source,
                o,
                &TRANSACTION_FEATURES,
                spec.clusters().unwrap_or(8),
            )
            .await
        }
        TaskSpec::Churn(o) => churn(source, o).await,
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
pub async fn describe_table(
    source: &StoreSource,
    spec: &CheckedTask,
) -> Result<TableSummary, DataError> {
    let TaskSpec::Tabular(o) = spec.spec() else {
        return Err(DataError::Spec(format!(
            "task '{}' has no table to describe",
            spec.kind()
        )));
    };
    let table = store_table(source, o).await?;
    Ok(table.silo().summary(o.min_category_rows))
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
    Ok(Arc::new(TabularTask {
        inner: ClassifierTask {
            name: "tabular",
            kind: o.model,
            train,
            test,
            dp: None,
        },
        scoring: TableScoring {
            rows,
            lines: table.lines(),
            held_out,
        },
    }))
}

async fn demand(
    store_id: &str,
    source: &StoreSource,
    o: &DemandTaskOptions,
) -> Result<Arc<dyn LocalTask>, DataError> {
    let spec = DemandSpec {
        holdout_days: o.holdout_days,
        horizon_days: o.horizon_days,
    };
    let data = match load_demand_dataset(store_id, source, &spec).await {
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
    Ok(Arc::new(DemandTask::new(Arc::new(data), options)))
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
    let c = load_customer_points(source, &window, set, source.labels.as_deref()).await?;
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
) -> Result<Arc<dyn LocalTask>, DataError> {
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let r = load_transaction_points(source, &window, source.labels.as_deref()).await?;
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
) -> Result<Arc<dyn LocalTask>, DataError> {
    let window = FeatureWindow {
        window_days: o.window_days,
    };
    let rows = match load_churn_rows(source, &window, o.horizon_days).await {
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
    let today = load_customer_points(source, &window, CustomerFeatureSet::Anomaly, None).await?;
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
        },
        scoring: ChurnScoring {
            current_ids: today.customer_ids,
            current,
        },
    }))
}

/// A store's export as the source of its tasks: each job's task is built from it when
/// the job asks.
#[derive(Debug, Clone)]
pub struct StoreExport {
    pub store_id: String,
    pub source: StoreSource,
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
            build_local_task(&self.store_id, &self.source, spec)
                .await
                .map_err(in_words)
        })
    }

    fn describe<'a>(&'a self, spec: &'a CheckedTask) -> fedretail_models::DescribeFuture<'a> {
        Box::pin(async move { describe_table(&self.source, spec).await.map_err(in_words) })
    }
}
