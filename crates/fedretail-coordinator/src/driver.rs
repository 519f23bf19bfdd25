//! The round driver: one loop that owns the job's progress. It waits for stores,
//! asks the strategy who takes part, opens the round, waits for replies or the
//! deadline, hands the streamed aggregate to the strategy, checkpoints the result, and
//! finally asks every store to evaluate the model. Failures are data: dropped stores
//! and failed attempts are recorded with their reasons.

use crate::checkpoint::{CheckpointStore, RoundRecord};
use crate::service::{EvalState, Phase, RoundState, Shared};
use crate::CoordinatorError;
use fedretail_core::{ModelParameters, Strategy, StrategyError, StreamingWeightedSum};
use fedretail_models::TaskMetrics;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store that has not polled for this long is not offered work.
const LIVENESS: Duration = Duration::from_secs(90);
/// After the job ends, keep answering polls this long so agents hear it.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// What the coordinator reports as the job goes (for progress bars and logs).
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinatorEvent {
    StoreRegistered {
        store_id: String,
        registered: usize,
    },
    RoundStarted {
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
    },
    RoundFailed {
        round: u64,
        attempt: u32,
        reason: String,
    },
    EvaluationStarted {
        stores: usize,
    },
    Finished {
        status: String,
    },
}

pub type Observer = Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>;

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
    /// Rounds completed in this run (after any resumed ones).
    pub rounds: Vec<RoundRecord>,
    /// The round a restarted coordinator resumed after, if any.
    pub resumed_after_round: Option<u64>,
    pub parameters: Vec<f64>,
    pub evaluations: Vec<StoreEvaluation>,
    /// Stores asked to evaluate that did not answer in time.
    pub missing_evaluations: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub wall_seconds: f64,
}

async fn wait_progress(shared: &Shared, until: tokio::time::Instant) {
    let _ = tokio::time::timeout_at(until, shared.progress.notified()).await;
}

fn live_stores(shared: &Shared) -> Vec<String> {
    let state = shared.lock();
    state
        .stores
        .iter()
        .filter(|(_, e)| e.last_seen.elapsed() < LIVENESS)
        .map(|(id, _)| id.clone())
        .collect()
}

fn task_id(job: &str, kind: &str, round: u64, store: &str) -> String {
    format!("{job}/{kind}/{round}/{store}/{:08x}", rand::random::<u32>())
}

