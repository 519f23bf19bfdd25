//! One attempt at a round over the network: open it in the machine, wait for the
//! stores' replies (and, under SecAgg+, the three exchanges after the
//! advertisements), close it, and hand the aggregate to the strategy. The machine
//! does the work; this only sequences and waits. A failed attempt leaves the global
//! model as it was.

use crate::checkpoint::RoundRecord;
use crate::config::CheckedJob;
use crate::events::CoordinatorEvent;
use crate::machine::{RoundError, RoundLedger, RoundSetup};
use crate::shared::Shared;
use fedretail_core::{ModelParameters, Strategy, StrategyError};
use fedretail_privacy::{LedgerEntry, RoundMechanism};
use std::time::Instant;

pub(crate) struct RoundDone {
    pub record: RoundRecord,
    pub next: ModelParameters,
    pub mechanism: Option<RoundMechanism>,
    /// Charged when the attempt opened (the stores noise their own updates).
    pub charged: Option<LedgerEntry>,
}

/// What one round works from.
pub(crate) struct RoundInput<'a> {
    pub job: &'a CheckedJob,
    pub global: &'a ModelParameters,
    pub round: u64,
    pub ledger: Option<&'a mut dyn RoundLedger>,
}

/// Waits until the round's current stage is answered by every store, or the
/// deadline passes.
async fn wait_stage(shared: &Shared, job: &CheckedJob) {
    let deadline = tokio::time::Instant::now() + job.round_timeout;
    while !shared.read(|m| m.round_stage_done()) && tokio::time::Instant::now() < deadline {
        shared.wait_progress(deadline).await;
    }
}

/// One attempt at a round. Err carries the reason the round could not complete; the
/// global model is then unchanged.
pub(crate) async fn run_round(
    shared: &Shared,
    strategy: &mut dyn Strategy,
    mut input: RoundInput<'_>,
) -> Result<RoundDone, RoundError> {
    let (job, round) = (input.job, input.round);
    let round_start = Instant::now();
    let (up0, down0) = shared.traffic();
    let available = shared.ready_stores();
    let privacy = Some(&job.config.privacy);
    let selected = shared.transition(|m| {
        let setup = RoundSetup {
            round,
            global: input.global,
            available: &available,
            privacy,
            ledger: input
                .ledger
                .as_deref_mut()
                .map(|l| l as &mut dyn RoundLedger),
            robust: job.config.robust,
        };
        m.open_round(strategy, setup)
    })?;
    (shared.observer)(&CoordinatorEvent::RoundStarted {
        job_id: job.job_id().to_string(),
        round,
        total_rounds: job.rounds,
        selected,
    });
    wait_stage(shared, job).await;
    // Under SecAgg+, each further stage opens once the last is answered (or timed out).
    while shared.transition(|m| m.advance_secure())? {
        wait_stage(shared, job).await;
    }
    let closed = shared.transition(|m| m.close_round(job.round_timeout))?;
    if closed.participants.len() < job.config.min_stores {
        return Err(format!(
            "{} of {selected} selected stores replied; the round needs {}",
            closed.participants.len(),
            job.config.min_stores
        )
        .into());
    }
    let applied = strategy
        .apply(round, input.global, &closed.aggregate)
        .map_err(|e: StrategyError| e.to_string())?;
    let (up, down) = shared.traffic();
    let record = RoundRecord {
        round,
        participants: closed.participants,
        dropped: closed.dropped,
        step_norm: applied.step_norm,
        bytes_up: up - up0,
        bytes_down: down - down0,
        seconds: round_start.elapsed().as_secs_f64(),
        epsilon_spent: None,
        train_loss: closed.train_loss,
    };
    Ok(RoundDone {
        record,
        next: applied.parameters,
        mechanism: closed.mechanism,
        charged: closed.charged,
    })
}
