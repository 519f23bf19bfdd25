//! Simulation harness: a whole retail network on one machine. It prepares every
//! store's features (as each store's agent would, from its own files), starts a real
//! coordinator on 127.0.0.1 and one real agent per store talking gRPC, and measures the
//! result against the baselines a user needs to judge it: seasonal naive, each store
//! alone, and a centralized model on pooled data. The centralized model exists only
//! here, as a yardstick; no deployment path pools data.
//!
//! ```no_run
//! # async fn run() -> Result<(), fedretail_sim::SimError> {
//! use fedretail_sim::{run_demo, DemoOptions};
//! let report = run_demo(&DemoOptions::new("network".into()), std::sync::Arc::new(|_| {})).await?;
//! println!("{}", fedretail_sim::render_summary(&report));
//! # Ok(()) }
//! ```

pub mod analysis_pages;
pub mod attack;
pub mod byzantine;
pub mod byzantine_demand;
pub mod classification;
pub mod clustering;
mod demo;
pub mod dp_demand;
pub mod federation;
pub mod inprocess;
mod network_jobs;
mod prepare;
mod report;
mod report_page;
mod truth;

pub use classification::{
    render_classification, run_churn, run_classification, run_credit, ClassificationEvent,
    ClassificationOptions, ClassificationReport,
};
pub use clustering::{
    render_anomaly, render_segments, run_anomaly, run_segments, AnomalyReport, ClusteringEvent,
    ClusteringOptions, SegmentReport,
};
pub use demo::{run_demo, DemoEvent, DemoOptions};
pub use dp_demand::{render_dp_demand, run_dp_demand, DpDemandOptions, DpDemandReport};
pub use federation::Wiring;
pub use network_jobs::{
    default_job, render_network_run, run_network_jobs, run_tabular_network, tabular_jobs,
    GroupMetrics, NetworkJobReport, NetworkRunReport, SILO_TABLE_FILE,
};
pub use prepare::{prepare_network, PreparedStore, SkippedStore};
pub use report::{
    privacy_line, render_summary, summarize, DemandReport, GroupSummary, StoreReport,
};
pub use report_page::{demand_page, read_backtests, Backtest};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "no store directories found under {0} (run `fedretail generate` first, or pass --data)"
    )]
    NoStores(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("every store was skipped; first reason: {0}")]
    AllSkipped(String),
    #[error(transparent)]
    Coordinator(#[from] fedretail_coordinator::CoordinatorError),
    #[error("invalid options: {0}")]
    Options(String),
    #[error("{0}")]
    Runtime(String),
}
