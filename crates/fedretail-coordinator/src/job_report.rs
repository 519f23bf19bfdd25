//! The HTML report of a coordinator's jobs: per job its rounds (convergence, time,
//! bytes, ε against the budget) and what each store measured on its own held-out data.
//! Only what the job outcome holds, which is what crossed the wire: no store's rows.

use crate::driver::JobOutcome;
use fedretail_core::TaskMetrics;
use fedretail_report::{BarChart, LineChart, Page, Series};

/// Metrics shown per store, errors and scores first.
const PREFERRED: [&str; 8] = [
    "wape_local",
    "wape_federated",
    "wape_forecast",
    "auc_local",
    "auc_federated",
    "silhouette_local",
    "silhouette_federated",
    "flag_rate",
];

/// Up to three metrics every store in `reported` has, the preferred ones first.
pub(crate) fn shown_metrics<'a>(reported: impl Iterator<Item = &'a TaskMetrics>) -> Vec<String> {
    let reported: Vec<&TaskMetrics> = reported.filter(|m| !m.is_empty()).collect();
    let Some(first) = reported.first() else {
        return Vec::new();
    };
    let common = |m: &str| reported.iter().all(|r| r.contains_key(m));
    let mut shown: Vec<String> = PREFERRED
        .iter()
        .filter(|m| common(m))
        .map(|m| m.to_string())
        .collect();
    let rest: Vec<String> = first
        .keys()
        .filter(|m| common(m) && !shown.contains(m))
        .cloned()
        .collect();
    shown.extend(rest);
    shown.truncate(3);
    shown
}

/// The report of every job a coordinator ran.
pub fn outcomes_page(outcomes: &[JobOutcome]) -> Page {
    let failed = outcomes.iter().filter(|o| o.failed).count();
    let subtitle = format!("{} jobs, {} failed", outcomes.len(), failed);
    let mut page = Page::new("fedretail jobs").subtitle(&subtitle);
    for o in outcomes {
        job_sections(&mut page, o);
    }
    page
}

fn job_sections(page: &mut Page, o: &JobOutcome) {
    let mut facts = vec![
        ("status".to_string(), o.status.clone()),
        ("rounds".into(), o.rounds.len().to_string()),
        ("stores evaluated".into(), o.evaluations.len().to_string()),
        (
            "stores sat out".into(),
            o.stores_not_taking_part.len().to_string(),
        ),
        ("wall time".into(), format!("{:.1} s", o.wall_seconds)),
        (
            "kB up / down".into(),
            format!(
                "{:.0} / {:.0}",
                o.bytes_up as f64 / 1e3,
                o.bytes_down as f64 / 1e3
            ),
        ),
    ];
    if let Some(p) = &o.privacy {
        let spent = p.epsilon_spent.map_or("-".into(), |e| format!("{e:.2}"));
        let budget = p
            .budget_epsilon
            .map_or("no budget".into(), |b| format!("of {b:.2}"));
        facts.push(("ε spent".into(), format!("{spent} {budget}")));
    }
    let heading = format!("Job {}: {} by {}", o.job_id, o.task, o.strategy);
    let section = page.section(&heading);
    section.facts(facts);
    let rounds: Vec<RoundPoint> = o.rounds.iter().map(RoundPoint::from).collect();
    let budget = o.privacy.as_ref().and_then(|p| p.budget_epsilon);
    for (name, svg, caption) in round_charts(&o.job_id, &rounds, budget) {
        section.figure(&name, svg, caption);
    }
    outcome_stores(section, o);
}

/// What the round charts draw of a round.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RoundPoint {
    pub round: u64,
    pub step_norm: f64,
    pub seconds: f64,
    pub epsilon_spent: Option<f64>,
    pub train_loss: Option<f64>,
}

impl From<&crate::RoundRecord> for RoundPoint {
    fn from(r: &crate::RoundRecord) -> Self {
        RoundPoint {
            round: r.round,
            step_norm: r.step_norm,
            seconds: r.seconds,
            epsilon_spent: r.epsilon_spent,
            train_loss: r.train_loss,
        }
    }
}

