//! One SecAgg+ round run in process: every store and the coordinator exchange the same
//! messages they would over the wire, with chosen stores vanishing at chosen stages.
//! Used by the tests, the benchmark and the simulation harness.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::messages::{
    AdSignature, Advertisement, Confirmation, EncryptedShare, MaskedInput, ShareKeys,
    UnmaskRequest, UnmaskResponse,
};
use super::{
    NeighbourGraph, RosterAuthority, SecAggConfig, SecAggError, SecAggOutcome, SecAggServer,
    SecAggStore, StoreIdentity,
};

/// Which stores vanish, and when.
#[derive(Debug, Clone, Default)]
pub struct DropoutPlan {
    /// Advertise keys, then vanish before dealing shares.
    pub before_sharing: BTreeSet<u32>,
    /// Deal shares, then vanish before sending a masked input: their input is left out
    /// and their pairwise masks are rebuilt from their neighbours' shares.
    pub before_masking: BTreeSet<u32>,
    /// Send a masked input, then vanish before unmasking: their input counts.
    pub before_unmasking: BTreeSet<u32>,
}

/// What a round cost, measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RoundCost {
    /// Mean compute of one store over all its stages (stores that stayed to the end).
    pub store_seconds_mean: f64,
    pub store_seconds_max: f64,
    /// The coordinator's compute over all stages (routing, summing, unmasking).
    pub coordinator_seconds: f64,
    /// Mean bytes a store that stayed to the end sends / receives, counted as the
    /// fields' encoded sizes.
    pub store_bytes_up: f64,
    pub store_bytes_down: f64,
}

/// Wire sizes: fixed-width fields, 4 bytes per index, plus the variable payloads.
fn ad_bytes() -> usize {
    4 + 32 + 32
}
fn share_bytes(s: &EncryptedShare) -> usize {
    8 + s.ciphertext.len()
}
fn signature_bytes(s: Option<&AdSignature>) -> usize {
    s.map_or(0, |s| {
        s.signer.len() + 32 + s.credential.len() + s.signature.len()
    })
}
fn confirmation_bytes(c: &Confirmation) -> usize {
    4 + signature_bytes(Some(&c.signed))
}

/// Runs one round. `input(store, words)` fills a store's encoded input when that store
/// masks it, so no more than one input is held at a time.
pub fn simulate_round(
    config: &SecAggConfig,
    plan: &DropoutPlan,
    seed: u64,
    input: impl FnMut(u32, &mut [u32]),
) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
    simulate_round_observed(config, plan, seed, input, |_| {})
}

/// [`simulate_round`], showing each masked input to `observe` as the coordinator
/// receives it (what an attack on the coordinator's view works from).
pub fn simulate_round_observed(
    config: &SecAggConfig,
    plan: &DropoutPlan,
    seed: u64,
    input: impl FnMut(u32, &mut [u32]),
    observe: impl FnMut(&MaskedInput),
) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
    run_round(config, plan, seed, false, input, observe)
}

/// [`simulate_round`] with enrolled stores: each signs its advertisement, checks its
/// neighbours' against the roster, and the round runs the consistency check.
pub fn simulate_signed_round(
    config: &SecAggConfig,
    plan: &DropoutPlan,
    seed: u64,
    input: impl FnMut(u32, &mut [u32]),
) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
    run_round(config, plan, seed, true, input, |_| {})
}

fn run_round(
    config: &SecAggConfig,
    plan: &DropoutPlan,
    seed: u64,
    signed: bool,
    input: impl FnMut(u32, &mut [u32]),
    observe: impl FnMut(&MaskedInput),
) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut round = SimulatedRound::advertise(config, &mut rng, signed)?;
    round.share_keys(plan)?;
    round.mask(plan, config.dimension, input, observe)?;
    round.unmask(plan)?;
    round.finish(plan)
}

/// Adds the time `f` takes to `acc`.
fn time<T>(acc: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *acc += start.elapsed();
    out
}

/// Runs `step` for each store in `todo` on all cores, as the stores of a real network
/// compute side by side; each store's time is measured on its own. The results come
/// back in `todo`'s order, so the coordinator receives them as it would one by one.
fn run_stores<T: Send, M: Send>(
    stores: &mut [SecAggStore],
    todo: Vec<(u32, T)>,
    step: impl Fn(&mut SecAggStore, T) -> Result<M, SecAggError> + Sync,
) -> Vec<(u32, Duration, Result<M, SecAggError>)> {
    use rayon::prelude::*;
    let mut slots: Vec<Option<&mut SecAggStore>> = stores.iter_mut().map(Some).collect();
    let work: Vec<(u32, &mut SecAggStore, T)> = todo
        .into_iter()
        .filter_map(|(u, t)| Some((u, slots.get_mut(u as usize)?.take()?, t)))
        .collect();
    work.into_par_iter()
        .map(|(u, store, t)| {
            let start = Instant::now();
            let out = step(store, t);
            (u, start.elapsed(), out)
        })
        .collect()
}

