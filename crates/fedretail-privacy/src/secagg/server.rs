//! The coordinator's side of SecAgg+. It routes messages it cannot read, sums masked
//! inputs as they arrive (memory O(dimension + stores x neighbours), never O(stores x
//! dimension)) and, at the end, removes exactly the masks the survivors' shares let it
//! rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use x25519_dalek::StaticSecret;

use super::crypto::{commitment, pairwise_seed, public_key, remove_masks, Mask};
use super::messages::{
    Advertisement, Confirmation, EncryptedShare, MaskedInput, ShareKeys, ShareKind, UnmaskRequest,
    UnmaskResponse,
};
use super::recover::{rebuild_checked, Rebuilt};
use super::{NeighbourGraph, SecAggConfig, SecAggError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Advertising,
    SharingKeys,
    Masking,
    Confirming,
    Unmasking,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Advertising => "advertising",
            Stage::SharingKeys => "sharing keys",
            Stage::Masking => "collecting masked inputs",
            Stage::Confirming => "confirming survivors",
            Stage::Unmasking => "unmasking",
        }
    }
}

/// The result of a completed round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecAggOutcome {
    /// Σ inputs of `survivors`, mod 2^32.
    pub sum: Vec<u32>,
    pub survivors: Vec<u32>,
    /// Stores that dealt their shares but sent no masked input.
    pub dropped: Vec<u32>,
    /// Stores that revealed a share that does not fit the committed secret; the sum
    /// was rebuilt without it.
    pub culprits: Vec<u32>,
}

pub struct SecAggServer {
    config: SecAggConfig,
    graph: Arc<NeighbourGraph>,
    stage: Stage,
    advertised: BTreeMap<u32, Advertisement>,
    dealt: BTreeMap<u32, ([u8; 32], Vec<EncryptedShare>)>,
    masked: BTreeSet<u32>,
    sum: Vec<u32>,
    requests: BTreeMap<u32, UnmaskRequest>,
    /// Per (owner, kind): who revealed which share, so a bad one can be traced.
    revealed: BTreeMap<(u32, ShareKindKey), Vec<Revealed>>,
    answered: BTreeSet<u32>,
    /// Under the consistency check, the survivors' signed confirmations; None when the
    /// round runs without one.
    confirmations: Option<BTreeMap<u32, Confirmation>>,
}

/// A revealed share and the store that revealed it.
type Revealed = (u32, Vec<u8>);

/// `ShareKind` as an ordered map key.
type ShareKindKey = u8;

fn kind_key(kind: ShareKind) -> ShareKindKey {
    match kind {
        ShareKind::SelfMaskSeed => 0,
        ShareKind::MaskKey => 1,
    }
}

impl SecAggServer {
    pub fn new(config: SecAggConfig, graph: Arc<NeighbourGraph>) -> Result<Self, SecAggError> {
        config.validate()?;
        let dimension = config.dimension;
        Ok(SecAggServer {
            config,
            graph,
            stage: Stage::Advertising,
            advertised: BTreeMap::new(),
            dealt: BTreeMap::new(),
            masked: BTreeSet::new(),
            sum: vec![0; dimension],
            requests: BTreeMap::new(),
            revealed: BTreeMap::new(),
            answered: BTreeSet::new(),
            confirmations: None,
        })
    }

    /// Whether the round runs the consistency check between masking and unmasking: it
    /// does when every store that advertised signed its keys with a long-term identity
    /// (decided when advertising closes), since those stores can sign the survivor set.
    pub fn checks_consistency(&self) -> bool {
        self.confirmations.is_some()
    }

    pub fn config(&self) -> &SecAggConfig {
        &self.config
    }

    fn enter(&self, expected: Stage, stage: &'static str) -> Result<(), SecAggError> {
        if self.stage != expected {
            return Err(SecAggError::OutOfOrder {
                stage,
                current: self.stage.name(),
            });
        }
        Ok(())
    }

    fn enough(&self, what: &str, have: usize) -> Result<(), SecAggError> {
        let t = self.config.threshold as usize;
        if have < t {
            return Err(SecAggError::TooManyDropouts(format!(
                "{have} stores {what}, the threshold is {t}"
            )));
        }
        Ok(())
    }

