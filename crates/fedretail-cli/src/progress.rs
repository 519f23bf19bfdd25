//! Progress bars for long work. indicatif draws only on a terminal, so logs and CI
//! output stay clean.

use fedretail_coordinator::CoordinatorEvent;
use fedretail_sim::DemoEvent;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Mutex;

pub struct DemoProgress {
    prepare: Mutex<Option<ProgressBar>>,
    rounds: Mutex<Option<ProgressBar>>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl DemoProgress {
    pub fn new() -> Self {
        DemoProgress {
            prepare: Mutex::new(None),
            rounds: Mutex::new(None),
        }
    }

    pub fn on_event(&self, event: &DemoEvent) {
        match event {
            DemoEvent::Preparing {
                store_id,
                done,
                total,
            } => {
                let mut bar = self.prepare.lock().unwrap_or_else(|p| p.into_inner());
                let b = bar.get_or_insert_with(|| {
                    let b = ProgressBar::new(*total as u64);
                    b.set_style(style("{prefix:>12} [{bar:30}] {pos}/{len} stores {msg}"));
                    b.set_prefix("features");
                    b
                });
                b.set_position(*done as u64);
                b.set_message(store_id.clone());
            }
            DemoEvent::Prepared { .. } => {
                if let Some(b) = self
                    .prepare
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    b.finish_and_clear();
                }
            }
            DemoEvent::Coordinator(e) => self.on_coordinator(e),
            DemoEvent::Baselines => {
                if let Some(b) = self.rounds.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    b.finish_and_clear();
                }
            }
        }
    }

    pub fn on_coordinator(&self, event: &CoordinatorEvent) {
        let mut bar = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            CoordinatorEvent::JobStarted { job_id, .. } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let b = ProgressBar::new_spinner();
                b.set_style(style("{prefix:>12} {msg}"));
                b.set_prefix(job_id.clone());
                b.set_message("stores preparing the task from their own data");
                *bar = Some(b);
            }
            CoordinatorEvent::StoreReady { store_id, .. } => {
                if let Some(b) = bar.as_ref() {
                    b.set_message(format!("{store_id} prepared"));
                }
            }
            CoordinatorEvent::RoundStarted {
                job_id,
                round,
                total_rounds,
                selected,
            } => {
                let fresh = bar.as_ref().is_none_or(|b| b.length().is_none());
                if fresh {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    let b = ProgressBar::new(*total_rounds);
                    b.set_style(style("{prefix:>12} [{bar:30}] {pos}/{len} rounds {msg}"));
                    b.set_prefix(job_id.clone());
                    *bar = Some(b);
                }
                if let Some(b) = bar.as_ref() {
                    b.set_message(format!("round {round}: 0/{selected} updates"));
                }
            }
            CoordinatorEvent::UpdateAccepted {
                round,
                received,
                selected,
                ..
            } => {
                if let Some(b) = bar.as_ref() {
                    b.set_message(format!("round {round}: {received}/{selected} updates"));
                }
            }
            CoordinatorEvent::RoundCompleted {
                round,
                step_norm,
                dropped,
                epsilon_spent,
                ..
            } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(*round);
                    let eps = epsilon_spent
                        .map(|e| format!(", epsilon {e:.2}"))
                        .unwrap_or_default();
                    b.set_message(format!("step {step_norm:.2e}, {dropped} dropped{eps}"));
                }
            }
            CoordinatorEvent::BudgetReached { round, reason } => {
                let line = format!("not starting round {round}: {reason}");
                match bar.as_ref() {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
            CoordinatorEvent::RoundFailed {
                round,
                attempt,
                reason,
            } => {
                if let Some(b) = bar.as_ref() {
                    b.println(format!("round {round} attempt {attempt} failed: {reason}"));
                } else {
                    eprintln!("round {round} attempt {attempt} failed: {reason}");
                }
            }
            CoordinatorEvent::EvaluationStarted { stores } => {
                if let Some(b) = bar.as_ref() {
                    b.set_message(format!("evaluating at {stores} stores"));
                }
            }
            CoordinatorEvent::JobFinished { .. } | CoordinatorEvent::Finished { .. } => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            CoordinatorEvent::JobSkipped { job_id, reason } => {
                eprintln!("job {job_id} skipped: {reason}");
            }
            CoordinatorEvent::StoreRegistered { .. } => {}
        }
    }
}
