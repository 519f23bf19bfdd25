use crate::aggregate::UpdateVector;
use crate::error::UpdateRejection;
use crate::par::map_pieces;

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
    if let Some(limit) = limits.max_l2_norm {
        // One pass: a finite norm means every value is finite.
        let norm = update.l2_norm();
        if norm.is_finite() {
            if norm > limit {
                return Err(UpdateRejection::NormTooLarge { norm, limit });
            }
            return Ok(());
        }
        // Name the bad value; all finite, the squares overflowed: far too large.
        finite(update)?;
        return Err(UpdateRejection::NormTooLarge { norm, limit });
    }
    finite(update)
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
    let (index, value) = values
        .iter()
        .map(|&v| v.into())
        .enumerate()
        .find(|(_, v): &(usize, f64)| !v.is_finite())
        .unwrap_or((0, f64::NAN));
    Err(UpdateRejection::NonFinite { index, value })
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
}
