//! Rebuilding a secret when some revealed shares are wrong. A store that reveals a
//! bad share (by fault or to sabotage the round) must not abort every round: the
//! coordinator tries other sets of `t` shares until one rebuilds the committed secret,
//! then names the stores whose shares do not lie on that secret's polynomial.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::store::rebuild_secret;

/// Random `t`-subsets tried after the leave-one-out ones: with a few bad shares among
/// `k`, a random subset avoids them all with a probability far above 1 / this.
const RANDOM_TRIES: usize = 256;

/// A rebuilt secret and the revealers whose shares did not fit it.
#[derive(Debug, PartialEq)]
pub(super) struct Rebuilt {
    pub secret: [u8; 32],
    pub culprits: Vec<u32>,
}

/// Rebuilds from `shares` (revealer, share bytes) a secret that passes `check`. The
/// first `t` shares first (the honest case, and all the work it needs); then every
/// subset of the first `t + 1` leaving one out; then random subsets drawn from `seed`.
/// None when no subset tried passes.
pub(super) fn rebuild_checked(
    threshold: u32,
    shares: &[(u32, &[u8])],
    seed: u64,
    check: impl Fn(&[u8; 32]) -> bool,
) -> Option<Rebuilt> {
    let t = threshold as usize;
    if shares.len() < t || t == 0 {
        return None;
    }
    let try_subset = |subset: &[usize]| {
        let picked: Vec<&[u8]> = subset.iter().map(|&i| shares[i].1).collect();
        rebuild_secret(threshold, &picked).filter(|s| check(s))
    };
    let first: Vec<usize> = (0..t).collect();
    if let Some(secret) = try_subset(&first) {
        return Some(Rebuilt {
            secret,
            culprits: Vec::new(),
        });
    }
    let leave_one_out = (shares.len() > t)
        .then_some(0..=t)
        .into_iter()
        .flatten()
        .map(|skip| (0..=t).filter(|&i| i != skip).collect::<Vec<usize>>());
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let random = (0..RANDOM_TRIES).map(|_| {
        let mut s = sample(&mut rng, shares.len(), t).into_vec();
        s.sort_unstable();
        s
    });
    for subset in leave_one_out.chain(random) {
        if let Some(secret) = try_subset(&subset) {
            let culprits = misfits(threshold, shares, &subset, &secret);
            return Some(Rebuilt { secret, culprits });
        }
    }
    None
}

/// Revealers outside `good` whose share, with `t - 1` of the good ones, rebuilds
/// something else (or nothing): their share is not on the polynomial of `good`. That
/// is the dealt polynomial unless colluding revealers crafted errors that cancel
/// inside `good`; then honest shares can look wrong, so the names are evidence for
/// an operator, not grounds for an automatic ban. The secret itself is always checked.
fn misfits(threshold: u32, shares: &[(u32, &[u8])], good: &[usize], secret: &[u8; 32]) -> Vec<u32> {
    let base: Vec<&[u8]> = good[..good.len() - 1]
        .iter()
        .map(|&i| shares[i].1)
        .collect();
    let mut culprits: Vec<u32> = (0..shares.len())
        .filter(|i| !good.contains(i))
        .filter(|&i| {
            let mut picked = base.clone();
            picked.push(shares[i].1);
            rebuild_secret(threshold, &picked).as_ref() != Some(secret)
        })
        .map(|i| shares[i].0)
        .collect();
    culprits.sort_unstable();
    culprits.dedup();
    culprits
}

#[cfg(test)]
mod tests {
    use super::*;
    use blahaj::Sharks;

    fn dealt(t: u8, k: usize, secret: &[u8; 32]) -> Vec<Vec<u8>> {
        Sharks(t)
            .dealer(secret)
            .take(k)
            .map(|s| Vec::from(&s))
            .collect()
    }

    #[test]
    fn bad_shares_are_routed_around_and_named() {
        let secret = [7u8; 32];
        let mut shares = dealt(4, 7, &secret);
        shares[0][3] ^= 0x10; // revealer 10 lies
        shares[5][9] ^= 0x01; // revealer 15 lies
        let named: Vec<(u32, &[u8])> = shares
            .iter()
            .enumerate()
            .map(|(i, s)| (10 + i as u32, s.as_slice()))
            .collect();
        let rebuilt = rebuild_checked(4, &named, 3, |s| *s == secret).unwrap();
        assert_eq!(rebuilt.secret, secret);
        assert_eq!(rebuilt.culprits, vec![10, 15]);
        // Honest shares: the first t do it, nobody is named.
        let honest = dealt(4, 7, &secret);
        let named: Vec<(u32, &[u8])> = honest.iter().map(|s| (1, s.as_slice())).collect();
        let rebuilt = rebuild_checked(4, &named, 3, |s| *s == secret).unwrap();
        assert!(rebuilt.culprits.is_empty());
        // Too many bad shares to leave t good ones: nothing passes.
        let mut bad = dealt(4, 5, &secret);
        bad[1][2] ^= 1;
        bad[2][2] ^= 1;
        let named: Vec<(u32, &[u8])> = bad.iter().map(|s| (1, s.as_slice())).collect();
        assert_eq!(rebuild_checked(4, &named, 3, |s| *s == secret), None);
    }
}
