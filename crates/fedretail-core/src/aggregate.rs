use crate::error::{AggregationError, UpdateRejection};

/// One store's update as it arrived: f32 for bandwidth (FedAvg deltas) or f64 where
/// precision matters (second-order statistics).
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateVector {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl UpdateVector {
    pub fn len(&self) -> usize {
        match self {
            UpdateVector::F32(v) => v.len(),
            UpdateVector::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of payload this update carries.
    pub fn payload_bytes(&self) -> usize {
        match self {
            UpdateVector::F32(v) => v.len() * 4,
            UpdateVector::F64(v) => v.len() * 8,
        }
    }

    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            UpdateVector::F32(v) => v.iter().map(|&x| x as f64).collect(),
            UpdateVector::F64(v) => v.clone(),
        }
    }
}

/// The result of aggregating one round: the weighted sum of updates and what went in.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub weighted_sum: Vec<f64>,
    pub total_weight: f64,
    pub num_updates: usize,
}

impl Aggregate {
    /// The weighted mean; None when nothing (or only zero weight) was aggregated.
    pub fn weighted_mean(&self) -> Option<Vec<f64>> {
        if self.num_updates == 0 || self.total_weight <= 0.0 {
            return None;
        }
        let inv = 1.0 / self.total_weight;
        Some(self.weighted_sum.iter().map(|s| s * inv).collect())
    }
}

/// How many updates are held before they are folded into the accumulator together.
/// Folding several at once reads the f64 accumulator once per batch instead of once
/// per update, which is what makes aggregation run near memory bandwidth. Memory stays
/// O(model size): at most this many updates are held, however many stores reply.
const FOLD_BATCH: usize = 8;
/// Accumulator elements per cache block (16 KiB of f64, fits L1 with room to spare).
const BLOCK: usize = 2048;

/// Streaming weighted sum: `sum += weight * update`, one update at a time as they
/// arrive. Memory is O(model size) and independent of the number of stores.
#[derive(Debug)]
pub struct StreamingWeightedSum {
    acc: Vec<f64>,
    pending: Vec<(UpdateVector, f64)>,
    total_weight: f64,
    num_updates: usize,
}

impl StreamingWeightedSum {
    pub fn new(len: usize) -> Self {
        StreamingWeightedSum {
            acc: vec![0.0; len],
            pending: Vec::with_capacity(FOLD_BATCH),
            total_weight: 0.0,
            num_updates: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.acc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acc.is_empty()
    }

    pub fn num_updates(&self) -> usize {
        self.num_updates
    }

    /// Add `weight * update`. Refuses (and leaves the sum untouched) an update of the
    /// wrong length or a weight that is negative or not finite. Values are expected to
    /// have passed [`crate::validate_update`].
    pub fn push(&mut self, update: UpdateVector, weight: f64) -> Result<(), AggregationError> {
        if update.len() != self.acc.len() {
            return Err(UpdateRejection::WrongLength {
                expected: self.acc.len(),
                got: update.len(),
            }
            .into());
        }
        if !weight.is_finite() || weight < 0.0 {
            return Err(UpdateRejection::BadWeight(weight).into());
        }
        self.total_weight += weight;
        self.num_updates += 1;
        self.pending.push((update, weight));
        if self.pending.len() == FOLD_BATCH {
            self.fold_pending();
        }
        Ok(())
    }

    fn fold_pending(&mut self) {
        let n = self.acc.len();
        let mut start = 0;
        while start < n {
            let end = (start + BLOCK).min(n);
            let acc = &mut self.acc[start..end];
            for (update, w) in &self.pending {
                match update {
                    UpdateVector::F32(v) => axpy(acc, &v[start..end], *w),
                    UpdateVector::F64(v) => axpy(acc, &v[start..end], *w),
                }
            }
            start = end;
        }
        self.pending.clear();
    }

    /// Fold what is pending and return the aggregate.
    pub fn finish(mut self) -> Aggregate {
        self.fold_pending();
        Aggregate {
            weighted_sum: self.acc,
            total_weight: self.total_weight,
            num_updates: self.num_updates,
        }
    }
}

#[inline]
fn axpy<T: Copy + Into<f64>>(acc: &mut [f64], x: &[T], w: f64) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch_weighted_sum(updates: &[(Vec<f64>, f64)], len: usize) -> Vec<f64> {
        let mut out = vec![0.0; len];
        for (u, w) in updates {
            for i in 0..len {
                out[i] += w * u[i];
            }
        }
        out
    }

    fn updates_strategy() -> impl Strategy<Value = (usize, Vec<(Vec<f64>, f64)>)> {
        (1usize..40).prop_flat_map(|len| {
            let update = (prop::collection::vec(-1e3f64..1e3, len), 0.0f64..1e4);
            (Just(len), prop::collection::vec(update, 1..30))
        })
    }

