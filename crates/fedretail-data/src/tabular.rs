//! A tabular file with a binary target (credit scoring and the like), split into silos
//! by a column, prepared as a federation would: numeric columns mean-imputed and
//! standardized with pooled training statistics that are themselves a federated sum
//! (count, sum and sum of squares per silo), categorical columns one-hot over the
//! union of the silos' categories, a missing category all zeros.

use crate::error::{sql_err, DataError};
use crate::source::{register_file, text_value};
use datafusion::prelude::{SessionConfig, SessionContext};
use fedretail_models::LabeledRows;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct TabularSpec {
    /// Target column.
    pub target: String,
    /// The target value that counts as positive (e.g. `bad`); the column must have
    /// exactly one other value.
    pub positive: String,
    /// Column whose value names the silo (e.g. `Job`); rows without it are dropped.
    pub split_by: String,
    /// Share of each silo held out for testing, stratified by the target.
    pub test_fraction: f64,
    pub seed: u64,
    /// A silo with fewer training rows (or only one class) is skipped, and says so.
    pub min_train_rows: usize,
}

#[derive(Debug, Clone)]
pub struct TabularSilo {
    pub name: String,
    pub train: LabeledRows,
    pub test: LabeledRows,
    /// Why this silo takes no part, when it does not.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TabularTable {
    pub feature_names: Vec<String>,
    pub silos: Vec<TabularSilo>,
    /// Rows dropped because the split column was empty.
    pub dropped_rows: usize,
}

struct RawRow {
    line: u64,
    cells: Vec<Option<String>>,
}

fn bad(path: &Path, column: &str, line: u64, value: &str, expected: &'static str) -> DataError {
    DataError::BadValue {
        path: path.to_path_buf(),
        column: column.to_string(),
        line,
        value: value.to_string(),
        expected,
    }
}

