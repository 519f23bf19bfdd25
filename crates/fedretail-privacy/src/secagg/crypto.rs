//! The primitives SecAgg+ is built from, each a thin use of an audited crate.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, SharedSecret, StaticSecret};

const SALT: &[u8] = b"fedretail secagg+ v1";

/// X25519. `None` for a low-order public key, whose shared secret would be known to
/// anyone. The secret is wiped when dropped.
pub(super) fn exchange(secret: &StaticSecret, public: &[u8; 32]) -> Option<SharedSecret> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    shared.was_contributory().then_some(shared)
}

/// HKDF-SHA-256 of an exchanged secret, bound to `info`.
fn derive(shared: &SharedSecret, info: &[u8]) -> Option<[u8; 32]> {
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
    derive(
        &exchange(own_secret, their_public)?,
        &context(b"pairmask", session, u.min(v), u.max(v)),
    )
}

/// Key for shares sent from `from` to `to`, from the two stores' exchanged cipher
/// keys. Direction is part of the key, so the one message each way never reuses a
/// (key, nonce) pair.
fn share_key(shared: &SharedSecret, session: u64, from: u32, to: u32) -> Option<[u8; 32]> {
    derive(shared, &context(b"sharekey", session, from, to))
}

pub(super) fn seal(
    shared: &SharedSecret,
    session: u64,
    from: u32,
    to: u32,
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let key = share_key(shared, session, from, to)?;
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
    shared: &SharedSecret,
    session: u64,
    from: u32,
    to: u32,
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    let key = share_key(shared, session, from, to)?;
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

/// The stream cipher that expands a mask seed into a mask. Both ends of a pairwise mask
/// and the coordinator must expand it alike, so it is part of the round's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MaskPrg {
    /// AES-128 in counter mode, keyed by the seed's first 16 bytes: hardware AES
    /// (AES-NI, ARMv8 crypto) where the CPU has it, several times ChaCha20's speed, and a
    /// constant-time bitsliced fallback elsewhere.
    #[default]
    #[serde(rename = "aes128_ctr")]
    Aes128Ctr,
    /// ChaCha20 (SIMD): the fastest choice on a CPU without hardware AES.
    #[serde(rename = "chacha20")]
    ChaCha20,
}

impl MaskPrg {
    pub const ALL: [MaskPrg; 2] = [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20];

    pub fn name(self) -> &'static str {
        match self {
            MaskPrg::Aes128Ctr => "aes128_ctr",
            MaskPrg::ChaCha20 => "chacha20",
        }
    }
}

impl std::fmt::Display for MaskPrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MaskPrg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown mask PRG {s:?}; expected aes128_ctr or chacha20"))
    }
}

/// The NIST counter mode: a 128-bit big-endian counter from zero.
type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// Words of a mask expanded on one thread: large enough to amortize the thread hop,
/// small enough to spread a 100k-word update over every core.
const PAR_WORDS: usize = 16 * 1024;

/// One mask: the seed it expands and its sign.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mask {
    pub seed: [u8; 32],
    pub subtract: bool,
}

/// Adds (or subtracts) the stream `prg` expands from `mask.seed` to `words`, mod 2^32.
/// The stream is seekable, so chunks of it are expanded on all cores; each chunk works
/// through a fixed stack buffer, so nothing is allocated per word.
pub(super) fn apply_mask(words: &mut [u32], mask: Mask, prg: MaskPrg) {
    use rayon::prelude::*;
    words
        .par_chunks_mut(PAR_WORDS)
        .enumerate()
        .for_each(|(c, chunk)| mask_chunk(chunk, mask, c * PAR_WORDS, prg));
}

/// Removes many masks from `words`: each core expands whole masks into its own
/// accumulator (memory: one update per core), and the accumulators are added in,
/// mod 2^32.
pub(super) fn remove_masks(words: &mut [u32], masks: &[Mask], prg: MaskPrg) {
    use rayon::prelude::*;
    if masks.len() < 2 {
        for &mask in masks {
            apply_mask(words, mask, prg);
        }
        return;
    }
    let d = words.len();
    let total = masks
        .par_iter()
        .fold(
            || vec![0u32; d],
            |mut acc, &mask| {
                mask_chunk(&mut acc, mask, 0, prg);
                acc
            },
        )
        .reduce(|| vec![0u32; d], add_words);
    add_words_into(words, &total);
}

fn add_words(mut a: Vec<u32>, b: Vec<u32>) -> Vec<u32> {
    add_words_into(&mut a, &b);
    a
}

fn add_words_into(a: &mut [u32], b: &[u32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(*y);
    }
}

/// [`apply_mask`] on `words`, which start at word `first` of the stream.
fn mask_chunk(words: &mut [u32], mask: Mask, first: usize, prg: MaskPrg) {
    let offset = first as u64 * 4;
    // Each seed keys one mask only, so the all-zero nonce is never reused with a key.
    match prg {
        MaskPrg::ChaCha20 => {
            let mut cipher = ChaCha20::new(&mask.seed.into(), &[0u8; 12].into());
            cipher.seek(offset);
            add_stream(words, cipher, mask.subtract);
        }
        MaskPrg::Aes128Ctr => {
            let mut key = [0u8; 16];
            key.copy_from_slice(&mask.seed[..16]);
            let mut cipher = Aes128Ctr::new(&key.into(), &[0u8; 16].into());
            cipher.seek(offset);
            add_stream(words, cipher, mask.subtract);
        }
    }
}

