use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

fn complete(n: u32, dimension: usize) -> SecAggConfig {
    let k = n - 1;
    SecAggConfig {
        num_stores: n,
        dimension,
        neighbours: k,
        threshold: k / 2 + 1,
        session: 99,
        prg: MaskPrg::default(),
    }
}

fn plain_sum(inputs: &[Vec<u32>], members: &[u32]) -> Vec<u32> {
    let mut sum = vec![0u32; inputs[0].len()];
    for &u in members {
        for (s, &x) in sum.iter_mut().zip(&inputs[u as usize]) {
            *s = s.wrapping_add(x);
        }
    }
    sum
}

fn run(
    config: &SecAggConfig,
    plan: &DropoutPlan,
    inputs: &[Vec<u32>],
) -> Result<SecAggOutcome, SecAggError> {
    simulate_round(config, plan, 5, |u, words| {
        words.copy_from_slice(&inputs[u as usize])
    })
    .map(|(outcome, _)| outcome)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Complete graph: any dropouts that leave every store `t` surviving holders,
    /// masks expanded by either PRG.
    #[test]
    fn unmasked_sum_equals_plain_sum_exactly(
        n in 3u32..14,
        d in 1usize..40,
        seed in any::<u64>(),
        drops in proptest::collection::vec((0u32..14, 0u8..2), 0..8),
        prg in proptest::sample::select(MaskPrg::ALL.to_vec()),
    ) {
        let config = SecAggConfig { prg, ..complete(n, d) };
        let t = config.threshold;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let inputs: Vec<Vec<u32>> = (0..n).map(|_| (0..d).map(|_| rng.random()).collect()).collect();
        let mut plan = DropoutPlan::default();
        let budget = (n - 1 - t) as usize; // each neighbourhood may lose this many
        for (u, stage) in drops.into_iter().filter(|(u, _)| *u < n).take(budget) {
            if stage == 0 { plan.before_masking.insert(u); } else { plan.before_unmasking.insert(u); }
        }
        for u in plan.before_masking.clone() {
            plan.before_unmasking.remove(&u);
        }
        let outcome = run(&config, &plan, &inputs).unwrap();
        let counted: Vec<u32> = (0..n).filter(|u| !plan.before_masking.contains(u)).collect();
        prop_assert_eq!(&outcome.survivors, &counted);
        prop_assert_eq!(outcome.sum, plain_sum(&inputs, &counted));
    }

    /// Sparse SecAgg+ graphs, weighted real inputs through the fixed-point encoding.
    #[test]
    fn sparse_graph_weighted_sum_is_exact_in_integers(
        n in 20u32..48,
        d in 1usize..24,
        seed in any::<u64>(),
        drop_share in 0.0f64..0.08,
    ) {
        let config = SecAggConfig::for_network(n, d + 1, seed).unwrap();
        let graph = NeighbourGraph::new(&config);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let dropped: BTreeSet<u32> = (0..n).filter(|_| rng.random::<f64>() < drop_share).collect();
        let worst_loss = (0..n)
            .map(|u| graph.neighbours(u).iter().filter(|v| dropped.contains(v)).count())
            .max()
            .unwrap_or(0);
        prop_assume!(worst_loss as u32 <= config.neighbours - config.threshold);
        // Each store sends (w/W) x and w/W, as a weighted FedAvg would.
        let weight_cap = 1000.0;
        let fp = FixedPoint::for_sum(n, 1.0, 0.0).unwrap();
        let mut inputs = Vec::new();
        let mut exact = vec![0.0; d + 1];
        for u in 0..n {
            let w: f64 = rng.random_range(1.0..weight_cap);
            let mut values: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0) * w / weight_cap).collect();
            values.push(w / weight_cap);
            let mut words = vec![0u32; d + 1];
            fp.encode_into(&values, &mut words, &mut rng);
            if !dropped.contains(&u) {
                for (e, v) in exact.iter_mut().zip(&values) { *e += v; }
            }
            inputs.push(words);
        }
        let plan = DropoutPlan { before_masking: dropped.clone(), ..Default::default() };
        let outcome = run(&config, &plan, &inputs).unwrap();
        let survivors: Vec<u32> = (0..n).filter(|u| !dropped.contains(u)).collect();
        prop_assert_eq!(&outcome.sum, &plain_sum(&inputs, &survivors));
        let decoded = fp.decode(&outcome.sum);
        for (got, want) in decoded.iter().zip(&exact) {
            prop_assert!((got - want).abs() <= n as f64 / fp.scale());
        }
    }

    /// Too many dropouts: the round aborts with a clear error and returns no sum.
    #[test]
    fn too_many_dropouts_abort(n in 4u32..14, seed in any::<u64>()) {
        let config = complete(n, 3);
        let inputs = vec![vec![1u32, 2, 3]; n as usize];
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut order: Vec<u32> = (0..n).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let keep = config.threshold as usize - 1;
        let plan = DropoutPlan {
            before_masking: order[keep..].iter().copied().collect(),
            ..Default::default()
        };
        let err = run(&config, &plan, &inputs).unwrap_err();
        prop_assert!(matches!(err, SecAggError::TooManyDropouts(_)), "{err}");
    }
}

