//! The primitives SecAgg+ is built from, each a thin use of an audited crate.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

const SALT: &[u8] = b"fedretail secagg+ v1";

/// X25519 then HKDF-SHA-256. `None` for a low-order public key, whose shared secret
/// would be known to anyone.
fn agree(secret: &StaticSecret, public: &[u8; 32], info: &[u8]) -> Option<[u8; 32]> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return None;
    }
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(SALT), shared.as_bytes())
        .expand(info, &mut out)
        .ok()?;
    Some(out)
}

fn context(label: &[u8], session: u64, a: u32, b: u32) -> [u8; 24] {
    let mut info = [0u8; 24];
    info[..8].copy_from_slice(&label[..8.min(label.len())]);
    info[8..16].copy_from_slice(&session.to_le_bytes());
    info[16..20].copy_from_slice(&a.to_le_bytes());
    info[20..24].copy_from_slice(&b.to_le_bytes());
    info
}

/// Seed of the mask `u` and `v` share; the same from either side.
pub(super) fn pairwise_seed(
    own_secret: &StaticSecret,
    their_public: &[u8; 32],
    session: u64,
    u: u32,
    v: u32,
) -> Option<[u8; 32]> {
    agree(
        own_secret,
        their_public,
        &context(b"pairmask", session, u.min(v), u.max(v)),
    )
}

/// Key for shares sent from `from` to `to`. Direction is part of the key, so the one
/// message each way never reuses a (key, nonce) pair.
fn share_key(
    own_secret: &StaticSecret,
    their_public: &[u8; 32],
    session: u64,
    from: u32,
    to: u32,
) -> Option<[u8; 32]> {
    agree(
        own_secret,
        their_public,
        &context(b"sharekey", session, from, to),
    )
}

pub(super) fn seal(
    own_secret: &StaticSecret,
    their_public: &[u8; 32],
    session: u64,
    from: u32,
    to: u32,
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let key = share_key(own_secret, their_public, session, from, to)?;
    let aad = context(b"shareaad", session, from, to);
    // One message per key: a zero nonce is safe.
    ChaCha20Poly1305::new(&Key::from(key))
        .encrypt(
            &Nonce::from([0u8; 12]),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .ok()
}

pub(super) fn open(
    own_secret: &StaticSecret,
    their_public: &[u8; 32],
    session: u64,
    from: u32,
    to: u32,
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    let key = share_key(own_secret, their_public, session, from, to)?;
    let aad = context(b"shareaad", session, from, to);
    ChaCha20Poly1305::new(&Key::from(key))
        .decrypt(
            &Nonce::from([0u8; 12]),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()
}

pub(super) fn commitment(seed: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"fedretail secagg+ self-mask commitment");
    h.update(seed);
    h.finalize().into()
}

pub(super) fn public_key(secret: &StaticSecret) -> [u8; 32] {
    PublicKey::from(secret).to_bytes()
}

/// Words of a mask expanded on one thread: large enough to amortize the thread hop,
/// small enough to spread a 100k-word update over every core.
const PAR_WORDS: usize = 16 * 1024;

/// Adds (or subtracts) the ChaCha20 stream keyed by `seed` to `words`, mod 2^32.
/// The stream is seekable, so chunks of it are expanded on all cores; each chunk works
/// through a fixed stack buffer, so nothing is allocated per word.
pub(super) fn apply_mask(words: &mut [u32], seed: &[u8; 32], subtract: bool) {
    use rayon::prelude::*;
    words
        .par_chunks_mut(PAR_WORDS)
        .enumerate()
        .for_each(|(c, chunk)| mask_chunk(chunk, seed, c * PAR_WORDS, subtract));
}

/// Removes many masks (seed, subtract) from `words`: each core expands whole masks into
/// its own accumulator (memory: one update per core), and the accumulators are added
/// in, mod 2^32.
pub(super) fn remove_masks(words: &mut [u32], masks: &[([u8; 32], bool)]) {
    use rayon::prelude::*;
    if masks.len() < 2 {
        for (seed, subtract) in masks {
            apply_mask(words, seed, *subtract);
        }
        return;
    }
    let d = words.len();
    let total = masks
        .par_iter()
        .fold(
            || vec![0u32; d],
            |mut acc, (seed, subtract)| {
                mask_chunk(&mut acc, seed, 0, *subtract);
                acc
            },
        )
        .reduce(|| vec![0u32; d], add_words);
    for (w, t) in words.iter_mut().zip(&total) {
        *w = w.wrapping_add(*t);
    }
}

fn add_words(mut a: Vec<u32>, b: Vec<u32>) -> Vec<u32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x = x.wrapping_add(*y);
    }
    a
}

