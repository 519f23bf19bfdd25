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
    /// The round whose training left this state.
    round: u64,
    values: Vec<f64>,
}

/// Where job `job_id` keeps its state under the results folder `dir`.
pub fn kept_state_path(dir: &Path, job_id: &str) -> PathBuf {
    job_folder(dir, job_id).join(FILE)
}

/// Saves `values`, left by round `round`, as job `job_id`'s state (replacing the last
/// in one rename).
pub fn save_kept_state(
    dir: &Path,
    job_id: &str,
    round: u64,
    values: &[f64],
) -> Result<(), ResultsError> {
    let path = kept_state_path(dir, job_id);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| ResultsError::Write {
            path: folder.to_path_buf(),
            source,
        })?;
    }
    let state = KeptState {
        format: FORMAT.into(),
        job_id: job_id.into(),
        round,
        values: values.to_vec(),
    };
    let text = serde_json::to_string(&state).map_err(|e| ResultsError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, text.as_bytes())
}

/// Job `job_id`'s saved state and the round that left it; None when it saved none.
pub fn load_kept_state(dir: &Path, job_id: &str) -> Result<Option<(u64, Vec<f64>)>, ResultsError> {
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
    Ok(Some((state.round, state.values)))
}

/// What job `job_id` kept before a restart, for a task built for `round`: None when
/// it saved nothing; an error (to report) when the file is unreadable or is from this
/// round or later (a past run's of a job by the same id).
pub fn kept_before(dir: &Path, job_id: &str, round: u64) -> Result<Option<Vec<f64>>, String> {
    match load_kept_state(dir, job_id) {
        Ok(None) => Ok(None),
        Ok(Some((saved, _))) if saved >= round => Err(format!(
            "it is from round {saved}, not before round {round}: a past run's"
        )),
        Ok(Some((_, values))) => Ok(Some(values)),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_comes_back_and_a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_kept_state(dir.path(), "job/1").unwrap().is_none());
        let values = [0.1, -2.5e-7, 3.0];
        save_kept_state(dir.path(), "job/1", 4, &values).unwrap();
        let (round, back) = load_kept_state(dir.path(), "job/1").unwrap().unwrap();
        assert_eq!(round, 4);
        assert_eq!(back.len(), 3);
        for (a, b) in back.iter().zip(values) {
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
    fn only_a_state_from_an_earlier_round_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(kept_before(dir.path(), "j", 5), Ok(None));
        save_kept_state(dir.path(), "j", 4, &[1.0, 2.0]).unwrap();
        assert_eq!(kept_before(dir.path(), "j", 5), Ok(Some(vec![1.0, 2.0])));
        // A new run of a job by the same id starts over at round 1.
        let e = kept_before(dir.path(), "j", 1).unwrap_err();
        assert!(e.contains("round 4") && e.contains("past run"), "{e}");
        assert!(kept_before(dir.path(), "j", 4).is_err());
    }
}
