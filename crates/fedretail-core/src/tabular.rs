//! Tabular classification (credit scoring and the like) over stores that each hold a
//! table with the same columns. Before training, the federation agrees on how to turn
//! a row into numbers: each store describes its training rows with aggregates only
//! ([`TableSummary`]: per numeric column a count, sum and sum of squares; per text
//! column the values seen at least `min_category_rows` times), and the coordinator
//! merges the descriptions into one [`TabularEncoding`] (pooled mean and standard
//! deviation, the union of categories) that every store then applies. The merge is a
//! sum, so the encoding equals the one computed over the pooled training rows.
//!
//! ```
//! use fedretail_core::tabular::{merge_summaries, ColumnSummary, TableSummary};
//! let store = |n: f64, sum: f64, sum_sq: f64, level: &str| TableSummary {
//!     rows: n as u64,
//!     columns: vec![
//!         ColumnSummary::numeric("age", n, sum, sum_sq),
//!         ColumnSummary::text("home", [(level.to_string(), n as u64)].into()),
//!     ],
//! };
//! let enc = merge_summaries(&[store(2.0, 6.0, 20.0, "rent"), store(2.0, 2.0, 2.0, "own")], 50)
//!     .unwrap();
//! assert_eq!(enc.feature_names(), vec!["age", "home=own", "home=rent"]);
//! assert_eq!(enc.dim(), 3);
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a store says about one column of its training rows: aggregates, never rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSummary {
    pub name: String,
    /// Numeric at this store (every present value parses as a finite number):
    /// present values, their sum and sum of squares.
    pub numeric: Option<[f64; 3]>,
    /// Text at this store: each value seen at least `min_category_rows` times, with its
    /// count. Rarer values are left out, so a one-off value never leaves the store.
    pub levels: Option<BTreeMap<String, u64>>,
}

impl ColumnSummary {
    pub fn numeric(name: &str, count: f64, sum: f64, sum_sq: f64) -> Self {
        ColumnSummary {
            name: name.to_string(),
            numeric: Some([count, sum, sum_sq]),
            levels: None,
        }
    }

    pub fn text(name: &str, levels: BTreeMap<String, u64>) -> Self {
        ColumnSummary {
            name: name.to_string(),
            numeric: None,
            levels: Some(levels),
        }
    }
}

/// A store's description of its training rows, for the encoding the job agrees on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSummary {
    /// Training rows.
    pub rows: u64,
    /// Feature columns (the target and excluded columns left out), in the table's order.
    pub columns: Vec<ColumnSummary>,
}

/// How one column becomes model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EncodedColumn {
    /// `(value - mean) / sd`; a missing value (or `sd == 0`) becomes 0, the mean.
    Numeric { name: String, mean: f64, sd: f64 },
    /// One input per level, 1 for the row's level; an unseen or missing level is all 0.
    Categorical { name: String, levels: Vec<String> },
}

/// A column the federation leaves out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DroppedColumn {
    pub name: String,
    pub reason: String,
}

/// The encoding every store applies to its rows (agreed before round 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TabularEncoding {
    pub columns: Vec<EncodedColumn>,
    #[serde(default)]
    pub dropped: Vec<DroppedColumn>,
}

impl TabularEncoding {
    /// Model inputs: one per numeric column, one per level of a categorical one.
    pub fn dim(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                EncodedColumn::Numeric { .. } => 1,
                EncodedColumn::Categorical { levels, .. } => levels.len(),
            })
            .sum()
    }

    /// Input names in model order (`column` or `column=level`).
    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.dim());
        for c in &self.columns {
            match c {
                EncodedColumn::Numeric { name, .. } => out.push(name.clone()),
                EncodedColumn::Categorical { name, levels } => {
                    out.extend(levels.iter().map(|l| format!("{name}={l}")))
                }
            }
        }
        out
    }
}

/// Why the stores' descriptions cannot be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodingError {
    #[error("no store described its table")]
    NoSummaries,
    #[error("no usable feature column is left ({0})")]
    NoFeatures(String),
}

/// One column as the stores together describe it.
#[derive(Default)]
struct Merged {
    numeric_at: usize,
    text_at: usize,
    stats: [f64; 3],
    levels: BTreeMap<String, u64>,
}