use rand::Rng;

/// Drives a five-store round by hand so a test can interfere at any point.
struct Round {
    server: SecAggServer,
    stores: Vec<SecAggStore>,
}

impl Round {
    fn new(session: u64) -> (Self, Vec<Advertisement>) {
        let config = SecAggConfig {
            session,
            ..complete(5, 4)
        };
        let graph = Arc::new(NeighbourGraph::new(&config));
        let mut rng = ChaCha20Rng::seed_from_u64(session);
        let server = SecAggServer::new(config.clone(), graph.clone()).unwrap();
        let mut stores = Vec::new();
        let mut ads = Vec::new();
        for u in 0..5 {
            let (s, ad) = SecAggStore::new(config.clone(), graph.clone(), u, &mut rng).unwrap();
            stores.push(s);
            ads.push(ad);
        }
        (Round { server, stores }, ads)
    }

    fn to_masking(session: u64) -> (Self, std::collections::BTreeMap<u32, Vec<EncryptedShare>>) {
        let (mut round, ads) = Round::new(session);
        for ad in ads {
            round.server.receive_advertisement(ad).unwrap();
        }
        let neighbour_ads = round.server.close_advertising().unwrap();
        for (u, ads) in &neighbour_ads {
            let msg = round.stores[*u as usize].share_keys(ads).unwrap();
            round.server.receive_share_keys(msg).unwrap();
        }
        let inboxes = round.server.close_share_keys().unwrap();
        (round, inboxes)
    }
}

#[test]
fn a_tampered_or_replayed_share_does_not_decrypt() {
    let (mut round, inboxes) = Round::to_masking(1);
    let mut tampered = inboxes[&0].clone();
    tampered[0].ciphertext[3] ^= 0x40;
    let err = round.stores[0]
        .masked_input(&tampered, &[0; 4])
        .unwrap_err();
    assert!(matches!(err, SecAggError::BadCiphertext { .. }), "{err}");

    // The same share replayed into another session (same store indices, new keys).
    let (mut other, _) = Round::to_masking(2);
    let err = other.stores[0]
        .masked_input(&inboxes[&0], &[0; 4])
        .unwrap_err();
    assert!(matches!(err, SecAggError::BadCiphertext { .. }), "{err}");

    // Misrouted: a share meant for store 0 handed to store 1.
    let mut misrouted = inboxes[&1].clone();
    misrouted[0] = inboxes[&0][0].clone();
    let err = round.stores[1]
        .masked_input(&misrouted, &[0; 4])
        .unwrap_err();
    assert!(err.to_string().contains("addressed to store 0"), "{err}");
}

