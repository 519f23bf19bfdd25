//! `fedretail analyze …`: the analytics tasks (anomaly detection, customer segments,
//! churn, credit scoring), each local vs federated vs a centralized yardstick.

use crate::network::SyntheticArgs;
use crate::outputs::{emit, Output, TableArgs, TrainArgs};
use crate::progress::{spinner, DemoProgress};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fedretail_coordinator::JobConfig;
use fedretail_core::task::{ChurnTaskOptions, ClassifierKind, ClusterFit, ClusterTaskOptions};
use fedretail_core::{TaskKind, TaskSpec};
use fedretail_data::FeatureWindow;
use fedretail_sim::analysis_pages;
use fedretail_sim::{
    default_job, render_anomaly, render_classification, render_network_run, render_segments,
    run_anomaly, run_churn, run_credit, run_network_jobs, run_segments, ClassificationEvent,
    ClusteringEvent, ClusteringOptions,
};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum AnalyzeCommand {
    /// Customer- and receipt-level anomaly detection by federated bisecting k-means over a coordinator and one agent per store, each store keeping its flags; --in-process for the reference (local, the seed's meta-model, exact federated, centralized).
    Anomaly(ClusterArgs),
    /// RFM customer segments by federated bisecting k-means over agents, described in words and kept at each store; --in-process for the reference.
    Segments(ClusterArgs),
    /// Churn prediction over agents: logistic regression by exact Newton and an MLP by FedAvg, each store keeping its scores; --in-process for the reference (FedAvg, centralized, the seed's recency rule).
    Churn(ChurnArgs),
    /// Gradient-inversion attack on single-record updates: no protection, DP-SGD at several epsilon, and a real SecAgg+ round (one masked input, and the sum the coordinator learns).
    Attack(AttackArgs),
    /// Credit scoring from a tabular file split into lenders by a column (e.g. ../shared/data/credit_data.csv by Job) or into N random silos (--split-by random:50): the in-process reference, then the same jobs over one agent per lender.
    Credit(CreditArgs),
    /// Poisoning: a share of the stores lie every round (sign flip, scaled updates, flipped labels, a huge claimed row count); pooled AUC of FedAvg under the plain mean and under each robust rule (median, trimmed mean, norm-bounded).
    Byzantine(crate::poisoning::ByzantineArgs),
    /// Poisoning of demand forecasting: a share of a network's stores lie every round of a FedAvg demand job (the same attacks; sales inflated tenfold for the data attack); pooled WAPE on the honest stores' held-out days under the plain mean and each robust rule.
    ByzantineDemand(crate::poisoning::ByzantineDemandArgs),
    /// Store-level differential privacy for demand forecasting: DP-FedAvg at several epsilon against no DP (central noise with adaptive clipping, or --secure: SecAgg+ with distributed discrete Gaussian noise). Needs many stores, e.g. --stores 300.
    DpDemand(DpDemandArgs),
}

#[derive(Args)]
pub struct DpDemandArgs {
    #[command(flatten)]
    pub source: SyntheticArgs,
    /// Epsilons tried (comma-separated), at --delta.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub epsilons: Vec<f64>,
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    #[arg(long, default_value_t = 30)]
    pub rounds: u64,
    /// Chance a store takes part in a round (share drawn per round with --secure).
    #[arg(long, default_value_t = 0.5)]
    pub sampling_rate: f64,
    /// Starting L2 clip of a store's update (adapted toward the median norm when the budget allows).
    #[arg(long, default_value_t = 0.5)]
    pub clip: f64,
    /// Each store clips, adds its share of discrete Gaussian noise and masks its update; the coordinator sees only the noised sum.
    #[arg(long)]
    pub secure: bool,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub source: SyntheticArgs,
    /// Days of history up to each store's last day.
    #[arg(long, default_value_t = 180)]
    pub window_days: u32,
    /// Customer clusters (segments).
    #[arg(long, default_value_t = 6)]
    pub clusters: usize,
    /// Receipt clusters (anomaly task).
    #[arg(long, default_value_t = 8)]
    pub receipt_clusters: usize,
    /// Silhouette is exact up to this many points per store, sampled above.
    #[arg(long, default_value_t = 600)]
    pub silhouette_points: usize,
    /// Share of each store's receipts its calibrated threshold flags.
    #[arg(long, default_value_t = 0.01)]
    pub flag_share: f64,
    /// Seeds the direction in which clusters are split.
    #[arg(long, default_value_t = 2)]
    pub kmeans_seed: u64,
    /// The in-process reference instead of the network: local, the seed's meta-model,
    /// exact federated and centralized fits on one machine reading every store.
    #[arg(long)]
    pub in_process: bool,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub source: SyntheticArgs,
    /// Days of history before the cut-off that the features describe.
    #[arg(long, default_value_t = 180)]
    pub window_days: u32,
    /// A customer who buys nothing in this many days after the cut-off has churned.
    #[arg(long, default_value_t = 60)]
    pub horizon_days: u32,
    /// The in-process reference (local, FedAvg, exact Newton, centralized, the rule)
    /// instead of the network.
    #[arg(long)]
    pub in_process: bool,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args)]