/// The pooled encoding of the stores' descriptions. A column is kept only if every
/// store has it; a column numeric at some stores and text at others, or with more than
/// `max_levels` categories (an id, a free-text field), is dropped with the reason.
pub fn merge_summaries(
    summaries: &[TableSummary],
    max_levels: usize,
) -> Result<TabularEncoding, EncodingError> {
    let first = summaries.first().ok_or(EncodingError::NoSummaries)?;
    let mut merged: BTreeMap<&str, Merged> = BTreeMap::new();
    for s in summaries {
        for c in &s.columns {
            let m = merged.entry(c.name.as_str()).or_default();
            if let Some(st) = c.numeric {
                m.numeric_at += 1;
                for (acc, v) in m.stats.iter_mut().zip(st) {
                    *acc += v;
                }
            }
            if let Some(levels) = &c.levels {
                m.text_at += 1;
                for (l, n) in levels {
                    *m.levels.entry(l.clone()).or_default() += n;
                }
            }
        }
    }
    let mut enc = TabularEncoding {
        columns: Vec::new(),
        dropped: Vec::new(),
    };
    for c in &first.columns {
        let m = &merged[c.name.as_str()];
        let present = m.numeric_at.max(m.text_at);
        match encode_column(&c.name, m, present, summaries.len(), max_levels) {
            Ok(e) => enc.columns.push(e),
            Err(reason) => enc.dropped.push(DroppedColumn {
                name: c.name.clone(),
                reason,
            }),
        }
    }
    if enc.dim() == 0 {
        let why = enc
            .dropped
            .iter()
            .map(|d| format!("{}: {}", d.name, d.reason))
            .collect::<Vec<_>>();
        return Err(EncodingError::NoFeatures(why.join("; ")));
    }
    Ok(enc)
}

fn encode_column(
    name: &str,
    m: &Merged,
    present: usize,
    stores: usize,
    max_levels: usize,
) -> Result<EncodedColumn, String> {
    if m.numeric_at > 0 && m.text_at > 0 {
        return Err(format!(
            "numbers at {} stores, text at {}",
            m.numeric_at, m.text_at
        ));
    }
    if present < stores {
        return Err(format!(
            "missing at {} of {stores} stores",
            stores - present
        ));
    }
    if m.numeric_at == stores {
        let [n, s, ss] = m.stats;
        let mean = if n > 0.0 { s / n } else { 0.0 };
        let sd = if n > 0.0 {
            (ss / n - mean * mean).max(0.0).sqrt()
        } else {
            0.0
        };
        return Ok(EncodedColumn::Numeric {
            name: name.to_string(),
            mean,
            sd,
        });
    }
    if m.levels.len() > max_levels {
        return Err(format!(
            "{} categories, more than the {max_levels} allowed (an id or free text?)",
            m.levels.len()
        ));
    }
    if m.levels.is_empty() {
        return Err("no category is common enough at any store".to_string());
    }
    Ok(EncodedColumn::Categorical {
        name: name.to_string(),
        levels: m.levels.keys().cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(name: &str, values: &[f64]) -> ColumnSummary {
        let n = values.len() as f64;
        let s: f64 = values.iter().sum();
        let ss: f64 = values.iter().map(|v| v * v).sum();
        ColumnSummary::numeric(name, n, s, ss)
    }

    #[test]
    fn pooled_mean_and_sd_equal_the_pooled_rows() {
        let a = [1.0, 2.0, 3.0];
        let b = [10.0, 20.0];
        let enc = merge_summaries(
            &[
                TableSummary {
                    rows: 3,
                    columns: vec![numeric("x", &a)],
                },
                TableSummary {
                    rows: 2,
                    columns: vec![numeric("x", &b)],
                },
            ],
            10,
        )
        .unwrap();
        let all: Vec<f64> = a.iter().chain(&b).copied().collect();
        let mean = all.iter().sum::<f64>() / 5.0;
        let sd = (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 5.0).sqrt();
        match &enc.columns[0] {
            EncodedColumn::Numeric { mean: m, sd: s, .. } => {
                assert!((m - mean).abs() < 1e-12 && (s - sd).abs() < 1e-12)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mixed_missing_and_id_like_columns_are_dropped_with_reasons() {
        let many: BTreeMap<String, u64> = (0..20).map(|i| (format!("id{i}"), 5)).collect();
        let s1 = TableSummary {
            rows: 5,
            columns: vec![
                numeric("age", &[1.0]),
                numeric("mixed", &[1.0]),
                ColumnSummary::text("id", many.clone()),
                numeric("only_here", &[2.0]),
            ],
        };
        let s2 = TableSummary {
            rows: 5,
            columns: vec![
                numeric("age", &[3.0]),
                ColumnSummary::text("mixed", [("a".to_string(), 5)].into()),
                ColumnSummary::text("id", many),
            ],
        };
        let enc = merge_summaries(&[s1, s2], 10).unwrap();
        assert_eq!(enc.feature_names(), vec!["age"]);
        let reasons: BTreeMap<&str, &str> = enc
            .dropped
            .iter()
            .map(|d| (d.name.as_str(), d.reason.as_str()))
            .collect();
        assert!(reasons["mixed"].contains("numbers at 1 stores, text at 1"));
        assert!(reasons["id"].contains("20 categories"));
        assert!(reasons["only_here"].contains("missing at 1 of 2"));
        let e = merge_summaries(&[], 10).unwrap_err();
        assert_eq!(e, EncodingError::NoSummaries);
    }
}
