//! SecAgg+ messages between their wire form and `fedretail_privacy::secagg`. Keys and
//! commitments must have their exact sizes; everything else the protocol itself checks.

use crate::v1;
use fedretail_privacy::secagg::{
    AdSignature, Advertisement, Confirmation, EncryptedShare, MaskPrg, MaskedInput, RevealedShare,
    SecAggConfig, ShareKeys, ShareKind, UnmaskRequest, UnmaskResponse,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("secure-aggregation message: {0}")]
pub struct SecAggWireError(pub String);

fn bytes32(field: &str, b: &[u8]) -> Result<[u8; 32], SecAggWireError> {
    b.try_into()
        .map_err(|_| SecAggWireError(format!("{field} must be 32 bytes, got {}", b.len())))
}

pub fn mask_prg_to_wire(prg: MaskPrg) -> i32 {
    match prg {
        MaskPrg::Aes128Ctr => v1::MaskPrg::Aes128Ctr as i32,
        MaskPrg::ChaCha20 => v1::MaskPrg::Chacha20 as i32,
    }
}

/// The round's config as a store reads it from its task; the protocol validates the rest.
pub fn config_from_wire(p: &v1::SecureAggregation) -> Result<SecAggConfig, SecAggWireError> {
    let prg = match v1::MaskPrg::try_from(p.mask_prg) {
        Ok(v1::MaskPrg::Aes128Ctr) => MaskPrg::Aes128Ctr,
        Ok(v1::MaskPrg::Chacha20) => MaskPrg::ChaCha20,
        Err(_) => {
            return Err(SecAggWireError(format!(
                "unknown mask PRG {} (this agent knows aes128_ctr and chacha20)",
                p.mask_prg
            )))
        }
    };
    let dimension = usize::try_from(p.dimension)
        .map_err(|_| SecAggWireError(format!("dimension {} is too large", p.dimension)))?;
    Ok(SecAggConfig {
        num_stores: p.num_stores,
        dimension,
        neighbours: p.neighbours,
        threshold: p.threshold,
        session: p.session,
        prg,
    })
}

pub fn advertisement_to_wire(a: &Advertisement) -> v1::SecAggAdvertisement {
    v1::SecAggAdvertisement {
        store: a.store,
        cipher_public_key: a.cipher_public_key.to_vec(),
        mask_public_key: a.mask_public_key.to_vec(),
        signed: a.signed.as_ref().map(signature_to_wire),
    }
}

fn signature_to_wire(s: &AdSignature) -> v1::SecAggSignature {
    v1::SecAggSignature {
        signer: s.signer.clone(),
        verifying_key: s.verifying_key.to_vec(),
        credential: s.credential.clone(),
        signature: s.signature.clone(),
    }
}

pub fn advertisement_from_wire(
    a: &v1::SecAggAdvertisement,
) -> Result<Advertisement, SecAggWireError> {
    Ok(Advertisement {
        store: a.store,
        cipher_public_key: bytes32("cipher public key", &a.cipher_public_key)?,
        mask_public_key: bytes32("mask public key", &a.mask_public_key)?,
        signed: a.signed.as_ref().map(signature_from_wire).transpose()?,
    })
}

/// Sizes are checked here; whether the signature holds, by the neighbour.
fn signature_from_wire(s: &v1::SecAggSignature) -> Result<AdSignature, SecAggWireError> {
    if s.signer.len() > 128 {
        return Err(SecAggWireError(format!(
            "signer id is {} bytes, at most 128",
            s.signer.len()
        )));
    }
    for (field, b) in [("credential", &s.credential), ("signature", &s.signature)] {
        if b.len() != 64 {
            return Err(SecAggWireError(format!(
                "{field} must be 64 bytes, got {}",
                b.len()
            )));
        }
    }
    Ok(AdSignature {
        signer: s.signer.clone(),
        verifying_key: bytes32("verifying key", &s.verifying_key)?,
        credential: s.credential.clone(),
        signature: s.signature.clone(),
    })
}

pub fn share_to_wire(s: &EncryptedShare) -> v1::SecAggEncryptedShare {
    v1::SecAggEncryptedShare {
        from: s.from,
        to: s.to,
        ciphertext: s.ciphertext.clone(),
    }
}

pub fn share_from_wire(s: v1::SecAggEncryptedShare) -> EncryptedShare {
    EncryptedShare {
        from: s.from,
        to: s.to,
        ciphertext: s.ciphertext,
    }
}

