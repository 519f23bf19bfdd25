//! The store's results folder: for every job, one folder named after the job with a
//! CSV per result table (forecasts, flagged receipts and customers, segments, churn
//! scores), `model.json` (the global model, a documented format that
//! `fedretail predict` reads back) and `model_card.json` (task, job, model version,
//! metrics on the store's own held-out data, date). Everything here is computed and
//! written at the store; none of it is sent.
//!
//! `model.json`:
//! ```json
//! {"format": "fedretail-model/1", "store_id": "store-001", "job_id": "segments",
//!  "model_version": 42, "task": {"kind": "segments", ...},
//!  "layout": [{"name": "centroids", "len": 28, "regularized": false}, ...],
//!  "parameters": [0.12, ...]}
//! ```

use fedretail_core::{ModelLayout, ModelParameters, Segment, TaskSpec};
use fedretail_models::{ResultTable, StoreResults};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `format` field of `model.json`.
pub const MODEL_FORMAT: &str = "fedretail-model/1";

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot write results to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read model {path}: {reason}")]
    Read { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutSegment {
    pub name: String,
    pub len: usize,
    pub regularized: bool,
}

/// A global model as a store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub format: String,
    pub store_id: String,
    pub job_id: String,
    /// The round that produced the model.
    pub model_version: u64,
    pub task: TaskSpec,
    pub layout: Vec<LayoutSegment>,
    pub parameters: Vec<f64>,
}

impl ModelFile {
    pub fn new(
        store_id: &str,
        job_id: &str,
        task: &TaskSpec,
        layout: &ModelLayout,
        model_version: u64,
        parameters: Vec<f64>,
    ) -> Self {
        ModelFile {
            format: MODEL_FORMAT.into(),
            store_id: store_id.into(),
            job_id: job_id.into(),
            model_version,
            task: task.clone(),
            layout: layout
                .segments()
                .iter()
                .map(|s| LayoutSegment {
                    name: s.name.clone(),
                    len: s.len,
                    regularized: s.regularized,
                })
                .collect(),
            parameters,
        }
    }

    /// The parameters checked against the layout they claim.
    pub fn parameters(&self) -> Result<ModelParameters, String> {
        let layout = ModelLayout::new(
            self.layout
                .iter()
                .map(|s| Segment::new(&s.name, s.len, s.regularized))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        ModelParameters::from_values(layout, self.parameters.clone()).map_err(|e| e.to_string())
    }
}

/// Reads a `model.json`, checking its format and shape.
pub fn read_model(path: &Path) -> Result<ModelFile, ResultsError> {
    let bad = |reason: String| ResultsError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let model: ModelFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if model.format != MODEL_FORMAT {
        return Err(bad(format!(
            "format '{}' is not '{MODEL_FORMAT}'",
            model.format
        )));
    }
    model.parameters().map_err(bad)?;
    if let Some(i) = model.parameters.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("parameter {i} is not finite")));
    }
    Ok(model)
}

#[derive(Serialize)]
struct ModelCard<'a> {
    task: &'a str,
    job_id: &'a str,
    store_id: &'a str,
    model_version: u64,
    written_at: String,
    /// Metrics on the store's own held-out data.
    metrics: &'a fedretail_core::TaskMetrics,
    files: Vec<String>,
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ResultsError> {
    let err = |source| ResultsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn csv_bytes(table: &ResultTable) -> Result<Vec<u8>, std::io::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&table.columns)?;
    for row in &table.rows {
        w.write_record(row)?;
    }
    w.into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The folder of job `job_id` under `dir`: its id with anything but letters, digits
/// and `-_.` replaced, and no leading dots.
pub(crate) fn job_folder(dir: &Path, job_id: &str) -> PathBuf {
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(safe.trim_start_matches('.'))
}

/// Writes a job's results under `dir/<job id>/` and returns that folder.
pub fn write_results(
    dir: &Path,
    model: &ModelFile,
    results: &StoreResults,
) -> Result<PathBuf, ResultsError> {
    let folder = job_folder(dir, &model.job_id);
    std::fs::create_dir_all(&folder).map_err(|source| ResultsError::Write {
        path: folder.clone(),
        source,
    })?;
    let mut files = Vec::new();
    for table in &results.tables {
        let name = format!("{}.csv", table.name);
        let path = folder.join(&name);
        let bytes = csv_bytes(table).map_err(|source| ResultsError::Write {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)?;
        files.push(name);
    }
    write_atomic(&folder.join("model.json"), pretty(model).as_bytes())?;
    files.push("model.json".into());
    let report = folder.join("report.html");
    let heading = crate::store_page::PageHeading {
        store_id: &model.store_id,
        job_id: &model.job_id,
        kind: model.task.kind(),
        model_version: model.model_version,
    };
    crate::store_page::store_page(&heading, results)
        .write(&report)
        .map_err(|e| match e {
            fedretail_report::ReportError::Write { path, source } => {
                ResultsError::Write { path, source }
            }
        })?;
    files.push("report.html".into());
    let kind = model.task.kind();
    let card = ModelCard {
        task: kind.name(),
        job_id: &model.job_id,
        store_id: &model.store_id,
        model_version: model.model_version,
        written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        metrics: &results.metrics,
        files,
    };
    write_atomic(&folder.join("model_card.json"), pretty(&card).as_bytes())?;
    Ok(folder)
}

/// Pretty JSON of plain data (serializing it cannot fail).
fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_model_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spec = fedretail_core::TaskKind::Segments.default_spec();
        let checked = spec.checked().unwrap();
        let layout = checked.layout().unwrap();
        let values = checked.initial_model().unwrap().into_values();
        let model = ModelFile::new("s1", "seg/1", &spec, &layout, 7, values.clone());
        let mut table = ResultTable::new("segments", &["customer_id", "segment_name"]);
        table.push(vec!["c1".into(), "lapsed, \"quiet\"".into()]);
        let results = StoreResults {
            tables: vec![table],
            metrics: [("silhouette_federated".to_string(), 0.4)].into(),
        };
        let folder = write_results(dir.path(), &model, &results).unwrap();
        assert_eq!(folder, dir.path().join("seg_1"));
        let csv = std::fs::read_to_string(folder.join("segments.csv")).unwrap();
        assert_eq!(
            csv,
            "customer_id,segment_name\nc1,\"lapsed, \"\"quiet\"\"\"\n"
        );
        let back = read_model(&folder.join("model.json")).unwrap();
        assert_eq!(back, model);
        let card: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("model_card.json")).unwrap())
                .unwrap();
        assert_eq!(card["task"], "segments");
        let page = std::fs::read_to_string(folder.join("report.html")).unwrap();
        assert!(page.contains("segments.csv") && page.contains("silhouette_federated"));
        assert!(
            page.contains("lapsed, &quot;quiet&quot;"),
            "rows shown, escaped"
        );
        assert_eq!(card["model_version"], 7);
        std::fs::write(folder.join("model.json"), "{\"format\":\"other\"}").unwrap();
        assert!(read_model(&folder.join("model.json")).is_err());
    }
}
