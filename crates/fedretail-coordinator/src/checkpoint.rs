//! Durable job state in SQLite: every completed round's global model, who took part and
//! who dropped, and the final evaluation. A coordinator restarted with the same job id
//! resumes after the last completed round, so no completed round is lost.

use fedretail_privacy::LedgerEntry;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("checkpoint database {path} is in use by another coordinator: two coordinators cannot run one network's jobs (stop the other, or give this one its own database)")]
    InUse { path: String },
    #[error("checkpoint database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("checkpoint of round {round} is corrupt: {reason}")]
    Corrupt { round: u64, reason: String },
}

/// A completed round as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoundRecord {
    pub round: u64,
    pub participants: Vec<String>,
    /// Stores selected that did not reply, with why.
    pub dropped: Vec<(String, String)>,
    pub step_norm: f64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub seconds: f64,
    /// ε spent by the job after this round, at the job's δ (when it adds noise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon_spent: Option<f64>,
    /// Mean training loss of the round's global model over the stores that reported one
    /// (plain updates only; not kept in the database).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
}

/// The coordinator's database. The connection sits behind a mutex so that the driver
/// can hold the store across awaits on a multi-threaded runtime.
pub struct CheckpointStore {
    conn: std::sync::Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  config TEXT NOT NULL,
  status TEXT NOT NULL,
  outcome TEXT,
  run_id TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  participants TEXT NOT NULL,
  dropped TEXT NOT NULL,
  step_norm REAL NOT NULL,
  bytes_up INTEGER NOT NULL,
  bytes_down INTEGER NOT NULL,
  seconds REAL NOT NULL,
  parameters BLOB NOT NULL,
  PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS privacy_ledger (
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  entry TEXT NOT NULL,
  PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS privacy_charges (
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  entry TEXT NOT NULL,
  PRIMARY KEY (job_id, round, attempt)
);
CREATE TABLE IF NOT EXISTS failed_rounds (
  job_id TEXT NOT NULL,
  round INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  reason TEXT NOT NULL
);
";

/// Gives a database written before jobs had run ids their column (its jobs get one when
/// next started).
fn add_run_ids(conn: &Connection) -> Result<(), CheckpointError> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('jobs') WHERE name = 'run_id'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN run_id TEXT")?;
    }
    Ok(())
}

