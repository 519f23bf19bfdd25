//! The job driver: runs the coordinator's jobs one after another against the stores
//! that stay connected. For each job it asks every store to prepare the job's task
//! (and hears which cannot, and why), runs rounds of the job's strategy, checkpoints
//! each completed round, and finally asks every ready store to evaluate the model and
//! keep its results. Failures are data: a job that cannot run is recorded with its
//! reason and the queue goes on; dropped stores and failed attempts carry reasons.

use crate::checkpoint::{CheckpointStore, RoundRecord};
use crate::config::{CheckedJob, JobConfig, NoiseKind};
use crate::events::CoordinatorEvent;
use crate::jobs::JobQueue;
use crate::machine::{RoundError, RoundLedger};
use crate::round::{run_round, RoundDone, RoundInput};
use crate::shared::Shared;
use crate::CoordinatorError;
use fedretail_core::tabular::merge_summaries;
use fedretail_core::{ModelParameters, Strategy, TaskMetrics, TaskSpec};
use fedretail_privacy::{LedgerEntry, PrivacyBudget, PrivacyLedger, RoundMechanism};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After the last job ends, keep answering polls this long so agents hear it.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// One store's final evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreEvaluation {
    pub store_id: String,
    pub business_type: String,
    pub num_train_examples: u64,
    pub metrics: TaskMetrics,
}

/// Everything a job produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobOutcome {
    pub job_id: String,
    pub task: String,
    pub strategy: String,
    pub status: String,
    /// True when the job could not run to its end (too few stores, failed rounds).
    pub failed: bool,
    /// Rounds completed in this run (after any resumed ones).
    pub rounds: Vec<RoundRecord>,
    /// The round a restarted coordinator resumed after, if any.
    pub resumed_after_round: Option<u64>,
    /// The final model's version: the last completed round.
    pub model_version: u64,
    pub parameters: Vec<f64>,
    /// The model's inputs, in parameter order.
    pub features: Vec<String>,
    /// Columns of a tabular task the stores' tables could not all encode, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped_features: Vec<(String, String)>,
    pub evaluations: Vec<StoreEvaluation>,
    /// Stores asked to evaluate that did not answer in time.
    pub missing_evaluations: Vec<String>,
    /// Stores that could not take part in this job's task, with their reasons.
    pub stores_not_taking_part: Vec<(String, String)>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub wall_seconds: f64,
    /// What protected the updates and what the job spent; None without `[job.privacy]`.
    pub privacy: Option<PrivacyOutcome>,
}

/// The privacy of a finished job, for its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacyOutcome {
    pub secure_aggregation: bool,
    pub noise: NoiseKind,
    pub clip: Option<f64>,
    pub noise_multiplier: Option<f64>,
    pub delta: f64,
    pub budget_epsilon: Option<f64>,
    /// ε spent over every round of the job (resumed ones included).
    pub epsilon_spent: Option<f64>,
    /// Why training stopped early, if the budget stopped it.
    pub stopped_by_budget: Option<String>,
    pub ledger: Vec<PrivacyRound>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrivacyRound {
    pub round: u64,
    pub mechanism: String,
    pub noise_multiplier: f64,
    pub epsilon_after: f64,
}

/// Runs every job of the queue in turn, then tells the stores there is no more work.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    checkpoints: CheckpointStore,
    mut queue: JobQueue,
) -> Result<Vec<JobOutcome>, CoordinatorError> {
    let mut outcomes = Vec::new();
    while let Some(job) = queue.next(&shared, &checkpoints).await? {
        outcomes.push(drive_job(&shared, &checkpoints, &job).await?);
    }
    let failed = outcomes.iter().filter(|o| o.failed).count();
    let status = format!("{} jobs run, {failed} failed", outcomes.len());
    shared.transition(|m| m.finish(status.clone()));
    (shared.observer)(&CoordinatorEvent::Finished { status });
    finish_grace(&shared).await;
    Ok(outcomes)
}