    pub fn receive_advertisement(&mut self, ad: Advertisement) -> Result<(), SecAggError> {
        const STAGE: &str = "advertise";
        self.enter(Stage::Advertising, STAGE)?;
        let refuse = |reason: &str| SecAggError::Refused {
            stage: STAGE,
            store: ad.store,
            reason: reason.to_string(),
        };
        if ad.store >= self.config.num_stores {
            return Err(refuse("not a store of this round"));
        }
        if self.advertised.contains_key(&ad.store) {
            return Err(refuse("already advertised (a replay?)"));
        }
        if ad.cipher_public_key == ad.mask_public_key {
            return Err(refuse("the two public keys are equal"));
        }
        self.advertised.insert(ad.store, ad);
        Ok(())
    }

    /// Ends round 0: for each store that advertised, its neighbours' advertisements.
    pub fn close_advertising(&mut self) -> Result<BTreeMap<u32, Vec<Advertisement>>, SecAggError> {
        self.enter(Stage::Advertising, "close advertising")?;
        self.enough("advertised keys", self.advertised.len())?;
        let mut out = BTreeMap::new();
        for &u in self.advertised.keys() {
            let ads = self
                .graph
                .neighbours(u)
                .iter()
                .filter_map(|v| self.advertised.get(v).cloned())
                .collect();
            out.insert(u, ads);
        }
        if self.advertised.values().all(|a| a.signed.is_some()) {
            self.confirmations = Some(BTreeMap::new());
        }
        self.stage = Stage::SharingKeys;
        Ok(out)
    }

    pub fn receive_share_keys(&mut self, msg: ShareKeys) -> Result<(), SecAggError> {
        const STAGE: &str = "share keys";
        self.enter(Stage::SharingKeys, STAGE)?;
        let store = msg.store;
        let refuse = |reason: String| SecAggError::Refused {
            stage: STAGE,
            store,
            reason,
        };
        if !self.advertised.contains_key(&store) {
            return Err(refuse("did not advertise keys this round".into()));
        }
        if self.dealt.contains_key(&store) {
            return Err(refuse("already sent its shares (a replay?)".into()));
        }
        // Exactly one share for each advertised neighbour: anything else would leave a
        // pairwise mask on one side only and corrupt the sum.
        let expected: BTreeSet<u32> = self
            .graph
            .neighbours(store)
            .iter()
            .copied()
            .filter(|v| self.advertised.contains_key(v))
            .collect();
        let mut got = BTreeSet::new();
        for share in &msg.shares {
            if share.from != store {
                return Err(refuse(format!("carries a share from store {}", share.from)));
            }
            if !expected.contains(&share.to) || !got.insert(share.to) {
                return Err(refuse(format!(
                    "a share for store {} that is not owed or is repeated",
                    share.to
                )));
            }
        }
        if got != expected {
            return Err(refuse(format!(
                "shares for {} of its {} advertised neighbours",
                got.len(),
                expected.len()
            )));
        }
        self.dealt
            .insert(store, (msg.self_mask_commitment, msg.shares));
        Ok(())
    }

    /// Ends round 1: for each store that dealt, the shares addressed to it by the
    /// neighbours that also dealt.
    pub fn close_share_keys(&mut self) -> Result<BTreeMap<u32, Vec<EncryptedShare>>, SecAggError> {
        self.enter(Stage::SharingKeys, "close share keys")?;
        self.enough("dealt their shares", self.dealt.len())?;
        let mut out: BTreeMap<u32, Vec<EncryptedShare>> =
            self.dealt.keys().map(|&u| (u, Vec::new())).collect();
        for (_, shares) in self.dealt.values() {
            for share in shares {
                if let Some(inbox) = out.get_mut(&share.to) {
                    inbox.push(share.clone());
                }
            }
        }
        self.stage = Stage::Masking;
        Ok(out)
    }

