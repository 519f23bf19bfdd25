use crate::prepare::SkippedStore;
use fedretail_coordinator::RoundRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One store's forecast accuracy on its held-out days, under each model.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct StoreReport {
    pub store_id: String,
    pub business_type: String,
    pub size_band: String,
    pub units_per_day: f64,
    pub history_days: u32,
    pub train_rows: u64,
    pub test_rows: u64,
    pub wape_seasonal_naive: Option<f64>,
    pub wape_local: Option<f64>,
    pub wape_federated: Option<f64>,
    pub wape_centralized: Option<f64>,
    /// A model of the store's declared business type alone, fitted on the pooled rows
    /// of that type's stores: clustering by declared metadata into separate models, at
    /// best (a yardstick of this harness; the network model has per-type blocks).
    pub wape_centralized_by_type: Option<f64>,
    /// On a synthetic network: the WAPE of the generator's expected demand on the
    /// held-out days, what is left being the days' own noise: the floor of any forecast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wape_expected: Option<f64>,
    /// The federated model fine-tuned at the store on its own rows.
    pub wape_personalized: Option<f64>,
    /// The mean of the federated, personalized and local forecasts.
    pub wape_ensemble: Option<f64>,
    pub mase_local: Option<f64>,
    pub mase_federated: Option<f64>,
    pub mase_centralized: Option<f64>,
    pub mase_personalized: Option<f64>,
    pub mase_seasonal_naive: Option<f64>,
    /// The forecaster the store keeps: the best on its validation days (the days just
    /// before the held-out ones), so the held-out figures below are honest.
    pub forecast_model: Option<String>,
    /// The same pick in the network's words: local, global, personalized, naive or
    /// ensemble.
    pub chosen: Option<String>,
    /// The chosen forecast's WAPE on the held-out days (equal to `wape_forecast`).
    pub wape_chosen: Option<f64>,
    /// The chosen forecast against the store's own (local-only) one on the held-out
    /// days: `better` or `worse` where the absolute error it saves per day is beyond
    /// [`fedretail_models::metrics::CLEARLY_BEYOND_SE`] standard errors, else `same` (within the days' noise).
    pub kept_vs_local: Option<String>,
    /// With a model per group of stores: the group (leaf of the tree) the store joined,
    /// and the depth of the shared model it kept (0: the network's; 1 or more: its
    /// group's), chosen on its validation days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_depth: Option<u32>,
    /// On a synthetic network with office-district stores: `office` or `other`, from
    /// the generator's record (the truth a grouped model should find; never an input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub district: Option<String>,
    /// The kept forecaster's held-out WAPE, MASE and relative bias.
    pub wape_forecast: Option<f64>,
    pub mase_forecast: Option<f64>,
    pub bias_forecast: Option<f64>,
}

