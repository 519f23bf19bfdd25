//! The poisoning harness on demand forecasting: a share of a network's stores lie in
//! every round of a FedAvg demand job, and the model the federation ends with is
//! scored (WAPE) on the honest stores' held-out days, under the plain weighted mean and
//! under each robust rule. Like [`crate::byzantine`], every run goes through the
//! coordinator's own round machine and the liars are task wrappers, so they send what
//! a modified agent could send and nothing more.

use crate::byzantine::{default_rules, Attack, Liars};
use crate::dp_demand::wapes;
use crate::prepare::{prepare_network, PreparedStore};
use crate::SimError;
use fedretail_coordinator::FedAvgSettings;
use fedretail_core::{LocalBoxFuture, ModelParameters, RobustRule, SamplingConfig};
use fedretail_data::DemandSpec;
use fedretail_models::demand::{DemandDataset, DemandOptions};
use fedretail_models::{demand_layout, DemandTask, LocalTask};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A lying store's sales are inflated this many times under the data attack.
const INFLATION: f64 = 10.0;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemandByzantineOptions {
    pub data_dir: PathBuf,
    /// Share of the stores that lie (rounded up; under half).
    pub attacker_share: f64,
    pub rounds: u64,
    pub seed: u64,
    /// The rules measured beside the plain mean.
    pub rules: Vec<RobustRule>,
}

impl DemandByzantineOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        DemandByzantineOptions {
            data_dir,
            attacker_share: 0.2,
            rounds: 30,
            seed: 1,
            rules: default_rules(),
        }
    }
}

/// One attack under one aggregation rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemandByzantineCell {
    pub attack: Attack,
    /// `mean` or the robust rule's name.
    pub aggregation: String,
    /// Pooled WAPE (fraction) on the honest stores' held-out days; None if training
    /// failed.
    pub pooled_wape: Option<f64>,
    pub median_wape: Option<f64>,
    /// Pooled WAPE above the clean run with the plain mean.
    pub worse_than_clean: Option<f64>,
    pub failure: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DemandByzantineReport {
    pub options: DemandByzantineOptions,
    pub stores: usize,
    pub attackers: Vec<String>,
    pub clean_wape: Option<f64>,
    pub cells: Vec<DemandByzantineCell>,
    pub wall_seconds: f64,
}

/// Prepares the network's stores, picks the liars at random and trains under every
/// attack and aggregation rule.
pub fn run_byzantine_demand(
    options: &DemandByzantineOptions,
) -> LocalBoxFuture<'_, Result<DemandByzantineReport, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let spec = DemandSpec::default();
        let (mut stores, _) = prepare_network(&options.data_dir, &spec, 2, &|_, _, _| {}).await?;
        let liars = ((stores.len() as f64) * options.attacker_share).ceil() as usize;
        if stores.len() < 3 || liars >= stores.len().div_ceil(2) {
            return Err(SimError::Options(format!(
                "{liars} of {} stores lying is no minority",
                stores.len()
            )));
        }
        stores.shuffle(&mut ChaCha8Rng::seed_from_u64(options.seed));
        let aggregations: Vec<Option<RobustRule>> = std::iter::once(None)
            .chain(options.rules.iter().copied().map(Some))
            .collect();
        let mut cells = Vec::new();
        for attack in Attack::ALL {
            for rule in &aggregations {
                cells.push(cell(&stores, liars, attack, *rule, options));
            }
        }
        let clean_wape = cells.first().and_then(|c| c.pooled_wape);
        for c in &mut cells {
            c.worse_than_clean = clean_wape.zip(c.pooled_wape).map(|(a, b)| b - a);
        }
        Ok(DemandByzantineReport {
            options: options.clone(),
            stores: stores.len(),
            attackers: stores[..liars].iter().map(|s| s.store_id.clone()).collect(),
            clean_wape,
            cells,
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    })
}

/// Trains under one attack and rule; scores on the honest stores (all but the first
/// `liars`).
fn cell(
    stores: &[PreparedStore],
    liars: usize,
    attack: Attack,
    rule: Option<RobustRule>,
    options: &DemandByzantineOptions,
) -> DemandByzantineCell {
    let outcome = train(stores, liars, attack, rule, options);
    let scores = outcome
        .as_ref()
        .ok()
        .map(|w| wapes(&stores[liars..], &|_| w.clone()));
    DemandByzantineCell {
        attack,
        aggregation: rule.map_or("mean", |r| r.name()).to_string(),
        pooled_wape: scores.map(|s| s.1),
        median_wape: scores.map(|s| s.0),
        worse_than_clean: None,
        failure: outcome.err(),
    }
}

/// The store's honest task, or under the data attack one on its sales inflated.
fn store_task(data: &Arc<DemandDataset>, inflate: bool) -> Arc<dyn LocalTask> {
    let data = if inflate {
        Arc::new(DemandDataset {
            train: data.train.with_units_scaled(INFLATION),
            ..(**data).clone()
        })
    } else {
        data.clone()
    };
    Arc::new(DemandTask::new(data, DemandOptions::default()))
}

