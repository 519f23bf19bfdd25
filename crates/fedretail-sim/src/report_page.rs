//! The demo's HTML report: what each store gains by joining (WAPE of every forecaster
//! per business type, size and history band, and per store), forecast against actual
//! for a few stores, and the job's rounds. The backtests are read from the stores'
//! own results folders, where their agents wrote them: this harness plays the operator
//! of a simulated network whose stores all live on this machine.

use crate::report::{DemandReport, GroupSummary, StoreReport};
use fedretail_agent::daily_sums;
use fedretail_coordinator::{round_charts, RoundPoint};
use fedretail_models::ResultTable;
use fedretail_report::{BarChart, Column, LineChart, Page, Section, Series};
use std::collections::BTreeMap;
use std::path::Path;

/// A store's held-out days, summed over its categories: (day index, actual, kept
/// forecast, seasonal naive).
#[derive(Debug, Clone, PartialEq)]
pub struct Backtest {
    pub store_id: String,
    pub business_type: String,
    pub model: String,
    pub days: Vec<(f64, f64, f64, f64)>,
}

/// Reads `<data_dir>/<store>/results/<job_id>/backtest.csv` for up to one store per
/// business type (the first in id order with a backtest).
pub fn read_backtests(data_dir: &Path, job_id: &str, report: &DemandReport) -> Vec<Backtest> {
    let mut by_type: BTreeMap<&str, Backtest> = BTreeMap::new();
    for s in &report.stores {
        if by_type.contains_key(s.business_type.as_str()) {
            continue;
        }
        let path = data_dir
            .join(&s.store_id)
            .join("results")
            .join(job_id)
            .join("backtest.csv");
        if let Some(b) = read_backtest(&path, s) {
            by_type.insert(&s.business_type, b);
        }
    }
    by_type.into_values().collect()
}

/// A store's backtest CSV, summed per day by the agent's own [`daily_sums`].
fn read_backtest(path: &Path, store: &StoreReport) -> Option<Backtest> {
    let mut reader = csv::Reader::from_path(path).ok()?;
    let columns: Vec<&str> = reader.headers().ok()?.iter().collect();
    let mut table = ResultTable::new("backtest", &columns);
    for row in reader.records() {
        table.push(row.ok()?.iter().map(str::to_string).collect());
    }
    let model = table
        .columns
        .iter()
        .position(|c| c == "model")
        .and_then(|i| table.rows.last()?.get(i).cloned())
        .unwrap_or_default();
    let sums = daily_sums(&table, &["actual_units", "forecast_units", "naive_units"])?;
    let days = sums
        .iter()
        .enumerate()
        .map(|(i, (_, v))| ((i + 1) as f64, v[0], v[1], v[2]))
        .collect();
    Some(Backtest {
        store_id: store.store_id.clone(),
        business_type: store.business_type.clone(),
        model,
        days,
    })
}

/// The demo's report as a page.
pub fn demand_page(r: &DemandReport, backtests: &[Backtest]) -> Page {
    let subtitle = format!(
        "{} stores · {} rounds of {} · {} held-out days · {:.1} s",
        r.stores.len(),
        r.rounds,
        r.strategy,
        r.holdout_days,
        r.wall_seconds
    );
    let mut page = Page::new("fedretail demand forecasting").subtitle(&subtitle);
    summary(page.section("What joining gives each store"), r);
    groups(page.section("By business type, size and history"), r);
    per_store(page.section("Every store"), r);
    if !backtests.is_empty() {
        let section = page.section("Forecast against what sold");
        section.text("Daily units over the held-out days, all categories summed, for one store of each business type, from the backtest each store's agent wrote into its results folder.");
        for b in backtests {
            section.figure(
                &format!("backtest-{}", b.store_id),
                backtest_chart(b),
                &format!(
                    "{} ({}): kept forecaster {}",
                    b.store_id, b.business_type, b.model
                ),
            );
        }
    }
    let rounds: Vec<RoundPoint> = r.round_history.iter().map(RoundPoint::from).collect();
    let budget = r.privacy.as_ref().and_then(|p| p.budget_epsilon);
    let section = page.section("Training rounds");
    for (name, svg, caption) in round_charts("demand", &rounds, budget) {
        section.figure(&name, svg, caption);
    }
    page
}

