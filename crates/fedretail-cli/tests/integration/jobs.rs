//! The built binary running a network's jobs as an operator would: one coordinator
//! process running several jobs in a row against the same four agent processes (one
//! a till that records no customer ids, which sits the customer tasks out and says
//! why), each store keeping its results in its own folder, the exact and the seed's
//! meta-model clustering each equal to their in-process fit; and a coordinator killed
//! with SIGKILL mid-job that, restarted, finishes that job and runs the rest.

use fedretail_core::kmeans::{fit_bisecting_kmeans, ClusterTree, KMeansConfig};
use fedretail_core::SamplingConfig;
use fedretail_data::{load_customer_points, CustomerFeatureSet, FeatureWindow, StoreSource};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::common::{
    assert_same_model, free_port, read_json, spawn_agent, spawn_coordinator,
    spawn_coordinator_logged, wait_all, wait_for_line,
};
const STORES: [&str; 3] = ["store-001", "store-002", "store-003"];
/// A till without customer ids: store-001's sales with the customer column dropped.
const TILL: &str = "store-004";

fn generate(dir: &Path) -> PathBuf {
    let net = dir.join("net");
    let args = [
        "--stores",
        "3",
        "--days",
        "240",
        "--young-fraction",
        "0",
        "--late-joiners",
        "0",
        "--seed",
        "11",
    ];
    crate::common::generate(&net, &args);
    let text = std::fs::read_to_string(net.join(STORES[0]).join("transactions.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let drop = header.iter().position(|h| *h == "customer_id").unwrap();
    let keep = |l: &str| {
        let f: Vec<&str> = l.split(',').collect();
        let kept: Vec<&str> = (0..f.len()).filter(|&i| i != drop).map(|i| f[i]).collect();
        kept.join(",")
    };
    let mut till = keep(&header.join(","));
    for l in lines {
        till.push('\n');
        till.push_str(&keep(l));
    }
    std::fs::create_dir_all(net.join(TILL)).unwrap();
    std::fs::write(net.join(TILL).join("transactions.csv"), till + "\n").unwrap();
    net
}

/// Four jobs, one per task family, small enough to run in seconds.
fn coordinator_config(dir: &Path, port: u16) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n",
        dir.join("coordinator.db").display()
    );
    text.push_str(
        r#"
[[jobs]]
job_id = "demand"
task = "demand"
rounds = 6
min_stores = 3
expected_stores = 4
round_timeout_secs = 60

[[jobs]]
job_id = "customer-anomaly"
min_stores = 3
expected_stores = 4
round_timeout_secs = 60
[jobs.task]
kind = "customer_anomaly"
clusters = 3
max_iterations = 6
flag_share = 0.02

[[jobs]]
job_id = "segments"
min_stores = 3
expected_stores = 4
round_timeout_secs = 60
[jobs.task]
kind = "segments"
clusters = 4
max_iterations = 6

[[jobs]]
job_id = "churn"
task = "churn"
min_stores = 3
expected_stores = 4
round_timeout_secs = 60

[[jobs]]
job_id = "segments-meta"
min_stores = 3
expected_stores = 4
round_timeout_secs = 60
[jobs.task]
kind = "segments"
clusters = 4
max_iterations = 6
fit = "meta"

[[jobs]]
job_id = "demand-groups"
min_stores = 3
expected_stores = 4
round_timeout_secs = 60
[jobs.task]
kind = "demand"
groups = 2
"#,
    );
    for s in STORES.iter().chain([&TILL]) {
        text.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\n"
        ));
    }
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_agents(dir: &Path, port: u16) -> Vec<(String, Child)> {
    STORES
        .iter()
        .chain([&TILL])
        .map(|s| {
            let cfg = dir.join(format!("{s}.toml"));
            let extra = if *s == TILL {
                String::new()
            } else {
                format!("promotions = \"net/{s}/promotions.csv\"\nlabels = \"net/{s}/anomaly_labels.csv\"\n")
            };
            std::fs::write(
                &cfg,
                format!(
                    "coordinator = \"http://127.0.0.1:{port}\"\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\nbusiness_type = \"grocery\"\nresults_dir = \"net/{s}/results\"\n\n[data]\ntransactions = \"net/{s}/transactions.csv\"\n{extra}"
                ),
            )
            .unwrap();
            (s.to_string(), spawn_agent(&cfg))
        })
        .collect()
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// Everything in a store's results came from its own rows: customer ids carry the
/// store's prefix, forecast categories are its own, and each job wrote its model.
fn check_results(net: &Path, store: &str) {
    let results = net.join(store).join("results");
    let own_categories: BTreeSet<String> = {
        let (h, rows) = read_csv(&net.join(store).join("transactions.csv"));
        let c = column(&h, "category");
        rows.into_iter().map(|r| r[c].clone()).collect()
    };
    for job in ["demand", "customer-anomaly", "segments", "churn"] {
        let card: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(results.join(job).join("model_card.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(card["store_id"], store);
        assert!(card["model_version"].as_u64().unwrap() >= 1, "{card}");
        assert!(results.join(job).join("model.json").exists());
    }
    let (h, rows) = read_csv(&results.join("demand").join("forecast.csv"));
    let (cat, lo, mid, hi) = (
        column(&h, "category"),
        column(&h, "lower"),
        column(&h, "forecast_units"),
        column(&h, "upper"),
    );
    assert_eq!(
        rows.len(),
        own_categories.len() * 28,
        "28 days per category"
    );
    for r in &rows {
        assert!(
            own_categories.contains(&r[cat]),
            "{} is not a category of {store}",
            r[cat]
        );
        let (l, m, u): (f64, f64, f64) = (
            r[lo].parse().unwrap(),
            r[mid].parse().unwrap(),
            r[hi].parse().unwrap(),
        );
        assert!(l <= m && m <= u && l >= 0.0, "{r:?}");
    }
    let prefix = format!("{store}-c");
    for (job, file) in [
        ("customer-anomaly", "customers.csv"),
        ("segments", "segments.csv"),
        ("churn", "churn_scores.csv"),
    ] {
        let (h, rows) = read_csv(&results.join(job).join(file));
        let id = column(&h, "customer_id");
        assert!(rows.len() >= 30, "{job}: {} rows", rows.len());
        for r in &rows {
            assert!(
                r[id].starts_with(&prefix),
                "{job}: customer {} is not {store}'s",
                r[id]
            );
        }
    }
    let (h, rows) = read_csv(&results.join("customer-anomaly").join("customers.csv"));
    let (flag, reason) = (column(&h, "flagged"), column(&h, "reason"));
    let flagged: Vec<&Vec<String>> = rows.iter().filter(|r| r[flag] == "yes").collect();
    assert!(!flagged.is_empty());
    assert!(
        flagged.iter().all(|r| !r[reason].is_empty()),
        "every flag has a reason"
    );
    let (h, _) = read_csv(&results.join("segments").join("segments.csv"));
    column(&h, "segment_name");
}

/// Every job completed; the till took part in demand only and said why not in the rest.
fn check_jobs(jobs: &[serde_json::Value]) {
    for j in jobs {
        assert_eq!(j["failed"], false, "{}", j["status"]);
        let demand = j["task"] == "demand";
        let evaluated = j["evaluations"].as_array().unwrap().len();
        assert_eq!(evaluated, if demand { 4 } else { 3 }, "{}", j["job_id"]);
        let out = j["stores_not_taking_part"].as_array().unwrap();
        if !demand {
            assert_eq!(out.len(), 1, "{}", j["job_id"]);
            assert_eq!(out[0][0], TILL);
            assert!(
                out[0][1].as_str().unwrap().contains("no customer ids"),
                "{}",
                out[0][1]
            );
        }
    }
}

/// The till has its demand forecast and nothing for the customer tasks.
fn check_till(net: &Path) {
    let results = net.join(TILL).join("results");
    assert!(results.join("demand").join("forecast.csv").exists());
    for job in ["customer-anomaly", "segments", "churn", "segments-meta"] {
        assert!(!results.join(job).exists(), "{job}");
    }
}

/// Each of the three stores' segment features, as the stores compute them.
fn pooled_segment_points(net: &Path) -> Vec<Vec<f64>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let window = FeatureWindow { window_days: 180 };
    STORES
        .iter()
        .map(|s| {
            let source = StoreSource::from_dir(&net.join(s));
            rt.block_on(load_customer_points(
                &source,
                &window,
                CustomerFeatureSet::Segments,
                None,
            ))
            .unwrap()
            .points
            .values
        })
        .collect()
}

fn segments_config() -> KMeansConfig {
    KMeansConfig {
        num_clusters: 4,
        dim: 4,
        max_iterations: 6,
        tolerance: 1e-6,
        seed: 2,
        sampling: SamplingConfig::default(),
    }
}

/// Federated bisecting k-means over the wire equals the centralized fit on the
/// pooled points of the three stores.
fn check_segments_equal_centralized(stores: &[Vec<f64>], job: &serde_json::Value) {
    assert_eq!(job["job_id"], "segments");
    let pooled: Vec<f64> = stores.concat();
    let central = fit_bisecting_kmeans(&segments_config(), &pooled, &[])
        .unwrap()
        .into_values();
    assert_same_model(job, &central, "exact federated vs centralized");
}

/// The seed's meta-model over the wire equals the in-process one: each store's own
/// clusters, their centroids weighted by size, clustered again.
fn check_meta_equals_in_process(stores: &[Vec<f64>], job: &serde_json::Value) {
    assert_eq!(job["job_id"], "segments-meta");
    let config = segments_config();
    let (mut centroids, mut sizes) = (Vec::new(), Vec::new());
    for points in stores {
        let local = fit_bisecting_kmeans(&config, points, &[])
            .unwrap()
            .into_values();
        let tree = ClusterTree::new(&local, 4, 4).unwrap();
        let mut n = vec![0.0; tree.leaves().len()];
        for x in points.chunks(4) {
            n[tree.predict(x).0] += 1.0;
        }
        centroids.extend(tree.leaf_centroids());
        sizes.extend(n);
    }
    let meta = fit_bisecting_kmeans(&config, &centroids, &sizes)
        .unwrap()
        .into_values();
    assert_same_model(job, &meta, "meta-model over the wire vs in process");
}

/// A grouped demand job over the wire: every group's model equals the centralized fit
/// of the same objective on the pooled rows of the stores that joined it (as each
/// store's agent computes them: its files, declared a grocery).
fn check_groups_equal_centralized(net: &Path, job: &serde_json::Value) {
    assert_eq!(job["strategy"], "clustered_newton");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = fedretail_data::DemandSpec {
        holdout_days: 28,
        horizon_days: 28,
        validation_days: 28,
    };
    let d = fedretail_models::DEMAND_DIM;
    let model: Vec<f64> = job["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let tree = fedretail_core::clustered::ClusterTree::new(&model, d, 2).unwrap();
    let mut rows_of = std::collections::BTreeMap::<usize, Vec<_>>::new();
    for e in job["evaluations"].as_array().unwrap() {
        let store = e["store_id"].as_str().unwrap();
        let leaf = e["metrics"]["group_leaf"].as_f64().unwrap() as usize;
        let dir = net.join(store);
        let promotions = dir.join("promotions.csv");
        let source = StoreSource {
            transactions: dir.join("transactions.csv"),
            promotions: promotions.exists().then_some(promotions),
            ..StoreSource::default()
        }
        .with_business_type("grocery");
        let data = rt
            .block_on(fedretail_data::load_demand_dataset(store, &source, &spec))
            .unwrap();
        rows_of.entry(leaf).or_default().push(data.train);
    }
    let masks = (
        fedretail_models::demand_layout().regularization_mask(),
        vec![true; d],
    );
    let config = fedretail_core::ClusteredNewtonConfig::default();
    for (leaf, rows) in &rows_of {
        let rows: Vec<&fedretail_models::DemandRows> = rows.iter().collect();
        let penalty = fedretail_core::clustered::group_penalty(&tree, *leaf, &masks, &config);
        let start = vec![0.0; d];
        let (central, _) =
            fedretail_models::glm::fit_newton_from(&rows, &start, &penalty, 2.0, 100, 1e-10);
        let gap = central
            .iter()
            .zip(tree.model(*leaf))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(gap < 1e-9, "group {leaf}: the model differs by {gap}");
    }
}

#[test]
fn one_coordinator_runs_four_jobs_against_the_same_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let net = generate(dir.path());
    let port = free_port();
    let config = coordinator_config(dir.path(), port);
    let mut children = spawn_agents(dir.path(), port);
    let report = dir.path().join("outcome.json");
    children.push(("coordinator".into(), spawn_coordinator(&config, &report)));
    wait_all(&mut children, Duration::from_secs(300));

    let outcome = read_json(&report);
    let jobs = outcome["jobs"].as_array().unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "demand",
            "customer-anomaly",
            "segments",
            "churn",
            "segments-meta",
            "demand-groups"
        ]
    );
    check_jobs(jobs);
    assert_eq!(jobs[1]["strategy"], "bisecting_kmeans");
    // Against the labelled refund abusers, where a store has any.
    let aucs: Vec<f64> = jobs[1]["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["metrics"]["auc_federated"].as_f64())
        .collect();
    assert!(
        !aucs.is_empty() && aucs.iter().all(|a| *a > 0.7),
        "{aucs:?}"
    );
    for e in jobs[3]["evaluations"].as_array().unwrap() {
        assert!(e["metrics"]["auc"].as_f64().unwrap() > 0.5);
    }
    // Only named metrics crossed the wire: the outcome holds no customer id.
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        !text.contains("-c0"),
        "a customer id reached the coordinator"
    );
    for s in STORES {
        check_results(&net, s);
    }
    check_till(&net);
    let points = pooled_segment_points(&net);
    check_segments_equal_centralized(&points, &jobs[2]);
    check_meta_equals_in_process(&points, &jobs[4]);
    check_groups_equal_centralized(&net, &jobs[5]);
}

