//! SecAgg+ inside a round: each stage's messages are checked (the store's index,
//! the stage, replays) before they reach the SecAgg+ server, stages advance when the
//! driver says so, and the finished round unmasks only the survivors' sum.

use super::{Phase, Refusal, RoundError, RoundMachine};
use crate::privacy::{RoundPrivacy, SecureRound, SecureStage};
use fedretail_core::Aggregate;
use fedretail_privacy::secagg::SecAggError;
use fedretail_proto::secagg as wire;
use fedretail_proto::v1::submit_sec_agg_request::Message;

type Participation = (Vec<String>, Vec<(String, String)>, Aggregate);

impl RoundMachine {
    /// Takes a store's message for the current SecAgg+ stage.
    pub fn accept_secagg(
        &mut self,
        store: &str,
        task_id: &str,
        round: u64,
        message: Option<Message>,
    ) -> Result<(), Refusal> {
        let Phase::Training(rs) = &mut self.phase else {
            return Err(Refusal::NotCurrent(format!(
                "SecAgg+ message from '{store}' (task '{task_id}') is not current: no round is in progress"
            )));
        };
        if rs.tasks.get(store).map(String::as_str) != Some(task_id) || rs.round != round {
            return Err(Refusal::NotCurrent(format!(
                "SecAgg+ message from '{store}' for task '{task_id}' (round {round}) is not current: round {} is in progress",
                rs.round
            )));
        }
        let Some(sec) = rs.secure_mut() else {
            return Err(malformed(
                store,
                round,
                "this round does not run secure aggregation",
            ));
        };
        if sec.accept(store, round, message)? == SecureStage::Advertising {
            rs.received.insert(store.to_string());
        }
        Ok(())
    }

    /// Closes the current SecAgg+ stage and opens the next. Ok(false) after
    /// unmasking (or for a plain round): the round is ready to close. An error
    /// aborts the round.
    pub fn advance_secure(&mut self) -> Result<bool, RoundError> {
        let advanced = match &mut self.phase {
            Phase::Training(rs) => rs.secure_mut().map(|sec| sec.advance()),
            _ => return Err("round state lost".to_string().into()),
        };
        match advanced {
            None => Ok(false),
            Some(Ok(more)) => Ok(more),
            Some(Err(e)) => {
                self.phase = Phase::Idle;
                Err(format!("secure aggregation: {e}").into())
            }
        }
    }
}

fn malformed(store: &str, round: u64, e: impl std::fmt::Display) -> Refusal {
    Refusal::Malformed(format!(
        "SecAgg+ message from '{store}' for round {round}: {e}"
    ))
}

impl SecureRound {
    /// Checks a store's message against the stage (its index, replays, whether it
    /// is still in the round) and hands it to the SecAgg+ server. Returns the stage
    /// it answered.
    fn accept(
        &mut self,
        store: &str,
        round: u64,
        message: Option<Message>,
    ) -> Result<SecureStage, Refusal> {
        let bad = |e: String| malformed(store, round, e);
        let index = self
            .index
            .get(store)
            .copied()
            .ok_or_else(|| bad("the store is not in this round".into()))?;
        if self.answered.contains(store) {
            return Err(Refusal::Replay(format!(
                "'{store}' already sent its {} for round {round} (replay)",
                self.stage.message()
            )));
        }
        if !self.expected.contains(store) {
            return Err(Refusal::NotCurrent(format!(
                "'{store}' fell out of round {round}'s secure aggregation and cannot rejoin it"
            )));
        }
        let stage = self.stage;
        if !stage_matches(stage, &message) {
            return Err(Refusal::NotCurrent(format!(
                "'{store}' sent {} for round {round}, which now expects its {}",
                message_name(&message),
                stage.message()
            )));
        }
        if let Some(i) = claimed_index(&message).filter(|i| *i != index) {
            return Err(bad(format!(
                "the message claims store index {i}, the store's index is {index}"
            )));
        }
        let Some(server) = self.server.as_mut() else {
            return Err(Refusal::NotCurrent(
                "the secure aggregation has finished".into(),
            ));
        };
        let result: Result<(), SecAggError> = match message {
            Some(Message::Advertisement(a)) => {
                let ad = wire::advertisement_from_wire(&a).map_err(|e| bad(e.to_string()))?;
                server.receive_advertisement(ad)
            }
            Some(Message::ShareKeys(m)) => {
                let m = wire::share_keys_from_wire(m).map_err(|e| bad(e.to_string()))?;
                server.receive_share_keys(m)
            }
            Some(Message::MaskedInput(m)) => {
                server.receive_masked_input(&wire::masked_input_from_wire(m))
            }
            Some(Message::Unmask(m)) => server.receive_unmask(wire::unmask_response_from_wire(m)),
            Some(Message::Confirmation(c)) => {
                let c = wire::confirmation_from_wire(&c).map_err(|e| bad(e.to_string()))?;
                server.receive_confirmation(c)
            }
            None => return Err(bad("the message is empty".into())),
        };
        result.map_err(|e| bad(e.to_string()))?;
        self.answered.insert(store.to_string());
        Ok(stage)
    }
}