/// Every store and the coordinator of one round, with what each spent so far.
struct SimulatedRound {
    server: SecAggServer,
    /// Store `u` at index `u`.
    stores: Vec<SecAggStore>,
    store_time: Vec<Duration>,
    up: Vec<usize>,
    down: Vec<usize>,
    coordinator: Duration,
    /// Store `u`'s long-term identity, when the stores are enrolled.
    identities: Vec<StoreIdentity>,
}

impl SimulatedRound {
    /// Every store draws its keys and advertises them (signed, when enrolled; the
    /// enrolment itself is a one-off and not timed).
    fn advertise(
        config: &SecAggConfig,
        rng: &mut ChaCha20Rng,
        signed: bool,
    ) -> Result<Self, SecAggError> {
        let graph = Arc::new(NeighbourGraph::new(config));
        let n = config.num_stores as usize;
        let mut round = SimulatedRound {
            server: SecAggServer::new(config.clone(), graph.clone())?,
            stores: Vec::with_capacity(n),
            store_time: vec![Duration::ZERO; n],
            up: vec![0; n],
            down: vec![0; n],
            coordinator: Duration::ZERO,
            identities: Vec::new(),
        };
        let authority = signed.then(|| RosterAuthority::generate(rng));
        for u in 0..config.num_stores {
            let identity = authority
                .as_ref()
                .map(|a| a.enroll(&format!("store-{u:05}"), rng));
            let (store, ad): (SecAggStore, Advertisement) =
                time(&mut round.store_time[u as usize], || {
                    let (mut store, mut ad) =
                        SecAggStore::new(config.clone(), graph.clone(), u, rng)?;
                    if let (Some(a), Some(identity)) = (&authority, &identity) {
                        identity.sign(&mut ad, config.session);
                        store = store.with_roster(a.roster());
                    }
                    Ok::<_, SecAggError>((store, ad))
                })?;
            round.identities.extend(identity);
            round.up[u as usize] += ad_bytes() + signature_bytes(ad.signed.as_ref());
            time(&mut round.coordinator, || {
                round.server.receive_advertisement(ad)
            })?;
            round.stores.push(store);
        }
        Ok(round)
    }

    fn share_keys(&mut self, plan: &DropoutPlan) -> Result<(), SecAggError> {
        let neighbour_ads = time(&mut self.coordinator, || self.server.close_advertising())?;
        let todo: Vec<(u32, &Vec<Advertisement>)> = neighbour_ads
            .iter()
            .filter(|(u, _)| !plan.before_sharing.contains(u))
            .map(|(u, ads)| (*u, ads))
            .collect();
        for (u, ads) in &todo {
            self.down[*u as usize] += ads
                .iter()
                .map(|a| ad_bytes() + signature_bytes(a.signed.as_ref()))
                .sum::<usize>();
        }
        for (u, spent, msg) in run_stores(&mut self.stores, todo, |s, ads| s.share_keys(ads)) {
            self.store_time[u as usize] += spent;
            let msg: ShareKeys = msg?;
            self.up[u as usize] += 4 + 32 + msg.shares.iter().map(share_bytes).sum::<usize>();
            time(&mut self.coordinator, || {
                self.server.receive_share_keys(msg)
            })?;
        }
        Ok(())
    }