#[test]
fn replayed_messages_are_refused_and_leave_the_sum_alone() {
    let (mut round, ads) = Round::new(3);
    let first = ads[0].clone();
    for ad in ads {
        round.server.receive_advertisement(ad).unwrap();
    }
    let err = round.server.receive_advertisement(first).unwrap_err();
    assert!(err.to_string().contains("already advertised"), "{err}");

    let (mut round, inboxes) = Round::to_masking(4);
    let mut sent = Vec::new();
    for (u, inbox) in &inboxes {
        let msg = round.stores[*u as usize]
            .masked_input(inbox, &[*u + 1, 0, 0, 7])
            .unwrap();
        round.server.receive_masked_input(&msg).unwrap();
        sent.push(msg);
    }
    let err = round.server.receive_masked_input(&sent[2]).unwrap_err();
    assert!(err.to_string().contains("already sent its input"), "{err}");
    let short = MaskedInput {
        store: 9,
        words: vec![1],
    };
    assert!(round.server.receive_masked_input(&short).is_err());
    let requests = round.server.close_masked_input().unwrap();
    for (v, req) in &requests {
        let resp = round.stores[*v as usize].unmask(req).unwrap();
        round.server.receive_unmask(resp.clone()).unwrap();
        assert!(round.server.receive_unmask(resp).is_err());
    }
    let outcome = round.server.finish().unwrap();
    assert_eq!(outcome.sum, vec![15, 0, 0, 35]);
}

#[test]
fn a_store_never_reveals_both_shares_of_a_neighbour() {
    let (mut round, inboxes) = Round::to_masking(5);
    for (u, inbox) in &inboxes {
        round.stores[*u as usize]
            .masked_input(inbox, &[0; 4])
            .unwrap();
    }
    // A curious coordinator asks for store 1 as both survivor and dropped...
    let greedy = UnmaskRequest {
        survivors: vec![0, 1, 2, 3, 4],
        dropped: vec![1],
        confirmations: vec![],
    };
    let err = round.stores[0].unmask(&greedy).unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    // ...or asks twice with different answers in mind: the second request is refused.
    let err = round.stores[0]
        .unmask(&UnmaskRequest {
            survivors: vec![0],
            dropped: vec![1, 2, 3, 4],
            confirmations: vec![],
        })
        .unwrap_err();
    assert!(matches!(err, SecAggError::OutOfOrder { .. }), "{err}");
    let honest = UnmaskRequest {
        survivors: vec![0, 1, 2, 3, 4],
        dropped: vec![],
        confirmations: vec![],
    };
    let err = round.stores[1].unmask(&UnmaskRequest {
        survivors: vec![1],
        dropped: vec![0, 2, 3, 4],
        confirmations: vec![],
    });
    // Too few survivors to answer safely: refused, nothing revealed.
    assert!(matches!(err, Err(SecAggError::TooManyDropouts(_))));
    assert!(round.stores[2].unmask(&honest).is_ok());
}

/// Stores in `liars` flip a bit of every share they reveal, each its own bit (errors
/// that cancel would rebuild the right secret); the round's outcome.
fn round_with_lying_revealers(session: u64, liars: &[u32]) -> Result<SecAggOutcome, SecAggError> {
    let (mut round, inboxes) = Round::to_masking(session);
    for (u, inbox) in &inboxes {
        let msg = round.stores[*u as usize]
            .masked_input(inbox, &[1; 4])
            .unwrap();
        round.server.receive_masked_input(&msg).unwrap();
    }
    let requests = round.server.close_masked_input().unwrap();
    for (v, req) in &requests {
        let mut resp = round.stores[*v as usize].unmask(req).unwrap();
        if liars.contains(v) {
            for share in &mut resp.shares {
                share.share[5 + *v as usize] ^= 1 << v;
            }
        }
        round.server.receive_unmask(resp).unwrap();
    }
    round.server.finish()
}

/// One store revealing bad shares costs the round nothing: the coordinator finds `t`
/// shares that rebuild each committed secret, names the culprit and unmasks the exact
/// sum. Two liars among a secret's four holders leave only two good shares (t = 3),
/// and the round aborts rather than unmask anything wrong.
#[test]
fn a_store_revealing_bad_shares_is_named_and_routed_around() {
    let outcome = round_with_lying_revealers(6, &[0]).unwrap();
    assert_eq!(outcome.sum, vec![5; 4]);
    assert_eq!(outcome.culprits, vec![0]);
    let err = round_with_lying_revealers(6, &[0, 1]).unwrap_err();
    assert!(
        matches!(err, SecAggError::BadReconstruction { .. }),
        "{err}"
    );
    assert!(round_with_lying_revealers(6, &[])
        .unwrap()
        .culprits
        .is_empty());
}

