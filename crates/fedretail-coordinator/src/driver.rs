//! The round driver: one loop that owns the job's progress. It waits for stores,
//! asks the strategy who takes part, opens the round, waits for replies or the
//! deadline, hands the streamed aggregate to the strategy, checkpoints the result, and
//! finally asks every store to evaluate the model. Failures are data: dropped stores
//! and failed attempts are recorded with their reasons.

use crate::checkpoint::{CheckpointStore, RoundRecord};
use crate::config::NoiseKind;
use crate::privacy::{plan_round, RoundPrivacy};
use crate::service::{EvalState, Phase, RoundState, Shared};
use crate::CoordinatorError;
use fedretail_core::{Aggregate, ModelParameters, Strategy, StrategyError, StreamingWeightedSum};
use fedretail_models::TaskMetrics;
use fedretail_privacy::{PrivacyBudget, PrivacyLedger, RoundMechanism};
use rand_distr::{Distribution, Normal};
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
        /// ε spent so far at the job's δ, when the job adds noise.
        epsilon_spent: Option<f64>,
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

/// Why a round attempt produced no model.
enum RoundError {
    /// Too few replies, an aborted secure aggregation...: worth another attempt.
    Failed(String),
    /// The round would overspend the privacy budget: the job stops training.
    Budget(String),
}

impl From<String> for RoundError {
    fn from(reason: String) -> Self {
        RoundError::Failed(reason)
    }
}

