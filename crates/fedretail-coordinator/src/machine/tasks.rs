//! What a polling store is asked to do next, as the wire carries it: prepare (or
//! describe) the job, train in the round in progress (or its next SecAgg+ stage),
//! evaluate the final model, or hear that the work is over.

use super::{task_id, JobSlot, Phase, RoundMachine, RoundState};
use crate::privacy::SecureStage;
use fedretail_core::{LocalSgd, LocalWork, UpdatePrecision};
use fedretail_proto::layout_to_wire;
use fedretail_proto::v1::{self, poll_task_response::Outcome};

impl RoundMachine {
    /// The store's next task, or None while it has nothing to do.
    pub fn next_for(&mut self, store: &str) -> Option<Outcome> {
        if let Some(prepare) = self.prepare_for(store) {
            return Some(Outcome::Prepare(prepare));
        }
        let slot = self.job.as_ref();
        match &self.phase {
            Phase::Training(rs) => train_or_step(slot?, rs, store),
            Phase::Evaluating(es) => {
                let slot = slot?;
                let task_id = es.tasks.get(store)?;
                if es.results.contains_key(store) {
                    return None;
                }
                Some(Outcome::Evaluate(v1::EvaluateTask {
                    task_id: task_id.clone(),
                    round: es.round,
                    layout: Some(layout_to_wire(&slot.layout)),
                    global: Some(es.global_wire.clone()),
                    job: Some(slot.wire.clone()),
                    final_model: true,
                }))
            }
            Phase::Finished(reason) => Some(Outcome::Finished(v1::JobFinished {
                reason: reason.clone(),
            })),
            Phase::Idle => None,
        }
    }

    /// The current job's prepare task, for a store that has not answered it yet.
    fn prepare_for(&mut self, store: &str) -> Option<v1::PrepareTask> {
        if matches!(self.phase, Phase::Finished(_)) {
            return None;
        }
        let slot = self.job.as_mut()?;
        if slot.ready.contains_key(store) || slot.cannot.contains_key(store) {
            return None;
        }
        let job_id = slot.job_id.clone();
        let kind = if slot.describe { "describe" } else { "prepare" };
        let task_id = slot
            .prepare
            .entry(store.to_string())
            .or_insert_with(|| task_id(&job_id, kind, 0, store))
            .clone();
        Some(v1::PrepareTask {
            task_id,
            job: Some(slot.wire.clone()),
            describe: slot.describe,
        })
    }
}

/// A selected store's training task, or under SecAgg+ its next stage's step.
fn train_or_step(slot: &JobSlot, rs: &RoundState, store: &str) -> Option<Outcome> {
    let task_id = rs.tasks.get(store)?;
    if let Some(sec) = rs.secure() {
        if sec.answered.contains(store) || !sec.expected.contains(store) {
            return None;
        }
        if sec.stage != SecureStage::Advertising {
            return Some(Outcome::Secagg(v1::SecAggStep {
                task_id: task_id.clone(),
                round: rs.round,
                step: sec.outbox.get(store).cloned(),
            }));
        }
    } else if rs.received.contains(store) {
        return None;
    }
    Some(Outcome::Train(train_task(slot, rs, store, task_id)))
}

fn work_to_wire(work: &LocalWork) -> v1::train_task::Work {
    match work {
        LocalWork::LocalEpochs(s) => v1::train_task::Work::LocalEpochs(sgd_to_wire(s)),
        LocalWork::ClusteredLocalEpochs(s) => {
            v1::train_task::Work::ClusteredLocalEpochs(sgd_to_wire(s))
        }
        LocalWork::SecondOrderStatistics => {
            v1::train_task::Work::SecondOrder(v1::SecondOrderStatistics {})
        }
        LocalWork::ClusterStatistics => {
            v1::train_task::Work::ClusterStatistics(v1::ClusterStatistics {})
        }
        LocalWork::ClusteredSecondOrderStatistics => {
            v1::train_task::Work::ClusteredSecondOrder(v1::ClusteredSecondOrderStatistics {})
        }
    }
}

fn sgd_to_wire(s: &LocalSgd) -> v1::LocalEpochs {
    v1::LocalEpochs {
        epochs: s.epochs,
        batch_size: s.batch_size,
        learning_rate: s.learning_rate,
        l2: s.l2,
        seed: s.seed,
        proximal_mu: s.proximal_mu,
        min_steps: s.min_steps,
    }
}

fn train_task(slot: &JobSlot, rs: &RoundState, store: &str, task_id: &str) -> v1::TrainTask {
    let secure = rs.secure().map(|sec| v1::SecureAggregation {
        store_index: sec.index.get(store).copied().unwrap_or(u32::MAX),
        ..sec.params
    });
    let privacy = rs.privacy.as_ref().map(|p| v1::UpdatePrivacy {
        // Only a secure round leaves the weighting to the store.
        weight: if secure.is_some() {
            p.weights.get(store).copied().unwrap_or(0.0)
        } else {
            1.0
        },
        ..p.update
    });
    v1::TrainTask {
        task_id: task_id.to_string(),
        round: rs.round,
        job: Some(slot.wire.clone()),
        layout: Some(layout_to_wire(&slot.layout)),
        global: Some(rs.global_wire.clone()),
        work: Some(work_to_wire(&rs.work)),
        update_dtype: match rs.precision {
            UpdatePrecision::F32 => v1::Dtype::F32 as i32,
            UpdatePrecision::F64 => v1::Dtype::F64 as i32,
        },
        privacy,
        secure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedretail_core::LocalSgd;

    #[test]
    fn every_local_sgd_setting_goes_on_the_wire() {
        let s = LocalSgd {
            epochs: 2,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 1e-4,
            proximal_mu: 0.3,
            seed: 9,
            min_steps: 20,
        };
        let v1::train_task::Work::LocalEpochs(e) = work_to_wire(&LocalWork::LocalEpochs(s)) else {
            panic!("local epochs become local epochs");
        };
        let back = (
            e.epochs,
            e.batch_size,
            e.learning_rate,
            e.l2,
            e.proximal_mu,
            e.seed,
            e.min_steps,
        );
        assert_eq!(back, (2, 16, 0.1, 1e-4, 0.3, 9, 20));
    }
}
