//! The data layer against files a store could really hand us: generated exports, and
//! broken ones.

use fedretail_data::{load_demand_dataset, DataError, DemandSpec, StoreSource};
use fedretail_synth::{generate_network, NetworkConfig};
use std::path::Path;

fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

async fn load(path: std::path::PathBuf) -> Result<fedretail_models::DemandDataset, DataError> {
    let source = StoreSource {
        transactions: path,
        promotions: None,
        view_sql: None,
        labels: None,
        tables_dir: None,
        business_type: None,
    };
    load_demand_dataset("s", &source, &DemandSpec::default()).await
}

const HEADER: &str = "transaction_id,timestamp,product_id,category,quantity,unit_price\n";

#[tokio::test]
async fn generated_store_becomes_features() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NetworkConfig {
        stores: 2,
        days: 200,
        young_fraction: 0.0,
        ..Default::default()
    };
    let summary = generate_network(&cfg, dir.path()).unwrap();
    let store = &summary.stores[0];
    let source = StoreSource::from_dir(&dir.path().join(&store.store_id));
    assert!(source.promotions.is_some());
    let data = load_demand_dataset(&store.store_id, &source, &DemandSpec::default())
        .await
        .unwrap();
    let n_cat = data.test.len() / 28;
    assert!(n_cat >= 4, "{} test rows", data.test.len());
    assert_eq!(data.test.len(), 28 * n_cat);
    // 200 days: 6 warm-up days, 28 held out, the 28 before them to pick on.
    assert_eq!(data.validation.len(), 28 * n_cat);
    assert_eq!(data.train.len(), (200 - 6 - 28 - 28) * n_cat);
    assert!(data.naive_scale > 0.0);
    // Promotions reach the features: some training row has a discount.
    let promo_col = fedretail_models::DEMAND_FEATURES
        .iter()
        .position(|f| *f == "promo_discount")
        .unwrap();
    assert!(data.train.iter().any(|(x, _, _)| x.get(promo_col) > 0.0));
    for (x, r, s) in data.train.iter() {
        let d = fedretail_models::DEMAND_DIM;
        assert!((0..d).all(|j| x.get(j).is_finite()) && r >= 0.0 && s > 0.0);
    }
}

/// Two years of a store selling ice cream in summer and heating in winter: each
/// category's rows copy the yearly terms into its own season block, and the store's
/// own fit learns opposite seasons there.
#[tokio::test]
async fn each_category_learns_its_own_season_in_its_own_block() {
    use fedretail_models::{
        demand_category_bucket, demand_layout, glm, DEMAND_CATEGORY_START, DEMAND_FEATURES,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from(HEADER);
    let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    for i in 0..730 {
        let day = start + chrono::Duration::days(i);
        // cos of the day of year: +1 in January, -1 in July.
        let winter = (2.0 * std::f64::consts::PI * i as f64 / 365.25).cos();
        for (category, season) in [("Ice Cream", -winter), ("heating", winter)] {
            let units = (8.0 * (0.8 * season).exp()).round() as i64;
            if units > 0 {
                body.push_str(&format!(
                    "r{i}{category},{day} 10:00:00,p,{category},{units},2.0\n"
                ));
            }
        }
    }
    let data = load(write(dir.path(), "export.csv", &body)).await.unwrap();
    let (ice, heat) = (
        demand_category_bucket("ice cream"),
        demand_category_bucket("heating"),
    );
    assert_ne!(ice, heat);
    let cos1 = |bucket: usize| DEMAND_CATEGORY_START + 2 * bucket + 1;
    let kept_cos1 = DEMAND_FEATURES
        .iter()
        .position(|f| *f == "year_cos1")
        .unwrap();
    // A row has its yearly term in its own category's block and nothing in the other's.
    for (x, _, _) in data.train.iter() {
        let (at_ice, at_heat) = (x.get(cos1(ice)), x.get(cos1(heat)));
        assert!(at_ice == 0.0 || at_heat == 0.0);
        assert_eq!(at_ice + at_heat, x.get(kept_cos1));
    }
    let mask = demand_layout().regularization_mask();
    let (w, _) = glm::fit_newton(&[&data.train], &mask, 1.0, 2.0, 50, 1e-9);
    assert!(
        w[cos1(ice)] < -0.2 && w[cos1(heat)] > 0.2,
        "{} {}",
        w[cos1(ice)],
        w[cos1(heat)]
    );
}

/// A store that doubled its sales after a year: its series' scale is the mean of the
/// year before the validation days, not of all its history.
#[tokio::test]
async fn a_series_scale_is_its_last_years_level() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from(HEADER);
    let start = chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
    for i in 0..730 {
        let day = start + chrono::Duration::days(i);
        let units = if i < 365 { 10 } else { 20 };
        body.push_str(&format!("r{i},{day} 10:00:00,p,bread,{units},2.0\n"));
    }
    let data = load(write(dir.path(), "export.csv", &body)).await.unwrap();
    // Validation starts on day 674; the year before it is days 310-673: 55 days of
    // 10 and 309 of 20 (all history would give 14.6).
    let want = (55.0 * 10.0 + 309.0 * 20.0) / 364.0;
    for (_, _, scale) in data.train.iter() {
        assert!((scale - want).abs() < 1e-9, "{scale} vs {want}");
    }
}

