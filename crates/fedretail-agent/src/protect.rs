//! What a store does to its update before it leaves: check the privacy the task
//! asks for, clip it, add its own noise, weight it, and under SecAgg+ encode, mask
//! and answer each stage of the protocol. Synchronous and transport-free, so the
//! in-process runs use exactly what the agent sends over gRPC.

use crate::AgentError;
use fedretail_privacy::clip_l2;
use fedretail_privacy::secagg::{
    sample_discrete_gaussian, FixedPoint, NeighbourGraph, Roster, SecAggError, SecAggStore,
    StoreIdentity,
};
use fedretail_proto::secagg as wire;
use fedretail_proto::v1;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use std::sync::Arc;

/// The store's half of a SecAgg+ round in progress: its secrets and its encoded,
/// clipped (and, under distributed DP, noised) update, which never leaves unmasked.
pub struct SecureInput {
    store: SecAggStore,
    words: Vec<u32>,
    /// Signs the survivor set in the consistency check.
    identity: Option<Arc<StoreIdentity>>,
}

/// A store's long-term SecAgg+ identity, which signs its key advertisements, and the
/// network roster it checks every neighbour's advertisement against. With a roster the
/// store deals no share unless every neighbour's keys carry an enrolled store's
/// signature for this round: a coordinator cannot swap in keys of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecAggTrust {
    pub identity: Option<Arc<StoreIdentity>>,
    pub roster: Option<Roster>,
}

pub fn check_privacy(p: &v1::UpdatePrivacy) -> Result<(), AgentError> {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !(ok(p.clip) && ok(p.local_noise_stddev) && ok(p.weight) && p.weight <= 1.0) {
        return Err(AgentError::BadTask(format!(
            "privacy settings out of range: clip {}, local noise {}, weight {}",
            p.clip, p.local_noise_stddev, p.weight
        )));
    }
    Ok(())
}

/// Clip, add this store's own noise (local DP), then weight: in that order, so that
/// the clip bounds what any one store contributes before anything else.
pub fn protect_update(update: &mut [f64], p: &v1::UpdatePrivacy) {
    if p.clip > 0.0 {
        clip_l2(update, p.clip);
    }
    if p.local_noise_stddev > 0.0 {
        if let Ok(normal) = Normal::new(0.0, p.local_noise_stddev) {
            let mut rng = rand::rng();
            update
                .iter_mut()
                .for_each(|v| *v += normal.sample(&mut rng));
        }
    }
    if p.weight != 1.0 {
        update.iter_mut().for_each(|v| *v *= p.weight);
    }
}

/// Draws the round's secrets, encodes the update in Z_{2^32} (with this store's share
/// of the discrete Gaussian noise, under distributed DP) and advertises the keys.
pub fn begin_secure(
    params: &v1::SecureAggregation,
    update: &[f64],
    trust: &SecAggTrust,
) -> Result<(SecureInput, v1::submit_sec_agg_request::Message), AgentError> {
    let bad = |e: String| AgentError::BadTask(format!("secure aggregation settings: {e}"));
    let config = wire::config_from_wire(params).map_err(|e| bad(e.to_string()))?;
    let dimension = config.dimension;
    if dimension != update.len() {
        return Err(bad(format!(
            "the round sums {dimension} values, this store's update has {}",
            update.len()
        )));
    }
    let sigma = params.store_noise_stddev_units;
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(bad(format!("store noise {sigma} is not a valid deviation")));
    }
    let fixed_point = FixedPoint::for_sum(params.num_stores, params.bound, params.sum_noise_stddev)
        .map_err(|e| bad(e.to_string()))?;
    let graph = std::sync::Arc::new(NeighbourGraph::new(&config));
    // Secrets from a ChaCha20 stream seeded by the OS-seeded thread generator.
    let mut rng = ChaCha20Rng::from_rng(&mut rand::rng());
    let session = config.session;
    let (mut store, mut ad) = SecAggStore::new(config, graph, params.store_index, &mut rng)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(identity) = &trust.identity {
        identity.sign(&mut ad, session);
    }
    if let Some(roster) = &trust.roster {
        store = store.with_roster(roster.clone());
    }
    let mut words = vec![0u32; dimension];
    fixed_point.encode_into(update, &mut words, &mut rng);
    if sigma > 0.0 {
        for w in &mut words {
            *w = w.wrapping_add(sample_discrete_gaussian(sigma, &mut rng) as u32);
        }
    }
    let message =
        v1::submit_sec_agg_request::Message::Advertisement(wire::advertisement_to_wire(&ad));
    let identity = trust.identity.clone();
    Ok((
        SecureInput {
            store,
            words,
            identity,
        },
        message,
    ))
}

/// Answers one SecAgg+ step; the bool says it was the last (unmasking).
pub fn secure_step(
    pending: &mut SecureInput,
    step: Option<v1::sec_agg_step::Step>,
) -> Result<(v1::submit_sec_agg_request::Message, bool), String> {
    use v1::sec_agg_step::Step;
    use v1::submit_sec_agg_request::Message;
    let e = |e: SecAggError| e.to_string();
    match step {
        Some(Step::ShareKeys(n)) => {
            let ads = n
                .advertisements
                .iter()
                .map(wire::advertisement_from_wire)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let keys = pending.store.share_keys(&ads).map_err(e)?;
            Ok((Message::ShareKeys(wire::share_keys_to_wire(&keys)), false))
        }
        Some(Step::MaskedInput(inbox)) => {
            let shares: Vec<_> = inbox
                .shares
                .into_iter()
                .map(wire::share_from_wire)
                .collect();
            let masked = pending
                .store
                .masked_input(&shares, &pending.words)
                .map_err(e)?;
            Ok((
                Message::MaskedInput(wire::masked_input_to_wire(masked)),
                false,
            ))
        }
        Some(Step::Confirm(c)) => {
            let identity = pending.identity.as_deref().ok_or(
                "asked to confirm the survivor set, but this store has no signing identity (secagg_identity)",
            )?;
            let confirmation = pending.store.confirm(&c.survivors, identity).map_err(e)?;
            Ok((
                Message::Confirmation(wire::confirmation_to_wire(&confirmation)),
                false,
            ))
        }
        Some(Step::Unmask(r)) => {
            let request = wire::unmask_request_from_wire(r).map_err(|e| e.to_string())?;
            let response = pending.store.unmask(&request).map_err(e)?;
            Ok((
                Message::Unmask(wire::unmask_response_to_wire(&response)),
                true,
            ))
        }
        None => Err("the coordinator sent an empty secure-aggregation step".into()),
    }
}
