//! The round state machine: one job's phases (preparing, training rounds, the final
//! evaluation), each round's selected stores, weights, streaming aggregate and
//! privacy, and every check a store's message must pass before it can change any of
//! that. It is synchronous and knows no network: the gRPC service adapts it (mapping
//! each [`Refusal`] to a status in one place), the driver sequences it and waits, and
//! the in-process runs drive the very same machine without a network.
//!
//! ```text
//! open_job ─► accept_ready* ─► [open_round ─► fold_update* / accept_secagg* ─► close_round]*
//!          ─► open_evaluation ─► accept_evaluation* ─► close_evaluation ─► close_job
//! ```

mod refusal;
mod round;
mod secure;
mod tasks;
mod wire;

pub use refusal::Refusal;
pub use round::{Closed, RoundError, RoundLedger, RoundSetup, TrainOrder};
pub use wire::{WireVerdict, ONE_PASS_MIN_VALUES};

use crate::privacy::{RoundPrivacy, SecureRound};
use fedretail_core::tabular::TableSummary;
use fedretail_core::{
    LocalWork, ModelLayout, ModelParameters, RoundAggregator, TaskMetrics, UpdatePrecision,
};
use fedretail_proto::{encode_f64, v1};
use std::collections::{BTreeMap, BTreeSet, HashMap};

const MAX_METRICS: usize = 64;
const MAX_NAME_LEN: usize = 128;
/// Longest reason a store may give for not taking part in a job.
const MAX_REASON_LEN: usize = 1024;

/// A fresh task id: job, kind, round, store and a random tag, so that no answer to
/// an older task can pass for an answer to this one.
pub(crate) fn task_id(job: &str, kind: &str, round: u64, store: &str) -> String {
    format!("{job}/{kind}/{round}/{store}/{:08x}", rand::random::<u32>())
}

/// The job running now: what every task carries, and which stores are ready for it.
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
    pub aggregator: RoundAggregator,
    pub update_len: usize,
    pub global_wire: v1::Tensor,
    pub work: LocalWork,
    pub precision: UpdatePrecision,
    /// The coordinator clips each update to this norm as it folds it (central DP).
    pub server_clip: Option<f64>,
    /// Clipping, noise and secure aggregation for this round, if the job asks for any.
    pub privacy: Option<RoundPrivacy>,
    /// The ledger's charge for this attempt, made before any task went out (stores
    /// noise their own updates).
    pub charged: Option<fedretail_privacy::LedgerEntry>,
    /// Weighted sum of the training losses stores sent with plain updates, and the weight.
    pub loss: (f64, f64),
    /// Updates taken in their wire bytes, waiting for their batch's verdict, by ticket.
    pub awaiting: BTreeMap<u64, wire::Awaiting>,
    pub next_ticket: u64,
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

/// A store's answer to a prepare (or describe) task, decoded from the wire.
pub enum ReadyAnswer {
    Nothing,
    Rows(u64),
    /// A table description, or why it could not be read.
    Summary(Result<TableSummary, String>),
    CannotServe(String),
}

/// What a store's answer to the prepare task changed.
pub struct Readiness {
    pub job_id: String,
    /// Its training rows when it takes part.
    pub rows: Option<u64>,
    /// Why it does not, when it does not.
    pub reason: Option<String>,
}

/// One job's state, from its prepare task to its final evaluation.
pub struct RoundMachine {
    pub(crate) phase: Phase,
    pub(crate) job: Option<JobSlot>,
    /// Most training rows a store may claim (its update's weight).
    pub(crate) max_store_rows: u64,
}

impl Default for RoundMachine {
    fn default() -> Self {
        RoundMachine {
            phase: Phase::Idle,
            job: None,
            max_store_rows: crate::config::DEFAULT_MAX_STORE_ROWS,
        }
    }
}

impl RoundMachine {
    /// A machine for a job whose stores are all ready already, with their training
    /// rows: how the in-process runs start.
    pub fn with_ready_stores(
        job_id: &str,
        layout: ModelLayout,
        ready: BTreeMap<String, u64>,
    ) -> Self {
        let wire = v1::JobContext {
            job_id: job_id.to_string(),
            ..Default::default()
        };
        let mut m = RoundMachine::default();
        m.open_job(job_id, wire, layout, false);
        if let Some(slot) = m.job.as_mut() {
            slot.ready = ready;
        }
        m
    }

