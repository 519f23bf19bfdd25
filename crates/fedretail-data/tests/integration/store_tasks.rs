//! Every task built from a store's own export, including exports that are not in the
//! canonical layout: an online shop's order-lines file with its own column names and
//! a day-first date format, mapped by the store's `view_sql`; and a till export with
//! no customer ids, which runs demand and receipt anomalies and sits the customer
//! tasks out with its reason.

use fedretail_core::task::{ClusterFit, ClusterTaskOptions, DemandTaskOptions};
use fedretail_core::{LocalWork, TaskKind, TaskSpec};
use fedretail_data::{build_local_task, DataError, StoreExport, StoreSource};
use fedretail_models::TaskSource;
use fedretail_synth::{generate_network, NetworkConfig};
use std::path::Path;

/// The generated store rewritten as an online shop would export it:
/// `order_no;ordered;sku;department;units;price_each;shopper` with dates as
/// `31/12/2025 18:04:05`, semicolons replaced by commas for CSV.
fn online_shop_export(canonical: &Path, out: &Path, with_customers: bool) {
    let text = std::fs::read_to_string(canonical).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let cols = [
        at("transaction_id"),
        at("timestamp"),
        at("product_id"),
        at("category"),
        at("quantity"),
        at("unit_price"),
        at("customer_id"),
    ];
    let mut w = String::from("order_no,ordered,sku,department,units,price_each");
    w.push_str(if with_customers { ",shopper\n" } else { "\n" });
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let ts = f[cols[1]];
        // 2025-12-31 18:04:05 -> 31/12/2025 18:04:05
        let (date, time) = ts.split_once(' ').unwrap();
        let d: Vec<&str> = date.split('-').collect();
        let ordered = format!("{}/{}/{} {time}", d[2], d[1], d[0]);
        w.push_str(&format!(
            "{},{ordered},{},{},{},{}",
            f[cols[0]], f[cols[2]], f[cols[3]], f[cols[4]], f[cols[5]]
        ));
        if with_customers {
            w.push_str(&format!(",{}", f[cols[6]]));
        }
        w.push('\n');
    }
    std::fs::write(out, w).unwrap();
}

fn view(with_customers: bool) -> String {
    format!(
        "SELECT order_no AS transaction_id, to_timestamp(ordered, '%d/%m/%Y %H:%M:%S') AS timestamp, \
         sku AS product_id, department AS category, units AS quantity, price_each AS unit_price{} \
         FROM raw_transactions",
        if with_customers { ", shopper AS customer_id" } else { "" }
    )
}

/// One generated store of 240 days under `dir`; its id.
fn one_store(dir: &Path) -> String {
    let cfg = NetworkConfig {
        stores: 1,
        days: 240,
        young_fraction: 0.0,
        seed: 3,
        ..Default::default()
    };
    let summary = generate_network(&cfg, dir).unwrap();
    summary.stores[0].store_id.clone()
}

#[tokio::test]
async fn an_online_shops_own_layout_runs_every_task_and_a_till_without_ids_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = &one_store(dir.path());
    let canonical = dir.path().join(store).join("transactions.csv");
    for with_customers in [true, false] {
        let export = dir.path().join(format!("orders-{with_customers}.csv"));
        online_shop_export(&canonical, &export, with_customers);
        let source = StoreSource {
            transactions: export,
            promotions: None,
            view_sql: Some(view(with_customers)),
            labels: None,
            tables_dir: None,
            business_type: None,
        };
        for kind in TaskKind::RETAIL {
            let spec = kind.default_spec().checked().unwrap();
            let built = build_local_task(store, &source, &spec).await;
            match (with_customers || !kind.needs_customers(), built) {
                (true, Ok(task)) => assert!(task.num_train_examples() > 30, "{kind}"),
                (false, Err(DataError::CannotServe { reason, .. })) => {
                    assert!(reason.contains("no customer ids"), "{kind}: {reason}")
                }
                (expect_ok, Ok(_)) => panic!("{kind}: expected ok = {expect_ok}, got a task"),
                (expect_ok, Err(e)) => panic!("{kind}: expected ok = {expect_ok}, got {e}"),
            }
        }
    }
}