struct RoundDone {
    record: RoundRecord,
    next: ModelParameters,
    mechanism: Option<RoundMechanism>,
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
    // The ledger is kept with the job's rounds, so a resumed job goes on spending from
    // where it stopped.
    let mut ledger = match cfg.privacy.noise {
        NoiseKind::None => None,
        _ => Some(
            PrivacyLedger::restore(
                PrivacyBudget {
                    epsilon: cfg.privacy.budget_epsilon.unwrap_or(f64::INFINITY),
                    delta: cfg.privacy.delta,
                },
                checkpoints.ledger_entries(&cfg.job_id)?,
            )
            .map_err(|e| CoordinatorError::Privacy(e.to_string()))?,
        ),
    };

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
    let mut stopped_by_budget: Option<(u64, String)> = None;
    'rounds: for round in first_round..=total_rounds {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = run_round(
                &shared,
                strategy.as_mut(),
                &global,
                round,
                total_rounds,
                ledger.as_ref(),
            )
            .await;
            match result {
                Ok(RoundDone {
                    mut record,
                    next,
                    mechanism,
                }) => {
                    let entry = match (ledger.as_mut(), &mechanism) {
                        (Some(l), Some(m)) => Some(
                            l.spend_round(round, m)
                                .map_err(|e| CoordinatorError::Privacy(e.to_string()))?
                                .clone(),
                        ),
                        _ => None,
                    };
                    record.epsilon_spent = entry.as_ref().map(|e| e.epsilon_after);
                    checkpoints.save_round(&cfg.job_id, &record, next.values(), entry.as_ref())?;
                    (shared.observer)(&CoordinatorEvent::RoundCompleted {
                        round,
                        participants: record.participants.len(),
                        dropped: record.dropped.len(),
                        step_norm: record.step_norm,
                        epsilon_spent: record.epsilon_spent,
                    });
                    rounds.push(record);
                    global = next;
                    break;
                }
                Err(RoundError::Budget(reason)) => {
                    (shared.observer)(&CoordinatorEvent::BudgetReached {
                        round,
                        reason: reason.clone(),
                    });
                    stopped_by_budget = Some((round, reason));
                    break 'rounds;
                }
                Err(RoundError::Failed(reason)) => {
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

    let status = match &stopped_by_budget {
        Some((round, reason)) => format!(
            "stopped before round {round} of {total_rounds} to stay within the privacy budget: {reason}"
        ),
        None => format!("completed {} rounds", total_rounds),
    };
    let privacy = cfg.privacy.is_active().then(|| {
        let p = &cfg.privacy;
        let entries = ledger.as_ref().map(|l| l.entries()).unwrap_or_default();
        PrivacyOutcome {
            secure_aggregation: p.secure_aggregation,
            noise: p.noise,
            clip: p.clip,
            noise_multiplier: p.noise_multiplier,
            delta: p.delta,
            budget_epsilon: p.budget_epsilon,
            epsilon_spent: ledger
                .as_ref()
                .and_then(|l| l.spent().ok())
                .map(|e| e.epsilon),
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
        }
    });
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
        privacy,
    };
    checkpoints.finish_job(
        &cfg.job_id,
        if stopped_by_budget.is_some() {
            "stopped"
        } else {
            "completed"
        },
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

/// Waits until `done` holds for the round in progress, or the deadline passes.
async fn wait_round(
    shared: &Shared,
    deadline: tokio::time::Instant,
    done: impl Fn(&RoundState) -> bool,
) {
    loop {
        let finished = matches!(&shared.lock().phase, Phase::Training(rs) if done(rs));
        if finished || tokio::time::Instant::now() >= deadline {
            return;
        }
        wait_progress(shared, deadline).await;
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
    ledger: Option<&PrivacyLedger>,
) -> Result<RoundDone, RoundError> {
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
        let weights: BTreeMap<String, f64> = plan
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
    let privacy = if cfg.privacy.is_active() {
        let stores: Vec<String> = tasks.keys().cloned().collect();
        let p = plan_round(&cfg.privacy, &stores, &weights, update_len, rand::random())?;
        // Refuse before any store does any work, never after.
        if let (Some(l), Some(m)) = (ledger, &p.mechanism) {
            l.check_round(round, m)
                .map_err(|e| RoundError::Budget(e.to_string()))?;
        }
        Some(p)
    } else {
        None
    };
    // With noise every clipped update counts once.
    let weights = match &privacy {
        Some(p) if p.fixed_denominator.is_some() => weights.into_keys().map(|s| (s, 1.0)).collect(),
        _ => weights,
    };
    let secure = privacy.as_ref().is_some_and(|p| p.secure.is_some());
    shared.set_phase(Phase::Training(Box::new(RoundState {
        round,
        tasks,
        weights,
        received: BTreeSet::new(),
        aggregator: StreamingWeightedSum::new(if secure { 0 } else { update_len }),
        update_len,
        global_wire: Shared::global_tensor(global),
        work: plan.work.clone(),
        precision: plan.precision,
        privacy,
    })));
    (shared.observer)(&CoordinatorEvent::RoundStarted {
        round,
        total_rounds,
        selected,
    });

    let timeout = shared.job.round_timeout;
    wait_round(
        shared,
        tokio::time::Instant::now() + timeout,
        |rs| match rs.secure() {
            Some(sec) => sec.stage_done(),
            None => rs.received.len() == rs.tasks.len(),
        },
    )
    .await;
    // Under SecAgg+, three more exchanges follow the advertisements.
    if secure {
        loop {
            let advanced = match &mut shared.lock().phase {
                Phase::Training(rs) => rs.secure_mut().map(|sec| sec.advance()),
                _ => None,
            };
            shared.phase_tx.send_modify(|v| *v += 1);
            match advanced {
                Some(Ok(true)) => {
                    wait_round(shared, tokio::time::Instant::now() + timeout, |rs| {
                        rs.secure().is_some_and(|sec| sec.stage_done())
                    })
                    .await
                }
                Some(Ok(false)) => break,
                Some(Err(e)) => {
                    shared.set_phase(Phase::Idle);
                    return Err(format!("secure aggregation: {e}").into());
                }
                None => return Err("round state lost".to_string().into()),
            }
        }
    }
    let mut rs = match std::mem::replace(&mut shared.lock().phase, Phase::Idle) {
        Phase::Training(rs) => rs,
        _ => return Err("round state lost".to_string().into()),
    };
    shared.phase_tx.send_modify(|v| *v += 1);
    let no_reply = |what: &str| {
        format!(
            "no {what} within {:.0} s",
            shared.job.round_timeout.as_secs_f64()
        )
    };
    let mut privacy = rs.privacy.take();
    let (participants, dropped, mut aggregate) = match privacy.as_mut() {
        Some(p) if p.secure.is_some() => finish_secure(p, &no_reply)?,
        _ => {
            let participants: Vec<String> = rs.received.iter().cloned().collect();
            let dropped = rs
                .tasks
                .keys()
                .filter(|s| !rs.received.contains(*s))
                .map(|s| (s.clone(), no_reply("reply")))
                .collect();
            let aggregate = std::mem::replace(&mut rs.aggregator, StreamingWeightedSum::new(0));
            (participants, dropped, aggregate.finish())
        }
    };
    if participants.len() < cfg.min_stores {
        return Err(format!(
            "{} of {} selected stores replied; the round needs {}",
            participants.len(),
            selected,
            cfg.min_stores
        )
        .into());
    }
    if let Some(p) = &privacy {
        if p.central_noise_std > 0.0 {
            // The OS-seeded thread generator: noise the coordinator could predict would
            // protect nothing.
            let normal = Normal::new(0.0, p.central_noise_std).map_err(|e| e.to_string())?;
            let mut rng = rand::rng();
            for v in aggregate.weighted_sum.iter_mut() {
                *v += normal.sample(&mut rng);
            }
        }
        if let Some(d) = p.fixed_denominator {
            aggregate.total_weight = d;
        }
    }
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
        epsilon_spent: None,
    };
    Ok(RoundDone {
        record,
        next: applied.parameters,
        mechanism: privacy.and_then(|p| p.mechanism),
    })
}

type Participation = (Vec<String>, Vec<(String, String)>, Aggregate);

/// Unmasks a finished SecAgg+ round: the survivors' weighted sum, decoded.
fn finish_secure(
    privacy: &mut RoundPrivacy,
    no_reply: &dyn Fn(&str) -> String,
) -> Result<Participation, RoundError> {
    let server = privacy
        .secure
        .as_mut()
        .and_then(|s| s.server.take())
        .ok_or_else(|| "secure aggregation state lost".to_string())?;
    let Some(sec) = privacy.secure.as_ref() else {
        return Err("secure aggregation state lost".to_string().into());
    };
    let outcome = server
        .finish()
        .map_err(|e| format!("secure aggregation: {e}"))?;
    let survivors: Vec<String> = outcome
        .survivors
        .iter()
        .filter_map(|&i| sec.stores.get(i as usize).cloned())
        .collect();
    if survivors.len() < privacy.min_survivors {
        return Err(format!(
            "{} stores survived secure aggregation; the distributed noise was calibrated for at least {}",
            survivors.len(),
            privacy.min_survivors
        )
        .into());
    }
    let dropped = sec
        .stores
        .iter()
        .filter(|s| !survivors.contains(s))
        .map(|s| {
            let what = sec.left.get(s).copied().unwrap_or("masked input");
            (s.clone(), no_reply(what))
        })
        .collect();
    let total_weight = survivors
        .iter()
        .map(|s| privacy.weights.get(s).copied().unwrap_or(0.0))
        .sum();
    let aggregate = Aggregate {
        weighted_sum: sec.fixed_point.decode(&outcome.sum),
        total_weight,
        num_updates: survivors.len(),
    };
    Ok((survivors, dropped, aggregate))
}
