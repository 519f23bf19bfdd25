use crate::error::UpdateRejection;
use crate::kernels::{decode_sum_of_squares, WireFloat};
use crate::par::{map_pieces, map_pieces_mut};
use crate::update::UpdateVector;

/// Limits an update must respect before it may be aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpdateLimits {
    /// Reject updates whose L2 norm exceeds this (None: no limit).
    pub max_l2_norm: Option<f64>,
}

/// Check an update's shape and values. One read-only pass; nothing is allocated.
pub fn validate_update(
    update: &UpdateVector,
    expected_len: usize,
    limits: &UpdateLimits,
) -> Result<(), UpdateRejection> {
    if update.len() != expected_len {
        return Err(UpdateRejection::WrongLength {
            expected: expected_len,
            got: update.len(),
        });
    }
    match limits.max_l2_norm {
        // One pass: a finite norm means every value is finite.
        Some(_) => judge_norm(update.l2_norm(), limits, || finite(update)),
        None => finite(update),
    }
}

/// Decodes an update of little-endian values from its wire bytes and checks it
/// against `limits`, in one pass over the bytes: each core decodes its piece an
/// L1-sized chunk at a time and sums the chunk's squares while it is in cache. The
/// values go into a spare buffer of a folded update when one is kept.
pub fn decode_checked<T: WireFloat>(
    bytes: &[u8],
    expected_len: usize,
    limits: &UpdateLimits,
) -> Result<Vec<T>, UpdateRejection> {
    if bytes.len() != expected_len.saturating_mul(T::BYTES) {
        return Err(UpdateRejection::WrongLength {
            expected: expected_len,
            got: bytes.len() / T::BYTES,
        });
    }
    // Every value is overwritten, so a spare buffer's stale contents never show.
    let mut values = T::spare(expected_len).unwrap_or_else(|| vec![T::default(); expected_len]);
    let sums = map_pieces_mut(&mut values, |piece, offset| {
        let start = offset * T::BYTES;
        decode_sum_of_squares(piece, &bytes[start..start + piece.len() * T::BYTES])
    });
    let norm = sums.iter().sum::<f64>().sqrt();
    judge_norm(norm, limits, || check_finite(&values))?;
    Ok(values)
}

/// The verdict on an update whose L2 norm is `norm`: a non-finite norm is a bad
/// value (named by `name_bad`, the slow scan) or squares that overflowed.
pub(crate) fn judge_norm(
    norm: f64,
    limits: &UpdateLimits,
    name_bad: impl FnOnce() -> Result<(), UpdateRejection>,
) -> Result<(), UpdateRejection> {
    let limit = limits.max_l2_norm.unwrap_or(f64::INFINITY);
    if norm.is_finite() {
        if norm > limit {
            return Err(UpdateRejection::NormTooLarge { norm, limit });
        }
        return Ok(());
    }
    name_bad()?;
    // All finite, the squares overflowed: refused only under a bound.
    if limits.max_l2_norm.is_some() {
        return Err(UpdateRejection::NormTooLarge { norm, limit });
    }
    Ok(())
}

/// Names the first non-finite value of little-endian f32 wire bytes (the slow scan,
/// run only once a sum of squares came out non-finite).
pub(crate) fn name_non_finite_wire(bytes: &[u8]) -> Result<(), UpdateRejection> {
    name_non_finite(bytes.chunks_exact(4).map(|b| f32::from_le(b) as f64))
}

/// The first value that is not finite, as a rejection naming its index.
fn name_non_finite(values: impl Iterator<Item = f64>) -> Result<(), UpdateRejection> {
    match values.enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, value)) => Err(UpdateRejection::NonFinite { index, value }),
        None => Ok(()),
    }
}

fn finite(update: &UpdateVector) -> Result<(), UpdateRejection> {
    match update {
        UpdateVector::F32(v) => check_finite(v),
        UpdateVector::F64(v) => check_finite(v),
    }
}

