//! What people look at: charts drawn as SVG (`plotters`, no font stack: the viewer
//! draws the text) and pages of headings, text, tables and figures rendered as one
//! self-contained HTML file. The same [`Page`] is written as a report after a run and
//! rendered live by the coordinator's dashboard.
//!
//! ```
//! use fedretail_report::{LineChart, Page, Series};
//! let mut page = Page::new("Demand job");
//! let chart = LineChart::new("Round time", "round", "seconds")
//!     .series(Series::new("round", vec![(1.0, 0.2), (2.0, 0.3)]));
//! page.section("Rounds").figure("round-time", chart.svg(), "Wall time of each round");
//! assert!(page.to_html().contains("<svg"));
//! ```
//!
//! **Invariant:** this crate draws what it is given. It knows nothing of stores, jobs or
//! the wire, and does no IO but [`Page::write`].

mod chart;
mod page;

pub use chart::{BarChart, Column, LineChart, Series};
pub use page::{escape, Block, Page, Section};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
