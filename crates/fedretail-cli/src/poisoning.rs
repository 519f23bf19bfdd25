//! `fedretail analyze byzantine`: what lying stores do to the shared model, with and
//! without each robust aggregation rule.

use crate::outputs::{emit, Output, TableArgs, TrainArgs};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use fedretail_core::RobustRule;
use fedretail_models::ClassifierKind;
use fedretail_sim::byzantine::{render_byzantine, run_byzantine_on, ByzantineOptions};
use fedretail_sim::byzantine_demand::{
    render_byzantine_demand, run_byzantine_demand, DemandByzantineOptions,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum ModelArg {
    Logistic,
    Mlp,
}

#[derive(Args)]
pub struct ByzantineArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Share of the file's rows held out to score on, stratified by the target.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Stores the rows are dealt into at random.
    #[arg(long, default_value_t = 10)]
    pub stores: usize,
    /// Share of the stores that lie every round (rounded up; under half).
    #[arg(long, default_value_t = 0.2)]
    pub attackers: f64,
    #[arg(long, value_enum, default_value = "logistic")]
    pub model: ModelArg,
    /// trimmed_mean: share of the values dropped at each end, per coordinate.
    #[arg(long, default_value_t = 0.2)]
    pub trim: f64,
    /// norm_bounded: the largest update norm, as a multiple of the round's median.
    #[arg(long, default_value_t = 1.0)]
    pub factor: f64,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub output: Output,
}

pub fn byzantine(rt: &tokio::runtime::Runtime, a: &ByzantineArgs) -> Result<()> {
    let spec = a.table.spec(
        a.test_fraction,
        a.train.train_seed,
        a.train.min_train_rows,
        5,
    );
    let rules = robust_rules(a.trim, a.factor)?;
    let options = ByzantineOptions {
        stores: a.stores,
        attacker_share: a.attackers,
        model: match a.model {
            ModelArg::Logistic => ClassifierKind::Logistic,
            ModelArg::Mlp => ClassifierKind::Mlp {
                hidden: a.train.mlp_hidden.max(1),
            },
        },
        training: a.train.options(),
        rules,
    };
    let report = rt
        .block_on(run_byzantine_on(&a.table.data, &spec, &options))
        .with_context(|| format!("poisoning harness on {}", a.table.data.display()))?;
    let summary = render_byzantine(&report);
    let page = |s: &str| fedretail_sim::analysis_pages::byzantine_page(&report, s);
    emit(&report, summary, page, "byzantine", &a.output)
}

#[derive(Args)]
pub struct ByzantineDemandArgs {
    #[command(flatten)]
    pub source: crate::network::SyntheticArgs,
    /// Share of the stores that lie every round (rounded up; under half).
    #[arg(long, default_value_t = 0.2)]
    pub attackers: f64,
    #[arg(long, default_value_t = 30)]
    pub rounds: u64,
    /// Seed of the pick of liars and of the training.
    #[arg(long, default_value_t = 1)]
    pub train_seed: u64,
    /// trimmed_mean: share of the values dropped at each end, per coordinate.
    #[arg(long, default_value_t = 0.2)]
    pub trim: f64,
    /// norm_bounded: the largest update norm, as a multiple of the round's median.
    #[arg(long, default_value_t = 1.0)]
    pub factor: f64,
    #[command(flatten)]
    pub output: Output,
}

pub fn byzantine_demand(rt: &tokio::runtime::Runtime, a: &ByzantineDemandArgs) -> Result<()> {
    let dir = a.source.dir()?;
    let rules = robust_rules(a.trim, a.factor)?;
    let options = DemandByzantineOptions {
        attacker_share: a.attackers,
        rounds: a.rounds,
        seed: a.train_seed,
        rules,
        ..DemandByzantineOptions::new(dir.clone())
    };
    let bar = crate::progress::spinner();
    bar.set_message("poisoning harness: preparing the stores, then training each attack");
    let report = rt
        .block_on(run_byzantine_demand(&options))
        .with_context(|| format!("poisoning harness on {}", dir.display()))?;
    bar.finish_and_clear();
    let summary = render_byzantine_demand(&report);
    let page = |s: &str| fedretail_sim::analysis_pages::byzantine_demand_page(&report, s);
    emit(&report, summary, page, "byzantine-demand", &a.output)
}

/// The robust rules measured, with the command's trim and factor, each checked.
fn robust_rules(trim: f64, factor: f64) -> Result<Vec<RobustRule>> {
    let rules = vec![
        RobustRule::Median,
        RobustRule::TrimmedMean { trim },
        RobustRule::NormBounded { factor },
    ];
    for r in &rules {
        r.check()?;
    }
    Ok(rules)
}