/// Adds (or subtracts) the keystream of `cipher` to `words`, as little-endian words.
fn add_stream(words: &mut [u32], mut cipher: impl StreamCipher, subtract: bool) {
    const BLOCK: usize = 1024;
    let mut stream = [0u32; BLOCK];
    for chunk in words.chunks_mut(BLOCK) {
        let stream = &mut stream[..chunk.len()];
        cipher.write_keystream(bytemuck::cast_slice_mut(stream));
        if subtract {
            for (w, m) in chunk.iter_mut().zip(stream.iter()) {
                *w = w.wrapping_sub(u32::from_le(*m));
            }
        } else {
            for (w, m) in chunk.iter_mut().zip(stream.iter()) {
                *w = w.wrapping_add(u32::from_le(*m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(i: u8, subtract: bool) -> Mask {
        Mask {
            seed: [i; 32],
            subtract,
        }
    }

    #[test]
    fn removing_many_masks_at_once_equals_removing_them_one_by_one() {
        let masks: Vec<Mask> = (0..9u8).map(|i| mask(i, i % 3 == 0)).collect();
        let start: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for prg in MaskPrg::ALL {
            let mut one_by_one = start.clone();
            for &m in &masks {
                apply_mask(&mut one_by_one, m, prg);
            }
            let mut at_once = start.clone();
            remove_masks(&mut at_once, &masks, prg);
            assert_eq!(at_once, one_by_one, "{prg}");
        }
    }

    /// The keystream of `prg` for `seed`, computed with no seeking or chunking.
    fn reference_stream(prg: MaskPrg, seed: [u8; 32], len: usize) -> Vec<u32> {
        let mut stream = vec![0u8; len * 4];
        match prg {
            MaskPrg::ChaCha20 => {
                ChaCha20::new(&seed.into(), &[0u8; 12].into()).apply_keystream(&mut stream)
            }
            MaskPrg::Aes128Ctr => {
                // Counter mode by hand: block i is AES_k(i as a big-endian u128).
                use aes::cipher::{BlockCipherEncrypt, KeyInit};
                let key: [u8; 16] = seed[..16].try_into().unwrap();
                let aes = aes::Aes128::new(&key.into());
                for (i, out) in stream.chunks_mut(16).enumerate() {
                    let mut block = (i as u128).to_be_bytes().into();
                    aes.encrypt_block(&mut block);
                    out.copy_from_slice(&block[..out.len()]);
                }
            }
        }
        stream
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn a_mask_expanded_in_parallel_chunks_is_one_stream_and_cancels() {
        for prg in MaskPrg::ALL {
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
                apply_mask(&mut par, mask(3, false), prg);
                let mut one = vec![0u32; len];
                mask_chunk(&mut one, mask(3, false), 0, prg);
                assert_eq!(par, one, "{prg}, length {len}");
                // The words are the cipher's keystream itself.
                assert_eq!(one, reference_stream(prg, [3; 32], len), "{prg}");
                apply_mask(&mut par, mask(3, true), prg);
                assert!(par.iter().all(|&w| w == 0));
            }
        }
    }

    #[test]
    fn the_two_prgs_expand_a_seed_differently_and_parse_by_name() {
        let (mut a, mut c) = (vec![0u32; 64], vec![0u32; 64]);
        apply_mask(&mut a, mask(5, false), MaskPrg::Aes128Ctr);
        apply_mask(&mut c, mask(5, false), MaskPrg::ChaCha20);
        assert_ne!(a, c);
        for prg in MaskPrg::ALL {
            assert_eq!(prg.name().parse::<MaskPrg>(), Ok(prg));
        }
        assert!("aes".parse::<MaskPrg>().unwrap_err().contains("aes128_ctr"));
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
        let (ab, ba) = (exchange(&a, &pb).unwrap(), exchange(&b, &pa).unwrap());
        let sealed = seal(&ab, 5, 1, 2, b"share").unwrap();
        assert_eq!(open(&ba, 5, 1, 2, &sealed).unwrap(), b"share");
        // Another session, direction or recipient: refused.
        assert!(open(&ba, 6, 1, 2, &sealed).is_none());
        assert!(open(&ba, 5, 2, 1, &sealed).is_none());
        let c = StaticSecret::from([11u8; 32]);
        assert!(open(&exchange(&c, &pa).unwrap(), 5, 1, 2, &sealed).is_none());
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(open(&ba, 5, 1, 2, &flipped).is_none());
    }

    #[test]
    fn a_low_order_key_is_refused() {
        let a = StaticSecret::from([7u8; 32]);
        assert!(pairwise_seed(&a, &[0u8; 32], 1, 0, 1).is_none());
        assert!(exchange(&a, &[0u8; 32]).is_none());
    }

    #[test]
    fn masks_cancel() {
        for prg in MaskPrg::ALL {
            let mut words: Vec<u32> = (0..1000).collect();
            apply_mask(&mut words, mask(3, false), prg);
            assert_ne!(words[..10], (0..10).collect::<Vec<u32>>()[..]);
            apply_mask(&mut words, mask(3, true), prg);
            assert_eq!(words, (0..1000).collect::<Vec<u32>>());
        }
    }
}
