//! A store's side of SecAgg+: one value per round, driven stage by stage. A stage called
//! twice or out of order is refused, so a curious coordinator cannot ask a store for
//! both kinds of share of one neighbour.

use std::collections::BTreeMap;
use std::sync::Arc;

use blahaj::{Share, Sharks};
use x25519_dalek::{SharedSecret, StaticSecret};

use super::crypto::{
    apply_mask, commitment, exchange, open, pairwise_seed, public_key, seal, Mask,
};
use super::messages::{
    Advertisement, Confirmation, EncryptedShare, MaskedInput, RevealedShare, ShareKeys, ShareKind,
    UnmaskRequest, UnmaskResponse,
};
use super::{NeighbourGraph, Roster, SecAggConfig, SecAggError, StoreIdentity};

/// Bytes of one serialised share of a 32-byte secret: the x coordinate, then 32 y bytes.
const SHARE_BYTES: usize = 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Advertised,
    KeysShared,
    InputMasked,
    Confirmed,
    Done,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Advertised => "advertised",
            Stage::KeysShared => "keys shared",
            Stage::InputMasked => "input masked",
            Stage::Confirmed => "survivors confirmed",
            Stage::Done => "done",
        }
    }
}

struct HeldShares {
    seed_share: Vec<u8>,
    key_share: Vec<u8>,
}

pub struct SecAggStore {
    config: SecAggConfig,
    graph: Arc<NeighbourGraph>,
    index: u32,
    cipher_secret: StaticSecret,
    mask_secret: StaticSecret,
    self_seed: [u8; 32],
    stage: Stage,
    neighbour_keys: BTreeMap<u32, Advertisement>,
    /// X25519 of this store's cipher key with each neighbour's, computed once when
    /// sealing the shares it deals and used again to open the shares it receives.
    cipher_shared: BTreeMap<u32, SharedSecret>,
    held: BTreeMap<u32, HeldShares>,
    /// When set, every neighbour's advertisement must be signed by an enrolled store,
    /// and unmasking waits for the consistency check.
    roster: Option<Roster>,
    /// The survivor set this store signed in the consistency check.
    confirmed: Vec<u32>,
}

impl SecAggStore {
    /// Draws this round's keys and self-mask seed from `rng`, which must be a CSPRNG
    /// (an OS-seeded ChaCha20 in production; seeded only in tests).
    pub fn new<R: rand::CryptoRng>(
        config: SecAggConfig,
        graph: Arc<NeighbourGraph>,
        index: u32,
        rng: &mut R,
    ) -> Result<(Self, Advertisement), SecAggError> {
        config.validate()?;
        if index >= config.num_stores {
            return Err(SecAggError::Config(format!(
                "store index {index} is outside the round's {} stores",
                config.num_stores
            )));
        }
        let mut draw = || {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            bytes
        };
        let cipher_secret = StaticSecret::from(draw());
        let mask_secret = StaticSecret::from(draw());
        let self_seed = draw();
        let advertisement = Advertisement {
            store: index,
            cipher_public_key: public_key(&cipher_secret),
            mask_public_key: public_key(&mask_secret),
            signed: None,
        };
        let store = SecAggStore {
            config,
            graph,
            index,
            cipher_secret,
            mask_secret,
            self_seed,
            stage: Stage::Advertised,
            neighbour_keys: BTreeMap::new(),
            cipher_shared: BTreeMap::new(),
            held: BTreeMap::new(),
            roster: None,
            confirmed: Vec::new(),
        };
        Ok((store, advertisement))
    }

    /// Requires every neighbour's key advertisement to be signed, for this round, by a
    /// distinct store the roster enrolled; otherwise no share is dealt to anyone.
    pub fn with_roster(mut self, roster: Roster) -> Self {
        self.roster = Some(roster);
        self
    }

