//! What `[job.privacy]` means for one round: the clip and noise each store applies,
//! the SecAgg+ round the updates travel through, and what the round costs in the
//! privacy ledger. The noise the coordinator adds and the fixed denominator are the
//! job strategy's DP wrapper (`fedretail_privacy::DpFedAvg`, see `CheckedJob::build_strategy`). The driver asks for a [`RoundPrivacy`]
//! once the round's stores are chosen, and the service routes SecAgg+ messages through
//! the [`SecureRound`] it holds.

use crate::config::{NoiseKind, PrivacySettings};
use fedretail_privacy::secagg::{
    Advertisement, FixedPoint, NeighbourGraph, SecAggConfig, SecAggError, SecAggServer,
};
use fedretail_privacy::RoundMechanism;
use fedretail_proto::secagg as wire;
use fedretail_proto::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a job promises about privacy, sent with the job so that a store can sit out a
/// job below the floor its own config sets.
pub(crate) fn job_privacy_to_wire(s: &PrivacySettings) -> v1::JobPrivacy {
    let noise = match s.noise {
        NoiseKind::None => "none",
        NoiseKind::Central => "central",
        NoiseKind::Distributed => "distributed",
        NoiseKind::Local => "local",
    };
    v1::JobPrivacy {
        secure_aggregation: s.secure_aggregation,
        noise: noise.into(),
        clip: s.clip.unwrap_or(0.0),
        noise_multiplier: s.noise_multiplier.unwrap_or(0.0),
        budget_epsilon: s.budget_epsilon.unwrap_or(0.0),
        delta: s.delta,
    }
}

/// Where a SecAgg+ round is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecureStage {
    /// Stores train, encode and mask nothing yet: they send their public keys.
    Advertising,
    SharingKeys,
    Masking,
    /// The consistency check: survivors sign the survivor set (enrolled stores only).
    Confirming,
    Unmasking,
}

impl SecureStage {
    pub fn message(self) -> &'static str {
        match self {
            SecureStage::Advertising => "key advertisement",
            SecureStage::SharingKeys => "encrypted key shares",
            SecureStage::Masking => "masked input",
            SecureStage::Confirming => "survivor confirmation",
            SecureStage::Unmasking => "unmasking shares",
        }
    }
}

/// The coordinator's side of one SecAgg+ round over the wire.
pub(crate) struct SecureRound {
    pub stage: SecureStage,
    /// Taken when the round finishes (unmasking consumes it).
    pub server: Option<SecAggServer>,
    pub params: v1::SecureAggregation,
    pub fixed_point: FixedPoint,
    /// Store id -> index in the round, and back.
    pub index: BTreeMap<String, u32>,
    pub stores: Vec<String>,
    /// Stores from which this stage expects a message, and the step each is sent.
    pub outbox: BTreeMap<String, v1::sec_agg_step::Step>,
    pub expected: BTreeSet<String>,
    pub answered: BTreeSet<String>,
    /// Stores that fell out, with the stage they did not answer.
    pub left: BTreeMap<String, &'static str>,
}

impl SecureRound {
    pub fn stage_done(&self) -> bool {
        self.answered.len() >= self.expected.len()
    }

