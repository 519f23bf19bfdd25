use crate::error::{AggregationError, UpdateRejection};
use crate::kernels::{axpy_dispatch, axpy_fused_dispatch, BLOCK, FUSE};
use crate::par::for_pieces_mut;
use crate::update::UpdateVector;
use crate::validate::UpdateLimits;
use crate::wire_fold::{self, Entry};

/// The result of aggregating one round: the weighted sum of updates and what went in.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub weighted_sum: Vec<f64>,
    pub total_weight: f64,
    pub num_updates: usize,
    /// Updates that were within the clip when the coordinator clipped them
    /// ([`StreamingWeightedSum::push_clipped`]); adaptive clipping follows this count.
    pub within_clip: usize,
}

/// A long accumulator goes back to be reused by a later round.
impl Drop for Aggregate {
    fn drop(&mut self) {
        crate::buffers::give_f64(std::mem::take(&mut self.weighted_sum));
    }
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

/// The verdict on an update pushed in its wire bytes ([`StreamingWeightedSum::push_wire`]),
/// known once its batch is folded: its ticket, and why it was refused if it was.
pub type Verdict = (u64, Result<(), UpdateRejection>);

/// Streaming weighted sum: `sum += weight * update`, one update at a time as they
/// arrive. Memory is O(model size) and independent of the number of stores: the
/// accumulator, a second one while updates are folded from their wire bytes, and one
/// fold batch of updates.
#[derive(Debug)]
pub struct StreamingWeightedSum {
    acc: Vec<f64>,
    /// Where a batch with wire updates is folded to (`back = acc + batch`) before
    /// their verdicts are known; empty until the first such batch.
    back: Vec<f64>,
    pending: Vec<(Entry, f64)>,
    verdicts: Vec<Verdict>,
    total_weight: f64,
    num_updates: usize,
    within_clip: usize,
}

impl StreamingWeightedSum {
    pub fn new(len: usize) -> Self {
        StreamingWeightedSum {
            acc: crate::buffers::zeroed_f64(len),
            back: Vec::new(),
            pending: Vec::with_capacity(FOLD_BATCH),
            verdicts: Vec::new(),
            total_weight: 0.0,
            num_updates: 0,
            within_clip: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.acc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acc.is_empty()
    }

    /// Updates in the sum, and decoded ones waiting in the batch (wire updates count
    /// once they are judged).
    pub fn num_updates(&self) -> usize {
        self.num_updates
    }

    /// Adds `weight * update` for an update still in its wire bytes (little-endian
    /// f32), checking its values against `limits` (finite, norm) in the same pass over
    /// the bytes that folds it. It is folded with its batch, so its verdict comes later,
    /// from [`Self::take_verdicts`], under `ticket`. A refused update leaves the sum bit
    /// for bit as if it had never been pushed. Refused here, at once: bytes that are
    /// not the model's length, a bad weight.
    pub fn push_wire(
        &mut self,
        bytes: Vec<u8>,
        weight: f64,
        limits: UpdateLimits,
        ticket: u64,
    ) -> Result<(), AggregationError> {
        if bytes.len() != self.acc.len().saturating_mul(4) {
            return Err(UpdateRejection::WrongLength {
                expected: self.acc.len(),
                got: bytes.len() / 4,
            }
            .into());
        }
        check_weight(weight)?;
        let entry = Entry::Wire {
            bytes,
            limits,
            ticket,
        };
        self.pending.push((entry, weight));
        if self.pending.len() == FOLD_BATCH {
            self.fold_pending();
        }
        Ok(())
    }

    /// The verdicts on wire updates whose batch has been folded, since the last call.
    pub fn take_verdicts(&mut self) -> Vec<Verdict> {
        std::mem::take(&mut self.verdicts)
    }

    /// Folds the batch now, so every wire update pushed so far has its verdict.
    pub fn settle(&mut self) {
        self.fold_pending();
    }

    /// Add `weight * update`. Refuses (and leaves the sum untouched) an update of the
    /// wrong length or a weight that is negative or not finite. Values are expected to
    /// have passed [`crate::validate_update`].
    pub fn push(&mut self, update: UpdateVector, weight: f64) -> Result<(), AggregationError> {
        self.push_scaled(update, weight, 1.0)
    }

    /// Add `weight * update`, with the update first scaled down to an L2 norm of at
    /// most `clip` (server-side clipping for central DP). Scaling folds into the
    /// weight, so the update is read once more for its norm and never copied. Returns
    /// whether it was within the clip.
    pub fn push_clipped(
        &mut self,
        update: UpdateVector,
        weight: f64,
        clip: f64,
    ) -> Result<bool, AggregationError> {
        if clip.is_nan() || clip <= 0.0 {
            return Err(UpdateRejection::BadWeight(clip).into());
        }
        let norm = update.l2_norm();
        if !norm.is_finite() {
            return Err(UpdateRejection::NormTooLarge { norm, limit: clip }.into());
        }
        let within = norm <= clip;
        let scale = if within { 1.0 } else { clip / norm };
        self.push_scaled(update, weight, scale)?;
        self.within_clip += usize::from(within);
        Ok(within)
    }

    /// `weight` counts toward the total; `weight * scale` multiplies the update.
    fn push_scaled(
        &mut self,
        update: UpdateVector,
        weight: f64,
        scale: f64,
    ) -> Result<(), AggregationError> {
        if update.len() != self.acc.len() {
            return Err(UpdateRejection::WrongLength {
                expected: self.acc.len(),
                got: update.len(),
            }
            .into());
        }
        check_weight(weight)?;
        self.total_weight += weight;
        self.num_updates += 1;
        self.pending.push((Entry::Decoded(update), weight * scale));
        if self.pending.len() == FOLD_BATCH {
            self.fold_pending();
        }
        Ok(())
    }

    /// Each core folds its own stretch of the accumulator, so every element still
    /// sees the updates in arrival order: the sum is the same on any number of cores.
    /// The folded updates' buffers are handed on to decode later updates into.
    fn fold_pending(&mut self) {
        if self.pending.iter().any(|(e, _)| e.is_wire()) {
            self.fold_judged();
        } else {
            let pending = &self.pending;
            for_pieces_mut(&mut self.acc, |acc, offset| {
                fold_range(acc, pending, offset)
            });
        }
        for (entry, _) in self.pending.drain(..) {
            if let Entry::Decoded(UpdateVector::F32(values)) = entry {
                crate::buffers::give_f32(values);
            }
        }
    }

    /// A batch with wire updates: folded into `back` while their values are checked;
    /// the refused ones taken out and the batch folded again; then `back` becomes the
    /// sum. `acc` is only read, so nothing needs undoing.
    fn fold_judged(&mut self) {
        if self.back.len() != self.acc.len() {
            self.back = crate::buffers::zeroed_f64(self.acc.len());
        }
        let squares = wire_fold::fold_from(&mut self.back, &self.acc, &self.pending);
        let refused = wire_fold::judge(&self.pending, &squares);
        for (at, why) in refused.iter().rev() {
            if let (Entry::Wire { ticket, .. }, _) = self.pending.remove(*at) {
                self.verdicts.push((ticket, Err(why.clone())));
            }
        }
        if !refused.is_empty() {
            wire_fold::fold_from(&mut self.back, &self.acc, &self.pending);
        }
        std::mem::swap(&mut self.acc, &mut self.back);
        for (entry, weight) in &self.pending {
            if let Entry::Wire { ticket, .. } = entry {
                self.total_weight += weight;
                self.num_updates += 1;
                self.verdicts.push((*ticket, Ok(())));
            }
        }
    }

    /// Fold what is pending and return the aggregate (verdicts not yet taken are
    /// dropped: call [`Self::settle`] and [`Self::take_verdicts`] first to have them).
    pub fn finish(mut self) -> Aggregate {
        self.fold_pending();
        crate::buffers::give_f64(std::mem::take(&mut self.back));
        Aggregate {
            weighted_sum: self.acc,
            total_weight: self.total_weight,
            num_updates: self.num_updates,
            within_clip: self.within_clip,
        }
    }
}

fn check_weight(weight: f64) -> Result<(), UpdateRejection> {
    if !weight.is_finite() || weight < 0.0 {
        return Err(UpdateRejection::BadWeight(weight));
    }
    Ok(())
}

/// Fold `pending` (all decoded) into `acc`, which is the accumulator slice starting
/// at `offset`.
fn fold_range(acc: &mut [f64], pending: &[(Entry, f64)], offset: usize) {
    let n = acc.len();
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let block = &mut acc[start..end];
        let (lo, hi) = (offset + start, offset + end);
        // f32 updates (the FedAvg case) are fused FUSE at a time so the accumulator
        // block is loaded and stored once per FUSE updates; f64 ones go one by one.
        let mut fused: [(&[f32], f64); FOLD_BATCH] = [(&[], 0.0); FOLD_BATCH];
        let mut num_fused = 0;
        for (entry, w) in pending {
            match entry {
                Entry::Decoded(UpdateVector::F32(v)) => {
                    fused[num_fused] = (&v[lo..hi], *w);
                    num_fused += 1;
                }
                Entry::Decoded(UpdateVector::F64(v)) => axpy_dispatch(block, &v[lo..hi], *w),
                Entry::Wire { .. } => {}
            }
        }
        let mut groups = fused[..num_fused].chunks_exact(FUSE);
        for group in &mut groups {
            axpy_fused_dispatch(block, group);
        }
        for &(x, w) in groups.remainder() {
            axpy_dispatch(block, x, w);
        }
        start = end;
    }
}

#[cfg(test)]
mod wire_tests;

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

