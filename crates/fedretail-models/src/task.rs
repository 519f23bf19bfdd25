use fedretail_core::{LocalWork, ModelLayout};
use std::collections::BTreeMap;

/// Aggregate metrics a store reports: named numbers, never rows.
pub type TaskMetrics = BTreeMap<String, f64>;

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
    #[error("unknown task '{0}' (known: demand)")]
    UnknownTask(String),
    #[error("task '{task}' cannot do {work}")]
    UnsupportedWork {
        task: &'static str,
        work: &'static str,
    },
    #[error("invalid differential-privacy setting: {0}")]
    InvalidPrivacy(String),
    #[error("local training diverged: {0}")]
    Diverged(String),
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
}

/// The layout of a task's model, by task name (what the coordinator needs to start).
pub fn layout_for_task(task: &str) -> Result<ModelLayout, TaskError> {
    match task {
        "demand" => Ok(crate::demand_layout()),
        other => Err(TaskError::UnknownTask(other.to_string())),
    }
}
