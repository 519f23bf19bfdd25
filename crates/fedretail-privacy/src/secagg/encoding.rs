//! Real vectors to Z_{2^32} and back, and the discrete Gaussian that distributed DP
//! adds in that ring.

use rand::Rng;

use super::SecAggError;

/// Fixed-point encoding for a sum: each coordinate clipped to `[-bound, bound]`, scaled
/// and rounded stochastically (unbiased), carried as a two's-complement 32-bit word. The
/// scale leaves headroom so that the sum of `summands` encodings plus the noise (eight
/// standard deviations of it) never wraps, and the decoded sum is exact in integers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    scale: f64,
    bound: f64,
}

const LIMIT: f64 = i32::MAX as f64;

impl FixedPoint {
    /// `noise_std` is the standard deviation of the total noise in the sum, in the
    /// same units as the values (zero without distributed DP).
    pub fn for_sum(summands: u32, bound: f64, noise_std: f64) -> Result<Self, SecAggError> {
        if !(bound > 0.0 && bound.is_finite()) {
            return Err(SecAggError::Config(format!(
                "the clipping bound must be positive and finite, got {bound}"
            )));
        }
        if !(noise_std >= 0.0 && noise_std.is_finite()) {
            return Err(SecAggError::Config(format!(
                "the noise standard deviation must be finite and non-negative, got {noise_std}"
            )));
        }
        let n = summands.max(1) as f64;
        // n (bound * scale + 1) + 8 noise_std * scale <= LIMIT; the +1 is the rounding.
        let scale = (LIMIT - n) / (n * bound + 8.0 * noise_std);
        if scale < 1.0 {
            return Err(SecAggError::Config(format!(
                "{summands} summands of bound {bound} leave no precision in 32 bits"
            )));
        }
        Ok(FixedPoint { scale, bound })
    }

    /// Integer units per real unit.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn bound(&self) -> f64 {
        self.bound
    }

    /// Encodes `values` into `out`. NaN encodes as 0; callers refuse non-finite updates
    /// before they get here.
    pub fn encode_into<R: Rng + ?Sized>(&self, values: &[f64], out: &mut [u32], rng: &mut R) {
        for (o, &v) in out.iter_mut().zip(values) {
            let x = v.clamp(-self.bound, self.bound) * self.scale;
            let floor = x.floor();
            let up = rng.random::<f64>() < x - floor;
            let q = floor as i64 + i64::from(up);
            *o = q as i32 as u32;
        }
    }

    pub fn decode_into(&self, words: &[u32], out: &mut [f64]) {
        for (o, &w) in out.iter_mut().zip(words) {
            *o = w as i32 as f64 / self.scale;
        }
    }

    pub fn decode(&self, words: &[u32]) -> Vec<f64> {
        let mut out = vec![0.0; words.len()];
        self.decode_into(words, &mut out);
        out
    }
}

/// One draw from the discrete Gaussian N_Z(0, sigma^2): a discrete Laplace proposal
/// accepted with the probability of Canonne, Kamath and Steinke (2020), Algorithm 3.
/// This is the floating-point form of their sampler (as TensorFlow Privacy uses), not
/// the exact rational one.
pub fn sample_discrete_gaussian<R: Rng + ?Sized>(sigma: f64, rng: &mut R) -> i64 {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return 0;
    }
    let t = sigma.floor() + 1.0;
    let var = sigma * sigma;
    loop {
        let y = sample_discrete_laplace(t, rng);
        let c = (y.unsigned_abs() as f64 - var / t).powi(2) / (2.0 * var);
        if rng.random::<f64>() < (-c).exp() {
            return y;
        }
    }
}

/// P(y) proportional to exp(-|y| / t): the difference of two geometric draws.
fn sample_discrete_laplace<R: Rng + ?Sized>(t: f64, rng: &mut R) -> i64 {
    let mut geometric = || {
        // 1 - u is in (0, 1], so the logarithm is finite.
        let u: f64 = 1.0 - rng.random::<f64>();
        (-t * u.ln()).floor() as i64
    };
    geometric() - geometric()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn discrete_gaussian_has_the_right_moments() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for sigma in [0.8, 3.0, 40.0] {
            let n = 200_000;
            let draws: Vec<f64> = (0..n)
                .map(|_| sample_discrete_gaussian(sigma, &mut rng) as f64)
                .collect();
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            // For sigma >= 0.8 the discrete variance is within 1e-6 of sigma^2.
            assert!(
                mean.abs() < 4.0 * sigma / (n as f64).sqrt(),
                "sigma {sigma}: mean {mean}"
            );
            assert!(
                (var / (sigma * sigma) - 1.0).abs() < 0.02,
                "sigma {sigma}: var {var}"
            );
        }
    }

    #[test]
    fn encoding_round_trips_within_one_step_and_is_unbiased() {
        let fp = FixedPoint::for_sum(100, 1.0, 0.0).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let values = [0.3, -0.7, 1.0, -1.0, 5.0, 1e-9];
        let mut words = [0u32; 6];
        fp.encode_into(&values, &mut words, &mut rng);
        let back = fp.decode(&words);
        for (v, b) in values.iter().zip(&back) {
            assert!((v.clamp(-1.0, 1.0) - b).abs() <= 1.0 / fp.scale());
        }
        // Stochastic rounding: the mean of many encodings of a value between two steps
        // is that value.
        let x = 0.25 / fp.scale();
        let mut total = 0i64;
        for _ in 0..10_000 {
            let mut w = [0u32];
            fp.encode_into(&[x], &mut w, &mut rng);
            total += w[0] as i32 as i64;
        }
        assert!((total as f64 / 10_000.0 - 0.25).abs() < 0.03);
    }

    #[test]
    fn the_worst_case_sum_does_not_wrap() {
        let fp = FixedPoint::for_sum(1000, 2.0, 0.5).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut sum = 0u32;
        for _ in 0..1000 {
            let mut w = [0u32];
            fp.encode_into(&[2.0], &mut w, &mut rng);
            sum = sum.wrapping_add(w[0]);
        }
        assert!((fp.decode(&[sum])[0] - 2000.0).abs() < 1e-3);
        assert!(FixedPoint::for_sum(u32::MAX, 1e9, 0.0).is_err());
        assert!(FixedPoint::for_sum(10, f64::NAN, 0.0).is_err());
    }
}