#[test]
fn a_coordinator_killed_mid_job_resumes_it_and_runs_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let net = generate(dir.path());
    let port = free_port();
    let config = coordinator_config(dir.path(), port);
    let mut agents = spawn_agents(dir.path(), port);
    let report = dir.path().join("outcome.json");
    let (mut first, lines) = spawn_coordinator_logged(&config, &report);
    // Kill it (SIGKILL) once the second job has completed two rounds.
    let in_second = std::cell::Cell::new(false);
    wait_for_line(&lines, Duration::from_secs(180), |line| {
        in_second.set(in_second.get() || line.starts_with("job customer-anomaly: task"));
        in_second.get() && line.starts_with("round 2 done")
    });
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!report.exists(), "a killed coordinator wrote no report");

    let (second, lines) = spawn_coordinator_logged(&config, &report);
    agents.push(("coordinator".into(), second));
    wait_all(&mut agents, Duration::from_secs(300));
    let log: Vec<String> = lines.iter().collect();
    assert!(
        log.iter()
            .any(|l| l.starts_with("job demand skipped") && l.contains("already completed")),
        "{log:#?}"
    );
    let outcome = read_json(&report);
    let jobs = outcome["jobs"].as_array().unwrap();
    let ids: Vec<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "customer-anomaly",
            "segments",
            "churn",
            "segments-meta",
            "demand-groups"
        ]
    );
    assert!(
        jobs[0]["resumed_after_round"].as_u64().unwrap() >= 2,
        "{}",
        jobs[0]
    );
    check_jobs(jobs);
    for s in STORES {
        check_results(&net, s);
    }
    check_till(&net);
    let points = pooled_segment_points(&net);
    check_segments_equal_centralized(&points, &jobs[1]);
    check_meta_equals_in_process(&points, &jobs[3]);
    check_groups_equal_centralized(&net, &jobs[4]);
}
