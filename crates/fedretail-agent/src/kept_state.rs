//! What a task keeps at the store between rounds outside the shared model (a FedPer
//! head), saved in the job's results folder after every round it changes, so that an
//! agent restarted in the middle of a job carries on from it instead of starting it
//! over. It is the store's own and never sent.

use crate::results::{job_folder, write_atomic, ResultsError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `format` field of the file.
const FORMAT: &str = "fedretail-kept-state/1";
const FILE: &str = "kept_state.json";

#[derive(Debug, Serialize, Deserialize)]
struct KeptState {
    format: String,
    job_id: String,
    /// The run of the job (the coordinator's run id; empty where it gave none).
    #[serde(default)]
    run_id: String,
    /// The round whose training left this state.
    round: u64,
    values: Vec<f64>,
}

/// Which run of which job a kept state belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub job_id: String,
    pub run_id: String,
}

impl JobRun {
    /// The run a job context from the coordinator names.
    pub fn of(job: &fedretail_proto::v1::JobContext) -> Self {
        JobRun {
            job_id: job.job_id.clone(),
            run_id: job.run_id.clone(),
        }
    }
}

/// Where job `job_id` keeps its state under the results folder `dir`.
pub fn kept_state_path(dir: &Path, job_id: &str) -> PathBuf {
    job_folder(dir, job_id).join(FILE)
}

/// Saves `values`, left by round `round`, as the state of `run` (replacing the last in
/// one rename).
pub fn save_kept_state(
    dir: &Path,
    run: &JobRun,
    round: u64,
    values: &[f64],
) -> Result<(), ResultsError> {
    let path = kept_state_path(dir, &run.job_id);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| ResultsError::Write {
            path: folder.to_path_buf(),
            source,
        })?;
    }
    let state = KeptState {
        format: FORMAT.into(),
        job_id: run.job_id.clone(),
        run_id: run.run_id.clone(),
        round,
        values: values.to_vec(),
    };
    let text = serde_json::to_string(&state).map_err(|e| ResultsError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, text.as_bytes())
}

/// Saves one round's kept state of one job, logging (not failing the round) when the
/// write fails: a lost file only means a restart starts the head over.
pub struct KeptStateSaver {
    pub dir: PathBuf,
    pub run: JobRun,
    pub round: u64,
    pub store_id: String,
}

impl KeptStateSaver {
    pub fn save(&self, values: &[f64]) {
        if let Err(e) = save_kept_state(&self.dir, &self.run, self.round, values) {
            tracing::warn!(store = %self.store_id, "job '{}': {e}", self.run.job_id);
        }
    }
}

/// Job `job_id`'s saved state; None when it saved none.
fn load_kept_state(dir: &Path, job_id: &str) -> Result<Option<KeptState>, ResultsError> {
    let path = kept_state_path(dir, job_id);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ResultsError::Read {
                path,
                reason: e.to_string(),
            })
        }
    };
    let bad = |reason: String| ResultsError::Read {
        path: path.clone(),
        reason,
    };
    let state: KeptState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if state.format != FORMAT {
        return Err(bad(format!(
            "format '{}', expected '{FORMAT}'",
            state.format
        )));
    }
    if state.job_id != job_id {
        return Err(bad(format!(
            "it is job '{}'s, not '{job_id}'s",
            state.job_id
        )));
    }
    Ok(Some(state))
}

/// What `run` kept before a restart, for a task built for `round`: None when it saved
/// nothing; an error (to report) when the file is unreadable or is a past run's of a
/// job by the same id (another run id, or from this round or later).
pub fn kept_before(dir: &Path, run: &JobRun, round: u64) -> Result<Option<Vec<f64>>, String> {
    let saved = match load_kept_state(dir, &run.job_id) {
        Ok(None) => return Ok(None),
        Ok(Some(saved)) => saved,
        Err(e) => return Err(e.to_string()),
    };
    if saved.run_id != run.run_id {
        return Err(format!(
            "it is from run '{}', not this run '{}': a past run's",
            saved.run_id, run.run_id
        ));
    }
    if saved.round >= round {
        return Err(format!(
            "it is from round {}, not before round {round}: a past run's",
            saved.round
        ));
    }
    Ok(Some(saved.values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job_id: &str, run_id: &str) -> JobRun {
        JobRun {
            job_id: job_id.into(),
            run_id: run_id.into(),
        }
    }

    #[test]
    fn a_saved_state_comes_back_and_a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let r = run("job/1", "r1");
        assert!(load_kept_state(dir.path(), "job/1").unwrap().is_none());
        let values = [0.1, -2.5e-7, 3.0];
        save_kept_state(dir.path(), &r, 4, &values).unwrap();
        let back = load_kept_state(dir.path(), "job/1").unwrap().unwrap();
        assert_eq!((back.round, back.run_id.as_str()), (4, "r1"));
        assert_eq!(back.values.len(), 3);
        for (a, b) in back.values.iter().zip(values) {
            assert!((a - b).abs() <= 1e-15 * b.abs(), "{a} {b}");
        }
        // The file sits in the job's results folder, by its safe name.
        assert!(dir.path().join("job_1").join(FILE).exists());
        std::fs::write(kept_state_path(dir.path(), "job/1"), "{not json").unwrap();
        let e = load_kept_state(dir.path(), "job/1")
            .unwrap_err()
            .to_string();
        assert!(e.contains(FILE), "{e}");
    }

    #[test]
    fn only_a_state_from_an_earlier_round_of_the_same_run_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = run("j", "r1");
        assert_eq!(kept_before(dir.path(), &r, 5), Ok(None));
        save_kept_state(dir.path(), &r, 4, &[1.0, 2.0]).unwrap();
        assert_eq!(kept_before(dir.path(), &r, 5), Ok(Some(vec![1.0, 2.0])));
        // A new run of a job by the same id starts over at round 1...
        let e = kept_before(dir.path(), &r, 1).unwrap_err();
        assert!(e.contains("round 4") && e.contains("past run"), "{e}");
        assert!(kept_before(dir.path(), &r, 4).is_err());
        // ...or, from another coordinator, at any round: its run id tells it apart.
        let e = kept_before(dir.path(), &run("j", "r2"), 9).unwrap_err();
        assert!(e.contains("'r1'") && e.contains("'r2'"), "{e}");
    }

    #[test]
    fn a_file_from_before_run_ids_belongs_to_a_run_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = kept_state_path(dir.path(), "j");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = r#"{"format":"fedretail-kept-state/1","job_id":"j","round":2,"values":[0.5]}"#;
        std::fs::write(&path, old).unwrap();
        assert_eq!(
            kept_before(dir.path(), &run("j", ""), 3),
            Ok(Some(vec![0.5]))
        );
        assert!(kept_before(dir.path(), &run("j", "r1"), 3).is_err());
    }
}
