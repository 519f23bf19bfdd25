//! The store agent: runs beside a store's data, registers with the coordinator once,
//! and serves job after job. For each job it prepares the job's task from the store's
//! own data (or says why it cannot), computes updates and aggregate metrics with that
//! [`LocalTask`], and from the final model writes the store's results — forecasts,
//! flagged receipts, segments, churn scores, the model itself — into the store's
//! results folder. Only updates and named metrics leave the store. Transient failures
//! (coordinator restarting, network blips) are retried with backoff; a coordinator
//! that forgot the store is re-joined.
//!
//! The agent knows nothing about how the store's data is read: a [`TaskSource`] (the
//! CLI's reads files with `fedretail-data`) builds the task for each job's spec.
//!
//! ```no_run
//! # async fn run(tasks: std::sync::Arc<dyn fedretail_agent::TaskSource>) {
//! use fedretail_agent::{AgentConfig, StoreAgent};
//! let mut config = AgentConfig::new("http://127.0.0.1:50051", "store-001");
//! config.results_dir = Some("results".into());
//! let summary = StoreAgent::new(config, tasks).run().await.unwrap();
//! println!("{} jobs", summary.jobs.len());
//! # }
//! ```

mod floor;
mod kept_state;
mod protect;
mod results;
mod store_page;

pub use floor::PrivacyFloor;
use kept_state::{JobRun, KeptStateSaver};
pub use protect::{
    begin_secure, check_privacy, protect_update, secure_step, SecAggTrust, SecureInput,
};

pub use fedretail_models::{FixedTasks, PrepareFuture, TaskSource};
pub use results::{read_model, write_results, ModelFile, ResultsError, MODEL_FORMAT};
pub use store_page::daily_sums;

use fedretail_core::{BoxFuture, CheckedTask, LocalSgd, LocalWork, UpdatePrecision};
use fedretail_models::LocalTask;
use fedretail_proto::error_chain;
use fedretail_proto::v1::{
    self, coordinator_client::CoordinatorClient, poll_task_response::Outcome,
};
use fedretail_proto::{
    decode_tensor, encode_update, job_from_wire, layout_from_wire, summary_to_wire, ErrorKind,
    ServiceError, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Six hours: a coordinator restarted or moved overnight finds its stores again.
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// e.g. `http://coordinator.example:50051`
    pub coordinator_url: String,
    pub store_id: String,
    pub token: String,
    pub business_type: String,
    /// How long the coordinator may stay unreachable before the agent gives up (it
    /// keeps reconnecting, with backoff and jitter, until then).
    pub reconnect_for: Duration,
    /// How long one poll may wait at the coordinator.
    pub poll_wait: Duration,
    pub max_message_bytes: usize,
    /// Where the store's results are written, one folder per job; None keeps none.
    pub results_dir: Option<std::path::PathBuf>,
    /// The least privacy this store accepts from a job and from each round.
    pub privacy_floor: PrivacyFloor,
    /// The network's CA certificate (PEM) for an https:// coordinator: the agent
    /// talks only to a coordinator whose certificate chains to it.
    pub ca_certificate: Option<Vec<u8>>,
    /// The store's own certificate and key (PEM, from `fedretail enroll`), presented to
    /// a coordinator that requires mutual TLS: then the certificate is who it is.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The store's SecAgg+ signing identity and the roster it checks neighbours by.
    pub secagg_trust: SecAggTrust,
}

impl AgentConfig {
    pub fn new(coordinator_url: impl Into<String>, store_id: impl Into<String>) -> Self {
        AgentConfig {
            coordinator_url: coordinator_url.into(),
            store_id: store_id.into(),
            token: String::new(),
            business_type: String::new(),
            reconnect_for: DEFAULT_RECONNECT_FOR,
            poll_wait: Duration::from_secs(10),
            max_message_bytes: fedretail_proto::DEFAULT_MAX_MESSAGE_BYTES,
            results_dir: None,
            privacy_floor: PrivacyFloor::default(),
            ca_certificate: None,
            identity: None,
            secagg_trust: SecAggTrust::default(),
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
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// The store's data cannot serve the job's task (told to the coordinator).
    #[error("this store cannot take part in job '{job_id}': {reason}")]
    CannotServe { job_id: String, reason: String },
}

/// This store's SecAgg+ round in progress, and its task.
struct PendingSecure {
    task_id: String,
    input: SecureInput,
}

/// What the agent did in one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    pub job_id: String,
    pub task: String,
    /// Why the store did not take part, when it did not.
    pub cannot_serve: Option<String>,
    /// Where the job's results were written.
    pub results: Option<std::path::PathBuf>,
}

/// What the agent did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSummary {
    pub rounds_trained: u32,
    pub evaluations: u32,
    pub finish_reason: String,
    pub retries: u32,
    /// Secure rounds this store left because a coordinator message did not check out
    /// (a wrong neighbour, a share that failed authentication...).
    pub secure_rounds_abandoned: u32,
    /// Rounds this store could not compute an update for (the round went on without it).
    pub failed_rounds: u32,
    /// Rounds that asked for less privacy than this store's floor (it sent nothing).
    pub rounds_refused: u32,
    /// Updates the coordinator refused (the store sat those rounds out).
    pub updates_refused: u32,
    pub jobs: Vec<JobReport>,
}

