//! The demo end to end on a small generated network: real coordinator, real agents,
//! gRPC on 127.0.0.1.

use fedretail_coordinator::{JobConfig, StrategyKind};
use fedretail_sim::{render_summary, run_demo, summarize, DemoOptions, StoreReport, Wiring};
use fedretail_synth::{generate_network, NetworkConfig};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_over_grpc_and_matches_the_centralized_model() {
    let dir = tempfile::tempdir().unwrap();
    let net = NetworkConfig {
        stores: 6,
        days: 300,
        young_fraction: 0.0,
        seed: 3,
        ..Default::default()
    };
    generate_network(&net, dir.path()).unwrap();
    // One store with a broken export: it is skipped with its reason, the rest run.
    let broken = dir.path().join("store-999");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("transactions.csv"),
        "transaction_id,timestamp\n1,2025-01-01 00:00:00\n",
    )
    .unwrap();

    let db = dir.path().join("coordinator.db");
    let options = DemoOptions {
        job: JobConfig {
            strategy: Some(StrategyKind::Newton),
            rounds: Some(8),
            ..JobConfig::default()
        },
        // The agents share two connections (the CLI's demo tests give each its own).
        wiring: Wiring {
            database: Some(db.clone()),
            connections: Some(2),
        },
        ..DemoOptions::new(dir.path().to_path_buf())
    };
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let report = run_demo(
        &options,
        Arc::new(move |e| ev.lock().unwrap().push(format!("{e:?}"))),
    )
    .await
    .unwrap();

    assert_eq!(report.stores.len(), 6);
    assert_eq!(report.rounds, 8);
    assert_eq!(report.skipped_stores.len(), 1);
    assert!(
        report.skipped_stores[0]
            .reason
            .contains("missing required column"),
        "{:?}",
        report.skipped_stores
    );
    assert!(
        report.max_weight_gap_to_centralized < 1e-6,
        "gap {}",
        report.max_weight_gap_to_centralized
    );
    for s in &report.stores {
        let (f, c) = (s.wape_federated.unwrap(), s.wape_centralized.unwrap());
        assert!(
            (f - c).abs() < 1e-6,
            "{}: federated {f} vs centralized {c}",
            s.store_id
        );
        assert!(
            s.wape_local.is_some()
                && s.wape_seasonal_naive.is_some()
                && s.wape_personalized.is_some()
        );
    }
    // The model must beat the weekly seasonal-naive forecast across the network.
    let fed = report.overall.median_wape_federated.unwrap();
    let naive = report.overall.median_wape_seasonal_naive.unwrap();
    assert!(
        fed < naive,
        "median WAPE federated {fed} vs seasonal naive {naive}"
    );
    assert!(report.bytes_up > 0 && report.bytes_down > 0);
    assert_eq!(report.round_history.len(), 8);
    assert!(report
        .round_history
        .iter()
        .all(|r| r.participants.len() == 6 && r.dropped.is_empty()));
    let summary = render_summary(&report);
    assert!(
        summary.contains("federated") && summary.contains("store-999"),
        "{summary}"
    );
    // Every store is also scored under a separate model of its declared type.
    assert!(report
        .stores
        .iter()
        .all(|s| s.wape_centralized_by_type.is_some()));
    assert!(summary.contains("a separate model per business type"));
    // The generator's expected demand is a floor: below the store's seasonal naive,
    // and in the median below every fitted model.
    for s in &report.stores {
        let floor = s.wape_expected.unwrap();
        assert!(
            floor < s.wape_seasonal_naive.unwrap(),
            "{}: {floor}",
            s.store_id
        );
    }
    let floor = report.overall.median_wape_expected.unwrap();
    assert!(floor < fed && floor < report.overall.median_wape_local.unwrap());
    assert!(summary.contains("the generator's expected demand"));
    assert!(summary.contains("joining made the forecast clearly better at"));
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("RoundCompleted")));

    // The report serialises with the fields scripts rely on.
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for key in [
        "task",
        "rounds",
        "wall_seconds",
        "bytes_up",
        "bytes_down",
        "stores",
    ] {
        assert!(json.get(key).is_some(), "report lacks {key}");
    }
    for key in [
        "store_id",
        "business_type",
        "train_rows",
        "wape_local",
        "wape_federated",
        "wape_centralized",
        "chosen",
        "wape_chosen",
        "kept_vs_local",
    ] {
        assert!(
            json["stores"][0].get(key).is_some(),
            "store report lacks {key}"
        );
    }

    // Every store kept its forecast and the model, at the store.
    for s in &report.stores {
        let folder = dir
            .path()
            .join(&s.store_id)
            .join("results")
            .join("demand-forecast");
        let forecast = std::fs::read_to_string(folder.join("forecast.csv")).unwrap();
        let mut lines = forecast.lines();
        assert_eq!(
            lines.next(),
            Some("date,category,forecast_units,lower,upper,model")
        );
        assert_eq!(
            lines.count() % 28,
            0,
            "{}: 28 days per category",
            s.store_id
        );
        assert!(folder.join("model.json").exists() && folder.join("model_card.json").exists());
    }

    // Every completed round was checkpointed.
    let store = fedretail_coordinator::CheckpointStore::open(&db).unwrap();
    let (last, params) = store.latest("demand-forecast").unwrap().unwrap();
    assert_eq!(last.round, 8);
    assert_eq!(params.len(), fedretail_models::DEMAND_DIM);
}

