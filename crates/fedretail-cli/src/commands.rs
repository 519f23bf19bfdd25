use crate::analyze::DemoTask;
use crate::network::{generate_into, runtime, NetworkArgs, SyntheticArgs};
use crate::progress::DemoProgress;
use crate::watch;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use fedretail_coordinator::{Dashboard, JobConfig, StrategyKind};
use fedretail_data::{load_demand_dataset, DemandSpec, StoreSource};
use fedretail_sim::{
    demand_page, read_backtests, render_summary, run_demo, DemoEvent, DemoOptions, Wiring,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    /// Exact federated Newton: sums gradients and Hessians; equals the centralized fit.
    Newton,
    /// Federated averaging of local SGD epochs, weighted by training rows.
    Fedavg,
}

impl From<StrategyArg> for StrategyKind {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Newton => StrategyKind::Newton,
            StrategyArg::Fedavg => StrategyKind::Fedavg,
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Directory to write (one sub-directory per store).
    #[arg(long, short, default_value = "fedretail-data/network")]
    pub out: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let t = std::time::Instant::now();
    let summary = generate_into(&args.network, &args.out)?;
    let mut by_type = std::collections::BTreeMap::new();
    for s in &summary.stores {
        *by_type.entry(s.business_type.to_string()).or_insert(0) += 1;
    }
    println!(
        "wrote {} stores ({}) to {}: {} transaction lines, {} labelled anomalies, in {:.1} s",
        summary.stores.len(),
        by_type
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        args.out.display(),
        summary.lines,
        summary.anomalies,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args)]
pub struct DemoArgs {
    /// Task to demonstrate. Every task runs as real jobs over gRPC, and every store
    /// keeps its results in `<network>/<store>/results/<job>/`.
    #[arg(long, value_enum, default_value = "demand")]
    pub task: DemoTask,
    #[command(flatten)]
    pub source: SyntheticArgs,
    /// Federated algorithm [default: newton; fedavg when any privacy option is set].
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Training rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Fraction of stores sampled each round.
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// FedAvg: local epochs per round.
    #[arg(long, default_value_t = 1)]
    pub local_epochs: u32,
    /// FedAvg: local learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub learning_rate: f64,
    /// L2 regularisation of the model.
    #[arg(long, default_value_t = 1.0)]
    pub l2: f64,
    /// Days held out at the end of every store's history.
    #[arg(long, default_value_t = 28)]
    pub holdout_days: u32,
    /// Days before the held-out ones on which each store picks its forecaster (local,
    /// federated, personalized or seasonal naive); 0 keeps the federated model.
    #[arg(long, default_value_t = 28, value_parser = clap::value_parser!(u32).range(0..=28))]
    pub validation_days: u32,
    /// Up to this many groups of stores with a model each, found from their data
    /// (clustered federated learning, exact Newton per group); every store keeps the
    /// network's model or its group's, whichever does better on its validation days.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub groups: u32,
    /// Keep coordinator checkpoints in this SQLite file (default: in memory).
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// The simulated stores share this many HTTP/2 connections to the coordinator
    /// [default: one each, as real stores]; for networks larger than the process's
    /// open-file limit allows (two sockets per store).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: Option<u32>,
    /// Write the full report as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the report JSON to stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Write the HTML report here, its charts in <name>-figures/ beside it
    /// [default: report.html in the network directory].
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Serve the live dashboard here while the demo runs (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub dashboard: String,
    /// Run without the live dashboard.
    #[arg(long, conflicts_with = "dashboard")]
    pub no_dashboard: bool,
    /// Keep the dashboard up after the run, until Ctrl-C.
    #[arg(long, conflicts_with = "no_dashboard")]
    pub hold: bool,
    #[command(flatten)]
    pub privacy: PrivacyArgs,
}

/// Secure aggregation and store-level differential privacy for a job.
#[derive(Args, Clone)]
#[command(next_help_heading = "Privacy")]
pub struct PrivacyArgs {
    /// Run every round under SecAgg+: the coordinator learns only the sum of updates.
    #[arg(long)]
    pub secure_aggregation: bool,
    /// L2 norm each store clips its update to [default with any privacy option: 0.5].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Who adds Gaussian noise: the coordinator (central), the stores in shares under
    /// SecAgg+ (distributed), or each store alone (local).
    #[arg(long, value_enum, default_value = "none")]
    pub noise: NoiseArg,
    /// Noise standard deviation of the sum, in clips.
    #[arg(long, default_value_t = 1.0)]
    pub noise_multiplier: f64,
    /// Stop training before a round would spend more than this ε.
    #[arg(long)]
    pub budget_epsilon: Option<f64>,
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Share of a round's stores expected to drop out (sizes the SecAgg+ graph).
    #[arg(long, default_value_t = 0.1)]
    pub expected_dropout: f64,
    /// Stream cipher that expands SecAgg+ masks: aes128_ctr (hardware AES) or chacha20.
    #[arg(long, default_value = "aes128_ctr")]
    pub mask_prg: fedretail_privacy::secagg::MaskPrg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NoiseArg {
    None,
    Central,
    Distributed,
    Local,
}

impl PrivacyArgs {
    fn is_set(&self) -> bool {
        self.secure_aggregation || self.clip.is_some() || self.noise != NoiseArg::None
    }

