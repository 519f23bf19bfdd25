use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::params::ModelParameters;
use crate::sampling::{SamplingConfig, StoreSampler};
use crate::strategy::{
    check_finite_model, Applied, LocalSgd, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision,
};

/// Federated Averaging (McMahan et al., 2017): stores run local epochs from the global
/// model and send their parameter delta; the new global model adds the mean delta,
/// weighted by training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct FedAvgConfig {
    pub sampling: SamplingConfig,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub l2: f64,
    /// FedProx's proximal strength (0 is FedAvg); see [`LocalSgd::proximal_mu`].
    pub proximal_mu: f64,
    /// Multiplies the mean delta (1.0 is plain FedAvg).
    pub server_learning_rate: f64,
    /// See [`LocalSgd::min_steps`] (0: every store runs `local_epochs`).
    pub min_local_steps: u32,
    pub precision: UpdatePrecision,
}

impl Default for FedAvgConfig {
    fn default() -> Self {
        FedAvgConfig {
            sampling: SamplingConfig::default(),
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            l2: 1e-4,
            proximal_mu: 0.0,
            server_learning_rate: 1.0,
            min_local_steps: 0,
            precision: UpdatePrecision::F32,
        }
    }
}

impl FedAvgConfig {
    /// Each store's local work in `round` (its shuffle seeded by the round).
    pub fn local_sgd(&self, round: u64) -> LocalSgd {
        LocalSgd {
            epochs: self.local_epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2: self.l2,
            proximal_mu: self.proximal_mu,
            seed: self.sampling.seed.wrapping_add(round),
            min_steps: self.min_local_steps,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FedAvg {
    config: FedAvgConfig,
    sampler: StoreSampler,
}

impl FedAvg {
    /// Panics only on an invalid config; use [`FedAvg::try_new`] for user input.
    pub fn new(config: FedAvgConfig) -> Self {
        Self::try_new(config).expect("valid FedAvg config")
    }

    pub fn try_new(config: FedAvgConfig) -> Result<Self, ConfigError> {
        if config.local_epochs == 0 {
            return Err(ConfigError::out_of_range("local_epochs", ">= 1", 0));
        }
        if config.batch_size == 0 {
            return Err(ConfigError::out_of_range("batch_size", ">= 1", 0));
        }
        if !(config.learning_rate > 0.0 && config.learning_rate.is_finite()) {
            return Err(ConfigError::out_of_range(
                "learning_rate",
                "> 0",
                config.learning_rate,
            ));
        }
        if !(config.l2 >= 0.0 && config.l2.is_finite()) {
            return Err(ConfigError::out_of_range("l2", ">= 0", config.l2));
        }
        if !(config.proximal_mu >= 0.0 && config.proximal_mu.is_finite()) {
            return Err(ConfigError::out_of_range(
                "proximal_mu",
                ">= 0",
                config.proximal_mu,
            ));
        }
        if !(config.server_learning_rate > 0.0 && config.server_learning_rate.is_finite()) {
            return Err(ConfigError::out_of_range(
                "server_learning_rate",
                "> 0",
                config.server_learning_rate,
            ));
        }
        let sampler = StoreSampler::new(config.sampling)?;
        Ok(FedAvg { config, sampler })
    }
}

impl Strategy for FedAvg {
    fn name(&self) -> &'static str {
        if self.config.proximal_mu > 0.0 {
            "fedprox"
        } else {
            "fedavg"
        }
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::LocalEpochs(self.config.local_sgd(round)),
            precision: self.config.precision,
            server_clip: None,
        })
    }

    fn update_weight(&self, num_examples: u64) -> f64 {
        num_examples as f64
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let expected = global.layout().len();
        if aggregate.weighted_sum.len() != expected {
            return Err(StrategyError::AggregateShape {
                expected,
                got: aggregate.weighted_sum.len(),
            });
        }
        let mean_delta = aggregate
            .weighted_mean()
            .ok_or(StrategyError::EmptyRound { round })?;
        let eta = self.config.server_learning_rate;
        let mut step_sq = 0.0;
        let values: Vec<f64> = global
            .values()
            .iter()
            .zip(&mean_delta)
            .map(|(w, d)| {
                step_sq += (eta * d) * (eta * d);
                w + eta * d
            })
            .collect();
        check_finite_model(&values)?;
        let parameters =
            ModelParameters::from_values(global.layout().clone(), values).map_err(|_| {
                StrategyError::AggregateShape {
                    expected,
                    got: mean_delta.len(),
                }
            })?;
        Ok(Applied {
            parameters,
            step_norm: step_sq.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelLayout, Segment, StreamingWeightedSum, UpdateVector};

    #[test]
    fn weighted_by_examples() {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        let global = ModelParameters::from_values(layout, vec![1.0, 1.0]).unwrap();
        let mut s = FedAvg::new(FedAvgConfig::default());
        let mut sum = StreamingWeightedSum::new(2);
        sum.push(UpdateVector::F64(vec![1.0, 0.0]), s.update_weight(100))
            .unwrap();
        sum.push(UpdateVector::F64(vec![0.0, 4.0]), s.update_weight(300))
            .unwrap();
        let out = s.apply(1, &global, &sum.finish()).unwrap();
        assert_eq!(out.parameters.values(), &[1.25, 4.0]);
    }

    #[test]
    fn empty_round_is_an_error_not_a_model() {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        let global = ModelParameters::zeros(layout);
        let mut s = FedAvg::new(FedAvgConfig::default());
        let agg = StreamingWeightedSum::new(2).finish();
        assert_eq!(
            s.apply(4, &global, &agg),
            Err(StrategyError::EmptyRound { round: 4 })
        );
    }

    #[test]
    fn config_is_validated() {
        let bad = FedAvgConfig {
            learning_rate: -1.0,
            ..Default::default()
        };
        assert_eq!(
            FedAvg::try_new(bad).unwrap_err().to_string(),
            "learning_rate must be > 0, got -1"
        );
    }

    #[test]
    fn a_proximal_term_makes_it_fedprox_and_must_be_non_negative() {
        let prox = |mu: f64| {
            FedAvg::try_new(FedAvgConfig {
                proximal_mu: mu,
                ..Default::default()
            })
        };
        let mut s = prox(0.1).unwrap();
        assert_eq!(s.name(), "fedprox");
        let plan = s.configure_round(1, &["a".into()]).unwrap();
        assert!(matches!(plan.work, LocalWork::LocalEpochs(l) if l.proximal_mu == 0.1));
        assert_eq!(prox(0.0).unwrap().name(), "fedavg");
        assert!(prox(-0.1).is_err() && prox(f64::NAN).is_err());
    }
}