    /// Adds one masked input to the running sum; refused inputs leave the sum as it was.
    pub fn receive_masked_input(&mut self, msg: &MaskedInput) -> Result<(), SecAggError> {
        const STAGE: &str = "masked input";
        self.enter(Stage::Masking, STAGE)?;
        let refuse = |reason: String| SecAggError::Refused {
            stage: STAGE,
            store: msg.store,
            reason,
        };
        if !self.dealt.contains_key(&msg.store) {
            return Err(refuse("did not deal shares this round".into()));
        }
        if self.masked.contains(&msg.store) {
            return Err(refuse("already sent its input (a replay?)".into()));
        }
        if msg.words.len() != self.config.dimension {
            return Err(refuse(format!(
                "{} words, the round expects {}",
                msg.words.len(),
                self.config.dimension
            )));
        }
        for (acc, &w) in self.sum.iter_mut().zip(&msg.words) {
            *acc = acc.wrapping_add(w);
        }
        self.masked.insert(msg.store);
        Ok(())
    }

    /// Ends round 2. Before anyone reveals a share, checks that every secret that will
    /// be needed has enough surviving holders; if not, aborts here.
    pub fn close_masked_input(&mut self) -> Result<BTreeMap<u32, UnmaskRequest>, SecAggError> {
        self.enter(Stage::Masking, "close masked input")?;
        if self.checks_consistency() {
            return Err(SecAggError::OutOfOrder {
                stage: "close masked input (this round confirms survivors first)",
                current: self.stage.name(),
            });
        }
        self.plan_unmasking()?;
        self.stage = Stage::Unmasking;
        Ok(self.requests.clone())
    }

    /// Ends round 2 of a round with the consistency check: the survivor set every
    /// survivor is asked to sign.
    pub fn close_masked_input_to_confirm(&mut self) -> Result<Vec<u32>, SecAggError> {
        self.enter(Stage::Masking, "close masked input")?;
        self.plan_unmasking()?;
        self.stage = Stage::Confirming;
        Ok(self.masked.iter().copied().collect())
    }

    /// Takes a survivor's signature on the survivor set. The stores check signatures
    /// themselves; here only that it comes from a survivor, once.
    pub fn receive_confirmation(&mut self, c: Confirmation) -> Result<(), SecAggError> {
        const STAGE: &str = "confirm survivors";
        self.enter(Stage::Confirming, STAGE)?;
        let refuse = |reason: &str| SecAggError::Refused {
            stage: STAGE,
            store: c.store,
            reason: reason.to_string(),
        };
        if !self.masked.contains(&c.store) {
            return Err(refuse("is not a survivor of this round"));
        }
        let confirmations = self.confirmations.get_or_insert_with(BTreeMap::new);
        if confirmations.contains_key(&c.store) {
            return Err(refuse("already confirmed (a replay?)"));
        }
        confirmations.insert(c.store, c);
        Ok(())
    }

    /// Ends the consistency check: each survivor's unmask request, carrying the
    /// confirmations of its neighbours' neighbours (what it needs to check).
    pub fn close_confirming(&mut self) -> Result<BTreeMap<u32, UnmaskRequest>, SecAggError> {
        self.enter(Stage::Confirming, "close confirming")?;
        let confirmations = self.confirmations.take().unwrap_or_default();
        self.enough("confirmed the survivors", confirmations.len())?;
        // The confirmations go out with the requests only: the coordinator's own copy
        // of each request (what `receive_unmask` checks against) does not need them.
        let mut out = BTreeMap::new();
        for (&v, request) in &self.requests {
            let mut seats = BTreeSet::new();
            for &u in request.survivors.iter().chain(&request.dropped) {
                seats.extend(self.graph.neighbours(u).iter().copied());
            }
            let confirmations = seats
                .iter()
                .filter_map(|w| confirmations.get(w).cloned())
                .collect();
            out.insert(
                v,
                UnmaskRequest {
                    confirmations,
                    ..request.clone()
                },
            );
        }
        self.stage = Stage::Unmasking;
        Ok(out)
    }