pub struct CreditArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Share of each lender's rows held out, stratified by the target.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// A lender reports a category to the federation only if this many of its
    /// training rows have it.
    #[arg(long, default_value_t = 5)]
    pub min_category_rows: u64,
    /// Only the in-process reference (no coordinator, no agents).
    #[arg(long)]
    pub in_process: bool,
    /// Also train the MLP FedPer-style (job `credit-mlp-fedper` over the agents, and
    /// in the in-process reference): the body shared, each lender's output layer
    /// trained and kept at the lender.
    #[arg(long)]
    pub personal_head: bool,
    /// Where each lender's rows are written as its own export, with its results.
    #[arg(long, default_value = "fedretail-data/credit-network")]
    pub work_dir: PathBuf,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub output: Output,
}

/// `analyze credit` over agents: the in-process reference and the network's jobs.
#[derive(Serialize)]
struct CreditRun {
    reference: fedretail_sim::ClassificationReport,
    network: fedretail_sim::NetworkRunReport,
    /// Largest parameter difference between each job's model over agents and the same
    /// model in process (exact Newton, FedAvg of the logistic regression, of the MLP).
    gap_network_vs_in_process: BTreeMap<String, f64>,
}

#[derive(Args)]
pub struct AttackArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Records attacked.
    #[arg(long, default_value_t = 200)]
    pub records: usize,
    /// Epsilons of the DP settings tried (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub epsilons: Vec<f64>,
    /// Stores in each SecAgg+ round.
    #[arg(long, default_value_t = 10)]
    pub stores_per_sum: usize,
    #[command(flatten)]
    pub output: Output,
}

/// A clustering job with the command's options: exact federated bisecting k-means, or
/// the seed's meta-model (job id suffixed `-meta`).
fn cluster_job(a: &ClusterArgs, kind: TaskKind, clusters: usize, fit: ClusterFit) -> JobConfig {
    let options = ClusterTaskOptions {
        fit,
        window_days: a.window_days,
        clusters: Some(clusters),
        flag_share: a.flag_share,
        silhouette_points: a.silhouette_points,
        seed: a.kmeans_seed,
        ..ClusterTaskOptions::default()
    };
    let task = match kind {
        TaskKind::CustomerAnomaly => TaskSpec::CustomerAnomaly(options),
        TaskKind::ReceiptAnomaly => TaskSpec::ReceiptAnomaly(options),
        _ => TaskSpec::Segments(options),
    };
    let base = default_job(kind);
    JobConfig {
        job_id: match fit {
            ClusterFit::Exact => base.job_id.clone(),
            ClusterFit::Meta => format!("{}-meta", base.job_id),
        },
        task,
        ..base
    }
}

/// Churn over the network: the logistic regression by exact Newton, and the MLP by
/// FedAvg when it has hidden units.
fn churn_jobs(a: &ChurnArgs) -> Vec<JobConfig> {
    let options = |model| ChurnTaskOptions {
        window_days: a.window_days,
        horizon_days: a.horizon_days,
        model,
        min_train_rows: a.train.min_train_rows,
        seed: a.train.train_seed,
        ..ChurnTaskOptions::default()
    };
    let mut jobs = vec![JobConfig {
        task: TaskSpec::Churn(options(ClassifierKind::Logistic)),
        ..default_job(TaskKind::Churn)
    }];
    if a.train.mlp_hidden > 0 {
        jobs.push(JobConfig {
            job_id: "churn-mlp".into(),
            task: TaskSpec::Churn(options(ClassifierKind::Mlp {
                hidden: a.train.mlp_hidden,
            })),
            rounds: Some(a.train.rounds as u32),
            fedavg: fedretail_coordinator::FedAvgSettings {
                learning_rate: a.train.learning_rate,
                batch_size: a.train.batch_size,
                local_epochs: a.train.local_epochs,
                min_local_steps: a.train.min_local_steps,
                proximal_mu: a.train.proximal_mu,
                server_optimizer: a.train.server_optimizer.into(),
                server_learning_rate: a.train.server_learning_rate,
                ..Default::default()
            },
            ..default_job(TaskKind::Churn)
        });
    }
    jobs
}

