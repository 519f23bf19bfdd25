use crate::SimError;
use fedretail_core::BoxFuture;
use fedretail_data::{load_demand_dataset, DemandSpec, StoreSource};
use fedretail_domain::schema::TRANSACTIONS_FILE;
use fedretail_models::DemandDataset;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A store ready to take part: its prepared rows stay with its own agent.
#[derive(Debug, Clone)]
pub struct PreparedStore {
    pub store_id: String,
    pub business_type: String,
    pub dataset: Arc<DemandDataset>,
}

/// A store that could not take part, and why (partial results are data).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SkippedStore {
    pub store_id: String,
    pub reason: String,
}

/// The stores that could take part, prepared, and those that could not.
pub type PreparedNetwork = (Vec<PreparedStore>, Vec<SkippedStore>);

pub(crate) fn store_dirs(root: &Path) -> Result<Vec<PathBuf>, SimError> {
    let entries = std::fs::read_dir(root).map_err(|source| SimError::Io {
        path: root.display().to_string(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && (p.join(TRANSACTIONS_FILE).exists() || p.join("transactions.parquet").exists())
        })
        .collect();
    dirs.sort();
    Ok(dirs)
}

pub(crate) fn business_type_of(dir: &Path) -> String {
    fedretail_data::declared_business_type_text(dir).unwrap_or_else(|| "unknown".into())
}

/// Prepare every store under `root` (one directory per store), `parallel` at a time.
pub fn prepare_network<'a>(
    root: &'a Path,
    spec: &'a DemandSpec,
    parallel: usize,
    on_done: &'a (dyn Fn(&str, usize, usize) + Send + Sync),
) -> BoxFuture<'a, Result<PreparedNetwork, SimError>> {
    Box::pin(async move {
        let dirs = store_dirs(root)?;
        if dirs.is_empty() {
            return Err(SimError::NoStores(root.display().to_string()));
        }
        let total = dirs.len();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (i, dir) in dirs.into_iter().enumerate() {
            let spec = spec.clone();
            let semaphore = semaphore.clone();
            set.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let store_id = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let mut source = StoreSource::from_dir(&dir);
                if !source.transactions.exists() {
                    source.transactions = dir.join("transactions.parquet");
                }
                let result = load_demand_dataset(&store_id, &source, &spec).await;
                (i, store_id, business_type_of(&dir), result)
            });
        }
        let mut results = Vec::with_capacity(total);
        let mut done = 0;
        while let Some(joined) = set.join_next().await {
            let r = joined
                .map_err(|e| SimError::Runtime(format!("store preparation task failed: {e}")))?;
            done += 1;
            on_done(&r.1, done, total);
            results.push(r);
        }
        results.sort_by_key(|r| r.0);
        let mut prepared = Vec::new();
        let mut skipped = Vec::new();
        for (_, store_id, business_type, result) in results {
            match result {
                Ok(ds) if ds.train.is_empty() => skipped.push(SkippedStore {
                    store_id,
                    reason: "no training rows after the warm-up period".into(),
                }),
                Ok(ds) => prepared.push(PreparedStore {
                    store_id,
                    business_type,
                    dataset: Arc::new(ds),
                }),
                Err(e) => skipped.push(SkippedStore {
                    store_id,
                    reason: e.to_string(),
                }),
            }
        }
        if prepared.is_empty() {
            return Err(SimError::AllSkipped(
                skipped
                    .first()
                    .map(|s| s.reason.clone())
                    .unwrap_or_default(),
            ));
        }
        Ok((prepared, skipped))
    })
}