/// A grouped demand job: the store's task takes the tree of group models the
/// coordinator sends and answers with its group's statistics.
#[tokio::test]
async fn a_grouped_demand_job_gives_a_store_the_tree_of_group_models() {
    let dir = tempfile::tempdir().unwrap();
    let store = &one_store(dir.path());
    let source = StoreSource {
        transactions: dir.path().join(store).join("transactions.csv"),
        ..Default::default()
    };
    let spec = TaskSpec::Demand(DemandTaskOptions {
        groups: 2,
        ..Default::default()
    })
    .checked()
    .unwrap();
    let task = build_local_task(store, &source, &spec).await.unwrap();
    assert_eq!(task.layout(), spec.layout().unwrap());
    let global = spec.initial_model().unwrap();
    let update = task
        .compute_update(global.values(), &LocalWork::ClusteredSecondOrderStatistics)
        .unwrap();
    let d = fedretail_core::task::demand_layout().len();
    assert_eq!(
        update.len(),
        fedretail_core::clustered::clustered_statistics_len(d, 2)
    );
    assert_eq!(
        update[1],
        task.num_train_examples() as f64,
        "its rows, in the root's block"
    );
    let m = task.evaluate(global.values()).unwrap();
    assert_eq!(
        m.get("group_leaf"),
        Some(&0.0),
        "an unsplit tree has one group"
    );
}

#[tokio::test]
async fn a_young_store_sits_demand_out_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    let mut text =
        String::from("transaction_id,timestamp,product_id,category,quantity,unit_price\n");
    for d in 1..=20 {
        text.push_str(&format!("t{d},2025-03-{d:02} 10:00:00,p,c,1,2.5\n"));
    }
    std::fs::write(&path, text).unwrap();
    let source = StoreSource {
        transactions: path,
        ..Default::default()
    };
    let spec = TaskKind::Demand.default_spec().checked().unwrap();
    match build_local_task("s", &source, &spec).await {
        Err(DataError::CannotServe { task, reason }) => {
            assert_eq!(task, "demand");
            assert!(reason.contains("20 days of history"), "{reason}");
        }
        Err(e) => panic!("expected a reason to sit out, got {e}"),
        Ok(_) => panic!("expected a reason to sit out, got a task"),
    }
}

/// A queue of jobs on the same features computes them once; an export that changes is
/// read again, and only its current version is kept.
#[tokio::test]
async fn a_store_computes_its_features_once_until_its_export_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = &one_store(dir.path());
    let source = StoreSource::from_dir(&dir.path().join(store));
    let export = StoreExport::new(store, source.clone());
    let exact = TaskKind::Segments.default_spec().checked().unwrap();
    let meta = TaskSpec::Segments(ClusterTaskOptions {
        fit: ClusterFit::Meta,
        ..Default::default()
    })
    .checked()
    .unwrap();
    let a = export.prepare(&exact).await.unwrap();
    assert_eq!(export.cached_features(), 1);
    let b = export.prepare(&meta).await.unwrap();
    assert_eq!(
        export.cached_features(),
        1,
        "the meta job reuses the exact job's points"
    );
    assert_eq!(a.num_train_examples(), b.num_train_examples());

    // The export loses every customer whose id ends in 1.
    let text = std::fs::read_to_string(&source.transactions).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let id = header.split(',').position(|h| h == "customer_id").unwrap();
    let mut kept = format!("{header}\n");
    for l in lines.filter(|l| !l.split(',').nth(id).unwrap_or("").ends_with('1')) {
        kept.push_str(l);
        kept.push('\n');
    }
    std::fs::write(&source.transactions, kept).unwrap();
    let c = export.prepare(&exact).await.unwrap();
    assert!(
        c.num_train_examples() < a.num_train_examples(),
        "{} customers after the change, {} before",
        c.num_train_examples(),
        a.num_train_examples()
    );
    assert_eq!(export.cached_features(), 1, "the old version is dropped");
}

/// Demand jobs that differ only in how they train (one model or a tree of groups)
/// share the store's demand features; another hold-out computes its own.
#[tokio::test]
async fn demand_jobs_on_the_same_split_share_their_features() {
    let dir = tempfile::tempdir().unwrap();
    let store = &one_store(dir.path());
    let export = StoreExport::new(store, StoreSource::from_dir(&dir.path().join(store)));
    let one = TaskKind::Demand.default_spec().checked().unwrap();
    let options = |groups, holdout_days| {
        TaskSpec::Demand(DemandTaskOptions {
            groups,
            holdout_days,
            ..Default::default()
        })
        .checked()
        .unwrap()
    };
    let a = export.prepare(&one).await.unwrap();
    let b = export.prepare(&options(2, 28)).await.unwrap();
    assert_eq!(
        export.cached_features(),
        1,
        "the grouped job reuses the rows"
    );
    assert_eq!(a.num_train_examples(), b.num_train_examples());
    let c = export.prepare(&options(1, 14)).await.unwrap();
    assert_eq!(export.cached_features(), 2);
    assert!(c.num_train_examples() > a.num_train_examples());
}
