//! What the gRPC handlers and the job driver share: the store registry, which
//! outlives jobs, and the round state machine of the current job, behind one lock;
//! plus the signals that wake long-polls and the driver, and the traffic counters.

use crate::config::{CheckedJob, CoordinatorConfig};
use crate::events::Observer;
use crate::limiter::FailureLimiter;
use crate::machine::RoundMachine;
use crate::registry::StoreRegistry;
use fedretail_core::tabular::TableSummary;
use fedretail_proto::job_to_wire;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

pub(crate) struct State {
    pub registry: StoreRegistry,
    pub machine: RoundMachine,
}

pub struct Shared {
    pub(crate) max_update_bytes: usize,
    state: Mutex<State>,
    /// Bumped whenever the phase changes, to wake long-polls.
    pub(crate) phase_tx: watch::Sender<u64>,
    /// Wakes the driver when a store registers or a reply arrives.
    pub(crate) progress: Notify,
    pub(crate) bytes_up: AtomicU64,
    pub(crate) bytes_down: AtomicU64,
    pub(crate) observer: Observer,
    /// Failed registrations per peer address.
    pub(crate) failures: Mutex<FailureLimiter>,
}

impl Shared {
    pub fn new(config: &CoordinatorConfig, observer: Observer) -> Self {
        let (phase_tx, _) = watch::channel(0);
        Shared {
            max_update_bytes: config.max_message_bytes,
            state: Mutex::new(State {
                registry: StoreRegistry::new(config),
                machine: RoundMachine {
                    max_store_rows: config.max_store_rows,
                    ..RoundMachine::default()
                },
            }),
            phase_tx,
            progress: Notify::new(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            observer,
            failures: Mutex::new(FailureLimiter::new(
                config.limits.failed_registrations_per_minute,
            )),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-update cannot leave the aggregate half-written
        // (pushes are all-or-nothing), so the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The failed-registration counts (a poisoned lock still holds usable counts).
    pub(crate) fn failures_of(&self) -> MutexGuard<'_, FailureLimiter> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the machine and wakes the long-polls: the phase may have changed.
    pub(crate) fn transition<T>(&self, f: impl FnOnce(&mut RoundMachine) -> T) -> T {
        let out = f(&mut self.lock().machine);
        self.phase_tx.send_modify(|v| *v += 1);
        out
    }

    /// Reads the machine without changing it.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&RoundMachine) -> T) -> T {
        f(&self.lock().machine)
    }

    /// Wakes at the next registration or reply, or at `until`.
    pub(crate) async fn wait_progress(&self, until: tokio::time::Instant) {
        let _ = tokio::time::timeout_at(until, self.progress.notified()).await;
    }

    /// Makes `job` (its run `run_id`) the current job: every store is asked to prepare it.
    pub(crate) fn open_job(&self, job: &CheckedJob, run_id: &str) {
        let mut wire = job_to_wire(job.job_id(), job.task.spec());
        wire.run_id = run_id.to_string();
        wire.privacy = Some(crate::privacy::job_privacy_to_wire(&job.config.privacy));
        let describe = job.task.needs_description();
        self.transition(|m| m.open_job(job.job_id(), wire, job.layout.clone(), describe));
    }

    /// Ends the current job; returns the stores that could not take part, and why.
    pub(crate) fn close_job(&self) -> Vec<(String, String)> {
        self.transition(RoundMachine::close_job)
    }

    pub(crate) fn summaries(&self) -> Vec<TableSummary> {
        self.read(RoundMachine::summaries)
    }

    pub(crate) fn readiness(&self) -> (usize, usize) {
        self.read(RoundMachine::readiness)
    }

    /// Stores ready for the current job that are still polling.
    pub(crate) fn ready_stores(&self) -> Vec<String> {
        let state = self.lock();
        state
            .machine
            .ready_counts()
            .into_keys()
            .filter(|s| state.registry.is_live(s))
            .collect()
    }

    pub(crate) fn ready_counts(&self) -> BTreeMap<String, u64> {
        self.read(RoundMachine::ready_counts)
    }

    pub(crate) fn all_heard_finish(&self) -> bool {
        self.lock().registry.all_heard_finish()
    }

    pub(crate) fn count_up(&self, m: &impl Message) {
        self.bytes_up
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_down(&self, m: &impl Message) {
        self.bytes_down
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
    }

    /// Bytes received and sent so far.
    pub(crate) fn traffic(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
        )
    }
}