#[test]
fn a_store_that_deals_too_few_shares_is_refused() {
    let (mut round, ads) = Round::new(7);
    for ad in ads {
        round.server.receive_advertisement(ad).unwrap();
    }
    let neighbour_ads = round.server.close_advertising().unwrap();
    let mut msg = round.stores[0].share_keys(&neighbour_ads[&0]).unwrap();
    msg.shares.pop();
    let err = round.server.receive_share_keys(msg).unwrap_err();
    assert!(err.to_string().contains("shares for 3 of its 4"), "{err}");
}

#[test]
fn configs_are_checked() {
    assert!(SecAggConfig::for_network(2, 10, 0).is_err());
    let weak = SecAggConfig {
        threshold: 2,
        ..complete(5, 3)
    };
    assert!(weak
        .validate()
        .unwrap_err()
        .to_string()
        .contains("above half"));
    let odd = SecAggConfig {
        neighbours: 5,
        threshold: 3,
        ..complete(40, 3)
    };
    assert!(odd.validate().is_err());
    let c = SecAggConfig::for_network_tolerating(1000, 10, 0, 0.1).unwrap();
    assert!(
        c.neighbours < 100 && c.neighbours.is_multiple_of(2),
        "{c:?}"
    );
}

/// Hostile messages at every stage of a round: arbitrary store indices, keys, shares,
/// words and revealed shares, from the coordinator's side and from a store's. Each is
/// refused with an error or taken; nothing panics, and the honest stores' round still
/// ends with their exact sum when the hostile message was refused.
mod hostile {
    use super::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max)
    }

    fn share() -> impl Strategy<Value = EncryptedShare> {
        (0u32..8, 0u32..8, bytes(120)).prop_map(|(from, to, ciphertext)| EncryptedShare {
            from,
            to,
            ciphertext,
        })
    }

    fn revealed() -> impl Strategy<Value = RevealedShare> {
        (0u32..8, any::<bool>(), bytes(80)).prop_map(|(owner, mask, share)| RevealedShare {
            owner,
            kind: if mask {
                ShareKind::MaskKey
            } else {
                ShareKind::SelfMaskSeed
            },
            share,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn a_hostile_advertisement_or_share_message_never_panics(
            store in 0u32..8, key in any::<[u8; 32]>(), commitment in any::<[u8; 32]>(),
            shares in proptest::collection::vec(share(), 0..8),
        ) {
            let (mut round, ads) = Round::new(11);
            let _ = round.server.receive_advertisement(Advertisement {
                store, cipher_public_key: key, mask_public_key: key, signed: None,
            });
            for ad in ads {
                let _ = round.server.receive_advertisement(ad);
            }
            if let Ok(neighbour_ads) = round.server.close_advertising() {
                let _ = round.server.receive_share_keys(ShareKeys {
                    store, self_mask_commitment: commitment, shares: shares.clone(),
                });
                for (u, ads) in &neighbour_ads {
                    // A store handed hostile neighbour keys refuses or deals; no panic.
                    if let Ok(msg) = round.stores[*u as usize].share_keys(ads) {
                        let _ = round.server.receive_share_keys(msg);
                    }
                }
                let _ = round.server.close_share_keys();
            }
        }

        #[test]
        fn hostile_inputs_unmask_requests_and_reveals_never_panic(
            store in 0u32..8, words in proptest::collection::vec(any::<u32>(), 0..9),
            inbox in proptest::collection::vec(share(), 0..6),
            survivors in proptest::collection::vec(0u32..9, 0..8),
            dropped in proptest::collection::vec(0u32..9, 0..8),
            reveals in proptest::collection::vec(revealed(), 0..8),
        ) {
            let (mut round, inboxes) = Round::to_masking(12);
            // A store handed a forged inbox refuses it (or masks); no panic.
            let _ = round.stores[0].masked_input(&inbox, &[1, 2, 3, 4]);
            let hostile = round.server.receive_masked_input(&MaskedInput { store, words });
            let mut honest = Vec::new();
            for (u, inbox) in &inboxes {
                let msg = round.stores[*u as usize].masked_input(inbox, &[*u, 1, 0, 0]).unwrap();
                if round.server.receive_masked_input(&msg).is_ok() {
                    honest.push(*u);
                }
            }
            let request = UnmaskRequest { survivors, dropped, confirmations: vec![] };
            let _ = round.stores[1].unmask(&request);
            let _ = round.server.receive_unmask(UnmaskResponse { store, shares: reveals });
            if let Ok(requests) = round.server.close_masked_input() {
                for (v, req) in &requests {
                    if let Ok(resp) = round.stores[*v as usize].unmask(req) {
                        let _ = round.server.receive_unmask(resp);
                    }
                }
                if let (Err(_), Ok(outcome)) = (hostile, round.server.finish()) {
                    // Every honest input made it: the first word is the sum of indices.
                    let expected: u32 = honest.iter().sum();
                    prop_assert_eq!(outcome.sum[0], expected);
                }
            }
        }
    }
}

/// Five enrolled stores that sign their advertisements and require signed neighbours,
/// with their identities.
fn signed_round(session: u64) -> (Round, Vec<Advertisement>, Vec<StoreIdentity>) {
    let (mut round, mut ads) = Round::new(session);
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let authority = RosterAuthority::generate(&mut rng);
    let mut identities = Vec::new();
    for (u, ad) in ads.iter_mut().enumerate() {
        let identity = authority.enroll(&format!("store-{u}"), &mut rng);
        identity.check_against(&authority.roster()).unwrap();
        identity.sign(ad, session);
        identities.push(identity);
    }
    let roster = authority.roster();
    round.stores = round
        .stores
        .into_iter()
        .map(|s| s.with_roster(roster.clone()))
        .collect();
    (round, ads, identities)
}

fn advertise(round: &mut Round, ads: Vec<Advertisement>) -> BTreeMap<u32, Vec<Advertisement>> {
    for ad in ads {
        round.server.receive_advertisement(ad).unwrap();
    }
    round.server.close_advertising().unwrap()
}

/// A signed round up to its consistency check: every store has masked `[u, 1, 0, 2]`.
fn signed_round_to_confirming(session: u64) -> (Round, Vec<StoreIdentity>) {
    let (mut round, ads, identities) = signed_round(session);
    let neighbour_ads = advertise(&mut round, ads);
    assert!(round.server.checks_consistency());
    for (u, ads) in &neighbour_ads {
        let msg = round.stores[*u as usize].share_keys(ads).unwrap();
        round.server.receive_share_keys(msg).unwrap();
    }
    for (u, inbox) in round.server.close_share_keys().unwrap() {
        let msg = round.stores[u as usize]
            .masked_input(&inbox, &[u, 1, 0, 2])
            .unwrap();
        round.server.receive_masked_input(&msg).unwrap();
    }
    (round, identities)
}

#[test]
fn signed_advertisements_and_the_consistency_check_run_a_round_to_the_exact_sum() {
    let (mut round, identities) = signed_round_to_confirming(11);
    // Without the consistency check there is no way on to unmasking.
    assert!(round.server.close_masked_input().is_err());
    let survivors = round.server.close_masked_input_to_confirm().unwrap();
    assert_eq!(survivors, vec![0, 1, 2, 3, 4]);
    for (u, identity) in identities.iter().enumerate() {
        let c = round.stores[u].confirm(&survivors, identity).unwrap();
        round.server.receive_confirmation(c).unwrap();
    }
    for (v, req) in round.server.close_confirming().unwrap() {
        assert_eq!(req.confirmations.len(), 5);
        let resp = round.stores[v as usize].unmask(&req).unwrap();
        round.server.receive_unmask(resp).unwrap();
    }
    assert_eq!(round.server.finish().unwrap().sum, vec![10, 5, 0, 10]);
}

/// The attack the consistency check is for: the coordinator tells stores 0 and 1 that
/// store 4 dropped (to collect shares of its mask key) and the others that it survived
/// (to collect shares of its self-mask seed). Each honest store signs one story; no
/// story about store 4 gets `t` of its neighbours' signatures, so no one answers.
#[test]
fn a_coordinator_telling_two_stories_about_who_dropped_gets_no_share() {
    let (mut round, identities) = signed_round_to_confirming(15);
    let t = 3; // complete graph of 5: k = 4, t = 3
    let (told_dropped, told_survived) = (vec![0u32, 1, 2, 3], vec![0u32, 1, 2, 3, 4]);
    let mut confirmations = Vec::new();
    for (u, identity) in identities.iter().enumerate() {
        let story = if u < 2 { &told_dropped } else { &told_survived };
        confirmations.push(round.stores[u].confirm(story, identity).unwrap());
    }
    let greedy = UnmaskRequest {
        survivors: vec![0, 1, 2, 3],
        dropped: vec![4],
        confirmations: confirmations.clone(),
    };
    // Store 0 signed the "dropped" story; of store 1's neighbours (0, 2, 3, 4) only
    // store 0 signed it, so store 0 will not answer about store 1 (or anyone).
    let err = round.stores[0].unmask(&greedy).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "only 1 of store 1's neighbours confirmed the survivor set, {t} must"
        )),
        "{err}"
    );
    // Store 2, told that everyone survived, refuses too: stores 0 and 1 signed the
    // other story, so only stores 2 and 4 vouch for this one among store 3's neighbours.
    let honest = UnmaskRequest {
        survivors: vec![0, 1, 2, 3, 4],
        dropped: vec![],
        confirmations,
    };
    let err = round.stores[2].unmask(&honest).unwrap_err().to_string();
    assert!(
        err.contains("only 2 of store 3's neighbours confirmed"),
        "{err}"
    );
}

