//! The analytics tasks as real federated jobs over the simulated network: one
//! coordinator, one agent per store, jobs run one after another against the same
//! agents, every store's results written into its own folder. The report is built
//! only from what the stores sent: named metrics of the final model on each store's
//! own data (the federated model, and the model the store fits alone).

use crate::classification::{ClassificationOptions, ClassificationReport};
use crate::federation::{
    export_store, run_federation, stores_from_dir, FederationRun, SimStore, Wiring,
};
use crate::SimError;
use fedretail_coordinator::{CoordinatorEvent, JobConfig, JobOutcome, StrategyKind};
use fedretail_core::task::{ClassifierKind, TabularTaskOptions};
use fedretail_core::{BoxFuture, TaskKind, TaskSpec};
use fedretail_data::StoreSource;
use fedretail_data::TabularSpec;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Mean of each reported metric over a group of stores.
#[derive(Debug, Clone, Serialize)]
pub struct GroupMetrics {
    pub group: String,
    pub stores: usize,
    pub means: BTreeMap<String, f64>,
}

/// One job as the network ran it.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkJobReport {
    pub job: JobOutcome,
    pub by_business_type: Vec<GroupMetrics>,
    pub overall: GroupMetrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct NetworkRunReport {
    pub data_dir: String,
    pub wall_seconds: f64,
    pub jobs: Vec<NetworkJobReport>,
    pub agent_failures: Vec<crate::SkippedStore>,
}

/// A job for `kind` with its default options, named after the task.
pub fn default_job(kind: TaskKind) -> JobConfig {
    JobConfig {
        job_id: kind.name().replace('_', "-"),
        task: kind.default_spec(),
        round_timeout_secs: 300.0,
        registration_timeout_secs: 600.0,
        ..JobConfig::default()
    }
}

fn group(name: &str, evals: &[&fedretail_coordinator::StoreEvaluation]) -> GroupMetrics {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for e in evals {
        for (k, v) in &e.metrics {
            let s = sums.entry(k.clone()).or_default();
            s.0 += v;
            s.1 += 1;
        }
    }
    GroupMetrics {
        group: name.to_string(),
        stores: evals.len(),
        means: sums
            .into_iter()
            .map(|(k, (s, n))| (k, s / n as f64))
            .collect(),
    }
}

fn job_report(job: JobOutcome) -> NetworkJobReport {
    let mut by_type: BTreeMap<&str, Vec<&fedretail_coordinator::StoreEvaluation>> = BTreeMap::new();
    for e in &job.evaluations {
        by_type.entry(e.business_type.as_str()).or_default().push(e);
    }
    let all: Vec<_> = job.evaluations.iter().collect();
    let by_business_type = by_type
        .iter()
        .map(|(t, evals)| group(&format!("{t} ({})", evals.len()), evals))
        .collect();
    let overall = group(&format!("all ({})", all.len()), &all);
    NetworkJobReport {
        by_business_type,
        overall,
        job,
    }
}

/// Runs `jobs` over every store under `root`, `parallel` stores preparing at once.
pub fn run_network_jobs<'a>(
    root: &'a Path,
    jobs: Vec<JobConfig>,
    parallel: usize,
    observer: Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>,
) -> BoxFuture<'a, Result<NetworkRunReport, SimError>> {
    Box::pin(async move {
        let stores = stores_from_dir(root, parallel)?;
        run_stores(root, &stores, jobs, observer).await
    })
}

async fn run_stores(
    root: &Path,
    stores: &[SimStore],
    jobs: Vec<JobConfig>,
    observer: Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>,
) -> Result<NetworkRunReport, SimError> {
    let FederationRun {
        outcomes,
        agent_failures,
        wall_seconds,
        ..
    } = run_federation(stores, jobs, &Wiring::default(), observer).await?;
    Ok(NetworkRunReport {
        data_dir: root.display().to_string(),
        wall_seconds,
        jobs: outcomes.into_iter().map(job_report).collect(),
        agent_failures,
    })
}

/// Where each silo's table is written for its agent.
pub const SILO_TABLE_FILE: &str = "table.csv";

/// The credit jobs `analyze credit` runs over agents, matching the in-process
/// reference's settings: exact Newton on the logistic regression, FedAvg of the
/// logistic regression, and FedAvg of the MLP; with `options.personal_head`, the MLP
/// again FedPer-style (each silo keeps its own output layer).
/// `reference` gives the pooled training rows, which scale the Newton penalty to the
/// same objective.
pub fn tabular_jobs(
    spec: &TabularSpec,
    options: &ClassificationOptions,
    reference: &ClassificationReport,
) -> Vec<JobConfig> {
    let pooled_train: usize = reference.silos.iter().map(|s| s.train_rows).sum();
    let task = |model, personal_head| {
        TaskSpec::Tabular(TabularTaskOptions {
            file: SILO_TABLE_FILE.into(),
            target: spec.target.clone(),
            positive: spec.positive.clone(),
            model,
            personal_head,
            test_fraction: spec.test_fraction,
            min_train_rows: spec.min_train_rows,
            min_category_rows: spec.min_category_rows,
            max_categories: spec.max_categories,
            seed: spec.seed,
            ..Default::default()
        })
    };
    let job = |id: &str, model, strategy, rounds: u64, l2: f64, learning_rate: f64| JobConfig {
        job_id: id.into(),
        task: task(model, false),
        strategy: Some(strategy),
        rounds: Some(rounds as u32),
        l2,
        seed: options.seed,
        // As the in-process FedAvg, so the two runs are the same computation.
        fedavg: options.fedavg_settings(learning_rate),
        round_timeout_secs: 300.0,
        registration_timeout_secs: 600.0,
        ..JobConfig::default()
    };
    // FedNewton's penalty is on the summed loss; FedAvg's job l2 is scaled by 1e-4
    // into a per-example penalty.
    let mut jobs = vec![
        job(
            "credit-newton",
            ClassifierKind::Logistic,
            StrategyKind::Newton,
            options.newton_rounds,
            options.l2 * pooled_train as f64,
            options.learning_rate,
        ),
        job(
            "credit-fedavg",
            ClassifierKind::Logistic,
            StrategyKind::Fedavg,
            options.rounds,
            options.l2 / 1e-4,
            options.learning_rate,
        ),
    ];
    if options.mlp_hidden > 0 {
        let mlp = ClassifierKind::Mlp {
            hidden: options.mlp_hidden,
        };
        let mlp_job = |id| {
            job(
                id,
                mlp,
                StrategyKind::Fedavg,
                options.rounds,
                options.l2 / 1e-4,
                options.mlp_learning_rate,
            )
        };
        jobs.push(mlp_job("credit-mlp"));
        if options.personal_head {
            let mut fedper = mlp_job("credit-mlp-fedper");
            fedper.task = task(mlp, true);
            jobs.push(fedper);
        }
    }
    jobs
}