fn to_blob(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_blob(round: u64, blob: &[u8]) -> Result<Vec<f64>, CheckpointError> {
    if !blob.len().is_multiple_of(8) {
        return Err(CheckpointError::Corrupt {
            round,
            reason: format!("{} bytes is not a whole number of f64", blob.len()),
        });
    }
    Ok(blob
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

impl CheckpointStore {
    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-statement leaves SQLite consistent (each write is a statement or
        // a transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let conn = Connection::open(path).map_err(|source| CheckpointError::Open {
            path: path.display().to_string(),
            source,
        })?;
        // The coordinator's lease on its jobs: an exclusive lock on the database, taken
        // now and held while it runs. A second coordinator on the same database is
        // refused at start; the OS drops the lock when the holder dies, even by SIGKILL,
        // so a restart resumes at once.
        let in_use = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                CheckpointError::InUse {
                    path: path.display().to_string(),
                }
            }
            _ => CheckpointError::Sql(e),
        };
        // A held lock is not coming back soon: say so quickly.
        conn.busy_timeout(std::time::Duration::from_millis(250))?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(in_use)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(in_use)?;
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
            .map_err(in_use)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        add_run_ids(&conn)?;
        Ok(CheckpointStore {
            conn: std::sync::Mutex::new(conn),
        })
    }

    pub fn in_memory() -> Result<Self, CheckpointError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(CheckpointStore {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// The configuration (JSON) the job was last started with, if it ever was.
    pub fn stored_config(&self, job_id: &str) -> Result<Option<String>, CheckpointError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT config FROM jobs WHERE job_id = ?1",
                params![job_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
    }

    /// Marks the job running with `config_json`; its run id: the one it was first
    /// started with in this database (a resumed job is the same run), else a new one.
    pub fn start_job(&self, job_id: &str, config_json: &str) -> Result<String, CheckpointError> {
        let fresh = format!("{:032x}", rand::random::<u128>());
        let conn = self.conn();
        conn.execute(
            "INSERT INTO jobs (job_id, config, status, run_id) VALUES (?1, ?2, 'running', ?3)
             ON CONFLICT(job_id) DO UPDATE SET config = excluded.config, status = 'running',
               run_id = COALESCE(jobs.run_id, excluded.run_id)",
            params![job_id, config_json, fresh],
        )?;
        Ok(conn.query_row(
            "SELECT run_id FROM jobs WHERE job_id = ?1",
            params![job_id],
            |r| r.get::<_, String>(0),
        )?)
    }

    /// Store a completed round, and what it spent of the privacy budget, atomically:
    /// a resumed job never holds a model whose privacy cost is not on its ledger.
    pub fn save_round(
        &self,
        job_id: &str,
        record: &RoundRecord,
        parameters: &[f64],
        privacy: Option<&LedgerEntry>,
    ) -> Result<(), CheckpointError> {
        let participants = serde_json::to_string(&record.participants).unwrap_or_default();
        let dropped = serde_json::to_string(&record.dropped).unwrap_or_default();
        let conn = self.conn();
        let tx = conn.unchecked_transaction()?;
        if let Some(entry) = privacy {
            let json = serde_json::to_string(entry).map_err(|e| CheckpointError::Corrupt {
                round: record.round,
                reason: e.to_string(),
            })?;
            tx.execute(
                "INSERT OR REPLACE INTO privacy_ledger (job_id, round, entry) VALUES (?1, ?2, ?3)",
                params![job_id, record.round as i64, json],
            )?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO rounds (job_id, round, participants, dropped, step_norm, bytes_up, bytes_down, seconds, parameters)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                job_id,
                record.round as i64,
                participants,
                dropped,
                record.step_norm,
                record.bytes_up as i64,
                record.bytes_down as i64,
                record.seconds,
                to_blob(parameters)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Store the charge of an attempt at `round`, made before its stores were sent
    /// anything they could release (they noise their own updates). It stays whether
    /// the attempt completes, fails or is cut short by a crash.
    pub fn save_charge(
        &self,
        job_id: &str,
        round: u64,
        entry: &LedgerEntry,
    ) -> Result<(), CheckpointError> {
        let json = serde_json::to_string(entry).map_err(|e| CheckpointError::Corrupt {
            round,
            reason: e.to_string(),
        })?;
        // Numbered per round in the order charged (a restarted coordinator counts its
        // attempts afresh), so no charge ever replaces another.
        self.conn().execute(
            "INSERT INTO privacy_charges (job_id, round, attempt, entry)
             VALUES (?1, ?2, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM privacy_charges
                              WHERE job_id = ?1 AND round = ?2), ?3)",
            params![job_id, round as i64, json],
        )?;
        Ok(())
    }

    /// The privacy ledger of a job, in round order: what completed rounds spent and
    /// every charge made before a release, failed attempts' included.
    pub fn ledger_entries(&self, job_id: &str) -> Result<Vec<LedgerEntry>, CheckpointError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT round, entry FROM (
               SELECT round, 0 AS attempt, entry FROM privacy_ledger WHERE job_id = ?1
               UNION ALL
               SELECT round, attempt, entry FROM privacy_charges WHERE job_id = ?1)
             ORDER BY round, attempt",
        )?;
        let rows = stmt.query_map(params![job_id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (round, json) = row?;
            out.push(
                serde_json::from_str(&json).map_err(|e| CheckpointError::Corrupt {
                    round: round as u64,
                    reason: format!("privacy ledger entry: {e}"),
                })?,
            );
        }
        Ok(out)
    }

    pub fn record_failed_round(
        &self,
        job_id: &str,
        round: u64,
        attempt: u32,
        reason: &str,
    ) -> Result<(), CheckpointError> {
        self.conn().execute(
            "INSERT INTO failed_rounds (job_id, round, attempt, reason) VALUES (?1, ?2, ?3, ?4)",
            params![job_id, round as i64, attempt, reason],
        )?;
        Ok(())
    }

    /// The last completed round and its global model, if any.
    pub fn latest(&self, job_id: &str) -> Result<Option<(RoundRecord, Vec<f64>)>, CheckpointError> {
        let row = self
            .conn()
            .query_row(
                "SELECT round, participants, dropped, step_norm, bytes_up, bytes_down, seconds, parameters
                 FROM rounds WHERE job_id = ?1 ORDER BY round DESC LIMIT 1",
                params![job_id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, f64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, f64>(6)?,
                        r.get::<_, Vec<u8>>(7)?,
                    ))
                },
            )
            .optional()?;
        let Some((round, participants, dropped, step_norm, up, down, seconds, blob)) = row else {
            return Ok(None);
        };
        let round = round as u64;
        let corrupt = |e: serde_json::Error| CheckpointError::Corrupt {
            round,
            reason: e.to_string(),
        };
        let record = RoundRecord {
            round,
            participants: serde_json::from_str(&participants).map_err(corrupt)?,
            dropped: serde_json::from_str(&dropped).map_err(corrupt)?,
            step_norm,
            bytes_up: up as u64,
            bytes_down: down as u64,
            seconds,
            epsilon_spent: None,
            train_loss: None,
        };
        Ok(Some((record, from_blob(round, &blob)?)))
    }

    /// A job's stored status (`running`, `completed`, `stopped`, `failed`), if known.
    pub fn job_status(&self, job_id: &str) -> Result<Option<String>, CheckpointError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT status FROM jobs WHERE job_id = ?1",
                params![job_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
    }

    pub fn finish_job(
        &self,
        job_id: &str,
        status: &str,
        outcome_json: &str,
    ) -> Result<(), CheckpointError> {
        self.conn().execute(
            "UPDATE jobs SET status = ?2, outcome = ?3 WHERE job_id = ?1",
            params![job_id, status, outcome_json],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_coordinator_on_the_same_database_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let first = CheckpointStore::open(&path).unwrap();
        let e = CheckpointStore::open(&path).err().unwrap().to_string();
        assert!(
            e.contains("in use by another coordinator") && e.contains("c.db"),
            "{e}"
        );
        drop(first);
        assert!(CheckpointStore::open(&path).is_ok());
    }

    #[test]
    fn a_job_keeps_its_run_id_across_restarts_and_old_databases_gain_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        {
            // A database from before run ids.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, config TEXT NOT NULL,
                 status TEXT NOT NULL, outcome TEXT);
                 INSERT INTO jobs VALUES ('old', '{}', 'running', NULL);",
            )
            .unwrap();
        }
        let (old, first) = {
            let s = CheckpointStore::open(&path).unwrap();
            let old = s.start_job("old", "{}").unwrap();
            assert_eq!(old.len(), 32);
            assert_eq!(s.start_job("old", "{}").unwrap(), old);
            (old, s.start_job("j", "{}").unwrap())
        };
        assert_ne!(old, first);
        let s = CheckpointStore::open(&path).unwrap();
        assert_eq!(s.start_job("old", "{}").unwrap(), old);
        assert_eq!(s.start_job("j", r#"{"changed":1}"#).unwrap(), first);
        // Another coordinator's database runs a job by the same id as another run.
        let other = CheckpointStore::in_memory().unwrap();
        assert_ne!(other.start_job("j", "{}").unwrap(), first);
    }

    #[test]
    fn rounds_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let rec = RoundRecord {
            round: 3,
            participants: vec!["a".into(), "b".into()],
            dropped: vec![("c".into(), "deadline".into())],
            step_norm: 0.5,
            bytes_up: 10,
            bytes_down: 20,
            seconds: 1.5,
            epsilon_spent: None,
            train_loss: None,
        };
        {
            let s = CheckpointStore::open(&path).unwrap();
            s.start_job("j", "{}").unwrap();
            s.save_round(
                "j",
                &RoundRecord {
                    round: 2,
                    ..rec.clone()
                },
                &[0.0, 0.0],
                None,
            )
            .unwrap();
            let entry = LedgerEntry {
                round: 3,
                mechanism: "gaussian".into(),
                sampling_rate: 1.0,
                noise_multiplier: 2.0,
                steps: 1,
                epsilon_after: 1.25,
                rdp: vec![0.5, 0.25],
            };
            s.save_round("j", &rec, &[1.5, -2.0], Some(&entry)).unwrap();
        }
        let s = CheckpointStore::open(&path).unwrap();
        assert_eq!(s.job_status("j").unwrap().as_deref(), Some("running"));
        assert_eq!(s.job_status("nope").unwrap(), None);
        let (back, params) = s.latest("j").unwrap().unwrap();
        assert_eq!(back, rec);
        assert_eq!(params, vec![1.5, -2.0]);
        assert!(s.latest("other").unwrap().is_none());
        let ledger = s.ledger_entries("j").unwrap();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].epsilon_after, 1.25);
        assert_eq!(ledger[0].rdp, vec![0.5, 0.25]);
        // Charges made before release: two attempts at round 4 both stay, after the
        // completed round 3, and survive a reopen.
        for eps in [2.0, 2.5] {
            let charge = LedgerEntry {
                round: 4,
                epsilon_after: eps,
                ..ledger[0].clone()
            };
            s.save_charge("j", 4, &charge).unwrap();
        }
        drop(s);
        let s = CheckpointStore::open(&path).unwrap();
        let after: Vec<f64> = s
            .ledger_entries("j")
            .unwrap()
            .iter()
            .map(|e| e.epsilon_after)
            .collect();
        assert_eq!(after, vec![1.25, 2.0, 2.5]);
    }
}