    /// Makes a job current: every store is asked to prepare (or describe) it.
    pub(crate) fn open_job(
        &mut self,
        job_id: &str,
        wire: v1::JobContext,
        layout: ModelLayout,
        describe: bool,
    ) {
        self.job = Some(JobSlot {
            job_id: job_id.to_string(),
            wire,
            layout,
            prepare: BTreeMap::new(),
            ready: BTreeMap::new(),
            cannot: BTreeMap::new(),
            describe,
            summaries: BTreeMap::new(),
        });
        self.phase = Phase::Idle;
    }

    /// Ends the current job; returns the stores that could not take part, and why.
    pub(crate) fn close_job(&mut self) -> Vec<(String, String)> {
        self.job
            .take()
            .map(|s| s.cannot.into_iter().collect())
            .unwrap_or_default()
    }

    pub(crate) fn finish(&mut self, status: String) {
        self.phase = Phase::Finished(status);
    }

    /// The descriptions the stores sent for the current job, in store order.
    pub(crate) fn summaries(&self) -> Vec<TableSummary> {
        self.job
            .as_ref()
            .map(|j| j.summaries.values().cloned().collect())
            .unwrap_or_default()
    }

    /// (ready stores, stores that answered the prepare task either way).
    pub(crate) fn readiness(&self) -> (usize, usize) {
        self.job
            .as_ref()
            .map_or((0, 0), |j| (j.ready.len(), j.ready.len() + j.cannot.len()))
    }

    /// Training rows of each ready store.
    pub fn ready_counts(&self) -> BTreeMap<String, u64> {
        self.job
            .as_ref()
            .map(|j| j.ready.clone())
            .unwrap_or_default()
    }

    pub(crate) fn job_id(&self) -> String {
        self.job
            .as_ref()
            .map(|j| j.job_id.clone())
            .unwrap_or_default()
    }

    /// Records a store's answer to the current job's prepare task.
    pub fn accept_ready(
        &mut self,
        store: &str,
        task_id: &str,
        answer: ReadyAnswer,
    ) -> Result<Readiness, Refusal> {
        let Some(slot) = self.job.as_mut() else {
            return Err(Refusal::NotCurrent(format!(
                "no job is running; '{store}' answered task '{task_id}'"
            )));
        };
        if slot.prepare.get(store).map(String::as_str) != Some(task_id) {
            return Err(Refusal::NotCurrent(format!(
                "prepare task '{task_id}' from '{store}' is not current (job '{}')",
                slot.job_id
            )));
        }
        if slot.ready.contains_key(store) || slot.cannot.contains_key(store) {
            return Err(Refusal::Replay(format!(
                "'{store}' already answered job '{}'",
                slot.job_id
            )));
        }
        let (rows, reason) = match read_ready_answer(slot, store, task_id, answer)? {
            (Some(n), _) if n > self.max_store_rows => (
                None,
                Some(format!(
                    "it claims {n} training rows, more than this network's cap of {} (max_store_rows)",
                    self.max_store_rows
                )),
            ),
            (Some(0), _) => (None, Some("it has no training rows".to_string())),
            answer => answer,
        };
        let job_id = slot.job_id.clone();
        match rows {
            Some(n) => {
                slot.ready.insert(store.to_string(), n);
                Ok(Readiness {
                    job_id,
                    rows,
                    reason: None,
                })
            }
            None => {
                let reason: String = reason
                    .unwrap_or_default()
                    .chars()
                    .take(MAX_REASON_LEN)
                    .collect();
                slot.cannot.insert(store.to_string(), reason.clone());
                Ok(Readiness {
                    job_id,
                    rows: None,
                    reason: Some(reason),
                })
            }
        }
    }

    /// Every ready store in `stores` evaluates `global` as the job's final model.
    pub(crate) fn open_evaluation(
        &mut self,
        stores: &[String],
        model_version: u64,
        global: &ModelParameters,
    ) -> BTreeMap<String, String> {
        let job_id = self.job_id();
        let tasks: BTreeMap<String, String> = stores
            .iter()
            .map(|s| (s.clone(), task_id(&job_id, "evaluate", model_version, s)))
            .collect();
        self.phase = Phase::Evaluating(EvalState {
            round: model_version,
            tasks: tasks.clone(),
            results: BTreeMap::new(),
            global_wire: encode_f64(global.values()),
        });
        tasks
    }

    pub(crate) fn evaluation_done(&self) -> bool {
        matches!(&self.phase, Phase::Evaluating(es) if es.results.len() == es.tasks.len())
    }

