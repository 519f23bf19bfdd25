//! The store agent: runs beside a store's data, registers with the coordinator, and
//! for each task computes an update or aggregate metrics with its [`LocalTask`]. Only
//! those leave the store. Transient failures (coordinator restarting, network blips)
//! are retried with backoff; a coordinator that forgot the store is re-joined.
//!
//! The agent knows nothing about how the store's data was read: it is handed a ready
//! [`LocalTask`] (the CLI builds one from files with `fedretail-data`).
//!
//! ```no_run
//! # async fn run(task: std::sync::Arc<dyn fedretail_models::LocalTask>) {
//! use fedretail_agent::{AgentConfig, StoreAgent};
//! let agent = StoreAgent::new(AgentConfig::new("http://127.0.0.1:50051", "store-001"), task);
//! let summary = agent.run().await.unwrap();
//! println!("trained in {} rounds", summary.rounds_trained);
//! # }
//! ```

use fedretail_core::{LocalWork, UpdatePrecision};
use fedretail_models::LocalTask;
use fedretail_proto::v1::{
    self, coordinator_client::CoordinatorClient, poll_task_response::Outcome,
};
use fedretail_proto::{
    decode_tensor, encode_update, layout_from_wire, ErrorKind, ServiceError, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// e.g. `http://coordinator.example:50051`
    pub coordinator_url: String,
    pub store_id: String,
    pub token: String,
    pub business_type: String,
    /// Consecutive transient failures tolerated before giving up.
    pub max_retries: u32,
    /// How long one poll may wait at the coordinator.
    pub poll_wait: Duration,
    pub max_message_bytes: usize,
}

