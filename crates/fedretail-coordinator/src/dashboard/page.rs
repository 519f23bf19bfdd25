//! The dashboard's sections, drawn from its view.

use super::{RoundView, View};
use crate::job_report::{round_charts, store_blocks, StoreLine};
use fedretail_report::{LineChart, Page, Series};

impl View {
    pub(super) fn page(&self) -> Page {
        let subtitle = match &self.job {
            Some(j) => format!(
                "job {} · {} · {} · {}",
                j.job_id, j.task, j.strategy, j.status
            ),
            None => self
                .notice
                .clone()
                .unwrap_or_else(|| "waiting for a job".into()),
        };
        let mut page = Page::new("fedretail coordinator").subtitle(&subtitle);
        self.network(&mut page);
        self.training(&mut page);
        self.stores(&mut page);
        self.messages(&mut page);
        page
    }

    fn network(&self, page: &mut Page) {
        let ready = self
            .stores
            .values()
            .filter(|s| s.train_rows.is_some())
            .count();
        let sum = |f: fn(&RoundView) -> u64| self.rounds.iter().map(f).sum::<u64>();
        let mut facts = vec![
            (
                "stores connected".to_string(),
                self.stores.len().to_string(),
            ),
            ("stores ready".to_string(), ready.to_string()),
        ];
        if let Some(j) = &self.job {
            facts.push(("round".into(), format!("{} / {}", j.round, j.total_rounds)));
        }
        facts.extend([
            ("rounds done".to_string(), self.rounds.len().to_string()),
            (
                "dropped updates".into(),
                sum(|r| r.dropped as u64).to_string(),
            ),
            (
                "refused messages".into(),
                self.refused.values().sum::<u64>().to_string(),
            ),
            (
                "kB up".into(),
                format!("{:.1}", sum(|r| r.bytes_up) as f64 / 1e3),
            ),
            (
                "kB down".into(),
                format!("{:.1}", sum(|r| r.bytes_down) as f64 / 1e3),
            ),
        ]);
        if let Some(eps) = self.rounds.last().and_then(|r| r.point.epsilon_spent) {
            let budget = self.job.as_ref().and_then(|j| j.budget_epsilon);
            let text = match budget {
                Some(b) => format!("{eps:.2} of {b:.2}"),
                None => format!("{eps:.2}"),
            };
            facts.push(("ε spent".into(), text));
        }
        page.section("Network").facts(facts);
    }

    fn training(&self, page: &mut Page) {
        let rounds: Vec<_> = self.rounds.iter().map(|r| r.point).collect();
        let job = self.job.as_ref();
        let id = job.map_or("job", |j| j.job_id.as_str());
        let section = page.section("Training");
        for (name, svg, caption) in round_charts(id, &rounds, job.and_then(|j| j.budget_epsilon)) {
            section.figure(&name, svg, caption);
        }
        let kb = |f: fn(&RoundView) -> u64| -> Vec<(f64, f64)> {
            self.rounds
                .iter()
                .map(|r| (r.point.round as f64, f(r) as f64 / 1e3))
                .collect()
        };
        let bytes = LineChart::new("Bytes on the wire per round", "round", "kB")
            .integer_x()
            .from_zero()
            .series(Series::new("up (updates)", kb(|r| r.bytes_up)))
            .series(Series::new("down (models)", kb(|r| r.bytes_down)));
        section.figure(
            "bytes",
            bytes.svg(),
            "Payload bytes of each round, both ways.",
        );
    }

    fn stores(&self, page: &mut Page) {
        let lines: Vec<StoreLine<'_>> = self
            .stores
            .iter()
            .map(|(id, s)| StoreLine {
                store_id: id,
                business_type: &s.business_type,
                state: Some(&s.state),
                train_rows: s.train_rows,
                metrics: &s.metrics,
            })
            .collect();
        store_blocks(page.section("Stores"), "store-metrics", &lines);
    }

    fn messages(&self, page: &mut Page) {
        let section = page.section("Messages and events");
        if !self.refused.is_empty() {
            let rows = self
                .refused
                .iter()
                .map(|(r, n)| vec![r.to_string(), n.to_string()])
                .collect();
            section.table(&["refused message", "count"], rows);
        }
        let recent = self.recent.iter().rev().map(|l| vec![l.clone()]).collect();
        section.table(&["recent events (newest first)"], recent);
        for j in &self.jobs_finished {
            section.text(j);
        }
    }
}