pub(crate) async fn drive(
    shared: Arc<Shared>,
    checkpoints: CheckpointStore,
) -> Result<JobOutcome, CoordinatorError> {
    let started = Instant::now();
    let job = shared.job.clone();
    let cfg = &job.config;
    let mut strategy: Box<dyn Strategy> = job.build_strategy()?;
    checkpoints.start_job(&cfg.job_id, &serde_json::to_string(cfg).unwrap_or_default())?;

    // Resume after the last completed round of this job, if any.
    let mut global = ModelParameters::zeros(shared.layout.clone());
    let mut first_round = 1;
    let mut resumed_after_round = None;
    if let Some((record, values)) = checkpoints.latest(&cfg.job_id)? {
        if values.len() != shared.layout.len() {
            return Err(CoordinatorError::IncompatibleCheckpoint {
                job_id: cfg.job_id.clone(),
                expected: shared.layout.len(),
                got: values.len(),
            });
        }
        global = ModelParameters::from_values(shared.layout.clone(), values)?;
        first_round = record.round + 1;
        resumed_after_round = Some(record.round);
    }

    // Wait for the expected stores (or, after the timeout, at least the minimum).
    let reg_deadline = tokio::time::Instant::now() + job.registration_timeout;
    loop {
        let n = shared.lock().stores.len();
        if n >= job.expected_stores {
            break;
        }
        if tokio::time::Instant::now() >= reg_deadline {
            if n >= cfg.min_stores {
                break;
            }
            shared.set_phase(Phase::Finished(format!("only {n} stores joined")));
            return Err(CoordinatorError::TooFewStores {
                registered: n,
                required: cfg.min_stores,
            });
        }
        wait_progress(
            &shared,
            reg_deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)),
        )
        .await;
    }

    let mut rounds = Vec::new();
    let total_rounds = cfg.rounds as u64;
    for round in first_round..=total_rounds {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match run_round(&shared, strategy.as_mut(), &global, round, total_rounds).await {
                Ok((record, next)) => {
                    checkpoints.save_round(&cfg.job_id, &record, next.values())?;
                    (shared.observer)(&CoordinatorEvent::RoundCompleted {
                        round,
                        participants: record.participants.len(),
                        dropped: record.dropped.len(),
                        step_norm: record.step_norm,
                    });
                    rounds.push(record);
                    global = next;
                    break;
                }
                Err(reason) => {
                    checkpoints.record_failed_round(&cfg.job_id, round, attempt, &reason)?;
                    (shared.observer)(&CoordinatorEvent::RoundFailed {
                        round,
                        attempt,
                        reason: reason.clone(),
                    });
                    if attempt >= cfg.round_attempts {
                        let status = format!("failed in round {round}: {reason}");
                        shared.set_phase(Phase::Finished(status.clone()));
                        checkpoints.finish_job(&cfg.job_id, "failed", &status)?;
                        finish_grace(&shared).await;
                        return Err(CoordinatorError::RoundFailed {
                            round,
                            attempts: attempt,
                            reason,
                        });
                    }
                    // Let stores come back before the next attempt.
                    wait_progress(
                        &shared,
                        tokio::time::Instant::now() + Duration::from_millis(500),
                    )
                    .await;
                }
            }
        }
    }

    // Final evaluation of the global model at every live store.
    let stores = live_stores(&shared);
    (shared.observer)(&CoordinatorEvent::EvaluationStarted {
        stores: stores.len(),
    });
    let tasks: BTreeMap<String, String> = stores
        .iter()
        .map(|s| (s.clone(), task_id(&cfg.job_id, "evaluate", total_rounds, s)))
        .collect();
    shared.set_phase(Phase::Evaluating(EvalState {
        round: total_rounds,
        tasks: tasks.clone(),
        results: BTreeMap::new(),
        global_wire: Shared::global_tensor(&global),
    }));
    let deadline = tokio::time::Instant::now() + job.round_timeout;
    loop {
        let done = matches!(&shared.lock().phase, Phase::Evaluating(es) if es.results.len() == es.tasks.len());
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        wait_progress(&shared, deadline).await;
    }
    let results = match std::mem::replace(&mut shared.lock().phase, Phase::Idle) {
        Phase::Evaluating(es) => es.results,
        _ => BTreeMap::new(),
    };
    let (evaluations, missing_evaluations) = {
        let state = shared.lock();
        let evaluations = results
            .into_iter()
            .map(|(store_id, metrics)| {
                let entry = state.stores.get(&store_id);
                StoreEvaluation {
                    business_type: entry.map(|e| e.business_type.clone()).unwrap_or_default(),
                    num_train_examples: entry.map(|e| e.num_train_examples).unwrap_or(0),
                    store_id,
                    metrics,
                }
            })
            .collect::<Vec<_>>();
        let answered: BTreeSet<&String> = evaluations.iter().map(|e| &e.store_id).collect();
        let missing = tasks
            .keys()
            .filter(|s| !answered.contains(s))
            .cloned()
            .collect::<Vec<_>>();
        (evaluations, missing)
    };

    let status = format!("completed {} rounds", total_rounds);
    shared.set_phase(Phase::Finished(status.clone()));
    let outcome = JobOutcome {
        job_id: cfg.job_id.clone(),
        task: cfg.task.clone(),
        strategy: strategy.name().to_string(),
        status: status.clone(),
        rounds,
        resumed_after_round,
        parameters: global.values().to_vec(),
        evaluations,
        missing_evaluations,
        bytes_up: shared.bytes_up.load(Ordering::Relaxed),
        bytes_down: shared.bytes_down.load(Ordering::Relaxed),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    checkpoints.finish_job(
        &cfg.job_id,
        "completed",
        &serde_json::to_string(&outcome).unwrap_or_default(),
    )?;
    (shared.observer)(&CoordinatorEvent::Finished { status });
    finish_grace(&shared).await;
    Ok(outcome)
}

