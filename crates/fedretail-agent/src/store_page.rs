//! The page a shop owner opens: `report.html` in each job's results folder, drawn at
//! the store from what the store keeps (its tables and its own metrics). Demand gets
//! two charts: the held-out days as they happened against the kept forecast and
//! seasonal naive, and the days ahead with their interval; every table gets a preview
//! and the name of its CSV.

use fedretail_core::TaskKind;
use fedretail_models::metrics::{kept_vs_local, CLEARLY_BEYOND_SE};
use fedretail_models::{ResultTable, StoreResults};
use fedretail_report::{LineChart, Page, Series};
use std::collections::BTreeMap;

/// Rows of each table shown on the page (the CSV has them all).
const PREVIEW_ROWS: usize = 25;

/// Sums the named numeric columns per date: (date, sums) in date order. None when the
/// table lacks one of them.
pub fn daily_sums(table: &ResultTable, columns: &[&str]) -> Option<Vec<(String, Vec<f64>)>> {
    let find = |name: &str| table.columns.iter().position(|c| c == name);
    let date = find("date")?;
    let idx: Vec<usize> = columns.iter().map(|c| find(c)).collect::<Option<_>>()?;
    let mut days: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for row in &table.rows {
        let sums = days
            .entry(row.get(date)?.as_str())
            .or_insert_with(|| vec![0.0; idx.len()]);
        for (sum, &i) in sums.iter_mut().zip(&idx) {
            *sum += row.get(i)?.parse::<f64>().ok()?;
        }
    }
    Some(days.into_iter().map(|(d, s)| (d.to_string(), s)).collect())
}

/// One line per column of `days`, against the day's index (1 = first day).
fn day_chart(title: &str, days: &[(String, Vec<f64>)], names: &[&str]) -> String {
    let mut chart = LineChart::new(title, "day", "units, all categories")
        .integer_x()
        .from_zero()
        .size(640, 340);
    for (k, name) in names.iter().enumerate() {
        let points = days
            .iter()
            .enumerate()
            .map(|(i, (_, v))| ((i + 1) as f64, v[k]));
        chart = chart.series(Series::new(name, points.collect()));
    }
    chart.svg()
}

fn first_and_last(days: &[(String, Vec<f64>)]) -> String {
    match (days.first(), days.last()) {
        (Some(a), Some(b)) => format!("days 1 to {} are {} to {}", days.len(), a.0, b.0),
        _ => String::new(),
    }
}

/// A forecaster as the shop owner would name it.
fn forecaster_in_words(name: &str) -> &'static str {
    match name {
        "federated" => "the network's shared model",
        "cluster" => "the shared model of the stores most like yours",
        "personalized" => "the network's model fine-tuned on your own days",
        "local" => "your own model, trained on your data alone",
        "seasonal_naive" => "the same day last week",
        "ensemble" => "the average of the network's, the fine-tuned and your own model",
        _ => "an unnamed forecaster",
    }
}

/// What the store keeps and what joining the network did for it, in words, from the
/// store's own metrics (None when it has not scored its forecasts).
fn forecast_verdict(m: &BTreeMap<String, f64>) -> Option<String> {
    let kept = m.keys().find_map(|k| k.strip_prefix("forecast_by_"))?;
    let pct = |k: &str| m.get(k).map(|v| format!("{:.1} %", v * 100.0));
    let mut text = format!(
        "You keep {}, chosen on the days just before the held-out ones (the network's shared model, unless another forecaster did clearly better on them).",
        forecaster_in_words(kept)
    );
    if let (Some(kept_off), Some(own), Some(naive)) =
        (pct("wape_forecast"), pct("wape_local"), pct("wape_naive"))
    {
        text += &format!(
            " On the held-out days it was off by {kept_off} of the units you sold; your own model alone by {own}, and the same day last week by {naive}."
        );
    }
    let gain = m
        .get("gain_over_local_per_day")
        .zip(m.get("gain_over_local_se"));
    if let (Some((&mean, &se)), false) = (gain, kept == "local") {
        // "Give or take" is the band a difference must leave to count as clear.
        let (units, band) = (mean.abs(), CLEARLY_BEYOND_SE * se);
        text += &match kept_vs_local(mean, se) {
            "better" => format!(" Joining the network made your forecast clearly better: {units:.1} fewer units off a day (give or take {band:.1})."),
            "worse" => format!(" On these days your own model would have done clearly better: it was {units:.1} fewer units off a day (give or take {band:.1})."),
            _ => format!(" Against your own model the difference, {units:.1} units a day, is within the day-to-day ups and downs of your sales (give or take {band:.1})."),
        };
    }
    Some(text)
}

