//! Store-level DP-FedAvg (McMahan et al. 2018): each store's update is clipped in L2,
//! Gaussian noise is added to the sum (by the coordinator, or in shares by the stores
//! under secure aggregation), and the sum is divided by the expected number of stores
//! rather than the actual one, so that no single store changes the denominator.
//! Adaptive clipping follows Andrew, Thakkar, McMahan and Ramaswamy (2021): the clip
//! tracks a quantile of the update norms through a noised count of the stores below it.

use crate::rdp::AccountingError;

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