#[test]
fn under_a_roster_a_store_unmasks_only_after_confirming_and_only_what_it_signed() {
    let (mut round, identities) = signed_round_to_confirming(16);
    let all = vec![0u32, 1, 2, 3, 4];
    let skip = UnmaskRequest {
        survivors: all.clone(),
        dropped: vec![],
        confirmations: vec![],
    };
    let err = round.stores[0].unmask(&skip).unwrap_err().to_string();
    assert!(
        err.contains("before the survivor set was confirmed"),
        "{err}"
    );

    round.stores[1].confirm(&all, &identities[1]).unwrap();
    let contradicting = UnmaskRequest {
        survivors: vec![1, 2, 3, 4],
        dropped: vec![0],
        confirmations: vec![],
    };
    let err = round.stores[1]
        .unmask(&contradicting)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("contradicts the survivor set this store confirmed"),
        "{err}"
    );

    // A survivor set that leaves the store itself out is not signed.
    let err = round.stores[2]
        .confirm(&[0, 1], &identities[2])
        .unwrap_err();
    assert!(err.to_string().contains("including this store"), "{err}");
}

/// What store 0 is told store 1 advertised, after `tamper`; the error store 0 gives.
fn store_zero_refuses(session: u64, tamper: impl Fn(&mut Advertisement)) -> String {
    let (mut round, ads, _) = signed_round(session);
    let mut neighbour_ads = advertise(&mut round, ads);
    let seen = neighbour_ads.get_mut(&0).unwrap();
    tamper(seen.iter_mut().find(|a| a.store == 1).unwrap());
    let err = round.stores[0].share_keys(seen).unwrap_err();
    assert!(
        matches!(err, SecAggError::BadAdvertisement { store: 1, .. }),
        "{err}"
    );
    err.to_string()
}

