//! One SecAgg+ round run in process: every store and the coordinator exchange the same
//! messages they would over the wire, with chosen stores vanishing at chosen stages.
//! Used by the tests, the benchmark and the simulation harness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::messages::{Advertisement, EncryptedShare, MaskedInput, ShareKeys, UnmaskResponse};
use super::{NeighbourGraph, SecAggConfig, SecAggError, SecAggOutcome, SecAggServer, SecAggStore};

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
    mut input: impl FnMut(u32, &mut [u32]),
    mut observe: impl FnMut(&MaskedInput),
) -> Result<(SecAggOutcome, RoundCost), SecAggError> {
    let graph = Arc::new(NeighbourGraph::new(config));
    let n = config.num_stores;
    let mut store_time = vec![Duration::ZERO; n as usize];
    let mut up = vec![0usize; n as usize];
    let mut down = vec![0usize; n as usize];
    let mut coordinator = Duration::ZERO;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    let timed = |acc: &mut Duration, start: Instant| *acc += start.elapsed();

    let mut server = SecAggServer::new(config.clone(), graph.clone())?;
    let mut stores = BTreeMap::new();
    for u in 0..n {
        let start = Instant::now();
        let (store, ad): (SecAggStore, Advertisement) =
            SecAggStore::new(config.clone(), graph.clone(), u, &mut rng)?;
        timed(&mut store_time[u as usize], start);
        up[u as usize] += ad_bytes();
        let start = Instant::now();
        server.receive_advertisement(ad)?;
        timed(&mut coordinator, start);
        stores.insert(u, store);
    }
    let start = Instant::now();
    let neighbour_ads = server.close_advertising()?;
    timed(&mut coordinator, start);

    for (u, ads) in &neighbour_ads {
        if plan.before_sharing.contains(u) {
            continue;
        }
        down[*u as usize] += ads.len() * ad_bytes();
        let Some(store) = stores.get_mut(u) else {
            continue;
        };
        let start = Instant::now();
        let msg: ShareKeys = store.share_keys(ads)?;
        timed(&mut store_time[*u as usize], start);
        up[*u as usize] += 4 + 32 + msg.shares.iter().map(share_bytes).sum::<usize>();
        let start = Instant::now();
        server.receive_share_keys(msg)?;
        timed(&mut coordinator, start);
    }
    let start = Instant::now();
    let inboxes = server.close_share_keys()?;
    timed(&mut coordinator, start);

    let mut words = vec![0u32; config.dimension];
    for (u, inbox) in &inboxes {
        if plan.before_masking.contains(u) {
            continue;
        }
        down[*u as usize] += inbox.iter().map(share_bytes).sum::<usize>();
        input(*u, &mut words);
        let Some(store) = stores.get_mut(u) else {
            continue;
        };
        let start = Instant::now();
        let msg: MaskedInput = store.masked_input(inbox, &words)?;
        timed(&mut store_time[*u as usize], start);
        up[*u as usize] += 4 + 4 * msg.words.len();
        observe(&msg);
        let start = Instant::now();
        server.receive_masked_input(&msg)?;
        timed(&mut coordinator, start);
    }
    let start = Instant::now();
    let requests = server.close_masked_input()?;
    timed(&mut coordinator, start);

    for (v, request) in &requests {
        if plan.before_unmasking.contains(v) {
            continue;
        }
        down[*v as usize] += 4 * (request.survivors.len() + request.dropped.len());
        let Some(store) = stores.get_mut(v) else {
            continue;
        };
        let start = Instant::now();
        let msg: UnmaskResponse = store.unmask(request)?;
        timed(&mut store_time[*v as usize], start);
        up[*v as usize] += 4 + msg.shares.iter().map(|s| 5 + s.share.len()).sum::<usize>();
        let start = Instant::now();
        server.receive_unmask(msg)?;
        timed(&mut coordinator, start);
    }
    let start = Instant::now();
    let outcome = server.finish()?;
    timed(&mut coordinator, start);

    // Costs of the stores that took part in every stage (a dropped store does less).
    let full: Vec<usize> = (0..n)
        .filter(|u| {
            !plan.before_sharing.contains(u)
                && !plan.before_masking.contains(u)
                && !plan.before_unmasking.contains(u)
        })
        .map(|u| u as usize)
        .collect();
    let count = full.len().max(1) as f64;
    let cost = RoundCost {
        store_seconds_mean: full
            .iter()
            .map(|&u| store_time[u].as_secs_f64())
            .sum::<f64>()
            / count,
        store_seconds_max: full
            .iter()
            .map(|&u| store_time[u].as_secs_f64())
            .fold(0.0, f64::max),
        coordinator_seconds: coordinator.as_secs_f64(),
        store_bytes_up: full.iter().map(|&u| up[u]).sum::<usize>() as f64 / count,
        store_bytes_down: full.iter().map(|&u| down[u]).sum::<usize>() as f64 / count,
    };
    Ok((outcome, cost))
}
