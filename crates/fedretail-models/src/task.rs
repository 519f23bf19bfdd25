use fedretail_core::{LocalWork, ModelLayout};

pub use fedretail_core::TaskMetrics;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("global parameters have {got} values, task '{task}' expects {expected}")]
    WrongParameterCount {
        task: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("store has no training rows for task '{0}'")]
    NoTrainingRows(&'static str),
    #[error("task '{task}' cannot do {work}")]
    UnsupportedWork {
        task: &'static str,
        work: &'static str,
    },
    #[error("invalid differential-privacy setting: {0}")]
    InvalidPrivacy(String),
    #[error("local training diverged: {0}")]
    Diverged(String),
    #[error("the coordinator's model is malformed: {0}")]
    InvalidModel(String),
    #[error("the state kept for task '{task}' does not fit it: {reason}")]
    KeptState { task: &'static str, reason: String },
}

/// A table a store keeps from a job (forecasts, flagged receipts, segments, scores):
/// the agent writes it as CSV into the store's own results folder. Cells are text,
/// already formatted for a spreadsheet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultTable {
    /// File stem, e.g. `forecast` for `forecast.csv`.
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl ResultTable {
    pub fn new(name: &str, columns: &[&str]) -> Self {
        ResultTable {
            name: name.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }
}

/// What a store gets from a job, computed from the final model and its own rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreResults {
    pub tables: Vec<ResultTable>,
    /// Metrics of the model on the store's own held-out data (the model card's).
    pub metrics: TaskMetrics,
}

/// A federated task as one store sees it. The agent calls these; the coordinator never
/// sees what is inside.
pub trait LocalTask: Send + Sync {
    fn task_name(&self) -> &'static str;
    fn layout(&self) -> ModelLayout;
    /// Rows the store trains on (FedAvg weights by this).
    fn num_train_examples(&self) -> u64;
    /// The update for this round's work, as f64 (the agent encodes it).
    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError>;
    /// Metrics of `global` on the store's held-out rows, with the store's own baselines.
    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError>;
    /// The mean loss of `global` on the store's training rows, the one number behind the
    /// job's convergence curve; None where the task has no loss to report.
    fn train_loss(&self, _global: &[f64]) -> Option<f64> {
        None
    }
    /// The loss of `global` on each of the store's validation rows (days no model was
    /// fitted on), for choosing among shared models; None where the task has none.
    fn validation_losses(&self, _global: &[f64]) -> Option<Vec<f64>> {
        None
    }
    /// What the store keeps between rounds outside the shared model (a FedPer head),
    /// for the agent to save against a restart; None while it keeps nothing. It never
    /// leaves the store.
    fn kept_state(&self) -> Option<Vec<f64>> {
        None
    }
    /// Takes back what [`LocalTask::kept_state`] gave, after a restart; an error when
    /// it does not fit this task.
    fn restore_state(&self, _state: &[f64]) -> Result<(), TaskError> {
        Err(TaskError::KeptState {
            task: self.task_name(),
            reason: "this task keeps nothing between rounds".into(),
        })
    }
    /// What the store keeps from the final model: tables for its results folder. They
    /// never leave the store.
    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        Ok(StoreResults {
            tables: Vec::new(),
            metrics: self.evaluate(global)?,
        })
    }
}
