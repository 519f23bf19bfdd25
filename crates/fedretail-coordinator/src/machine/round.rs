//! A training round inside the machine: choose the stores and their weights, plan
//! the round's privacy (refusing a round the budget cannot pay for before any store
//! works), check and fold each update as it arrives, and close the round into an
//! aggregate the strategy turns into the next model. A failed round leaves the
//! global model as it was.

use super::{task_id, Phase, Refusal, RoundMachine, RoundState};
use crate::config::PrivacySettings;
use crate::privacy::{plan_round, RoundPrivacy};
use fedretail_core::{
    validate_update, Aggregate, LocalWork, ModelParameters, RobustRule, RoundAggregator, Strategy,
    UpdateLimits, UpdatePrecision, UpdateVector,
};
use fedretail_privacy::{LedgerEntry, RoundMechanism};
use fedretail_proto::encode_f64;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Why a round attempt produced no model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoundError {
    /// Too few replies, an aborted secure aggregation...: worth another attempt.
    #[error("{0}")]
    Failed(String),
    /// The round would overspend the privacy budget: the job stops training.
    #[error("{0}")]
    Budget(String),
}

impl From<String> for RoundError {
    fn from(reason: String) -> Self {
        RoundError::Failed(reason)
    }
}

/// The job's privacy ledger as a round sees it.
pub trait RoundLedger: Send {
    /// Whether `round` under `mechanism` stays within the budget.
    fn check(&self, round: u64, mechanism: &RoundMechanism) -> Result<(), RoundError>;
    /// Charge `round` under `mechanism` now, durably, before any store is sent the
    /// task: stores that noise their own updates release them as they reply, so the
    /// charge must not wait for the round to complete (or survive a crash).
    fn charge_before_release(
        &mut self,
        round: u64,
        mechanism: &RoundMechanism,
    ) -> Result<LedgerEntry, RoundError>;
}

/// What a round starts from.
pub struct RoundSetup<'a> {
    pub round: u64,
    pub global: &'a ModelParameters,
    /// Stores ready for the job and still polling.
    pub available: &'a [String],
    /// The job's `[job.privacy]`, when it asks for any.
    pub privacy: Option<&'a PrivacySettings>,
    pub ledger: Option<&'a mut dyn RoundLedger>,
    /// The job's robust rule against lying stores (None: the streaming weighted mean).
    pub robust: Option<RobustRule>,
}

/// A closed round: who replied, who dropped and why, the aggregate, and what the
/// round costs in the privacy ledger.
pub struct Closed {
    pub participants: Vec<String>,
    pub dropped: Vec<(String, String)>,
    /// Mean training loss of the round's global model over the stores that sent one,
    /// weighted as their updates are.
    pub train_loss: Option<f64>,
    pub aggregate: Aggregate,
    pub mechanism: Option<RoundMechanism>,
    /// The charge made when the round opened (stores noise their own updates); the
    /// round is then not charged again when it completes.
    pub charged: Option<LedgerEntry>,
}

/// A selected store's training task, as a store (or an in-process run) reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOrder {
    pub store: String,
    pub task_id: String,
    pub round: u64,
    pub work: LocalWork,
    pub precision: UpdatePrecision,
    /// The norm the store clips its update to, if any.
    pub clip: Option<f64>,
    /// Gaussian noise the store adds to its own update (local DP).
    pub local_noise_std: f64,
    /// The update travels through SecAgg+.
    pub secure: bool,
}

/// What a plain update must satisfy, read once under the lock.
#[derive(Debug, Clone, Copy)]
pub struct UpdateCheck {
    pub len: usize,
    pub max_norm: Option<f64>,
    /// A dense f32 update may be folded from its wire bytes, checked in the same pass
    /// ([`RoundMachine::fold_wire_update`]): the streaming sum, no clipping here, and
    /// a model long enough for it to matter.
    pub wire: bool,
}

impl UpdateCheck {
    /// The limits an update's values must keep. Always a norm bound: finite values
    /// whose squares overflow (1e200) would still make the weighted sum infinite and
    /// fail the round for everyone.
    pub fn limits(&self) -> UpdateLimits {
        UpdateLimits {
            max_l2_norm: Some(self.max_norm.unwrap_or(f64::MAX)),
        }
    }
}

