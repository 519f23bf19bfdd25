//! Server-side optimizers (Reddi et al. 2021, "Adaptive Federated Optimization"):
//! the round's change to the global model — the mean delta under FedAvg — is treated
//! as a pseudo-gradient and fed to momentum (FedAvgM), Adagrad, Adam or Yogi on the
//! coordinator. A wrapper around any strategy, as Flower's `FedOpt` family wraps
//! FedAvg; with momentum 0 and learning rate 1 it is the wrapped strategy exactly.

use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::params::{ModelLayout, ModelParameters};
use crate::strategy::{check_finite_model, Applied, RoundPlan, StoreId, Strategy};

/// How the coordinator turns the round's pseudo-gradient Δ into a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerOptimizer {
    /// FedAvgM: `m ← β m + Δ`, step `η m`.
    Momentum { momentum: f64 },
    /// FedAdagrad: `v ← v + Δ²`.
    Adagrad { tau: f64 },
    /// FedAdam: `m ← β1 m + (1-β1) Δ`, `v ← β2 v + (1-β2) Δ²`.
    Adam { beta1: f64, beta2: f64, tau: f64 },
    /// FedYogi: as Adam, with `v ← v - (1-β2) Δ² sign(v - Δ²)`, which grows more slowly.
    Yogi { beta1: f64, beta2: f64, tau: f64 },
}

impl ServerOptimizer {
    fn check(&self) -> Result<(), ConfigError> {
        let unit = |name: &'static str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::out_of_range(name, "in [0, 1)", v))
            }
        };
        let tau = |v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(ConfigError::out_of_range("server tau", "> 0", v))
            }
        };
        match *self {
            ServerOptimizer::Momentum { momentum } => unit("server momentum", momentum),
            ServerOptimizer::Adagrad { tau: t } => tau(t),
            ServerOptimizer::Adam {
                beta1,
                beta2,
                tau: t,
            }
            | ServerOptimizer::Yogi {
                beta1,
                beta2,
                tau: t,
            } => {
                unit("server beta1", beta1)?;
                unit("server beta2", beta2)?;
                tau(t)
            }
        }
    }
}