pub fn share_keys_to_wire(m: &ShareKeys) -> v1::SecAggShareKeys {
    v1::SecAggShareKeys {
        store: m.store,
        self_mask_commitment: m.self_mask_commitment.to_vec(),
        shares: m.shares.iter().map(share_to_wire).collect(),
    }
}

pub fn share_keys_from_wire(m: v1::SecAggShareKeys) -> Result<ShareKeys, SecAggWireError> {
    Ok(ShareKeys {
        store: m.store,
        self_mask_commitment: bytes32("self-mask commitment", &m.self_mask_commitment)?,
        shares: m.shares.into_iter().map(share_from_wire).collect(),
    })
}

pub fn masked_input_to_wire(m: MaskedInput) -> v1::SecAggMaskedInput {
    v1::SecAggMaskedInput {
        store: m.store,
        words: m.words,
    }
}

pub fn masked_input_from_wire(m: v1::SecAggMaskedInput) -> MaskedInput {
    MaskedInput {
        store: m.store,
        words: m.words,
    }
}

pub fn unmask_request_to_wire(r: &UnmaskRequest) -> v1::SecAggUnmaskRequest {
    v1::SecAggUnmaskRequest {
        survivors: r.survivors.clone(),
        dropped: r.dropped.clone(),
        confirmations: r.confirmations.iter().map(confirmation_to_wire).collect(),
    }
}

pub fn unmask_request_from_wire(
    r: v1::SecAggUnmaskRequest,
) -> Result<UnmaskRequest, SecAggWireError> {
    Ok(UnmaskRequest {
        survivors: r.survivors,
        dropped: r.dropped,
        confirmations: r
            .confirmations
            .iter()
            .map(confirmation_from_wire)
            .collect::<Result<_, _>>()?,
    })
}

pub fn confirmation_to_wire(c: &Confirmation) -> v1::SecAggConfirmation {
    v1::SecAggConfirmation {
        store: c.store,
        signed: Some(signature_to_wire(&c.signed)),
    }
}

pub fn confirmation_from_wire(c: &v1::SecAggConfirmation) -> Result<Confirmation, SecAggWireError> {
    let signed = c
        .signed
        .as_ref()
        .ok_or_else(|| SecAggWireError("a confirmation without its signature".into()))?;
    Ok(Confirmation {
        store: c.store,
        signed: signature_from_wire(signed)?,
    })
}

pub fn unmask_response_to_wire(m: &UnmaskResponse) -> v1::SecAggUnmaskResponse {
    v1::SecAggUnmaskResponse {
        store: m.store,
        shares: m
            .shares
            .iter()
            .map(|s| v1::SecAggRevealedShare {
                owner: s.owner,
                mask_key: s.kind == ShareKind::MaskKey,
                share: s.share.clone(),
            })
            .collect(),
    }
}

pub fn unmask_response_from_wire(m: v1::SecAggUnmaskResponse) -> UnmaskResponse {
    UnmaskResponse {
        store: m.store,
        shares: m
            .shares
            .into_iter()
            .map(|s| RevealedShare {
                owner: s.owner,
                kind: if s.mask_key {
                    ShareKind::MaskKey
                } else {
                    ShareKind::SelfMaskSeed
                },
                share: s.share,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire_and_short_keys_are_named() {
        let ad = Advertisement {
            store: 3,
            cipher_public_key: [7; 32],
            mask_public_key: [9; 32],
            signed: None,
        };
        assert_eq!(
            advertisement_from_wire(&advertisement_to_wire(&ad)).unwrap(),
            ad
        );
        let keys = ShareKeys {
            store: 3,
            self_mask_commitment: [1; 32],
            shares: vec![EncryptedShare {
                from: 3,
                to: 4,
                ciphertext: vec![1, 2, 3],
            }],
        };
        assert_eq!(
            share_keys_from_wire(share_keys_to_wire(&keys)).unwrap(),
            keys
        );
        let un = UnmaskResponse {
            store: 1,
            shares: vec![
                RevealedShare {
                    owner: 2,
                    kind: ShareKind::MaskKey,
                    share: vec![5; 33],
                },
                RevealedShare {
                    owner: 0,
                    kind: ShareKind::SelfMaskSeed,
                    share: vec![6; 33],
                },
            ],
        };
        assert_eq!(unmask_response_from_wire(unmask_response_to_wire(&un)), un);
        let mut short = advertisement_to_wire(&ad);
        short.mask_public_key.truncate(31);
        assert_eq!(
            advertisement_from_wire(&short).unwrap_err().to_string(),
            "secure-aggregation message: mask public key must be 32 bytes, got 31"
        );
    }
}
