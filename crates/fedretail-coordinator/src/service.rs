//! gRPC adapter. Every message from a peer is checked here — session, task, shape,
//! values — before it can reach job state; refusals use the one error mapping of
//! `fedretail-proto`.

use crate::config::{CheckedJob, CoordinatorConfig};
use crate::driver::{CoordinatorEvent, Observer};
use crate::privacy::{RoundPrivacy, SecureRound, SecureStage};
use crate::round::task_id;
use fedretail_core::tabular::TableSummary;
use fedretail_core::{
    validate_update, LocalWork, ModelLayout, ModelParameters, StreamingWeightedSum, TaskMetrics,
    UpdateLimits, UpdatePrecision,
};
use fedretail_proto::secagg as wire;
use fedretail_proto::v1::{self, coordinator_server::Coordinator};
use fedretail_proto::{
    decode_tensor, encode_f64, job_to_wire, layout_to_wire, summary_from_wire, ErrorKind,
    ServiceError, PROTOCOL_VERSION,
};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tonic::{Request, Response, Status};

/// A store's answer to a prepare (or describe) task: its training rows, or why it sits
/// the job out. A description that does not check out sits the store out with the
/// reason; an answer of the wrong kind is refused.
fn read_ready_answer(
    slot: &mut JobSlot,
    store: &str,
    task_id: &str,
    answer: Option<v1::submit_ready_request::Answer>,
) -> Result<(Option<u64>, Option<String>), Status> {
    use v1::submit_ready_request::Answer;
    match (answer, slot.describe) {
        (Some(Answer::NumTrainExamples(n)), false) => Ok((Some(n), None)),
        (Some(Answer::TableSummary(text)), true) => match summary_from_wire(&text) {
            Ok(summary) => {
                let n = summary.rows;
                slot.summaries.insert(store.to_string(), summary);
                Ok((Some(n), None))
            }
            Err(e) => Ok((None, Some(format!("its description was refused: {e}")))),
        },
        (Some(Answer::CannotServe(reason)), _) => Ok((None, Some(reason))),
        (answer, describe) => {
            let wanted = if describe {
                "a table summary"
            } else {
                "a row count"
            };
            let got = match answer {
                None => "nothing",
                Some(Answer::TableSummary(_)) => "a table summary",
                Some(_) => "a row count",
            };
            Err(err(
                ErrorKind::InvalidUpdate,
                format!("'{store}' answered prepare task '{task_id}' with {got}; it needs {wanted} or a reason"),
            ))
        }
    }
}

/// Longest a poll may wait before answering `Wait`.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
const MAX_METRICS: usize = 64;
const MAX_NAME_LEN: usize = 128;
/// Longest reason a store may give for not taking part in a job.
const MAX_REASON_LEN: usize = 1024;
/// A store that has not polled for this long is not offered work.
const LIVENESS: Duration = Duration::from_secs(90);

pub(crate) struct StoreEntry {
    pub session_id: String,
    pub business_type: String,
    pub last_seen: Instant,
    pub saw_finish: bool,
}

/// The job running now, as the handlers see it: what every task carries, and which
/// stores are ready for it.
pub(crate) struct JobSlot {
    pub job_id: String,
    pub wire: v1::JobContext,
    pub layout: ModelLayout,
    /// The prepare task each store was given.
    pub prepare: BTreeMap<String, String>,
    /// Stores ready to take part, with their training rows.
    pub ready: BTreeMap<String, u64>,
    /// Stores that cannot take part, with their reason.
    pub cannot: BTreeMap<String, String>,
    /// The stores describe their data first (a tabular task's encoding).
    pub describe: bool,
    /// Their descriptions, when they do.
    pub summaries: BTreeMap<String, TableSummary>,
}

pub(crate) struct RoundState {
    pub round: u64,
    /// Selected store -> its task id for this round.
    pub tasks: BTreeMap<String, String>,
    pub weights: BTreeMap<String, f64>,
    pub received: BTreeSet<String>,
    pub aggregator: StreamingWeightedSum,
    pub update_len: usize,
    pub global_wire: v1::Tensor,
    pub work: LocalWork,
    pub precision: UpdatePrecision,
    /// Clipping, noise and secure aggregation for this round, if the job asks for any.
    pub privacy: Option<RoundPrivacy>,
}

