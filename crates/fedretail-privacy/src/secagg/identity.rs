//! Long-term store identities for SecAgg+, so that a coordinator cannot swap a store's
//! key advertisement for its own and unmask a neighbour (Bell et al. 2020, the
//! malicious-server setting).
//!
//! The network's enrolment authority holds a *roster key* (Ed25519). Enrolling a store
//! gives it a signing key and a *credential*: the roster's signature over the store's
//! id and verifying key. Each round the store signs its fresh advertisement (bound to
//! the round's session and the store's index in it) and sends the credential with it.
//! A neighbour that knows the roster's public key checks both before it deals a share.
//! The roster key belongs with the CA, offline: whoever holds it can mint stores.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::messages::{AdSignature, Advertisement, Confirmation};
use super::SecAggError;

const CREDENTIAL_CONTEXT: &[u8] = b"fedretail roster credential v1\0";
const ADVERTISEMENT_CONTEXT: &[u8] = b"fedretail secagg advertisement v1\0";
const SURVIVORS_CONTEXT: &[u8] = b"fedretail secagg survivors v1\0";

/// What the roster signs: the store's id and its verifying key.
fn credential_message(store_id: &str, verifying_key: &[u8; 32]) -> Vec<u8> {
    let mut m = CREDENTIAL_CONTEXT.to_vec();
    m.extend((store_id.len() as u32).to_le_bytes());
    m.extend(store_id.as_bytes());
    m.extend(verifying_key);
    m
}

/// What a store signs each round: its two fresh keys, its index and the session.
fn advertisement_message(ad: &Advertisement, session: u64) -> Vec<u8> {
    let mut m = ADVERTISEMENT_CONTEXT.to_vec();
    m.extend(session.to_le_bytes());
    m.extend(ad.store.to_le_bytes());
    m.extend(ad.cipher_public_key);
    m.extend(ad.mask_public_key);
    m
}

/// What a store signs in the consistency check: the survivor set it was shown, from
/// its seat, in this session.
fn survivors_message(session: u64, seat: u32, survivors: &[u32]) -> Vec<u8> {
    let mut m = SURVIVORS_CONTEXT.to_vec();
    m.extend(session.to_le_bytes());
    m.extend(seat.to_le_bytes());
    m.extend((survivors.len() as u32).to_le_bytes());
    survivors.iter().for_each(|u| m.extend(u.to_le_bytes()));
    m
}

fn bad_key(what: &str, e: impl std::fmt::Display) -> SecAggError {
    SecAggError::Config(format!("{what}: {e}"))
}

fn parse_hex<const N: usize>(what: &str, text: &str) -> Result<[u8; N], SecAggError> {
    let bytes = hex::decode(text.trim()).map_err(|e| bad_key(what, e))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad_key(what, format!("must be {N} bytes, got {}", b.len())))
}

/// The enrolment authority's roster key: issues store identities. Keep it offline.
pub struct RosterAuthority {
    key: SigningKey,
}