/// A job with completed rounds resumes only under the privacy settings its ledger was
/// charged under (the budget may grow; the mechanism may not change).
fn check_same_privacy(
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
) -> Result<(), CoordinatorError> {
    let Some(stored) = checkpoints.stored_config(job.job_id())? else {
        return Ok(());
    };
    let before: Option<JobConfig> = serde_json::from_str(&stored).ok();
    let Some(before) = before.map(|c| c.privacy) else {
        return Ok(());
    };
    let now = &job.config.privacy;
    // Only the stored rounds' model is read, and only when the settings differ.
    if &before == now || checkpoints.latest(job.job_id())?.is_none() {
        return Ok(());
    }
    let fields = [
        (
            "secure_aggregation",
            before.secure_aggregation != now.secure_aggregation,
        ),
        ("clip", before.clip != now.clip),
        ("noise", before.noise != now.noise),
        (
            "noise_multiplier",
            before.noise_multiplier != now.noise_multiplier,
        ),
        ("delta", before.delta != now.delta),
    ];
    let changed: Vec<&str> = fields.iter().filter(|f| f.1).map(|f| f.0).collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(CoordinatorError::ChangedPrivacy {
        job_id: job.job_id().to_string(),
        changed: format!("{} changed", changed.join(", ")),
    })
}

/// Where a job starts: a fresh model, or the last checkpoint of an interrupted run.
fn resume(
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
) -> Result<(ModelParameters, u64, Option<u64>), CoordinatorError> {
    let Some((record, values)) = checkpoints.latest(job.job_id())? else {
        return Ok((job.initial_model()?, 1, None));
    };
    if values.len() != job.layout.len() {
        return Err(CoordinatorError::IncompatibleCheckpoint {
            job_id: job.job_id().to_string(),
            expected: job.layout.len(),
            got: values.len(),
        });
    }
    let global = ModelParameters::from_values(job.layout.clone(), values)?;
    Ok((global, record.round + 1, Some(record.round)))
}

/// The job's ledger, restored from its stored rounds, when the job adds noise.
fn restore_ledger(
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
) -> Result<Option<PrivacyLedger>, CoordinatorError> {
    let p = &job.config.privacy;
    if p.noise == NoiseKind::None {
        return Ok(None);
    }
    let budget = PrivacyBudget {
        epsilon: p.budget_epsilon.unwrap_or(f64::INFINITY),
        delta: p.delta,
    };
    PrivacyLedger::restore(budget, checkpoints.ledger_entries(job.job_id())?)
        .map(Some)
        .map_err(|e| CoordinatorError::Privacy(e.to_string()))
}

/// How a job's training ended.
struct Trained {
    global: ModelParameters,
    rounds: Vec<RoundRecord>,
    stopped_by_budget: Option<(u64, String)>,
    failure: Option<String>,
}

impl Trained {
    /// The job's status as the database keeps it.
    fn stored_status(&self) -> &'static str {
        match (&self.failure, &self.stopped_by_budget) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "stopped",
            (None, None) => "completed",
        }
    }
}

/// When a job started, and the traffic counters then.
struct JobClock {
    started: Instant,
    up: u64,
    down: u64,
}

async fn drive_job(
    shared: &Shared,
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
) -> Result<JobOutcome, CoordinatorError> {
    let (up, down) = shared.traffic();
    let clock = JobClock {
        started: Instant::now(),
        up,
        down,
    };
    let mut strategy: Box<dyn Strategy> = job.build_strategy()?;
    check_same_privacy(checkpoints, job)?;
    let run_id = checkpoints.start_job(
        job.job_id(),
        &serde_json::to_string(&job.config).unwrap_or_default(),
    )?;
    (shared.observer)(&CoordinatorEvent::JobStarted {
        job_id: job.job_id().to_string(),
        task: job.task.kind().name().to_string(),
        strategy: strategy.name().to_string(),
        budget_epsilon: job.config.privacy.budget_epsilon,
    });
    let described;
    let job = match describe(shared, job, &run_id).await {
        Ok(None) => job,
        Ok(Some(j)) => {
            described = j;
            &described
        }
        Err(reason) => {
            let mut outcome = unstarted(job, strategy.name(), reason);
            outcome.stores_not_taking_part = shared.close_job();
            outcome.wall_seconds = clock.started.elapsed().as_secs_f64();
            return record(shared, checkpoints, outcome, "failed");
        }
    };
    let mut ledger = restore_ledger(checkpoints, job)?;
    let (global, first_round, resumed_after_round) = resume(checkpoints, job)?;
    shared.open_job(job, &run_id);
    let trained = match wait_ready(shared, job).await {
        Ok(()) => {
            let start = (global, first_round);
            let ledger = ledger.as_mut();
            train(shared, checkpoints, job, strategy.as_mut(), start, ledger).await?
        }
        Err(reason) => Trained {
            global,
            rounds: Vec::new(),
            stopped_by_budget: None,
            failure: Some(reason),
        },
    };
    let stored = trained.stored_status();
    let ran = Ran {
        strategy: strategy.name(),
        trained,
        resumed_after_round,
        ledger: ledger.as_ref(),
    };
    let outcome = outcome_of(shared, job, ran, &clock).await;
    record(shared, checkpoints, outcome, stored)
}