/// FedAvg over the stores (the demo's settings) with the first `liars` lying.
fn train(
    stores: &[PreparedStore],
    liars: usize,
    attack: Attack,
    rule: Option<RobustRule>,
    options: &DemandByzantineOptions,
) -> Result<Vec<f64>, String> {
    let tasks: Vec<(String, Arc<dyn LocalTask>)> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let inflate = i < liars && attack == Attack::LabelFlip;
            (s.store_id.clone(), store_task(&s.dataset, inflate))
        })
        .collect();
    let sampling = SamplingConfig {
        fraction: 1.0,
        min_stores: 1,
        seed: options.seed,
    };
    let l2 = fedretail_coordinator::JobConfig::default().l2 * 1e-4;
    let mut strategy = FedAvgSettings::default()
        .strategy(sampling, l2)
        .map_err(|e| e.to_string())?;
    let layout = demand_layout();
    let init = ModelParameters::from_values(layout.clone(), vec![0.0; layout.len()])
        .map_err(|e| e.to_string())?;
    let liars = Liars {
        count: liars,
        attack,
        rule,
    };
    liars.train(tasks, strategy.as_mut(), init, options.rounds)
}

/// The table: pooled WAPE per attack (rows) and aggregation (columns), with how much
/// worse than the clean run.
pub fn render_byzantine_demand(r: &DemandByzantineReport) -> String {
    let mut s = String::new();
    let o = &r.options;
    let pct = |v: f64| format!("{:.1}%", 100.0 * v);
    let _ = writeln!(
        s,
        "Poisoning, demand: {} of {} stores lie every round; FedAvg, {} rounds; pooled WAPE on the honest stores' held-out days, and (in brackets) points above the clean run with the plain mean ({}):",
        r.attackers.len(),
        r.stores,
        o.rounds,
        r.clean_wape.map_or("-".into(), pct),
    );
    let names: Vec<String> = std::iter::once("mean".to_string())
        .chain(o.rules.iter().map(|r| r.name().to_string()))
        .collect();
    let _ = write!(s, "\n  {:<12}", "attack");
    for n in &names {
        let _ = write!(s, " {n:>18}");
    }
    s.push('\n');
    for attack in Attack::ALL {
        let _ = write!(s, "  {:<12}", attack.name());
        for n in &names {
            let _ = write!(s, " {:>18}", cell_text(r, attack, n));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n  sign_flip: the honest update reversed x5; scaled: x50; label_flip: trained on its sales inflated x{INFLATION}; huge_count: claims the coordinator's row cap and reverses its update. wall time {:.1} s",
        r.wall_seconds
    );
    s
}

/// "31.2% (+0.4)" for one cell, or "failed".
pub fn cell_text(r: &DemandByzantineReport, attack: Attack, aggregation: &str) -> String {
    let cell = r
        .cells
        .iter()
        .find(|c| c.attack == attack && c.aggregation == aggregation);
    match cell.map(|c| (c.pooled_wape, c.worse_than_clean)) {
        // A forecast off by more than ten times the sales has diverged.
        Some((Some(w), _)) if w > 10.0 => ">1000%".into(),
        Some((Some(w), Some(d))) => format!("{:.1}% ({:+.1})", 100.0 * w, 100.0 * d),
        Some((Some(w), None)) => format!("{:.1}%", 100.0 * w),
        _ => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a small generated network, the liars move the plain mean well away from the
    /// clean model and the median keeps it close.
    #[test]
    fn liars_wreck_the_mean_forecast_and_the_median_holds() {
        let dir = tempfile::tempdir().unwrap();
        let config = fedretail_synth::NetworkConfig {
            stores: 10,
            days: 150,
            seed: 3,
            ..Default::default()
        };
        fedretail_synth::generate_network(&config, dir.path()).unwrap();
        let options = DemandByzantineOptions {
            rounds: 10,
            rules: vec![RobustRule::Median],
            ..DemandByzantineOptions::new(dir.path().to_path_buf())
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(run_byzantine_demand(&options)).unwrap();
        assert_eq!(r.attackers.len(), 2, "20 % of 10 stores");
        let wape = |a: Attack, g: &str| {
            r.cells
                .iter()
                .find(|c| c.attack == a && c.aggregation == g)
                .and_then(|c| c.pooled_wape)
                .unwrap_or(f64::INFINITY)
        };
        let clean = r.clean_wape.unwrap();
        let table = render_byzantine_demand(&r);
        assert!(wape(Attack::HugeCount, "mean") > clean + 0.1, "{table}");
        for a in Attack::ALL {
            assert!(wape(a, "median") < clean + 0.05, "{table}");
        }
    }
}