fn stage_matches(stage: SecureStage, message: &Option<Message>) -> bool {
    matches!(
        (stage, message),
        (SecureStage::Advertising, Some(Message::Advertisement(_)))
            | (SecureStage::SharingKeys, Some(Message::ShareKeys(_)))
            | (SecureStage::Masking, Some(Message::MaskedInput(_)))
            | (SecureStage::Confirming, Some(Message::Confirmation(_)))
            | (SecureStage::Unmasking, Some(Message::Unmask(_)))
    )
}

fn claimed_index(message: &Option<Message>) -> Option<u32> {
    match message {
        Some(Message::Advertisement(a)) => Some(a.store),
        Some(Message::ShareKeys(m)) => Some(m.store),
        Some(Message::MaskedInput(m)) => Some(m.store),
        Some(Message::Unmask(m)) => Some(m.store),
        Some(Message::Confirmation(c)) => Some(c.store),
        None => None,
    }
}

fn message_name(message: &Option<Message>) -> &'static str {
    match message {
        None => "nothing",
        Some(Message::Advertisement(_)) => "a key advertisement",
        Some(Message::ShareKeys(_)) => "key shares",
        Some(Message::MaskedInput(_)) => "a masked input",
        Some(Message::Unmask(_)) => "unmasking shares",
        Some(Message::Confirmation(_)) => "a survivor confirmation",
    }
}

/// Unmasks a finished SecAgg+ round: the survivors' weighted sum, decoded.
pub(super) fn finish_secure(
    privacy: &mut RoundPrivacy,
    no_reply: &dyn Fn(&str) -> String,
) -> Result<Participation, RoundError> {
    let lost = || RoundError::Failed("secure aggregation state lost".into());
    let server = privacy
        .secure
        .as_mut()
        .and_then(|s| s.server.take())
        .ok_or_else(lost)?;
    let sec = privacy.secure.as_ref().ok_or_else(lost)?;
    let outcome = server
        .finish()
        .map_err(|e| format!("secure aggregation: {e}"))?;
    let name = |i: &u32| sec.stores.get(*i as usize).cloned();
    let survivors: Vec<String> = outcome.survivors.iter().filter_map(name).collect();
    let culprits: Vec<String> = outcome.culprits.iter().filter_map(name).collect();
    if !culprits.is_empty() {
        tracing::warn!(
            "secure aggregation: {} revealed shares that do not fit the committed secrets; the sum was rebuilt from other stores' shares",
            culprits.join(", ")
        );
    }
    if survivors.len() < privacy.min_survivors {
        return Err(format!(
            "{} stores survived secure aggregation; the distributed noise was calibrated for at least {}",
            survivors.len(),
            privacy.min_survivors
        )
        .into());
    }
    let dropped = sec
        .stores
        .iter()
        .filter(|s| !survivors.contains(s))
        .map(|s| {
            (
                s.clone(),
                no_reply(sec.left.get(s).copied().unwrap_or("masked input")),
            )
        })
        .collect();
    let total_weight = survivors
        .iter()
        .map(|s| privacy.weights.get(s).copied().unwrap_or(0.0))
        .sum();
    let weighted_sum = sec.fixed_point.decode(&outcome.sum);
    check_bounded(privacy, &survivors, &weighted_sum)?;
    let aggregate = Aggregate {
        weighted_sum,
        total_weight,
        num_updates: survivors.len(),
        within_clip: 0,
    };
    Ok((survivors, dropped, aggregate))
}

/// Nobody can check one masked input, but the sum can be checked: a sum longer than
/// the survivors' clipped inputs and noise can make means some store masked an input
/// outside its clip. The round is refused, so the model never takes the step.
fn check_bounded(
    privacy: &RoundPrivacy,
    survivors: &[String],
    sum: &[f64],
) -> Result<(), RoundError> {
    let Some(max) = privacy.plausible_sum_norm(survivors, sum.len()) else {
        return Ok(());
    };
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > max {
        return Err(format!(
            "secure aggregation: the unmasked sum has norm {norm:.4}, more than the {} survivors' clipped inputs and noise can reach ({max:.4}): a store masked an input outside its clip; the round is refused",
            survivors.len()
        )
        .into());
    }
    Ok(())
}
