//! Store-level DP-FedAvg (McMahan et al. 2018): each store's update is clipped in L2,
//! Gaussian noise is added to the sum (by the coordinator, or in shares by the stores
//! under secure aggregation), and the sum is divided by the expected number of stores
//! rather than the actual one, so that no single store changes the denominator.
//! Adaptive clipping follows Andrew, Thakkar, McMahan and Ramaswamy (2021): the clip
//! tracks a quantile of the update norms through a noised count of the stores below it.

use crate::rdp::{
    rdp_distributed_discrete_gaussian, rdp_poisson_subsampled_gaussian, AccountingError,
};
use serde::{Deserialize, Serialize};

/// Where store-level noise is added, which decides whom the guarantee holds against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoisePlacement {
    /// The coordinator adds Gaussian noise to the sum: private against everyone who
    /// sees the model, but the stores trust the coordinator.
    Central,
    /// Each store adds its share of discrete Gaussian noise before SecAgg+ masking: the
    /// coordinator only ever sees the noised sum (Kairouz, Liu and Steinke 2021).
    Distributed,
    /// Each store adds the whole noise to its own update: for stores that trust nobody.
    Local,
}

/// One round of store-level noise, as the ledger accounts it. No amplification by
/// sampling is claimed: the coordinator samples a fixed number of stores, not a
/// Poisson sample, so each round is charged as if every store took part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RoundMechanism {
    /// Gaussian noise of `noise_multiplier` times the clip (central, or local for one
    /// store's own update).
    Gaussian { noise_multiplier: f64 },
    /// The distributed discrete Gaussian: `stores` shares of scale
    /// `noise_multiplier * clip_units / sqrt(stores)` in integer units, where
    /// `clip_units` is the clip in fixed-point units.
    DistributedDiscreteGaussian {
        noise_multiplier: f64,
        stores: u32,
        clip_units: f64,
        dimension: usize,
    },
}

impl RoundMechanism {
    pub fn noise_multiplier(&self) -> f64 {
        match *self {
            RoundMechanism::Gaussian { noise_multiplier }
            | RoundMechanism::DistributedDiscreteGaussian {
                noise_multiplier, ..
            } => noise_multiplier,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RoundMechanism::Gaussian { .. } => "gaussian",
            RoundMechanism::DistributedDiscreteGaussian { .. } => "distributed discrete gaussian",
        }
    }

    /// RDP of one round at each of `orders`.
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, AccountingError> {
        match *self {
            RoundMechanism::Gaussian { noise_multiplier } => {
                rdp_poisson_subsampled_gaussian(1.0, noise_multiplier, orders)
            }
            RoundMechanism::DistributedDiscreteGaussian {
                noise_multiplier,
                stores,
                clip_units,
                dimension,
            } => {
                let sigma = noise_multiplier * clip_units / (stores.max(1) as f64).sqrt();
                // Stochastic rounding moves each coordinate by less than one unit.
                let l2 = clip_units + (dimension as f64).sqrt();
                let l1 = l2 * (dimension as f64).sqrt();
                rdp_distributed_discrete_gaussian(l2, l1, sigma, stores, dimension, orders)
            }
        }
    }
}

/// Scales `update` to L2 norm at most `clip`; returns whether it was already within.
/// A non-finite update is zeroed (and counts as clipped): it must not reach the sum.
pub fn clip_l2(update: &mut [f64], clip: f64) -> bool {
    let norm = update.iter().map(|v| v * v).sum::<f64>().sqrt();
    if !norm.is_finite() {
        update.iter_mut().for_each(|v| *v = 0.0);
        return false;
    }
    if norm <= clip {
        return true;
    }
    let s = clip / norm;
    update.iter_mut().for_each(|v| *v *= s);
    false
}

/// The geometric clip update of Andrew et al.: `C <- C exp(-eta (b - gamma))`, where
/// `b` is the noised share of stores whose update norm was within `C`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AdaptiveClip {
    pub clip: f64,
    /// Target quantile of update norms (0.5 clips at the median).
    pub target_quantile: f64,
    pub learning_rate: f64,
    /// Noise multiplier of the count of stores below the clip.
    pub count_noise_multiplier: f64,
}

impl AdaptiveClip {
    pub fn new(
        initial_clip: f64,
        target_quantile: f64,
        learning_rate: f64,
        count_noise_multiplier: f64,
    ) -> Result<Self, AccountingError> {
        if !(initial_clip > 0.0 && initial_clip.is_finite()) {
            return Err(AccountingError::NoiseMultiplier(initial_clip));
        }
        if !(0.0..=1.0).contains(&target_quantile) {
            return Err(AccountingError::SamplingRate(target_quantile));
        }
        Ok(AdaptiveClip {
            clip: initial_clip,
            target_quantile,
            learning_rate,
            count_noise_multiplier,
        })
    }

    /// `noised_below` is the noised count of stores within the clip, `expected` the
    /// expected number of stores in the round.
    pub fn update(&mut self, noised_below: f64, expected: f64) {
        let share = (noised_below / expected.max(1.0)).clamp(0.0, 1.0);
        self.clip *= (-self.learning_rate * (share - self.target_quantile)).exp();
    }
}

/// Andrew et al., Theorem 1: spending part of the privacy on the count leaves the
/// update sum with noise multiplier `z_sum`, where `z^-2 = z_sum^-2 + (2 z_count)^-2`.
/// Returns the `z_sum` that keeps the overall noise multiplier at `z`, or `None` if the
/// count's noise is too small to fit within `z`.
pub fn sum_noise_multiplier_with_count(z: f64, z_count: f64) -> Option<f64> {
    let rest = z.powi(-2) - (2.0 * z_count).powi(-2);
    (rest > 0.0).then(|| rest.powf(-0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm_and_keeps_the_direction() {
        let mut u = vec![3.0, 4.0];
        assert!(!clip_l2(&mut u, 1.0));
        assert!((u[0] - 0.6).abs() < 1e-12 && (u[1] - 0.8).abs() < 1e-12);
        let mut small = vec![0.1, 0.1];
        assert!(clip_l2(&mut small, 1.0));
        assert_eq!(small, vec![0.1, 0.1]);
        let mut bad = vec![f64::NAN, 1.0];
        assert!(!clip_l2(&mut bad, 1.0));
        assert_eq!(bad, vec![0.0, 0.0]);
    }

    #[test]
    fn adaptive_clip_moves_toward_the_target_quantile() {
        // Norms uniform in [0, 10]: the median is 5.
        let norms: Vec<f64> = (0..1000).map(|i| i as f64 / 100.0).collect();
        let mut clip = AdaptiveClip::new(0.5, 0.5, 0.2, 0.0).unwrap();
        for _ in 0..200 {
            let below = norms.iter().filter(|&&n| n <= clip.clip).count() as f64;
            clip.update(below, norms.len() as f64);
        }
        assert!((clip.clip - 5.0).abs() < 0.3, "{}", clip.clip);
    }

    #[test]
    fn the_count_takes_its_share_of_the_noise() {
        let z_sum = sum_noise_multiplier_with_count(1.0, 10.0).unwrap();
        assert!(z_sum > 1.0 && z_sum < 1.01);
        assert!(sum_noise_multiplier_with_count(1.0, 0.4).is_none());
    }
}
