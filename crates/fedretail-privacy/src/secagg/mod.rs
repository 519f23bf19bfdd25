//! Secure aggregation with dropouts, SecAgg+ (Bell, Bengtson, Leong, Raykova and
//! Sommer, CCS 2020): the coordinator learns the sum of the surviving stores' inputs in
//! Z_{2^32} and nothing else about any one of them.
//!
//! The protocol is fedretail's own; every primitive comes from an audited crate: X25519
//! key agreement (`x25519-dalek`), HKDF-SHA-256 key derivation (`hkdf`, `sha2`), masks
//! expanded by AES-128-CTR (`aes`, `ctr`: hardware AES where the CPU has it) or the
//! ChaCha20 stream cipher (`chacha20`, SIMD), on all cores in parallel chunks; shares
//! encrypted to their holder with ChaCha20-Poly1305 (`chacha20poly1305`) and Shamir t-of-k sharing over GF(2^8)
//! (`blahaj`).
//!
//! The rounds, as in the paper:
//! 0. *Advertise*: each store sends two fresh X25519 public keys, one to encrypt shares
//!    and one to agree on pairwise masks.
//! 1. *Share keys*: each store draws a self-mask seed `b`, Shamir-shares `b` and its mask
//!    secret key among its `k` neighbours in a random Harary graph (k = O(log n)), and
//!    sends the shares encrypted to each neighbour, plus a SHA-256 commitment to `b`.
//! 2. *Masked input*: `y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv)`, over the neighbours whose
//!    shares arrived.
//! 3. *Unmask*: every survivor reveals, for each neighbour, the share of `b` if that
//!    neighbour survived or the share of its mask key if it dropped, never both.
//!
//! Where the network enrols stores (`identity`), every advertisement is signed with
//! the store's long-term key and a neighbour deals no share until each advertisement's
//! signature and roster credential check out, so the coordinator cannot substitute
//! keys of its own.
//!
//! The coordinator rebuilds the self masks of survivors and the pairwise masks of the
//! dropped, checks each rebuilt secret against its commitment or public key (a tampered
//! share is caught here, a tampered or replayed ciphertext already at decryption), and
//! subtracts them. A secret whose first `t` shares do not rebuild it is rebuilt from
//! other sets of `t`, and the stores whose shares did not fit are named in the outcome
//! (`culprits`), so one store revealing garbage cannot abort every round.
//! If any needed secret has fewer than `t` shares, the round aborts with
//! [`SecAggError::TooManyDropouts`] and returns nothing but the error.

mod crypto;
mod encoding;
mod graph;
mod identity;
mod messages;
mod recover;
mod server;
mod simulate;
mod store;
#[cfg(test)]
mod tests;

pub use crypto::MaskPrg;
pub use encoding::{sample_discrete_gaussian, FixedPoint};
pub use graph::NeighbourGraph;
pub use identity::{Roster, RosterAuthority, StoreIdentity};
pub use messages::{
    AdSignature, Advertisement, Confirmation, EncryptedShare, MaskedInput, RevealedShare,
    ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse,
};
pub use server::{SecAggOutcome, SecAggServer};
pub use simulate::{
    simulate_round, simulate_round_observed, simulate_signed_round, DropoutPlan, RoundCost,
};
pub use store::SecAggStore;

use serde::{Deserialize, Serialize};

/// Shares are points of a GF(2^8) polynomial, so a secret can have at most 255 holders.
pub const MAX_NEIGHBOURS: usize = 254;

/// Everything a round's participants agree on before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecAggConfig {
    /// Stores invited to the round, indexed 0..num_stores.
    pub num_stores: u32,
    /// Length of each input vector, in 32-bit words.
    pub dimension: usize,
    /// Neighbours per store (`k`); `num_stores - 1` gives the original, complete-graph
    /// protocol of Bonawitz et al.
    pub neighbours: u32,
    /// Shares needed to rebuild a secret (`t`). Must exceed `k / 2`, so that no honest
    /// store can be made to reveal enough of both kinds of share for one neighbour.
    pub threshold: u32,
    /// Binds keys, ciphertexts and the graph to this round: a share replayed from
    /// another session does not decrypt.
    pub session: u64,
    /// The stream cipher masks are expanded with.
    #[serde(default)]
    pub prg: MaskPrg,
}