    pub(crate) fn close_evaluation(&mut self) -> BTreeMap<String, TaskMetrics> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Evaluating(es) => es.results,
            _ => BTreeMap::new(),
        }
    }

    /// Records a store's metrics for its evaluation task.
    pub fn accept_evaluation(
        &mut self,
        store: &str,
        task_id: &str,
        metrics: &HashMap<String, f64>,
    ) -> Result<(), Refusal> {
        let metrics = check_metrics(store, metrics)?;
        let not_current = || {
            Refusal::NotCurrent(format!(
                "evaluation task '{task_id}' from '{store}' is not current"
            ))
        };
        let Phase::Evaluating(es) = &mut self.phase else {
            return Err(not_current());
        };
        if es.tasks.get(store).map(String::as_str) != Some(task_id) {
            return Err(not_current());
        }
        if es.results.contains_key(store) {
            return Err(Refusal::Replay(format!(
                "evaluation from '{store}' was already received"
            )));
        }
        es.results.insert(store.to_string(), metrics);
        Ok(())
    }
}

/// A store's answer: its training rows, or why it sits the job out. A description
/// that does not check out sits the store out with the reason; an answer of the wrong
/// kind is refused.
fn read_ready_answer(
    slot: &mut JobSlot,
    store: &str,
    task_id: &str,
    answer: ReadyAnswer,
) -> Result<(Option<u64>, Option<String>), Refusal> {
    match (answer, slot.describe) {
        (ReadyAnswer::Rows(n), false) => Ok((Some(n), None)),
        (ReadyAnswer::Summary(Ok(summary)), true) => {
            let n = summary.rows;
            slot.summaries.insert(store.to_string(), summary);
            Ok((Some(n), None))
        }
        (ReadyAnswer::Summary(Err(e)), true) => {
            Ok((None, Some(format!("its description was refused: {e}"))))
        }
        (ReadyAnswer::CannotServe(reason), _) => Ok((None, Some(reason))),
        (answer, describe) => {
            let wanted = if describe {
                "a table summary"
            } else {
                "a row count"
            };
            let got = match answer {
                ReadyAnswer::Nothing => "nothing",
                ReadyAnswer::Summary(_) => "a table summary",
                _ => "a row count",
            };
            Err(Refusal::Malformed(format!(
                "'{store}' answered prepare task '{task_id}' with {got}; it needs {wanted} or a reason"
            )))
        }
    }
}

