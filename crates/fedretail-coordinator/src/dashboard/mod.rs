//! The live dashboard: a page the coordinator serves on its own port (off unless asked
//! for), redrawn from the coordinator's events as they happen. It shows what the events
//! carry (stores and their state, the job and its rounds, bytes, dropouts, refused
//! messages, ε against the budget, and the metrics each store reports at the end),
//! never a store's rows or update.
//!
//! The page is rendered on the server with the report crate's charts; the browser
//! holds one `EventSource` and swaps in the new sections when told the state changed,
//! so no script library is needed.

use crate::events::CoordinatorEvent;
use crate::job_report::RoundPoint;
use fedretail_report::Page;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// Lines of the recent-events list.
const RECENT: usize = 12;
/// At most this often the browser is told to redraw.
const REDRAW_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Default, serde::Serialize)]
struct StoreView {
    business_type: String,
    state: String,
    train_rows: Option<u64>,
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct JobView {
    job_id: String,
    task: String,
    strategy: String,
    status: String,
    round: u64,
    total_rounds: u64,
    budget_epsilon: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct RoundView {
    #[serde(flatten)]
    point: RoundPoint,
    participants: usize,
    dropped: usize,
    bytes_up: u64,
    bytes_down: u64,
}

/// What the dashboard shows, as JSON at `/api/state`.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct View {
    stores: BTreeMap<String, StoreView>,
    job: Option<JobView>,
    jobs_finished: Vec<String>,
    rounds: Vec<RoundView>,
    round_failures: u64,
    refused: BTreeMap<&'static str, u64>,
    recent: VecDeque<String>,
    /// What the process running the coordinator is doing before any job starts
    /// (e.g. the demo computing its stores' features).
    notice: Option<String>,
}

/// The dashboard's state, fed by [`Dashboard::observe`].
pub struct Dashboard {
    view: Mutex<View>,
    version: watch::Sender<u64>,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Dashboard {
    pub fn new() -> Self {
        Dashboard {
            view: Mutex::new(View::default()),
            version: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        // A panic while holding the lock leaves a view that is still worth showing.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates the view from one coordinator event.
    pub fn observe(&self, e: &CoordinatorEvent) {
        self.lock().apply(e);
        self.version.send_modify(|v| *v += 1);
    }

    /// Says what is happening before the first job starts (shown until a job does).
    pub fn notice(&self, text: &str) {
        self.lock().notice = Some(text.to_string());
        self.version.send_modify(|v| *v += 1);
    }

    /// The state as JSON.
    pub fn state_json(&self) -> String {
        serde_json::to_string(&*self.lock()).unwrap_or_default()
    }

    /// The dashboard as a page (the same sections as the live one).
    pub fn page(&self) -> Page {
        self.lock().page()
    }
}

fn store<'a>(v: &'a mut View, id: &str) -> &'a mut StoreView {
    v.stores.entry(id.to_string()).or_default()
}

impl View {
    fn apply(&mut self, e: &CoordinatorEvent) {
        use CoordinatorEvent as E;
        match e {
            E::StoreRegistered {
                store_id,
                business_type,
                ..
            } => {
                let s = store(self, store_id);
                s.business_type = business_type.clone();
                s.state = "connected".into();
            }
            E::JobStarted {
                job_id,
                task,
                strategy,
                budget_epsilon,
            } => self.start_job(job_id, task, strategy, *budget_epsilon),
            E::StoreReady {
                store_id,
                num_train_examples,
                reason,
                ..
            } => {
                let s = store(self, store_id);
                s.train_rows = *num_train_examples;
                s.state = match reason {
                    Some(r) => format!("sits out: {r}"),
                    None => "ready".into(),
                };
            }
            E::RoundStarted {
                round,
                total_rounds,
                ..
            } => {
                if let Some(j) = &mut self.job {
                    j.round = *round;
                    j.total_rounds = *total_rounds;
                    j.status = format!("round {round} of {total_rounds}");
                }
            }
            E::UpdateAccepted {
                round, store_id, ..
            } => store(self, store_id).state = format!("sent round {round}"),
            E::RoundCompleted { .. } => self.round_completed(e),
            E::RoundFailed { .. } => self.round_failures += 1,
            E::EvaluationStarted { .. } => self.set_status("final evaluation at the stores"),
            E::StoreEvaluated { store_id, metrics } => {
                let s = store(self, store_id);
                s.metrics = metrics.clone();
                s.state = "evaluated".into();
            }
            E::JobFinished { job_id, status } => {
                self.set_status(status);
                self.jobs_finished.push(format!("{job_id}: {status}"));
            }
            E::MessageRefused { reason } => *self.refused.entry(reason).or_default() += 1,
            E::BudgetReached { .. } | E::JobSkipped { .. } | E::Finished { .. } => {}
        }
        if let Some(line) = recent_line(e) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(line);
        }
    }

    fn start_job(&mut self, job_id: &str, task: &str, strategy: &str, budget: Option<f64>) {
        self.job = Some(JobView {
            job_id: job_id.to_string(),
            task: task.to_string(),
            strategy: strategy.to_string(),
            status: "preparing at the stores".into(),
            budget_epsilon: budget,
            ..Default::default()
        });
        self.rounds.clear();
        self.round_failures = 0;
        for s in self.stores.values_mut() {
            s.metrics.clear();
            s.train_rows = None;
        }
    }

    fn set_status(&mut self, status: &str) {
        if let Some(j) = &mut self.job {
            j.status = status.to_string();
        }
    }

