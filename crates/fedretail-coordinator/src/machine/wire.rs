//! Plain updates taken in their wire bytes: each joins the round's fold batch and is
//! checked (finite, norm) in the same pass over its bytes that folds it, so its
//! verdict is known only once its batch is folded: when the batch fills, or when the
//! round closes, or when a waiting reply has waited long enough (the service settles
//! the batch then). The store's reply waits for it. A refused update leaves the sum as
//! if it had never arrived, and the store is no longer counted as having replied, so
//! it may send again within the round.

use super::{Phase, Refusal, RoundMachine, RoundState};
use fedretail_core::{UpdateLimits, Verdict};
use tokio::sync::oneshot;

/// Updates shorter than this are decoded and checked on arrival: that takes
/// microseconds, less than their reply would wait for a batch.
pub const ONE_PASS_MIN_VALUES: usize = 1 << 15;

/// (received, selected) once the update is in the sum, or why it was refused.
pub type WireVerdict = Result<(usize, usize), Refusal>;

/// An update in the fold batch, waiting for its verdict.
pub(crate) struct Awaiting {
    store: String,
    weight: f64,
    train_loss: Option<f64>,
    reply: oneshot::Sender<WireVerdict>,
}

impl RoundMachine {
    /// Takes `store`'s update, still in its little-endian f32 bytes, into the round's
    /// fold batch (only when its [`UpdateCheck`](super::round::UpdateCheck) says so). Refused at
    /// once: bytes of the wrong length; the receiver gets the rest of the verdict.
    pub fn fold_wire_update(
        &mut self,
        store: &str,
        task_id: &str,
        round: u64,
        bytes: Vec<u8>,
        limits: UpdateLimits,
        train_loss: Option<f64>,
    ) -> Result<oneshot::Receiver<WireVerdict>, Refusal> {
        // Re-checked: the round may have closed since the caller's check.
        self.update_check(store, task_id, round)?;
        let Phase::Training(rs) = &mut self.phase else {
            return Err(Refusal::NotCurrent("no round is in progress".into()));
        };
        let Some(sum) = rs.aggregator.streaming_mut() else {
            return Err(Refusal::Malformed(format!(
                "round {round} takes decoded updates only"
            )));
        };
        let weight = rs.weights.get(store).copied().unwrap_or(0.0);
        let ticket = rs.next_ticket;
        sum.push_wire(bytes, weight, limits, ticket)
            .map_err(|e| Refusal::Malformed(format!("update from '{store}': {e}")))?;
        rs.next_ticket += 1;
        let (reply, verdict) = oneshot::channel();
        let awaiting = Awaiting {
            store: store.to_string(),
            weight,
            train_loss,
            reply,
        };
        rs.awaiting.insert(ticket, awaiting);
        // Counted at once, so the round can close on it; taken back if refused.
        rs.received.insert(store.to_string());
        deliver(rs);
        Ok(verdict)
    }
}

impl RoundMachine {
    /// Folds the round's batch now, so every waiting update gets its verdict.
    pub fn settle_wire_updates(&mut self) {
        if let Phase::Training(rs) = &mut self.phase {
            settle(rs);
        }
    }
}

/// Folds the batch now, so every waiting update gets its verdict (the round closes).
pub(crate) fn settle(rs: &mut RoundState) {
    if let Some(sum) = rs.aggregator.streaming_mut() {
        sum.settle();
    }
    deliver(rs);
}

/// Answers every update whose batch has been folded.
fn deliver(rs: &mut RoundState) {
    let verdicts: Vec<Verdict> = match rs.aggregator.streaming_mut() {
        Some(sum) => sum.take_verdicts(),
        None => return,
    };
    for (ticket, verdict) in verdicts {
        let Some(a) = rs.awaiting.remove(&ticket) else {
            continue;
        };
        let answer = match verdict {
            Ok(()) => {
                if let Some(l) = a.train_loss.filter(|l| l.is_finite()) {
                    rs.loss.0 += a.weight * l;
                    rs.loss.1 += a.weight;
                }
                Ok((rs.received.len(), rs.tasks.len()))
            }
            Err(e) => {
                rs.received.remove(&a.store);
                Err(Refusal::Malformed(format!(
                    "update from '{}' for round {}: {e}",
                    a.store, rs.round
                )))
            }
        };
        // A store that has gone away needs no answer.
        let _ = a.reply.send(answer);
    }
}
