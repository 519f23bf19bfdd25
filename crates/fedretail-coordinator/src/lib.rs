//! The coordinator: registers stores, runs a queue of jobs against them (each a task
//! spec and a [`Strategy`]), hands out tasks, receives updates and metrics, aggregates
//! them as they arrive (memory O(model size)) and keeps every completed round in
//! SQLite. Stores stay connected from one job to the next; each job ends with a final
//! evaluation at every ready store, which also keeps its results at the store.
//!
//! [`machine`] is the round state machine (phases, rounds, the evaluation, and every
//! check a peer message must pass), with the store registry beside it; [`service`] is
//! the thin gRPC adapter over it and [`driver`] only sequences jobs and rounds and
//! waits. The in-process runs drive the same machine without a network. `jobs` holds
//! the queue (config, then a watched folder). A malformed, oversize, replayed, stale or
//! unknown-store message is refused with a precise status and changes nothing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fedretail_coordinator::{run_coordinator, CoordinatorConfig};
//! let config = CoordinatorConfig::from_toml(
//!     "[[jobs]]\njob_id = \"demand\"\ntask = \"demand\"\n\n[[jobs]]\njob_id = \"segments\"\ntask = \"segments\"\n",
//! )?;
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?;
//! let outcomes = run_coordinator(config, listener, std::sync::Arc::new(|_| {})).await?;
//! for o in &outcomes {
//!     println!("{}: {}", o.job_id, o.status);
//! }
//! # Ok(()) }
//! ```
//!
//! [`Strategy`]: fedretail_core::Strategy

mod checkpoint;
mod config;
mod dashboard;
pub mod driver;
mod events;
#[cfg(test)]
mod fuzz;
mod job_report;
mod jobs;
mod limiter;
pub mod machine;
mod metrics;
mod privacy;
mod registry;
mod round;
pub mod service;
mod shared;
mod size_limits;

pub use checkpoint::{CheckpointError, CheckpointStore, RoundRecord};
pub use config::{
    CheckedJob, ConnectionLimits, CoordinatorConfig, FedAvgSettings, JobConfig, NoiseKind,
    PrivacySettings, ServerOptimizerKind, StoreCredential, StrategyKind, TlsFiles,
    DEFAULT_MAX_STORE_ROWS,
};
pub use dashboard::{serve_dashboard, Dashboard};
pub use driver::{JobOutcome, PrivacyOutcome, PrivacyRound, StoreEvaluation};
pub use events::{CoordinatorEvent, Observer};
pub use job_report::{outcomes_page, round_charts, RoundPoint};
pub use machine::{Refusal, RoundMachine};
pub use metrics::{serve_metrics, Metrics, CONTENT_TYPE as METRICS_CONTENT_TYPE};

use fedretail_core::BoxFuture;
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid job configuration: {0}")]
    Config(#[from] fedretail_core::ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint of job '{job_id}' has {got} parameters but the task's model has {expected}; use a new job id or database")]
    IncompatibleCheckpoint {
        job_id: String,
        expected: usize,
        got: usize,
    },
    #[error("job '{job_id}' has completed rounds under other privacy settings ({changed}); resuming would change how its spending is accounted. Restore [job.privacy] or use a new job id")]
    ChangedPrivacy { job_id: String, changed: String },
    #[error("gRPC server failed: {0}")]
    Server(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("privacy accounting: {0}")]
    Privacy(String),
}

/// Serve the jobs on `listener` until the last finishes (with a jobs folder: until
/// the future is dropped), then stop serving. A job that could not run is an outcome
/// with `failed` set, not an error; errors are the coordinator's own (database,
/// server, configuration).
pub fn run_coordinator<'a>(
    config: CoordinatorConfig,
    listener: TcpListener,
    observer: Observer,
) -> BoxFuture<'a, Result<Vec<JobOutcome>, CoordinatorError>> {
    Box::pin(async move {
        let checkpoints = CheckpointStore::open(&config.database)?;
        run_coordinator_with(config, listener, checkpoints, observer).await
    })
}

/// The server's TLS identity from its PEM files, each named when it cannot be read.
fn server_tls(files: &TlsFiles) -> Result<tonic::transport::ServerTlsConfig, CoordinatorError> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| CoordinatorError::Tls(format!("{what} {}: {e}", p.display())))
    };
    let (cert, key) = (read(&files.cert, "certificate")?, read(&files.key, "key")?);
    let identity = tonic::transport::Identity::from_pem(cert, key);
    let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    Ok(match &files.client_ca {
        // Every agent must then present a certificate the network's CA signed.
        Some(ca) => tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client CA certificate",
        )?)),
        None => tls,
    })
}

/// As [`run_coordinator`], with an explicit checkpoint store (tests use an in-memory one).
pub fn run_coordinator_with<'a>(
    config: CoordinatorConfig,
    listener: TcpListener,
    checkpoints: CheckpointStore,
    observer: Observer,
) -> BoxFuture<'a, Result<Vec<JobOutcome>, CoordinatorError>> {
    Box::pin(async move {
        let queue = jobs::JobQueue::new(config.checked_jobs()?, config.jobs_dir.clone());
        let tls = config.tls.as_ref().map(server_tls).transpose()?;
        config.check_admission()?;
        let shared = Arc::new(shared::Shared::new(&config, observer));
        let svc = service::CoordinatorService::new(shared.clone());
        let max = config.max_message_bytes;
        let limits = &config.limits;
        let secs = std::time::Duration::from_secs;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sized = {
            let shared = shared.clone();
            size_limits::SizeLimitLayer {
                limit: Arc::new(move |path: &str| size_limits::limit_for(&shared, path, max)),
                wait: secs(limits.request_timeout_secs),
            }
        };
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .concurrency_limit_per_connection(limits.concurrency_per_connection)
            .timeout(secs(limits.request_timeout_secs))
            .http2_keepalive_interval(Some(secs(limits.keepalive_secs)))
            .http2_keepalive_timeout(Some(secs(limits.keepalive_timeout_secs)))
            .tcp_keepalive(Some(secs(limits.keepalive_secs)));
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| CoordinatorError::Tls(fedretail_proto::error_chain(&e)))?;
        }
        let server = tokio::spawn(
            builder
                .layer(sized)
                .add_service(
                    fedretail_proto::v1::coordinator_server::CoordinatorServer::new(svc)
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                )
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );
        let outcome = driver::drive(shared, checkpoints, queue).await;
        let _ = stop_tx.send(());
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CoordinatorError::Server(e.to_string())),
            Err(e) => return Err(CoordinatorError::Server(e.to_string())),
        }
        outcome
    })
}