    pub fn settings(&self) -> fedretail_coordinator::PrivacySettings {
        use fedretail_coordinator::{NoiseKind, PrivacySettings};
        if !self.is_set() {
            return PrivacySettings::default();
        }
        let noise = match self.noise {
            NoiseArg::None => NoiseKind::None,
            NoiseArg::Central => NoiseKind::Central,
            NoiseArg::Distributed => NoiseKind::Distributed,
            NoiseArg::Local => NoiseKind::Local,
        };
        PrivacySettings {
            secure_aggregation: self.secure_aggregation,
            mask_prg: self.mask_prg,
            expected_dropout: self.expected_dropout,
            clip: Some(self.clip.unwrap_or(0.5)),
            noise,
            noise_multiplier: (noise != NoiseKind::None).then_some(self.noise_multiplier),
            budget_epsilon: self.budget_epsilon,
            delta: self.delta,
        }
    }
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let data_dir = args.source.dir()?;
    if args.task != DemoTask::Demand {
        return crate::analyze::demo_task(args.task, data_dir, args.report.clone(), args.json);
    }
    let strategy: StrategyKind = match args.strategy {
        Some(s) => s.into(),
        None if args.privacy.is_set() => StrategyKind::Fedavg,
        None => StrategyKind::Newton,
    };
    let job = JobConfig {
        strategy: Some(strategy),
        rounds: args.rounds,
        fraction: args.fraction,
        l2: args.l2,
        round_timeout_secs: 300.0,
        fedavg: fedretail_coordinator::FedAvgSettings {
            local_epochs: args.local_epochs,
            learning_rate: args.learning_rate,
            ..Default::default()
        },
        privacy: args.privacy.settings(),
        // Checked here so that a grouped job with the wrong strategy fails before the run.
        task: fedretail_core::TaskSpec::Demand(fedretail_core::task::DemandTaskOptions {
            groups: args.groups,
            ..Default::default()
        }),
        // SecAgg+ needs three stores to hide any one of them.
        min_stores: if args.privacy.secure_aggregation {
            3
        } else {
            2
        },
        ..JobConfig::default()
    };
    fedretail_coordinator::CheckedJob::new(job.clone()).context("demo job")?;
    let options = DemoOptions {
        data_dir,
        holdout_days: args.holdout_days,
        validation_days: args.validation_days,
        job,
        wiring: Wiring {
            database: args.database.clone(),
            connections: args.connections.map(|k| k as usize),
        },
        prepare_parallelism: 2,
        write_results: true,
        groups: args.groups,
    };
    let progress = Arc::new(DemoProgress::new());
    let dashboard = Arc::new(Dashboard::new());
    let observer = {
        let (p, d) = (progress.clone(), dashboard.clone());
        Arc::new(move |e: &DemoEvent| {
            p.on_event(e);
            match e {
                DemoEvent::Coordinator(c) => d.observe(c),
                DemoEvent::Preparing { done, total, .. } => d.notice(&format!(
                    "the stores compute their features from their own exports: {done} of {total}"
                )),
                _ => {}
            }
        })
    };
    let rt = runtime()?;
    let addr = (!args.no_dashboard).then_some(args.dashboard.as_str());
    let board = rt.block_on(watch::dashboard_server(addr, dashboard))?;
    let board = rt.spawn(board);
    let mut report = rt.block_on(run_demo(&options, observer))?;
    report.peak_rss_bytes = crate::network::peak_rss_bytes();
    let html = args
        .html
        .clone()
        .unwrap_or_else(|| options.data_dir.join("report.html"));
    let backtests = read_backtests(&options.data_dir, &options.job.job_id, &report);
    watch::write_page(&demand_page(&report, &backtests), &html)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json)
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", render_summary(&report));
        println!(
            "  each store's 28-day forecast and the model: {}/<store>/results/{}/",
            report.data_dir, options.job.job_id
        );
        if let Some(path) = &args.report {
            println!("  report: {}", path.display());
        }
        println!("  report with charts: {}", html.display());
    }
    if args.hold && !args.no_dashboard {
        eprintln!("the dashboard stays up; stop with Ctrl-C");
        rt.block_on(tokio::signal::ctrl_c())?;
    }
    board.abort();
    Ok(())
}

#[derive(Args)]
pub struct InspectArgs {
    /// A store's export directory (transactions.csv, optional promotions.csv).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Or an agent config file (uses its data section, including view_sql).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 28)]
    pub holdout_days: u32,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let (store_id, source) = match (&args.store, &args.config) {
        (Some(dir), None) => (
            dir.file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            StoreSource::from_dir(dir),
        ),
        (None, Some(cfg)) => {
            let file = crate::deploy::AgentFile::read(cfg)?;
            (file.store_id, file.data)
        }
        _ => bail!("give exactly one of --store DIR or --config FILE"),
    };
    let data = runtime()?.block_on(load_demand_dataset(
        &store_id,
        &source,
        &DemandSpec {
            holdout_days: args.holdout_days,
            ..Default::default()
        },
    ))?;
    let d = fedretail_models::DEMAND_DIM;
    let mut means = vec![0.0; d];
    for (x, _, _) in data.train.iter() {
        x.add_scaled(&mut means, 1.0);
    }
    let n = data.train.len().max(1) as f64;
    let features: serde_json::Map<String, serde_json::Value> =
        fedretail_models::demand_feature_names()
            .into_iter()
            .zip(&means)
            .map(|(f, m)| {
                (
                    f.to_string(),
                    serde_json::json!((m / n * 1e4).round() / 1e4),
                )
            })
            .collect();
    let out = serde_json::json!({
        "store_id": store_id,
        "history_days": data.history_days,
        "train_rows": data.train.len(),
        "test_rows": data.test.len(),
        "train_units": data.train.units().iter().sum::<f64>(),
        "seasonal_naive_mae": data.naive_scale,
        "feature_means": features,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