/// What a job's run left: its strategy, training, where it resumed, its ledger.
struct Ran<'a> {
    strategy: &'a str,
    trained: Trained,
    resumed_after_round: Option<u64>,
    ledger: Option<&'a PrivacyLedger>,
}

/// Evaluates the final model (unless training failed) and assembles the outcome.
async fn outcome_of(
    shared: &Shared,
    job: &CheckedJob,
    ran: Ran<'_>,
    clock: &JobClock,
) -> JobOutcome {
    let trained = ran.trained;
    let model_version = trained
        .rounds
        .last()
        .map(|r| r.round)
        .or(ran.resumed_after_round)
        .unwrap_or(0);
    let (evaluations, missing_evaluations) = match trained.failure {
        None => final_evaluation(shared, job, &trained.global, model_version).await,
        Some(_) => (Vec::new(), Vec::new()),
    };
    let (up, down) = shared.traffic();
    JobOutcome {
        job_id: job.job_id().to_string(),
        task: job.task.kind().name().to_string(),
        strategy: ran.strategy.to_string(),
        status: status_line(job, &trained),
        failed: trained.failure.is_some(),
        resumed_after_round: ran.resumed_after_round,
        model_version,
        parameters: trained.global.values().to_vec(),
        features: job.task.features(),
        dropped_features: dropped_features(job),
        evaluations,
        missing_evaluations,
        stores_not_taking_part: shared.close_job(),
        bytes_up: up - clock.up,
        bytes_down: down - clock.down,
        wall_seconds: clock.started.elapsed().as_secs_f64(),
        privacy: privacy_outcome(job, ran.ledger, &trained.stopped_by_budget),
        rounds: trained.rounds,
    }
}

