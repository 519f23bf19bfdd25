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
    let mut global = initial;
    let ids: Vec<String> = stores.iter().map(|(id, _)| id.clone()).collect();
    for round in 1..=rounds {
        let err = |message: String| InProcessError::Round { round, message };
        let plan = strategy
            .configure_round(round, &ids)
            .map_err(|e| err(e.to_string()))?;
        let mut sum = StreamingWeightedSum::new(strategy.update_len(global.layout()));
        for (id, task) in stores.iter().filter(|(id, _)| plan.stores.contains(id)) {
            let update = task
                .compute_update(global.values(), &plan.work)
                .map_err(|e| err(format!("{id}: {e}")))?;
            let update = match plan.precision {
                fedretail_core::UpdatePrecision::F64 => UpdateVector::F64(update),
                fedretail_core::UpdatePrecision::F32 => {
                    UpdateVector::F32(update.iter().map(|&v| v as f32).collect())
                }
            };
            sum.push(update, strategy.update_weight(task.num_train_examples()))
                .map_err(|e| err(e.to_string()))?;
        }
        global = strategy
            .apply(round, &global, &sum.finish())
            .map_err(|e| err(e.to_string()))?
            .parameters;
    }
    Ok(global)
}
