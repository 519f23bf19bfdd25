//! HTML pages of the analytics runs: ROC curves for the classifiers, segments and
//! clusters in words with their shares, ε against accuracy for store-level DP, and for
//! runs over agents the coordinator's job report. Each page ends with the summary the
//! command printed.

use crate::attack::AttackReport;
use crate::byzantine::{Attack, ByzantineReport};
use crate::byzantine_demand::{cell_text, DemandByzantineReport};
use crate::classification::{ClassificationReport, SiloReport};
use crate::clustering::{
    AnomalyReport, ClusterDescription, GroupScores, SegmentReport, StoreSegmentReport,
};
use crate::dp_demand::DpDemandReport;
use crate::network_jobs::NetworkRunReport;
use fedretail_report::{BarChart, Column, LineChart, Page, Section, Series};

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

fn printed(page: &mut Page, summary: &str) {
    page.section("Summary as printed").preformatted(summary);
}

/// Credit scoring or churn, in process: ROC curves and AUC per party.
pub fn classification_page(r: &ClassificationReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} parties · {} FedAvg rounds · {:.1} s",
        r.silos.len(),
        r.rounds,
        r.wall_seconds
    );
    let mut page = Page::new(&format!("fedretail {}", r.task)).subtitle(&subtitle);
    let section = page.section("Pooled test rows of every party");
    section.facts(vec![
        ("AUC, each party alone".into(), num(r.pooled_auc_local)),
        ("AUC, logistic FedAvg".into(), num(r.pooled_auc_federated)),
        (
            "AUC, logistic exact federated".into(),
            num(r.pooled_auc_newton),
        ),
        (
            "AUC, logistic centralized".into(),
            num(r.pooled_auc_centralized),
        ),
        ("AUC, MLP FedAvg".into(), num(r.pooled_auc_mlp_federated)),
        (
            "AUC, MLP centralized".into(),
            num(r.pooled_auc_mlp_centralized),
        ),
    ]);
    let mut roc = LineChart::new("ROC curves", "false-positive rate", "true-positive rate")
        .diagonal()
        .size(640, 480);
    for c in &r.roc {
        roc = roc.series(Series::new(
            &format!("{} ({})", c.model, num(c.auc)),
            c.points.clone(),
        ));
    }
    section.figure(
        "roc",
        roc.svg(),
        "Every party's test rows pooled; the diagonal is a coin toss.",
    );
    let columns: [Column<'_, SiloReport>; 3] = [
        ("alone", |s| s.auc_local),
        ("exact federated", |s| s.auc_newton),
        ("MLP FedAvg", |s| s.auc_mlp_federated),
    ];
    let label = |s: &SiloReport| format!("{} ({})", s.silo, s.test_rows);
    let title = "AUC on each party's own test rows";
    let chart = BarChart::of_rows(title, "AUC", &r.silos, label, &columns).size(1100, 420);
    page.section("Each party").figure(
        "auc-per-party",
        chart.svg(),
        "Test rows in brackets; parties whose test rows hold one class only have no AUC.",
    );
    printed(&mut page, summary);
    page
}

fn clusters_section(section: &mut Section, name: &str, clusters: &[ClusterDescription]) {
    let cats = clusters
        .iter()
        .map(|c| format!("{} {}", name, c.cluster))
        .collect();
    let chart = BarChart::new(&format!("Share of points per {name}"), "%", cats).group(
        "share",
        clusters.iter().map(|c| Some(c.share * 100.0)).collect(),
    );
    section.figure(
        &format!("{name}-shares"),
        chart.svg(),
        "Summed counts the stores sent: an aggregate.",
    );
    let rows = clusters
        .iter()
        .map(|c| {
            vec![
                c.cluster.to_string(),
                format!("{:.1} %", c.share * 100.0),
                c.description.clone(),
            ]
        })
        .collect();
    section.table(&[name, "share", "in words"], rows);
}

/// Customer segments, in process: the segments in words, their shares, silhouettes.
pub fn segments_page(r: &SegmentReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} stores · {} rounds · {:.1} s",
        r.stores.len(),
        r.rounds,
        r.wall_seconds
    );
    let mut page = Page::new("fedretail customer segments").subtitle(&subtitle);
    let o = &r.overall;
    let section = page.section("The federated segments");
    section.facts(vec![
        (
            "silhouette, each store alone".into(),
            num(o.silhouette_local),
        ),
        ("silhouette, meta-model".into(), num(o.silhouette_meta)),
        ("silhouette, federated".into(), num(o.silhouette_federated)),
        (
            "largest gap to centralized".into(),
            format!("{:.1e}", r.centralized_gap),
        ),
    ]);
    clusters_section(section, "segment", &r.segments);
    let columns: [Column<'_, StoreSegmentReport>; 3] = [
        ("alone", |s| s.silhouette_local),
        ("meta-model", |s| s.silhouette_meta),
        ("federated", |s| s.silhouette_federated),
    ];
    let label = |s: &StoreSegmentReport| s.store_id.clone();
    let title = "Silhouette at each store";
    let chart = BarChart::of_rows(title, "silhouette", &r.stores, label, &columns).size(1100, 400);
    page.section("Each store").figure(
        "silhouette-per-store",
        chart.svg(),
        "Higher is better separated.",
    );
    printed(&mut page, summary);
    page
}

