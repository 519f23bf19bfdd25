use crate::error::{ConfigError, StrategyError};
use crate::strategy::StoreId;
use rand::seq::index;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Which stores take part in each round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// Fraction of available stores sampled each round, in (0, 1].
    pub fraction: f64,
    /// A round needs at least this many stores, both to start and to complete.
    pub min_stores: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            fraction: 1.0,
            min_stores: 1,
            seed: 0,
        }
    }
}

/// Validated [`SamplingConfig`]; deterministic for a seed and round.
#[derive(Debug, Clone)]
pub struct StoreSampler {
    config: SamplingConfig,
}

impl StoreSampler {
    pub fn new(config: SamplingConfig) -> Result<Self, ConfigError> {
        if !(config.fraction > 0.0 && config.fraction <= 1.0) {
            return Err(ConfigError::out_of_range(
                "sampling fraction",
                "in (0, 1]",
                config.fraction,
            ));
        }
        if config.min_stores == 0 {
            return Err(ConfigError::out_of_range("min_stores", ">= 1", 0));
        }
        Ok(StoreSampler { config })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Sample `max(min_stores, ceil(fraction * n))` stores, sorted by id.
    pub fn sample(&self, round: u64, available: &[StoreId]) -> Result<Vec<StoreId>, StrategyError> {
        let n = available.len();
        if n < self.config.min_stores {
            return Err(StrategyError::TooFewStores {
                available: n,
                required: self.config.min_stores,
            });
        }
        let k = ((self.config.fraction * n as f64).ceil() as usize)
            .max(self.config.min_stores)
            .min(n);
        let mut sorted: Vec<&StoreId> = available.iter().collect();
        sorted.sort();
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.config.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut chosen: Vec<StoreId> = if k == n {
            sorted.into_iter().cloned().collect()
        } else {
            index::sample(&mut rng, n, k)
                .into_iter()
                .map(|i| sorted[i].clone())
                .collect()
        };
        chosen.sort();
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores(n: usize) -> Vec<StoreId> {
        (0..n).map(|i| format!("store-{i:03}")).collect()
    }

    #[test]
    fn samples_fraction_deterministically() {
        let s = StoreSampler::new(SamplingConfig {
            fraction: 0.3,
            min_stores: 2,
            seed: 7,
        })
        .unwrap();
        let a = s.sample(3, &stores(10)).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a, s.sample(3, &stores(10)).unwrap());
        assert_ne!(a, s.sample(4, &stores(10)).unwrap());
    }

    #[test]
    fn enforces_minimum() {
        let s = StoreSampler::new(SamplingConfig {
            fraction: 0.1,
            min_stores: 4,
            seed: 0,
        })
        .unwrap();
        assert_eq!(s.sample(1, &stores(10)).unwrap().len(), 4);
        assert!(matches!(
            s.sample(1, &stores(3)),
            Err(StrategyError::TooFewStores {
                available: 3,
                required: 4
            })
        ));
    }

    #[test]
    fn refuses_bad_config() {
        let e = StoreSampler::new(SamplingConfig {
            fraction: 0.0,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "sampling fraction must be in (0, 1], got 0");
    }
}
