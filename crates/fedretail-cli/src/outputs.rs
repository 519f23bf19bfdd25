//! What several `analyze` commands share: training flags, and where a report goes
//! (summary, JSON, HTML).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use fedretail_coordinator::ServerOptimizerKind;
use fedretail_data::TabularSpec;
use fedretail_report::Page;
use fedretail_sim::ClassificationOptions;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub struct Output {
    /// Write the full report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the report JSON to stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Write the HTML report (charts in <name>-figures/ beside it) here
    /// [default: fedretail-data/reports/<command>.html].
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
}

#[derive(Args)]
pub struct TrainArgs {
    /// FedAvg rounds (epochs for the local and centralized references).
    #[arg(long, default_value_t = 20)]
    pub rounds: u64,
    /// Epochs of local SGD each party runs per FedAvg round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub local_epochs: u32,
    /// At least this many mini-batch steps per party per round: a tiny party runs more
    /// epochs (0: every party runs --local-epochs).
    #[arg(long, default_value_t = 40)]
    pub min_local_steps: u32,
    /// FedProx: pull each party's local steps toward the global model with this
    /// strength (0 is FedAvg); helps when parties differ and run many local epochs.
    #[arg(long, default_value_t = 0.0)]
    pub proximal_mu: f64,
    #[arg(long, default_value_t = 0.1)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: u32,
    /// L2 penalty per training example on the weights.
    #[arg(long, default_value_t = 1e-4)]
    pub l2: f64,
    /// Hidden units of the MLP trained beside the logistic regression (0: none).
    #[arg(long, default_value_t = 8)]
    pub mlp_hidden: usize,
    /// Parties with fewer training rows are skipped (and listed).
    #[arg(long, default_value_t = 20)]
    pub min_train_rows: usize,
    /// Seeds the train/test split, the initial MLP and the SGD shuffles.
    #[arg(long, default_value_t = 7)]
    pub train_seed: u64,
    /// Customer-level DP: every party runs DP-SGD calibrated to this epsilon for its whole run.
    #[arg(long)]
    pub dp_epsilon: Option<f64>,
    /// Delta of the customer-level DP guarantee.
    #[arg(long, default_value_t = 1e-5)]
    pub dp_delta: f64,
    /// Per-example gradient clipping norm of DP-SGD.
    #[arg(long, default_value_t = 1.0)]
    pub dp_clip: f64,
    /// What the coordinator does with FedAvg's mean delta (Reddi et al. 2021).
    #[arg(long, value_enum, default_value = "none")]
    pub server_optimizer: ServerOptimizerArg,
    /// Multiplies the server optimizer's step.
    #[arg(long, default_value_t = 1.0)]
    pub server_learning_rate: f64,
}

/// FedAvg's server step.
#[derive(Clone, Copy, ValueEnum)]
pub enum ServerOptimizerArg {
    /// Plain FedAvg.
    None,
    /// FedAvgM (server momentum 0.9).
    Momentum,
    /// FedAdagrad (tau 1e-3).
    Adagrad,
    /// FedAdam (beta1 0.9, beta2 0.99, tau 1e-3).
    Adam,
    /// FedYogi (beta1 0.9, beta2 0.99, tau 1e-3).
    Yogi,
}

impl From<ServerOptimizerArg> for ServerOptimizerKind {
    fn from(a: ServerOptimizerArg) -> Self {
        match a {
            ServerOptimizerArg::None => ServerOptimizerKind::None,
            ServerOptimizerArg::Momentum => ServerOptimizerKind::Momentum,
            ServerOptimizerArg::Adagrad => ServerOptimizerKind::Adagrad,
            ServerOptimizerArg::Adam => ServerOptimizerKind::Adam,
            ServerOptimizerArg::Yogi => ServerOptimizerKind::Yogi,
        }
    }
}

impl TrainArgs {
    pub(crate) fn options(&self) -> ClassificationOptions {
        ClassificationOptions {
            rounds: self.rounds,
            local_epochs: self.local_epochs,
            min_local_steps: self.min_local_steps,
            proximal_mu: self.proximal_mu,
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            l2: self.l2,
            mlp_hidden: self.mlp_hidden,
            min_train_rows: self.min_train_rows,
            seed: self.train_seed,
            customer_dp: self
                .dp_epsilon
                .map(|epsilon| fedretail_sim::classification::CustomerDp {
                    epsilon,
                    delta: self.dp_delta,
                    clip_norm: self.dp_clip,
                }),
            server_optimizer: self.server_optimizer.into(),
            server_learning_rate: self.server_learning_rate,
            ..ClassificationOptions::default()
        }
    }
}

/// Prints the summary (or the JSON), writes the JSON report when asked and always the
/// HTML one, `page` drawing it with the summary at its end.
pub(crate) fn emit<R: Serialize>(
    report: &R,
    summary: String,
    page: impl FnOnce(&str) -> Page,
    name: &str,
    output: &Output,
) -> Result<()> {
    let html = output
        .html
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("fedretail-data/reports/{name}.html")));
    crate::watch::write_page(&page(&summary), &html)?;
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = &output.report {
        std::fs::write(path, &json)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    if output.json {
        println!("{json}");
    } else {
        print!("{summary}");
        if let Some(path) = &output.report {
            println!("  report: {}", path.display());
        }
    }
    Ok(())
}

/// A tabular file with a binary target, split into silos by a column (`analyze credit`,
/// `attack`, `byzantine`).
#[derive(Args)]
pub struct TableArgs {
    /// Tabular file (CSV or Parquet) with a binary target column, e.g.
    /// ../shared/data/credit_data.csv.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "Status")]
    pub target: String,
    /// Target value that counts as positive (the other must be the only other value).
    #[arg(long, default_value = "bad")]
    pub positive: String,
    /// Column whose value names the silo (a lender, a store), or `random:N` for N
    /// silos of (nearly) equal size dealt at random (many small parties).
    #[arg(long, default_value = "Job")]
    pub split_by: String,
}

impl TableArgs {
    /// How the file is read into silos: `test_fraction` of each held out (stratified),
    /// silos under `min_train_rows` skipped, categories reported from `min_category_rows`.
    pub fn spec(
        &self,
        test_fraction: f64,
        seed: u64,
        min_train_rows: usize,
        min_category_rows: u64,
    ) -> TabularSpec {
        TabularSpec {
            target: self.target.clone(),
            positive: self.positive.clone(),
            split_by: self.split_by.clone(),
            test_fraction,
            seed,
            min_train_rows,
            min_category_rows,
            max_categories: 50,
        }
    }
}
