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

/// A spinner with a prefix and a message, for work of unknown length.
pub(crate) fn spinner() -> ProgressBar {
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>12} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    b
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
                clear(bar.take());
                let b = ProgressBar::new_spinner();
                b.set_style(style("{prefix:>12} {msg}"));
                b.set_prefix(job_id.clone());
                *bar = Some(b);
            }
            // The first round of a job turns its spinner into a bar of rounds.
            CoordinatorEvent::RoundStarted {
                job_id,
                total_rounds,
                ..
            } if bar.as_ref().is_none_or(|b| b.length().is_none()) => {
                clear(bar.take());
                let b = ProgressBar::new(*total_rounds);
                b.set_style(style("{prefix:>12} [{bar:30}] {pos}/{len} rounds {msg}"));
                b.set_prefix(job_id.clone());
                *bar = Some(b);
            }
            CoordinatorEvent::RoundCompleted { round, .. } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(*round);
                }
            }
            CoordinatorEvent::BudgetReached { round, reason } => {
                print_line(
                    bar.as_ref(),
                    format!("not starting round {round}: {reason}"),
                );
            }
            CoordinatorEvent::RoundFailed {
                round,
                attempt,
                reason,
            } => print_line(
                bar.as_ref(),
                format!("round {round} attempt {attempt} failed: {reason}"),
            ),
            CoordinatorEvent::JobFinished { .. } | CoordinatorEvent::Finished { .. } => {
                clear(bar.take());
            }
            CoordinatorEvent::JobSkipped { job_id, reason } => {
                eprintln!("job {job_id} skipped: {reason}");
            }
            _ => {}
        }
        if let (Some(b), Some(message)) = (bar.as_ref(), status_message(event)) {
            b.set_message(message);
        }
    }
}

fn clear(bar: Option<ProgressBar>) {
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

/// A line above the bar, or on stderr when there is none.
fn print_line(bar: Option<&ProgressBar>, line: String) {
    match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    }
}

/// What the bar says after `event`, if it says something new.
fn status_message(event: &CoordinatorEvent) -> Option<String> {
    Some(match event {
        CoordinatorEvent::JobStarted { .. } => {
            "stores preparing the task from their own data".to_string()
        }
        CoordinatorEvent::StoreReady { store_id, .. } => format!("{store_id} prepared"),
        CoordinatorEvent::RoundStarted {
            round, selected, ..
        } => format!("round {round}: 0/{selected} updates"),
        CoordinatorEvent::UpdateAccepted {
            round,
            received,
            selected,
            ..
        } => format!("round {round}: {received}/{selected} updates"),
        CoordinatorEvent::RoundCompleted {
            step_norm,
            dropped,
            epsilon_spent,
            ..
        } => {
            let eps = epsilon_spent
                .map(|e| format!(", epsilon {e:.2}"))
                .unwrap_or_default();
            format!("step {step_norm:.2e}, {dropped} dropped{eps}")
        }
        CoordinatorEvent::EvaluationStarted { stores } => {
            format!("evaluating at {stores} stores")
        }
        _ => return None,
    })
}