fn cluster_options(a: &ClusterArgs) -> ClusteringOptions {
    ClusteringOptions {
        window_days: a.window_days,
        customer_clusters: a.clusters,
        transaction_clusters: a.receipt_clusters,
        silhouette_points: a.silhouette_points,
        flag_share: a.flag_share,
        seed: a.kmeans_seed,
        ..ClusteringOptions::default()
    }
}

fn on_cluster_event(bar: &ProgressBar) -> impl Fn(ClusteringEvent) + '_ {
    move |e| match e {
        ClusteringEvent::StoreLoaded {
            store_id,
            done,
            total,
        } => {
            bar.set_prefix("features");
            bar.set_message(format!("{done}/{total} stores ({store_id})"));
        }
        ClusteringEvent::Stage(s) => {
            bar.set_prefix("training");
            bar.set_message(s);
        }
    }
}

fn on_class_event(bar: &ProgressBar) -> impl Fn(ClassificationEvent) + '_ {
    move |e| match e {
        ClassificationEvent::Prepared { parties, skipped } => {
            bar.set_prefix("prepared");
            bar.set_message(format!("{parties} parties, {skipped} skipped"));
        }
        ClassificationEvent::Stage(s) => {
            bar.set_prefix("training");
            bar.set_message(s);
        }
    }
}

/// What the demo trains.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DemoTask {
    /// Demand forecasting over real gRPC (coordinator + one agent per store).
    Demand,
    /// Customer and receipt anomaly detection: two jobs against the same agents.
    Anomaly,
    /// RFM customer segments, named in words.
    Segments,
    /// Churn scores for every customer.
    Churn,
    /// Demand, customer and receipt anomalies, segments and churn: five jobs in a row
    /// against the same agents.
    All,
}

/// `fedretail demo --task …`: an analytics task with its defaults on `dir`.
/// `fedretail demo --task …` for the analytics: real federated jobs over gRPC, one
/// coordinator and one agent per store, every store keeping its results.
pub fn demo_task(task: DemoTask, dir: PathBuf, report: Option<PathBuf>, json: bool) -> Result<()> {
    let kinds: &[TaskKind] = match task {
        DemoTask::Demand => &[TaskKind::Demand],
        DemoTask::Anomaly => &[TaskKind::CustomerAnomaly, TaskKind::ReceiptAnomaly],
        DemoTask::Segments => &[TaskKind::Segments],
        DemoTask::Churn => &[TaskKind::Churn],
        DemoTask::All => &TaskKind::RETAIL,
    };
    let jobs = kinds.iter().map(|k| default_job(*k)).collect();
    let name = format!(
        "demo-{}",
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("-")
    );
    let output = Output {
        report,
        json,
        html: None,
    };
    over_network(dir, jobs, &name, &output)
}

/// Runs `jobs` over a coordinator and one agent per store of `dir` on 127.0.0.1, and
/// reports what the stores sent; fails if any job failed.
fn over_network(dir: PathBuf, jobs: Vec<JobConfig>, name: &str, output: &Output) -> Result<()> {
    let progress = Arc::new(DemoProgress::new());
    let p = progress.clone();
    let observer = Arc::new(move |e: &fedretail_coordinator::CoordinatorEvent| p.on_coordinator(e));
    let rt = crate::network::runtime()?;
    let r = rt.block_on(run_network_jobs(&dir, jobs, 2, observer))?;
    let page = |s: &str| analysis_pages::network_run_page(&r, s);
    emit(&r, render_network_run(&r), page, name, output)?;
    let failed: Vec<&str> = r
        .jobs
        .iter()
        .filter(|j| j.job.failed)
        .map(|j| j.job.job_id.as_str())
        .collect();
    anyhow::ensure!(failed.is_empty(), "jobs failed: {}", failed.join(", "));
    Ok(())
}