pub struct StoreAgent {
    config: AgentConfig,
    tasks: Arc<dyn TaskSource>,
    /// The task of the job being served: prepared once, reused every round.
    current: std::sync::Mutex<Option<CurrentTask>>,
    /// A connection this agent shares with others (see [`StoreAgent::sharing`]).
    shared: Option<Channel>,
}

/// A job's id, its task spec, and the task built for it.
type CurrentTask = (String, CheckedTask, Arc<dyn LocalTask>);

struct Session {
    client: CoordinatorClient<Channel>,
    session_id: String,
    secure: Option<PendingSecure>,
    /// Updates the coordinator refused in a row (reset by one it takes).
    refused_in_a_row: u32,
}

/// Refused updates in a row after which the agent stops: one refusal is a round lost
/// (a bad batch of data, a model that diverged once), several in a row mean this
/// store's updates cannot be taken and it should say so rather than go on sending.
pub const MAX_REFUSED_IN_A_ROW: u32 = 3;

impl StoreAgent {
    pub fn new(config: AgentConfig, tasks: Arc<dyn TaskSource>) -> Self {
        StoreAgent {
            config,
            tasks,
            current: std::sync::Mutex::new(None),
            shared: None,
        }
    }

    /// Talks to the coordinator over `channel`, an HTTP/2 connection other agents in
    /// this process use too, instead of opening its own. For simulations of more
    /// stores than one process has sockets for; a real store has its own connection.
    pub fn sharing(mut self, channel: Channel) -> Self {
        self.shared = Some(channel);
        self
    }

