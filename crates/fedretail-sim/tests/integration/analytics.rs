//! The analytics tasks on a small generated network, against references, and with a
//! broken store and a bad tabular file among the inputs.

use fedretail_data::{FeatureWindow, TabularSpec};
use fedretail_sim::classification::CustomerDp;
use fedretail_sim::{
    run_anomaly, run_churn, run_credit, run_segments, ClassificationOptions, ClusteringOptions,
};
use fedretail_synth::{generate_network, NetworkConfig};
use std::path::Path;

fn network(dir: &Path) {
    let net = NetworkConfig {
        stores: 6,
        days: 300,
        young_fraction: 0.0,
        seed: 5,
        ..Default::default()
    };
    generate_network(&net, dir).unwrap();
    // A store whose export lacks the needed columns: skipped with its reason.
    let broken = dir.join("store-999");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("transactions.csv"),
        "transaction_id,timestamp\n1,2025-01-01 00:00:00\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustering_tasks_match_the_centralized_fit_and_find_injected_anomalies() {
    let dir = tempfile::tempdir().unwrap();
    network(dir.path());
    let options = ClusteringOptions {
        window_days: 120,
        ..ClusteringOptions::default()
    };
    let report = run_anomaly(dir.path(), &options, &|_| {}).await.unwrap();
    assert_eq!(report.stores.len(), 6);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].store_id, "store-999");
    // Exact federated bisecting k-means is the centralized fit.
    assert!(
        report.centralized_gap_customers < 1e-9,
        "{}",
        report.centralized_gap_customers
    );
    assert!(
        report.centralized_gap_receipts < 1e-9,
        "{}",
        report.centralized_gap_receipts
    );
    // Injected anomalies are far from the receipt clusters: well above chance.
    let auc = report.overall.receipt_auc_federated.unwrap();
    assert!(auc > 0.7, "receipt AUC {auc}");
    let s = report.overall.silhouette_federated.unwrap();
    assert!(s > 0.0 && s < 1.0, "silhouette {s}");
    let shares: f64 = report
        .federated_customer_clusters
        .iter()
        .map(|c| c.share)
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);
    // Deterministic for a seed.
    let again = run_anomaly(dir.path(), &options, &|_| {}).await.unwrap();
    assert_eq!(
        serde_json::to_value(&report.federated_customer_clusters).unwrap(),
        serde_json::to_value(&again.federated_customer_clusters).unwrap()
    );

    let segments = run_segments(dir.path(), &options, &|_| {}).await.unwrap();
    assert!(segments.centralized_gap < 1e-9);
    assert_eq!(segments.segments.len(), options.customer_clusters);
    assert!(segments.segments.iter().all(|s| !s.description.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_trains_and_newton_equals_the_centralized_fit() {
    let dir = tempfile::tempdir().unwrap();
    network(dir.path());
    let window = FeatureWindow { window_days: 120 };
    let options = ClassificationOptions {
        mlp_hidden: 4,
        ..ClassificationOptions::default()
    };
    let r = run_churn(dir.path(), &window, 45, &options, &|_| {})
        .await
        .unwrap();
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert!(
        r.newton_max_parameter_gap < 1e-8,
        "{}",
        r.newton_max_parameter_gap
    );
    let fed = r.pooled_auc_federated.unwrap();
    assert!(fed > 0.6, "churn AUC {fed}");
    assert!(r.pooled_auc_rule.is_some());
    assert_eq!(r.rounds, 20);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn credit_spec() -> TabularSpec {
    TabularSpec {
        target: "Status".into(),
        positive: "bad".into(),
        split_by: "Job".into(),
        test_fraction: 0.25,
        seed: 1,
        min_train_rows: 10,
        min_category_rows: 1,
        max_categories: 50,
    }
}

/// Many small lenders (a table dealt into 40 random silos of about 40 rows): the
/// federated MLP, whose tiny silos run extra local epochs, comes close to the same MLP
/// trained on the pooled rows, and far above what each lender learns alone.
#[tokio::test]
async fn on_forty_small_random_silos_the_federated_mlp_nears_the_centralized_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("Status,Income,Debt,Home\n");
    let mut state = 7u64;
    for _ in 0..1600 {
        let mut draw = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let (income, debt, noise) = (draw(), draw(), draw());
        // Risk rises with debt against income, more steeply for renters: not linear.
        let rent = draw() < 0.4;
        let risk = (debt - income) * if rent { 6.0 } else { 2.0 } + 3.0 * (noise - 0.5);
        let status = if risk > 0.3 { "bad" } else { "good" };
        let home = if rent { "rent" } else { "owner" };
        text.push_str(&format!(
            "{status},{:.3},{:.3},{home}\n",
            100.0 * income,
            50.0 * debt
        ));
    }
    let path = write(dir.path(), "many.csv", &text);
    let spec = TabularSpec {
        split_by: "random:40".into(),
        ..credit_spec()
    };
    let r = run_credit(&path, &spec, &ClassificationOptions::default(), &|_| {})
        .await
        .unwrap();
    assert_eq!(r.silos.len(), 40);
    let fed = r.pooled_auc_mlp_federated.unwrap();
    let central = r.pooled_auc_mlp_centralized.unwrap();
    let local = r.pooled_auc_mlp_local.unwrap();
    assert!(
        central - fed <= 0.02,
        "federated {fed}, centralized {central}"
    );
    assert!(fed > local, "federated {fed}, local {local}");
}

#[tokio::test]
async fn credit_reports_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A lender with too few rows is skipped with its reason; the others train.
    let mut text = String::from("Status,Job,Income\n");
    for i in 0..200 {
        let job = if i % 2 == 0 { "fixed" } else { "freelance" };
        let bad = (i * 7919) % 5 == 0;
        let income = if bad { 50 + i % 30 } else { 120 + i % 40 };
        text.push_str(&format!(
            "{},{job},{income}\n",
            if bad { "bad" } else { "good" }
        ));
    }
    text.push_str("good,others,100\nbad,others,40\n");
    let path = write(dir.path(), "ok.csv", &text);
    let r = run_credit(
        &path,
        &credit_spec(),
        &ClassificationOptions::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(r.silos.len(), 2);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].store_id, "others");
    assert!(
        r.skipped[0].reason.contains("training rows"),
        "{}",
        r.skipped[0].reason
    );
    assert!(r.pooled_auc_federated.unwrap() > 0.9);
    assert!(r.privacy.is_none());

    // Customer-level DP: every party calibrates its noise to the budget and stays in it.
    let private = ClassificationOptions {
        customer_dp: Some(CustomerDp {
            epsilon: 2.0,
            delta: 1e-5,
            clip_norm: 1.0,
        }),
        ..ClassificationOptions::default()
    };
    let p = run_credit(&path, &credit_spec(), &private, &|_| {})
        .await
        .unwrap();
    let spent = p.privacy.as_ref().unwrap();
    assert_eq!(spent.len(), 2);
    for party in spent {
        assert!(party.epsilon <= 2.0 && party.epsilon > 1.9, "{party:?}");
        assert!(party.noise_multiplier > 0.5, "{party:?}");
    }
    assert!(p.pooled_auc_federated.unwrap() > 0.7);

    let missing = write(dir.path(), "missing.csv", "Status,Income\ngood,1\nbad,2\n");
    let e = run_credit(
        &missing,
        &credit_spec(),
        &ClassificationOptions::default(),
        &|_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("Job"), "{e}");

    let odd = write(
        dir.path(),
        "odd.csv",
        "Status,Job,Income\ngood,fixed,1\nbad,fixed,2\nmaybe,fixed,3\n",
    );
    let e = run_credit(
        &odd,
        &credit_spec(),
        &ClassificationOptions::default(),
        &|_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("maybe"), "{e}");
}