    /// Closes the current stage and opens the next. Ok(false) after unmasking: the
    /// round is ready to finish.
    pub fn advance(&mut self) -> Result<bool, SecAggError> {
        for s in self.expected.difference(&self.answered) {
            self.left.entry(s.clone()).or_insert(self.stage.message());
        }
        let Some(server) = self.server.as_mut() else {
            return Ok(false);
        };
        use v1::sec_agg_step::Step;
        // Each closing stage yields, per store index, the step that store is sent next.
        let steps: Vec<(u32, Step)> = match self.stage {
            SecureStage::Advertising => {
                let ads: BTreeMap<u32, Vec<Advertisement>> = server.close_advertising()?;
                self.stage = SecureStage::SharingKeys;
                ads.into_iter()
                    .map(|(i, ads)| {
                        let advertisements = ads.iter().map(wire::advertisement_to_wire).collect();
                        (i, Step::ShareKeys(v1::SecAggNeighbours { advertisements }))
                    })
                    .collect()
            }
            SecureStage::SharingKeys => {
                let inboxes = server.close_share_keys()?;
                self.stage = SecureStage::Masking;
                inboxes
                    .into_iter()
                    .map(|(i, shares)| {
                        let shares = shares.iter().map(wire::share_to_wire).collect();
                        (i, Step::MaskedInput(v1::SecAggInbox { shares }))
                    })
                    .collect()
            }
            SecureStage::Masking if server.checks_consistency() => {
                let survivors = server.close_masked_input_to_confirm()?;
                self.stage = SecureStage::Confirming;
                let confirm = v1::SecAggConfirm {
                    survivors: survivors.clone(),
                };
                survivors
                    .into_iter()
                    .map(|i| (i, Step::Confirm(confirm.clone())))
                    .collect()
            }
            SecureStage::Masking | SecureStage::Confirming => {
                let requests = if self.stage == SecureStage::Masking {
                    server.close_masked_input()?
                } else {
                    server.close_confirming()?
                };
                self.stage = SecureStage::Unmasking;
                requests
                    .into_iter()
                    .map(|(i, r)| (i, Step::Unmask(wire::unmask_request_to_wire(&r))))
                    .collect()
            }
            SecureStage::Unmasking => return Ok(false),
        };
        let outbox: BTreeMap<String, Step> = steps
            .into_iter()
            .filter_map(|(i, step)| self.stores.get(i as usize).map(|s| (s.clone(), step)))
            .collect();
        self.expected = outbox.keys().cloned().collect();
        self.outbox = outbox;
        self.answered.clear();
        Ok(true)
    }
}

/// One round's privacy, decided once its stores are chosen.
pub(crate) struct RoundPrivacy {
    /// Sent to each store with its task (weight filled in per store).
    pub update: v1::UpdatePrivacy,
    /// Per-store multiplier of the clipped update.
    pub weights: BTreeMap<String, f64>,
    /// Fewest survivors the noise was calibrated for (distributed DP).
    pub min_survivors: usize,
    pub secure: Option<SecureRound>,
    pub mechanism: Option<RoundMechanism>,
}

impl RoundPrivacy {
    /// The largest L2 norm the survivors' unmasked sum can have when every one of them
    /// clipped its input: the clipped inputs, times their weights; the noise the stores
    /// add, with a margin a Gaussian's norm passes with probability below 1e-14
    /// (`sigma (sqrt(d) + 8)`); and one fixed-point unit of rounding per store and
    /// coordinate. None without a clip (nothing bounds an input then).
    pub fn plausible_sum_norm(&self, survivors: &[String], dimension: usize) -> Option<f64> {
        let clip = self.update.clip;
        let sec = self.secure.as_ref()?;
        if clip <= 0.0 {
            return None;
        }
        let weight = |s: &String| self.weights.get(s).copied().unwrap_or(0.0);
        let inputs: f64 = survivors.iter().map(|s| weight(s) * clip).sum();
        let local: f64 = survivors
            .iter()
            .map(|s| (weight(s) * self.update.local_noise_stddev).powi(2))
            .sum();
        let sigma = (sec.params.sum_noise_stddev.powi(2) + local).sqrt();
        let root_d = (dimension as f64).sqrt();
        let rounding = survivors.len() as f64 * root_d / sec.fixed_point.scale();
        Some(inputs + sigma * (root_d + 8.0) + rounding)
    }
}

/// Plans the privacy of a round of `selected` stores (in index order) whose updates
/// have `dimension` values and whose plain aggregation weights are `weights`.
pub(crate) fn plan_round(
    settings: &PrivacySettings,
    selected: &[String],
    weights: &BTreeMap<String, f64>,
    dimension: usize,
    session: u64,
) -> Result<RoundPrivacy, String> {
    let clip = settings.clip.unwrap_or(f64::INFINITY);
    let z = settings.noise_multiplier.unwrap_or(0.0);
    let m = selected.len();
    let noisy = settings.noise != NoiseKind::None;
    // With noise every store counts once (its clip is the sensitivity); without it, the
    // usual FedAvg weights, scaled into (0, 1] so the clipped bound still holds.
    let max_w = weights.values().copied().fold(0.0, f64::max);
    let weights: BTreeMap<String, f64> = selected
        .iter()
        .map(|s| {
            let w = if noisy || max_w <= 0.0 {
                1.0
            } else {
                weights.get(s).copied().unwrap_or(0.0) / max_w
            };
            (s.clone(), w)
        })
        .collect();
    let min_survivors = if settings.noise == NoiseKind::Distributed {
        ((m as f64) * (1.0 - settings.expected_dropout)).ceil() as usize
    } else {
        0
    }
    .min(m);
    let local_noise_std = if settings.noise == NoiseKind::Local {
        z * clip
    } else {
        0.0
    };
    let mut mechanism = noisy.then_some(RoundMechanism::Gaussian {
        noise_multiplier: z,
    });
    let secure = if settings.secure_aggregation {
        let plan = SecurePlan {
            settings,
            selected,
            dimension,
            session,
            min_survivors,
            local_noise_std,
        };
        let (round, ddg) = plan.secure_round()?;
        mechanism = ddg.or(mechanism);
        Some(round)
    } else {
        None
    };
    Ok(RoundPrivacy {
        update: v1::UpdatePrivacy {
            clip: if clip.is_finite() { clip } else { 0.0 },
            local_noise_stddev: local_noise_std,
            weight: 1.0,
        },
        weights,
        min_survivors,
        secure,
        mechanism,
    })
}

