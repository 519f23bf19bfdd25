//! Updates pushed in their wire bytes: folded and checked in one pass, and a refused
//! one leaves the sum as if it had never arrived.

use super::*;
use proptest::prelude::*;

fn wire(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bounded(limit: f64) -> UpdateLimits {
    UpdateLimits {
        max_l2_norm: Some(limit),
    }
}

/// The sum of `updates` pushed decoded: the reference a wire push must equal.
fn decoded_sum(updates: &[(Vec<f32>, f64)], len: usize) -> Aggregate {
    let mut s = StreamingWeightedSum::new(len);
    for (u, w) in updates {
        s.push(UpdateVector::F32(u.clone()), *w).unwrap();
    }
    s.finish()
}

/// Pushes each update in its wire bytes (ticket = its position) and returns the sum
/// and every verdict.
fn wire_sum(updates: &[(Vec<f32>, f64)], len: usize, limit: f64) -> (Aggregate, Vec<Verdict>) {
    let mut s = StreamingWeightedSum::new(len);
    for (ticket, (u, w)) in updates.iter().enumerate() {
        s.push_wire(wire(u), *w, bounded(limit), ticket as u64)
            .unwrap();
    }
    s.settle();
    let mut verdicts = s.take_verdicts();
    verdicts.sort_by_key(|v| v.0);
    (s.finish(), verdicts)
}

fn smooth(len: usize, k: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + k) as f32 * 0.013).sin())
        .collect()
}

/// Long enough for every core to fold a stretch in several cache blocks, with a tail
/// that is not a whole chunk, and a batch count that leaves groups of 3, 2 and 1.
#[test]
fn wire_updates_fold_bit_for_bit_like_decoded_ones() {
    let len = 3 * BLOCK + 17;
    let updates: Vec<(Vec<f32>, f64)> = (0..11).map(|k| (smooth(len, k), 0.3 + k as f64)).collect();
    let reference = decoded_sum(&updates, len);
    let (sum, verdicts) = wire_sum(&updates, len, f64::MAX);
    assert_eq!(sum.weighted_sum, reference.weighted_sum);
    assert_eq!(sum.total_weight, reference.total_weight);
    assert_eq!(sum.num_updates, 11);
    let tickets: Vec<u64> = verdicts.iter().map(|v| v.0).collect();
    assert_eq!(tickets, (0..11).collect::<Vec<u64>>());
    assert!(verdicts.iter().all(|v| v.1.is_ok()));
}

#[test]
fn refused_wire_updates_leave_the_sum_as_if_they_never_came() {
    let len = 2 * BLOCK + 5;
    let mut updates: Vec<(Vec<f32>, f64)> =
        (0..9).map(|k| (smooth(len, k), 1.0 + k as f64)).collect();
    updates[2].0[BLOCK + 3] = f32::NAN;
    updates[6].0.iter_mut().for_each(|v| *v *= 1e3);
    let kept: Vec<(Vec<f32>, f64)> = updates
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 6].contains(i))
        .map(|(_, u)| u.clone())
        .collect();
    let reference = decoded_sum(&kept, len);
    let (sum, verdicts) = wire_sum(&updates, len, 2000.0);
    assert_eq!(sum.weighted_sum, reference.weighted_sum);
    assert_eq!(sum.total_weight, reference.total_weight);
    assert_eq!(sum.num_updates, 7);
    assert!(
        matches!(verdicts[2].1, Err(UpdateRejection::NonFinite { index, .. }) if index == BLOCK + 3)
    );
    assert!(matches!(
        verdicts[6].1,
        Err(UpdateRejection::NormTooLarge { .. })
    ));
    assert_eq!(verdicts.iter().filter(|v| v.1.is_ok()).count(), 7);
}

#[test]
fn wire_and_decoded_updates_in_one_batch_fold_in_arrival_order() {
    let len = BLOCK + 9;
    let updates: Vec<(Vec<f32>, f64)> = (0..10).map(|k| (smooth(len, k), 0.5 + k as f64)).collect();
    let reference = decoded_sum(&updates, len);
    let mut s = StreamingWeightedSum::new(len);
    for (k, (u, w)) in updates.iter().enumerate() {
        if k % 3 == 1 {
            s.push(UpdateVector::F32(u.clone()), *w).unwrap();
        } else {
            s.push_wire(wire(u), *w, bounded(f64::MAX), k as u64)
                .unwrap();
        }
    }
    assert_eq!(s.finish().weighted_sum, reference.weighted_sum);
}

#[test]
fn wire_bytes_of_the_wrong_length_or_a_bad_weight_are_refused_at_once() {
    let mut s = StreamingWeightedSum::new(4);
    let err = s.push_wire(vec![0; 12], 1.0, bounded(1.0), 0).unwrap_err();
    assert!(err.to_string().contains("3 values"), "{err}");
    assert!(s.push_wire(vec![0; 16], f64::NAN, bounded(1.0), 1).is_err());
    s.settle();
    assert!(s.take_verdicts().is_empty());
    assert_eq!(s.finish().num_updates, 0);
}

proptest! {
    /// Whatever the batch and whichever updates are bad, the sum is the decoded sum of
    /// the good ones, bit for bit, and each update gets its own verdict.
    #[test]
    fn the_wire_sum_is_the_decoded_sum_of_the_accepted(
        len in 1usize..40,
        raw in prop::collection::vec((prop::collection::vec(-1e3f32..1e3, 40), 0.0f64..1e4, 0u8..6), 1..30),
    ) {
        let updates: Vec<(Vec<f32>, f64)> = raw
            .iter()
            .map(|(v, w, bad)| {
                let mut v = v[..len].to_vec();
                match bad {
                    0 => v[len / 2] = f32::INFINITY,
                    1 => v.iter_mut().for_each(|x| *x = 1e3),
                    _ => {}
                }
                (v, *w)
            })
            .collect();
        let limit = 0.99e3 * (len as f64).sqrt();
        let good = |v: &Vec<f32>| v.iter().all(|x| x.is_finite())
            && v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() <= limit;
        let kept: Vec<(Vec<f32>, f64)> = updates.iter().filter(|(v, _)| good(v)).cloned().collect();
        let (sum, verdicts) = wire_sum(&updates, len, limit);
        prop_assert_eq!(&sum.weighted_sum, &decoded_sum(&kept, len).weighted_sum);
        prop_assert_eq!(sum.num_updates, kept.len());
        prop_assert_eq!(verdicts.len(), updates.len());
        for ((_, verdict), (v, _)) in verdicts.iter().zip(&updates) {
            prop_assert_eq!(verdict.is_ok(), good(v));
        }
    }
}