fn check_finite<T: Copy + Into<f64> + Sync>(values: &[T]) -> Result<(), UpdateRejection> {
    // A branch-free `&` fold vectorises; the slow scan runs only to name the index.
    let all_finite = map_pieces(values, |piece| {
        piece
            .chunks(4096)
            .all(|c| c.iter().fold(true, |ok, &v| ok & v.into().is_finite()))
    })
    .into_iter()
    .all(|ok| ok);
    if all_finite {
        return Ok(());
    }
    name_non_finite(values.iter().map(|&v| v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_bad_value() {
        let u = UpdateVector::F32(vec![1.0, f32::NAN, 2.0]);
        let err = validate_update(&u, 3, &UpdateLimits::default()).unwrap_err();
        assert!(matches!(err, UpdateRejection::NonFinite { index: 1, .. }));
        assert!(err.to_string().contains("index 1"));
        let u = UpdateVector::F64(vec![1.0, 2.0, f64::NEG_INFINITY]);
        assert!(matches!(
            validate_update(&u, 3, &UpdateLimits::default()),
            Err(UpdateRejection::NonFinite { index: 2, .. })
        ));
    }

    #[test]
    fn wrong_length_and_norm_limit() {
        let u = UpdateVector::F64(vec![3.0, 4.0]);
        assert_eq!(
            validate_update(&u, 3, &UpdateLimits::default()),
            Err(UpdateRejection::WrongLength {
                expected: 3,
                got: 2
            })
        );
        let limits = UpdateLimits {
            max_l2_norm: Some(4.0),
        };
        assert!(matches!(
            validate_update(&u, 2, &limits),
            Err(UpdateRejection::NormTooLarge { .. })
        ));
        let limits = UpdateLimits {
            max_l2_norm: Some(5.0),
        };
        assert!(validate_update(&u, 2, &limits).is_ok());
        // With a bound, a bad value is still named, and an overflowing norm refused.
        let nan = UpdateVector::F64(vec![1.0, f64::NAN]);
        assert!(matches!(
            validate_update(&nan, 2, &limits),
            Err(UpdateRejection::NonFinite { index: 1, .. })
        ));
        let huge = UpdateVector::F64(vec![1e200, 1.0]);
        assert!(matches!(
            validate_update(&huge, 2, &limits),
            Err(UpdateRejection::NormTooLarge { .. })
        ));
    }

    fn le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn decoding_checks_length_values_and_norm() {
        let limits = UpdateLimits {
            max_l2_norm: Some(5.0),
        };
        let ok = decode_checked::<f32>(&le_bytes(&[3.0, 4.0]), 2, &limits).unwrap();
        assert_eq!(ok, vec![3.0, 4.0]);
        assert!(matches!(
            decode_checked::<f32>(&le_bytes(&[3.0, 4.0]), 3, &limits),
            Err(UpdateRejection::WrongLength {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            decode_checked::<f32>(&le_bytes(&[3.0, 4.5]), 2, &limits),
            Err(UpdateRejection::NormTooLarge { .. })
        ));
        let nan = le_bytes(&[1.0, 2.0, f32::NAN]);
        for limits in [limits, UpdateLimits::default()] {
            assert!(matches!(
                decode_checked::<f32>(&nan, 3, &limits),
                Err(UpdateRejection::NonFinite { index: 2, .. })
            ));
        }
        // f64 squares that overflow: refused under a bound, kept without one.
        let huge: Vec<u8> = [1e200f64, 1.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(matches!(
            decode_checked::<f64>(&huge, 2, &limits),
            Err(UpdateRejection::NormTooLarge { .. })
        ));
        assert!(decode_checked::<f64>(&huge, 2, &UpdateLimits::default()).is_ok());
    }

    proptest::proptest! {
        /// Decoding with the checks gives the values and verdict of decoding, then
        /// validating, across the cores' pieces (lengths past two pieces included).
        #[test]
        fn decoding_checked_agrees_with_decoding_then_validating(
            len in 0usize..300_000,
            bad in proptest::option::of((0usize..300_000, 0u8..3)),
            limit in proptest::option::of(1.0f64..2000.0),
            seed in proptest::prelude::any::<u32>(),
        ) {
            let mut v: Vec<f32> = (0..len)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
                .collect();
            if let Some((at, kind)) = bad.filter(|(at, _)| *at < len) {
                v[at] = [f32::NAN, f32::INFINITY, 1e30][kind as usize];
            }
            let limits = UpdateLimits { max_l2_norm: limit };
            let decoded = decode_checked::<f32>(&le_bytes(&v), len, &limits);
            let update = UpdateVector::F32(v.clone());
            let validated = validate_update(&update, len, &limits);
            match (&decoded, &validated) {
                (Ok(d), Ok(())) => proptest::prop_assert_eq!(d, &v),
                (Err(a), Err(b)) => proptest::prop_assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b)
                ),
                _ => proptest::prop_assert!(false, "{decoded:?} vs {validated:?}"),
            }
        }
    }
}
