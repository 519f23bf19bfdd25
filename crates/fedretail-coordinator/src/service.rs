//! The gRPC adapter: each handler checks the store's session, converts the wire
//! message, and hands it to the round state machine ([`crate::machine`]), which does
//! every check that touches job state. A [`Refusal`] becomes a status here, in one
//! place, with `fedretail-proto`'s error mapping; a refused message changes nothing.

use crate::events::CoordinatorEvent;
use crate::machine::{ReadyAnswer, Refusal, RoundMachine, WireVerdict};
use crate::registry::Registration;
use crate::shared::Shared;
use fedretail_proto::v1::{self, coordinator_server::Coordinator};
use fedretail_proto::{
    decode_update, summary_from_wire, take_dense_f32, ServiceError, PROTOCOL_VERSION,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Longest a reply waits for its update's fold batch to fill before the batch is
/// folded as it is: a small round's last updates, a lone resend.
const SETTLE_AFTER: Duration = Duration::from_millis(200);

/// Longest a poll may wait before answering `Wait`.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        ServiceError::new(r.kind(), r.to_string()).to_status()
    }
}

pub struct CoordinatorService {
    shared: Arc<Shared>,
}

impl CoordinatorService {
    pub fn new(shared: Arc<Shared>) -> Self {
        CoordinatorService { shared }
    }

    /// Runs `f` on the machine once the store's session checks out.
    fn with_session<T>(
        &self,
        store: &str,
        session: &str,
        f: impl FnOnce(&mut RoundMachine) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let mut state = self.shared.lock();
        state.registry.check_session(store, session)?;
        f(&mut state.machine)
    }

