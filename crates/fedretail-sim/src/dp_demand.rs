//! Store-level differential privacy for the demand task: DP-FedAvg over many stores,
//! at several ε, against the same pipeline without noise. Two ways to add the noise:
//! - *central*: the coordinator clips each update (adaptively, toward a quantile of
//!   the norms, when the budget allows) and adds Gaussian noise to the sum; the
//!   stores trust it to do so. Accounting: Poisson-subsampled Gaussian, RDP. This is
//!   the `DpFedAvg` wrapper around FedAvg.
//! - *secure*: each store clips its own update, encodes it, adds its share of
//!   discrete Gaussian noise and masks it (the agent's own code); the coordinator's
//!   round machine runs the SecAgg+ stages and sees only the noised sum.
//!   Accounting: the distributed discrete Gaussian (Kairouz, Liu and Steinke 2021),
//!   without claiming amplification by sampling, so the bound holds for a fixed-size
//!   sample.
//!
//! Both run in process through the coordinator's round machine, as every federated
//! run does; only the transport is missing.

use crate::inprocess::run_private;
use crate::prepare::{prepare_network, PreparedStore, SkippedStore};
use crate::SimError;
use fedretail_coordinator::{NoiseKind, PrivacySettings};
use fedretail_core::{
    BoxFuture, FedAvg, FedAvgConfig, ModelParameters, SamplingConfig, UpdatePrecision,
};
use fedretail_data::DemandSpec;
use fedretail_models::demand::{test_errors, DemandOptions};
use fedretail_models::{demand_layout, metrics, DemandTask, LocalTask};
use fedretail_privacy::secagg::FixedPoint;
use fedretail_privacy::{
    calibrate_noise_multiplier, sum_noise_multiplier_with_count, AdaptiveClip, RdpAccountant,
    RoundMechanism,
};
use fedretail_privacy::{ClipRule, Denominator, DpFedAvg, DpSettings, Sampling};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DpDemandOptions {
    pub data_dir: PathBuf,
    pub holdout_days: u32,
    pub epsilons: Vec<f64>,
    pub delta: f64,
    pub rounds: u64,
    /// Chance that a store takes part in a round (central), or the share of stores
    /// drawn for each round (secure).
    pub sampling_rate: f64,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub server_learning_rate: f64,
    /// Starting clip; with adaptive clipping it then follows `target_quantile`.
    pub clip: f64,
    pub target_quantile: f64,
    pub clip_learning_rate: f64,
    pub secure: bool,
    pub seed: u64,
    pub prepare_parallelism: usize,
}

