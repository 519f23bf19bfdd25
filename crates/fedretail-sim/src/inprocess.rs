//! The federated loop without a network: the same strategies, aggregator and local
//! tasks, called directly. Tests use it to check learning against references, and it
//! shows what the gRPC path must reproduce.

use fedretail_core::{ModelParameters, Strategy, StreamingWeightedSum, UpdateVector};
use fedretail_models::LocalTask;
use std::sync::Arc;

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
    let mut run = InProcessRun {
        parameters: initial,
        rounds: 0,
        bytes_up: 0,
        bytes_down: 0,
    };
    let ids: Vec<String> = stores.iter().map(|(id, _)| id.clone()).collect();
    for round in 1..=max_rounds {
        if done(round - 1, &run.parameters) {
            break;
        }
        let err = |message: String| InProcessError::Round { round, message };
        let global = &run.parameters;
        let plan = strategy
            .configure_round(round, &ids)
            .map_err(|e| err(e.to_string()))?;
        let mut sum = StreamingWeightedSum::new(strategy.update_len(global.layout()));
        for (id, task) in stores.iter().filter(|(id, _)| plan.stores.contains(id)) {
            let update = task
                .compute_update(global.values(), &plan.work)
                .map_err(|e| err(format!("{id}: {e}")))?;
            run.bytes_down += 8 * global.values().len() as u64;
            let update = match plan.precision {
                fedretail_core::UpdatePrecision::F64 => {
                    run.bytes_up += 8 * update.len() as u64;
                    UpdateVector::F64(update)
                }
                fedretail_core::UpdatePrecision::F32 => {
                    run.bytes_up += 4 * update.len() as u64;
                    UpdateVector::F32(update.iter().map(|&v| v as f32).collect())
                }
            };
            sum.push(update, strategy.update_weight(task.num_train_examples()))
                .map_err(|e| err(e.to_string()))?;
        }
        run.parameters = strategy
            .apply(round, global, &sum.finish())
            .map_err(|e| err(e.to_string()))?
            .parameters;
        run.rounds = round;
    }
    Ok(run)
}