/// Metrics a store sends: a few, with short names and finite values.
pub(crate) fn check_metrics(
    store: &str,
    metrics: &HashMap<String, f64>,
) -> Result<TaskMetrics, Refusal> {
    if metrics.len() > MAX_METRICS {
        return Err(Refusal::Malformed(format!(
            "store '{store}' sent {} metrics; at most {MAX_METRICS}",
            metrics.len()
        )));
    }
    let mut out = TaskMetrics::new();
    for (k, v) in metrics {
        if k.len() > MAX_NAME_LEN {
            return Err(Refusal::Malformed(format!(
                "store '{store}' sent a metric name of {} bytes",
                k.len()
            )));
        }
        if !v.is_finite() {
            return Err(Refusal::Malformed(format!(
                "store '{store}' sent metric '{k}' = {v}, which is not finite"
            )));
        }
        out.insert(k.clone(), *v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedretail_core::{FedAvg, FedAvgConfig, Segment, UpdateVector};
    use std::time::Duration;

    fn machine() -> (RoundMachine, ModelParameters) {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        let ready = [("a", 10), ("b", 30)]
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        let global = ModelParameters::zeros(layout.clone());
        (
            RoundMachine::with_ready_stores("job", layout, ready),
            global,
        )
    }

    fn open(
        m: &mut RoundMachine,
        strategy: &mut FedAvg,
        global: &ModelParameters,
    ) -> Vec<TrainOrder> {
        let ids = vec!["a".to_string(), "b".to_string()];
        let setup = RoundSetup {
            round: 1,
            global,
            available: &ids,
            privacy: None,
            ledger: None,
            robust: None,
        };
        assert_eq!(m.open_round(strategy, setup).unwrap(), 2);
        m.train_orders()
    }

    #[test]
    fn a_round_folds_checked_updates_and_refuses_the_rest_without_change() {
        let (mut m, global) = machine();
        let mut fedavg = FedAvg::new(FedAvgConfig::default());
        let orders = open(&mut m, &mut fedavg, &global);
        let (a, b) = (&orders[0], &orders[1]);
        let short = UpdateVector::F64(vec![1.0]);
        let check = m.update_check("a", &a.task_id, 1).unwrap();
        assert!(matches!(
            RoundMachine::validate(&check, "a", 1, &short),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            m.update_check("a", "forged", 1),
            Err(Refusal::NotCurrent(_))
        ));
        assert!(matches!(
            m.update_check("a", &a.task_id, 2),
            Err(Refusal::NotCurrent(_))
        ));
        m.fold_update(
            "a",
            &a.task_id,
            1,
            UpdateVector::F64(vec![4.0, 0.0]),
            Some(2.0),
        )
        .unwrap();
        let again = m.fold_update(
            "a",
            &a.task_id,
            1,
            UpdateVector::F64(vec![9.0, 9.0]),
            Some(9.0),
        );
        assert!(matches!(again, Err(Refusal::Replay(_))));
        assert!(!m.round_stage_done());
        m.fold_update(
            "b",
            &b.task_id,
            1,
            UpdateVector::F64(vec![0.0, 4.0]),
            Some(6.0),
        )
        .unwrap();
        assert!(m.round_stage_done());
        let closed = m.close_round(Duration::from_secs(1)).unwrap();
        // Weighted by rows, 10 and 30; the replay changed nothing.
        assert_eq!(closed.aggregate.weighted_mean().unwrap(), vec![1.0, 3.0]);
        assert_eq!(
            closed.train_loss,
            Some(5.0),
            "losses weighted as the updates"
        );
        assert_eq!(closed.participants, vec!["a", "b"]);
        assert!(
            m.update_check("b", &b.task_id, 1).is_err(),
            "the round is closed"
        );
    }

    /// Updates taken in their wire bytes wait for their batch's verdict; the round's
    /// close settles it: a bad one is refused, uncounted and out of the sum.
    #[test]
    fn wire_updates_get_their_verdict_when_the_round_closes() {
        let n = wire::ONE_PASS_MIN_VALUES;
        let layout = ModelLayout::new(vec![Segment::new("w", n, true)]).unwrap();
        let ready = [("a", 10), ("b", 30)]
            .map(|(s, r)| (s.to_string(), r))
            .into();
        let mut m = RoundMachine::with_ready_stores("job", layout.clone(), ready);
        let global = ModelParameters::zeros(layout);
        let orders = open(&mut m, &mut FedAvg::new(FedAvgConfig::default()), &global);
        let check = m.update_check("a", &orders[0].task_id, 1).unwrap();
        assert!(check.wire);
        let update = |first: f32| -> Vec<u8> {
            let v = (0..n).map(|i| if i == 0 { first } else { i as f32 * 1e-3 });
            v.flat_map(|x| x.to_le_bytes()).collect()
        };
        let mut send = |store: &str, task: &str, bytes: Vec<u8>, loss: f64| {
            m.fold_wire_update(store, task, 1, bytes, check.limits(), Some(loss))
        };
        let mut a = send("a", &orders[0].task_id, update(f32::NAN), 2.0).unwrap();
        let mut b = send("b", &orders[1].task_id, update(4.0), 6.0).unwrap();
        assert!(
            a.try_recv().is_err() && b.try_recv().is_err(),
            "not yet folded"
        );
        let again = send("a", &orders[0].task_id, update(1.0), 2.0);
        assert!(
            matches!(again, Err(Refusal::Replay(_))),
            "a counts until judged"
        );
        assert!(
            m.round_stage_done(),
            "the round may close on waiting updates"
        );
        let closed = m.close_round(Duration::from_secs(1)).unwrap();
        let refused = a.try_recv().unwrap().unwrap_err().to_string();
        assert!(
            refused.contains("'a'") && refused.contains("index 0"),
            "{refused}"
        );
        assert_eq!(b.try_recv().unwrap().unwrap(), (1, 2));
        let mean = closed.aggregate.weighted_mean().unwrap();
        assert_eq!(mean[..2], [4.0, 1e-3f32 as f64]);
        assert_eq!(
            closed.train_loss,
            Some(6.0),
            "a refused update's loss is left out"
        );
        assert_eq!(closed.participants, vec!["b"]);
        assert_eq!(closed.dropped.len(), 1);
    }

    #[test]
    fn a_robust_round_takes_the_median_whatever_one_store_claims_or_sends() {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        // "c" claims the coordinator's row cap and sends a huge reversed update.
        let ready = [("a", 10), ("b", 30), ("c", crate::DEFAULT_MAX_STORE_ROWS)]
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        let mut m = RoundMachine::with_ready_stores("job", layout.clone(), ready);
        let global = ModelParameters::zeros(layout);
        let ids = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let setup = RoundSetup {
            round: 1,
            global: &global,
            available: &ids,
            privacy: None,
            ledger: None,
            robust: Some(fedretail_core::RobustRule::Median),
        };
        let mut fedavg = FedAvg::new(FedAvgConfig::default());
        assert_eq!(m.open_round(&mut fedavg, setup).unwrap(), 3);
        let sent = [vec![1.0, 2.0], vec![3.0, 2.5], vec![-1e6, -1e6]];
        for (order, u) in m.train_orders().iter().zip(sent) {
            m.fold_update(&order.store, &order.task_id, 1, UpdateVector::F64(u), None)
                .unwrap();
        }
        let closed = m.close_round(Duration::from_secs(1)).unwrap();
        let mean = closed.aggregate.weighted_mean().unwrap();
        assert!(
            (mean[0] - 1.0).abs() < 1e-9 && (mean[1] - 2.0).abs() < 1e-9,
            "{mean:?}"
        );
    }

    #[test]
    fn a_store_that_does_not_reply_is_dropped_with_the_reason() {
        let (mut m, global) = machine();
        let mut fedavg = FedAvg::new(FedAvgConfig::default());
        let orders = open(&mut m, &mut fedavg, &global);
        m.fold_update(
            "b",
            &orders[1].task_id,
            1,
            UpdateVector::F32(vec![1.0, 1.0]),
            None,
        )
        .unwrap();
        let closed = m.close_round(Duration::from_secs(30)).unwrap();
        assert_eq!(
            closed.dropped,
            vec![("a".to_string(), "no reply within 30 s".to_string())]
        );
        assert_eq!(closed.aggregate.num_updates, 1);
    }

    #[test]
    fn prepare_answers_are_checked_for_kind_and_replay() {
        let layout = ModelLayout::new(vec![Segment::new("w", 1, true)]).unwrap();
        let mut m = RoundMachine::default();
        m.open_job("job", v1::JobContext::default(), layout, false);
        let Some(v1::poll_task_response::Outcome::Prepare(p)) = m.next_for("s") else {
            panic!("a new store is asked to prepare the job");
        };
        let wrong = m.accept_ready("s", &p.task_id, ReadyAnswer::Summary(Err("x".into())));
        assert!(matches!(wrong, Err(Refusal::Malformed(_))));
        let stale = m.accept_ready("s", "old-task", ReadyAnswer::Rows(5));
        assert!(matches!(stale, Err(Refusal::NotCurrent(_))));
        let cannot = m.accept_ready(
            "s",
            &p.task_id,
            ReadyAnswer::CannotServe("no customer ids".into()),
        );
        assert_eq!(cannot.unwrap().reason.as_deref(), Some("no customer ids"));
        let replay = m.accept_ready("s", &p.task_id, ReadyAnswer::Rows(5));
        assert!(matches!(replay, Err(Refusal::Replay(_))));
        assert_eq!(m.readiness(), (0, 1));
        assert_eq!(
            m.close_job(),
            vec![("s".to_string(), "no customer ids".to_string())]
        );
    }

    #[test]
    fn a_store_claiming_more_rows_than_the_cap_sits_the_job_out() {
        let layout = ModelLayout::new(vec![Segment::new("w", 1, true)]).unwrap();
        let mut m = RoundMachine {
            max_store_rows: 1_000,
            ..RoundMachine::default()
        };
        m.open_job("job", v1::JobContext::default(), layout, false);
        let mut answer = |store: &str, n: u64| {
            let Some(v1::poll_task_response::Outcome::Prepare(p)) = m.next_for(store) else {
                panic!("a new store is asked to prepare the job");
            };
            m.accept_ready(store, &p.task_id, ReadyAnswer::Rows(n))
                .unwrap()
        };
        assert_eq!(answer("honest", 1_000).rows, Some(1_000));
        let greedy = answer("greedy", 1_000_000_000_000);
        assert_eq!(greedy.rows, None);
        assert!(greedy.reason.unwrap().contains("cap of 1000"));
        assert!(answer("empty", 0)
            .reason
            .unwrap()
            .contains("no training rows"));
        assert_eq!(m.readiness(), (1, 3));
    }

    #[test]
    fn evaluation_takes_one_finite_answer_per_store() {
        let (mut m, global) = machine();
        let tasks = m.open_evaluation(&["a".to_string()], 3, &global);
        let task = &tasks["a"];
        let nan: HashMap<String, f64> = [("wape".to_string(), f64::NAN)].into();
        assert!(matches!(
            m.accept_evaluation("a", task, &nan),
            Err(Refusal::Malformed(_))
        ));
        let ok: HashMap<String, f64> = [("wape".to_string(), 0.3)].into();
        m.accept_evaluation("a", task, &ok).unwrap();
        assert!(matches!(
            m.accept_evaluation("a", task, &ok),
            Err(Refusal::Replay(_))
        ));
        assert!(m.evaluation_done());
        assert_eq!(m.close_evaluation()["a"]["wape"], 0.3);
    }
}