/// Read `path` (CSV or Parquet) and prepare it per `spec`.
pub async fn load_tabular(path: &Path, spec: &TabularSpec) -> Result<TabularTable, DataError> {
    if !(spec.test_fraction > 0.0 && spec.test_fraction < 1.0) {
        return Err(DataError::Spec(format!(
            "test_fraction must be in (0, 1), got {}",
            spec.test_fraction
        )));
    }
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    register_file(&ctx, "raw_table", path).await?;
    let batches = ctx
        .sql("SELECT * FROM raw_table")
        .await
        .map_err(sql_err(path, "reading"))?
        .collect()
        .await
        .map_err(sql_err(path, "reading"))?;
    let columns: Vec<String> = match batches.first() {
        Some(b) => b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        None => {
            return Err(DataError::NoRows {
                path: path.to_path_buf(),
            })
        }
    };
    let find = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                present: columns.join(", "),
            })
    };
    let target = find(&spec.target)?;
    let split = find(&spec.split_by)?;

    let mut rows = Vec::new();
    let mut line = 1u64; // the header
    for b in &batches {
        for i in 0..b.num_rows() {
            line += 1;
            let cells = (0..b.num_columns())
                .map(|c| text_value(b.column(c), i).filter(|v| !v.trim().is_empty()))
                .collect();
            rows.push(RawRow { line, cells });
        }
    }
    if rows.is_empty() {
        return Err(DataError::NoRows {
            path: path.to_path_buf(),
        });
    }

    // The target: exactly the positive value and one other.
    let mut negative: Option<String> = None;
    let mut labels = Vec::with_capacity(rows.len());
    for r in &rows {
        let v = r.cells[target]
            .as_deref()
            .ok_or_else(|| DataError::MissingValue {
                path: path.to_path_buf(),
                column: spec.target.clone(),
                line: r.line,
            })?;
        if v == spec.positive {
            labels.push(true);
        } else if negative.as_deref().is_none_or(|n| n == v) {
            negative = Some(v.to_string());
            labels.push(false);
        } else {
            return Err(bad(
                path,
                &spec.target,
                r.line,
                v,
                "the positive value or the one negative value seen before",
            ));
        }
    }
    if !labels.iter().any(|&l| l) {
        return Err(DataError::Spec(format!(
            "{}: target column '{}' never takes the positive value '{}'",
            path.display(),
            spec.target,
            spec.positive
        )));
    }

    // Column kinds: numeric when every present value parses.
    let features: Vec<usize> = (0..columns.len()).filter(|&c| c != target).collect();
    let numeric: BTreeMap<usize, bool> = features
        .iter()
        .map(|&c| {
            let all_numbers = rows
                .iter()
                .filter_map(|r| r.cells[c].as_deref())
                .all(|v| v.trim().parse::<f64>().is_ok_and(f64::is_finite));
            (c, all_numbers)
        })
        .collect();
    let categories: BTreeMap<usize, Vec<String>> = features
        .iter()
        .filter(|c| !numeric[c])
        .map(|&c| {
            let set: BTreeSet<String> = rows.iter().filter_map(|r| r.cells[c].clone()).collect();
            (c, set.into_iter().collect())
        })
        .collect();

    // Silos, and a stratified split inside each.
    let mut by_silo: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut dropped_rows = 0;
    for (i, r) in rows.iter().enumerate() {
        match &r.cells[split] {
            Some(s) => by_silo.entry(s.clone()).or_default().push(i),
            None => dropped_rows += 1,
        }
    }
    let mut is_test = vec![false; rows.len()];
    for (k, members) in by_silo.values().enumerate() {
        for class in [true, false] {
            let mut idx: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&i| labels[i] == class)
                .collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(
                spec.seed.wrapping_add(k as u64 * 2 + class as u64),
            ));
            let n_test = (idx.len() as f64 * spec.test_fraction).round() as usize;
            for &i in &idx[..n_test] {
                is_test[i] = true;
            }
        }
    }

    // Pooled training statistics of numeric columns, summed silo by silo.
    let mut stats: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
    for members in by_silo.values() {
        for (&c, _) in numeric.iter().filter(|(_, &n)| n) {
            let e = stats.entry(c).or_insert((0.0, 0.0, 0.0));
            for &i in members.iter().filter(|&&i| !is_test[i]) {
                if let Some(v) = rows[i].cells[c]
                    .as_deref()
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    e.0 += 1.0;
                    e.1 += v;
                    e.2 += v * v;
                }
            }
        }
    }
    let mut feature_names = Vec::new();
    for &c in &features {
        if numeric[&c] {
            feature_names.push(columns[c].clone());
        } else {
            feature_names.extend(categories[&c].iter().map(|v| format!("{}={v}", columns[c])));
        }
    }
    let dim = feature_names.len();
    let encode = |r: &RawRow, out: &mut Vec<f64>| {
        out.clear();
        for &c in &features {
            if numeric[&c] {
                let (n, s, ss) = stats.get(&c).copied().unwrap_or((0.0, 0.0, 0.0));
                let mean = if n > 0.0 { s / n } else { 0.0 };
                let sd = if n > 0.0 {
                    (ss / n - mean * mean).max(0.0).sqrt()
                } else {
                    0.0
                };
                let v = r.cells[c]
                    .as_deref()
                    .and_then(|v| v.trim().parse::<f64>().ok());
                out.push(match v {
                    Some(v) if sd > 0.0 => (v - mean) / sd,
                    _ => 0.0,
                });
            } else {
                let cats = &categories[&c];
                let v = r.cells[c].as_deref();
                out.extend(
                    cats.iter()
                        .map(|k| if Some(k.as_str()) == v { 1.0 } else { 0.0 }),
                );
            }
        }
    };

    let mut silos = Vec::new();
    let mut x = Vec::with_capacity(dim);
    for (name, members) in by_silo {
        let mut train = LabeledRows::new(dim);
        let mut test = LabeledRows::new(dim);
        for i in members {
            encode(&rows[i], &mut x);
            if is_test[i] {
                test.push(&x, labels[i]);
            } else {
                train.push(&x, labels[i]);
            }
        }
        let skipped = if train.len() < spec.min_train_rows {
            Some(format!(
                "{} training rows, fewer than the {} required",
                train.len(),
                spec.min_train_rows
            ))
        } else if train.positives() == 0 || train.positives() == train.len() {
            Some("training rows hold only one class".to_string())
        } else {
            None
        };
        silos.push(TabularSilo {
            name,
            train,
            test,
            skipped,
        });
    }
    Ok(TabularTable {
        feature_names,
        silos,
        dropped_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TabularSpec {
        TabularSpec {
            target: "Status".into(),
            positive: "bad".into(),
            split_by: "Job".into(),
            test_fraction: 0.25,
            seed: 1,
            min_train_rows: 3,
        }
    }

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("t.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[tokio::test]
    async fn prepares_silos_with_one_hot_and_standardized_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("Status,Age,Home,Job\n");
        for i in 0..40 {
            let status = if i % 3 == 0 { "bad" } else { "good" };
            let home = if i % 2 == 0 { "rent" } else { "" };
            let job = if i < 30 { "fixed" } else { "partime" };
            let age = if i == 5 {
                String::new()
            } else {
                (20 + i).to_string()
            };
            text.push_str(&format!("{status},{age},{home},{job}\n"));
        }
        text.push_str("good,30,owner,\n");
        let t = load_tabular(&write(dir.path(), &text), &spec())
            .await
            .unwrap();
        assert_eq!(
            t.feature_names,
            vec!["Age", "Home=owner", "Home=rent", "Job=fixed", "Job=partime"]
        );
        assert_eq!(t.dropped_rows, 1);
        assert_eq!(t.silos.len(), 2);
        assert_eq!(t.silos[0].name, "fixed");
        assert_eq!(t.silos[0].train.len() + t.silos[0].test.len(), 30);
        assert!(t.silos.iter().all(|s| s.skipped.is_none()));
    }

    #[tokio::test]
    async fn unexpected_target_values_and_missing_columns_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "Status,Age,Job\nbad,1,a\ngood,2,a\nmaybe,3,a\n");
        let e = load_tabular(&p, &spec()).await.unwrap_err().to_string();
        assert!(
            e.contains("'Status'") && e.contains("line 4") && e.contains("maybe"),
            "{e}"
        );
        let p = write(dir.path(), "Status,Age\nbad,1\n");
        let e = load_tabular(&p, &spec()).await.unwrap_err().to_string();
        assert!(e.contains("missing required column 'Job'"), "{e}");
        let p = write(dir.path(), "Status,Age,Job\nbad,1,a\n,2,a\n");
        let e = load_tabular(&p, &spec()).await.unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("empty"), "{e}");
    }

    #[tokio::test]
    async fn a_tiny_silo_is_skipped_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("Status,Age,Job\n");
        for i in 0..20 {
            text.push_str(&format!(
                "{},{i},big\n",
                if i % 2 == 0 { "bad" } else { "good" }
            ));
        }
        text.push_str("bad,1,tiny\ngood,2,tiny\n");
        let t = load_tabular(&write(dir.path(), &text), &spec())
            .await
            .unwrap();
        let tiny = t.silos.iter().find(|s| s.name == "tiny").unwrap();
        assert!(tiny.skipped.as_deref().unwrap().contains("fewer than"));
    }
}