/// A strategy whose global step goes through a server optimizer. Its moments live in
/// the coordinator's memory: a resumed job starts them again from zero.
pub struct ServerOpt {
    inner: Box<dyn Strategy>,
    optimizer: ServerOptimizer,
    learning_rate: f64,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl ServerOpt {
    pub fn try_new(
        inner: Box<dyn Strategy>,
        optimizer: ServerOptimizer,
        learning_rate: f64,
    ) -> Result<Self, ConfigError> {
        optimizer.check()?;
        if !(learning_rate > 0.0 && learning_rate.is_finite()) {
            return Err(ConfigError::out_of_range(
                "server_learning_rate",
                "> 0",
                learning_rate,
            ));
        }
        Ok(ServerOpt {
            inner,
            optimizer,
            learning_rate,
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// The step for pseudo-gradient `delta`, updating the moments.
    fn step(&mut self, delta: &[f64]) -> Vec<f64> {
        if self.m.len() != delta.len() {
            let v0 = match self.optimizer {
                ServerOptimizer::Momentum { .. } => 0.0,
                ServerOptimizer::Adagrad { tau }
                | ServerOptimizer::Adam { tau, .. }
                | ServerOptimizer::Yogi { tau, .. } => tau * tau,
            };
            self.m = vec![0.0; delta.len()];
            self.v = vec![v0; delta.len()];
        }
        let eta = self.learning_rate;
        let (m, v) = (&mut self.m, &mut self.v);
        match self.optimizer {
            ServerOptimizer::Momentum { momentum } => delta
                .iter()
                .zip(m.iter_mut())
                .map(|(d, m)| {
                    *m = momentum * *m + d;
                    eta * *m
                })
                .collect(),
            ServerOptimizer::Adagrad { tau } => {
                adaptive(delta, m, v, 0.0, tau, eta, |v, d2| v + d2)
            }
            ServerOptimizer::Adam { beta1, beta2, tau } => {
                adaptive(delta, m, v, beta1, tau, eta, |v, d2| {
                    beta2 * v + (1.0 - beta2) * d2
                })
            }
            ServerOptimizer::Yogi { beta1, beta2, tau } => {
                adaptive(delta, m, v, beta1, tau, eta, |v, d2| {
                    v - (1.0 - beta2) * d2 * (v - d2).signum()
                })
            }
        }
    }
}

/// `m ← β1 m + (1-β1) Δ`, `v ← second(v, Δ²)`, step `η m / (√v + τ)`.
fn adaptive(
    delta: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    beta1: f64,
    tau: f64,
    eta: f64,
    second: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    delta
        .iter()
        .zip(m.iter_mut().zip(v.iter_mut()))
        .map(|(d, (m, v))| {
            *m = beta1 * *m + (1.0 - beta1) * d;
            *v = second(*v, d * d);
            eta * *m / (v.sqrt() + tau)
        })
        .collect()
}

impl Strategy for ServerOpt {
    fn name(&self) -> &'static str {
        match self.optimizer {
            ServerOptimizer::Momentum { .. } => "fedavgm",
            ServerOptimizer::Adagrad { .. } => "fedadagrad",
            ServerOptimizer::Adam { .. } => "fedadam",
            ServerOptimizer::Yogi { .. } => "fedyogi",
        }
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        self.inner.configure_round(round, available)
    }

    fn update_len(&self, layout: &ModelLayout) -> usize {
        self.inner.update_len(layout)
    }

    fn update_weight(&self, num_examples: u64) -> f64 {
        self.inner.update_weight(num_examples)
    }

    fn is_finished(&self, global: &ModelParameters) -> bool {
        self.inner.is_finished(global)
    }

    fn round_limit(&self) -> Option<u64> {
        self.inner.round_limit()
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let proposed = self.inner.apply(round, global, aggregate)?.parameters;
        let delta: Vec<f64> = proposed
            .values()
            .iter()
            .zip(global.values())
            .map(|(p, g)| p - g)
            .collect();
        let step = self.step(&delta);
        let values: Vec<f64> = global
            .values()
            .iter()
            .zip(&step)
            .map(|(g, s)| g + s)
            .collect();
        check_finite_model(&values)?;
        let step_norm = step.iter().map(|s| s * s).sum::<f64>().sqrt();
        let parameters =
            ModelParameters::from_values(global.layout().clone(), values).map_err(|_| {
                StrategyError::AggregateShape {
                    expected: global.layout().len(),
                    got: step.len(),
                }
            })?;
        Ok(Applied {
            parameters,
            step_norm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FedAvg, FedAvgConfig, Segment, StreamingWeightedSum, UpdateVector};

    fn round(s: &mut dyn Strategy, global: &ModelParameters, delta: [f64; 2]) -> Vec<f64> {
        let mut sum = StreamingWeightedSum::new(2);
        sum.push(UpdateVector::F64(delta.to_vec()), s.update_weight(10))
            .unwrap();
        s.apply(1, global, &sum.finish())
            .unwrap()
            .parameters
            .into_values()
    }

    fn global() -> ModelParameters {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        ModelParameters::from_values(layout, vec![1.0, -1.0]).unwrap()
    }

    fn fedavg() -> Box<dyn Strategy> {
        Box::new(FedAvg::new(FedAvgConfig::default()))
    }

    #[test]
    fn momentum_zero_at_rate_one_is_fedavg() {
        let opt = ServerOptimizer::Momentum { momentum: 0.0 };
        let mut s = ServerOpt::try_new(fedavg(), opt, 1.0).unwrap();
        let mut plain = FedAvg::new(FedAvgConfig::default());
        for d in [[0.5, 0.25], [-1.0, 2.0]] {
            assert_eq!(round(&mut s, &global(), d), round(&mut plain, &global(), d));
        }
    }

    #[test]
    fn momentum_accumulates_the_pseudo_gradient() {
        let opt = ServerOptimizer::Momentum { momentum: 0.5 };
        let mut s = ServerOpt::try_new(fedavg(), opt, 1.0).unwrap();
        round(&mut s, &global(), [1.0, 0.0]);
        // m = 0.5 · 1 + 1 = 1.5 from the same global.
        assert_eq!(round(&mut s, &global(), [1.0, 0.0]), vec![2.5, -1.0]);
    }

    #[test]
    fn adam_takes_steps_of_about_the_learning_rate() {
        let opt = ServerOptimizer::Adam {
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-9,
        };
        let mut s = ServerOpt::try_new(fedavg(), opt, 0.01).unwrap();
        let next = round(&mut s, &global(), [100.0, -1e-3]);
        // m = 0.1 Δ, v = 0.01 Δ²: each coordinate moves by η whatever Δ's scale.
        assert!((next[0] - 1.01).abs() < 1e-9, "{next:?}");
        assert!((next[1] - (-1.01)).abs() < 1e-6, "{next:?}");
    }

    #[test]
    fn yogi_and_adagrad_move_toward_the_pseudo_gradient() {
        for opt in [
            ServerOptimizer::Yogi {
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
            ServerOptimizer::Adagrad { tau: 1e-3 },
        ] {
            let mut s = ServerOpt::try_new(fedavg(), opt, 0.1).unwrap();
            let next = round(&mut s, &global(), [1.0, -1.0]);
            assert!(next[0] > 1.0 && next[1] < -1.0, "{opt:?}: {next:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = ServerOptimizer::Adam {
            beta1: 1.0,
            beta2: 0.99,
            tau: 1e-3,
        };
        let err = ServerOpt::try_new(fedavg(), bad, 0.1).err().unwrap();
        assert_eq!(err.to_string(), "server beta1 must be in [0, 1), got 1");
        assert!(
            ServerOpt::try_new(fedavg(), ServerOptimizer::Momentum { momentum: 0.9 }, 0.0).is_err()
        );
    }
}