    fn close(a: &[f64], b: &[f64], scale: f64) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-9 * scale.max(1.0))
    }

    proptest! {
        #[test]
        fn streaming_equals_batch((len, updates) in updates_strategy()) {
            let mut s = StreamingWeightedSum::new(len);
            for (u, w) in &updates {
                s.push(UpdateVector::F64(u.clone()), *w).unwrap();
            }
            let agg = s.finish();
            let expected = batch_weighted_sum(&updates, len);
            let scale: f64 = updates.iter().map(|(_, w)| w * 1e3).sum();
            prop_assert!(close(&agg.weighted_sum, &expected, scale));
            prop_assert_eq!(agg.num_updates, updates.len());
            let tw: f64 = updates.iter().map(|(_, w)| w).sum();
            prop_assert!((agg.total_weight - tw).abs() <= 1e-9 * tw.max(1.0));
        }

        #[test]
        fn order_does_not_matter((len, updates) in updates_strategy(), seed in any::<u64>()) {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut shuffled = updates.clone();
            shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let sum_of = |us: &[(Vec<f64>, f64)]| {
                let mut s = StreamingWeightedSum::new(len);
                for (u, w) in us {
                    s.push(UpdateVector::F64(u.clone()), *w).unwrap();
                }
                s.finish()
            };
            let a = sum_of(&updates);
            let b = sum_of(&shuffled);
            let scale: f64 = updates.iter().map(|(_, w)| w * 1e3).sum();
            prop_assert!(close(&a.weighted_sum, &b.weighted_sum, scale));
        }

        #[test]
        fn mean_is_invariant_to_weight_scale((len, updates) in updates_strategy(), c in 1e-3f64..1e3) {
            let mean_of = |k: f64| {
                let mut s = StreamingWeightedSum::new(len);
                for (u, w) in &updates {
                    s.push(UpdateVector::F64(u.clone()), *w * k).unwrap();
                }
                s.finish().weighted_mean()
            };
            match (mean_of(1.0), mean_of(c)) {
                (Some(a), Some(b)) => prop_assert!(close(&a, &b, 1e3)),
                (None, None) => {}
                _ => prop_assert!(false, "mean defined for one scale but not the other"),
            }
        }

        #[test]
        fn mean_is_a_convex_combination((len, updates) in updates_strategy()) {
            let mut s = StreamingWeightedSum::new(len);
            for (u, w) in &updates {
                s.push(UpdateVector::F64(u.clone()), *w).unwrap();
            }
            if let Some(mean) = s.finish().weighted_mean() {
                for i in 0..len {
                    let lo = updates.iter().map(|(u, _)| u[i]).fold(f64::INFINITY, f64::min);
                    let hi = updates.iter().map(|(u, _)| u[i]).fold(f64::NEG_INFINITY, f64::max);
                    prop_assert!(mean[i] >= lo - 1e-6 && mean[i] <= hi + 1e-6);
                }
            }
        }

        #[test]
        fn f32_updates_aggregate_like_their_f64_values((len, updates) in updates_strategy()) {
            let mut a = StreamingWeightedSum::new(len);
            let mut b = StreamingWeightedSum::new(len);
            for (u, w) in &updates {
                let f: Vec<f32> = u.iter().map(|&x| x as f32).collect();
                let back: Vec<f64> = f.iter().map(|&x| x as f64).collect();
                a.push(UpdateVector::F32(f), *w).unwrap();
                b.push(UpdateVector::F64(back), *w).unwrap();
            }
            prop_assert_eq!(a.finish().weighted_sum, b.finish().weighted_sum);
        }
    }

    #[test]
    fn refuses_wrong_length_and_bad_weight_without_changing_the_sum() {
        let mut s = StreamingWeightedSum::new(2);
        s.push(UpdateVector::F64(vec![1.0, 1.0]), 1.0).unwrap();
        assert!(s.push(UpdateVector::F64(vec![1.0]), 1.0).is_err());
        assert!(s.push(UpdateVector::F64(vec![1.0, 1.0]), -1.0).is_err());
        assert!(s.push(UpdateVector::F64(vec![1.0, 1.0]), f64::NAN).is_err());
        let agg = s.finish();
        assert_eq!(agg.weighted_sum, vec![1.0, 1.0]);
        assert_eq!(agg.num_updates, 1);
    }

    #[test]
    fn empty_round_has_no_mean() {
        assert!(StreamingWeightedSum::new(3)
            .finish()
            .weighted_mean()
            .is_none());
    }
}