/// What a SecAgg+ round is sized from.
struct SecurePlan<'a> {
    settings: &'a PrivacySettings,
    selected: &'a [String],
    dimension: usize,
    session: u64,
    min_survivors: usize,
    local_noise_std: f64,
}

impl SecurePlan<'_> {
    /// The round's SecAgg+ state, and under distributed noise the mechanism it
    /// releases (the discrete Gaussian the survivors' shares add up to).
    fn secure_round(&self) -> Result<(SecureRound, Option<RoundMechanism>), String> {
        let (settings, dimension) = (self.settings, self.dimension);
        let m = self.selected.len();
        let n = u32::try_from(m).map_err(|_| format!("{m} stores is too many for one round"))?;
        let config = SecAggConfig {
            prg: settings.mask_prg,
            ..SecAggConfig::for_network_tolerating(
                n,
                dimension,
                self.session,
                settings.expected_dropout,
            )
            .map_err(|e| e.to_string())?
        };
        let (fixed_point, params, mechanism) = self.encoding(n)?;
        let graph = Arc::new(NeighbourGraph::new(&config));
        let server = SecAggServer::new(config.clone(), graph).map_err(|e| e.to_string())?;
        let params = v1::SecureAggregation {
            session: self.session,
            num_stores: n,
            neighbours: config.neighbours,
            threshold: config.threshold,
            store_index: 0,
            dimension: dimension as u64,
            mask_prg: wire::mask_prg_to_wire(config.prg),
            ..params
        };
        let index = self
            .selected
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let round = SecureRound {
            stage: SecureStage::Advertising,
            server: Some(server),
            params,
            fixed_point,
            index,
            stores: self.selected.to_vec(),
            outbox: BTreeMap::new(),
            expected: self.selected.iter().cloned().collect(),
            answered: BTreeSet::new(),
            left: BTreeMap::new(),
        };
        Ok((round, mechanism))
    }

    /// The fixed-point encoding of the round (with room for the noise), the noise
    /// settings the stores are sent, and the distributed mechanism if there is one.
    fn encoding(
        &self,
        n: u32,
    ) -> Result<(FixedPoint, v1::SecureAggregation, Option<RoundMechanism>), String> {
        let s = self.settings;
        let clip = s.clip.unwrap_or(f64::INFINITY);
        let z = s.noise_multiplier.unwrap_or(0.0);
        // Local noise is inside each input: leave room for six of its deviations.
        let bound = clip + 6.0 * self.local_noise_std;
        if s.noise != NoiseKind::Distributed {
            let fp = FixedPoint::for_sum(n, bound, 0.0).map_err(|e| e.to_string())?;
            let params = v1::SecureAggregation {
                bound,
                ..Default::default()
            };
            return Ok((fp, params, None));
        }
        let floor = self.min_survivors.max(1) as f64;
        let sum_noise_std = z * clip * (n as f64 / floor).sqrt();
        let fp = FixedPoint::for_sum(n, bound, sum_noise_std).map_err(|e| e.to_string())?;
        let params = v1::SecureAggregation {
            bound,
            sum_noise_stddev: sum_noise_std,
            store_noise_stddev_units: z * clip * fp.scale() / floor.sqrt(),
            ..Default::default()
        };
        let mechanism = RoundMechanism::DistributedDiscreteGaussian {
            noise_multiplier: z,
            stores: self.min_survivors as u32,
            clip_units: clip * fp.scale(),
            dimension: self.dimension,
        };
        Ok((fp, params, Some(mechanism)))
    }
}