    /// Stores mask their inputs a few at a time (two per core), so only that many
    /// inputs are held at once.
    fn mask(
        &mut self,
        plan: &DropoutPlan,
        dimension: usize,
        mut input: impl FnMut(u32, &mut [u32]),
        mut observe: impl FnMut(&MaskedInput),
    ) -> Result<(), SecAggError> {
        let inboxes = time(&mut self.coordinator, || self.server.close_share_keys())?;
        let todo: Vec<(u32, &Vec<EncryptedShare>)> = inboxes
            .iter()
            .filter(|(u, _)| !plan.before_masking.contains(u))
            .map(|(u, inbox)| (*u, inbox))
            .collect();
        for group in todo.chunks(2 * rayon::current_num_threads()) {
            let work: Vec<_> = group
                .iter()
                .map(|&(u, inbox)| {
                    self.down[u as usize] += inbox.iter().map(share_bytes).sum::<usize>();
                    let mut words = vec![0u32; dimension];
                    input(u, &mut words);
                    (u, (inbox, words))
                })
                .collect();
            let masked = run_stores(&mut self.stores, work, |s, (inbox, words)| {
                s.masked_input(inbox, &words)
            });
            for (u, spent, msg) in masked {
                self.store_time[u as usize] += spent;
                let msg: MaskedInput = msg?;
                self.up[u as usize] += 4 + 4 * msg.words.len();
                observe(&msg);
                time(&mut self.coordinator, || {
                    self.server.receive_masked_input(&msg)
                })?;
            }
        }
        Ok(())
    }

    /// The consistency check, when the stores are enrolled: each survivor that stays
    /// signs the survivor set.
    fn confirm(&mut self, plan: &DropoutPlan) -> Result<(), SecAggError> {
        let survivors = time(&mut self.coordinator, || {
            self.server.close_masked_input_to_confirm()
        })?;
        let identities = &self.identities;
        let todo: Vec<(u32, &StoreIdentity)> = survivors
            .iter()
            .filter(|v| !plan.before_unmasking.contains(v))
            .filter_map(|&v| Some((v, identities.get(v as usize)?)))
            .collect();
        let confirmed = run_stores(&mut self.stores, todo, |s, identity| {
            s.confirm(&survivors, identity)
        });
        for (v, spent, c) in confirmed {
            self.store_time[v as usize] += spent;
            self.down[v as usize] += 4 * survivors.len();
            let c = c?;
            self.up[v as usize] += confirmation_bytes(&c);
            time(&mut self.coordinator, || {
                self.server.receive_confirmation(c)
            })?;
        }
        Ok(())
    }

    fn unmask(&mut self, plan: &DropoutPlan) -> Result<(), SecAggError> {
        let requests = if self.server.checks_consistency() {
            self.confirm(plan)?;
            time(&mut self.coordinator, || self.server.close_confirming())?
        } else {
            time(&mut self.coordinator, || self.server.close_masked_input())?
        };
        let todo: Vec<(u32, &UnmaskRequest)> = requests
            .iter()
            .filter(|(v, _)| !plan.before_unmasking.contains(v))
            .map(|(v, request)| (*v, request))
            .collect();
        for (v, request) in &todo {
            self.down[*v as usize] += 4 * (request.survivors.len() + request.dropped.len())
                + request
                    .confirmations
                    .iter()
                    .map(confirmation_bytes)
                    .sum::<usize>();
        }
        for (v, spent, msg) in run_stores(&mut self.stores, todo, |s, r| s.unmask(r)) {
            self.store_time[v as usize] += spent;
            let msg: UnmaskResponse = msg?;
            self.up[v as usize] += 4 + msg.shares.iter().map(|s| 5 + s.share.len()).sum::<usize>();
            time(&mut self.coordinator, || self.server.receive_unmask(msg))?;
        }
        Ok(())
    }

    /// Unmasks the sum; the round's costs, the coordinator's finishing work included.
    fn finish(self, plan: &DropoutPlan) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
        let mut cost = self.cost(plan);
        let start = Instant::now();
        let outcome = self.server.finish()?;
        cost.coordinator_seconds += start.elapsed().as_secs_f64();
        Ok((outcome, cost))
    }

    /// Costs of the stores that took part in every stage (a dropped store does less).
    fn cost(&self, plan: &DropoutPlan) -> RoundCost {
        let full: Vec<usize> = (0..self.store_time.len() as u32)
            .filter(|u| {
                !plan.before_sharing.contains(u)
                    && !plan.before_masking.contains(u)
                    && !plan.before_unmasking.contains(u)
            })
            .map(|u| u as usize)
            .collect();
        let count = full.len().max(1) as f64;
        let secs = |u: usize| self.store_time[u].as_secs_f64();
        RoundCost {
            store_seconds_mean: full.iter().map(|&u| secs(u)).sum::<f64>() / count,
            store_seconds_max: full.iter().map(|&u| secs(u)).fold(0.0, f64::max),
            coordinator_seconds: self.coordinator.as_secs_f64(),
            store_bytes_up: full.iter().map(|&u| self.up[u]).sum::<usize>() as f64 / count,
            store_bytes_down: full.iter().map(|&u| self.down[u]).sum::<usize>() as f64 / count,
        }
    }
}