impl RoundMachine {
    /// Opens round `setup.round`; returns how many stores were selected.
    pub fn open_round(
        &mut self,
        strategy: &mut dyn Strategy,
        mut setup: RoundSetup<'_>,
    ) -> Result<usize, RoundError> {
        let Some(slot) = self.job.as_ref() else {
            return Err(RoundError::Failed("no job is open".into()));
        };
        let plan = strategy
            .configure_round(setup.round, setup.available)
            .map_err(|e| e.to_string())?;
        let update_len = strategy.update_len(&slot.layout);
        let tasks: BTreeMap<String, String> = plan
            .stores
            .iter()
            .map(|s| (s.clone(), task_id(&slot.job_id, "train", setup.round, s)))
            .collect();
        let weights: BTreeMap<String, f64> = plan
            .stores
            .iter()
            .map(|s| {
                (
                    s.clone(),
                    strategy.update_weight(slot.ready.get(s).copied().unwrap_or(0)),
                )
            })
            .collect();
        let (privacy, charged) = plan_privacy(&mut setup, &tasks, &weights, update_len)?;
        let secure = privacy.as_ref().is_some_and(|p| p.secure.is_some());
        let selected = tasks.len();
        self.phase = Phase::Training(Box::new(RoundState {
            round: setup.round,
            tasks,
            weights,
            received: BTreeSet::new(),
            aggregator: RoundAggregator::new(
                if secure { 0 } else { update_len },
                setup.robust.filter(|_| !secure),
            ),
            update_len,
            global_wire: encode_f64(setup.global.values()),
            work: plan.work,
            precision: plan.precision,
            server_clip: plan.server_clip,
            privacy,
            charged,
            loss: (0.0, 0.0),
            awaiting: BTreeMap::new(),
            next_ticket: 0,
        }));
        Ok(selected)
    }

    /// The round in progress, if any.
    pub(crate) fn training(&self) -> Option<&RoundState> {
        match &self.phase {
            Phase::Training(rs) => Some(rs),
            _ => None,
        }
    }

    /// Every selected store's training task in the round in progress.
    pub fn train_orders(&self) -> Vec<TrainOrder> {
        let Some(rs) = self.training() else {
            return Vec::new();
        };
        let p = rs.privacy.as_ref();
        rs.tasks
            .iter()
            .map(|(store, task_id)| TrainOrder {
                store: store.clone(),
                task_id: task_id.clone(),
                round: rs.round,
                work: rs.work.clone(),
                precision: rs.precision,
                clip: p.map(|p| p.update.clip).filter(|c| *c > 0.0),
                local_noise_std: p.map_or(0.0, |p| p.update.local_noise_stddev),
                secure: rs.secure().is_some(),
            })
            .collect()
    }

    /// Whether every selected store has replied (under SecAgg+: to the current stage).
    pub(crate) fn round_stage_done(&self) -> bool {
        self.training().is_some_and(|rs| match rs.secure() {
            Some(sec) => sec.stage_done(),
            None => rs.received.len() == rs.tasks.len(),
        })
    }

    /// The length and norm bound `store`'s update must have, if `task_id` is its
    /// current, unanswered task of a plain (not secure) round.
    pub fn update_check(
        &self,
        store: &str,
        task_id: &str,
        round: u64,
    ) -> Result<UpdateCheck, Refusal> {
        let rs = current_task(&self.phase, store, task_id, round)?;
        let privacy = rs.privacy.as_ref();
        if privacy.is_some_and(|p| p.secure.is_some()) {
            return Err(Refusal::Malformed(format!(
                "round {round} runs under secure aggregation: '{store}' must send SecAgg+ messages, not a plain update"
            )));
        }
        // A clipped update must come in clipped (f32 rounding aside); local noise makes
        // the norm unknowable, so then only the other checks apply.
        let max_norm = privacy
            .filter(|p| p.update.clip > 0.0 && p.update.local_noise_stddev == 0.0)
            .map(|p| p.update.clip * (1.0 + 1e-5));
        Ok(UpdateCheck {
            len: rs.update_len,
            max_norm,
            wire: rs.server_clip.is_none()
                && rs.aggregator.streaming().is_some()
                && rs.update_len >= super::wire::ONE_PASS_MIN_VALUES,
        })
    }

    /// Checks an update's values against `check`: O(model size), so callers run it
    /// outside any lock.
    pub fn validate(
        check: &UpdateCheck,
        store: &str,
        round: u64,
        update: &UpdateVector,
    ) -> Result<(), Refusal> {
        validate_update(update, check.len, &check.limits()).map_err(|e| {
            Refusal::Malformed(format!("update from '{store}' for round {round}: {e}"))
        })
    }

