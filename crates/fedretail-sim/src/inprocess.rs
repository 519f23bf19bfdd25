//! The federated loop without a network: the coordinator's own round state machine
//! ([`RoundMachine`]), driven directly, with each store's local task called in place
//! of an agent. Selection, weights, the checks every update passes, server-side
//! clipping and the streaming aggregate are therefore the coordinator's, not a copy;
//! only the transport is missing. Tests use it to check learning against references.

use fedretail_agent::{
    begin_secure, check_privacy, protect_update, secure_step, SecAggTrust, SecureInput,
};
use fedretail_coordinator::machine::{Closed, RoundError, RoundSetup, TrainOrder};
use fedretail_coordinator::{PrivacySettings, RoundMachine};
use fedretail_core::{ModelParameters, RobustRule, Strategy, UpdatePrecision, UpdateVector};
use fedretail_models::LocalTask;
use fedretail_proto::v1::{self, poll_task_response::Outcome};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    #[error("round {round}: {message}")]
    Round { round: u64, message: String },
}

/// Run `rounds` rounds of `strategy` over `stores` (index = store id order).
pub fn run_rounds(
    strategy: &mut dyn Strategy,
    stores: &[(String, Arc<dyn LocalTask>)],
    initial: ModelParameters,
    rounds: u64,
) -> Result<ModelParameters, InProcessError> {
    Ok(run_until(strategy, stores, initial, rounds, &mut |_, _| false)?.parameters)
}

/// What an in-process run produced, with what its traffic would have been.
#[derive(Debug, Clone)]
pub struct InProcessRun {
    pub parameters: ModelParameters,
    pub rounds: u64,
    /// Update bytes the stores would have sent (4 or 8 bytes a value).
    pub bytes_up: u64,
    /// Model bytes the coordinator would have sent (8 bytes a value).
    pub bytes_down: u64,
}

/// Like [`run_rounds`], but stops early once `done(round, model)` says so (e.g. a
/// bisecting tree that is complete), and counts the traffic.
pub fn run_until(
    strategy: &mut dyn Strategy,
    stores: &[(String, Arc<dyn LocalTask>)],
    initial: ModelParameters,
    max_rounds: u64,
    done: &mut dyn FnMut(u64, &ModelParameters) -> bool,
) -> Result<InProcessRun, InProcessError> {
    run_private(strategy, stores, initial, max_rounds, None, done)
}

/// Like [`run_until`], with a job's `[job.privacy]`: the stores clip, noise and
/// weight their updates, and under secure aggregation run every SecAgg+ stage, with
/// the agent's own code; the coordinator's machine plans and checks each round.
pub fn run_private(
    strategy: &mut dyn Strategy,
    stores: &[(String, Arc<dyn LocalTask>)],
    initial: ModelParameters,
    max_rounds: u64,
    privacy: Option<&PrivacySettings>,
    done: &mut dyn FnMut(u64, &ModelParameters) -> bool,
) -> Result<InProcessRun, InProcessError> {
    let guards = Guards {
        privacy,
        robust: None,
    };
    run_guarded(strategy, stores, initial, max_rounds, guards, done)
}

/// What protects a run: the job's `[job.privacy]` and its robust rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Guards<'a> {
    pub privacy: Option<&'a PrivacySettings>,
    pub robust: Option<RobustRule>,
}

/// Like [`run_private`], with a robust rule combining the updates as well.
pub fn run_guarded(
    strategy: &mut dyn Strategy,
    stores: &[(String, Arc<dyn LocalTask>)],
    initial: ModelParameters,
    max_rounds: u64,
    guards: Guards<'_>,
    done: &mut dyn FnMut(u64, &ModelParameters) -> bool,
) -> Result<InProcessRun, InProcessError> {
    let ready = stores
        .iter()
        .map(|(id, t)| (id.clone(), t.num_train_examples()))
        .collect();
    let network = Network {
        tasks: stores.iter().map(|(id, t)| (id.as_str(), t)).collect(),
        ids: stores.iter().map(|(id, _)| id.clone()).collect(),
        guards,
    };
    let mut machine =
        RoundMachine::with_ready_stores("in-process", initial.layout().clone(), ready);
    let mut run = InProcessRun {
        parameters: initial,
        rounds: 0,
        bytes_up: 0,
        bytes_down: 0,
    };
    for round in 1..=max_rounds {
        if done(round - 1, &run.parameters) {
            break;
        }
        let closed = network
            .round(&mut machine, strategy, round, &mut run)
            .map_err(|message| InProcessError::Round { round, message })?;
        run.parameters = strategy
            .apply(round, &run.parameters, &closed.aggregate)
            .map_err(|e| InProcessError::Round {
                round,
                message: e.to_string(),
            })?
            .parameters;
        run.rounds = round;
    }
    Ok(run)
}