/// Convergence, round time and, when noise is added, ε spent (against the budget), per round.
pub fn round_charts(
    job_id: &str,
    rounds: &[RoundPoint],
    budget: Option<f64>,
) -> Vec<(String, String, &'static str)> {
    let points = |f: fn(&RoundPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        rounds
            .iter()
            .filter_map(|r| Some((r.round as f64, f(r)?)))
            .collect()
    };
    let mut charts = Vec::new();
    let loss = points(|r| r.train_loss);
    if !loss.is_empty() {
        let chart = LineChart::new("Training loss", "round", "mean loss per row")
            .integer_x()
            .markers()
            .series(Series::new("stores' training loss", loss));
        charts.push((format!("{job_id}-loss"), chart.svg(), "Mean loss of each round's starting model on the stores' training rows, weighted as their updates are (sent only with plain updates)."));
    }
    let step = LineChart::new(
        "Convergence: size of each round's step",
        "round",
        "step norm",
    )
    .integer_x()
    .log_y()
    .markers()
    .series(Series::new("step norm", points(|r| Some(r.step_norm))));
    charts.push((
        format!("{job_id}-convergence"),
        step.svg(),
        "How far each round moved the shared model.",
    ));
    let time = LineChart::new("Round time", "round", "seconds")
        .integer_x()
        .from_zero()
        .markers()
        .series(Series::new("wall time", points(|r| Some(r.seconds))));
    charts.push((
        format!("{job_id}-round-time"),
        time.svg(),
        "Wall time of each round.",
    ));
    let eps = points(|r| r.epsilon_spent);
    if !eps.is_empty() {
        let mut chart = LineChart::new("Privacy budget", "round", "ε")
            .markers()
            .integer_x()
            .from_zero();
        if let (Some(b), Some(first), Some(last)) = (budget, eps.first(), eps.last()) {
            chart = chart.series(Series::new("budget", vec![(first.0, b), (last.0, b)]));
        }
        chart = chart.series(Series::new("ε spent", eps));
        charts.push((
            format!("{job_id}-epsilon"),
            chart.svg(),
            "ε spent after each round at the job's δ.",
        ));
    }
    charts
}

/// A store's line in the stores table: who it is, where it stands, what it reported.
pub(crate) struct StoreLine<'a> {
    pub store_id: &'a str,
    pub business_type: &'a str,
    /// Its state, on the live dashboard.
    pub state: Option<&'a str>,
    pub train_rows: Option<u64>,
    pub metrics: &'a TaskMetrics,
}

/// The stores table and, once stores reported, a chart of what they measured.
pub(crate) fn store_blocks(
    section: &mut fedretail_report::Section,
    name: &str,
    lines: &[StoreLine<'_>],
) {
    let shown = shown_metrics(lines.iter().map(|l| l.metrics));
    let with_state = lines.iter().any(|l| l.state.is_some());
    let mut columns = vec!["store", "business type"];
    if with_state {
        columns.push("state");
    }
    columns.push("training rows");
    columns.extend(shown.iter().map(String::as_str));
    let rows = lines
        .iter()
        .map(|l| {
            let mut row = vec![l.store_id.to_string(), l.business_type.to_string()];
            if with_state {
                row.push(l.state.unwrap_or_default().to_string());
            }
            row.push(l.train_rows.map(|n| n.to_string()).unwrap_or_default());
            let value = |m: &String| l.metrics.get(m).map(|v| format!("{v:.3}"));
            row.extend(shown.iter().map(|m| value(m).unwrap_or_default()));
            row
        })
        .collect();
    section.table(&columns, rows);
    if shown.is_empty() {
        return;
    }
    let ids = lines.iter().map(|l| l.store_id.to_string()).collect();
    let mut chart =
        BarChart::new("What each store measured on its own held-out data", "", ids).size(980, 400);
    for m in &shown {
        chart = chart.group(m, lines.iter().map(|l| l.metrics.get(m).copied()).collect());
    }
    section.figure(
        name,
        chart.svg(),
        "Metrics each store reported for the final model; its results stay at the store.",
    );
}

fn outcome_stores(section: &mut fedretail_report::Section, o: &JobOutcome) {
    let lines: Vec<StoreLine<'_>> = o
        .evaluations
        .iter()
        .map(|e| StoreLine {
            store_id: &e.store_id,
            business_type: &e.business_type,
            state: None,
            train_rows: Some(e.num_train_examples),
            metrics: &e.metrics,
        })
        .collect();
    store_blocks(section, &format!("{}-stores", o.job_id), &lines);
    if !o.stores_not_taking_part.is_empty() {
        let rows = o
            .stores_not_taking_part
            .iter()
            .map(|(s, r)| vec![s.clone(), r.clone()])
            .collect();
        section.table(&["store that sat out", "why"], rows);
    }
}