#[test]
fn a_coordinator_that_swaps_a_key_is_caught_before_any_share_is_dealt() {
    // Without enrolment (the protocol as it was), a swapped key is simply used: the
    // coordinator then holds the key store 0 seals store 1's shares with.
    let (mut plain, ads) = Round::new(12);
    let mut neighbour_ads = advertise(&mut plain, ads);
    let own_key = [9u8; 32];
    let seen = neighbour_ads.get_mut(&0).unwrap();
    seen.iter_mut()
        .find(|a| a.store == 1)
        .unwrap()
        .cipher_public_key = own_key;
    assert!(plain.stores[0].share_keys(seen).is_ok());

    let swapped = store_zero_refuses(12, |a| a.cipher_public_key = own_key);
    assert!(swapped.contains("altered or replayed"), "{swapped}");
    let unsigned = store_zero_refuses(12, |a| a.signed = None);
    assert!(unsigned.contains("not signed"), "{unsigned}");

    // Re-signed with a key the coordinator enrolled under a roster of its own.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let rogue = RosterAuthority::generate(&mut rng).enroll("store-1", &mut rng);
    let forged = store_zero_refuses(12, |a| {
        a.cipher_public_key = own_key;
        rogue.sign(a, 12);
    });
    assert!(
        forged.contains("not issued by this network's roster"),
        "{forged}"
    );

    // Store 1's genuine advertisement from another round.
    let (_, old, _) = signed_round(13);
    let replayed = store_zero_refuses(12, |a| *a = old[1].clone());
    assert!(replayed.contains("altered or replayed"), "{replayed}");
}