fn demand_charts(page: &mut Page, results: &StoreResults) {
    let table = |name: &str| results.tables.iter().find(|t| t.name == name);
    let section = page.section("Your forecast");
    if let Some(text) = forecast_verdict(&results.metrics) {
        section.text(&text);
    }
    let past = ["actual_units", "forecast_units", "naive_units"];
    if let Some(days) = table("backtest").and_then(|t| daily_sums(t, &past)) {
        let svg = day_chart(
            "The held-out days: what sold and what was forecast",
            &days,
            &["sold", "kept forecast", "same day last week"],
        );
        let caption = format!(
            "The last days of your history, which no model saw while it was chosen ({}).",
            first_and_last(&days)
        );
        section.figure("backtest", svg, &caption);
    }
    let ahead = ["forecast_units", "lower", "upper"];
    if let Some(days) = table("forecast").and_then(|t| daily_sums(t, &ahead)) {
        let svg = day_chart(
            "The days ahead",
            &days,
            &["forecast", "sum of low bounds", "sum of high bounds"],
        );
        let caption = format!(
            "Your forecast for the coming days ({}), with the categories' 80 % bounds added up (wider than an 80 % interval of the total); forecast.csv has each category.",
            first_and_last(&days)
        );
        section.figure("forecast", svg, &caption);
    }
}

/// Whose results a page shows: the store, the job, the task and the model's version.
pub struct PageHeading<'a> {
    pub store_id: &'a str,
    pub job_id: &'a str,
    pub kind: TaskKind,
    pub model_version: u64,
}

/// The page of one job's results at one store.
pub fn store_page(heading: &PageHeading<'_>, results: &StoreResults) -> Page {
    let kind = heading.kind;
    let subtitle = format!(
        "store {} · job {} · model version {}",
        heading.store_id, heading.job_id, heading.model_version
    );
    let mut page =
        Page::new(&format!("Your {} results", kind.name().replace('_', " "))).subtitle(&subtitle);
    if kind == TaskKind::Demand {
        demand_charts(&mut page, results);
    }
    let metrics = results
        .metrics
        .iter()
        .map(|(k, v)| vec![k.clone(), format!("{v:.4}")])
        .collect();
    let section = page.section("How the model did on your own held-out data");
    section.text("These numbers were computed here, on your data; only they, never your rows, went to the coordinator.");
    section.table(&["metric", "value"], metrics);
    for t in &results.tables {
        let section = page.section(&format!("{}.csv", t.name));
        let shown = t.rows.len().min(PREVIEW_ROWS);
        section.text(&format!(
            "{} rows; the first {shown} below, all of them in {}.csv.",
            t.rows.len(),
            t.name
        ));
        let columns: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        section.table(&columns, t.rows[..shown].to_vec());
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_verdict_names_the_kept_forecast_and_what_joining_did_for_the_store() {
        let scored = [
            ("wape_forecast", 0.25),
            ("wape_local", 0.4),
            ("wape_naive", 0.5),
        ];
        let with = |kept: &str, mean: f64, se: f64| {
            let mut m = metrics(&scored);
            m.insert(format!("forecast_by_{kept}"), 1.0);
            m.insert("gain_over_local_per_day".into(), mean);
            m.insert("gain_over_local_se".into(), se);
            forecast_verdict(&m).unwrap()
        };
        let better = with("federated", 3.0, 1.0);
        assert!(better.contains("the network's shared model"), "{better}");
        assert!(better.contains("off by 25.0 %") && better.contains("alone by 40.0 %"));
        assert!(better.contains("clearly better: 3.0 fewer units off a day (give or take 2.0)"));
        let worse = with("personalized", -3.0, 1.0);
        assert!(
            worse.contains("your own model would have done clearly better"),
            "{worse}"
        );
        let same = with("ensemble", 1.0, 1.0);
        assert!(
            same.contains("within the day-to-day ups and downs"),
            "{same}"
        );
        // Keeping its own model, a store is told nothing about gaining over it.
        let own = with("local", 0.0, 0.0);
        assert!(own.contains("your own model, trained on your data alone"));
        assert!(!own.contains("a day"), "{own}");
        // A store that scored nothing gets no verdict.
        assert_eq!(forecast_verdict(&metrics(&scored)), None);
    }

    #[test]
    fn daily_sums_add_up_categories_in_date_order_and_refuse_bad_tables() {
        let mut t = ResultTable::new("backtest", &["date", "category", "actual_units"]);
        t.push(vec!["2024-01-02".into(), "a".into(), "3".into()]);
        t.push(vec!["2024-01-01".into(), "a".into(), "1".into()]);
        t.push(vec!["2024-01-01".into(), "b".into(), "2.5".into()]);
        let days = daily_sums(&t, &["actual_units"]).unwrap();
        assert_eq!(
            days,
            vec![
                ("2024-01-01".to_string(), vec![3.5]),
                ("2024-01-02".to_string(), vec![3.0])
            ]
        );
        assert!(daily_sums(&t, &["missing"]).is_none());
        t.push(vec!["2024-01-03".into(), "a".into(), "lots".into()]);
        assert!(daily_sums(&t, &["actual_units"]).is_none());
    }
}