impl RoundState {
    pub fn secure(&self) -> Option<&SecureRound> {
        self.privacy.as_ref().and_then(|p| p.secure.as_ref())
    }

    pub fn secure_mut(&mut self) -> Option<&mut SecureRound> {
        self.privacy.as_mut().and_then(|p| p.secure.as_mut())
    }
}

pub(crate) struct EvalState {
    pub round: u64,
    pub tasks: BTreeMap<String, String>,
    pub results: BTreeMap<String, TaskMetrics>,
    pub global_wire: v1::Tensor,
}

pub(crate) enum Phase {
    Idle,
    Training(Box<RoundState>),
    Evaluating(EvalState),
    Finished(String),
}

pub(crate) struct JobState {
    pub stores: BTreeMap<String, StoreEntry>,
    pub phase: Phase,
    pub job: Option<JobSlot>,
}

/// State shared by the gRPC handlers and the job driver: the store registry, which
/// outlives jobs, and the current job's slot and phase.
pub struct Shared {
    credentials: HashMap<String, String>,
    open_token: Option<String>,
    max_update_bytes: usize,
    pub(crate) state: Mutex<JobState>,
    /// Bumped whenever the phase changes, to wake long-polls.
    pub(crate) phase_tx: watch::Sender<u64>,
    /// Wakes the driver when a store registers or a reply arrives.
    pub(crate) progress: Notify,
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    pub(crate) observer: Observer,
}