impl DpDemandOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        DpDemandOptions {
            data_dir,
            holdout_days: 28,
            epsilons: vec![1.0, 2.0, 4.0, 8.0],
            delta: 1e-5,
            rounds: 30,
            sampling_rate: 0.5,
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            server_learning_rate: 1.0,
            clip: 0.5,
            target_quantile: 0.5,
            clip_learning_rate: 0.2,
            secure: false,
            seed: 17,
            prepare_parallelism: 2,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DpDemandRow {
    pub setting: String,
    pub epsilon_target: Option<f64>,
    /// ε actually spent at `delta`, from the accountant.
    pub epsilon_spent: Option<f64>,
    /// Noise standard deviation of the sum over the clip.
    pub noise_multiplier: Option<f64>,
    pub adaptive_clipping: bool,
    pub final_clip: Option<f64>,
    pub median_wape: f64,
    pub pooled_wape: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DpDemandReport {
    pub task: String,
    pub stores: usize,
    pub skipped_stores: Vec<SkippedStore>,
    pub rounds: u64,
    pub expected_stores_per_round: f64,
    pub delta: f64,
    pub secure_aggregation: bool,
    pub median_wape_local: f64,
    pub median_wape_centralized: f64,
    pub rows: Vec<DpDemandRow>,
    pub options: DpDemandOptions,
    pub wall_seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// (median WAPE over stores, pooled WAPE) of `model` on the stores' held-out days.
pub(crate) fn wapes(stores: &[PreparedStore], model: &dyn Fn(usize) -> Vec<f64>) -> (f64, f64) {
    let (mut per_store, mut err_sum, mut actual_sum) = (Vec::new(), 0.0, 0.0);
    for (i, s) in stores.iter().enumerate() {
        let err = test_errors(&s.dataset, &model(i));
        let actual: f64 = s.dataset.test.units().iter().sum();
        if let Some(w) = metrics::wape(err, actual) {
            per_store.push(w);
        }
        err_sum += err;
        actual_sum += actual;
    }
    (median(per_store), err_sum / actual_sum.max(1e-12))
}

enum Noise {
    None,
    /// `z` is the accounted noise multiplier; `z_sum` what the update sum gets once
    /// the adaptive clip's count has taken its share (equal to `z` with a fixed clip).
    Central {
        z: f64,
        z_sum: f64,
        adaptive: Option<AdaptiveClip>,
    },
    /// `spent` is the ε the calibration reached.
    Secure {
        z: f64,
        spent: f64,
    },
}

/// Distributed discrete Gaussian accounting for `rounds` rounds of `m` stores adding
/// noise of total multiplier `z` over a clip of `scale_clip` integer units.
fn ddg_epsilon(
    z: f64,
    m: u32,
    scale_clip: f64,
    dim: usize,
    rounds: u64,
    delta: f64,
) -> Option<f64> {
    let mut acc = RdpAccountant::new();
    let per = RoundMechanism::DistributedDiscreteGaussian {
        noise_multiplier: z,
        stores: m,
        clip_units: scale_clip,
        dimension: dim,
    }
    .rdp(acc.orders())
    .ok()?;
    acc.compose_rdp(&per, rounds);
    acc.epsilon(delta).ok().map(|e| e.epsilon)
}

/// Trains the demand model under one setting, through the coordinator's round
/// machine: DP-FedAvg around FedAvg decides sampling, clip, noise and denominator;
/// under SecAgg+ the stores clip, noise and mask with the agent's own code. Returns
/// the model and the clip in force at the end.
fn run_setting(
    o: &DpDemandOptions,
    stores: &[(String, Arc<dyn LocalTask>)],
    noise: &Noise,
    m: u32,
    expected: f64,
) -> Result<(Vec<f64>, Option<f64>), SimError> {
    let n = stores.len();
    // Exactly m stores under SecAgg+ (the sampler takes ceil(fraction · n)).
    let fraction = if o.secure {
        (m as f64 - 0.5) / n as f64
    } else {
        1.0
    };
    let inner = FedAvg::try_new(FedAvgConfig {
        sampling: SamplingConfig {
            fraction,
            min_stores: 1,
            seed: o.seed,
        },
        local_epochs: o.local_epochs,
        batch_size: o.batch_size,
        learning_rate: o.learning_rate,
        l2: 1e-4,
        proximal_mu: 0.0,
        server_learning_rate: o.server_learning_rate,
        min_local_steps: 0,
        precision: UpdatePrecision::F64,
    })
    .map_err(|e| SimError::Options(e.to_string()))?;
    let sampling = if o.secure {
        Sampling::Inner
    } else {
        Sampling::Poisson(o.sampling_rate)
    };
    let (settings, privacy) = match noise {
        Noise::None => (
            dp_settings(0.0, ClipRule::None, Denominator::Selected, sampling, o),
            None,
        ),
        Noise::Central {
            z_sum, adaptive, ..
        } => {
            let clip = adaptive.map_or(ClipRule::Server(o.clip), ClipRule::Adaptive);
            (
                dp_settings(*z_sum, clip, Denominator::Expected(expected), sampling, o),
                None,
            )
        }
        Noise::Secure { z, .. } => {
            let privacy = PrivacySettings {
                secure_aggregation: true,
                mask_prg: Default::default(),
                expected_dropout: 0.0,
                clip: Some(o.clip),
                noise: NoiseKind::Distributed,
                noise_multiplier: Some(*z),
                budget_epsilon: None,
                delta: o.delta,
            };
            let clip = ClipRule::AtStores(o.clip);
            (
                dp_settings(0.0, clip, Denominator::Selected, sampling, o),
                Some(privacy),
            )
        }
    };
    let mut dp =
        DpFedAvg::new(Box::new(inner), settings).map_err(|e| SimError::Options(e.to_string()))?;
    let initial = ModelParameters::zeros(demand_layout());
    let run = run_private(
        &mut dp,
        stores,
        initial,
        o.rounds,
        privacy.as_ref(),
        &mut |_, _| false,
    )
    .map_err(|e| SimError::Runtime(e.to_string()))?;
    Ok((run.parameters.values().to_vec(), dp.clip()))
}

fn dp_settings(
    z: f64,
    clip: ClipRule,
    denominator: Denominator,
    sampling: Sampling,
    o: &DpDemandOptions,
) -> DpSettings {
    DpSettings {
        noise_multiplier: z,
        clip,
        denominator,
        sampling,
        seed: Some(o.seed),
    }
}

pub fn run_dp_demand<'a>(
    options: &'a DpDemandOptions,
    on_progress: Arc<dyn Fn(&str) + Send + Sync>,
) -> BoxFuture<'a, Result<DpDemandReport, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let o = options;
        check_options(o)?;
        let spec = DemandSpec {
            holdout_days: o.holdout_days,
            ..Default::default()
        };
        let progress = on_progress.clone();
        let on_done = move |store: &str, done: usize, total: usize| {
            progress(&format!("preparing features {done}/{total} ({store})"))
        };
        let (stores, skipped) =
            prepare_network(&o.data_dir, &spec, o.prepare_parallelism, &on_done).await?;
        if stores.len() < 3 {
            return Err(SimError::Options(format!(
                "store-level DP needs many stores; {} could take part",
                stores.len()
            )));
        }
        let tasks: Vec<Arc<DemandTask>> = stores
            .iter()
            .map(|s| Arc::new(DemandTask::new(s.dataset.clone(), DemandOptions::default())))
            .collect();
        let n = stores.len();
        let m = ((o.sampling_rate * n as f64).round() as u32).clamp(3, n as u32);
        let expected = if o.secure {
            m as f64
        } else {
            o.sampling_rate * n as f64
        };

        on_progress("baselines: each store alone, and the pooled fit");
        let (median_local, _) = wapes(&stores, &|i| tasks[i].local_only_model().to_vec());
        let central = crate::demo::centralized_fit(&stores, DemandOptions::default().l2);
        let (median_central, _) = wapes(&stores, &|_| central.clone());

        let network = DpNetwork {
            stores: &stores,
            local: stores
                .iter()
                .zip(&tasks)
                .map(|(s, t)| (s.store_id.clone(), t.clone() as Arc<dyn LocalTask>))
                .collect(),
            m,
            expected,
        };
        let mut rows = Vec::new();
        for (eps, noise) in settings(o, m, expected)? {
            on_progress(&setting_label(&noise, eps));
            rows.push(network.row(o, eps, &noise)?);
        }
        Ok(DpDemandReport {
            task: "demand, store-level DP-FedAvg".into(),
            stores: n,
            skipped_stores: skipped,
            rounds: o.rounds,
            expected_stores_per_round: expected,
            delta: o.delta,
            secure_aggregation: o.secure,
            median_wape_local: median_local,
            median_wape_centralized: median_central,
            rows,
            options: o.clone(),
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    })
}

/// No DP, then each ε with the noise the mode calls for.
fn settings(
    o: &DpDemandOptions,
    m: u32,
    expected: f64,
) -> Result<Vec<(Option<f64>, Noise)>, SimError> {
    let mut settings = vec![(None, Noise::None)];
    for &eps in &o.epsilons {
        let noise = if o.secure {
            secure_noise(o, eps, m)?
        } else {
            central_noise(o, eps, expected)?
        };
        settings.push((Some(eps), noise));
    }
    Ok(settings)
}

/// The stores of a DP run, as tasks, and its sampling.
struct DpNetwork<'a> {
    stores: &'a [PreparedStore],
    local: Vec<(String, Arc<dyn LocalTask>)>,
    m: u32,
    expected: f64,
}