    /// The checks and per-store requests that end masking, with or without the
    /// consistency check.
    fn plan_unmasking(&mut self) -> Result<(), SecAggError> {
        self.enough("sent masked inputs", self.masked.len())?;
        let t = self.config.threshold as usize;
        for &u in self.dealt.keys() {
            let holders = self.surviving_holders(u);
            let needed = self.masked.contains(&u)
                || self
                    .graph
                    .neighbours(u)
                    .iter()
                    .any(|v| self.masked.contains(v));
            if needed && holders < t {
                return Err(SecAggError::TooManyDropouts(format!(
                    "store {u}'s secrets have {holders} surviving holders, {t} are needed"
                )));
            }
        }
        let mut out = BTreeMap::new();
        for &v in &self.masked {
            let mut survivors = vec![v];
            let mut dropped = Vec::new();
            for &u in self.graph.neighbours(v) {
                if !self.dealt.contains_key(&u) {
                    continue;
                }
                if self.masked.contains(&u) {
                    survivors.push(u);
                } else {
                    dropped.push(u);
                }
            }
            survivors.sort_unstable();
            let request = UnmaskRequest {
                survivors,
                dropped,
                confirmations: Vec::new(),
            };
            out.insert(v, request);
        }
        self.requests = out;
        Ok(())
    }

    /// Neighbours of `u` that dealt (so hold `u`'s shares) and survived.
    fn surviving_holders(&self, u: u32) -> usize {
        self.graph
            .neighbours(u)
            .iter()
            .filter(|v| self.dealt.contains_key(v) && self.masked.contains(v))
            .count()
    }

    pub fn receive_unmask(&mut self, msg: UnmaskResponse) -> Result<(), SecAggError> {
        const STAGE: &str = "unmask";
        self.enter(Stage::Unmasking, STAGE)?;
        let store = msg.store;
        let refuse = |reason: String| SecAggError::Refused {
            stage: STAGE,
            store,
            reason,
        };
        let Some(request) = self.requests.get(&store) else {
            return Err(refuse("was not asked to unmask".into()));
        };
        if self.answered.contains(&store) {
            return Err(refuse("already answered (a replay?)".into()));
        }
        let mut seen = BTreeSet::new();
        for share in &msg.shares {
            let owed = match share.kind {
                ShareKind::SelfMaskSeed => request.survivors.contains(&share.owner),
                ShareKind::MaskKey => request.dropped.contains(&share.owner),
            };
            if !owed || share.owner == store || !seen.insert(share.owner) {
                return Err(refuse(format!(
                    "a {} share of store {} that was not asked for",
                    share.kind, share.owner
                )));
            }
        }
        for share in msg.shares {
            self.revealed
                .entry((share.owner, kind_key(share.kind)))
                .or_default()
                .push((store, share.share));
        }
        self.answered.insert(store);
        Ok(())
    }

    /// Rebuilds `owner`'s secret of `kind`, one that passes `check`, routing around
    /// bad shares (see `recover`); also returns who revealed them.
    fn rebuild(
        &self,
        owner: u32,
        kind: ShareKind,
        check: impl Fn(&[u8; 32]) -> bool,
    ) -> Result<Rebuilt, SecAggError> {
        let shares: Vec<(u32, &[u8])> = self
            .revealed
            .get(&(owner, kind_key(kind)))
            .map(|v| v.iter().map(|(from, s)| (*from, s.as_slice())).collect())
            .unwrap_or_default();
        if shares.len() < self.config.threshold as usize {
            return Err(SecAggError::TooManyDropouts(format!(
                "{} shares of store {owner}'s {kind} arrived, {} are needed",
                shares.len(),
                self.config.threshold
            )));
        }
        let seed = self.config.session ^ ((owner as u64) << 1 | kind_key(kind) as u64);
        rebuild_checked(self.config.threshold, &shares, seed, check)
            .ok_or(SecAggError::BadReconstruction { owner, kind })
    }