#[test]
fn one_enrolled_store_cannot_fill_two_seats() {
    let (mut round, mut ads, _) = signed_round(14);
    // Store 2's seat signed with store 1's identity (a Sybil seat).
    let mut rng = ChaCha20Rng::seed_from_u64(77);
    let authority = RosterAuthority::generate(&mut rng);
    let _zero = authority.enroll("store-0", &mut rng);
    let one = authority.enroll("store-1", &mut rng);
    one.sign(&mut ads[2], 14);
    let neighbour_ads = advertise(&mut round, ads);
    let err = round.stores[0].share_keys(&neighbour_ads[&0]).unwrap_err();
    assert!(
        err.to_string()
            .contains("'store-1' already holds another seat"),
        "{err}"
    );
}

#[test]
fn a_store_identity_survives_its_file_and_is_checked_against_the_roster() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let authority = RosterAuthority::generate(&mut rng);
    let identity = authority.enroll("corner-shop", &mut rng);
    let back = StoreIdentity::from_json(&identity.to_json()).unwrap();
    assert_eq!(back.store_id(), "corner-shop");
    back.check_against(&authority.roster()).unwrap();
    let roster = Roster::from_hex(&authority.roster().to_hex()).unwrap();
    assert_eq!(roster, authority.roster());
    let other = RosterAuthority::generate(&mut rng).roster();
    let err = back.check_against(&other).unwrap_err();
    assert!(
        err.to_string()
            .contains("not issued by the configured roster"),
        "{err}"
    );
    let err = Roster::from_hex("abcd").unwrap_err();
    assert!(err.to_string().contains("must be 32 bytes"), "{err}");
    assert!(StoreIdentity::from_json("{}").is_err());
}

/// Enrolled stores on a sparse graph, losing stores before masking and before
/// unmasking: the consistency check passes for every honest store and the sum is exact.
#[test]
fn a_signed_sparse_round_with_dropouts_sums_exactly() {
    let config = SecAggConfig::for_network(40, 6, 21).unwrap();
    assert!(config.neighbours < 39, "the graph should be sparse");
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let inputs: Vec<Vec<u32>> = (0..40)
        .map(|_| (0..6).map(|_| rng.random()).collect())
        .collect();
    let plan = DropoutPlan {
        before_masking: [3, 17].into(),
        before_unmasking: [25].into(),
        ..Default::default()
    };
    let (outcome, _) = simulate_signed_round(&config, &plan, 9, |u, words| {
        words.copy_from_slice(&inputs[u as usize])
    })
    .unwrap();
    let counted: Vec<u32> = (0..40).filter(|u| ![3, 17].contains(u)).collect();
    assert_eq!(outcome.survivors, counted);
    assert_eq!(outcome.sum, plain_sum(&inputs, &counted));
}