impl RosterAuthority {
    pub fn generate<R: rand::CryptoRng>(rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        RosterAuthority {
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn from_hex(text: &str) -> Result<Self, SecAggError> {
        let secret = parse_hex::<32>("roster key", text)?;
        Ok(RosterAuthority {
            key: SigningKey::from_bytes(&secret),
        })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public half every agent is configured with.
    pub fn roster(&self) -> Roster {
        Roster {
            key: self.key.verifying_key(),
        }
    }

    /// A new signing key for `store_id`, with the roster's credential for it.
    pub fn enroll<R: rand::CryptoRng>(&self, store_id: &str, rng: &mut R) -> StoreIdentity {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let key = SigningKey::from_bytes(&secret);
        let verifying = key.verifying_key().to_bytes();
        let credential = self.key.sign(&credential_message(store_id, &verifying));
        StoreIdentity {
            store_id: store_id.to_string(),
            key,
            credential: credential.to_bytes(),
        }
    }
}

/// The roster's public key: which stores are real members of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    key: VerifyingKey,
}

impl Roster {
    pub fn from_hex(text: &str) -> Result<Self, SecAggError> {
        let bytes = parse_hex::<32>("roster public key", text)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| bad_key("roster public key", e))?;
        Ok(Roster { key })
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// Checks that `ad` was signed for this `session` by a store the roster enrolled;
    /// returns the signer's id.
    pub fn verify(&self, ad: &Advertisement, session: u64) -> Result<String, String> {
        let Some(s) = &ad.signed else {
            return Err("its key advertisement is not signed (this store requires signed keys from every neighbour)".into());
        };
        self.verify_signed(s, &advertisement_message(ad, session))
            .map_err(|e| {
                e.unwrap_or_else(|| {
                    format!(
                        "the signature of '{}' does not cover these keys for this round: the keys were altered or replayed",
                        s.signer
                    )
                })
            })
    }

    /// Checks a confirmation: the store in `seat` signed exactly `survivors` for this
    /// session, and the roster enrolled it. Returns the signer's id.
    pub fn verify_confirmation(
        &self,
        c: &Confirmation,
        session: u64,
        survivors: &[u32],
    ) -> Result<String, String> {
        let message = survivors_message(session, c.store, survivors);
        self.verify_signed(&c.signed, &message).map_err(|e| {
            e.unwrap_or_else(|| {
                format!(
                    "'{}' (seat {}) did not sign this survivor set",
                    c.signed.signer, c.store
                )
            })
        })
    }

    /// The credential, then the signature over `message`. Err(None) when only the
    /// signature fails, so the caller can say what it was meant to cover.
    fn verify_signed(&self, s: &AdSignature, message: &[u8]) -> Result<String, Option<String>> {
        let credential = signature(&s.credential, "credential")?;
        let enrolled = self
            .key
            .verify_strict(
                &credential_message(&s.signer, &s.verifying_key),
                &credential,
            )
            .is_ok();
        if !enrolled {
            return Err(Some(format!(
                "its credential for '{}' was not issued by this network's roster",
                s.signer
            )));
        }
        let key = VerifyingKey::from_bytes(&s.verifying_key)
            .map_err(|e| format!("its verifying key is not a valid Ed25519 key: {e}"))?;
        let signature = signature(&s.signature, "signature")?;
        key.verify(message, &signature).map_err(|_| None)?;
        Ok(s.signer.clone())
    }
}

fn signature(bytes: &[u8], what: &str) -> Result<Signature, Option<String>> {
    Signature::from_slice(bytes).map_err(|_| Some(format!("its {what} is not 64 bytes")))
}

/// A store's long-term identity: its id, signing key and the roster's credential.
pub struct StoreIdentity {
    store_id: String,
    key: SigningKey,
    credential: [u8; 64],
}

/// Equal when the same key was enrolled under the same id; the secret is never shown.
impl PartialEq for StoreIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.store_id == other.store_id
            && self.key.verifying_key() == other.key.verifying_key()
            && self.credential == other.credential
    }
}

impl std::fmt::Debug for StoreIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreIdentity")
            .field("store_id", &self.store_id)
            .field(
                "verifying_key",
                &hex::encode(self.key.verifying_key().to_bytes()),
            )
            .finish_non_exhaustive()
    }
}

/// How a store's identity is kept on disk (hex, JSON): `fedretail enroll` writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    store_id: String,
    signing_key: String,
    credential: String,
}

impl StoreIdentity {
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    pub fn to_json(&self) -> String {
        let file = IdentityFile {
            store_id: self.store_id.clone(),
            signing_key: hex::encode(self.key.to_bytes()),
            credential: hex::encode(self.credential),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, SecAggError> {
        let file: IdentityFile =
            serde_json::from_str(text).map_err(|e| bad_key("store identity file", e))?;
        let secret = parse_hex::<32>("signing_key", &file.signing_key)?;
        Ok(StoreIdentity {
            store_id: file.store_id,
            key: SigningKey::from_bytes(&secret),
            credential: parse_hex::<64>("credential", &file.credential)?,
        })
    }

    /// Whether `roster` enrolled this identity: a store checks its own file at start.
    pub fn check_against(&self, roster: &Roster) -> Result<(), SecAggError> {
        let message = credential_message(&self.store_id, &self.key.verifying_key().to_bytes());
        roster
            .key
            .verify_strict(&message, &Signature::from_bytes(&self.credential))
            .map_err(|_| {
                bad_key(
                    "store identity",
                    format!(
                        "the credential of '{}' was not issued by the configured roster",
                        self.store_id
                    ),
                )
            })
    }

    /// Signs this round's advertisement, binding its keys to the session and index.
    pub fn sign(&self, ad: &mut Advertisement, session: u64) {
        ad.signed = None;
        ad.signed = Some(self.signed(&advertisement_message(ad, session)));
    }

    /// Signs the survivor set the coordinator showed this store (seat `seat`).
    pub fn confirm(&self, session: u64, seat: u32, survivors: &[u32]) -> Confirmation {
        Confirmation {
            store: seat,
            signed: self.signed(&survivors_message(session, seat, survivors)),
        }
    }

    fn signed(&self, message: &[u8]) -> AdSignature {
        AdSignature {
            signer: self.store_id.clone(),
            verifying_key: self.key.verifying_key().to_bytes(),
            credential: self.credential.to_vec(),
            signature: self.key.sign(message).to_bytes().to_vec(),
        }
    }
}
