use crate::aggregate::Aggregate;
use crate::error::{ConfigError, StrategyError};
use crate::params::{ModelLayout, ModelParameters};
use crate::sampling::{SamplingConfig, StoreSampler};
use crate::strategy::{
    applied, check_aggregate, Applied, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision,
};
use nalgebra::{DMatrix, DVector};

/// Exact federated Newton for models with additive second-order statistics (GLMs):
/// every store sends the gradient and Hessian of its loss at the global parameters, the
/// coordinator sums them, adds the L2 penalty once and takes a Newton step. With all
/// stores in every round this is the centralized Newton iteration on the pooled data,
/// step for step, so the federated model equals the centralized one.
#[derive(Debug, Clone, PartialEq)]
pub struct FedNewtonConfig {
    pub sampling: SamplingConfig,
    /// L2 penalty on regularised segments, added once to the summed loss.
    pub l2: f64,
    /// Longest step allowed (a trust region that keeps exp-link models stable early on).
    pub max_step: f64,
}

impl Default for FedNewtonConfig {
    fn default() -> Self {
        FedNewtonConfig {
            sampling: SamplingConfig::default(),
            l2: 1.0,
            max_step: 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FedNewton {
    config: FedNewtonConfig,
    sampler: StoreSampler,
}

/// Length of the packed `[gradient, upper-triangular Hessian]` statistics vector.
pub fn newton_statistics_len(d: usize) -> usize {
    d + d * (d + 1) / 2
}

/// Pack the upper triangle (row-major, j >= i) of a symmetric d x d matrix.
pub fn pack_upper(h: &[f64], d: usize, out: &mut Vec<f64>) {
    for i in 0..d {
        out.extend_from_slice(&h[i * d + i..(i + 1) * d]);
    }
}

/// Unpack a packed upper triangle into a full symmetric d x d matrix (row-major).
pub fn unpack_upper(packed: &[f64], d: usize) -> Vec<f64> {
    let mut h = vec![0.0; d * d];
    let mut k = 0;
    for i in 0..d {
        for j in i..d {
            h[i * d + j] = packed[k];
            h[j * d + i] = packed[k];
            k += 1;
        }
    }
    h
}

/// `l2 / 2 * sum over masked i of (w_i - center_i)^2`: plain ridge with no center, or a
/// pull toward another model (personalisation toward the global model).
#[derive(Debug, Clone, Copy)]
pub struct L2Penalty<'a> {
    pub mask: &'a [bool],
    pub l2: f64,
    pub center: Option<&'a [f64]>,
}

impl FedNewton {
    pub fn try_new(config: FedNewtonConfig) -> Result<Self, ConfigError> {
        if !(config.l2 >= 0.0 && config.l2.is_finite()) {
            return Err(ConfigError::out_of_range("l2", ">= 0", config.l2));
        }
        if config.max_step.is_nan() || config.max_step <= 0.0 {
            return Err(ConfigError::out_of_range(
                "max_step",
                "> 0",
                config.max_step,
            ));
        }
        let sampler = StoreSampler::new(config.sampling)?;
        Ok(FedNewton { config, sampler })
    }

    /// One damped Newton step from `w` given summed (unpenalised) statistics. Also used
    /// by local-only, centralized and personalised fits, so all follow the same iteration.
    pub fn newton_step(
        w: &[f64],
        gradient: &[f64],
        hessian_packed: &[f64],
        penalty: &L2Penalty<'_>,
        max_step: f64,
    ) -> Option<Vec<f64>> {
        let d = w.len();
        let mut h = DMatrix::from_row_slice(d, d, &unpack_upper(hessian_packed, d));
        let mut g = DVector::from_column_slice(gradient);
        for i in 0..d {
            if penalty.mask[i] {
                let center = penalty.center.map_or(0.0, |c| c[i]);
                g[i] += penalty.l2 * (w[i] - center);
                h[(i, i)] += penalty.l2;
            }
        }
        let chol = h.cholesky()?;
        let mut delta = chol.solve(&g);
        let norm = delta.norm();
        if norm > max_step {
            delta *= max_step / norm;
        }
        Some(w.iter().zip(delta.iter()).map(|(wi, di)| wi - di).collect())
    }
}

impl Strategy for FedNewton {
    fn name(&self) -> &'static str {
        "newton"
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        Ok(RoundPlan {
            stores: self.sampler.sample(round, available)?,
            work: LocalWork::SecondOrderStatistics,
            precision: UpdatePrecision::F64,
            server_clip: None,
        })
    }

    fn update_len(&self, layout: &ModelLayout) -> usize {
        newton_statistics_len(layout.len())
    }

    fn update_weight(&self, _num_examples: u64) -> f64 {
        // Statistics are sums over rows already; they add without weights.
        1.0
    }

    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError> {
        let d = global.layout().len();
        check_aggregate(round, aggregate, newton_statistics_len(d))?;
        let (g, h) = aggregate.weighted_sum.split_at(d);
        let mask = global.layout().regularization_mask();
        let penalty = L2Penalty {
            mask: &mask,
            l2: self.config.l2,
            center: None,
        };
        let next = Self::newton_step(global.values(), g, h, &penalty, self.config.max_step)
            .ok_or(StrategyError::NotPositiveDefinite { round })?;
        applied(global, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        let h = vec![1.0, 2.0, 3.0, 2.0, 5.0, 6.0, 3.0, 6.0, 9.0];
        let mut packed = Vec::new();
        pack_upper(&h, 3, &mut packed);
        assert_eq!(packed, vec![1.0, 2.0, 3.0, 5.0, 6.0, 9.0]);
        assert_eq!(unpack_upper(&packed, 3), h);
    }

    #[test]
    fn newton_solves_a_quadratic_in_one_step() {
        // loss = 0.5 (w - 3)^2 * 2  => g = 2(w-3), H = 2; from w = 0: g = -6.
        let next = FedNewton::newton_step(
            &[0.0],
            &[-6.0],
            &[2.0],
            &L2Penalty {
                mask: &[false],
                l2: 0.0,
                center: None,
            },
            10.0,
        )
        .unwrap();
        assert!((next[0] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn indefinite_hessian_is_reported() {
        let layout = ModelLayout::new(vec![crate::Segment::new("w", 1, false)]).unwrap();
        let global = ModelParameters::zeros(layout);
        let mut s = FedNewton::try_new(FedNewtonConfig {
            l2: 0.0,
            ..Default::default()
        })
        .unwrap();
        let agg = Aggregate {
            weighted_sum: vec![1.0, -1.0],
            total_weight: 1.0,
            num_updates: 1,

            within_clip: 0,
        };
        assert_eq!(
            s.apply(2, &global, &agg).unwrap_err(),
            StrategyError::NotPositiveDefinite { round: 2 }
        );
    }
}
