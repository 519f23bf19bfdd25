//! What an honest-but-curious coordinator can reconstruct from updates: the gradient
//! inversion of a logistic-regression update computed on a single record, which
//! reveals the record exactly (`x = g_w / g_b`, since both are `(p - y)` times the
//! record and 1), then the same attack against a DP-SGD update at several ε, and
//! against what the coordinator sees under secure aggregation: the unmasked output of
//! a real SecAgg+ round over many stores' updates (masked inputs, each of which is
//! uniformly random on its own, and their sum).

use crate::SimError;
use fedretail_core::BoxFuture;
use fedretail_data::{load_tabular, TabularSpec};
use fedretail_models::{example_gradient, ClassifierKind, LabeledRows};
use fedretail_privacy::calibrate_noise_multiplier;
use fedretail_privacy::secagg::{simulate_round_observed, DropoutPlan, FixedPoint, SecAggConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackOptions {
    /// Records attacked (each as its own single-record update).
    pub records: usize,
    /// ε of the DP settings tried (one DP-SGD step, δ below).
    pub epsilons: Vec<f64>,
    pub delta: f64,
    pub clip_norm: f64,
    /// Updates summed per round in the secure-aggregation setting.
    pub stores_per_sum: usize,
    /// Records attacked with the optimisation-based attack on the MLP (slower).
    pub mlp_records: usize,
    pub mlp_hidden: usize,
    /// Adam steps of the deep-leakage optimisation.
    pub dlg_steps: usize,
    pub seed: u64,
}

impl Default for AttackOptions {
    fn default() -> Self {
        AttackOptions {
            records: 200,
            epsilons: vec![1.0, 2.0, 4.0, 8.0],
            delta: 1e-5,
            clip_norm: 1.0,
            stores_per_sum: 10,
            mlp_records: 40,
            mlp_hidden: 8,
            dlg_steps: 800,
            seed: 11,
        }
    }
}

/// Reconstruction error of one setting over the attacked records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackOutcome {
    pub setting: String,
    pub epsilon: Option<f64>,
    pub noise_multiplier: Option<f64>,
    /// Median of ||x_hat - x|| / ||x||.
    pub median_relative_error: f64,
    /// Share of records recovered to 1e-6 relative error.
    pub exact_share: f64,
    /// Share within 10 % relative error.
    pub close_share: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackReport {
    pub task: String,
    pub features: usize,
    pub records: usize,
    pub options: AttackOptions,
    pub outcomes: Vec<AttackOutcome>,
}

/// A logistic regression's gradient on one record `(x, y)` at weights `w` (bias last):
/// what a store training on that record alone would send.
pub fn gradient(x: &[f64], y: bool, w: &[f64]) -> Vec<f64> {
    let d = x.len();
    let z: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + w[d];
    let r = 1.0 / (1.0 + (-z).exp()) - f64::from(u8::from(y));
    let mut g: Vec<f64> = x.iter().map(|v| r * v).collect();
    g.push(r);
    g
}

/// The attack: divide the weight gradient by the bias gradient.
pub fn invert(g: &[f64]) -> Vec<f64> {
    let d = g.len() - 1;
    g[..d].iter().map(|v| v / g[d]).collect()
}

/// Deep leakage from gradients (Zhu, Liu and Han 2019) against the MLP: start from
/// noise and move the guess until its gradient matches the observed update, by Adam on
/// the squared distance between gradients (its gradient by central differences: the
/// model is small). The label is read off the output-bias gradient, `p - y`, as in
/// iDLG (Zhao, Mopuri and Bilen 2020).
pub fn deep_leakage(
    kind: ClassifierKind,
    w: &[f64],
    observed: &[f64],
    dim: usize,
    steps: usize,
    rng: &mut impl Rng,
) -> Vec<f64> {
    let y = observed.last().is_some_and(|g| *g < 0.0);
    let scale = observed.iter().map(|v| v * v).sum::<f64>().max(1e-24);
    let loss = |x: &[f64]| {
        example_gradient(kind, w, x, y)
            .iter()
            .zip(observed)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / scale
    };
    let mut x: Vec<f64> = (0..dim).map(|_| rng.random_range(-0.5..0.5)).collect();
    let (mut m, mut v, mut g) = (vec![0.0; dim], vec![0.0; dim], vec![0.0; dim]);
    let (b1, b2, h) = (0.9f64, 0.999f64, 1e-6);
    for t in 1..=steps {
        for i in 0..dim {
            let keep = x[i];
            x[i] = keep + h;
            let up = loss(&x);
            x[i] = keep - h;
            let down = loss(&x);
            x[i] = keep;
            g[i] = (up - down) / (2.0 * h);
        }
        // A step that decays over the run: coarse search first, then refinement.
        let lr = 0.1 * (1.0 - t as f64 / (steps as f64 + 1.0));
        for i in 0..dim {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = m[i] / (1.0 - b1.powi(t as i32));
            let vh = v[i] / (1.0 - b2.powi(t as i32));
            x[i] -= lr * mh / (vh.sqrt() + 1e-12);
        }
    }
    x
}

/// The analytic attack on a dense first layer: hidden unit k's weight gradient is
/// `delta_k x` and its bias gradient `delta_k`, so one division gives the record.
pub fn invert_first_layer(observed: &[f64], dim: usize, hidden: usize) -> Vec<f64> {
    let bias = &observed[hidden * dim..hidden * dim + hidden];
    let k = (0..hidden)
        .max_by(|&a, &b| bias[a].abs().total_cmp(&bias[b].abs()))
        .unwrap_or(0);
    observed[k * dim..(k + 1) * dim]
        .iter()
        .map(|v| v / bias[k])
        .collect()
}

/// Clips `g` to L2 norm `clip` and adds Gaussian noise of std `sigma * clip`: one
/// DP-SGD step on one record.
fn dp_step(g: &mut [f64], clip: f64, normal: &rand_distr::Normal<f64>, rng: &mut impl Rng) {
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let scale = if norm > clip { clip / norm } else { 1.0 };
    for v in g.iter_mut() {
        *v = *v * scale + rng.sample(normal);
    }
}

/// `||a - x|| / ||x||`: how far a recovered record is from the real one.
pub fn relative_error(a: &[f64], x: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(x)
        .map(|(p, q)| (p - q) * (p - q))
        .sum::<f64>()
        .sqrt();
    let den = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
    num / den
}

fn summarize(
    setting: String,
    eps: Option<f64>,
    sigma: Option<f64>,
    mut errors: Vec<f64>,
) -> AttackOutcome {
    errors.sort_by(f64::total_cmp);
    let n = errors.len().max(1) as f64;
    AttackOutcome {
        setting,
        epsilon: eps,
        noise_multiplier: sigma,
        median_relative_error: errors.get(errors.len() / 2).copied().unwrap_or(f64::NAN),
        exact_share: errors.iter().filter(|&&e| e < 1e-6).count() as f64 / n,
        close_share: errors.iter().filter(|&&e| e < 0.1).count() as f64 / n,
    }
}

/// Run the attack on records of a tabular file (prepared as the credit task does).
pub fn run_attack<'a>(
    path: &'a Path,
    spec: &'a TabularSpec,
    options: &'a AttackOptions,
) -> BoxFuture<'a, Result<AttackReport, SimError>> {
    Box::pin(async move {
        let table = load_tabular(path, spec)
            .await
            .map_err(|e| SimError::Runtime(e.to_string()))?;
        let dim = table.feature_names.len();
        let rows = LabeledRows::concat(dim, table.silos.iter().map(|s| &s.train));
        if rows.is_empty() {
            return Err(SimError::Options("no training rows to attack".into()));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let picks: Vec<usize> = (0..options.records.min(rows.len()))
            .map(|_| rng.random_range(0..rows.len()))
            .collect();
        // The global model the stores start from: small random weights (round 1).
        let w: Vec<f64> = (0..=dim).map(|_| rng.random_range(-0.1..0.1)).collect();
        let target = Target {
            rows: &rows,
            picks: &picks,
            w: &w,
            dim,
            options,
        };
        let mut outcomes = target.logistic(&mut rng)?;
        outcomes.extend(target.secure_sums(&mut rng)?);
        outcomes.extend(target.mlp(&mut rng)?);
        Ok(AttackReport {
            task: "gradient inversion, logistic regression and MLP".into(),
            features: dim,
            records: picks.len(),
            options: options.clone(),
            outcomes,
        })
    })
}