impl AgentConfig {
    pub fn new(coordinator_url: impl Into<String>, store_id: impl Into<String>) -> Self {
        AgentConfig {
            coordinator_url: coordinator_url.into(),
            store_id: store_id.into(),
            token: String::new(),
            business_type: String::new(),
            max_retries: 30,
            poll_wait: Duration::from_secs(10),
            max_message_bytes: fedretail_proto::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid coordinator address '{0}': {1}")]
    BadAddress(String, String),
    #[error("coordinator unreachable after {attempts} attempts: {last}")]
    Unreachable { attempts: u32, last: String },
    #[error("coordinator refused: {0}")]
    Refused(ServiceError),
    #[error("task from coordinator is malformed: {0}")]
    BadTask(String),
    #[error("local task failed: {0}")]
    Task(#[from] fedretail_models::TaskError),
}

/// What the agent did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSummary {
    pub rounds_trained: u32,
    pub evaluations: u32,
    pub finish_reason: String,
    pub retries: u32,
}

pub struct StoreAgent {
    config: AgentConfig,
    task: Arc<dyn LocalTask>,
}

struct Session {
    client: CoordinatorClient<Channel>,
    session_id: String,
}

impl StoreAgent {
    pub fn new(config: AgentConfig, task: Arc<dyn LocalTask>) -> Self {
        StoreAgent { config, task }
    }

    async fn connect(&self) -> Result<CoordinatorClient<Channel>, AgentError> {
        let endpoint = Endpoint::from_shared(self.config.coordinator_url.clone())
            .map_err(|e| {
                AgentError::BadAddress(self.config.coordinator_url.clone(), e.to_string())
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| AgentError::Unreachable {
                attempts: 1,
                last: e.to_string(),
            })?;
        Ok(CoordinatorClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes))
    }

    async fn register(&self) -> Result<Session, AgentError> {
        let mut client = self.connect().await?;
        let req = v1::RegisterStoreRequest {
            protocol_version: PROTOCOL_VERSION,
            store_id: self.config.store_id.clone(),
            token: self.config.token.clone(),
            business_type: self.config.business_type.clone(),
            task: self.task.task_name().to_string(),
            num_train_examples: self.task.num_train_examples(),
        };
        let resp = client.register_store(req).await.map_err(|s| classify(&s))?;
        Ok(Session {
            client,
            session_id: resp.into_inner().session_id,
        })
    }

    /// Run until the coordinator says the job is finished.
    pub async fn run(&self) -> Result<AgentSummary, AgentError> {
        let mut summary = AgentSummary::default();
        let mut failures = 0u32;
        let mut session: Option<Session> = None;
        loop {
            let result = match session.as_mut() {
                None => match self.register().await {
                    Ok(s) => {
                        session = Some(s);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                },
                Some(s) => self.step(s, &mut summary).await,
            };
            match result {
                Ok(Some(reason)) => {
                    summary.finish_reason = reason;
                    return Ok(summary);
                }
                Ok(None) => failures = 0,
                Err(AgentError::Unreachable { last, .. }) => {
                    failures += 1;
                    summary.retries += 1;
                    if failures > self.config.max_retries {
                        return Err(AgentError::Unreachable {
                            attempts: failures,
                            last,
                        });
                    }
                    session = None;
                    tokio::time::sleep(backoff(failures)).await;
                }
                Err(AgentError::Refused(e))
                    if e.kind == ErrorKind::UnknownStore && session.is_some() =>
                {
                    // The coordinator restarted or we were replaced: join again.
                    session = None;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One poll and, if there is work, doing it. Ok(Some(reason)) when the job ended.
    async fn step(
        &self,
        s: &mut Session,
        summary: &mut AgentSummary,
    ) -> Result<Option<String>, AgentError> {
        let poll = v1::PollTaskRequest {
            store_id: self.config.store_id.clone(),
            session_id: s.session_id.clone(),
            wait_millis: self.config.poll_wait.as_millis() as u32,
        };
        let resp = s
            .client
            .poll_task(poll)
            .await
            .map_err(|st| classify(&st))?
            .into_inner();
        match resp.outcome {
            None | Some(Outcome::Wait(_)) => Ok(None),
            Some(Outcome::Finished(f)) => Ok(Some(f.reason)),
            Some(Outcome::Train(t)) => {
                let (global, work, precision) = self.read_train_task(&t)?;
                let task = self.task.clone();
                let update =
                    tokio::task::spawn_blocking(move || task.compute_update(&global, &work))
                        .await
                        .map_err(|e| {
                            AgentError::BadTask(format!("training thread failed: {e}"))
                        })??;
                let req = v1::SubmitUpdateRequest {
                    store_id: self.config.store_id.clone(),
                    session_id: s.session_id.clone(),
                    task_id: t.task_id.clone(),
                    round: t.round,
                    update: Some(encode_update(&update, precision)),
                    num_examples: self.task.num_train_examples(),
                    metrics: Default::default(),
                };
                match s.client.submit_update(req).await {
                    Ok(_) => summary.rounds_trained += 1,
                    // The round closed without us, or this was a resend: move on.
                    Err(st)
                        if matches!(
                            ServiceError::from_status(&st).kind,
                            ErrorKind::StaleTask | ErrorKind::Duplicate
                        ) => {}
                    Err(st) => return Err(classify(&st)),
                }
                Ok(None)
            }
            Some(Outcome::Evaluate(t)) => {
                let layout = layout_from_wire(t.layout.as_ref())
                    .map_err(|e| AgentError::BadTask(e.to_string()))?;
                self.check_layout(&layout)?;
                let global = t
                    .global
                    .as_ref()
                    .ok_or_else(|| AgentError::BadTask("evaluation task has no model".into()))
                    .and_then(|g| {
                        decode_tensor(g, layout.len(), self.config.max_message_bytes)
                            .map_err(|e| AgentError::BadTask(e.to_string()))
                    })?
                    .to_f64();
                let task = self.task.clone();
                let metrics = tokio::task::spawn_blocking(move || task.evaluate(&global))
                    .await
                    .map_err(|e| AgentError::BadTask(format!("evaluation thread failed: {e}")))??;
                let req = v1::SubmitEvaluationRequest {
                    store_id: self.config.store_id.clone(),
                    session_id: s.session_id.clone(),
                    task_id: t.task_id,
                    metrics: metrics.into_iter().collect(),
                };
                match s.client.submit_evaluation(req).await {
                    Ok(_) => summary.evaluations += 1,
                    Err(st)
                        if matches!(
                            ServiceError::from_status(&st).kind,
                            ErrorKind::StaleTask | ErrorKind::Duplicate
                        ) => {}
                    Err(st) => return Err(classify(&st)),
                }
                Ok(None)
            }
        }
    }

    fn check_layout(&self, layout: &fedretail_core::ModelLayout) -> Result<(), AgentError> {
        if *layout != self.task.layout() {
            return Err(AgentError::BadTask(format!(
                "coordinator's model has {} parameters in segments {:?}; this store's task expects {}",
                layout.len(),
                layout.segments().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                self.task.layout().len()
            )));
        }
        Ok(())
    }

    fn read_train_task(
        &self,
        t: &v1::TrainTask,
    ) -> Result<(Vec<f64>, LocalWork, UpdatePrecision), AgentError> {
        let layout =
            layout_from_wire(t.layout.as_ref()).map_err(|e| AgentError::BadTask(e.to_string()))?;
        self.check_layout(&layout)?;
        let global = t
            .global
            .as_ref()
            .ok_or_else(|| AgentError::BadTask("training task has no model".into()))
            .and_then(|g| {
                decode_tensor(g, layout.len(), self.config.max_message_bytes)
                    .map_err(|e| AgentError::BadTask(e.to_string()))
            })?
            .to_f64();
        if let Some(i) = global.iter().position(|v| !v.is_finite()) {
            return Err(AgentError::BadTask(format!(
                "global model value {i} is not finite"
            )));
        }
        let work = match &t.work {
            Some(v1::train_task::Work::LocalEpochs(e)) => LocalWork::LocalEpochs {
                epochs: e.epochs.clamp(1, 1000),
                batch_size: e.batch_size.max(1),
                learning_rate: e.learning_rate,
                l2: e.l2,
                seed: e.seed,
            },
            Some(v1::train_task::Work::SecondOrder(_)) => LocalWork::SecondOrderStatistics,
            Some(v1::train_task::Work::ClusterStatistics(_)) => LocalWork::ClusterStatistics,
            None => return Err(AgentError::BadTask("training task names no work".into())),
        };
        let precision = match v1::Dtype::try_from(t.update_dtype) {
            Ok(v1::Dtype::F32) => UpdatePrecision::F32,
            _ => UpdatePrecision::F64,
        };
        Ok((global, work, precision))
    }
}

fn classify(status: &tonic::Status) -> AgentError {
    let e = ServiceError::from_status(status);
    if e.kind.is_transient() {
        AgentError::Unreachable {
            attempts: 1,
            last: e.message,
        }
    } else {
        AgentError::Refused(e)
    }
}

/// Exponential backoff from 100 ms, capped at 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((100u64 << failures.min(6)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(30), Duration::from_millis(5_000));
    }
}