    /// Refuses a registration from an address that failed too often this minute.
    fn within_failure_budget(&self, peer: Option<std::net::IpAddr>) -> Result<(), Refusal> {
        match peer {
            Some(ip)
                if !self
                    .shared
                    .failures_of()
                    .allows(ip, std::time::Instant::now()) =>
            {
                Err(Refusal::RateLimited(ip.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Reports a refused message (by kind, for operators' counters) and answers it.
    fn refused(&self, r: Refusal) -> Status {
        (self.shared.observer)(&CoordinatorEvent::MessageRefused { reason: r.reason() });
        r.into()
    }

    /// Checks a store's update and folds it: a dense f32 one straight from its bytes,
    /// checked in the pass that folds it, with its batch (its verdict comes later);
    /// any other decoded and checked in one pass over its bytes, then folded.
    fn take_update(&self, mut req: v1::SubmitUpdateRequest) -> Result<Taken, Refusal> {
        let (store, round) = (req.store_id.as_str(), req.round);
        // Cheap checks under the lock; decoding and validation (O(model size)) outside it.
        let check = self.with_session(store, &req.session_id, |m| {
            m.update_check(store, &req.task_id, round)
        })?;
        let mut tensor = req.update.take().ok_or_else(|| {
            Refusal::Malformed(format!("update from '{store}' carries no tensor"))
        })?;
        crate::machine::check_metrics(store, &req.metrics)?;
        let loss = req.metrics.get(fedretail_proto::TRAIN_LOSS).copied();
        let max_bytes = self.shared.max_update_bytes;
        let malformed =
            |e| Refusal::Malformed(format!("update from '{store}' for round {round}: {e}"));
        if check.wire {
            if let Some(bytes) =
                take_dense_f32(&mut tensor, check.len, max_bytes).map_err(malformed)?
            {
                let verdict = self.with_session(store, &req.session_id, |m| {
                    m.fold_wire_update(store, &req.task_id, round, bytes, check.limits(), loss)
                })?;
                // The round may close on this update: the driver must look before the
                // reply waits for the verdict, which the close settles.
                self.shared.progress.notify_one();
                return Ok(Taken::Later(verdict));
            }
        }
        let update =
            decode_update(&tensor, check.len, max_bytes, &check.limits()).map_err(malformed)?;
        self.with_session(store, &req.session_id, |m| {
            m.fold_update(store, &req.task_id, round, update, loss)
        })
        .map(Taken::Now)
    }

    /// The verdict on an update in the fold batch: when the batch fills or the round
    /// closes, or after [`SETTLE_AFTER`], when this reply has the batch folded as it is.
    async fn verdict(
        &self,
        mut verdict: tokio::sync::oneshot::Receiver<WireVerdict>,
    ) -> Result<WireVerdict, tokio::sync::oneshot::error::RecvError> {
        if let Ok(v) = tokio::time::timeout(SETTLE_AFTER, &mut verdict).await {
            return v;
        }
        self.shared.lock().machine.settle_wire_updates();
        verdict.await
    }

    /// Counts and wraps a reply; wakes the driver, which may be waiting for it.
    fn reply<T: prost::Message>(&self, resp: T) -> Result<Response<T>, Status> {
        self.shared.progress.notify_one();
        self.shared.count_down(&resp);
        Ok(Response::new(resp))
    }

    /// The store's next task, if it has one now.
    fn poll_once(
        &self,
        store: &str,
        session: &str,
    ) -> Result<Option<v1::poll_task_response::Outcome>, Refusal> {
        use v1::poll_task_response::Outcome;
        let mut state = self.shared.lock();
        state.registry.check_session(store, session)?;
        let next = state.machine.next_for(store);
        if matches!(next, Some(Outcome::Finished(_))) {
            state.registry.saw_finish(store);
            self.shared.progress.notify_one();
        }
        Ok(next)
    }
}

/// A taken update: folded now (received, selected), or waiting in the fold batch.
enum Taken {
    Now((usize, usize)),
    Later(tokio::sync::oneshot::Receiver<WireVerdict>),
}

/// SHA-256 (hex) of the certificate the peer presented under mutual TLS, if any.
fn presented_certificate<T>(request: &Request<T>) -> Option<String> {
    use sha2::Digest;
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(
        sha2::Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

fn ready_answer(answer: Option<v1::submit_ready_request::Answer>) -> ReadyAnswer {
    use v1::submit_ready_request::Answer;
    match answer {
        None => ReadyAnswer::Nothing,
        Some(Answer::NumTrainExamples(n)) => ReadyAnswer::Rows(n),
        Some(Answer::TableSummary(text)) => {
            ReadyAnswer::Summary(summary_from_wire(&text).map_err(|e| e.to_string()))
        }
        Some(Answer::CannotServe(reason)) => ReadyAnswer::CannotServe(reason),
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_store(
        &self,
        request: Request<v1::RegisterStoreRequest>,
    ) -> Result<Response<v1::RegisterStoreResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let certificate = presented_certificate(&request);
        let req = request.into_inner();
        self.shared.count_up(&req);
        let r = Registration {
            store_id: &req.store_id,
            token: &req.token,
            certificate: certificate.as_deref(),
            business_type: &req.business_type,
            protocol_version: req.protocol_version,
        };
        self.within_failure_budget(peer)
            .map_err(|e| self.refused(e))?;
        let admitted = {
            let mut state = self.shared.lock();
            state.registry.admit(&r).map(|()| {
                let (session, count) = state.registry.register(&r);
                (session, count, state.machine.job_id())
            })
        };
        if let (
            Err(
                Refusal::WrongToken(_)
                | Refusal::WrongEnrolmentToken(_)
                | Refusal::WrongCertificate { .. }
                | Refusal::NotInNetwork(_),
            ),
            Some(ip),
        ) = (&admitted, peer)
        {
            self.shared
                .failures_of()
                .failed(ip, std::time::Instant::now());
        }
        let (session_id, count, job_id) = admitted.map_err(|e| self.refused(e))?;
        (self.shared.observer)(&CoordinatorEvent::StoreRegistered {
            store_id: req.store_id.clone(),
            business_type: req.business_type.clone(),
            registered: count,
        });
        self.reply(v1::RegisterStoreResponse {
            session_id,
            job_id,
            protocol_version: PROTOCOL_VERSION,
        })
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
            phase_rx.borrow_and_update();
            let next = self.poll_once(&req.store_id, &req.session_id);
            if let Some(outcome) = next.map_err(|e| self.refused(e))? {
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
        let (round, store_id) = (req.round, req.store_id.clone());
        let taken = self.take_update(req).map_err(|e| self.refused(e))?;
        let (received, selected) = match taken {
            Taken::Now(counts) => counts,
            Taken::Later(verdict) => self
                .verdict(verdict)
                .await
                .unwrap_or_else(|_| {
                    Err(Refusal::NotCurrent(format!(
                        "round {round} closed before the update from '{store_id}' was folded"
                    )))
                })
                .map_err(|e| self.refused(e))?,
        };
        (self.shared.observer)(&CoordinatorEvent::UpdateAccepted {
            round,
            store_id,
            received,
            selected,
        });
        self.reply(v1::SubmitUpdateResponse { accepted: true })
    }

    async fn submit_ready(
        &self,
        request: Request<v1::SubmitReadyRequest>,
    ) -> Result<Response<v1::SubmitReadyResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        let answer = ready_answer(req.answer);
        let ready = self
            .with_session(store, &req.session_id, |m| {
                m.accept_ready(store, &req.task_id, answer)
            })
            .map_err(|e| self.refused(e))?;
        (self.shared.observer)(&CoordinatorEvent::StoreReady {
            job_id: ready.job_id,
            store_id: store.to_string(),
            num_train_examples: ready.rows,
            reason: ready.reason,
        });
        self.reply(v1::SubmitReadyResponse { accepted: true })
    }

    async fn submit_evaluation(
        &self,
        request: Request<v1::SubmitEvaluationRequest>,
    ) -> Result<Response<v1::SubmitEvaluationResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        self.with_session(store, &req.session_id, |m| {
            m.accept_evaluation(store, &req.task_id, &req.metrics)
        })
        .map_err(|e| self.refused(e))?;
        (self.shared.observer)(&CoordinatorEvent::StoreEvaluated {
            store_id: req.store_id.clone(),
            metrics: req.metrics.into_iter().collect(),
        });
        self.reply(v1::SubmitEvaluationResponse { accepted: true })
    }

    async fn submit_sec_agg(
        &self,
        request: Request<v1::SubmitSecAggRequest>,
    ) -> Result<Response<v1::SubmitSecAggResponse>, Status> {
        let req = request.into_inner();
        self.shared.count_up(&req);
        let store = req.store_id.as_str();
        self.with_session(store, &req.session_id, |m| {
            m.accept_secagg(store, &req.task_id, req.round, req.message)
        })
        .map_err(|e| self.refused(e))?;
        self.reply(v1::SubmitSecAggResponse { accepted: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedretail_proto::ErrorKind;

    #[test]
    fn every_refusal_keeps_its_kind_on_the_wire() {
        let refusals = [
            Refusal::Unregistered("s".into()),
            Refusal::WrongToken("s".into()),
            Refusal::Protocol(9),
            Refusal::NotCurrent("old".into()),
            Refusal::Replay("again".into()),
            Refusal::Malformed("bad".into()),
        ];
        for r in refusals {
            let back = ServiceError::from_status(&Status::from(r.clone()));
            assert_eq!((back.kind, back.message), (r.kind(), r.to_string()));
        }
        assert_eq!(Refusal::Protocol(9).kind(), ErrorKind::Incompatible);
    }
}