/// A share as a percentage, for charts.
fn percent(v: Option<f64>) -> Option<f64> {
    v.map(|v| v * 100.0)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.1} %", x * 100.0))
}

fn signed(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:+.1} %", x * 100.0))
}

fn summary(section: &mut Section, r: &DemandReport) {
    let o = &r.overall;
    section.facts(vec![
        (
            "median WAPE, kept forecast".into(),
            pct(o.median_wape_forecast),
        ),
        (
            "median WAPE, store's own model".into(),
            pct(o.median_wape_local),
        ),
        (
            "median WAPE, federated".into(),
            pct(o.median_wape_federated),
        ),
        (
            "median WAPE, seasonal naive".into(),
            pct(o.median_wape_seasonal_naive),
        ),
        (
            "kept beats own model".into(),
            format!("{} of {}", o.forecast_beats_local, o.stores),
        ),
        (
            "kept clearly better / clearly worse than own".into(),
            format!(
                "{} / {} of {}",
                o.forecast_clearly_better_than_local, o.forecast_clearly_worse_than_local, o.stores
            ),
        ),
        (
            "kept no worse than naive".into(),
            format!("{} of {}", o.forecast_not_worse_than_naive, o.stores),
        ),
    ]);
    section.text("WAPE is the absolute forecast error over the held-out days as a share of units sold (lower is better). Each store keeps a forecaster (federated, personalized, its own, seasonal naive, or the ensemble of federated, personalized and its own) by its validation days, the days before the held-out ones: the federated model, unless another beat it there by more than one standard error. The held-out days play no part in the pick, so the held-out figures are honest. Gain is what joining gains a store: the median over stores of (own WAPE - kept WAPE) / own WAPE. Kept is clearly better (or worse) than own where the absolute error it saves per held-out day is beyond two standard errors of that mean; otherwise the two are the same within the noise of the store's days.");
    if let Some(beats) = o.expected_beats_local {
        section.text(&format!("Floor (a synthetic network only): the WAPE of the generator's own expected demand on the held-out days. What is left is the days' own noise, which no forecaster can know, so no forecast beats the floor but by luck; even the floor beats a store's own model at {beats} of {} stores.", o.stores));
    }
}

fn groups(section: &mut Section, r: &DemandReport) {
    let bands = [
        ("business type", &r.by_business_type),
        ("size band", &r.by_size_band),
        ("history band", &r.by_history_band),
    ];
    for (what, groups) in bands {
        let mut columns: Vec<Column<'_, GroupSummary>> = vec![
            ("seasonal naive", |g| percent(g.median_wape_seasonal_naive)),
            ("own model", |g| percent(g.median_wape_local)),
            ("federated", |g| percent(g.median_wape_federated)),
            ("personalized", |g| percent(g.median_wape_personalized)),
            ("kept", |g| percent(g.median_wape_forecast)),
        ];
        // Only a synthetic network has a floor to draw.
        if r.overall.median_wape_expected.is_some() {
            columns.push(("floor", |g| percent(g.median_wape_expected)));
        }
        let label = |g: &GroupSummary| format!("{} ({})", g.group, g.stores);
        let title = format!("Median WAPE by {what}");
        let chart = BarChart::of_rows(&title, "WAPE %", groups, label, &columns);
        section.figure(
            &format!("wape-by-{}", what.replace(' ', "-")),
            chart.svg(),
            &format!("Median held-out WAPE of each forecaster, by {what} (stores in brackets)."),
        );
    }
    let rows = r
        .by_business_type
        .iter()
        .chain(&r.by_size_band)
        .chain(&r.by_history_band)
        .chain([&r.small_and_young, &r.overall])
        .map(|g| {
            vec![
                g.group.clone(),
                g.stores.to_string(),
                pct(g.median_wape_seasonal_naive),
                pct(g.median_wape_local),
                pct(g.median_wape_federated),
                pct(g.median_wape_personalized),
                pct(g.median_wape_forecast),
                pct(g.median_wape_expected),
                signed(g.median_gain_over_local),
                format!("{}/{}", g.forecast_beats_local, g.stores),
                format!("{}/{}", g.forecast_not_worse_than_naive, g.stores),
                g.kept_vs_own(" / "),
            ]
        })
        .collect();
    section.table(
        &[
            "group",
            "stores",
            "naive",
            "own",
            "federated",
            "personalized",
            "kept",
            "floor",
            "gain",
            "kept < own",
            "kept <= naive",
            "kept vs own: better / same / worse",
        ],
        rows,
    );
}