    /// Ends round 3: rebuilds and removes the masks, returns the sum of the survivors.
    /// Secrets are rebuilt, keys agreed and masks expanded on all cores.
    pub fn finish(self) -> Result<SecAggOutcome, SecAggError> {
        use rayon::prelude::*;
        self.enter(Stage::Unmasking, "finish")?;
        self.enough("answered the unmasking request", self.answered.len())?;
        let survivors: Vec<u32> = self.masked.iter().copied().collect();
        let rebuilt: Vec<(Mask, Vec<u32>)> = survivors
            .par_iter()
            .map(|&u| self.self_mask(u))
            .collect::<Result<_, _>>()?;
        let (mut masks, mut culprits): (Vec<Mask>, Vec<Vec<u32>>) = rebuilt.into_iter().unzip();
        let dropped: Vec<u32> = self
            .dealt
            .keys()
            .copied()
            .filter(|u| !self.masked.contains(u))
            .collect();
        let (pair_masks, key_culprits) = self.dropped_pair_masks(&dropped)?;
        masks.extend(pair_masks);
        culprits.extend(key_culprits);
        let mut culprits: Vec<u32> = culprits.into_iter().flatten().collect();
        culprits.sort_unstable();
        culprits.dedup();
        let mut sum = self.sum.clone();
        remove_masks(&mut sum, &masks, self.config.prg);
        Ok(SecAggOutcome {
            sum,
            survivors,
            dropped,
            culprits,
        })
    }

    /// The self mask survivor `u` added, rebuilt from its shares and checked against
    /// its commitment, as the mask that undoes it.
    fn self_mask(&self, u: u32) -> Result<(Mask, Vec<u32>), SecAggError> {
        let committed = self.dealt[&u].0;
        let rebuilt = self.rebuild(u, ShareKind::SelfMaskSeed, |seed| {
            commitment(seed) == committed
        })?;
        let mask = Mask {
            seed: rebuilt.secret,
            subtract: true,
        };
        Ok((mask, rebuilt.culprits))
    }

    /// The mask key of dropped store `u`, rebuilt from its shares and checked against
    /// the public key it advertised.
    fn mask_key(&self, u: u32) -> Result<(StaticSecret, Vec<u32>), SecAggError> {
        let advertised = self.advertised[&u].mask_public_key;
        let rebuilt = self.rebuild(u, ShareKind::MaskKey, |secret| {
            public_key(&StaticSecret::from(*secret)) == advertised
        })?;
        Ok((StaticSecret::from(rebuilt.secret), rebuilt.culprits))
    }

    /// The pairwise masks between each dropped store and its surviving neighbours, as
    /// masks that undo them: the rebuilds and key agreements run on all cores.
    /// Also returns, per dropped store, who revealed bad shares of its key.
    fn dropped_pair_masks(
        &self,
        dropped: &[u32],
    ) -> Result<(Vec<Mask>, Vec<Vec<u32>>), SecAggError> {
        use rayon::prelude::*;
        let live = |u: u32| {
            self.graph
                .neighbours(u)
                .iter()
                .copied()
                .filter(|v| self.masked.contains(v))
        };
        let rebuilt: Vec<(u32, (StaticSecret, Vec<u32>))> = dropped
            .par_iter()
            .filter(|&&u| live(u).next().is_some())
            .map(|&u| Ok((u, self.mask_key(u)?)))
            .collect::<Result<_, SecAggError>>()?;
        let (keys, culprits): (Vec<(u32, StaticSecret)>, Vec<Vec<u32>>) = rebuilt
            .into_iter()
            .map(|(u, (key, culprits))| ((u, key), culprits))
            .unzip();
        let pairs: Vec<(u32, u32, &StaticSecret)> = keys
            .iter()
            .flat_map(|(u, secret)| live(*u).map(move |v| (*u, v, secret)))
            .collect();
        pairs
            .par_iter()
            .map(|&(u, v, secret)| {
                let their = &self.advertised[&v].mask_public_key;
                let seed = pairwise_seed(secret, their, self.config.session, u, v).ok_or(
                    SecAggError::BadReconstruction {
                        owner: u,
                        kind: ShareKind::MaskKey,
                    },
                )?;
                // Survivor v added the mask if v < u and subtracted it otherwise: undo.
                Ok(Mask {
                    seed,
                    subtract: v < u,
                })
            })
            .collect::<Result<_, _>>()
            .map(|masks| (masks, culprits))
    }
}
