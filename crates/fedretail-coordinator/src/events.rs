//! What the coordinator reports as it goes, to whoever watches (progress bars,
//! logs, the simulations): named events with aggregate figures only.

use std::sync::Arc;

/// What the coordinator reports as it goes (for progress bars and logs).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CoordinatorEvent {
    StoreRegistered {
        store_id: String,
        /// What the store declared it is (public metadata, for grouping).
        business_type: String,
        registered: usize,
    },
    JobStarted {
        job_id: String,
        task: String,
        strategy: String,
        /// The job's ε budget, when it has one.
        budget_epsilon: Option<f64>,
    },
    /// A store answered a job's prepare task: ready with its rows, or not, and why.
    StoreReady {
        job_id: String,
        store_id: String,
        num_train_examples: Option<u64>,
        reason: Option<String>,
    },
    RoundStarted {
        job_id: String,
        round: u64,
        total_rounds: u64,
        selected: usize,
    },
    UpdateAccepted {
        round: u64,
        store_id: String,
        received: usize,
        selected: usize,
    },
    RoundCompleted {
        round: u64,
        participants: usize,
        dropped: usize,
        step_norm: f64,
        /// Payload bytes of the round, both ways, and its wall time.
        bytes_up: u64,
        bytes_down: u64,
        seconds: f64,
        /// ε spent so far at the job's δ, when the job adds noise.
        epsilon_spent: Option<f64>,
        /// Mean training loss the stores reported for the round's starting model.
        train_loss: Option<f64>,
    },
    /// The next round would overspend the privacy budget, so training stopped.
    BudgetReached {
        round: u64,
        reason: String,
    },
    RoundFailed {
        round: u64,
        attempt: u32,
        reason: String,
    },
    EvaluationStarted {
        stores: usize,
    },
    /// A store reported the named metrics of the final model on its own held-out data
    /// (what its model card holds; the store's results stay with it).
    StoreEvaluated {
        store_id: String,
        metrics: std::collections::BTreeMap<String, f64>,
    },
    JobFinished {
        job_id: String,
        status: String,
    },
    /// A job from the jobs folder (or already finished in the database) is not run.
    JobSkipped {
        job_id: String,
        reason: String,
    },
    /// A store's message was refused (by the refusal's short name; no content).
    MessageRefused {
        reason: &'static str,
    },
    /// Every job is done; the coordinator stops serving.
    Finished {
        status: String,
    },
}

pub type Observer = Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>;