    /// Long enough that every core folds a stretch: each element still sees the
    /// updates in arrival order, so the sum is the one-by-one sum bit for bit.
    #[test]
    fn a_fold_split_across_cores_is_the_sequential_sum_exactly() {
        let len = 3 * BLOCK + 17;
        let updates: Vec<(UpdateVector, f64)> = (0..11)
            .map(|k| {
                let v: Vec<f32> = (0..len)
                    .map(|i| ((i * 7 + k) as f32 * 0.013).sin())
                    .collect();
                (UpdateVector::F32(v), 0.3 + k as f64)
            })
            .collect();
        let mut s = StreamingWeightedSum::new(len);
        let mut plain = vec![0.0f64; len];
        for (u, w) in updates {
            if let UpdateVector::F32(v) = &u {
                for (p, &x) in plain.iter_mut().zip(v) {
                    *p += w * x as f64;
                }
            }
            s.push(u, w).unwrap();
        }
        assert_eq!(s.finish().weighted_sum, plain);
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
            prop_assert_eq!(&a.finish().weighted_sum, &b.finish().weighted_sum);
        }
    }

    #[test]
    fn clipping_on_push_equals_clipping_the_update_first() {
        let mut s = StreamingWeightedSum::new(2);
        assert!(!s
            .push_clipped(UpdateVector::F64(vec![3.0, 4.0]), 2.0, 1.0)
            .unwrap());
        assert!(s
            .push_clipped(UpdateVector::F32(vec![0.5, 0.0]), 1.0, 1.0)
            .unwrap());
        assert!(s
            .push_clipped(UpdateVector::F64(vec![f64::NAN, 0.0]), 1.0, 1.0)
            .is_err());
        let agg = s.finish();
        // 2 * (0.6, 0.8) + (0.5, 0): the weights count in full, the norm is capped.
        assert!((agg.weighted_sum[0] - 1.7).abs() < 1e-12);
        assert!((agg.weighted_sum[1] - 1.6).abs() < 1e-12);
        assert_eq!(
            (agg.total_weight, agg.num_updates, agg.within_clip),
            (3.0, 2, 1)
        );
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
    fn mixed_dtypes_across_block_boundaries_match_the_plain_loop() {
        // Longer than one cache block, with f32 and f64 updates interleaved so that
        // fused groups, remainders and f64 updates all meet at block edges.
        let len = BLOCK * 2 + 37;
        let mut s = StreamingWeightedSum::new(len);
        let mut expected = vec![0.0f64; len];
        for k in 0..13usize {
            let w = 0.5 + k as f64;
            let values: Vec<f64> = (0..len)
                .map(|i| ((i * 7 + k * 13) % 101) as f64 - 50.0)
                .collect();
            for (e, v) in expected.iter_mut().zip(&values) {
                *e += w * v;
            }
            let update = if k % 3 == 2 {
                UpdateVector::F64(values)
            } else {
                UpdateVector::F32(values.iter().map(|&v| v as f32).collect())
            };
            s.push(update, w).unwrap();
        }
        assert_eq!(s.finish().weighted_sum, expected);
    }

    #[test]
    fn empty_round_has_no_mean() {
        assert!(StreamingWeightedSum::new(3)
            .finish()
            .weighted_mean()
            .is_none());
    }
}
