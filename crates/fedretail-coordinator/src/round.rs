//! One attempt at a round: ask the strategy who takes part, open the round for the
//! service to fill, wait for replies (and, under SecAgg+, the three exchanges after
//! the advertisements), then hand the streamed aggregate to the strategy. A failed
//! attempt leaves the global model as it was.

use crate::checkpoint::RoundRecord;
use crate::config::CheckedJob;
use crate::driver::CoordinatorEvent;
use crate::privacy::{plan_round, RoundPrivacy};
use crate::service::{Phase, RoundState, Shared};
use fedretail_core::{Aggregate, ModelParameters, Strategy, StrategyError, StreamingWeightedSum};
use fedretail_privacy::{PrivacyLedger, RoundMechanism};
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Why a round attempt produced no model.
pub(crate) enum RoundError {
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

pub(crate) struct RoundDone {
    pub record: RoundRecord,
    pub next: ModelParameters,
    pub mechanism: Option<RoundMechanism>,
}

pub(crate) fn task_id(job: &str, kind: &str, round: u64, store: &str) -> String {
    format!("{job}/{kind}/{round}/{store}/{:08x}", rand::random::<u32>())
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
        shared.wait_progress(deadline).await;
    }
}

/// What one round works from.
pub(crate) struct RoundInput<'a> {
    pub job: &'a CheckedJob,
    pub global: &'a ModelParameters,
    pub round: u64,
    pub ledger: Option<&'a PrivacyLedger>,
}

/// One attempt at a round. Err carries the reason the round could not complete; the
/// global model is then unchanged.
pub(crate) async fn run_round(
    shared: &Shared,
    strategy: &mut dyn Strategy,
    input: RoundInput<'_>,
) -> Result<RoundDone, RoundError> {
    let round_start = Instant::now();
    let (up0, down0) = (
        shared.bytes_up.load(Ordering::Relaxed),
        shared.bytes_down.load(Ordering::Relaxed),
    );
    let selected = open_round(shared, strategy, &input)?;
    let secure = matches!(&shared.lock().phase, Phase::Training(rs) if rs.secure().is_some());
    collect_replies(shared, input.job, secure).await?;
    let (participants, dropped, aggregate, privacy) = close_round(shared, input.job)?;
    if participants.len() < input.job.config.min_stores {
        return Err(format!(
            "{} of {selected} selected stores replied; the round needs {}",
            participants.len(),
            input.job.config.min_stores
        )
        .into());
    }
    let applied = strategy
        .apply(input.round, input.global, &aggregate)
        .map_err(|e: StrategyError| e.to_string())?;
    let record = RoundRecord {
        round: input.round,
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

/// Chooses the round's stores and their weights, plans its privacy (refusing a round
/// the budget cannot pay for before any store works), and opens it. Returns how many
/// stores were selected.
fn open_round(
    shared: &Shared,
    strategy: &mut dyn Strategy,
    input: &RoundInput<'_>,
) -> Result<usize, RoundError> {
    let (job, round) = (input.job, input.round);
    let available = shared.ready_stores();
    let plan = strategy
        .configure_round(round, &available)
        .map_err(|e| e.to_string())?;
    let update_len = strategy.update_len(&job.layout);
    let counts = shared.ready_counts();
    let tasks: BTreeMap<String, String> = plan
        .stores
        .iter()
        .map(|s| (s.clone(), task_id(job.job_id(), "train", round, s)))
        .collect();
    let weights: BTreeMap<String, f64> = plan
        .stores
        .iter()
        .map(|s| {
            let rows = counts.get(s).copied().unwrap_or(0);
            (s.clone(), strategy.update_weight(rows))
        })
        .collect();
    let privacy = plan_privacy(job, &tasks, &weights, update_len, input)?;
    // With noise every clipped update counts once.
    let weights = match &privacy {
        Some(p) if p.fixed_denominator.is_some() => weights.into_keys().map(|s| (s, 1.0)).collect(),
        _ => weights,
    };
    let secure = privacy.as_ref().is_some_and(|p| p.secure.is_some());
    let selected = tasks.len();
    shared.set_phase(Phase::Training(Box::new(RoundState {
        round,
        tasks,
        weights,
        received: BTreeSet::new(),
        aggregator: StreamingWeightedSum::new(if secure { 0 } else { update_len }),
        update_len,
        global_wire: Shared::global_tensor(input.global),
        work: plan.work.clone(),
        precision: plan.precision,
        privacy,
    })));
    (shared.observer)(&CoordinatorEvent::RoundStarted {
        job_id: job.job_id().to_string(),
        round,
        total_rounds: job.rounds,
        selected,
    });
    Ok(selected)
}

fn plan_privacy(
    job: &CheckedJob,
    tasks: &BTreeMap<String, String>,
    weights: &BTreeMap<String, f64>,
    update_len: usize,
    input: &RoundInput<'_>,
) -> Result<Option<RoundPrivacy>, RoundError> {
    let cfg = &job.config;
    if !cfg.privacy.is_active() {
        return Ok(None);
    }
    let stores: Vec<String> = tasks.keys().cloned().collect();
    let p = plan_round(&cfg.privacy, &stores, weights, update_len, rand::random())?;
    if let (Some(l), Some(m)) = (input.ledger, &p.mechanism) {
        l.check_round(input.round, m)
            .map_err(|e| RoundError::Budget(e.to_string()))?;
    }
    Ok(Some(p))
}

/// Waits for every selected store's reply or the deadline; under SecAgg+, then runs
/// the three exchanges that follow the advertisements.
async fn collect_replies(
    shared: &Shared,
    job: &CheckedJob,
    secure: bool,
) -> Result<(), RoundError> {
    let timeout = job.round_timeout;
    wait_round(
        shared,
        tokio::time::Instant::now() + timeout,
        |rs| match rs.secure() {
            Some(sec) => sec.stage_done(),
            None => rs.received.len() == rs.tasks.len(),
        },
    )
    .await;
    if !secure {
        return Ok(());
    }
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
            Some(Ok(false)) => return Ok(()),
            Some(Err(e)) => {
                shared.set_phase(Phase::Idle);
                return Err(format!("secure aggregation: {e}").into());
            }
            None => return Err("round state lost".to_string().into()),
        }
    }
}

type Closed = (
    Vec<String>,
    Vec<(String, String)>,
    Aggregate,
    Option<RoundPrivacy>,
);

/// Closes the round: who replied, who dropped and why, and the (noised, under DP)
/// aggregate.
fn close_round(shared: &Shared, job: &CheckedJob) -> Result<Closed, RoundError> {
    let mut rs = match std::mem::replace(&mut shared.lock().phase, Phase::Idle) {
        Phase::Training(rs) => rs,
        _ => return Err("round state lost".to_string().into()),
    };
    shared.phase_tx.send_modify(|v| *v += 1);
    let no_reply =
        |what: &str| format!("no {what} within {:.0} s", job.round_timeout.as_secs_f64());
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
    Ok((participants, dropped, aggregate, privacy))
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
