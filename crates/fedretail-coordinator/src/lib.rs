//! The coordinator: registers stores, hands out tasks, receives updates and metrics,
//! aggregates them as they arrive (memory O(model size)) and keeps every completed
//! round in SQLite. It runs one job: a number of rounds of one [`Strategy`] on one
//! task, then a final evaluation at every store.
//!
//! The round logic lives in [`driver`]; [`service`] is the gRPC adapter that checks
//! every peer message before it can touch job state. A malformed, oversize, replayed,
//! stale or unknown-store message is refused with a precise status and changes nothing.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use fedretail_coordinator::{run_coordinator, CoordinatorConfig};
//! let config = CoordinatorConfig::from_toml("[job]\nmin_stores = 3\n")?;
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?;
//! let outcome = run_coordinator(config, listener, std::sync::Arc::new(|_| {})).await?;
//! println!("{} rounds", outcome.rounds.len());
//! # Ok(()) }
//! ```
//!
//! [`Strategy`]: fedretail_core::Strategy

mod checkpoint;
mod config;
pub mod driver;
mod privacy;
pub mod service;

pub use checkpoint::{CheckpointError, CheckpointStore, RoundRecord};
pub use config::{
    CheckedJob, CoordinatorConfig, FedAvgSettings, JobConfig, NoiseKind, PrivacySettings,
    StoreCredential, StrategyKind,
};
pub use driver::{
    CoordinatorEvent, JobOutcome, Observer, PrivacyOutcome, PrivacyRound, StoreEvaluation,
};

use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid job configuration: {0}")]
    Config(#[from] fedretail_core::ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "only {registered} stores joined within the registration timeout; the job needs {required}"
    )]
    TooFewStores { registered: usize, required: usize },
    #[error("round {round} failed {attempts} times; last reason: {reason}")]
    RoundFailed {
        round: u64,
        attempts: u32,
        reason: String,
    },
    #[error("checkpoint of job '{job_id}' has {got} parameters but the task's model has {expected}; use a new job id or database")]
    IncompatibleCheckpoint {
        job_id: String,
        expected: usize,
        got: usize,
    },
    #[error("gRPC server failed: {0}")]
    Server(String),
    #[error("privacy accounting: {0}")]
    Privacy(String),
}

/// Serve the job on `listener` until it finishes, then stop serving.
pub async fn run_coordinator(
    config: CoordinatorConfig,
    listener: TcpListener,
    observer: Observer,
) -> Result<JobOutcome, CoordinatorError> {
    let checkpoints = CheckpointStore::open(&config.database)?;
    run_coordinator_with(config, listener, checkpoints, observer).await
}

/// As [`run_coordinator`], with an explicit checkpoint store (tests use an in-memory one).
pub async fn run_coordinator_with(
    config: CoordinatorConfig,
    listener: TcpListener,
    checkpoints: CheckpointStore,
    observer: Observer,
) -> Result<JobOutcome, CoordinatorError> {
    let job = CheckedJob::new(config.job.clone())?;
    let shared = Arc::new(service::Shared::new(&config, job, observer)?);
    let svc = service::CoordinatorService::new(shared.clone());
    let max = config.max_message_bytes;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
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
    let outcome = driver::drive(shared, checkpoints).await;
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CoordinatorError::Server(e.to_string())),
        Err(e) => return Err(CoordinatorError::Server(e.to_string())),
    }
    outcome
}
