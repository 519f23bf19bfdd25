//! Differential privacy as a wrapper around any [`Strategy`], as Flower's
//! `DifferentialPrivacyServerSide*Clipping` wrap theirs: the wrapped strategy still
//! decides the work and how an aggregate becomes a model; the wrapper decides who is
//! sampled (Poisson, for the accountant's amplification), the clip (fixed or adaptive,
//! Andrew et al. 2021), the Gaussian noise the coordinator adds, and the fixed
//! denominator, so that no single store moves the mean. The round loop only clips on
//! fold when the plan says so ([`RoundPlan::server_clip`]).

use crate::store_dp::AdaptiveClip;
use fedretail_core::{
    Aggregate, Applied, ModelLayout, ModelParameters, RoundPlan, StoreId, Strategy, StrategyError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};

/// Who clips the updates, and at what norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClipRule {
    /// The stores clip their own updates at this norm (they are told so with the task).
    AtStores(f64),
    /// The coordinator clips each update at this norm as it folds it in.
    Server(f64),
    /// The coordinator clips, and moves the clip toward a quantile of the norms.
    Adaptive(AdaptiveClip),
    /// No clip: only meaningful without noise (a baseline with the same sampling).
    None,
}

impl ClipRule {
    /// The clip in force, if any.
    pub fn clip(&self) -> Option<f64> {
        match self {
            ClipRule::AtStores(c) | ClipRule::Server(c) => Some(*c),
            ClipRule::Adaptive(a) => Some(a.clip),
            ClipRule::None => None,
        }
    }
}

/// What the mean divides by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Denominator {
    /// The number of stores selected for the round.
    Selected,
    /// A fixed expected number of stores (Poisson sampling: the count itself is private).
    Expected(f64),
}