/// The records under attack and the model their gradients are taken at.
struct Target<'a> {
    rows: &'a LabeledRows,
    picks: &'a [usize],
    w: &'a [f64],
    dim: usize,
    options: &'a AttackOptions,
}

/// DP-SGD's noise for one step on one record at `eps`: (σ, its distribution).
fn one_step_noise(
    eps: f64,
    options: &AttackOptions,
) -> Result<(f64, rand_distr::Normal<f64>), SimError> {
    let sigma = calibrate_noise_multiplier(1.0, 1, eps, options.delta)
        .map_err(|e| SimError::Options(e.to_string()))?;
    let normal = rand_distr::Normal::new(0.0, sigma * options.clip_norm)
        .map_err(|e| SimError::Options(e.to_string()))?;
    Ok((sigma, normal))
}

impl Target<'_> {
    /// The logistic gradient inverted, plain and after one DP-SGD step at each ε.
    fn logistic(&self, rng: &mut ChaCha8Rng) -> Result<Vec<AttackOutcome>, SimError> {
        let plain: Vec<f64> = self
            .picks
            .iter()
            .map(|&i| {
                let (x, y) = self.rows.row(i);
                relative_error(&invert(&gradient(x, y, self.w)), x)
            })
            .collect();
        let mut outcomes = vec![summarize("no protection".into(), None, None, plain)];
        for &eps in &self.options.epsilons {
            // One DP-SGD step on the one record: clip, then noise calibrated to ε.
            let (sigma, normal) = one_step_noise(eps, self.options)?;
            let errors: Vec<f64> = self
                .picks
                .iter()
                .map(|&i| {
                    let (x, y) = self.rows.row(i);
                    let mut g = gradient(x, y, self.w);
                    dp_step(&mut g, self.options.clip_norm, &normal, rng);
                    relative_error(&invert(&g), x)
                })
                .collect();
            let label = format!("DP-SGD, epsilon {eps}");
            outcomes.push(summarize(label, Some(eps), Some(sigma), errors));
        }
        Ok(outcomes)
    }

    /// SecAgg+ rounds over `stores_per_sum` single-record updates. The coordinator
    /// sees each masked input (attacked too: uniform noise, it reveals nothing) and
    /// the sum; the attacker inverts the sum and is scored against the record it
    /// lands closest to (the attacker's best case).
    fn secure_sums(&self, rng: &mut ChaCha8Rng) -> Result<Vec<AttackOutcome>, SimError> {
        let k = self.options.stores_per_sum.max(3);
        let mut masked_errors = Vec::new();
        let mut errors = Vec::new();
        for (round, group) in self.picks.chunks(k).filter(|c| c.len() == k).enumerate() {
            let (masked, sum) = self.secure_round(group, round as u64, rng)?;
            if let Some(masked) = masked {
                masked_errors.push(relative_error(&invert(&masked), self.rows.row(group[0]).0));
            }
            let guess = invert(&sum);
            errors.push(
                group
                    .iter()
                    .map(|&i| relative_error(&guess, self.rows.row(i).0))
                    .fold(f64::INFINITY, f64::min),
            );
        }
        Ok(vec![
            summarize(
                "SecAgg+, one store's masked input".to_string(),
                None,
                None,
                masked_errors,
            ),
            summarize(
                format!("SecAgg+ over {k} stores (the coordinator sees the sum)"),
                None,
                None,
                errors,
            ),
        ])
    }

    /// One SecAgg+ round of `group`'s gradients: what the coordinator saw of the
    /// first store's masked input, decoded, and the unmasked sum.
    fn secure_round(
        &self,
        group: &[usize],
        round: u64,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Option<Vec<f64>>, Vec<f64>), SimError> {
        let (k, dim, seed) = (group.len() as u32, self.dim, self.options.seed ^ round);
        let config = SecAggConfig::for_network(k, dim + 1, seed)
            .map_err(|e| SimError::Options(e.to_string()))?;
        let fp = FixedPoint::for_sum(k, 16.0, 0.0).map_err(|e| SimError::Options(e.to_string()))?;
        let encoded: Vec<Vec<u32>> = group
            .iter()
            .map(|&i| {
                let (x, y) = self.rows.row(i);
                let mut words = vec![0u32; dim + 1];
                fp.encode_into(&gradient(x, y, self.w), &mut words, rng);
                words
            })
            .collect();
        let mut masked_view = Vec::new();
        let (outcome, _) = simulate_round_observed(
            &config,
            &DropoutPlan::default(),
            seed,
            |u, words| words.copy_from_slice(&encoded[u as usize]),
            |m| {
                if m.store == 0 {
                    masked_view = fp.decode(&m.words);
                }
            },
        )
        .map_err(|e| SimError::Runtime(e.to_string()))?;
        let masked = (masked_view.len() == dim + 1).then_some(masked_view);
        Ok((masked, fp.decode(&outcome.sum)))
    }

    /// The MLP: the analytic first-layer inversion, and the optimisation-based deep
    /// leakage attack, with no protection and against DP-SGD steps.
    fn mlp(&self, rng: &mut ChaCha8Rng) -> Result<Vec<AttackOutcome>, SimError> {
        let (dim, hidden) = (self.dim, self.options.mlp_hidden.max(1));
        let kind = ClassifierKind::Mlp { hidden };
        let mlp_w = kind.initial_parameters(dim, self.options.seed);
        let picks = &self.picks[..self.options.mlp_records.min(self.picks.len())];
        let steps = self.options.dlg_steps;
        let mut analytic = Vec::new();
        let mut dlg = Vec::new();
        for &i in picks {
            let (x, y) = self.rows.row(i);
            let g = example_gradient(kind, &mlp_w, x, y);
            analytic.push(relative_error(&invert_first_layer(&g, dim, hidden), x));
            dlg.push(relative_error(
                &deep_leakage(kind, &mlp_w, &g, dim, steps, rng),
                x,
            ));
        }
        let mut outcomes = vec![
            summarize(
                "MLP, no protection: analytic first-layer inversion".into(),
                None,
                None,
                analytic,
            ),
            summarize(
                "MLP, no protection: deep leakage (optimisation)".into(),
                None,
                None,
                dlg,
            ),
        ];
        for &eps in &self.options.epsilons {
            let (sigma, normal) = one_step_noise(eps, self.options)?;
            let errors: Vec<f64> = picks
                .iter()
                .map(|&i| {
                    let (x, y) = self.rows.row(i);
                    let mut g = example_gradient(kind, &mlp_w, x, y);
                    dp_step(&mut g, self.options.clip_norm, &normal, rng);
                    let a = relative_error(&invert_first_layer(&g, dim, hidden), x);
                    let d = relative_error(&deep_leakage(kind, &mlp_w, &g, dim, steps, rng), x);
                    a.min(d)
                })
                .collect();
            let label = format!("MLP, DP-SGD epsilon {eps}: best of both attacks");
            outcomes.push(summarize(label, Some(eps), Some(sigma), errors));
        }
        Ok(outcomes)
    }
}

pub fn render_attack(r: &AttackReport) -> String {
    let mut s = format!(
        "\n{} — {} records, {} features (relative error ||x_hat - x|| / ||x||)\n\n  {:<52} {:>8} {:>14} {:>8} {:>10}\n",
        r.task, r.records, r.features, "setting", "noise", "median error", "exact", "within 10%"
    );
    for o in &r.outcomes {
        s.push_str(&format!(
            "  {:<52} {:>8} {:>14.3e} {:>7.0}% {:>9.0}%\n",
            o.setting,
            o.noise_multiplier.map_or("-".into(), |v| format!("{v:.2}")),
            o.median_relative_error,
            o.exact_share * 100.0,
            o.close_share * 100.0
        ));
    }
    s
}