    async fn connect(&self) -> Result<CoordinatorClient<Channel>, AgentError> {
        let channel = match &self.shared {
            Some(channel) => channel.clone(),
            None => self.open_channel().await?,
        };
        Ok(CoordinatorClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes))
    }

    async fn open_channel(&self) -> Result<Channel, AgentError> {
        let endpoint = Endpoint::from_shared(self.config.coordinator_url.clone())
            .map_err(|e| {
                AgentError::BadAddress(self.config.coordinator_url.clone(), e.to_string())
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let endpoint = self.with_tls(endpoint)?;
        endpoint.connect().await.map_err(|e| self.connect_error(&e))
    }

    /// An https:// coordinator is trusted only if its certificate chains to the
    /// network's CA; without one the agent refuses to connect.
    fn with_tls(&self, endpoint: Endpoint) -> Result<Endpoint, AgentError> {
        let url = &self.config.coordinator_url;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self.config.ca_certificate.as_ref().ok_or_else(|| {
            AgentError::BadAddress(
                url.clone(),
                "https:// needs the network's CA certificate to check the coordinator's".into(),
            )
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.config.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| AgentError::BadAddress(url.clone(), error_chain(&e)))
    }

    /// Why a connection failed, with its causes. A certificate that does not check
    /// out will not on a retry either: that is final, and says so.
    fn connect_error(&self, e: &tonic::transport::Error) -> AgentError {
        let text = error_chain(e);
        if text.contains("certificate") {
            return AgentError::BadAddress(
                self.config.coordinator_url.clone(),
                format!("the coordinator's certificate does not check out against this store's CA certificate: {text}"),
            );
        }
        AgentError::Unreachable {
            attempts: 1,
            last: text,
        }
    }

    /// A plain-HTTP agent meeting a TLS coordinator sees only an HTTP/2 protocol
    /// error; say what it most likely means.
    fn register_error(&self, status: &tonic::Status) -> AgentError {
        let url = &self.config.coordinator_url;
        let garbled = status.message().contains("protocol error");
        if garbled && url.starts_with("http://") {
            return AgentError::BadAddress(
                url.clone(),
                format!(
                    "the coordinator did not speak plain HTTP/2 ({}); if it serves TLS, use https:// with the network's CA certificate (ca = \"ca.pem\")",
                    status.message()
                ),
            );
        }
        let chain = error_chain(status);
        if chain.contains("CertificateRequired") && self.config.identity.is_none() {
            return AgentError::BadAddress(
                url.clone(),
                "the coordinator requires each store's certificate (mutual TLS): set cert and key in this store's config, as `fedretail enroll` printed them".into(),
            );
        }
        classify(status)
    }

    async fn register(&self) -> Result<Session, AgentError> {
        let mut client = self.connect().await?;
        let req = v1::RegisterStoreRequest {
            protocol_version: PROTOCOL_VERSION,
            store_id: self.config.store_id.clone(),
            token: self.config.token.clone(),
            business_type: self.config.business_type.clone(),
        };
        let resp = client
            .register_store(req)
            .await
            .map_err(|s| self.register_error(&s))?;
        Ok(Session {
            client,
            session_id: resp.into_inner().session_id,
            secure: None,
            refused_in_a_row: 0,
        })
    }

    /// Run until the coordinator says the job is finished.
    pub fn run<'a>(&'a self) -> BoxFuture<'a, Result<AgentSummary, AgentError>> {
        Box::pin(async move {
            let mut summary = AgentSummary::default();
            let mut failures = 0u32;
            let mut unreachable_since: Option<tokio::time::Instant> = None;
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
                    Ok(None) => {
                        failures = 0;
                        unreachable_since = None;
                    }
                    Err(AgentError::Unreachable { last, .. }) => {
                        failures += 1;
                        summary.retries += 1;
                        let since =
                            *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= self.config.reconnect_for {
                            return Err(AgentError::Unreachable {
                                attempts: failures,
                                last,
                            });
                        }
                        session = None;
                        tokio::time::sleep(backoff(failures, rand::random())).await;
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
        })
    }

    /// One poll and, if there is work, doing it. Ok(Some(reason)) when the
    /// coordinator has no more work.
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
        let result = match resp.outcome {
            None | Some(Outcome::Wait(_)) => Ok(()),
            Some(Outcome::Finished(f)) => return Ok(Some(f.reason)),
            Some(Outcome::Prepare(p)) => self.prepare(s, p, summary).await,
            Some(Outcome::Train(t)) => self.train(s, t, summary).await,
            Some(Outcome::Secagg(step)) => self.secure_step(s, step, summary).await,
            Some(Outcome::Evaluate(t)) => self.evaluate(s, t, summary).await,
        };
        match result {
            // This store's part failed (bad data for this model, a task the coordinator
            // sent that does not check out): the round goes on without it, and so does
            // the agent.
            Err(
                e @ (AgentError::Task(_)
                | AgentError::BadTask(_)
                | AgentError::Results(_)
                | AgentError::CannotServe { .. }),
            ) => {
                tracing::warn!(store = %self.config.store_id, "{e}");
                summary.failed_rounds += 1;
                Ok(None)
            }
            other => other.map(|()| None),
        }
    }

    /// The task of job `job`, prepared from the store's data (once per job). Built
    /// for a round (`round`) rather than at the job's start, it takes back what the
    /// store kept of the job before a restart.
    async fn task_for(
        &self,
        job: Option<&v1::JobContext>,
        round: Option<u64>,
    ) -> Result<Arc<dyn LocalTask>, AgentError> {
        let (job_id, spec) = job_from_wire(job).map_err(|e| AgentError::BadTask(e.to_string()))?;
        if let Some((id, cached_spec, task)) = self.lock_current().as_ref() {
            // The same job with the same spec: a restarted coordinator may re-agree a
            // tabular encoding, which makes it a different task.
            if *id == job_id && *cached_spec == spec {
                return Ok(task.clone());
            }
        }
        let task = self
            .tasks
            .prepare(&spec)
            .await
            .map_err(|reason| AgentError::CannotServe {
                job_id: job_id.clone(),
                reason,
            })?;
        if let (Some(round), Some(job)) = (round, job) {
            self.restore_kept_state(&JobRun::of(job), task.as_ref(), round);
        }
        *self.lock_current() = Some((job_id, spec, task.clone()));
        Ok(task)
    }

    /// Gives a task built for `round` of `run` what it kept before a restart, if it
    /// saved anything in an earlier round of the same run (a state from another run, or
    /// from this round or later, is a past run's of a job by the same id); a file that
    /// does not fit is reported and the task starts afresh.
    fn restore_kept_state(&self, run: &JobRun, task: &dyn LocalTask, round: u64) {
        let Some(dir) = &self.config.results_dir else {
            return;
        };
        let job_id = &run.job_id;
        let restored = match kept_state::kept_before(dir, run, round) {
            Ok(None) => return,
            Ok(Some(values)) => task.restore_state(&values).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match restored {
            Ok(()) => {
                tracing::info!(store = %self.config.store_id, "job '{job_id}': carrying on from the state kept before a restart")
            }
            Err(e) => {
                tracing::warn!(store = %self.config.store_id, "job '{job_id}': starting afresh, the kept state does not fit: {e}")
            }
        }
    }

    /// Where what the task keeps between rounds is saved (the store's results folder),
    /// when the agent has one and the job is named.
    fn kept_state_saver(&self, job: Option<&v1::JobContext>, round: u64) -> Option<KeptStateSaver> {
        let dir = self.config.results_dir.clone()?;
        // The job context was checked when its task was built for this round.
        Some(KeptStateSaver {
            dir,
            run: JobRun::of(job?),
            round,
            store_id: self.config.store_id.clone(),
        })
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<CurrentTask>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the job's task and tells the coordinator how many rows it trains on,
    /// or why the store cannot take part (it stays connected for the next job).
    async fn prepare(
        &self,
        s: &mut Session,
        p: v1::PrepareTask,
        summary: &mut AgentSummary,
    ) -> Result<(), AgentError> {
        use v1::submit_ready_request::Answer;
        let (job_id, kind) = match job_from_wire(p.job.as_ref()) {
            Ok((id, spec)) => (id, spec.kind().name().to_string()),
            Err(e) => (String::new(), format!("unreadable task ({e})")),
        };
        let promised = p.job.as_ref().and_then(|j| j.privacy.as_ref());
        let answer = if let Err(reason) = self.config.privacy_floor.check_job(promised) {
            Answer::CannotServe(reason)
        } else if p.describe {
            self.describe(p.job.as_ref()).await
        } else {
            match self.task_for(p.job.as_ref(), None).await {
                Ok(task) => Answer::NumTrainExamples(task.num_train_examples()),
                Err(AgentError::CannotServe { reason, .. }) => Answer::CannotServe(reason),
                Err(e) => Answer::CannotServe(e.to_string()),
            }
        };
        if let Answer::CannotServe(reason) = &answer {
            tracing::info!(store = %self.config.store_id, "sitting job '{job_id}' out: {reason}");
        }
        let report = JobReport {
            job_id,
            task: kind,
            cannot_serve: match &answer {
                Answer::CannotServe(r) => Some(r.clone()),
                Answer::NumTrainExamples(_) | Answer::TableSummary(_) => None,
            },
            results: None,
        };
        // A restarted coordinator asks again for the job it resumes: one report a job.
        match summary.jobs.last_mut() {
            Some(last) if last.job_id == report.job_id => *last = report,
            _ => summary.jobs.push(report),
        }
        let req = v1::SubmitReadyRequest {
            store_id: self.config.store_id.clone(),
            session_id: s.session_id.clone(),
            task_id: p.task_id,
            answer: Some(answer),
        };
        match s.client.submit_ready(req).await {
            Ok(_) => Ok(()),
            Err(st) if is_stale(&st) => Ok(()),
            Err(st) => Err(classify(&st)),
        }
    }

    /// Aggregates of the store's table for the job's encoding (only aggregates: counts,
    /// sums, categories common enough), or why the store cannot take part.
    async fn describe(&self, job: Option<&v1::JobContext>) -> v1::submit_ready_request::Answer {
        use v1::submit_ready_request::Answer;
        match job_from_wire(job) {
            Ok((_, spec)) => match self.tasks.describe(&spec).await {
                Ok(summary) => Answer::TableSummary(summary_to_wire(&summary)),
                Err(reason) => Answer::CannotServe(reason),
            },
            Err(e) => Answer::CannotServe(format!("unreadable task ({e})")),
        }
    }

    async fn train(
        &self,
        s: &mut Session,
        t: v1::TrainTask,
        summary: &mut AgentSummary,
    ) -> Result<(), AgentError> {
        let task = self.task_for(t.job.as_ref(), Some(t.round)).await?;
        let (global, work, precision) =
            read_train_task(task.as_ref(), &t, self.config.max_message_bytes)?;
        let privacy = t.privacy;
        if let Some(p) = &privacy {
            check_privacy(p)?;
        }
        let floor = &self.config.privacy_floor;
        if let Err(reason) = floor.check_round(privacy.as_ref(), t.secure.as_ref()) {
            tracing::warn!(store = %self.config.store_id, "refusing round {}: {reason}", t.round);
            summary.rounds_refused += 1;
            return Ok(());
        }
        let worker = task.clone();
        // The training loss goes out only with a plain update: beside a clipped and
        // noised or a masked one it would be a figure the protection does not cover.
        let report_loss = privacy.is_none() && t.secure.is_none();
        let keeper = self.kept_state_saver(t.job.as_ref(), t.round);
        let (update, loss) = tokio::task::spawn_blocking(move || {
            let loss = report_loss.then(|| worker.train_loss(&global)).flatten();
            let mut update = worker.compute_update(&global, &work)?;
            if let Some(p) = &privacy {
                protect_update(&mut update, p);
            }
            // A file write: on the training thread, not the runtime's.
            if let (Some(keeper), Some(values)) = (keeper, worker.kept_state()) {
                keeper.save(&values);
            }
            Ok::<_, fedretail_models::TaskError>((update, loss))
        })
        .await
        .map_err(|e| AgentError::BadTask(format!("training thread failed: {e}")))??;
        if let Some(params) = &t.secure {
            let (input, message) = begin_secure(params, &update, &self.config.secagg_trust)?;
            s.secure = Some(PendingSecure {
                task_id: t.task_id.clone(),
                input,
            });
            if self.send_secagg(s, &t.task_id, t.round, message).await? {
                summary.rounds_trained += 1;
            }
            return Ok(());
        }
        let req = v1::SubmitUpdateRequest {
            store_id: self.config.store_id.clone(),
            session_id: s.session_id.clone(),
            task_id: t.task_id.clone(),
            round: t.round,
            update: Some(encode_update(&update, precision)),
            num_examples: task.num_train_examples(),
            metrics: loss
                .map(|l| (fedretail_proto::TRAIN_LOSS.to_string(), l))
                .into_iter()
                .collect(),
        };
        match s.client.submit_update(req).await {
            Ok(_) => {
                summary.rounds_trained += 1;
                s.refused_in_a_row = 0;
            }
            // The round closed without us, or this was a resend: move on.
            Err(st) if is_stale(&st) => {}
            Err(st) => return self.refused_update(s, t.round, &st, summary),
        }
        Ok(())
    }

    /// A refused update loses this store its round, not the job: it says why and
    /// goes on, unless its updates have been refused `MAX_REFUSED_IN_A_ROW` times.
    fn refused_update(
        &self,
        s: &mut Session,
        round: u64,
        status: &tonic::Status,
        summary: &mut AgentSummary,
    ) -> Result<(), AgentError> {
        let e = ServiceError::from_status(status);
        if !matches!(e.kind, ErrorKind::InvalidUpdate | ErrorKind::TooLarge) {
            return Err(classify(status));
        }
        s.refused_in_a_row += 1;
        summary.updates_refused += 1;
        if s.refused_in_a_row >= MAX_REFUSED_IN_A_ROW {
            return Err(AgentError::Refused(e));
        }
        tracing::warn!(store = %self.config.store_id, "round {round}: update refused, sitting the round out: {}", e.message);
        Ok(())
    }

    async fn secure_step(
        &self,
        s: &mut Session,
        step: v1::SecAggStep,
        summary: &mut AgentSummary,
    ) -> Result<(), AgentError> {
        // A step for a round this store no longer holds secrets for: it has dropped
        // out of that round, which the protocol tolerates.
        let Some(mut pending) = s.secure.take() else {
            return Ok(());
        };
        if pending.task_id != step.task_id {
            return Ok(());
        }
        let (pending, result) = tokio::task::spawn_blocking(move || {
            let result = secure_step(&mut pending.input, step.step);
            (pending, result)
        })
        .await
        .map_err(|e| AgentError::BadTask(format!("secure aggregation thread failed: {e}")))?;
        match result {
            Ok((message, last)) => {
                let task_id = pending.task_id.clone();
                if !last {
                    s.secure = Some(pending);
                }
                self.send_secagg(s, &task_id, step.round, message).await?;
            }
            Err(e) => {
                tracing::warn!(store = %self.config.store_id, "leaving secure round {}: {e}", step.round);
                summary.secure_rounds_abandoned += 1;
            }
        }
        Ok(())
    }

    /// Metrics of the model on the store's held-out data; for the job's final model,
    /// also the store's results, written here and never sent.
    async fn evaluate(
        &self,
        s: &mut Session,
        t: v1::EvaluateTask,
        summary: &mut AgentSummary,
    ) -> Result<(), AgentError> {
        let task = self.task_for(t.job.as_ref(), Some(t.round)).await?;
        let layout =
            layout_from_wire(t.layout.as_ref()).map_err(|e| AgentError::BadTask(e.to_string()))?;
        check_layout(task.as_ref(), &layout)?;
        let global = t
            .global
            .as_ref()
            .ok_or_else(|| AgentError::BadTask("evaluation task has no model".into()))
            .and_then(|g| {
                decode_tensor(g, layout.len(), self.config.max_message_bytes)
                    .map_err(|e| AgentError::BadTask(e.to_string()))
            })?
            .to_f64();
        let keep = match (&self.config.results_dir, t.final_model) {
            (Some(dir), true) => Some(dir.clone()),
            _ => None,
        };
        let job = t.job.clone();
        let (store, version) = (self.config.store_id.clone(), t.round);
        let worker = task.clone();
        let (metrics, written) = tokio::task::spawn_blocking(move || {
            let Some(dir) = keep else {
                return Ok::<_, AgentError>((worker.evaluate(&global)?, None));
            };
            let results = worker.results(&global)?;
            let (job_id, spec) =
                job_from_wire(job.as_ref()).map_err(|e| AgentError::BadTask(e.to_string()))?;
            let model = ModelFile::new(&store, &job_id, spec.spec(), &layout, version, global);
            let path = write_results(&dir, &model, &results)?;
            Ok((results.metrics, Some(path)))
        })
        .await
        .map_err(|e| AgentError::BadTask(format!("evaluation thread failed: {e}")))??;
        if let (Some(path), Some(report)) = (written, summary.jobs.last_mut()) {
            report.results = Some(path);
        }
        let req = v1::SubmitEvaluationRequest {
            store_id: self.config.store_id.clone(),
            session_id: s.session_id.clone(),
            task_id: t.task_id,
            metrics: metrics.into_iter().collect(),
        };
        match s.client.submit_evaluation(req).await {
            Ok(_) => summary.evaluations += 1,
            Err(st) if is_stale(&st) => {}
            Err(st) => return Err(classify(&st)),
        }
        Ok(())
    }

    /// Sends one SecAgg+ message; Ok(false) if the coordinator had moved on.
    async fn send_secagg(
        &self,
        s: &mut Session,
        task_id: &str,
        round: u64,
        message: v1::submit_sec_agg_request::Message,
    ) -> Result<bool, AgentError> {
        let req = v1::SubmitSecAggRequest {
            store_id: self.config.store_id.clone(),
            session_id: s.session_id.clone(),
            task_id: task_id.to_string(),
            round,
            message: Some(message),
        };
        match s.client.submit_sec_agg(req).await {
            Ok(_) => Ok(true),
            Err(st) if is_stale(&st) => {
                s.secure = None;
                Ok(false)
            }
            Err(st) => {
                s.secure = None;
                Err(classify(&st))
            }
        }
    }
}

/// The coordinator moved on (round closed) or already has this message.
fn is_stale(st: &tonic::Status) -> bool {
    matches!(
        ServiceError::from_status(st).kind,
        ErrorKind::StaleTask | ErrorKind::Duplicate
    )
}

fn check_layout(
    task: &dyn LocalTask,
    layout: &fedretail_core::ModelLayout,
) -> Result<(), AgentError> {
    if *layout != task.layout() {
        return Err(AgentError::BadTask(format!(
            "coordinator's model has {} parameters in segments {:?}; this store's task expects {}",
            layout.len(),
            layout
                .segments()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            task.layout().len()
        )));
    }
    Ok(())
}

fn read_train_task(
    task: &dyn LocalTask,
    t: &v1::TrainTask,
    max_bytes: usize,
) -> Result<(Vec<f64>, LocalWork, UpdatePrecision), AgentError> {
    let layout =
        layout_from_wire(t.layout.as_ref()).map_err(|e| AgentError::BadTask(e.to_string()))?;
    check_layout(task, &layout)?;
    let global = t
        .global
        .as_ref()
        .ok_or_else(|| AgentError::BadTask("training task has no model".into()))
        .and_then(|g| {
            decode_tensor(g, layout.len(), max_bytes)
                .map_err(|e| AgentError::BadTask(e.to_string()))
        })?
        .to_f64();
    if let Some(i) = global.iter().position(|v| !v.is_finite()) {
        return Err(AgentError::BadTask(format!(
            "global model value {i} is not finite"
        )));
    }
    let work = work_from_wire(t.work.as_ref())?;
    let precision = match v1::Dtype::try_from(t.update_dtype) {
        Ok(v1::Dtype::F32) => UpdatePrecision::F32,
        _ => UpdatePrecision::F64,
    };
    Ok((global, work, precision))
}

/// The round's work as the coordinator sent it, checked.
fn work_from_wire(work: Option<&v1::train_task::Work>) -> Result<LocalWork, AgentError> {
    Ok(match work {
        Some(v1::train_task::Work::LocalEpochs(e)) => LocalWork::LocalEpochs(sgd_from_wire(e)?),
        Some(v1::train_task::Work::ClusteredLocalEpochs(e)) => {
            LocalWork::ClusteredLocalEpochs(sgd_from_wire(e)?)
        }
        Some(v1::train_task::Work::SecondOrder(_)) => LocalWork::SecondOrderStatistics,
        Some(v1::train_task::Work::ClusterStatistics(_)) => LocalWork::ClusterStatistics,
        Some(v1::train_task::Work::ClusteredSecondOrder(_)) => {
            LocalWork::ClusteredSecondOrderStatistics
        }
        None => return Err(AgentError::BadTask("training task names no work".into())),
    })
}

fn sgd_from_wire(e: &v1::LocalEpochs) -> Result<LocalSgd, AgentError> {
    if !(e.proximal_mu >= 0.0 && e.proximal_mu.is_finite()) {
        return Err(AgentError::BadTask(format!(
            "proximal_mu must be finite and >= 0, got {}",
            e.proximal_mu
        )));
    }
    Ok(LocalSgd {
        epochs: e.epochs.clamp(1, 1000),
        batch_size: e.batch_size.max(1),
        learning_rate: e.learning_rate,
        l2: e.l2,
        proximal_mu: e.proximal_mu,
        seed: e.seed,
        // Bounded like the epochs: a hostile task cannot pin the store's CPU.
        min_steps: e.min_steps.min(100_000),
    })
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

/// Exponential backoff from 100 ms, capped at 30 s, with "equal jitter": a random
/// point in the upper half (`jitter` in [0, 1)), so that stores cut off together do
/// not all knock again at the same moment.
fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = (100u64 << failures.min(9)).min(30_000) as f64;
    Duration::from_millis((base * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sgd_settings_arrive_as_sent_and_a_bad_proximal_term_is_refused() {
        let wire = |mu: f64| {
            v1::train_task::Work::LocalEpochs(v1::LocalEpochs {
                epochs: 3,
                batch_size: 16,
                learning_rate: 0.1,
                l2: 1e-4,
                seed: 9,
                proximal_mu: mu,
                min_steps: 20,
            })
        };
        let expected = LocalWork::LocalEpochs(LocalSgd {
            epochs: 3,
            batch_size: 16,
            learning_rate: 0.1,
            l2: 1e-4,
            proximal_mu: 0.5,
            seed: 9,
            min_steps: 20,
        });
        assert_eq!(work_from_wire(Some(&wire(0.5))).unwrap(), expected);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = work_from_wire(Some(&wire(bad))).unwrap_err().to_string();
            assert!(e.contains("proximal_mu"), "{e}");
        }
        assert!(work_from_wire(None).is_err());
    }

    #[test]
    fn backoff_grows_caps_and_jitters_in_its_upper_half() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(200));
        assert!(backoff(3, 0.0) >= backoff(2, 0.99));
        assert_eq!(backoff(30, 1.0), Duration::from_millis(30_000));
        assert_eq!(backoff(30, 0.0), Duration::from_millis(15_000));
        let draws: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff(8, rand::random())).collect();
        assert!(draws.len() > 10, "jitter spreads the retries: {draws:?}");
    }
}