/// Which stores a round asks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Those the wrapped strategy chose.
    Inner,
    /// Each available store independently with this probability.
    Poisson(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DpSettings {
    /// Standard deviation of the noise the coordinator adds to the sum, over the clip
    /// (0 when the stores add the noise themselves, or for a baseline).
    pub noise_multiplier: f64,
    pub clip: ClipRule,
    pub denominator: Denominator,
    pub sampling: Sampling,
    /// Seeds sampling and noise for a reproducible simulation; None draws from the
    /// operating system, as a deployment must (noise the coordinator could predict
    /// would protect nothing).
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DpError {
    #[error("noise multiplier must be finite and >= 0, got {0}")]
    NoiseMultiplier(f64),
    #[error("the clip must be finite and > 0, got {0}")]
    Clip(f64),
    #[error("noise needs a clip: without one a single store's update is unbounded")]
    NoiseWithoutClip,
    #[error("Poisson sampling rate must be in (0, 1], got {0}")]
    SamplingRate(f64),
    #[error("the expected number of stores must be > 0, got {0}")]
    Expected(f64),
}

/// DP-FedAvg (McMahan et al. 2018) around any strategy: every update counts once
/// (its clip is its sensitivity), the coordinator's noise joins the sum, and the mean
/// divides by a number no store can move.
pub struct DpFedAvg {
    inner: Box<dyn Strategy>,
    settings: DpSettings,
    rng: ChaCha20Rng,
    selected: usize,
}

impl DpFedAvg {
    pub fn new(inner: Box<dyn Strategy>, settings: DpSettings) -> Result<Self, DpError> {
        check(&settings)?;
        let rng = match settings.seed {
            Some(seed) => ChaCha20Rng::seed_from_u64(seed),
            None => ChaCha20Rng::from_rng(&mut rand::rng()),
        };
        Ok(DpFedAvg {
            inner,
            settings,
            rng,
            selected: 0,
        })
    }

    /// The clip in force now (an adaptive clip moves after every round).
    pub fn clip(&self) -> Option<f64> {
        self.settings.clip.clip()
    }

    pub fn settings(&self) -> &DpSettings {
        &self.settings
    }

    /// The sum plus N(0, (z·clip)²) in every coordinate; the count of stores within
    /// the clip moves an adaptive clip (with its own noise).
    fn noised(&mut self, aggregate: &Aggregate) -> Result<Aggregate, StrategyError> {
        let mut out = aggregate.clone();
        let clip = self.settings.clip.clip().unwrap_or(0.0);
        let std = self.settings.noise_multiplier * clip;
        if std > 0.0 {
            let normal = Normal::new(0.0, std).map_err(|e| StrategyError::Config(e.to_string()))?;
            for v in out.weighted_sum.iter_mut() {
                *v += normal.sample(&mut self.rng);
            }
            // The noised sum is released even when no store was sampled.
            out.num_updates = out.num_updates.max(1);
        }
        out.total_weight = match self.settings.denominator {
            Denominator::Selected => self.selected as f64,
            Denominator::Expected(e) => e,
        };
        let expected = out.total_weight;
        if let ClipRule::Adaptive(a) = &mut self.settings.clip {
            let count_noise = match a.count_noise_multiplier {
                z if z > 0.0 => Normal::new(0.0, z)
                    .map_err(|e| StrategyError::Config(e.to_string()))?
                    .sample(&mut self.rng),
                _ => 0.0,
            };
            a.update(aggregate.within_clip as f64 + count_noise, expected);
        }
        Ok(out)
    }
}

fn check(s: &DpSettings) -> Result<(), DpError> {
    let z = s.noise_multiplier;
    if !(z.is_finite() && z >= 0.0) {
        return Err(DpError::NoiseMultiplier(z));
    }
    match s.clip.clip() {
        Some(c) if !(c.is_finite() && c > 0.0) => return Err(DpError::Clip(c)),
        None if z > 0.0 => return Err(DpError::NoiseWithoutClip),
        _ => {}
    }
    if let Sampling::Poisson(q) = s.sampling {
        if !(q > 0.0 && q <= 1.0) {
            return Err(DpError::SamplingRate(q));
        }
    }
    if let Denominator::Expected(e) = s.denominator {
        if !(e.is_finite() && e > 0.0) {
            return Err(DpError::Expected(e));
        }
    }
    Ok(())
}

impl Strategy for DpFedAvg {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError> {
        let mut plan = self.inner.configure_round(round, available)?;
        if let Sampling::Poisson(q) = self.settings.sampling {
            let mut sorted: Vec<&StoreId> = available.iter().collect();
            sorted.sort();
            plan.stores = sorted
                .into_iter()
                .filter(|_| self.rng.random::<f64>() < q)
                .cloned()
                .collect();
        }
        plan.server_clip = match self.settings.clip {
            ClipRule::Server(c) => Some(c),
            ClipRule::Adaptive(a) => Some(a.clip),
            ClipRule::AtStores(_) | ClipRule::None => None,
        };
        self.selected = plan.stores.len();
        Ok(plan)
    }

    fn update_len(&self, layout: &ModelLayout) -> usize {
        self.inner.update_len(layout)
    }

    /// Every store counts once: its clip, not its size, bounds what it contributes.
    fn update_weight(&self, _num_examples: u64) -> f64 {
        1.0
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
        let noised = self.noised(aggregate)?;
        self.inner.apply(round, global, &noised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedretail_core::{FedAvg, FedAvgConfig, Segment, StreamingWeightedSum, UpdateVector};

    fn global() -> ModelParameters {
        let layout = ModelLayout::new(vec![Segment::new("w", 2, true)]).unwrap();
        ModelParameters::zeros(layout)
    }

    fn settings(z: f64, clip: ClipRule) -> DpSettings {
        DpSettings {
            noise_multiplier: z,
            clip,
            denominator: Denominator::Selected,
            sampling: Sampling::Inner,
            seed: Some(3),
        }
    }

    /// One round of `strategy` over three stores' updates, folded as the round loop does.
    fn one_round(strategy: &mut dyn Strategy) -> Vec<f64> {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let plan = strategy.configure_round(1, &ids).unwrap();
        let updates = [vec![3.0, 4.0], vec![0.1, 0.0], vec![0.0, -0.2]];
        let mut sum = StreamingWeightedSum::new(2);
        for u in updates.iter().take(plan.stores.len()) {
            let u = UpdateVector::F64(u.clone());
            let w = strategy.update_weight(1);
            match plan.server_clip {
                Some(c) => drop(sum.push_clipped(u, w, c).unwrap()),
                None => sum.push(u, w).unwrap(),
            }
        }
        strategy
            .apply(1, &global(), &sum.finish())
            .unwrap()
            .parameters
            .values()
            .to_vec()
    }

    #[test]
    fn without_noise_or_clip_it_is_the_unweighted_mean() {
        let mut plain = FedAvg::new(FedAvgConfig::default());
        let mut dp = DpFedAvg::new(
            Box::new(FedAvg::new(Default::default())),
            settings(0.0, ClipRule::None),
        )
        .unwrap();
        // FedAvg with equal weights is the limit the wrapper must reduce to.
        assert_eq!(one_round(&mut dp), one_round(&mut plain));
    }

    #[test]
    fn server_clip_bounds_each_store_and_the_denominator_is_fixed() {
        let inner = Box::new(FedAvg::new(Default::default()));
        let mut dp = DpFedAvg::new(inner, settings(0.0, ClipRule::Server(1.0))).unwrap();
        let got = one_round(&mut dp);
        // ((0.6, 0.8) + (0.1, 0) + (0, -0.2)) / 3
        assert!((got[0] - 0.7 / 3.0).abs() < 1e-12 && (got[1] - 0.6 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn noise_has_the_calibrated_spread() {
        let mut deltas = Vec::new();
        for seed in 0..400 {
            let mut s = settings(2.0, ClipRule::Server(1.0));
            s.seed = Some(seed);
            let mut dp = DpFedAvg::new(Box::new(FedAvg::new(Default::default())), s).unwrap();
            deltas.push(one_round(&mut dp)[0] - 0.7 / 3.0);
        }
        // Noise std z·clip on the sum, so z·clip/3 on the mean: 2/3.
        let var = deltas.iter().map(|d| d * d).sum::<f64>() / deltas.len() as f64;
        assert!((var.sqrt() - 2.0 / 3.0).abs() < 0.07, "{}", var.sqrt());
    }

    #[test]
    fn adaptive_clip_moves_toward_the_norms() {
        let a = AdaptiveClip::new(10.0, 0.5, 0.5, 0.0).unwrap();
        let inner = Box::new(FedAvg::new(Default::default()));
        let mut dp = DpFedAvg::new(inner, settings(0.0, ClipRule::Adaptive(a))).unwrap();
        for _ in 0..80 {
            one_round(&mut dp);
        }
        // Norms are 5, 0.1 and 0.2: the median is 0.2, which the clip then straddles.
        let clip = dp.clip().unwrap();
        assert!(clip > 0.1 && clip < 0.4, "{clip}");
    }

    #[test]
    fn poisson_sampling_is_reproducible_and_noise_needs_a_clip() {
        let ids: Vec<String> = (0..100).map(|i| format!("s{i:03}")).collect();
        let mut s = settings(0.0, ClipRule::None);
        s.sampling = Sampling::Poisson(0.3);
        let plan = |s: &DpSettings| {
            let inner = Box::new(FedAvg::new(Default::default()));
            DpFedAvg::new(inner, s.clone())
                .unwrap()
                .configure_round(1, &ids)
                .unwrap()
                .stores
        };
        assert_eq!(plan(&s), plan(&s));
        assert!((15..45).contains(&plan(&s).len()));
        let err = DpFedAvg::new(
            Box::new(FedAvg::new(Default::default())),
            settings(1.0, ClipRule::None),
        );
        assert_eq!(err.err(), Some(DpError::NoiseWithoutClip));
    }
}