/// Columns of a tabular job's tables that the stores could not all encode, and why.
fn dropped_features(job: &CheckedJob) -> Vec<(String, String)> {
    match job.task.spec() {
        TaskSpec::Tabular(o) => o
            .encoding
            .iter()
            .flat_map(|e| e.dropped.iter().map(|d| (d.name.clone(), d.reason.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

/// Stores the job's outcome and announces it.
fn record(
    shared: &Shared,
    checkpoints: &CheckpointStore,
    outcome: JobOutcome,
    stored: &str,
) -> Result<JobOutcome, CoordinatorError> {
    let json = serde_json::to_string(&outcome).unwrap_or_default();
    checkpoints.finish_job(&outcome.job_id, stored, &json)?;
    (shared.observer)(&CoordinatorEvent::JobFinished {
        job_id: outcome.job_id.clone(),
        status: outcome.status.clone(),
    });
    Ok(outcome)
}

/// The outcome of a job that failed before its first round.
fn unstarted(job: &CheckedJob, strategy: &str, reason: String) -> JobOutcome {
    JobOutcome {
        job_id: job.job_id().to_string(),
        task: job.task.kind().name().to_string(),
        strategy: strategy.to_string(),
        status: format!("failed: {reason}"),
        failed: true,
        rounds: Vec::new(),
        resumed_after_round: None,
        model_version: 0,
        parameters: Vec::new(),
        features: Vec::new(),
        dropped_features: Vec::new(),
        evaluations: Vec::new(),
        missing_evaluations: Vec::new(),
        stores_not_taking_part: Vec::new(),
        bytes_up: 0,
        bytes_down: 0,
        wall_seconds: 0.0,
        privacy: None,
    }
}

/// A job whose model is shaped by the stores' data (a tabular task) first asks every
/// store to describe its table, and merges the descriptions into the encoding it then
/// trains with. Ok(None): nothing to describe. Err: why the job cannot run.
async fn describe(
    shared: &Shared,
    job: &CheckedJob,
    run_id: &str,
) -> Result<Option<CheckedJob>, String> {
    let TaskSpec::Tabular(o) = job.task.spec() else {
        return Ok(None);
    };
    if !job.task.needs_description() {
        return Ok(None);
    }
    shared.open_job(job, run_id);
    wait_ready(shared, job).await?;
    let encoding = merge_summaries(&shared.summaries(), o.max_categories)
        .map_err(|e| format!("the stores' tables cannot be encoded: {e}"))?;
    job.described(encoding).map(Some).map_err(|e| e.to_string())
}

fn status_line(job: &CheckedJob, t: &Trained) -> String {
    match (&t.failure, &t.stopped_by_budget) {
        (Some(reason), _) => format!("failed: {reason}"),
        (None, Some((round, reason))) => format!(
            "stopped before round {round} of {} to stay within the privacy budget: {reason}",
            job.rounds
        ),
        (None, None) => match t.rounds.last() {
            Some(r) => format!("completed {} rounds", r.round),
            None => "completed (nothing left to train)".to_string(),
        },
    }
}

/// Waits until the expected stores answered the job's prepare task (or, after the
/// registration timeout, at least the minimum are ready). Err: why the job cannot run.
async fn wait_ready(shared: &Shared, job: &CheckedJob) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + job.registration_timeout;
    loop {
        let (ready, answered) = shared.readiness();
        if answered >= job.expected_stores && ready >= job.config.min_stores {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            if ready >= job.config.min_stores {
                return Ok(());
            }
            return Err(format!(
                "only {ready} stores were ready within {:.0} s; the job needs {}",
                job.registration_timeout.as_secs_f64(),
                job.config.min_stores
            ));
        }
        let tick = tokio::time::Instant::now() + Duration::from_millis(250);
        shared.wait_progress(deadline.min(tick)).await;
    }
}

/// Rounds until the strategy is finished, the round limit, the privacy budget, or a
/// round that fails every attempt.
async fn train(
    shared: &Shared,
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
    strategy: &mut dyn Strategy,
    (mut global, first_round): (ModelParameters, u64),
    mut ledger: Option<&mut PrivacyLedger>,
) -> Result<Trained, CoordinatorError> {
    let mut rounds = Vec::new();
    for round in first_round..=job.rounds {
        if strategy.is_finished(&global) {
            break;
        }
        let mut attempt = 0;
        let done = loop {
            attempt += 1;
            let mut charging = ledger.as_deref_mut().map(|ledger| AttemptLedger {
                ledger,
                checkpoints,
                job_id: job.job_id(),
            });
            let input = RoundInput {
                job,
                global: &global,
                round,
                ledger: charging.as_mut().map(|c| c as &mut dyn RoundLedger),
            };
            match run_round(shared, strategy, input).await {
                Ok(done) => break done,
                Err(RoundError::Budget(reason)) => {
                    (shared.observer)(&CoordinatorEvent::BudgetReached {
                        round,
                        reason: reason.clone(),
                    });
                    let stopped_by_budget = Some((round, reason));
                    return Ok(Trained {
                        global,
                        rounds,
                        stopped_by_budget,
                        failure: None,
                    });
                }
                Err(RoundError::Failed(reason)) => {
                    checkpoints.record_failed_round(job.job_id(), round, attempt, &reason)?;
                    (shared.observer)(&CoordinatorEvent::RoundFailed {
                        round,
                        attempt,
                        reason: reason.clone(),
                    });
                    if attempt >= job.config.round_attempts {
                        let failure = Some(format!(
                            "round {round} failed {attempt} times; last reason: {reason}"
                        ));
                        return Ok(Trained {
                            global,
                            rounds,
                            stopped_by_budget: None,
                            failure,
                        });
                    }
                    // Let stores come back before the next attempt.
                    let pause = tokio::time::Instant::now() + Duration::from_millis(500);
                    shared.wait_progress(pause).await;
                }
            }
        };
        let record = commit_round(shared, checkpoints, job, &done, ledger.as_deref_mut())?;
        rounds.push(record);
        global = done.next;
    }
    Ok(Trained {
        global,
        rounds,
        stopped_by_budget: None,
        failure: None,
    })
}

/// One attempt's view of the job's ledger: a charge made before release is stored at
/// once, under the attempt, so a failed attempt or a crash keeps it.
struct AttemptLedger<'a> {
    ledger: &'a mut PrivacyLedger,
    checkpoints: &'a CheckpointStore,
    job_id: &'a str,
}

impl RoundLedger for AttemptLedger<'_> {
    fn check(&self, round: u64, mechanism: &RoundMechanism) -> Result<(), RoundError> {
        self.ledger
            .check_round(round, mechanism)
            .map(|_| ())
            .map_err(|e| RoundError::Budget(e.to_string()))
    }

    fn charge_before_release(
        &mut self,
        round: u64,
        mechanism: &RoundMechanism,
    ) -> Result<LedgerEntry, RoundError> {
        let entry = self
            .ledger
            .spend_round(round, mechanism)
            .map_err(|e| RoundError::Budget(e.to_string()))?
            .clone();
        // Not stored, not released: the round does not open.
        self.checkpoints
            .save_charge(self.job_id, round, &entry)
            .map_err(|e| RoundError::Failed(format!("the privacy charge was not stored: {e}")))?;
        Ok(entry)
    }
}

/// Charges the ledger for a released round (unless it was charged as it opened) and
/// stores it with the round, atomically.
fn commit_round(
    shared: &Shared,
    checkpoints: &CheckpointStore,
    job: &CheckedJob,
    done: &RoundDone,
    ledger: Option<&mut PrivacyLedger>,
) -> Result<RoundRecord, CoordinatorError> {
    let mut record = done.record.clone();
    let entry = match (ledger, &done.mechanism, &done.charged) {
        (_, _, Some(_)) => None,
        (Some(l), Some(m), None) => Some(
            l.spend_round(record.round, m)
                .map_err(|e| CoordinatorError::Privacy(e.to_string()))?
                .clone(),
        ),
        _ => None,
    };
    record.epsilon_spent = entry
        .as_ref()
        .or(done.charged.as_ref())
        .map(|e| e.epsilon_after);
    checkpoints.save_round(job.job_id(), &record, done.next.values(), entry.as_ref())?;
    (shared.observer)(&CoordinatorEvent::RoundCompleted {
        round: record.round,
        participants: record.participants.len(),
        dropped: record.dropped.len(),
        step_norm: record.step_norm,
        bytes_up: record.bytes_up,
        bytes_down: record.bytes_down,
        seconds: record.seconds,
        epsilon_spent: record.epsilon_spent,
        train_loss: record.train_loss,
    });
    Ok(record)
}

/// Every ready store evaluates the final model on its held-out data and keeps its
/// results at the store; only the metrics come back.
async fn final_evaluation(
    shared: &Shared,
    job: &CheckedJob,
    global: &ModelParameters,
    model_version: u64,
) -> (Vec<StoreEvaluation>, Vec<String>) {
    let stores = shared.ready_stores();
    (shared.observer)(&CoordinatorEvent::EvaluationStarted {
        stores: stores.len(),
    });
    let tasks = shared.transition(|m| m.open_evaluation(&stores, model_version, global));
    let deadline = tokio::time::Instant::now() + job.round_timeout;
    while !shared.read(|m| m.evaluation_done()) && tokio::time::Instant::now() < deadline {
        shared.wait_progress(deadline).await;
    }
    let results = shared.transition(|m| m.close_evaluation());
    let counts = shared.ready_counts();
    let state = shared.lock();
    let evaluations: Vec<StoreEvaluation> = results
        .into_iter()
        .map(|(store_id, metrics)| StoreEvaluation {
            business_type: state.registry.business_type(&store_id),
            num_train_examples: counts.get(&store_id).copied().unwrap_or(0),
            store_id,
            metrics,
        })
        .collect();
    let answered: BTreeSet<&String> = evaluations.iter().map(|e| &e.store_id).collect();
    let missing = tasks
        .keys()
        .filter(|s| !answered.contains(s))
        .cloned()
        .collect();
    (evaluations, missing)
}

fn privacy_outcome(
    job: &CheckedJob,
    ledger: Option<&PrivacyLedger>,
    stopped_by_budget: &Option<(u64, String)>,
) -> Option<PrivacyOutcome> {
    let p = &job.config.privacy;
    if !p.is_active() {
        return None;
    }
    let entries = ledger.map(|l| l.entries()).unwrap_or_default();
    Some(PrivacyOutcome {
        secure_aggregation: p.secure_aggregation,
        noise: p.noise,
        clip: p.clip,
        noise_multiplier: p.noise_multiplier,
        delta: p.delta,
        budget_epsilon: p.budget_epsilon,
        epsilon_spent: ledger.and_then(|l| l.spent().ok()).map(|e| e.epsilon),
        stopped_by_budget: stopped_by_budget.as_ref().map(|(_, r)| r.clone()),
        ledger: entries
            .iter()
            .map(|e| PrivacyRound {
                round: e.round,
                mechanism: e.mechanism.clone(),
                noise_multiplier: e.noise_multiplier,
                epsilon_after: e.epsilon_after,
            })
            .collect(),
    })
}

/// Keep serving until every store has heard that the work is over (or the grace ends).
async fn finish_grace(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + FINISH_GRACE;
    loop {
        if shared.all_heard_finish() || tokio::time::Instant::now() >= deadline {
            return;
        }
        let tick = tokio::time::Instant::now() + Duration::from_millis(100);
        shared.wait_progress(deadline.min(tick)).await;
    }
}