    fn round_completed(&mut self, e: &CoordinatorEvent) {
        let CoordinatorEvent::RoundCompleted {
            round,
            participants,
            dropped,
            step_norm,
            bytes_up,
            bytes_down,
            seconds,
            epsilon_spent,
            train_loss,
        } = e
        else {
            return;
        };
        self.rounds.push(RoundView {
            point: RoundPoint {
                round: *round,
                step_norm: *step_norm,
                seconds: *seconds,
                epsilon_spent: *epsilon_spent,
                train_loss: *train_loss,
            },
            participants: *participants,
            dropped: *dropped,
            bytes_up: *bytes_up,
            bytes_down: *bytes_down,
        });
    }
}

/// The events worth a line in the recent list (not every accepted update).
fn recent_line(e: &CoordinatorEvent) -> Option<String> {
    use CoordinatorEvent as E;
    Some(match e {
        E::StoreRegistered { store_id, .. } => format!("{store_id} connected"),
        E::JobStarted { job_id, task, .. } => format!("job {job_id} ({task}) started"),
        E::RoundCompleted {
            round,
            participants,
            dropped,
            ..
        } => format!("round {round}: {participants} updates, {dropped} dropped"),
        E::RoundFailed { round, reason, .. } => format!("round {round} failed: {reason}"),
        E::BudgetReached { reason, .. } => format!("stopped: {reason}"),
        E::JobFinished { job_id, status } => format!("job {job_id}: {status}"),
        E::JobSkipped { job_id, reason } => format!("job {job_id} skipped: {reason}"),
        E::MessageRefused { reason } => format!("refused a message: {reason}"),
        E::Finished { status } => format!("coordinator done: {status}"),
        _ => return None,
    })
}

mod page;
mod serve;
pub use serve::serve_dashboard;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use CoordinatorEvent as E;

    fn job_events(d: &Dashboard) {
        for (id, kind) in [("s1", "florist"), ("s2", "grocery")] {
            d.observe(&E::StoreRegistered {
                store_id: id.into(),
                business_type: kind.into(),
                registered: 1,
            });
        }
        d.observe(&E::JobStarted {
            job_id: "demand".into(),
            task: "demand".into(),
            strategy: "fedavg".into(),
            budget_epsilon: Some(4.0),
        });
        d.observe(&E::StoreReady {
            job_id: "demand".into(),
            store_id: "s1".into(),
            num_train_examples: Some(700),
            reason: None,
        });
        d.observe(&E::StoreReady {
            job_id: "demand".into(),
            store_id: "s2".into(),
            num_train_examples: None,
            reason: Some("too little history".into()),
        });
        for round in 1..=3 {
            d.observe(&E::RoundStarted {
                job_id: "demand".into(),
                round,
                total_rounds: 5,
                selected: 1,
            });
            d.observe(&E::RoundCompleted {
                round,
                participants: 1,
                dropped: 0,
                step_norm: 0.1 / round as f64,
                bytes_up: 2000,
                bytes_down: 1000,
                seconds: 0.2,
                epsilon_spent: Some(round as f64),
                train_loss: Some(2.0 / round as f64),
            });
        }
        d.observe(&E::MessageRefused {
            reason: "wrong_token",
        });
        d.observe(&E::StoreEvaluated {
            store_id: "s1".into(),
            metrics: [
                ("wape_local".to_string(), 0.3),
                ("wape_federated".to_string(), 0.25),
            ]
            .into(),
        });
    }

    #[test]
    fn the_page_shows_stores_rounds_budget_refusals_and_reported_metrics() {
        let d = Dashboard::new();
        job_events(&d);
        let html = d.page().to_html();
        for needle in [
            "s1",
            "florist",
            "sits out: too little history",
            "3 / 5",
            "3.00 of 4.00",
            "wrong_token",
            "wape_federated",
            "0.250",
            "Convergence",
            "Privacy budget",
            "Training loss",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(html.matches("<svg").count() >= 5, "charts drawn");
        assert_eq!(*d.version.borrow(), 13, "one version per event");
    }

    #[test]
    fn a_new_job_starts_a_new_curve_and_forgets_the_last_metrics() {
        let d = Dashboard::new();
        job_events(&d);
        d.observe(&E::JobStarted {
            job_id: "segments".into(),
            task: "segments".into(),
            strategy: "bisecting_kmeans".into(),
            budget_epsilon: None,
        });
        d.notice("computing features");
        assert!(
            d.page().subtitle.contains("job segments"),
            "a job's own line wins"
        );
        let fresh = Dashboard::new();
        assert_eq!(fresh.page().subtitle, "waiting for a job");
        fresh.notice("computing features");
        assert_eq!(fresh.page().subtitle, "computing features");
        let state: serde_json::Value = serde_json::from_str(&d.state_json()).unwrap();
        assert_eq!(state["rounds"].as_array().map(Vec::len), Some(0));
        assert_eq!(state["job"]["job_id"], "segments");
        assert!(state["stores"]["s1"]["metrics"]
            .as_object()
            .unwrap()
            .is_empty());
        assert_eq!(state["stores"].as_object().map(|s| s.len()), Some(2));
    }

    async fn get(addr: std::net::SocketAddr, path: &str, until: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(&out).contains(until) {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn it_serves_the_page_its_live_sections_events_and_state() {
        let d = Arc::new(Dashboard::new());
        job_events(&d);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_dashboard(listener, d.clone()));
        let page = get(addr, "/", "</html>").await;
        assert!(page.contains("EventSource('/events')") && page.contains("<svg"));
        let live = get(addr, "/live", "</main>").await;
        assert!(live.contains("<header>") && !live.contains("<script"));
        let state = get(addr, "/api/state", "}}").await;
        assert!(state.contains("\"job_id\":\"demand\""), "{state}");
        let first = get(addr, "/events", "\n\n").await;
        assert!(
            first.contains("text/event-stream") && first.contains("data: 13"),
            "{first}"
        );
    }
}