/// Medians over a group of stores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub stores: usize,
    pub median_wape_seasonal_naive: Option<f64>,
    pub median_wape_local: Option<f64>,
    pub median_wape_federated: Option<f64>,
    pub median_wape_centralized: Option<f64>,
    pub median_wape_personalized: Option<f64>,
    /// The forecast each store keeps (picked on its validation days).
    pub median_wape_forecast: Option<f64>,
    pub median_mase_forecast: Option<f64>,
    pub median_bias_forecast: Option<f64>,
    /// On a synthetic network: the floor (`wape_expected`), and how far above it the
    /// store's own and its kept forecasts are (median WAPE points): what any forecaster
    /// could still win.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_wape_expected: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_local_above_expected: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_forecast_above_expected: Option<f64>,
    /// The gain over its own model a store would get from the floor itself, the median of
    /// (own WAPE - floor) / own WAPE: the most `median_gain_over_local` could be but by luck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_gain_at_floor: Option<f64>,
    /// Stores where even the floor has a lower held-out WAPE than the store's own model:
    /// the most stores any forecaster could beat it at, but by luck.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_beats_local: Option<usize>,
    /// What joining gains a store: the median of (own WAPE - kept WAPE) / own WAPE.
    pub median_gain_over_local: Option<f64>,
    /// Stores whose kept forecast has a lower held-out WAPE than their local-only one.
    pub forecast_beats_local: usize,
    /// Stores whose kept forecast has a held-out WAPE no worse than seasonal naive.
    pub forecast_not_worse_than_naive: usize,
    /// Stores whose kept forecast is clearly better / clearly worse than their own
    /// (`kept_vs_local`); the rest are within the noise of their held-out days.
    pub forecast_clearly_better_than_local: usize,
    pub forecast_same_as_local: usize,
    pub forecast_clearly_worse_than_local: usize,
    /// Stores whose federated WAPE is below their local-only WAPE.
    pub federated_beats_local: usize,
    /// Stores whose personalised WAPE is below their local-only WAPE.
    pub personalized_beats_local: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemandReport {
    pub task: String,
    pub strategy: String,
    pub rounds: usize,
    pub holdout_days: u32,
    pub data_dir: String,
    pub wall_seconds: f64,
    pub prepare_seconds: f64,
    pub federated_seconds: f64,
    pub baseline_seconds: f64,
    /// Protobuf payload bytes sent by stores (up) and by the coordinator (down).
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub stores: Vec<StoreReport>,
    pub overall: GroupSummary,
    pub by_business_type: Vec<GroupSummary>,
    pub by_size_band: Vec<GroupSummary>,
    pub by_history_band: Vec<GroupSummary>,
    /// The stores with the least data: small (under 50 units a day) and under 6 months
    /// of history, the ones the federation is most for.
    pub small_and_young: GroupSummary,
    /// By district (office or other) on a synthetic network that has office stores.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_district: Vec<GroupSummary>,
    pub skipped_stores: Vec<SkippedStore>,
    pub missing_evaluations: Vec<String>,
    pub round_history: Vec<RoundRecord>,
    /// The federated model's weights by feature.
    pub model: BTreeMap<String, f64>,
    /// Largest |federated - centralized| weight (0 when the exact solver converged).
    pub max_weight_gap_to_centralized: f64,
    /// Secure aggregation and differential privacy of the job, when configured.
    pub privacy: Option<fedretail_coordinator::PrivacyOutcome>,
    /// Why training ended (all rounds, or the privacy budget).
    pub status: String,
    /// The process's peak resident memory, where the caller could read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians and counts over `stores`, named `group`.
pub fn summarize(group: &str, stores: &[&StoreReport]) -> GroupSummary {
    let col =
        |f: fn(&StoreReport) -> Option<f64>| median(stores.iter().filter_map(|s| f(s)).collect());
    GroupSummary {
        group: group.to_string(),
        stores: stores.len(),
        median_wape_seasonal_naive: col(|s| s.wape_seasonal_naive),
        median_wape_local: col(|s| s.wape_local),
        median_wape_federated: col(|s| s.wape_federated),
        median_wape_centralized: col(|s| s.wape_centralized),
        median_wape_personalized: col(|s| s.wape_personalized),
        median_wape_forecast: col(|s| s.wape_forecast),
        median_mase_forecast: col(|s| s.mase_forecast),
        median_bias_forecast: col(|s| s.bias_forecast),
        median_wape_expected: col(|s| s.wape_expected),
        median_local_above_expected: col(|s| Some(s.wape_local? - s.wape_expected?)),
        median_forecast_above_expected: col(|s| Some(s.wape_forecast? - s.wape_expected?)),
        median_gain_at_floor: col(|s| match (s.wape_local, s.wape_expected) {
            (Some(own), Some(floor)) if own > 0.0 => Some((own - floor) / own),
            _ => None,
        }),
        median_gain_over_local: col(|s| match (s.wape_local, s.wape_forecast) {
            (Some(own), Some(kept)) if own > 0.0 => Some((own - kept) / own),
            _ => None,
        }),
        forecast_beats_local: count(stores, |s| (s.wape_forecast, s.wape_local), |f, l| f < l),
        forecast_not_worse_than_naive: count(
            stores,
            |s| (s.wape_forecast, s.wape_seasonal_naive),
            |f, n| f <= n,
        ),
        forecast_clearly_better_than_local: verdicts(stores, "better"),
        forecast_same_as_local: verdicts(stores, "same"),
        forecast_clearly_worse_than_local: verdicts(stores, "worse"),
        federated_beats_local: count(stores, |s| (s.wape_federated, s.wape_local), |f, l| f < l),
        expected_beats_local: stores
            .iter()
            .any(|s| s.wape_expected.is_some())
            .then(|| count(stores, |s| (s.wape_expected, s.wape_local), |e, l| e < l)),
        personalized_beats_local: count(
            stores,
            |s| (s.wape_personalized, s.wape_local),
            |p, l| p < l,
        ),
    }
}

/// Stores whose `kept_vs_local` is `verdict`.
fn verdicts(stores: &[&StoreReport], verdict: &str) -> usize {
    stores
        .iter()
        .filter(|s| s.kept_vs_local.as_deref() == Some(verdict))
        .count()
}

/// Stores with both figures of `pair` where `holds`.
fn count(
    stores: &[&StoreReport],
    pair: fn(&StoreReport) -> (Option<f64>, Option<f64>),
    holds: fn(f64, f64) -> bool,
) -> usize {
    stores
        .iter()
        .filter(|s| matches!(pair(s), (Some(a), Some(b)) if holds(a, b)))
        .count()
}

pub(crate) fn group_by(
    stores: &[StoreReport],
    key: fn(&StoreReport) -> &str,
    order: &[&str],
) -> Vec<GroupSummary> {
    let mut groups: BTreeMap<String, Vec<&StoreReport>> = BTreeMap::new();
    for s in stores {
        groups.entry(key(s).to_string()).or_default().push(s);
    }
    let mut out: Vec<GroupSummary> = groups.iter().map(|(g, v)| summarize(g, v)).collect();
    out.sort_by_key(|g| {
        order
            .iter()
            .position(|o| *o == g.group)
            .unwrap_or(usize::MAX)
    });
    out
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn signed_pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:+.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// A readable end-of-run summary.
/// One line on what protected the updates and what the job spent.
pub fn privacy_line(p: &fedretail_coordinator::PrivacyOutcome) -> String {
    use fedretail_coordinator::NoiseKind;
    let secure = if p.secure_aggregation {
        "SecAgg+ (the coordinator saw only sums)"
    } else {
        "no secure aggregation"
    };
    let clip = p.clip.map(|c| format!(", clip {c}")).unwrap_or_default();
    let noise = match (p.noise, p.noise_multiplier) {
        (NoiseKind::None, _) | (_, None) => "no noise".to_string(),
        (kind, Some(z)) => format!("{kind:?} Gaussian noise, multiplier {z}").to_lowercase(),
    };
    let spent = match (p.epsilon_spent, p.budget_epsilon) {
        (Some(e), Some(b)) => format!("; epsilon spent {e:.3} of {b} at delta {:e}", p.delta),
        (Some(e), None) => format!(
            "; epsilon spent {e:.3} at delta {:e} (no budget set)",
            p.delta
        ),
        _ => String::new(),
    };
    format!("  privacy: {secure}{clip}, {noise}{spent}\n")
}

/// How many stores kept each forecaster (picked on their validation days).
fn kept_forecasts_line(stores: &[StoreReport]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in stores {
        if let Some(m) = &s.forecast_model {
            *counts.entry(m.as_str()).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return String::new();
    }
    let kept: Vec<String> = counts.iter().map(|(m, n)| format!("{m} {n}")).collect();
    format!(
        "  forecast each store keeps (federated unless another beat it on the validation days by more than one standard error; scored above on the held-out days): {}\n",
        kept.join(", ")
    )
}

/// What joining did for the stores, in words, from their kept-vs-own verdicts.
fn verdict_line(all: &GroupSummary, holdout_days: u32) -> String {
    let judged = all.forecast_clearly_better_than_local
        + all.forecast_same_as_local
        + all.forecast_clearly_worse_than_local;
    if judged == 0 {
        return String::new();
    }
    format!(
        "  joining made the forecast clearly better at {} of {judged} stores and clearly worse at {}; at the other {} the difference is within the noise of their {holdout_days} held-out days\n",
        all.forecast_clearly_better_than_local,
        all.forecast_clearly_worse_than_local,
        all.forecast_same_as_local
    )
}

/// On a synthetic network: how far each band's own and kept forecasts are above the
/// generator's expected demand, the most any forecaster could still win.
fn floor_line(bands: &[&GroupSummary], all: &GroupSummary) -> String {
    let (Some(floor), Some(beats)) = (all.median_wape_expected, all.expected_beats_local) else {
        return String::new();
    };
    let points = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.1}", x * 100.0));
    let per_band: Vec<String> = bands
        .iter()
        .filter(|g| g.median_local_above_expected.is_some())
        .map(|g| {
            format!(
                "{} {} -> {} (gain at the floor {})",
                g.group,
                points(g.median_local_above_expected),
                points(g.median_forecast_above_expected),
                signed_pct(g.median_gain_at_floor)
            )
        })
        .collect();
    format!(
        "  the generator's expected demand (a floor: only the days' own noise is left) has median WAPE {} and beats the store's own model at {} of {} stores; WAPE points above it, own model -> kept forecast (medians): {}\n",
        pct(Some(floor)),
        beats,
        all.stores,
        per_band.join("; ")
    )
}

/// A separate model per declared business type against the network's one model.
fn by_type_line(stores: &[StoreReport]) -> String {
    let pairs: Vec<(f64, f64)> = stores
        .iter()
        .filter_map(|s| s.wape_centralized_by_type.zip(s.wape_centralized))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    let lower = pairs.iter().filter(|(t, c)| t < c).count();
    format!(
        "  a separate model per business type (each fitted on its type's pooled rows, in this harness only): median WAPE {} against {} for the one network model (centralized); lower at {lower} of {} stores\n",
        pct(median(pairs.iter().map(|p| p.0).collect())),
        pct(median(pairs.iter().map(|p| p.1).collect())),
        pairs.len()
    )
}

/// With a model per group: how many stores joined each group, and how many kept their
/// group's model rather than the network's.
fn groups_line(stores: &[StoreReport]) -> String {
    let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
    for g in stores.iter().filter_map(|s| s.group) {
        *sizes.entry(g).or_default() += 1;
    }
    if sizes.is_empty() {
        return String::new();
    }
    let kept = stores.iter().filter(|s| s.group_depth > Some(0)).count();
    let sizes: Vec<String> = sizes.iter().map(|(g, n)| format!("{g}: {n}")).collect();
    format!(
        "  groups found from the stores' data (stores per group): {}; {kept} of {} stores kept their group's model (it beat the network's on their validation days by more than one standard error)\n",
        sizes.join(", "),
        stores.len()
    )
}

pub fn render_summary(r: &DemandReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Demand forecasting, {} stores, {} rounds of {}; held-out {} days; WAPE on them (lower is better), medians; kept: the forecaster each store picked on its validation days; gain: what joining gains a store, the median of (own - kept) / own; kept vs own: stores where kept is clearly better / within the noise / clearly worse than own (the error it saves per held-out day, beyond two standard errors):",
        r.stores.len(),
        r.rounds,
        r.strategy,
        r.holdout_days
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  {:<21} {:>6} {:>8} {:>8} {:>10} {:>12} {:>13} {:>8} {:>8} {:>11} {:>12} {:>13} {:>13} {:>12}",
        "group",
        "stores",
        "naive",
        "local",
        "federated",
        "centralized",
        "personalized",
        "kept",
        "gain",
        "kept bias",
        "fed < local",
        "kept < local",
        "kept <= naive",
        "kept vs own"
    );
    for g in &r.by_business_type {
        s.push_str(&group_line(g));
    }
    s.push('\n');
    for g in &r.by_size_band {
        s.push_str(&group_line(g));
    }
    s.push('\n');
    let last = [&r.small_and_young, &r.overall];
    for g in r.by_history_band.iter().chain(last) {
        s.push_str(&group_line(g));
    }
    if !r.by_district.is_empty() {
        s.push('\n');
        for g in &r.by_district {
            s.push_str(&group_line(g));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  traffic: {} up, {} down ({} per store per round); wall time {:.1} s (features {:.1} s, federated {:.1} s, baselines {:.1} s)",
        bytes(r.bytes_up),
        bytes(r.bytes_down),
        bytes(((r.bytes_up + r.bytes_down) as f64 / (r.stores.len().max(1) * r.rounds.max(1)) as f64) as u64),
        r.wall_seconds,
        r.prepare_seconds,
        r.federated_seconds,
        r.baseline_seconds
    );
    let grouped = r.stores.iter().any(|s| s.group.is_some());
    let _ = writeln!(
        s,
        "  {}: largest weight difference {:.2e}",
        if grouped {
            "each group's model vs the centralized fit of its stores"
        } else {
            "federated vs centralized"
        },
        r.max_weight_gap_to_centralized
    );
    s.push_str(&by_type_line(&r.stores));
    s.push_str(&groups_line(&r.stores));
    s.push_str(&kept_forecasts_line(&r.stores));
    s.push_str(&verdict_line(&r.overall, r.holdout_days));
    let bands: Vec<&GroupSummary> = (r.by_size_band.iter().chain(&r.by_history_band))
        .chain(std::iter::once(&r.small_and_young))
        .collect();
    s.push_str(&floor_line(&bands, &r.overall));
    if let Some(p) = &r.privacy {
        s.push_str(&privacy_line(p));
        if let Some(reason) = &p.stopped_by_budget {
            let _ = writeln!(s, "  training stopped early: {reason}");
        }
    }
    if !r.skipped_stores.is_empty() {
        let _ = writeln!(s, "  skipped {} stores:", r.skipped_stores.len());
        for k in &r.skipped_stores {
            let _ = writeln!(s, "    {}: {}", k.store_id, k.reason);
        }
    }
    if !r.missing_evaluations.is_empty() {
        let _ = writeln!(
            s,
            "  no evaluation from: {}",
            r.missing_evaluations.join(", ")
        );
    }
    s
}

fn group_line(g: &GroupSummary) -> String {
    format!(
        "  {:<21} {:>6} {:>8} {:>8} {:>10} {:>12} {:>13} {:>8} {:>8} {:>11} {:>12} {:>13} {:>13} {:>12}\n",
        g.group,
        g.stores,
        pct(g.median_wape_seasonal_naive),
        pct(g.median_wape_local),
        pct(g.median_wape_federated),
        pct(g.median_wape_centralized),
        pct(g.median_wape_personalized),
        pct(g.median_wape_forecast),
        signed_pct(g.median_gain_over_local),
        signed_pct(g.median_bias_forecast),
        format!("{}/{}", g.federated_beats_local, g.stores),
        format!("{}/{}", g.forecast_beats_local, g.stores),
        format!("{}/{}", g.forecast_not_worse_than_naive, g.stores),
        g.kept_vs_own("/")
    )
}

impl GroupSummary {
    /// Stores whose kept forecast is clearly better, the same, clearly worse than own.
    pub fn kept_vs_own(&self, separator: &str) -> String {
        [
            self.forecast_clearly_better_than_local,
            self.forecast_same_as_local,
            self.forecast_clearly_worse_than_local,
        ]
        .map(|n| n.to_string())
        .join(separator)
    }
}