    /// Refuses the round unless each advertisement carries a valid signature, each
    /// from a different enrolled store (one store cannot fill two seats).
    fn check_signatures(&self, ads: &BTreeMap<u32, Advertisement>) -> Result<(), SecAggError> {
        let Some(roster) = &self.roster else {
            return Ok(());
        };
        let mut signers = std::collections::BTreeSet::new();
        for ad in ads.values() {
            let refuse = |reason: String| SecAggError::BadAdvertisement {
                store: ad.store,
                reason,
            };
            let signer = roster.verify(ad, self.config.session).map_err(refuse)?;
            if !signers.insert(signer.clone()) {
                return Err(refuse(format!("'{signer}' already holds another seat")));
            }
        }
        Ok(())
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    fn enter(&mut self, expected: Stage, stage: &'static str) -> Result<(), SecAggError> {
        if self.stage != expected {
            return Err(SecAggError::OutOfOrder {
                stage,
                current: self.stage.name(),
            });
        }
        Ok(())
    }

    fn refuse(&self, stage: &'static str, reason: String) -> SecAggError {
        SecAggError::Refused {
            stage,
            store: self.index,
            reason,
        }
    }

    /// Round 1: deal Shamir shares of the self-mask seed and the mask secret key to the
    /// neighbours that advertised, each encrypted to its holder.
    pub fn share_keys(&mut self, neighbours: &[Advertisement]) -> Result<ShareKeys, SecAggError> {
        const STAGE: &str = "share keys";
        self.enter(Stage::Advertised, STAGE)?;
        let mut keys = BTreeMap::new();
        for ad in neighbours {
            if !self.graph.are_neighbours(self.index, ad.store) {
                return Err(self.refuse(STAGE, format!("store {} is not a neighbour", ad.store)));
            }
            if keys.insert(ad.store, ad.clone()).is_some() {
                return Err(self.refuse(STAGE, format!("store {} advertised twice", ad.store)));
            }
        }
        self.check_signatures(&keys)?;
        let t = self.config.threshold as usize;
        if keys.len() < t {
            return Err(SecAggError::TooManyDropouts(format!(
                "store {} has {} neighbours left, its secrets need {t} holders",
                self.index,
                keys.len()
            )));
        }
        let dealer = Sharks(t as u8);
        let seed_shares = dealer.dealer(&self.self_seed).take(keys.len());
        let key_shares = dealer.dealer(self.mask_secret.as_bytes()).take(keys.len());
        let mut shares = Vec::with_capacity(keys.len());
        let mut cipher_shared = BTreeMap::new();
        for ((ad, seed_share), key_share) in keys.values().zip(seed_shares).zip(key_shares) {
            let mut plaintext = Vec::<u8>::from(&seed_share);
            plaintext.extend(Vec::<u8>::from(&key_share));
            let low_order = || {
                self.refuse(
                    STAGE,
                    format!("store {} sent a low-order public key", ad.store),
                )
            };
            let shared =
                exchange(&self.cipher_secret, &ad.cipher_public_key).ok_or_else(low_order)?;
            let ciphertext = seal(
                &shared,
                self.config.session,
                self.index,
                ad.store,
                &plaintext,
            )
            .ok_or_else(low_order)?;
            cipher_shared.insert(ad.store, shared);
            shares.push(EncryptedShare {
                from: self.index,
                to: ad.store,
                ciphertext,
            });
        }
        self.neighbour_keys = keys;
        self.cipher_shared = cipher_shared;
        self.stage = Stage::KeysShared;
        Ok(ShareKeys {
            store: self.index,
            self_mask_commitment: commitment(&self.self_seed),
            shares,
        })
    }

    /// Round 2: take the neighbours' shares and mask `input` (already encoded into
    /// Z_{2^32}) with the self mask and one pairwise mask per neighbour that dealt.
    pub fn masked_input(
        &mut self,
        incoming: &[EncryptedShare],
        input: &[u32],
    ) -> Result<MaskedInput, SecAggError> {
        const STAGE: &str = "masked input";
        self.enter(Stage::KeysShared, STAGE)?;
        if input.len() != self.config.dimension {
            return Err(SecAggError::Dimension {
                expected: self.config.dimension,
                got: input.len(),
            });
        }
        let held = self.open_shares(incoming)?;
        let t = self.config.threshold as usize;
        if held.len() < t {
            return Err(SecAggError::TooManyDropouts(format!(
                "store {} holds shares of {} neighbours, the round needs {t}",
                self.index,
                held.len()
            )));
        }
        let mut words = input.to_vec();
        let prg = self.config.prg;
        let self_mask = Mask {
            seed: self.self_seed,
            subtract: false,
        };
        apply_mask(&mut words, self_mask, prg);
        for &v in held.keys() {
            let ad = &self.neighbour_keys[&v];
            let seed = pairwise_seed(
                &self.mask_secret,
                &ad.mask_public_key,
                self.config.session,
                self.index,
                v,
            )
            .ok_or_else(|| self.refuse(STAGE, format!("store {v} sent a low-order mask key")))?;
            // The lower index adds the pairwise mask, the higher subtracts: they cancel.
            let subtract = self.index > v;
            apply_mask(&mut words, Mask { seed, subtract }, prg);
        }
        self.held = held;
        self.stage = Stage::InputMasked;
        Ok(MaskedInput {
            store: self.index,
            words,
        })
    }

    /// Decrypts the shares the neighbours dealt this store, refusing misaddressed,
    /// unknown, repeated or tampered ones.
    fn open_shares(
        &self,
        incoming: &[EncryptedShare],
    ) -> Result<BTreeMap<u32, HeldShares>, SecAggError> {
        const STAGE: &str = "masked input";
        let mut held = BTreeMap::new();
        for share in incoming {
            if share.to != self.index {
                return Err(self.refuse(STAGE, format!("a share addressed to store {}", share.to)));
            }
            let Some(shared) = self.cipher_shared.get(&share.from) else {
                return Err(self.refuse(
                    STAGE,
                    format!(
                        "a share from store {}, not an advertised neighbour",
                        share.from
                    ),
                ));
            };
            let bad = || SecAggError::BadCiphertext {
                from: share.from,
                to: share.to,
            };
            let plaintext = open(
                shared,
                self.config.session,
                share.from,
                share.to,
                &share.ciphertext,
            )
            .ok_or_else(bad)?;
            if plaintext.len() != 2 * SHARE_BYTES {
                return Err(bad());
            }
            let (seed_share, key_share) = plaintext.split_at(SHARE_BYTES);
            let shares = HeldShares {
                seed_share: seed_share.to_vec(),
                key_share: key_share.to_vec(),
            };
            if held.insert(share.from, shares).is_some() {
                return Err(self.refuse(STAGE, format!("two shares from store {}", share.from)));
            }
        }
        Ok(held)
    }

    /// The consistency check (between masking and unmasking): signs, once, the set of
    /// stores whose masked inputs the coordinator says it holds. Each store signs one
    /// set per round, so the coordinator cannot show two neighbourhoods two stories.
    pub fn confirm(
        &mut self,
        survivors: &[u32],
        identity: &StoreIdentity,
    ) -> Result<Confirmation, SecAggError> {
        const STAGE: &str = "confirm survivors";
        self.enter(Stage::InputMasked, STAGE)?;
        let ordered = survivors.windows(2).all(|w| w[0] < w[1]);
        let in_round = survivors.iter().all(|&u| u < self.config.num_stores);
        if !ordered || !in_round || survivors.binary_search(&self.index).is_err() {
            self.stage = Stage::Done;
            return Err(self.refuse(
                STAGE,
                "the survivor set is not increasing store indices of this round including this store".into(),
            ));
        }
        self.confirmed = survivors.to_vec();
        self.stage = Stage::Confirmed;
        Ok(identity.confirm(self.config.session, self.index, survivors))
    }

    /// Round 3: for each neighbour, the share of its self-mask seed if it survived or of
    /// its mask key if it dropped. Answered once; an inconsistent request ends the round
    /// for this store without revealing anything. With a roster, only after the
    /// consistency check, and only about stores whose own neighbours confirmed the set.
    pub fn unmask(&mut self, request: &UnmaskRequest) -> Result<UnmaskResponse, SecAggError> {
        const STAGE: &str = "unmask";
        let expected = match (&self.roster, self.stage) {
            (_, Stage::Confirmed) => Stage::Confirmed,
            (None, _) => Stage::InputMasked,
            (Some(_), _) => {
                self.stage = Stage::Done;
                return Err(self.refuse(
                    STAGE,
                    "asked to unmask before the survivor set was confirmed (this store requires the consistency check)".into(),
                ));
            }
        };
        self.enter(expected, STAGE)?;
        self.stage = Stage::Done;
        let mut seen = std::collections::BTreeSet::new();
        for &u in request.survivors.iter().chain(&request.dropped) {
            if !seen.insert(u) {
                return Err(self.refuse(
                    STAGE,
                    format!("store {u} is listed twice or as both survivor and dropped"),
                ));
            }
            if u != self.index && !self.held.contains_key(&u) {
                return Err(self.refuse(
                    STAGE,
                    format!("asked about store {u}, whose shares it does not hold"),
                ));
            }
        }
        if request.dropped.contains(&self.index) {
            return Err(self.refuse(STAGE, "listed as dropped while answering".into()));
        }
        let survivors = request
            .survivors
            .iter()
            .filter(|&&u| u != self.index)
            .count()
            + 1;
        let t = self.config.threshold as usize;
        if survivors < t {
            return Err(SecAggError::TooManyDropouts(format!(
                "store {} sees {survivors} survivors in its neighbourhood, fewer than {t}",
                self.index
            )));
        }
        if let Some(roster) = &self.roster {
            self.check_consistency(roster, request)?;
        }
        let mut shares = Vec::new();
        for &u in &request.survivors {
            if let Some(h) = self.held.get(&u) {
                shares.push(RevealedShare {
                    owner: u,
                    kind: ShareKind::SelfMaskSeed,
                    share: h.seed_share.clone(),
                });
            }
        }
        for &u in &request.dropped {
            if let Some(h) = self.held.get(&u) {
                shares.push(RevealedShare {
                    owner: u,
                    kind: ShareKind::MaskKey,
                    share: h.key_share.clone(),
                });
            }
        }
        Ok(UnmaskResponse {
            store: self.index,
            shares,
        })
    }
}

impl SecAggStore {
    /// The request must agree with the survivor set this store signed, and for every
    /// store it asks about, `t` distinct enrolled stores among that store's own
    /// neighbours must have signed the same set. Since `t > k/2`, two stories about one
    /// store would need an honest neighbour of it to have signed both.
    fn check_consistency(
        &self,
        roster: &Roster,
        request: &UnmaskRequest,
    ) -> Result<(), SecAggError> {
        const STAGE: &str = "unmask";
        let signed = |u: &u32| self.confirmed.binary_search(u).is_ok();
        let contradicts =
            request.survivors.iter().any(|u| !signed(u)) || request.dropped.iter().any(signed);
        if contradicts {
            return Err(self.refuse(
                STAGE,
                "the request contradicts the survivor set this store confirmed".into(),
            ));
        }
        let mut valid = BTreeMap::new();
        for c in &request.confirmations {
            if valid.contains_key(&c.store) {
                continue;
            }
            let verdict = roster.verify_confirmation(c, self.config.session, &self.confirmed);
            valid.insert(c.store, verdict.ok());
        }
        let t = self.config.threshold as usize;
        for &u in request.survivors.iter().chain(&request.dropped) {
            if u == self.index {
                continue;
            }
            let signers: std::collections::BTreeSet<&String> = self
                .graph
                .neighbours(u)
                .iter()
                .filter_map(|w| valid.get(w).and_then(Option::as_ref))
                .collect();
            if signers.len() < t {
                return Err(self.refuse(
                    STAGE,
                    format!(
                        "only {} of store {u}'s neighbours confirmed the survivor set, {t} must: the coordinator may be telling stores different stories",
                        signers.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Rebuilds a 32-byte secret from exactly `threshold` shares with distinct x.
pub(super) fn rebuild_secret(threshold: u32, shares: &[&[u8]]) -> Option<[u8; 32]> {
    let mut seen = [false; 256];
    let mut parsed = Vec::with_capacity(threshold as usize);
    for bytes in shares {
        if bytes.len() != SHARE_BYTES || seen[bytes[0] as usize] {
            continue;
        }
        let share = Share::try_from(*bytes).ok()?;
        seen[bytes[0] as usize] = true;
        parsed.push(share);
        if parsed.len() == threshold as usize {
            break;
        }
    }
    if parsed.len() < threshold as usize {
        return None;
    }
    let secret = Sharks(threshold as u8).recover(&parsed).ok()?;
    secret.try_into().ok()
}