#[tokio::test]
async fn a_view_maps_differently_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = String::from("receipt,sold_at,sku,dept,qty,price\n");
    let start = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    for i in 0..130 {
        let day = start + chrono::Duration::days(i);
        body.push_str(&format!("r{i},{day} 10:00:00,p1,bread,{},2.5\n", 1 + i % 3));
    }
    let path = write(dir.path(), "export.csv", &body);
    let source = StoreSource {
        transactions: path.clone(),
        promotions: None,
        view_sql: Some("SELECT receipt AS transaction_id, sold_at AS timestamp, sku AS product_id, dept AS category, qty AS quantity, price AS unit_price FROM raw_transactions".into()),
        labels: None,
        tables_dir: None,
        business_type: None,
    };
    let data = load_demand_dataset("s", &source, &DemandSpec::default())
        .await
        .unwrap();
    assert_eq!(data.test.len(), 28);
    // Without the view the same file is refused, naming the missing column.
    let err = load(path).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("missing required column 'transaction_id'"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_files_get_precise_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(write(dir.path(), "empty.csv", "")).await.unwrap_err();
    assert!(matches!(err, DataError::EmptyFile { .. }), "{err}");
    let err = load(write(dir.path(), "header.csv", HEADER))
        .await
        .unwrap_err();
    assert!(matches!(err, DataError::NoRows { .. }), "{err}");
    let err = load(dir.path().join("missing.csv")).await.unwrap_err();
    assert!(err.to_string().contains("file not found"), "{err}");
    let err = load(write(dir.path(), "x.xlsx", "a")).await.unwrap_err();
    assert!(matches!(err, DataError::UnsupportedFormat { .. }), "{err}");

    let body = format!("{HEADER}t1,2025-01-01 10:00:00,p,c,1,2.0\nt2,yesterday,p,c,1,2.0\n");
    let err = load(write(dir.path(), "ts.csv", &body)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ts.csv")
            && msg.contains("column 'timestamp', line 3")
            && msg.contains("'yesterday'"),
        "{msg}"
    );

    let body =
        format!("{HEADER}t1,2025-01-01 10:00:00,p,c,1,2.0\nt2,2025-01-01 11:00:00,p,c,two,2.0\n");
    let err = load(write(dir.path(), "qty.csv", &body)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'quantity', line 3: cannot read 'two' as a number"),
        "{err}"
    );

    let body = format!("{HEADER}t1,,p,c,1,2.0\n");
    let err = load(write(dir.path(), "nots.csv", &body))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("column 'timestamp', line 2: value is required"),
        "{err}"
    );

    let body = format!("{HEADER}t1,2025-01-01 10:00:00,p,c,1,2.0\n");
    let err = load(write(dir.path(), "short.csv", &body))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DataError::TooLittleHistory { days: 1, .. }),
        "{err}"
    );
}

/// The yearly terms of a store's training rows are zero until it has seen a year
/// before its validation days; its validation rows always have them.
#[tokio::test]
async fn only_a_store_with_a_year_of_history_teaches_the_season() {
    let seasonal = |x: fedretail_models::Features<'_>| (7..=10).any(|j| x.get(j) != 0.0);
    for (days, teaches) in [(200, false), (500, true)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            stores: 1,
            days,
            young_fraction: 0.0,
            ..Default::default()
        };
        let summary = generate_network(&cfg, dir.path()).unwrap();
        let id = &summary.stores[0].store_id;
        let source = StoreSource::from_dir(&dir.path().join(id));
        let data = load_demand_dataset(id, &source, &DemandSpec::default())
            .await
            .unwrap();
        let trained = data.train.iter().any(|(x, _, _)| seasonal(x));
        assert_eq!(trained, teaches, "{days} days");
        let validated = data.validation.iter().all(|(x, _, _)| seasonal(x));
        assert!(validated, "{days} days");
    }
}

/// Stores share planned queries: a store's features are the same whether another
/// store's ran before it or not.
#[tokio::test]
async fn a_stores_features_do_not_depend_on_the_store_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NetworkConfig {
        stores: 2,
        days: 150,
        young_fraction: 0.0,
        seed: 9,
        ..Default::default()
    };
    let summary = generate_network(&cfg, dir.path()).unwrap();
    let load = |i: usize| {
        let id = summary.stores[i].store_id.clone();
        let source = StoreSource::from_dir(&dir.path().join(&id));
        async move {
            load_demand_dataset(&id, &source, &DemandSpec::default())
                .await
                .unwrap()
        }
    };
    let first = load(0).await;
    let other = load(1).await;
    let again = load(0).await;
    assert_eq!(first, again);
    assert_ne!(first.train, other.train);
}