/// A tabular file split into silos by a column, each silo a store with its own agent
/// (its rows written to `work_dir/<silo>/table.csv`), running `jobs`.
pub fn run_tabular_network<'a>(
    path: &'a Path,
    split_by: &'a str,
    work_dir: &'a Path,
    jobs: Vec<JobConfig>,
    observer: Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>,
) -> BoxFuture<'a, Result<NetworkRunReport, SimError>> {
    Box::pin(async move {
        if work_dir.exists() {
            std::fs::remove_dir_all(work_dir).map_err(|source| SimError::Io {
                path: work_dir.display().to_string(),
                source,
            })?;
        }
        let silos = fedretail_data::write_silos(path, split_by, work_dir, SILO_TABLE_FILE)
            .await
            .map_err(|e| SimError::Options(e.to_string()))?;
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let stores: Vec<SimStore> = silos
            .iter()
            .map(|(name, dir)| {
                let source = StoreSource {
                    transactions: dir.join("transactions.csv"),
                    tables_dir: Some(dir.clone()),
                    ..StoreSource::default()
                };
                export_store(name, "silo", source, dir, &permits)
            })
            .collect();
        run_stores(work_dir, &stores, jobs, observer).await
    })
}

/// The metrics worth a column for a task: (metric key, column title).
fn columns(task: &str) -> &'static [(&'static str, &'static str)] {
    match task {
        "customer_anomaly" | "receipt_anomaly" => &[
            ("auc_local", "AUC local"),
            ("auc_federated", "AUC fed"),
            ("silhouette_local", "silh local"),
            ("silhouette_federated", "silh fed"),
            ("flagged", "flagged"),
        ],
        "segments" => &[
            ("silhouette_local", "silh local"),
            ("silhouette_federated", "silh fed"),
            ("clusters", "segments"),
            ("points", "customers"),
        ],
        "tabular" => &[
            ("auc_local", "AUC local"),
            ("auc", "AUC fed"),
            ("auc_personalized", "AUC pers"),
            ("auc_own_head", "AUC head"),
            ("accuracy", "accuracy"),
            ("rows_scored", "rows"),
        ],
        "churn" => &[
            ("auc_local", "AUC local"),
            ("auc", "AUC fed"),
            ("auc_personalized", "AUC pers"),
            ("auc_rule", "AUC rule"),
            ("accuracy", "accuracy"),
            ("customers_scored", "scored"),
        ],
        _ => &[
            ("wape_local", "WAPE local"),
            ("wape_federated", "WAPE fed"),
            ("wape_naive", "WAPE naive"),
        ],
    }
}

/// A readable summary: per job, per business type, the task's main metrics.
pub fn render_network_run(r: &NetworkRunReport) -> String {
    let mut out = String::new();
    for j in &r.jobs {
        let o = &j.job;
        out.push_str(&format!(
            "\njob {} — task {}, {}: {}\n  {} rounds, {} stores evaluated, {} sat out, {:.1} kB up, {:.1} s\n",
            o.job_id,
            o.task,
            o.strategy,
            o.status,
            o.rounds.len(),
            o.evaluations.len(),
            o.stores_not_taking_part.len(),
            o.bytes_up as f64 / 1e3,
            o.wall_seconds
        ));
        let cols = columns(&o.task);
        out.push_str(&format!("  {:<18}", "business type"));
        for (_, title) in cols {
            out.push_str(&format!(" {title:>11}"));
        }
        out.push('\n');
        for g in j.by_business_type.iter().chain(std::iter::once(&j.overall)) {
            out.push_str(&format!("  {:<18}", g.group));
            for (key, _) in cols {
                let cell = g
                    .means
                    .get(*key)
                    .map_or("-".to_string(), |v| format!("{v:.3}"));
                out.push_str(&format!(" {cell:>11}"));
            }
            out.push('\n');
        }
        for (store, reason) in o.stores_not_taking_part.iter().take(5) {
            out.push_str(&format!("  {store} sat out: {reason}\n"));
        }
    }
    out.push_str(&format!(
        "\neach store's results are in {}/<store>/results/<job>/ ({:.1} s in all)\n",
        r.data_dir, r.wall_seconds
    ));
    out
}