impl Shared {
    pub fn new(config: &CoordinatorConfig, observer: Observer) -> Self {
        let (phase_tx, _) = watch::channel(0);
        Shared {
            credentials: config
                .stores
                .iter()
                .map(|c| (c.store_id.clone(), c.token.clone()))
                .collect(),
            open_token: config.open_token.clone(),
            max_update_bytes: config.max_message_bytes,
            state: Mutex::new(JobState {
                stores: BTreeMap::new(),
                phase: Phase::Idle,
                job: None,
            }),
            phase_tx,
            progress: Notify::new(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            observer,
        }
    }

    /// Wakes at the next registration or reply, or at `until`.
    pub(crate) async fn wait_progress(&self, until: tokio::time::Instant) {
        let _ = tokio::time::timeout_at(until, self.progress.notified()).await;
    }

    /// Makes `job` the current job: every store is asked to prepare it.
    pub(crate) fn open_job(&self, job: &CheckedJob) {
        let mut state = self.lock();
        state.job = Some(JobSlot {
            job_id: job.job_id().to_string(),
            wire: job_to_wire(job.job_id(), job.task.spec()),
            layout: job.layout.clone(),
            prepare: BTreeMap::new(),
            ready: BTreeMap::new(),
            cannot: BTreeMap::new(),
            describe: job.task.needs_description(),
            summaries: BTreeMap::new(),
        });
        state.phase = Phase::Idle;
        drop(state);
        self.phase_tx.send_modify(|v| *v += 1);
    }

    /// Ends the current job; returns the stores that could not take part, and why.
    pub(crate) fn close_job(&self) -> Vec<(String, String)> {
        let slot = self.lock().job.take();
        self.phase_tx.send_modify(|v| *v += 1);
        slot.map(|s| s.cannot.into_iter().collect())
            .unwrap_or_default()
    }

    /// The descriptions the stores sent for the current job, in store order.
    pub(crate) fn summaries(&self) -> Vec<TableSummary> {
        self.lock()
            .job
            .as_ref()
            .map(|j| j.summaries.values().cloned().collect())
            .unwrap_or_default()
    }

    /// (ready stores, stores that answered the prepare task either way).
    pub(crate) fn readiness(&self) -> (usize, usize) {
        let state = self.lock();
        state
            .job
            .as_ref()
            .map_or((0, 0), |j| (j.ready.len(), j.ready.len() + j.cannot.len()))
    }

    /// Stores ready for the current job that are still polling.
    pub(crate) fn ready_stores(&self) -> Vec<String> {
        let state = self.lock();
        let Some(job) = state.job.as_ref() else {
            return Vec::new();
        };
        job.ready
            .keys()
            .filter(|s| {
                state
                    .stores
                    .get(*s)
                    .is_some_and(|e| e.last_seen.elapsed() < LIVENESS)
            })
            .cloned()
            .collect()
    }

    /// Training rows of each ready store.
    pub(crate) fn ready_counts(&self) -> BTreeMap<String, u64> {
        self.lock()
            .job
            .as_ref()
            .map(|j| j.ready.clone())
            .unwrap_or_default()
    }

    pub(crate) fn all_heard_finish(&self) -> bool {
        self.lock()
            .stores
            .values()
            .all(|e| e.saw_finish || e.last_seen.elapsed() > LIVENESS)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobState> {
        // A handler that panicked mid-update cannot leave the aggregate half-written
        // (pushes are all-or-nothing), so the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
        self.phase_tx.send_modify(|v| *v += 1);
    }

    pub(crate) fn global_tensor(params: &ModelParameters) -> v1::Tensor {
        encode_f64(params.values())
    }

    fn count_up(&self, m: &impl Message) {
        self.bytes_up
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
    }

    fn count_down(&self, m: &impl Message) {
        self.bytes_down
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
    }
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> Status {
    ServiceError::new(kind, msg).to_status()
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_store_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn new_session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService { shared }
    }

    /// The store's entry if the session is current; refreshes its liveness.
    fn check_session(state: &mut JobState, store_id: &str, session_id: &str) -> Result<(), Status> {
        match state.stores.get_mut(store_id) {
            None => Err(err(ErrorKind::UnknownStore, format!("store '{store_id}' has not registered with this coordinator"))),
            Some(e) if !constant_time_eq(&e.session_id, session_id) => Err(err(
                ErrorKind::UnknownStore,
                format!("session of store '{store_id}' is not current (the store registered again since); register again"),
            )),
            Some(e) => {
                e.last_seen = Instant::now();
                Ok(())
            }
        }
    }

    fn task_for(
        &self,
        state: &mut JobState,
        store_id: &str,
    ) -> Option<v1::poll_task_response::Outcome> {
        use v1::poll_task_response::Outcome;
        if let Some(prepare) = Self::prepare_for(state, store_id) {
            return Some(Outcome::Prepare(prepare));
        }
        let slot = state.job.as_ref();
        match &state.phase {
            Phase::Training(rs) => {
                let slot = slot?;
                let task_id = rs.tasks.get(store_id)?;
                if let Some(sec) = rs.secure() {
                    if sec.answered.contains(store_id) || !sec.expected.contains(store_id) {
                        return None;
                    }
                    if sec.stage != SecureStage::Advertising {
                        return Some(Outcome::Secagg(v1::SecAggStep {
                            task_id: task_id.clone(),
                            round: rs.round,
                            step: sec.outbox.get(store_id).cloned(),
                        }));
                    }
                } else if rs.received.contains(store_id) {
                    return None;
                }
                Some(Outcome::Train(Self::train_task(
                    slot, rs, store_id, task_id,
                )))
            }
            Phase::Evaluating(es) => {
                let slot = slot?;
                let task_id = es.tasks.get(store_id)?;
                if es.results.contains_key(store_id) {
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
            Phase::Finished(reason) => {
                if let Some(e) = state.stores.get_mut(store_id) {
                    e.saw_finish = true;
                }
                let reason = reason.clone();
                self.shared.progress.notify_one();
                Some(Outcome::Finished(v1::JobFinished { reason }))
            }
            Phase::Idle => None,
        }
    }

    /// The current job's prepare task, for a store that has not answered it yet.
    fn prepare_for(state: &mut JobState, store_id: &str) -> Option<v1::PrepareTask> {
        if matches!(state.phase, Phase::Finished(_)) {
            return None;
        }
        let slot = state.job.as_mut()?;
        if slot.ready.contains_key(store_id) || slot.cannot.contains_key(store_id) {
            return None;
        }
        let job_id = slot.job_id.clone();
        let task_id = slot
            .prepare
            .entry(store_id.to_string())
            .or_insert_with(|| {
                let kind = if slot.describe { "describe" } else { "prepare" };
                task_id(&job_id, kind, 0, store_id)
            })
            .clone();
        Some(v1::PrepareTask {
            task_id,
            job: Some(slot.wire.clone()),
            describe: slot.describe,
        })
    }

    fn train_task(slot: &JobSlot, rs: &RoundState, store_id: &str, task_id: &str) -> v1::TrainTask {
        let work = match &rs.work {
            LocalWork::LocalEpochs {
                epochs,
                batch_size,
                learning_rate,
                l2,
                seed,
            } => v1::train_task::Work::LocalEpochs(v1::LocalEpochs {
                epochs: *epochs,
                batch_size: *batch_size,
                learning_rate: *learning_rate,
                l2: *l2,
                seed: *seed,
            }),
            LocalWork::SecondOrderStatistics => {
                v1::train_task::Work::SecondOrder(v1::SecondOrderStatistics {})
            }
            LocalWork::ClusterStatistics => {
                v1::train_task::Work::ClusterStatistics(v1::ClusterStatistics {})
            }
        };
        let secure = rs.secure().map(|sec| v1::SecureAggregation {
            store_index: sec.index.get(store_id).copied().unwrap_or(u32::MAX),
            ..sec.params
        });
        let privacy = rs.privacy.as_ref().map(|p| v1::UpdatePrivacy {
            // Only a secure round leaves the weighting to the store.
            weight: if secure.is_some() {
                p.weights.get(store_id).copied().unwrap_or(0.0)
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
            work: Some(work),
            update_dtype: match rs.precision {
                UpdatePrecision::F32 => v1::Dtype::F32 as i32,
                UpdatePrecision::F64 => v1::Dtype::F64 as i32,
            },
            privacy,
            secure,
        }
    }

    fn check_metrics(
        store_id: &str,
        metrics: &HashMap<String, f64>,
    ) -> Result<TaskMetrics, Status> {
        if metrics.len() > MAX_METRICS {
            return Err(err(
                ErrorKind::InvalidUpdate,
                format!(
                    "store '{store_id}' sent {} metrics; at most {MAX_METRICS}",
                    metrics.len()
                ),
            ));
        }
        let mut out = TaskMetrics::new();
        for (k, v) in metrics {
            if k.len() > MAX_NAME_LEN {
                return Err(err(
                    ErrorKind::InvalidUpdate,
                    format!("store '{store_id}' sent a metric name of {} bytes", k.len()),
                ));
            }
            if !v.is_finite() {
                return Err(err(
                    ErrorKind::InvalidUpdate,
                    format!("store '{store_id}' sent metric '{k}' = {v}, which is not finite"),
                ));
            }
            out.insert(k.clone(), *v);
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_store(
        &self,
        request: Request<v1::RegisterStoreRequest>,
    ) -> Result<Response<v1::RegisterStoreResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(err(
                ErrorKind::Incompatible,
                format!(
                    "store speaks protocol version {}, this coordinator speaks {PROTOCOL_VERSION}",
                    req.protocol_version
                ),
            ));
        }
        if !valid_store_id(&req.store_id) {
            return Err(err(
                ErrorKind::InvalidUpdate,
                "store id must be 1-128 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if !self.shared.credentials.is_empty() {
            match self.shared.credentials.get(&req.store_id) {
                None => {
                    return Err(err(
                        ErrorKind::UnknownStore,
                        format!("store '{}' is not part of this network", req.store_id),
                    ))
                }
                Some(t) if !constant_time_eq(t, &req.token) => {
                    return Err(err(
                        ErrorKind::Unauthenticated,
                        format!("wrong token for store '{}'", req.store_id),
                    ))
                }
                Some(_) => {}
            }
        } else if let Some(t) = &self.shared.open_token {
            if !constant_time_eq(t, &req.token) {
                return Err(err(
                    ErrorKind::Unauthenticated,
                    format!("wrong enrolment token from store '{}'", req.store_id),
                ));
            }
        }
        let session_id = new_session_id();
        let (count, job_id) = {
            let mut state = self.shared.lock();
            state.stores.insert(
                req.store_id.clone(),
                StoreEntry {
                    session_id: session_id.clone(),
                    business_type: req.business_type.chars().take(MAX_NAME_LEN).collect(),
                    last_seen: Instant::now(),
                    saw_finish: false,
                },
            );
            let job_id = state
                .job
                .as_ref()
                .map(|j| j.job_id.clone())
                .unwrap_or_default();
            (state.stores.len(), job_id)
        };
        (self.shared.observer)(&CoordinatorEvent::StoreRegistered {
            store_id: req.store_id.clone(),
            registered: count,
        });
        self.shared.progress.notify_one();
        let resp = v1::RegisterStoreResponse {
            session_id,
            job_id,
            protocol_version: PROTOCOL_VERSION,
        };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }

    async fn poll_task(
        &self,
        request: Request<v1::PollTaskRequest>,
    ) -> Result<Response<v1::PollTaskResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let mut phase_rx = self.shared.phase_tx.subscribe();
        let wait = Duration::from_millis(req.wait_millis as u64).min(MAX_POLL_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let outcome = {
                let mut state = self.shared.lock();
                Self::check_session(&mut state, &req.store_id, &req.session_id)?;
                phase_rx.borrow_and_update();
                self.task_for(&mut state, &req.store_id)
            };
            if let Some(outcome) = outcome {
                let resp = v1::PollTaskResponse {
                    outcome: Some(outcome),
                };
                self.shared.count_down(&resp);
                return Ok(Response::new(resp));
            }
            match tokio::time::timeout_at(deadline, phase_rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        let resp = v1::PollTaskResponse {
            outcome: Some(v1::poll_task_response::Outcome::Wait(v1::Wait {
                retry_after_millis: 100,
            })),
        };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }

    async fn submit_update(
        &self,
        request: Request<v1::SubmitUpdateRequest>,
    ) -> Result<Response<v1::SubmitUpdateResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        // 1. Is this the store's current task? (cheap, under the lock)
        let (update_len, max_norm) = {
            let mut state = self.shared.lock();
            Self::check_session(&mut state, store, &req.session_id)?;
            let len = current_task_len(&state.phase, store, &req.task_id, req.round)?;
            let privacy = match &state.phase {
                Phase::Training(rs) => rs.privacy.as_ref(),
                _ => None,
            };
            if privacy.is_some_and(|p| p.secure.is_some()) {
                return Err(err(
                    ErrorKind::InvalidUpdate,
                    format!("round {} runs under secure aggregation: '{store}' must send SecAgg+ messages, not a plain update", req.round),
                ));
            }
            // A clipped update must come in clipped (f32 rounding aside); local noise
            // makes the norm unknowable, so then only the other checks apply.
            let max_norm = privacy
                .filter(|p| p.update.clip > 0.0 && p.update.local_noise_stddev == 0.0)
                .map(|p| p.update.clip * (1.0 + 1e-5));
            (len, max_norm)
        };
        // 2. Decode and validate outside the lock: O(model size) work.
        let tensor = req.update.as_ref().ok_or_else(|| {
            err(
                ErrorKind::InvalidUpdate,
                format!("update from '{store}' carries no tensor"),
            )
        })?;
        let update =
            decode_tensor(tensor, update_len, self.shared.max_update_bytes).map_err(|e| {
                err(
                    ErrorKind::InvalidUpdate,
                    format!("update from '{store}' for round {}: {e}", req.round),
                )
            })?;
        let limits = UpdateLimits {
            max_l2_norm: max_norm,
        };
        validate_update(&update, update_len, &limits).map_err(|e| {
            err(
                ErrorKind::InvalidUpdate,
                format!("update from '{store}' for round {}: {e}", req.round),
            )
        })?;
        Self::check_metrics(store, &req.metrics)?;
        // 3. Fold it in, re-checking: the round may have closed meanwhile.
        let (received, selected) = {
            let mut state = self.shared.lock();
            current_task_len(&state.phase, store, &req.task_id, req.round)?;
            let Phase::Training(rs) = &mut state.phase else {
                return Err(err(ErrorKind::StaleTask, "no round is in progress"));
            };
            let weight = rs.weights.get(store).copied().unwrap_or(0.0);
            rs.aggregator.push(update, weight).map_err(|e| {
                err(
                    ErrorKind::InvalidUpdate,
                    format!("update from '{store}': {e}"),
                )
            })?;
            rs.received.insert(store.to_string());
            (rs.received.len(), rs.tasks.len())
        };
        (self.shared.observer)(&CoordinatorEvent::UpdateAccepted {
            round: req.round,
            store_id: store.to_string(),
            received,
            selected,
        });
        self.shared.progress.notify_one();
        let resp = v1::SubmitUpdateResponse { accepted: true };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }

    async fn submit_ready(
        &self,
        request: Request<v1::SubmitReadyRequest>,
    ) -> Result<Response<v1::SubmitReadyResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        let (job_id, rows, reason) = {
            let mut state = self.shared.lock();
            Self::check_session(&mut state, store, &req.session_id)?;
            let Some(slot) = state.job.as_mut() else {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!(
                        "no job is running; '{store}' answered task '{}'",
                        req.task_id
                    ),
                ));
            };
            if slot.prepare.get(store) != Some(&req.task_id) {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!(
                        "prepare task '{}' from '{store}' is not current (job '{}')",
                        req.task_id, slot.job_id
                    ),
                ));
            }
            if slot.ready.contains_key(store) || slot.cannot.contains_key(store) {
                return Err(err(
                    ErrorKind::Duplicate,
                    format!("'{store}' already answered job '{}'", slot.job_id),
                ));
            }
            let (rows, reason) = read_ready_answer(slot, store, &req.task_id, req.answer)?;
            match (rows, reason) {
                (Some(n), _) => {
                    slot.ready.insert(store.to_string(), n);
                    (slot.job_id.clone(), Some(n), None)
                }
                (None, reason) => {
                    let reason: String = reason
                        .unwrap_or_default()
                        .chars()
                        .take(MAX_REASON_LEN)
                        .collect();
                    slot.cannot.insert(store.to_string(), reason.clone());
                    (slot.job_id.clone(), None, Some(reason))
                }
            }
        };
        (self.shared.observer)(&CoordinatorEvent::StoreReady {
            job_id,
            store_id: store.to_string(),
            num_train_examples: rows,
            reason,
        });
        self.shared.progress.notify_one();
        let resp = v1::SubmitReadyResponse { accepted: true };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }

    async fn submit_evaluation(
        &self,
        request: Request<v1::SubmitEvaluationRequest>,
    ) -> Result<Response<v1::SubmitEvaluationResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        let metrics = Self::check_metrics(store, &req.metrics)?;
        {
            let mut state = self.shared.lock();
            Self::check_session(&mut state, store, &req.session_id)?;
            let Phase::Evaluating(es) = &mut state.phase else {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!(
                        "evaluation task '{}' from '{store}' is not current",
                        req.task_id
                    ),
                ));
            };
            match es.tasks.get(store) {
                Some(t) if *t == req.task_id => {}
                _ => {
                    return Err(err(
                        ErrorKind::StaleTask,
                        format!(
                            "evaluation task '{}' from '{store}' is not current",
                            req.task_id
                        ),
                    ))
                }
            }
            if es.results.contains_key(store) {
                return Err(err(
                    ErrorKind::Duplicate,
                    format!("evaluation from '{store}' was already received"),
                ));
            }
            es.results.insert(store.to_string(), metrics);
        }
        self.shared.progress.notify_one();
        let resp = v1::SubmitEvaluationResponse { accepted: true };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }
    async fn submit_sec_agg(
        &self,
        request: Request<v1::SubmitSecAggRequest>,
    ) -> Result<Response<v1::SubmitSecAggResponse>, Status> {
        use v1::submit_sec_agg_request::Message;
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        let bad = |e: String| {
            err(
                ErrorKind::InvalidUpdate,
                format!(
                    "SecAgg+ message from '{store}' for round {}: {e}",
                    req.round
                ),
            )
        };
        {
            let mut state = self.shared.lock();
            Self::check_session(&mut state, store, &req.session_id)?;
            let Phase::Training(rs) = &mut state.phase else {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!("SecAgg+ message from '{store}' (task '{}') is not current: no round is in progress", req.task_id),
                ));
            };
            if rs.tasks.get(store).map(String::as_str) != Some(req.task_id.as_str())
                || rs.round != req.round
            {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!("SecAgg+ message from '{store}' for task '{}' (round {}) is not current: round {} is in progress", req.task_id, req.round, rs.round),
                ));
            }
            let Some(sec) = rs.secure_mut() else {
                return Err(bad("this round does not run secure aggregation".into()));
            };
            let index = sec
                .index
                .get(store)
                .copied()
                .ok_or_else(|| bad("the store is not in this round".into()))?;
            if sec.answered.contains(store) {
                return Err(err(
                    ErrorKind::Duplicate,
                    format!(
                        "'{store}' already sent its {} for round {} (replay)",
                        sec.stage.message(),
                        req.round
                    ),
                ));
            }
            if !sec.expected.contains(store) {
                return Err(err(
                    ErrorKind::StaleTask,
                    format!(
                        "'{store}' fell out of round {}'s secure aggregation and cannot rejoin it",
                        req.round
                    ),
                ));
            }
            let claims = |i: u32| {
                if i == index {
                    Ok(())
                } else {
                    Err(bad(format!(
                        "the message claims store index {i}, the store's index is {index}"
                    )))
                }
            };
            let stage = sec.stage;
            let Some(server) = sec.server.as_mut() else {
                return Err(err(
                    ErrorKind::StaleTask,
                    "the secure aggregation has finished",
                ));
            };
            let result = match (stage, req.message) {
                (SecureStage::Advertising, Some(Message::Advertisement(a))) => {
                    claims(a.store)?;
                    let ad = wire::advertisement_from_wire(&a).map_err(|e| bad(e.to_string()))?;
                    server.receive_advertisement(ad)
                }
                (SecureStage::SharingKeys, Some(Message::ShareKeys(m))) => {
                    claims(m.store)?;
                    let m = wire::share_keys_from_wire(m).map_err(|e| bad(e.to_string()))?;
                    server.receive_share_keys(m)
                }
                (SecureStage::Masking, Some(Message::MaskedInput(m))) => {
                    claims(m.store)?;
                    server.receive_masked_input(&wire::masked_input_from_wire(m))
                }
                (SecureStage::Unmasking, Some(Message::Unmask(m))) => {
                    claims(m.store)?;
                    server.receive_unmask(wire::unmask_response_from_wire(m))
                }
                (stage, other) => {
                    let got = match other {
                        None => "nothing",
                        Some(Message::Advertisement(_)) => "a key advertisement",
                        Some(Message::ShareKeys(_)) => "key shares",
                        Some(Message::MaskedInput(_)) => "a masked input",
                        Some(Message::Unmask(_)) => "unmasking shares",
                    };
                    return Err(err(
                        ErrorKind::StaleTask,
                        format!(
                            "'{store}' sent {got} for round {}, which now expects its {}",
                            req.round,
                            stage.message()
                        ),
                    ));
                }
            };
            result.map_err(|e| bad(e.to_string()))?;
            sec.answered.insert(store.to_string());
            if stage == SecureStage::Advertising {
                rs.received.insert(store.to_string());
            }
        }
        self.shared.progress.notify_one();
        let resp = v1::SubmitSecAggResponse { accepted: true };
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }
}

/// The expected update length if `task_id` is `store`'s current, unanswered task.
fn current_task_len(
    phase: &Phase,
    store: &str,
    task_id: &str,
    round: u64,
) -> Result<usize, Status> {
    let Phase::Training(rs) = phase else {
        return Err(err(
            ErrorKind::StaleTask,
            format!("task '{task_id}' from '{store}' is not current: no round is in progress"),
        ));
    };
    match rs.tasks.get(store) {
        Some(t) if t == task_id && round == rs.round => {
            if rs.received.contains(store) {
                Err(err(ErrorKind::Duplicate, format!("update from '{store}' for round {round} was already received (replay)")))
            } else {
                Ok(rs.update_len)
            }
        }
        Some(_) | None => Err(err(
            ErrorKind::StaleTask,
            format!("task '{task_id}' (round {round}) from '{store}' is not current: round {} is in progress", rs.round),
        )),
    }
}