/// [`apply_mask`] on `words`, which start at word `first` of the stream.
fn mask_chunk(words: &mut [u32], seed: &[u8; 32], first: usize, subtract: bool) {
    const BLOCK: usize = 1024;
    // Each seed keys one mask only, so the all-zero nonce is never reused with a key.
    let mut cipher = ChaCha20::new(&(*seed).into(), &[0u8; 12].into());
    cipher.seek(first as u64 * 4);
    let mut bytes = [0u8; BLOCK * 4];
    for chunk in words.chunks_mut(BLOCK) {
        let bytes = &mut bytes[..chunk.len() * 4];
        bytes.fill(0);
        cipher.apply_keystream(bytes);
        for (w, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            let m = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            *w = if subtract {
                w.wrapping_sub(m)
            } else {
                w.wrapping_add(m)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_many_masks_at_once_equals_removing_them_one_by_one() {
        let masks: Vec<([u8; 32], bool)> = (0..9u8).map(|i| ([i; 32], i % 3 == 0)).collect();
        let start: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let mut one_by_one = start.clone();
        for (seed, subtract) in &masks {
            apply_mask(&mut one_by_one, seed, *subtract);
        }
        let mut at_once = start;
        remove_masks(&mut at_once, &masks);
        assert_eq!(at_once, one_by_one);
    }

    #[test]
    fn a_mask_expanded_in_parallel_chunks_is_one_stream_and_cancels() {
        let seed = [3u8; 32];
        for len in [
            0,
            1,
            1023,
            1025,
            PAR_WORDS,
            PAR_WORDS + 1,
            3 * PAR_WORDS + 7,
        ] {
            let mut par = vec![0u32; len];
            apply_mask(&mut par, &seed, false);
            let mut one = vec![0u32; len];
            mask_chunk(&mut one, &seed, 0, false);
            assert_eq!(par, one, "length {len}");
            // The words are the ChaCha20 keystream itself.
            let mut stream = vec![0u8; len * 4];
            ChaCha20::new(&seed.into(), &[0u8; 12].into()).apply_keystream(&mut stream);
            let words: Vec<u32> = stream
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(one, words);
            apply_mask(&mut par, &seed, true);
            assert!(par.iter().all(|&w| w == 0));
        }
    }

    #[test]
    fn both_sides_agree_and_a_message_opens_only_where_it_was_sent() {
        let a = StaticSecret::from([7u8; 32]);
        let b = StaticSecret::from([9u8; 32]);
        let (pa, pb) = (public_key(&a), public_key(&b));
        assert_eq!(
            pairwise_seed(&a, &pb, 5, 1, 2),
            pairwise_seed(&b, &pa, 5, 2, 1)
        );
        let sealed = seal(&a, &pb, 5, 1, 2, b"share").unwrap();
        assert_eq!(open(&b, &pa, 5, 1, 2, &sealed).unwrap(), b"share");
        // Another session, direction or recipient: refused.
        assert!(open(&b, &pa, 6, 1, 2, &sealed).is_none());
        assert!(open(&b, &pa, 5, 2, 1, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(open(&b, &pa, 5, 1, 2, &flipped).is_none());
    }

    #[test]
    fn a_low_order_key_is_refused() {
        let a = StaticSecret::from([7u8; 32]);
        assert!(pairwise_seed(&a, &[0u8; 32], 1, 0, 1).is_none());
    }

    #[test]
    fn masks_cancel() {
        let mut words: Vec<u32> = (0..1000).collect();
        apply_mask(&mut words, &[3u8; 32], false);
        assert_ne!(words[..10], (0..10).collect::<Vec<u32>>()[..]);
        apply_mask(&mut words, &[3u8; 32], true);
        assert_eq!(words, (0..1000).collect::<Vec<u32>>());
    }
}