pub fn run(command: AnalyzeCommand) -> Result<()> {
    let rt = crate::network::runtime()?;
    match command {
        AnalyzeCommand::Anomaly(a) => anomaly(&rt, &a),
        AnalyzeCommand::Segments(a) => segments(&rt, &a),
        AnalyzeCommand::Churn(a) => churn(&rt, &a),
        AnalyzeCommand::Attack(a) => attack(&rt, &a),
        AnalyzeCommand::DpDemand(a) => dp_demand(&rt, &a),
        AnalyzeCommand::Credit(a) => credit(&rt, &a),
        AnalyzeCommand::Byzantine(a) => crate::poisoning::byzantine(&rt, &a),
        AnalyzeCommand::ByzantineDemand(a) => crate::poisoning::byzantine_demand(&rt, &a),
    }
}

/// Customer anomalies (exact and the seed's meta-model) and receipt anomalies.
fn anomaly(rt: &tokio::runtime::Runtime, a: &ClusterArgs) -> Result<()> {
    let dir = a.source.dir()?;
    if !a.in_process {
        let jobs = vec![
            cluster_job(a, TaskKind::CustomerAnomaly, a.clusters, ClusterFit::Exact),
            cluster_job(a, TaskKind::CustomerAnomaly, a.clusters, ClusterFit::Meta),
            cluster_job(
                a,
                TaskKind::ReceiptAnomaly,
                a.receipt_clusters,
                ClusterFit::Exact,
            ),
        ];
        return over_network(dir, jobs, "anomaly", &a.output);
    }
    let bar = spinner();
    let report = rt.block_on(run_anomaly(
        &dir,
        &cluster_options(a),
        &on_cluster_event(&bar),
    ))?;
    bar.finish_and_clear();
    let page = |s: &str| analysis_pages::anomaly_page(&report, s);
    emit(&report, render_anomaly(&report), page, "anomaly", &a.output)
}

fn segments(rt: &tokio::runtime::Runtime, a: &ClusterArgs) -> Result<()> {
    let dir = a.source.dir()?;
    if !a.in_process {
        let jobs = vec![
            cluster_job(a, TaskKind::Segments, a.clusters, ClusterFit::Exact),
            cluster_job(a, TaskKind::Segments, a.clusters, ClusterFit::Meta),
        ];
        return over_network(dir, jobs, "segments", &a.output);
    }
    let bar = spinner();
    let report = rt.block_on(run_segments(
        &dir,
        &cluster_options(a),
        &on_cluster_event(&bar),
    ))?;
    bar.finish_and_clear();
    let page = |s: &str| analysis_pages::segments_page(&report, s);
    emit(
        &report,
        render_segments(&report),
        page,
        "segments",
        &a.output,
    )
}

fn churn(rt: &tokio::runtime::Runtime, a: &ChurnArgs) -> Result<()> {
    let dir = a.source.dir()?;
    if !a.in_process {
        return over_network(dir, churn_jobs(a), "churn", &a.output);
    }
    let bar = spinner();
    let window = FeatureWindow {
        window_days: a.window_days,
    };
    let report = rt.block_on(run_churn(
        &dir,
        &window,
        a.horizon_days,
        &a.train.options(),
        &on_class_event(&bar),
    ))?;
    bar.finish_and_clear();
    let page = |s: &str| analysis_pages::classification_page(&report, s);
    emit(
        &report,
        render_classification(&report),
        page,
        "churn",
        &a.output,
    )
}

fn attack(rt: &tokio::runtime::Runtime, a: &AttackArgs) -> Result<()> {
    let spec = a.table.spec(0.2, 7, 1, 1);
    let options = fedretail_sim::attack::AttackOptions {
        records: a.records,
        epsilons: a.epsilons.clone(),
        stores_per_sum: a.stores_per_sum,
        ..Default::default()
    };
    let report = rt
        .block_on(fedretail_sim::attack::run_attack(
            &a.table.data,
            &spec,
            &options,
        ))
        .with_context(|| format!("attack on {}", a.table.data.display()))?;
    let summary = fedretail_sim::attack::render_attack(&report);
    let page = |s: &str| analysis_pages::attack_page(&report, s);
    emit(&report, summary, page, "attack", &a.output)
}

