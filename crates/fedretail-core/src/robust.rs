//! Aggregation that a few lying stores cannot steer. The plain weighted mean lets one
//! store move the model as far as it likes (send a huge update, or the honest one with
//! its sign flipped); these rules bound what any minority can do, at the price of
//! holding the round's updates (memory O(stores x model size), not the streaming
//! sum's O(model size)) and of some efficiency when every store is honest.
//!
//! They replace the mean the averaging strategies (FedAvg, FedProx, the server
//! optimisers) read, so each wraps any of them unchanged: the aggregate's weighted sum
//! is the robust value times the total weight.

use crate::aggregate::{Aggregate, StreamingWeightedSum};
use crate::error::{AggregationError, ConfigError, UpdateRejection};
use crate::kernels::sum_of_squares;
use crate::update::UpdateVector;
use serde::{Deserialize, Serialize};

/// How the coordinator combines a round's updates when some stores may lie.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum RobustRule {
    /// The coordinate-wise median: each store one vote, whatever rows it claims.
    Median,
    /// The coordinate-wise mean after dropping the `trim` share of the largest and of
    /// the smallest values (Yin et al. 2018); each store one vote.
    TrimmedMean { trim: f64 },
    /// Every update scaled down to at most `factor` times the round's median update
    /// norm, then the weighted mean: a store can push no further than a typical one.
    NormBounded { factor: f64 },
}

impl RobustRule {
    pub fn name(&self) -> &'static str {
        match self {
            RobustRule::Median => "median",
            RobustRule::TrimmedMean { .. } => "trimmed_mean",
            RobustRule::NormBounded { .. } => "norm_bounded",
        }
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        match *self {
            RobustRule::Median => Ok(()),
            RobustRule::TrimmedMean { trim } if (0.0..0.5).contains(&trim) => Ok(()),
            RobustRule::TrimmedMean { trim } => Err(ConfigError::out_of_range(
                "robust.trim",
                "in [0, 0.5)",
                trim,
            )),
            RobustRule::NormBounded { factor } if factor >= 1.0 && factor.is_finite() => Ok(()),
            RobustRule::NormBounded { factor } => Err(ConfigError::out_of_range(
                "robust.factor",
                ">= 1 (a multiple of the median norm)",
                factor,
            )),
        }
    }
}

/// A round's updates, held until the round closes.
#[derive(Debug)]
pub struct RobustSum {
    rule: RobustRule,
    len: usize,
    updates: Vec<(UpdateVector, f64)>,
    total_weight: f64,
}

impl RobustSum {
    pub fn new(len: usize, rule: RobustRule) -> Self {
        RobustSum {
            rule,
            len,
            updates: Vec::new(),
            total_weight: 0.0,
        }
    }

    pub fn push(&mut self, update: UpdateVector, weight: f64) -> Result<(), AggregationError> {
        if update.len() != self.len {
            return Err(UpdateRejection::WrongLength {
                expected: self.len,
                got: update.len(),
            }
            .into());
        }
        if !weight.is_finite() || weight < 0.0 {
            return Err(UpdateRejection::BadWeight(weight).into());
        }
        self.total_weight += weight;
        self.updates.push((update, weight));
        Ok(())
    }

    pub fn finish(self) -> Aggregate {
        let (num_updates, total_weight) = (self.updates.len(), self.total_weight);
        let (weighted_sum, within_clip) = match self.rule {
            _ if num_updates == 0 => (vec![0.0; self.len], 0),
            RobustRule::Median => (self.by_coordinate(0.5, 0.0), 0),
            RobustRule::TrimmedMean { trim } => (self.by_coordinate(0.0, trim), 0),
            RobustRule::NormBounded { factor } => self.norm_bounded(factor),
        };
        Aggregate {
            weighted_sum,
            total_weight,
            num_updates,
            within_clip,
        }
    }