/// Keep serving until every store has heard that the job finished (or the grace ends).
async fn finish_grace(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + FINISH_GRACE;
    loop {
        let all_heard = shared
            .lock()
            .stores
            .values()
            .all(|e| e.saw_finish || e.last_seen.elapsed() > LIVENESS);
        if all_heard || tokio::time::Instant::now() >= deadline {
            return;
        }
        wait_progress(
            shared,
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
        )
        .await;
    }
}

/// One attempt at a round. Err carries the reason the round could not complete; the
/// global model is then unchanged.
async fn run_round(
    shared: &Shared,
    strategy: &mut dyn Strategy,
    global: &ModelParameters,
    round: u64,
    total_rounds: u64,
) -> Result<(RoundRecord, ModelParameters), String> {
    let round_start = Instant::now();
    let (up0, down0) = (
        shared.bytes_up.load(Ordering::Relaxed),
        shared.bytes_down.load(Ordering::Relaxed),
    );
    let available = live_stores(shared);
    let plan = strategy
        .configure_round(round, &available)
        .map_err(|e| e.to_string())?;
    let update_len = strategy.update_len(&shared.layout);
    let cfg = &shared.job.config;
    let (tasks, weights) = {
        let state = shared.lock();
        let tasks: BTreeMap<String, String> = plan
            .stores
            .iter()
            .map(|s| (s.clone(), task_id(&cfg.job_id, "train", round, s)))
            .collect();
        let weights = plan
            .stores
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    strategy.update_weight(
                        state
                            .stores
                            .get(s)
                            .map(|e| e.num_train_examples)
                            .unwrap_or(0),
                    ),
                )
            })
            .collect();
        (tasks, weights)
    };
    let selected = tasks.len();
    shared.set_phase(Phase::Training(Box::new(RoundState {
        round,
        tasks,
        weights,
        received: BTreeSet::new(),
        aggregator: StreamingWeightedSum::new(update_len),
        update_len,
        global_wire: Shared::global_tensor(global),
        work: plan.work.clone(),
        precision: plan.precision,
    })));
    (shared.observer)(&CoordinatorEvent::RoundStarted {
        round,
        total_rounds,
        selected,
    });

    let deadline = tokio::time::Instant::now() + shared.job.round_timeout;
    loop {
        let done = matches!(&shared.lock().phase, Phase::Training(rs) if rs.received.len() == rs.tasks.len());
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        wait_progress(shared, deadline).await;
    }
    let rs = match std::mem::replace(&mut shared.lock().phase, Phase::Idle) {
        Phase::Training(rs) => rs,
        _ => return Err("round state lost".into()),
    };
    shared.phase_tx.send_modify(|v| *v += 1);
    let participants: Vec<String> = rs.received.iter().cloned().collect();
    let dropped: Vec<(String, String)> = rs
        .tasks
        .keys()
        .filter(|s| !rs.received.contains(*s))
        .map(|s| {
            (
                s.clone(),
                format!(
                    "no reply within {:.0} s",
                    shared.job.round_timeout.as_secs_f64()
                ),
            )
        })
        .collect();
    if participants.len() < cfg.min_stores {
        return Err(format!(
            "{} of {} selected stores replied; the round needs {}",
            participants.len(),
            selected,
            cfg.min_stores
        ));
    }
    let aggregate = rs.aggregator.finish();
    let applied = strategy
        .apply(round, global, &aggregate)
        .map_err(|e: StrategyError| e.to_string())?;
    let record = RoundRecord {
        round,
        participants,
        dropped,
        step_norm: applied.step_norm,
        bytes_up: shared.bytes_up.load(Ordering::Relaxed) - up0,
        bytes_down: shared.bytes_down.load(Ordering::Relaxed) - down0,
        seconds: round_start.elapsed().as_secs_f64(),
    };
    Ok((record, applied.parameters))
}