fn dp_demand(rt: &tokio::runtime::Runtime, a: &DpDemandArgs) -> Result<()> {
    let dir = a.source.dir()?;
    let mut options = fedretail_sim::DpDemandOptions::new(dir.clone());
    options.epsilons = a.epsilons.clone();
    options.delta = a.delta;
    options.rounds = a.rounds;
    options.sampling_rate = a.sampling_rate;
    options.clip = a.clip;
    options.secure = a.secure;
    let bar = spinner();
    bar.set_prefix("dp-demand");
    let b = bar.clone();
    let report = rt
        .block_on(fedretail_sim::run_dp_demand(
            &options,
            std::sync::Arc::new(move |msg: &str| b.set_message(msg.to_string())),
        ))
        .with_context(|| format!("store-level DP on {}", dir.display()))?;
    bar.finish_and_clear();
    let page = |s: &str| analysis_pages::dp_demand_page(&report, s);
    emit(
        &report,
        fedretail_sim::render_dp_demand(&report),
        page,
        "dp-demand",
        &a.output,
    )
}

/// Credit scoring: the in-process reference (local, centralized, FedAvg, exact Newton),
/// then, unless `--in-process`, the same jobs over a coordinator and one agent per
/// lender, each lender's scores written into its own folder.
fn credit(rt: &tokio::runtime::Runtime, a: &CreditArgs) -> Result<()> {
    let spec = a.table.spec(
        a.test_fraction,
        a.train.train_seed,
        a.train.min_train_rows,
        a.min_category_rows,
    );
    if a.personal_head && a.train.mlp_hidden == 0 {
        bail!("--personal-head trains the MLP's head per lender: it needs --mlp-hidden above 0");
    }
    let options = fedretail_sim::classification::ClassificationOptions {
        personal_head: a.personal_head,
        ..a.train.options()
    };
    let bar = spinner();
    let reference = rt
        .block_on(run_credit(
            &a.table.data,
            &spec,
            &options,
            &on_class_event(&bar),
        ))
        .with_context(|| format!("credit scoring on {}", a.table.data.display()))?;
    bar.finish_and_clear();
    if a.in_process || options.customer_dp.is_some() {
        let page = |s: &str| analysis_pages::classification_page(&reference, s);
        let summary = render_classification(&reference);
        return emit(&reference, summary, page, "credit", &a.output);
    }
    let jobs = fedretail_sim::tabular_jobs(&spec, &options, &reference);
    let progress = Arc::new(DemoProgress::new());
    let p = progress.clone();
    let observer = Arc::new(move |e: &fedretail_coordinator::CoordinatorEvent| p.on_coordinator(e));
    let network = rt
        .block_on(fedretail_sim::run_tabular_network(
            &a.table.data,
            &a.table.split_by,
            &a.work_dir,
            jobs,
            observer,
        ))
        .with_context(|| format!("credit jobs over agents on {}", a.table.data.display()))?;
    let references = [
        ("credit-newton", Some(&reference.newton_parameters)),
        ("credit-fedavg", Some(&reference.fedavg_parameters)),
        ("credit-mlp", reference.mlp_parameters.as_ref()),
        ("credit-mlp-fedper", reference.fedper_parameters.as_ref()),
    ];
    let mut gaps = BTreeMap::new();
    for (id, expected) in references {
        let job = network
            .jobs
            .iter()
            .find(|j| j.job.job_id == id && !j.job.failed);
        if let (Some(job), Some(expected)) = (job, expected) {
            if job.job.parameters.len() == expected.len() {
                let gap = job
                    .job
                    .parameters
                    .iter()
                    .zip(expected)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                gaps.insert(id.to_string(), gap);
            }
        }
    }
    let mut summary = format!(
        "in-process reference\n{}\nover gRPC: one coordinator, one agent per {}\n{}",
        render_classification(&reference),
        match a.table.split_by.strip_prefix(fedretail_data::RANDOM_SPLIT) {
            Some(n) => format!("silo ({n} random silos)"),
            None => a.table.split_by.clone(),
        },
        render_network_run(&network)
    );
    for (id, g) in &gaps {
        summary.push_str(&format!(
            "{id} over agents vs in process: largest parameter difference {g:.1e}\n"
        ));
    }
    let run = CreditRun {
        reference,
        network,
        gap_network_vs_in_process: gaps,
    };
    let page = |s: &str| {
        let mut page = analysis_pages::classification_page(&run.reference, s);
        let jobs = analysis_pages::network_run_page(&run.network, "");
        let over_agents = jobs
            .sections
            .into_iter()
            .filter(|s| s.heading.starts_with("Job "));
        page.sections.extend(over_agents);
        page
    };
    emit(&run, summary, page, "credit", &a.output)
}
