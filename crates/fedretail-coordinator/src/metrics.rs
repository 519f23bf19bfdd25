//! Prometheus metrics for operators: counters and gauges fed by the coordinator's
//! events (so they carry only what the events carry: counts, bytes, timings, ε, and
//! the kind of a refused message, never a store's data), served at `/metrics`.

use crate::events::CoordinatorEvent;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What Prometheus expects from an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// The coordinator's metrics, updated from its events.
pub struct Metrics {
    registry: Registry,
    stores_registered: Gauge,
    jobs_started: Counter,
    jobs_finished: Counter,
    rounds_completed: Counter,
    rounds_failed: Counter,
    current_round: Gauge,
    updates_accepted: Counter,
    messages_refused: Family<Labels, Counter>,
    bytes_up: Counter,
    bytes_down: Counter,
    round_seconds: Histogram,
    epsilon_spent: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("fedretail"),
            stores_registered: Gauge::default(),
            jobs_started: Counter::default(),
            jobs_finished: Counter::default(),
            rounds_completed: Counter::default(),
            rounds_failed: Counter::default(),
            current_round: Gauge::default(),
            updates_accepted: Counter::default(),
            messages_refused: Family::default(),
            bytes_up: Counter::default(),
            bytes_down: Counter::default(),
            // 10 ms to about 40 s.
            round_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            epsilon_spent: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "stores_registered",
            "Stores registered with the coordinator",
            self.stores_registered.clone(),
        );
        r.register("jobs_started", "Jobs started", self.jobs_started.clone());
        r.register("jobs_finished", "Jobs finished", self.jobs_finished.clone());
        r.register(
            "rounds_completed",
            "Training rounds completed (and checkpointed)",
            self.rounds_completed.clone(),
        );
        r.register(
            "rounds_failed",
            "Round attempts that failed",
            self.rounds_failed.clone(),
        );
        r.register(
            "current_round",
            "The round the current job is in",
            self.current_round.clone(),
        );
        r.register(
            "updates_accepted",
            "Store updates accepted into a round",
            self.updates_accepted.clone(),
        );
        r.register(
            "messages_refused",
            "Store messages refused, by reason",
            self.messages_refused.clone(),
        );
        r.register(
            "bytes_up",
            "Payload bytes received from stores in completed rounds",
            self.bytes_up.clone(),
        );
        r.register(
            "bytes_down",
            "Payload bytes sent to stores in completed rounds",
            self.bytes_down.clone(),
        );
        r.register(
            "round_seconds",
            "Wall time of completed rounds",
            self.round_seconds.clone(),
        );
        r.register(
            "epsilon_spent",
            "Privacy budget spent by the current job at its delta",
            self.epsilon_spent.clone(),
        );
    }

    /// Updates the metrics from one coordinator event.
    pub fn observe(&self, e: &CoordinatorEvent) {
        use CoordinatorEvent as E;
        match e {
            E::StoreRegistered { registered, .. } => {
                self.stores_registered.set(*registered as i64);
            }
            E::JobStarted { .. } => {
                self.jobs_started.inc();
                self.current_round.set(0);
                self.epsilon_spent.set(0.0);
            }
            E::RoundStarted { round, .. } => {
                self.current_round.set(*round as i64);
            }
            E::UpdateAccepted { .. } => {
                self.updates_accepted.inc();
            }
            E::RoundCompleted {
                bytes_up,
                bytes_down,
                seconds,
                epsilon_spent,
                ..
            } => {
                self.rounds_completed.inc();
                self.bytes_up.inc_by(*bytes_up);
                self.bytes_down.inc_by(*bytes_down);
                self.round_seconds.observe(*seconds);
                if let Some(eps) = epsilon_spent {
                    self.epsilon_spent.set(*eps);
                }
            }
            E::RoundFailed { .. } => {
                self.rounds_failed.inc();
            }
            E::MessageRefused { reason } => {
                self.messages_refused
                    .get_or_create(&vec![("reason".to_string(), reason.to_string())])
                    .inc();
            }
            E::JobFinished { .. } => {
                self.jobs_finished.inc();
            }
            E::StoreReady { .. }
            | E::BudgetReached { .. }
            | E::EvaluationStarted { .. }
            | E::StoreEvaluated { .. }
            | E::JobSkipped { .. }
            | E::Finished { .. } => {}
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `listener` until the future is dropped.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.encode();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text) }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn events_become_counters_gauges_and_a_latency_histogram() {
        let m = Metrics::new();
        m.observe(&CoordinatorEvent::StoreRegistered {
            store_id: "a".into(),
            business_type: "florist".into(),
            registered: 3,
        });
        for (round, seconds) in [(1, 0.2), (2, 0.4)] {
            m.observe(&CoordinatorEvent::UpdateAccepted {
                round,
                store_id: "a".into(),
                received: 1,
                selected: 3,
            });
            m.observe(&CoordinatorEvent::RoundCompleted {
                round,
                participants: 3,
                dropped: 0,
                step_norm: 0.1,
                bytes_up: 1000,
                bytes_down: 500,
                seconds,
                epsilon_spent: Some(0.5 * round as f64),
                train_loss: None,
            });
        }
        for reason in ["wrong_token", "wrong_token", "replay"] {
            m.observe(&CoordinatorEvent::MessageRefused { reason });
        }
        let text = m.encode();
        assert_eq!(value(&text, "fedretail_stores_registered"), Some(3.0));
        assert_eq!(value(&text, "fedretail_rounds_completed_total"), Some(2.0));
        assert_eq!(value(&text, "fedretail_updates_accepted_total"), Some(2.0));
        assert_eq!(value(&text, "fedretail_bytes_up_total"), Some(2000.0));
        assert_eq!(value(&text, "fedretail_epsilon_spent"), Some(1.0));
        assert_eq!(value(&text, "fedretail_round_seconds_count"), Some(2.0));
        assert_eq!(
            value(&text, "fedretail_round_seconds_sum").map(|s| (s * 10.0).round()),
            Some(6.0)
        );
        assert_eq!(
            value(
                &text,
                r#"fedretail_messages_refused_total{reason="wrong_token"}"#
            ),
            Some(2.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