/// The stores of an in-process run, by id.
struct Network<'a> {
    tasks: HashMap<&'a str, &'a Arc<dyn LocalTask>>,
    ids: Vec<String>,
    guards: Guards<'a>,
}

impl Network<'_> {
    /// One round through the machine: open, every selected store's reply, close.
    fn round(
        &self,
        machine: &mut RoundMachine,
        strategy: &mut dyn Strategy,
        round: u64,
        run: &mut InProcessRun,
    ) -> Result<Closed, String> {
        let setup = RoundSetup {
            round,
            global: &run.parameters,
            available: &self.ids,
            privacy: self.guards.privacy,
            ledger: None,
            robust: self.guards.robust,
        };
        machine
            .open_round(strategy, setup)
            .map_err(|e: RoundError| e.to_string())?;
        let mut secure = Vec::new();
        for order in machine.train_orders() {
            let Some(Outcome::Train(task)) = machine.next_for(&order.store) else {
                return Err(format!("'{}' was selected but has no task", order.store));
            };
            run.bytes_down += 8 * run.parameters.values().len() as u64;
            let update = self.train(&run.parameters, &order, &task)?;
            let width = match (&task.secure, order.precision) {
                (None, UpdatePrecision::F64) => 8,
                _ => 4,
            };
            run.bytes_up += width * update.len() as u64;
            match &task.secure {
                Some(params) => {
                    let (input, message) = begin_secure(params, &update, &SecAggTrust::default())
                        .map_err(|e| e.to_string())?;
                    machine
                        .accept_secagg(&order.store, &order.task_id, round, Some(message))
                        .map_err(|e| e.to_string())?;
                    secure.push((order.store, input));
                }
                None => fold_plain(machine, &order, update)?,
            }
        }
        while machine.advance_secure().map_err(|e| e.to_string())? {
            secure_stage(machine, &mut secure, round)?;
        }
        machine
            .close_round(Duration::ZERO)
            .map_err(|e| e.to_string())
    }

    /// What the store's agent computes for `task`: its update, protected as the
    /// task's privacy says.
    fn train(
        &self,
        global: &ModelParameters,
        order: &TrainOrder,
        task: &v1::TrainTask,
    ) -> Result<Vec<f64>, String> {
        let local = self
            .tasks
            .get(order.store.as_str())
            .ok_or_else(|| format!("unknown store '{}'", order.store))?;
        let mut update = local
            .compute_update(global.values(), &order.work)
            .map_err(|e| format!("{}: {e}", order.store))?;
        if let Some(p) = &task.privacy {
            check_privacy(p).map_err(|e| e.to_string())?;
            protect_update(&mut update, p);
        }
        Ok(update)
    }
}

/// Checks and folds a plain update, as the service does with one from the wire.
fn fold_plain(
    machine: &mut RoundMachine,
    order: &TrainOrder,
    update: Vec<f64>,
) -> Result<(), String> {
    let update = match order.precision {
        UpdatePrecision::F64 => UpdateVector::F64(update),
        UpdatePrecision::F32 => UpdateVector::F32(update.iter().map(|&v| v as f32).collect()),
    };
    let (store, round) = (order.store.as_str(), order.round);
    let check = machine
        .update_check(store, &order.task_id, round)
        .map_err(|e| e.to_string())?;
    RoundMachine::validate(&check, store, round, &update).map_err(|e| e.to_string())?;
    machine
        .fold_update(store, &order.task_id, round, update, None)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Every store still in the SecAgg+ round answers the stage the machine opened.
fn secure_stage(
    machine: &mut RoundMachine,
    inputs: &mut [(String, SecureInput)],
    round: u64,
) -> Result<(), String> {
    for (store, input) in inputs.iter_mut() {
        let Some(Outcome::Secagg(step)) = machine.next_for(store) else {
            continue;
        };
        let (message, _last) = secure_step(input, step.step)?;
        machine
            .accept_secagg(store, &step.task_id, round, Some(message))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