    /// Folds a checked update into the round's aggregate (clipping it first when the
    /// strategy asks the coordinator to); returns (received, selected).
    pub fn fold_update(
        &mut self,
        store: &str,
        task_id: &str,
        round: u64,
        update: UpdateVector,
        train_loss: Option<f64>,
    ) -> Result<(usize, usize), Refusal> {
        // Re-checked: the round may have closed since the caller's first check.
        current_task(&self.phase, store, task_id, round)?;
        let Phase::Training(rs) = &mut self.phase else {
            return Err(Refusal::NotCurrent("no round is in progress".into()));
        };
        let weight = rs.weights.get(store).copied().unwrap_or(0.0);
        let pushed = match rs.server_clip {
            Some(clip) => rs.aggregator.push_clipped(update, weight, clip).map(drop),
            None => rs.aggregator.push(update, weight),
        };
        pushed.map_err(|e| Refusal::Malformed(format!("update from '{store}': {e}")))?;
        if let Some(l) = train_loss.filter(|l| l.is_finite()) {
            rs.loss.0 += weight * l;
            rs.loss.1 += weight;
        }
        rs.received.insert(store.to_string());
        Ok((rs.received.len(), rs.tasks.len()))
    }

    /// Closes the round in progress: who replied, who dropped (no reply within
    /// `waited`), and the aggregate (unmasked, under SecAgg+).
    pub fn close_round(&mut self, waited: Duration) -> Result<Closed, RoundError> {
        let mut rs = match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Training(rs) => rs,
            _ => return Err("round state lost".to_string().into()),
        };
        let no_reply = |what: &str| format!("no {what} within {:.0} s", waited.as_secs_f64());
        let mut privacy = rs.privacy.take();
        let (participants, dropped, aggregate) = match privacy.as_mut() {
            Some(p) if p.secure.is_some() => super::secure::finish_secure(p, &no_reply)?,
            _ => {
                super::wire::settle(&mut rs);
                let participants: Vec<String> = rs.received.iter().cloned().collect();
                let dropped = rs
                    .tasks
                    .keys()
                    .filter(|s| !rs.received.contains(*s))
                    .map(|s| (s.clone(), no_reply("reply")))
                    .collect();
                let aggregate =
                    std::mem::replace(&mut rs.aggregator, RoundAggregator::new(0, None));
                (participants, dropped, aggregate.finish())
            }
        };
        let (sum, weight) = rs.loss;
        Ok(Closed {
            participants,
            dropped,
            train_loss: (weight > 0.0).then(|| sum / weight),
            aggregate,
            mechanism: privacy.and_then(|p: RoundPrivacy| p.mechanism),
            charged: rs.charged.take(),
        })
    }
}

/// The round's privacy plan, checked against the ledger's budget; when the stores
/// noise their own updates, the round charged before any of them is sent its task.
fn plan_privacy(
    setup: &mut RoundSetup<'_>,
    tasks: &BTreeMap<String, String>,
    weights: &BTreeMap<String, f64>,
    update_len: usize,
) -> Result<(Option<RoundPrivacy>, Option<LedgerEntry>), RoundError> {
    let Some(settings) = setup.privacy.filter(|p| p.is_active()) else {
        return Ok((None, None));
    };
    let stores: Vec<String> = tasks.keys().cloned().collect();
    let p = plan_round(settings, &stores, weights, update_len, rand::random())?;
    let (Some(ledger), Some(m)) = (setup.ledger.as_deref_mut(), &p.mechanism) else {
        return Ok((Some(p), None));
    };
    if !settings.noise.at_stores() {
        ledger.check(setup.round, m)?;
        return Ok((Some(p), None));
    }
    let entry = ledger.charge_before_release(setup.round, m)?;
    Ok((Some(p), Some(entry)))
}

/// The round in progress, if `task_id` is `store`'s current, unanswered task in it.
fn current_task<'a>(
    phase: &'a Phase,
    store: &str,
    task_id: &str,
    round: u64,
) -> Result<&'a RoundState, Refusal> {
    let Phase::Training(rs) = phase else {
        return Err(Refusal::NotCurrent(format!(
            "task '{task_id}' from '{store}' is not current: no round is in progress"
        )));
    };
    match rs.tasks.get(store) {
        Some(t) if t == task_id && round == rs.round => {
            if rs.received.contains(store) {
                Err(Refusal::Replay(format!(
                    "update from '{store}' for round {round} was already received (replay)"
                )))
            } else {
                Ok(rs)
            }
        }
        Some(_) | None => Err(Refusal::NotCurrent(format!(
            "task '{task_id}' (round {round}) from '{store}' is not current: round {} is in progress",
            rs.round
        ))),
    }
}