impl DpNetwork<'_> {
    /// Trains under one setting and measures the model on every store's held-out days.
    fn row(
        &self,
        o: &DpDemandOptions,
        eps: Option<f64>,
        noise: &Noise,
    ) -> Result<DpDemandRow, SimError> {
        let (global, final_clip) = run_setting(o, &self.local, noise, self.m, self.expected)?;
        let (median_wape, pooled_wape) = wapes(self.stores, &|_| global.clone());
        let (spent, z_report) = spent(o, noise, eps)?;
        Ok(DpDemandRow {
            setting: setting_label(noise, eps),
            epsilon_target: eps,
            epsilon_spent: spent,
            noise_multiplier: z_report,
            adaptive_clipping: matches!(
                noise,
                Noise::Central {
                    adaptive: Some(_),
                    ..
                }
            ),
            final_clip: eps.and(final_clip),
            median_wape,
            pooled_wape,
        })
    }
}

fn check_options(o: &DpDemandOptions) -> Result<(), SimError> {
    if !(o.sampling_rate > 0.0 && o.sampling_rate <= 1.0) {
        return Err(SimError::Options(format!(
            "sampling rate must be in (0, 1], got {}",
            o.sampling_rate
        )));
    }
    if !(o.clip > 0.0 && o.clip.is_finite()) || o.rounds == 0 {
        return Err(SimError::Options(
            "clip must be positive and rounds at least 1".into(),
        ));
    }
    Ok(())
}

