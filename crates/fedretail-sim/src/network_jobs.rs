//! The analytics tasks as real federated jobs over the simulated network: one
//! coordinator, one agent per store, jobs run one after another against the same
//! agents, every store's results written into its own folder. The report is built
//! only from what the stores sent: named metrics of the final model on each store's
//! own data (the federated model, and the model the store fits alone).

use crate::federation::{run_federation, stores_from_dir, FederationRun};
use crate::SimError;
use fedretail_coordinator::{CoordinatorEvent, JobConfig, JobOutcome};
use fedretail_core::TaskKind;
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
pub async fn run_network_jobs(
    root: &Path,
    jobs: Vec<JobConfig>,
    parallel: usize,
    observer: Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>,
) -> Result<NetworkRunReport, SimError> {
    let stores = stores_from_dir(root, parallel)?;
    let FederationRun {
        outcomes,
        agent_failures,
        wall_seconds,
        ..
    } = run_federation(&stores, jobs, None, observer).await?;
    Ok(NetworkRunReport {
        data_dir: root.display().to_string(),
        wall_seconds,
        jobs: outcomes.into_iter().map(job_report).collect(),
        agent_failures,
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
        "churn" => &[
            ("auc_local", "AUC local"),
            ("auc", "AUC fed"),
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