/// A network of young stores and one that joined four weeks before its held-out days:
/// the shared model is what their forecasts stand on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn young_stores_and_a_cold_start_are_served_better_by_the_network_than_alone() {
    let dir = tempfile::tempdir().unwrap();
    let net = NetworkConfig {
        stores: 10,
        days: 420,
        young_fraction: 0.5,
        late_joiners: 1,
        // The late joiner is a hardware store, and one mature hardware store has two
        // years behind it: the type's calendar is there to learn.
        seed: 6,
        ..Default::default()
    };
    let summary = generate_network(&net, dir.path()).unwrap();
    let late = &summary.stores.last().unwrap().store_id;
    let options = DemoOptions {
        job: JobConfig {
            strategy: Some(StrategyKind::Newton),
            rounds: Some(8),
            ..JobConfig::default()
        },
        write_results: false,
        ..DemoOptions::new(dir.path().to_path_buf())
    };
    let report = run_demo(&options, Arc::new(|_| {})).await.unwrap();
    let cold = report.stores.iter().find(|s| &s.store_id == late).unwrap();
    assert_eq!(cold.history_days, fedretail_synth::LATE_JOINER_DAYS);
    let (fed, local, naive) = (
        cold.wape_federated.unwrap(),
        cold.wape_local.unwrap(),
        cold.wape_seasonal_naive.unwrap(),
    );
    assert!(
        fed < local && fed < naive,
        "cold start {late}: federated {fed}, local {local}, naive {naive}"
    );
    let young: Vec<_> = report
        .stores
        .iter()
        .filter(|s| s.history_days < 365)
        .collect();
    assert!(young.len() >= 3, "{} young stores", young.len());
    let better = young
        .iter()
        .filter(|s| s.wape_federated < s.wape_local)
        .count();
    assert!(
        2 * better > young.len(),
        "federated beats local at {better} of {} young stores",
        young.len()
    );
    for s in &report.stores {
        let chosen = s.chosen.as_deref().unwrap();
        assert!(
            ["global", "personalized", "local", "naive", "ensemble"].contains(&chosen),
            "{chosen}"
        );
        assert_eq!(s.wape_chosen, s.wape_forecast);
        // A store that kept its own forecast saves nothing on any day.
        let verdict = s.kept_vs_local.as_deref().unwrap();
        assert!(["better", "same", "worse"].contains(&verdict), "{verdict}");
        if chosen == "local" {
            assert_eq!(verdict, "same", "{}", s.store_id);
        }
    }
    let o = &report.overall;
    assert!(o.forecast_clearly_better_than_local <= o.forecast_beats_local);
}

/// Office-district stores (busy on working days, quiet at weekends and in summer) that
/// declare nothing of it: the grouped model finds them from their data over gRPC, and
/// each group's model is the exact fit of its stores' pooled rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_model_finds_undeclared_office_stores_and_fits_each_group_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let net = NetworkConfig {
        stores: 12,
        days: 300,
        young_fraction: 0.0,
        office_fraction: 0.5,
        seed: 4,
        ..Default::default()
    };
    let summary = generate_network(&net, dir.path()).unwrap();
    let options = DemoOptions {
        job: JobConfig {
            strategy: Some(StrategyKind::Newton),
            ..JobConfig::default()
        },
        write_results: false,
        groups: 2,
        ..DemoOptions::new(dir.path().to_path_buf())
    };
    let report = run_demo(&options, Arc::new(|_| {})).await.unwrap();
    assert_eq!(report.strategy, "clustered_newton");
    assert_eq!(report.rounds, 12, "a level of 6 Newton rounds per group");
    assert!(
        report.max_weight_gap_to_centralized < 1e-9,
        "{}",
        report.max_weight_gap_to_centralized
    );
    let office: std::collections::HashMap<&str, bool> = summary
        .stores
        .iter()
        .map(|p| (p.store_id.as_str(), p.office))
        .collect();
    let groups: Vec<(u32, bool)> = report
        .stores
        .iter()
        .map(|s| (s.group.unwrap(), office[s.store_id.as_str()]))
        .collect();
    assert!(groups.iter().any(|g| g.1) && groups.iter().any(|g| !g.1));
    // The groups are the tree's leaves 1 and 2; which is the offices' is arbitrary.
    let office_leaf = groups.iter().find(|g| g.1).unwrap().0;
    let agree = groups
        .iter()
        .filter(|(g, o)| (*g == office_leaf) == *o)
        .count();
    assert_eq!(agree, groups.len(), "{groups:?}");
    for s in &report.stores {
        let chosen = s.chosen.as_deref().unwrap();
        let depth = s.group_depth.unwrap();
        assert!(depth <= 1, "{depth}");
        // A store that kept its group's model forecasts with the cluster, never "global".
        assert!(
            depth == 0 || chosen != "global",
            "{chosen} at depth {depth}"
        );
    }
    assert!(render_summary(&report).contains("groups found from the stores' data"));
    // The summary reports against the generator's truth: office and other stores.
    let districts: Vec<&str> = report
        .by_district
        .iter()
        .map(|g| g.group.as_str())
        .collect();
    assert_eq!(districts, ["office", "other"]);
}

fn judged(kept_vs_local: &str, local: f64, kept: f64) -> StoreReport {
    StoreReport {
        kept_vs_local: Some(kept_vs_local.into()),
        wape_local: Some(local),
        wape_forecast: Some(kept),
        ..Default::default()
    }
}

#[test]
fn a_group_counts_its_clear_gains_and_losses_apart_from_its_wins() {
    let stores = [
        judged("better", 0.3, 0.2),
        judged("same", 0.3, 0.29),
        judged("same", 0.3, 0.31),
        judged("worse", 0.3, 0.4),
    ];
    let g = summarize("all", &stores.iter().collect::<Vec<_>>());
    assert_eq!(g.forecast_beats_local, 2);
    assert_eq!(g.forecast_clearly_better_than_local, 1);
    assert_eq!(g.forecast_clearly_worse_than_local, 1);
    assert_eq!(g.kept_vs_own("/"), "1/2/1");
}