impl SecAggConfig {
    /// The defaults of SecAgg+ for a network expected to lose up to 10 % of a round's
    /// stores; see [`SecAggConfig::for_network_tolerating`].
    pub fn for_network(
        num_stores: u32,
        dimension: usize,
        session: u64,
    ) -> Result<Self, SecAggError> {
        Self::for_network_tolerating(num_stores, dimension, session, 0.1)
    }

    /// Picks the neighbour count `k` (even, at least `3 log2 n`) and threshold
    /// `t = k/2 + 1` so that, with each store dropping independently with probability
    /// `dropout_rate`, the chance that some store's secrets keep fewer than `t` holders
    /// is below one in a million. The complete graph when `k` would reach `n - 1`.
    pub fn for_network_tolerating(
        num_stores: u32,
        dimension: usize,
        session: u64,
        dropout_rate: f64,
    ) -> Result<Self, SecAggError> {
        if num_stores < 3 {
            return Err(SecAggError::Config(format!(
                "secure aggregation needs at least 3 stores, got {num_stores}"
            )));
        }
        if !(0.0..0.5).contains(&dropout_rate) {
            return Err(SecAggError::Config(format!(
                "the expected dropout rate must be in [0, 0.5), got {dropout_rate}"
            )));
        }
        let n = num_stores as f64;
        let mut k = (1.5 * n.log2()).ceil() as u32 * 2;
        while k < num_stores - 1
            && (k as usize) < MAX_NEIGHBOURS
            && n * binomial_below(k, 1.0 - dropout_rate, k / 2 + 1) > 1e-6
        {
            k += 2;
        }
        let k = k.min(num_stores - 1).min(MAX_NEIGHBOURS as u32);
        let config = SecAggConfig {
            num_stores,
            dimension,
            neighbours: k,
            threshold: k / 2 + 1,
            session,
            prg: MaskPrg::default(),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), SecAggError> {
        let (n, k, t) = (self.num_stores, self.neighbours, self.threshold);
        let fail = |msg: String| Err(SecAggError::Config(msg));
        if n < 3 {
            return fail(format!(
                "secure aggregation needs at least 3 stores, got {n}"
            ));
        }
        if k < 2 || k > n - 1 {
            return fail(format!(
                "neighbours must be between 2 and {} for {n} stores, got {k}",
                n - 1
            ));
        }
        if k as usize > MAX_NEIGHBOURS {
            return fail(format!(
                "at most {MAX_NEIGHBOURS} neighbours are supported, got {k}"
            ));
        }
        if k < n - 1 && k % 2 == 1 {
            return fail(format!(
                "a sparse neighbour graph needs an even degree, got {k}"
            ));
        }
        if t <= k / 2 || t > k {
            return fail(format!(
                "threshold must be above half the neighbours and at most all of them ({}..={k}), got {t}",
                k / 2 + 1
            ));
        }
        if self.dimension == 0 {
            return fail("the input dimension is zero".into());
        }
        Ok(())
    }
}

/// P[Binomial(k, p) < t].
fn binomial_below(k: u32, p: f64, t: u32) -> f64 {
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_choose = 0.0f64; // ln C(k, 0)
    let mut total = 0.0;
    for i in 0..t.min(k + 1) {
        if i > 0 {
            log_choose += ((k - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (log_choose + i as f64 * lp + (k - i) as f64 * lq).exp();
    }
    total
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecAggError {
    #[error("invalid secure-aggregation config: {0}")]
    Config(String),
    #[error("{stage}: message from store {store} refused: {reason}")]
    Refused {
        stage: &'static str,
        store: u32,
        reason: String,
    },
    #[error("{stage}: called out of order (the store or coordinator is in stage {current})")]
    OutOfOrder {
        stage: &'static str,
        current: &'static str,
    },
    #[error("round aborted, nothing revealed: {0}")]
    TooManyDropouts(String),
    #[error("share from store {from} to store {to} failed authentication (tampered, replayed or misrouted)")]
    BadCiphertext { from: u32, to: u32 },
    #[error("the rebuilt {kind} of store {owner} does not match its commitment: a share was tampered with")]
    BadReconstruction { owner: u32, kind: ShareKind },
    #[error("the key advertisement of store {store} is refused: {reason}")]
    BadAdvertisement { store: u32, reason: String },
    #[error("input has {got} words, the round expects {expected}")]
    Dimension { expected: usize, got: usize },
}