/// The smallest noise multiplier whose distributed discrete Gaussian accounting
/// over the run meets `eps`, by bisection.
fn secure_noise(o: &DpDemandOptions, eps: f64, m: u32) -> Result<Noise, SimError> {
    let dim = demand_layout().len();
    let spend = |z: f64| {
        FixedPoint::for_sum(m, o.clip, z * o.clip)
            .ok()
            .and_then(|fp| ddg_epsilon(z, m, o.clip * fp.scale(), dim, o.rounds, o.delta))
            .unwrap_or(f64::INFINITY)
    };
    let (mut lo, mut hi) = (0.01, 1e4);
    if spend(hi) > eps {
        return Err(SimError::Options(format!(
            "epsilon {eps} cannot be reached"
        )));
    }
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if spend(mid) > eps {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(Noise::Secure {
        z: hi,
        spent: spend(hi),
    })
}

/// Central noise calibrated to `eps` for Poisson sampling, with an adaptive clip
/// when the count's share of the noise fits.
fn central_noise(o: &DpDemandOptions, eps: f64, expected: f64) -> Result<Noise, SimError> {
    let z = calibrate_noise_multiplier(o.sampling_rate, o.rounds, eps, o.delta)
        .map_err(|e| SimError::Options(e.to_string()))?;
    // Andrew et al. suggest count noise of about a twentieth of the stores.
    let z_count = expected / 20.0;
    let adaptive = sum_noise_multiplier_with_count(z, z_count).and_then(|z_sum| {
        AdaptiveClip::new(o.clip, o.target_quantile, o.clip_learning_rate, z_count)
            .ok()
            .map(|a| (a, z_sum))
    });
    Ok(match adaptive {
        Some((a, z_sum)) => Noise::Central {
            z,
            z_sum,
            adaptive: Some(a),
        },
        None => Noise::Central {
            z,
            z_sum: z,
            adaptive: None,
        },
    })
}

fn setting_label(noise: &Noise, eps: Option<f64>) -> String {
    match (noise, eps) {
        (Noise::None, _) => "no DP (same sampling, unclipped mean)".to_string(),
        (
            Noise::Central {
                adaptive: Some(_), ..
            },
            Some(e),
        ) => format!("central DP, adaptive clip, epsilon {e}"),
        (Noise::Central { .. }, Some(e)) => format!("central DP, fixed clip, epsilon {e}"),
        (Noise::Secure { .. }, Some(e)) => {
            format!("SecAgg+ with distributed discrete Gaussian, epsilon {e}")
        }
        _ => "?".into(),
    }
}

/// (ε spent at δ, noise multiplier) of a setting.
fn spent(
    o: &DpDemandOptions,
    noise: &Noise,
    eps: Option<f64>,
) -> Result<(Option<f64>, Option<f64>), SimError> {
    Ok(match (noise, eps) {
        (Noise::Central { z, .. }, Some(_)) => {
            let mut acc = RdpAccountant::new();
            acc.compose_poisson_gaussian(o.sampling_rate, *z, o.rounds)
                .map_err(|e| SimError::Options(e.to_string()))?;
            (acc.epsilon(o.delta).ok().map(|e| e.epsilon), Some(*z))
        }
        (Noise::Secure { z, spent }, Some(_)) => (Some(*spent), Some(*z)),
        _ => (None, None),
    })
}

pub fn render_dp_demand(r: &DpDemandReport) -> String {
    let mut s = format!(
        "\n{} — {} stores, {} rounds, {:.0} stores a round, delta {}\n  each store alone: median WAPE {:.1}%   pooled fit: {:.1}%\n\n  {:<58} {:>8} {:>7} {:>7} {:>10} {:>10}\n",
        r.task,
        r.stores,
        r.rounds,
        r.expected_stores_per_round,
        r.delta,
        100.0 * r.median_wape_local,
        100.0 * r.median_wape_centralized,
        "setting",
        "eps",
        "noise",
        "clip",
        "median",
        "pooled"
    );
    for row in &r.rows {
        s.push_str(&format!(
            "  {:<58} {:>8} {:>7} {:>7} {:>9.1}% {:>9.1}%\n",
            row.setting,
            row.epsilon_spent.map_or("-".into(), |e| format!("{e:.2}")),
            row.noise_multiplier
                .map_or("-".into(), |z| format!("{z:.2}")),
            row.final_clip.map_or("-".into(), |c| format!("{c:.3}")),
            100.0 * row.median_wape,
            100.0 * row.pooled_wape
        ));
    }
    s
}