    /// Per coordinate, the median (`quantile` 0.5) or the trimmed mean (`trim` > 0 or
    /// `quantile` 0), times the total weight so that the strategy's mean reads it.
    fn by_coordinate(&self, quantile: f64, trim: f64) -> Vec<f64> {
        let n = self.updates.len();
        let drop = ((n as f64) * trim).floor() as usize;
        let mut column = vec![0.0; n];
        let mut out = vec![0.0; self.len];
        for (i, o) in out.iter_mut().enumerate() {
            for (c, (u, _)) in column.iter_mut().zip(&self.updates) {
                *c = match u {
                    UpdateVector::F32(v) => v[i] as f64,
                    UpdateVector::F64(v) => v[i],
                };
            }
            let value = if quantile > 0.0 {
                median(&mut column)
            } else {
                column.sort_unstable_by(f64::total_cmp);
                let kept = &column[drop..n - drop];
                kept.iter().sum::<f64>() / kept.len() as f64
            };
            *o = value * self.total_weight;
        }
        out
    }

    /// Each update scaled to at most `factor` times the median norm, weighted as the
    /// strategy weights it; with how many needed no scaling.
    fn norm_bounded(self, factor: f64) -> (Vec<f64>, usize) {
        let mut norms: Vec<f64> = self
            .updates
            .iter()
            .map(|(u, _)| match u {
                UpdateVector::F32(v) => sum_of_squares(v).sqrt(),
                UpdateVector::F64(v) => sum_of_squares(v).sqrt(),
            })
            .collect();
        let bound = factor * median(&mut norms.clone());
        let mut sum = StreamingWeightedSum::new(self.len);
        let mut within = 0;
        for ((u, w), norm) in self.updates.into_iter().zip(norms.drain(..)) {
            let scale = if norm <= bound || norm == 0.0 {
                within += 1;
                1.0
            } else {
                bound / norm
            };
            // Lengths and weights were checked on the way in.
            let _ = sum.push(u, w * scale);
        }
        (std::mem::take(&mut sum.finish().weighted_sum), within)
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (_, &mut hi, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    if n % 2 == 1 {
        return hi;
    }
    let lo = values[..n / 2]
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

/// The round's aggregate: the streaming weighted sum, or a robust rule's.
#[derive(Debug)]
pub enum RoundAggregator {
    Streaming(StreamingWeightedSum),
    Robust(RobustSum),
}

impl RoundAggregator {
    pub fn new(len: usize, rule: Option<RobustRule>) -> Self {
        match rule {
            None => RoundAggregator::Streaming(StreamingWeightedSum::new(len)),
            Some(rule) => RoundAggregator::Robust(RobustSum::new(len, rule)),
        }
    }

    pub fn push(&mut self, update: UpdateVector, weight: f64) -> Result<(), AggregationError> {
        match self {
            RoundAggregator::Streaming(s) => s.push(update, weight),
            RoundAggregator::Robust(r) => r.push(update, weight),
        }
    }

    /// Server-side clipping (central DP) exists only on the streaming sum: a robust
    /// rule's output has no per-store sensitivity to clip (configs refuse the pair).
    pub fn push_clipped(
        &mut self,
        update: UpdateVector,
        weight: f64,
        clip: f64,
    ) -> Result<bool, AggregationError> {
        match self {
            RoundAggregator::Streaming(s) => s.push_clipped(update, weight, clip),
            RoundAggregator::Robust(r) => r.push(update, weight).map(|()| true),
        }
    }

    /// The streaming sum, which takes updates in their wire bytes
    /// ([`StreamingWeightedSum::push_wire`]); a robust rule needs every update decoded.
    pub fn streaming(&self) -> Option<&StreamingWeightedSum> {
        match self {
            RoundAggregator::Streaming(s) => Some(s),
            RoundAggregator::Robust(_) => None,
        }
    }

    pub fn streaming_mut(&mut self) -> Option<&mut StreamingWeightedSum> {
        match self {
            RoundAggregator::Streaming(s) => Some(s),
            RoundAggregator::Robust(_) => None,
        }
    }

    pub fn finish(self) -> Aggregate {
        match self {
            RoundAggregator::Streaming(s) => s.finish(),
            RoundAggregator::Robust(r) => r.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aggregate(rule: Option<RobustRule>, updates: &[(Vec<f64>, f64)]) -> Vec<f64> {
        let mut agg = RoundAggregator::new(updates[0].0.len(), rule);
        for (u, w) in updates {
            agg.push(UpdateVector::F64(u.clone()), *w).unwrap();
        }
        agg.finish().weighted_mean().unwrap()
    }

    #[test]
    fn a_fifth_of_stores_flipping_and_scaling_cannot_steer_a_robust_rule() {
        let honest = (0..8).map(|i| (vec![1.0 + 0.01 * i as f64, -2.0], 1.0));
        let liars = (0..2).map(|_| (vec![-100.0, 200.0], 1e6));
        let updates: Vec<(Vec<f64>, f64)> = honest.chain(liars).collect();
        let plain = aggregate(None, &updates);
        assert!(plain[0] < -90.0, "the mean follows the liars: {plain:?}");
        for rule in [RobustRule::Median, RobustRule::TrimmedMean { trim: 0.2 }] {
            let m = aggregate(Some(rule), &updates);
            assert!(
                (m[0] - 1.04).abs() < 0.05 && (m[1] + 2.0).abs() < 1e-9,
                "{rule:?}: {m:?}"
            );
        }
        // Norm-bounded still weights by the claimed rows (the coordinator's
        // max_store_rows caps those), but a liar pushes no further than the median norm.
        let even: Vec<(Vec<f64>, f64)> = updates.iter().map(|(u, _)| (u.clone(), 1.0)).collect();
        let m = aggregate(Some(RobustRule::NormBounded { factor: 1.0 }), &even);
        assert!(m[0] > 0.3, "{m:?}");
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        let e = RobustRule::TrimmedMean { trim: 0.5 }.check().unwrap_err();
        assert!(e.to_string().contains("robust.trim"), "{e}");
        let e = RobustRule::NormBounded { factor: 0.5 }.check().unwrap_err();
        assert!(e.to_string().contains("robust.factor"), "{e}");
        assert!(RobustRule::Median.check().is_ok());
    }

    proptest! {
        /// With nothing trimmed the trimmed mean is the plain (unweighted) mean, and
        /// with an unreachable bound norm-bounded is the weighted mean: each rule
        /// reduces to FedAvg's at its limit setting.
        #[test]
        fn each_rule_reduces_to_the_mean_at_its_limit(
            updates in prop::collection::vec((prop::collection::vec(-1e3f64..1e3, 3), 0.1f64..10.0), 1..12)
        ) {
            let even: Vec<(Vec<f64>, f64)> = updates.iter().map(|(u, _)| (u.clone(), 1.0)).collect();
            let trimmed = aggregate(Some(RobustRule::TrimmedMean { trim: 0.0 }), &even);
            let mean = aggregate(None, &even);
            for (a, b) in trimmed.iter().zip(&mean) {
                prop_assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()));
            }
            let bounded = aggregate(Some(RobustRule::NormBounded { factor: 1e12 }), &updates);
            let weighted = aggregate(None, &updates);
            prop_assert_eq!(bounded, weighted);
        }

        /// The median lies between the smallest and largest value of every coordinate.
        #[test]
        fn the_median_stays_within_the_updates(
            updates in prop::collection::vec((prop::collection::vec(-1e3f64..1e3, 2), 0.1f64..10.0), 1..12)
        ) {
            let m = aggregate(Some(RobustRule::Median), &updates);
            for (i, v) in m.iter().enumerate() {
                let lo = updates.iter().map(|u| u.0[i]).fold(f64::INFINITY, f64::min);
                let hi = updates.iter().map(|u| u.0[i]).fold(f64::NEG_INFINITY, f64::max);
                prop_assert!(*v >= lo - 1e-9 && *v <= hi + 1e-9);
            }
        }
    }
}
