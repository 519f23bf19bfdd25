//! What stores and the coordinator send each other. Plain data, so the same protocol
//! runs in process and over the wire.

use serde::{Deserialize, Serialize};

/// Round 0: a store's two fresh public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertisement {
    pub store: u32,
    /// Agrees the key that encrypts shares between two stores.
    pub cipher_public_key: [u8; 32],
    /// Agrees the seed of the pairwise mask between two stores.
    pub mask_public_key: [u8; 32],
    /// The store's long-term signature over these keys, when the network enrols
    /// stores (see `identity`).
    #[serde(default)]
    pub signed: Option<AdSignature>,
}

/// Who signed an advertisement, the roster's credential for them, and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdSignature {
    /// The signer's store id, as enrolled.
    pub signer: String,
    pub verifying_key: [u8; 32],
    /// The roster's Ed25519 signature over the signer's id and verifying key (64 bytes).
    pub credential: Vec<u8>,
    /// The signer's Ed25519 signature over the keys, index and session (64 bytes).
    pub signature: Vec<u8>,
}

/// One store's shares for one neighbour, readable by that neighbour only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedShare {
    pub from: u32,
    pub to: u32,
    pub ciphertext: Vec<u8>,
}

/// Round 1: the shares a store deals and a commitment to its self-mask seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareKeys {
    pub store: u32,
    /// SHA-256 of the self-mask seed, so that a seed rebuilt from tampered shares is
    /// caught rather than silently corrupting the sum.
    pub self_mask_commitment: [u8; 32],
    pub shares: Vec<EncryptedShare>,
}

/// Round 2: the masked input, in Z_{2^32}.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedInput {
    pub store: u32,
    pub words: Vec<u32>,
}

/// The consistency check, survivor to coordinator: the store in seat `store` signed
/// the survivor set it was shown. Relayed to the stores that then unmask, so each can
/// see that the neighbours of every store it answers about were told the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub store: u32,
    pub signed: AdSignature,
}

/// Round 3, coordinator to one survivor: which of its neighbours survived and which
/// dropped after dealing their shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskRequest {
    pub survivors: Vec<u32>,
    pub dropped: Vec<u32>,
    /// Under the consistency check: the confirmations of the survivor set from the
    /// neighbours of this store's neighbours; empty otherwise.
    #[serde(default)]
    pub confirmations: Vec<Confirmation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareKind {
    /// A share of a survivor's self-mask seed.
    SelfMaskSeed,
    /// A share of a dropped store's mask secret key.
    MaskKey,
}

impl std::fmt::Display for ShareKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShareKind::SelfMaskSeed => "self-mask seed",
            ShareKind::MaskKey => "mask secret key",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevealedShare {
    pub owner: u32,
    pub kind: ShareKind,
    pub share: Vec<u8>,
}

/// Round 3, survivor to coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmaskResponse {
    pub store: u32,
    pub shares: Vec<RevealedShare>,
}