fn per_store(section: &mut Section, r: &DemandReport) {
    let mut stores: Vec<&StoreReport> = r.stores.iter().collect();
    stores.sort_by(|a, b| (&a.business_type, &a.store_id).cmp(&(&b.business_type, &b.store_id)));
    let columns: [Column<'_, &StoreReport>; 3] = [
        ("own model", |s| percent(s.wape_local)),
        ("federated", |s| percent(s.wape_federated)),
        ("kept", |s| percent(s.wape_forecast)),
    ];
    let label = |s: &&StoreReport| format!("{} {}", s.business_type, s.store_id);
    let chart = BarChart::of_rows(
        "Held-out WAPE per store",
        "WAPE %",
        &stores,
        label,
        &columns,
    )
    .size(1200, 440);
    section.figure("wape-per-store", chart.svg(), "Each store's own model, the federated one, and the forecaster it kept, grouped by business type.");
    let rows = stores
        .iter()
        .map(|s| {
            vec![
                s.store_id.clone(),
                s.business_type.clone(),
                s.size_band.clone(),
                s.history_days.to_string(),
                pct(s.wape_seasonal_naive),
                pct(s.wape_local),
                pct(s.wape_federated),
                pct(s.wape_personalized),
                s.chosen.clone().unwrap_or_default(),
                pct(s.wape_chosen),
                pct(s.wape_expected),
                pct(s.bias_forecast),
                s.kept_vs_local.clone().unwrap_or_default(),
            ]
        })
        .collect();
    section.table(
        &[
            "store",
            "type",
            "size",
            "history days",
            "naive",
            "own",
            "federated",
            "personalized",
            "chosen",
            "chosen WAPE",
            "floor",
            "kept bias",
            "kept vs own",
        ],
        rows,
    );
}

fn backtest_chart(b: &Backtest) -> String {
    let series = |name: &str, f: fn(&(f64, f64, f64, f64)) -> f64| {
        Series::new(name, b.days.iter().map(|d| (d.0, f(d))).collect())
    };
    LineChart::new(
        &format!("{} ({})", b.store_id, b.business_type),
        "held-out day",
        "units",
    )
    .integer_x()
    .from_zero()
    .series(series("actual", |d| d.1))
    .series(series(&format!("forecast ({})", b.model), |d| d.2))
    .series(series("seasonal naive", |d| d.3))
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backtest_sums_categories_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backtest.csv");
        std::fs::write(&path, "date,category,actual_units,forecast_units,naive_units,model\n2024-01-02,a,3,2.5,1,local\n2024-01-01,a,1,1.5,2,local\n2024-01-01,b,2,2.0,2,local\n").unwrap();
        let store = StoreReport {
            store_id: "s".into(),
            business_type: "florist".into(),
            ..Default::default()
        };
        let b = read_backtest(&path, &store).unwrap();
        assert_eq!(b.days, vec![(1.0, 3.0, 3.5, 4.0), (2.0, 3.0, 2.5, 1.0)]);
        assert_eq!(b.model, "local");
        assert!(read_backtest(&dir.path().join("missing.csv"), &store).is_none());
    }
}