/// Customer and receipt anomalies, in process: clusters in words and AUC by type.
pub fn anomaly_page(r: &AnomalyReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} + {} rounds · {:.1} s",
        r.rounds_customers, r.rounds_receipts, r.wall_seconds
    );
    let mut page = Page::new("fedretail anomaly detection").subtitle(&subtitle);
    let section = page.section("How well anomalies are ranked, by business type");
    let columns: [Column<'_, GroupScores>; 5] = [
        ("customers, alone", |g| g.customer_auc_local),
        ("customers, meta", |g| g.customer_auc_meta),
        ("customers, federated", |g| g.customer_auc_federated),
        ("receipts, alone", |g| g.receipt_auc_local),
        ("receipts, federated", |g| g.receipt_auc_federated),
    ];
    let label = |g: &GroupScores| format!("{} ({})", g.group, g.stores);
    let title = "AUC of the anomaly scores on labelled anomalies";
    let auc = BarChart::of_rows(title, "", &r.by_business_type, label, &columns).svg();
    section.figure(
        "anomaly-auc",
        auc,
        "Mean over the stores of each type (in brackets).",
    );
    clusters_section(
        page.section("Customer clusters of the federated model"),
        "cluster",
        &r.federated_customer_clusters,
    );
    printed(&mut page, summary);
    page
}

/// Store-level DP for demand: ε spent against the forecast error.
pub fn dp_demand_page(r: &DpDemandReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} stores · {} rounds · δ = {:e} · {:.0} s",
        r.stores, r.rounds, r.delta, r.wall_seconds
    );
    let mut page = Page::new("fedretail demand under differential privacy").subtitle(&subtitle);
    let points: Vec<(f64, f64)> = r
        .rows
        .iter()
        .filter_map(|row| Some((row.epsilon_spent?, row.median_wape * 100.0)))
        .collect();
    let span = |y: f64| {
        let xs = points.iter().map(|p| p.0);
        let (lo, hi) = (
            xs.clone().fold(f64::INFINITY, f64::min),
            xs.fold(f64::NEG_INFINITY, f64::max),
        );
        if lo.is_finite() {
            vec![(lo, y * 100.0), (hi, y * 100.0)]
        } else {
            Vec::new()
        }
    };
    let chart = LineChart::new(
        "Median store WAPE against ε spent",
        "ε spent",
        "median WAPE %",
    )
    .markers()
    .series(Series::new("DP-FedAvg", points.clone()))
    .series(Series::new(
        "no DP (centralized fit)",
        span(r.median_wape_centralized),
    ))
    .series(Series::new("each store alone", span(r.median_wape_local)));
    page.section("Privacy against accuracy").figure(
        "epsilon-wape",
        chart.svg(),
        "Lower ε is stronger privacy; the flat lines are the references without DP.",
    );
    printed(&mut page, summary);
    page
}

/// The gradient-inversion attack: the printed table.
pub fn attack_page(r: &AttackReport, summary: &str) -> Page {
    let subtitle = format!("{} records, {} features", r.records, r.features);
    let mut page = Page::new("fedretail gradient-inversion attack").subtitle(&subtitle);
    printed(&mut page, summary);
    page
}

/// The poisoning harness: AUC per attack and aggregation rule.
pub fn byzantine_page(r: &ByzantineReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} stores, {} lying every round · {:.1} s",
        r.options.stores,
        r.attackers.len(),
        r.wall_seconds
    );
    let mut page = Page::new("fedretail poisoning harness").subtitle(&subtitle);
    let mut names = vec!["mean"];
    names.extend(r.options.rules.iter().map(|x| x.name()));
    let rows = Attack::ALL
        .iter()
        .map(|&attack| {
            let mut row = vec![attack.name().to_string()];
            for n in &names {
                let auc = r
                    .cells
                    .iter()
                    .find(|c| c.attack == attack && c.aggregation == *n)
                    .and_then(|c| c.pooled_auc);
                row.push(auc.map_or("failed".into(), |a| format!("{a:.3}")));
            }
            row
        })
        .collect();
    let mut columns = vec!["attack"];
    columns.extend(&names);
    page.section("Pooled AUC on the honest stores' held-out rows")
        .table(&columns, rows);
    printed(&mut page, summary);
    page
}

/// Jobs run over agents: the coordinator's job report, then the summary.
pub fn byzantine_demand_page(r: &DemandByzantineReport, summary: &str) -> Page {
    let subtitle = format!(
        "{} stores, {} lying every round · {:.1} s",
        r.stores,
        r.attackers.len(),
        r.wall_seconds
    );
    let mut page = Page::new("fedretail poisoning harness: demand").subtitle(&subtitle);
    let mut names = vec!["mean"];
    names.extend(r.options.rules.iter().map(|x| x.name()));
    let rows = Attack::ALL
        .iter()
        .map(|&attack| {
            std::iter::once(attack.name().to_string())
                .chain(names.iter().map(|n| cell_text(r, attack, n)))
                .collect()
        })
        .collect();
    let mut columns = vec!["attack"];
    columns.extend(&names);
    page.section("Pooled WAPE on the honest stores' held-out days (points above the clean run)")
        .table(&columns, rows);
    printed(&mut page, summary);
    page
}

pub fn network_run_page(r: &NetworkRunReport, summary: &str) -> Page {
    let outcomes: Vec<_> = r.jobs.iter().map(|j| j.job.clone()).collect();
    let mut page = fedretail_coordinator::outcomes_page(&outcomes);
    printed(&mut page, summary);
    page
}
