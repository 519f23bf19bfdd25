//! The coordinator's queue of jobs: the ones in its config, in order, then (when a
//! jobs folder is configured) every `*.toml` file that appears in that folder, in
//! file-name order. A job already completed in the checkpoint database is skipped, so
//! a restarted coordinator resumes the job it was running and keeps the rest of the
//! queue; a job that failed, or stopped at its privacy budget, is tried again (with a
//! larger budget it goes on spending from its stored ledger). A bad job file is
//! reported and skipped; the coordinator keeps serving.

use crate::checkpoint::CheckpointStore;
use crate::config::{CheckedJob, JobConfig};
use crate::events::CoordinatorEvent;
use crate::shared::Shared;
use crate::CoordinatorError;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the jobs folder is looked at.
const SCAN_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct JobQueue {
    pending: VecDeque<CheckedJob>,
    folder: Option<PathBuf>,
    /// Files of the folder already taken (run, skipped or refused).
    seen: BTreeSet<PathBuf>,
}

impl JobQueue {
    pub fn new(jobs: Vec<CheckedJob>, folder: Option<PathBuf>) -> Self {
        JobQueue {
            pending: jobs.into(),
            folder,
            seen: BTreeSet::new(),
        }
    }

    /// The next job to run; None when the configured jobs are done and there is no
    /// jobs folder. With a folder, waits for a new job file.
    pub async fn next(
        &mut self,
        shared: &Shared,
        checkpoints: &CheckpointStore,
    ) -> Result<Option<CheckedJob>, CoordinatorError> {
        loop {
            while let Some(job) = self.pending.pop_front() {
                if let Some(reason) = finished_before(checkpoints, job.job_id())? {
                    (shared.observer)(&CoordinatorEvent::JobSkipped {
                        job_id: job.job_id().to_string(),
                        reason,
                    });
                    continue;
                }
                return Ok(Some(job));
            }
            let Some(folder) = self.folder.clone() else {
                return Ok(None);
            };
            self.scan(&folder, shared);
            if self.pending.is_empty() {
                let tick = tokio::time::Instant::now() + SCAN_EVERY;
                shared.wait_progress(tick).await;
            }
        }
    }

    /// Queues the folder's new job files; a file that does not parse or check is
    /// reported with its reason and not tried again.
    fn scan(&mut self, folder: &Path, shared: &Shared) {
        let Ok(entries) = std::fs::read_dir(folder) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && !self.seen.contains(p))
            .collect();
        files.sort();
        for file in files {
            self.seen.insert(file.clone());
            match read_job_file(&file) {
                Ok(job) => self.pending.push_back(job),
                Err(reason) => (shared.observer)(&CoordinatorEvent::JobSkipped {
                    job_id: file.display().to_string(),
                    reason,
                }),
            }
        }
    }
}

/// Why a job is not run again, if the database says it already completed.
fn finished_before(
    checkpoints: &CheckpointStore,
    job_id: &str,
) -> Result<Option<String>, CoordinatorError> {
    Ok(match checkpoints.job_status(job_id)?.as_deref() {
        Some("completed") => Some(format!(
            "job '{job_id}' already completed in this coordinator's database; give it a new job_id to run it again"
        )),
        _ => None,
    })
}

/// One job from a jobs-folder file; its id defaults to the file's name.
pub(crate) fn read_job_file(path: &Path) -> Result<CheckedJob, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !table.contains_key("job_id") {
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string());
        table.insert(
            "job_id".into(),
            toml::Value::String(stem.unwrap_or_default()),
        );
    }
    let config: JobConfig = table
        .try_into()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    CheckedJob::new(config).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_file_takes_its_name_and_a_bad_one_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("segments-dec.toml");
        std::fs::write(&good, "task = \"segments\"\nmin_stores = 1\n").unwrap();
        let job = read_job_file(&good).unwrap();
        assert_eq!(job.job_id(), "segments-dec");
        assert_eq!(job.strategy.name(), "bisecting_kmeans");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "task = \"weather\"\n").unwrap();
        let e = read_job_file(&bad).unwrap_err();
        assert!(e.contains("bad.toml") && e.contains("weather"), "{e}");
        let pairing = dir.path().join("pairing.toml");
        std::fs::write(&pairing, "task = \"segments\"\nstrategy = \"fedavg\"\n").unwrap();
        let e = read_job_file(&pairing).unwrap_err();
        assert!(e.contains("bisecting_kmeans for a clustering task"), "{e}");
    }
}
