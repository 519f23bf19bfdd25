//! A table with a binary target (credit scoring and the like), prepared as a
//! federation prepares it: each store splits its own rows (stratified by the target),
//! describes its training rows with aggregates only ([`TableSummary`]), and encodes
//! them with the encoding the stores agreed ([`merge_summaries`]: pooled mean and
//! standard deviation, the union of categories seen often enough). The in-process
//! reference ([`load_tabular`], one file split into silos by a column) runs exactly the
//! same per-silo steps, so a federated job equals it.

use crate::error::{sql_err, DataError};
use crate::source::{register_file, text_value};
use datafusion::prelude::{SessionConfig, SessionContext};
use fedretail_core::tabular::{
    merge_summaries, ColumnSummary, EncodedColumn, TableSummary, TabularEncoding,
};
use fedretail_core::BoxFuture;
use fedretail_models::LabeledRows;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct TabularSpec {
    /// Target column.
    pub target: String,
    /// The target value that counts as positive (e.g. `bad`); the column must have
    /// exactly one other value.
    pub positive: String,
    /// Column whose value names the silo (e.g. `Job`); rows without it are dropped.
    /// It is not a feature (it is constant within a silo). `random:N` deals the rows
    /// into N random silos instead.
    pub split_by: String,
    /// Share of each silo held out for testing, stratified by the target.
    pub test_fraction: f64,
    pub seed: u64,
    /// A silo with fewer training rows (or only one class) is skipped, and says so.
    pub min_train_rows: usize,
    /// A silo reports a category only if this many of its training rows have it.
    pub min_category_rows: u64,
    /// A text column with more categories is dropped.
    pub max_categories: usize,
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
    pub encoding: TabularEncoding,
    pub silos: Vec<TabularSilo>,
    /// Rows dropped because the split column was empty.
    pub dropped_rows: usize,
}

struct RawRow {
    line: u64,
    cells: Vec<Option<String>>,
}

/// A table as read: every cell as text, with its line for error messages.
/// `split_by` that deals the rows into N random silos (`random:50`).
pub const RANDOM_SPLIT: &str = "random:";
const RANDOM_SPLIT_SEED: u64 = 0x5EED_5110;

/// Row indices of each silo, and the split column when there is one.
struct SiloRows {
    column: Option<usize>,
    members: BTreeMap<String, Vec<usize>>,
    dropped_rows: usize,
}

pub struct RawTable {
    path: PathBuf,
    columns: Vec<String>,
    rows: Vec<RawRow>,
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

impl RawTable {
    /// Read `path` (CSV or Parquet).
    pub fn read<'a>(path: &'a Path) -> BoxFuture<'a, Result<RawTable, DataError>> {
        Box::pin(async move {
            let ctx =
                SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            register_file(&ctx, "raw_table", path).await?;
            let batches = ctx
                .sql("SELECT * FROM raw_table")
                .await
                .map_err(sql_err(path, "reading"))?
                .collect()
                .await
                .map_err(sql_err(path, "reading"))?;
            let Some(first) = batches.first() else {
                return Err(DataError::NoRows {
                    path: path.to_path_buf(),
                });
            };
            let columns = first
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
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
            Ok(RawTable {
                path: path.to_path_buf(),
                columns,
                rows,
            })
        })
    }

    /// The rows of each silo under `split_by`: a column's values (rows without one are
    /// dropped), or `random:N`, N silos of (nearly) equal size dealt at random: a table
    /// with no natural split made into many small parties.
    fn silos(&self, split_by: &str) -> Result<SiloRows, DataError> {
        if let Some(n) = split_by.strip_prefix(RANDOM_SPLIT) {
            return self.random_silos(n);
        }
        let split = self.find(split_by)?;
        let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut dropped_rows = 0;
        for (i, r) in self.rows.iter().enumerate() {
            match &r.cells[split] {
                Some(s) => members.entry(s.clone()).or_default().push(i),
                None => dropped_rows += 1,
            }
        }
        Ok(SiloRows {
            column: Some(split),
            members,
            dropped_rows,
        })
    }

    fn random_silos(&self, n: &str) -> Result<SiloRows, DataError> {
        let n: usize = n.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
            DataError::Spec(format!(
                "split '{RANDOM_SPLIT}{n}': the number of silos must be a whole number >= 1"
            ))
        })?;
        if n > self.rows.len() {
            return Err(DataError::Spec(format!(
                "split '{RANDOM_SPLIT}{n}': {} has only {} rows",
                self.path.display(),
                self.rows.len()
            )));
        }
        // A fixed seed: the same file always deals the same silos.
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(RANDOM_SPLIT_SEED));
        let width = n.to_string().len();
        let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (k, &row) in order.iter().enumerate() {
            let name = format!("silo-{:0width$}", k % n + 1);
            members.entry(name).or_default().push(row);
        }
        members.values_mut().for_each(|rows| rows.sort_unstable());
        Ok(SiloRows {
            column: None,
            members,
            dropped_rows: 0,
        })
    }

    fn find(&self, name: &str) -> Result<usize, DataError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| DataError::MissingColumn {
                path: self.path.clone(),
                column: name.to_string(),
                present: self.columns.join(", "),
            })
    }

    /// The target of `members` as booleans: exactly `positive` and one other value.
    fn labels(&self, target: usize, positive: &str) -> Result<Vec<bool>, DataError> {
        let name = &self.columns[target];
        let mut negative: Option<&str> = None;
        let mut labels = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let v = r.cells[target]
                .as_deref()
                .ok_or_else(|| DataError::MissingValue {
                    path: self.path.clone(),
                    column: name.clone(),
                    line: r.line,
                })?;
            if v == positive {
                labels.push(true);
            } else if negative.is_none_or(|n| n == v) {
                negative = Some(v);
                labels.push(false);
            } else {
                return Err(bad(
                    &self.path,
                    name,
                    r.line,
                    v,
                    "the positive value or the one negative value seen before",
                ));
            }
        }
        if !labels.iter().any(|&l| l) {
            return Err(DataError::Spec(format!(
                "{}: target column '{name}' never takes the positive value '{positive}'",
                self.path.display()
            )));
        }
        Ok(labels)
    }

    fn number(&self, row: usize, column: usize) -> Option<f64> {
        self.rows[row].cells[column]
            .as_deref()
            .and_then(|v| v.trim().parse::<f64>().ok())
    }
}

/// One store's rows of a table: its split, its description and its encoded rows.
pub struct Silo<'a> {
    table: &'a RawTable,
    labels: &'a [bool],
    features: &'a [usize],
    members: Vec<usize>,
    is_test: Vec<bool>,
}

impl<'a> Silo<'a> {
    /// `members` split by class: a `test_fraction` of each class held out, shuffled by
    /// `seed` alone so a store's split does not depend on which other stores exist.
    fn new(
        table: &'a RawTable,
        labels: &'a [bool],
        features: &'a [usize],
        members: Vec<usize>,
        test_fraction: f64,
        seed: u64,
    ) -> Self {
        let mut is_test = vec![false; members.len()];
        for class in [true, false] {
            let mut idx: Vec<usize> = (0..members.len())
                .filter(|&k| labels[members[k]] == class)
                .collect();
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(
                seed.wrapping_add(class as u64),
            ));
            let n_test = (idx.len() as f64 * test_fraction).round() as usize;
            for &k in &idx[..n_test] {
                is_test[k] = true;
            }
        }
        Silo {
            table,
            labels,
            features,
            members,
            is_test,
        }
    }

    fn train_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.members
            .iter()
            .zip(&self.is_test)
            .filter(|(_, &t)| !t)
            .map(|(&i, _)| i)
    }

    /// Why this silo cannot train, if it cannot.
    fn unusable(&self, min_train_rows: usize) -> Option<String> {
        let n = self.train_rows().count();
        let positives = self.train_rows().filter(|&i| self.labels[i]).count();
        if n < min_train_rows {
            Some(format!(
                "{n} training rows, fewer than the {min_train_rows} required"
            ))
        } else if positives == 0 || positives == n {
            Some("training rows hold only one class".to_string())
        } else {
            None
        }
    }

    /// Aggregates of the training rows: a column is numeric here when every present
    /// value parses; text columns report only categories of `min_category_rows` or more.
    pub fn summary(&self, min_category_rows: u64) -> TableSummary {
        let t = self.table;
        let columns = self
            .features
            .iter()
            .map(|&c| {
                let name = &t.columns[c];
                let present: Vec<usize> = self
                    .train_rows()
                    .filter(|&i| t.rows[i].cells[c].is_some())
                    .collect();
                let numbers: Vec<f64> = present.iter().filter_map(|&i| t.number(i, c)).collect();
                if numbers.len() == present.len() && numbers.iter().all(|v| v.is_finite()) {
                    let sum: f64 = numbers.iter().sum();
                    let sum_sq: f64 = numbers.iter().map(|v| v * v).sum();
                    ColumnSummary::numeric(name, numbers.len() as f64, sum, sum_sq)
                } else {
                    let mut levels: BTreeMap<String, u64> = BTreeMap::new();
                    for i in present {
                        if let Some(v) = &t.rows[i].cells[c] {
                            *levels.entry(v.clone()).or_default() += 1;
                        }
                    }
                    levels.retain(|_, n| *n >= min_category_rows);
                    ColumnSummary::text(name, levels)
                }
            })
            .collect();
        TableSummary {
            rows: self.train_rows().count() as u64,
            columns,
        }
    }

    /// Training and test rows under the agreed `encoding`.
    pub fn encode(
        &self,
        encoding: &TabularEncoding,
    ) -> Result<(LabeledRows, LabeledRows), DataError> {
        let (all, held_out) = self.encode_all(encoding)?;
        let (mut train, mut test) = (LabeledRows::new(all.dim()), LabeledRows::new(all.dim()));
        for (k, &is_test) in held_out.iter().enumerate() {
            let (x, y) = all.row(k);
            if is_test { &mut test } else { &mut train }.push(x, y);
        }
        Ok((train, test))
    }

    /// Every row in order under the agreed `encoding`, and whether it is held out.
    pub fn encode_all(
        &self,
        encoding: &TabularEncoding,
    ) -> Result<(LabeledRows, Vec<bool>), DataError> {
        let t = self.table;
        let cols: Vec<usize> = encoding
            .columns
            .iter()
            .map(|c| match c {
                EncodedColumn::Numeric { name, .. } | EncodedColumn::Categorical { name, .. } => {
                    t.find(name)
                }
            })
            .collect::<Result<_, _>>()?;
        let mut all = LabeledRows::new(encoding.dim());
        let mut x = Vec::with_capacity(encoding.dim());
        for &i in &self.members {
            x.clear();
            for (e, &c) in encoding.columns.iter().zip(&cols) {
                match e {
                    EncodedColumn::Numeric { mean, sd, .. } => x.push(match t.number(i, c) {
                        Some(v) if *sd > 0.0 => (v - mean) / sd,
                        _ => 0.0,
                    }),
                    EncodedColumn::Categorical { levels, .. } => {
                        let v = t.rows[i].cells[c].as_deref();
                        x.extend(levels.iter().map(|l| f64::from(Some(l.as_str()) == v)));
                    }
                }
            }
            all.push(&x, self.labels[i]);
        }
        Ok((all, self.is_test.clone()))
    }
}

/// What a store's table gives a tabular task: its rows, split.
pub struct StoreTable {
    table: RawTable,
    labels: Vec<bool>,
    features: Vec<usize>,
    test_fraction: f64,
    seed: u64,
}

impl StoreTable {
    /// Read a store's table; `exclude` (and the target) are not features.
    pub fn load<'a>(
        path: &'a Path,
        target: &'a str,
        positive: &'a str,
        exclude: &'a [String],
        test_fraction: f64,
        seed: u64,
    ) -> BoxFuture<'a, Result<StoreTable, DataError>> {
        Box::pin(async move {
            let table = RawTable::read(path).await?;
            let t = table.find(target)?;
            let labels = table.labels(t, positive)?;
            let features = (0..table.columns.len())
                .filter(|&c| c != t && !exclude.contains(&table.columns[c]))
                .collect();
            Ok(StoreTable {
                table,
                labels,
                features,
                test_fraction,
                seed,
            })
        })
    }

    pub fn silo(&self) -> Silo<'_> {
        Silo::new(
            &self.table,
            &self.labels,
            &self.features,
            (0..self.table.rows.len()).collect(),
            self.test_fraction,
            self.seed,
        )
    }

    /// Line numbers of the rows, in order (to name rows in the store's results).
    pub fn lines(&self) -> Vec<u64> {
        self.table.rows.iter().map(|r| r.line).collect()
    }

    /// Why the store cannot train on its table, if it cannot.
    pub fn unusable(&self, min_train_rows: usize) -> Option<String> {
        self.silo().unusable(min_train_rows)
    }
}

/// Read `path` (CSV or Parquet), split it into silos by `spec.split_by`, and prepare
/// every silo exactly as a store of a federated job would.
pub fn load_tabular<'a>(
    path: &'a Path,
    spec: &'a TabularSpec,
) -> BoxFuture<'a, Result<TabularTable, DataError>> {
    Box::pin(async move {
        if !(spec.test_fraction > 0.0 && spec.test_fraction < 1.0) {
            return Err(DataError::Spec(format!(
                "test_fraction must be in (0, 1), got {}",
                spec.test_fraction
            )));
        }
        let table = RawTable::read(path).await?;
        let target = table.find(&spec.target)?;
        let silos = table.silos(&spec.split_by)?;
        let labels = table.labels(target, &spec.positive)?;
        let features: Vec<usize> = (0..table.columns.len())
            .filter(|&c| c != target && Some(c) != silos.column)
            .collect();
        let dropped_rows = silos.dropped_rows;
        let by_silo = silos.members;
        let silos: Vec<(String, Silo)> = by_silo
            .into_iter()
            .map(|(name, members)| {
                let silo = Silo::new(
                    &table,
                    &labels,
                    &features,
                    members,
                    spec.test_fraction,
                    spec.seed,
                );
                (name, silo)
            })
            .collect();
        let summaries: Vec<TableSummary> = silos
            .iter()
            .filter(|(_, s)| s.unusable(spec.min_train_rows).is_none())
            .map(|(_, s)| s.summary(spec.min_category_rows))
            .collect();
        let encoding = merge_summaries(&summaries, spec.max_categories)
            .map_err(|e| DataError::Spec(format!("{}: {e}", path.display())))?;
        let mut out = Vec::with_capacity(silos.len());
        for (name, silo) in &silos {
            let (train, test) = silo.encode(&encoding)?;
            out.push(TabularSilo {
                name: name.clone(),
                train,
                test,
                skipped: silo.unusable(spec.min_train_rows),
            });
        }
        Ok(TabularTable {
            feature_names: encoding.feature_names(),
            encoding,
            silos: out,
            dropped_rows,
        })
    })
}

/// Split `path` into one folder per value of `split_by` under `out_dir`, each with
/// the silo's rows (in file order, the split column left out) as `file`: one store's
/// export per silo, to run a tabular job over real agents. Returns (silo, folder).
pub fn write_silos<'a>(
    path: &'a Path,
    split_by: &'a str,
    out_dir: &'a Path,
    file: &'a str,
) -> BoxFuture<'a, Result<Vec<(String, PathBuf)>, DataError>> {
    Box::pin(async move {
        let table = RawTable::read(path).await?;
        let silos = table.silos(split_by)?;
        let split = silos.column;
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |e: std::io::Error| DataError::Io { path, source: e }
        };
        let mut out = Vec::with_capacity(silos.members.len());
        for (k, (name, rows)) in silos.members.into_iter().enumerate() {
            // Folder names from data: keep them to safe characters, unique by position.
            let safe: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(40)
                .collect();
            let dir = out_dir.join(format!("silo-{k:03}-{safe}"));
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let target = dir.join(file);
            let mut w = csv::Writer::from_path(&target)
                .map_err(|e| DataError::Spec(format!("{}: {e}", target.display())))?;
            let keep = |cells: &[Option<String>]| -> Vec<String> {
                cells
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| Some(*c) != split)
                    .map(|(_, v)| v.clone().unwrap_or_default())
                    .collect()
            };
            let header: Vec<Option<String>> = table.columns.iter().cloned().map(Some).collect();
            let mut write = |cells: Vec<String>| {
                w.write_record(&cells)
                    .map_err(|e| DataError::Spec(format!("{}: {e}", target.display())))
            };
            write(keep(&header))?;
            for r in rows {
                write(keep(&table.rows[r].cells))?;
            }
            w.flush().map_err(io(&target))?;
            out.push((name.to_string(), dir));
        }
        Ok(out)
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
            min_category_rows: 1,
            max_categories: 50,
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
        // The split column is not a feature; the owner row has no silo, so no summary
        // reports its category.
        assert_eq!(t.feature_names, vec!["Age", "Home=rent"]);
        assert_eq!(t.dropped_rows, 1);
        assert_eq!(t.silos.len(), 2);
        assert_eq!(t.silos[0].name, "fixed");
        assert_eq!(t.silos[0].train.len() + t.silos[0].test.len(), 30);
        assert!(t.silos.iter().all(|s| s.skipped.is_none()));
    }

    #[tokio::test]
    async fn random_silos_deal_every_row_once_and_keep_every_column_as_a_feature() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("Status,Age,Job\n");
        for i in 0..103 {
            let status = if i % 3 == 0 { "bad" } else { "good" };
            text.push_str(&format!("{status},{},fixed\n", 20 + i % 40));
        }
        let path = write(dir.path(), &text);
        let random = TabularSpec {
            split_by: "random:10".into(),
            ..spec()
        };
        let t = load_tabular(&path, &random).await.unwrap();
        assert_eq!(t.silos.len(), 10);
        assert_eq!(t.silos[0].name, "silo-01");
        let sizes: Vec<usize> = t
            .silos
            .iter()
            .map(|s| s.train.len() + s.test.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 103);
        assert!(sizes.iter().all(|&n| n == 10 || n == 11), "{sizes:?}");
        // No column names the silo, so `Job` stays a feature (constant here, so dropped
        // as a category with one value or kept: either way not the split).
        assert!(t.feature_names.iter().any(|f| f == "Age"));
        // The same file deals the same silos, and the files written agree with them.
        let again = load_tabular(&path, &random).await.unwrap();
        assert_eq!(again.silos[3].train.len(), t.silos[3].train.len());
        let written = write_silos(&path, "random:10", dir.path(), "t.csv")
            .await
            .unwrap();
        assert_eq!(written.len(), 10);
        let lines = |k: usize| {
            std::fs::read_to_string(written[k].1.join("t.csv"))
                .unwrap()
                .lines()
                .count()
                - 1
        };
        assert_eq!((0..10).map(lines).sum::<usize>(), 103);
        assert_eq!(lines(0), sizes[0]);
        for bad in ["random:0", "random:x", "random:104"] {
            let spec = TabularSpec {
                split_by: bad.into(),
                ..spec()
            };
            let e = load_tabular(&path, &spec).await.unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
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
    async fn silos_written_as_store_files_give_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let text = "Status,Note,Job\nbad,\"a, quoted\",x\ngood,plain,y\ngood,,x\n";
        let written = write_silos(&write(dir.path(), text), "Job", dir.path(), "t.csv")
            .await
            .unwrap();
        assert_eq!(written.len(), 2);
        let x = std::fs::read_to_string(written[0].1.join("t.csv")).unwrap();
        assert_eq!(x, "Status,Note\nbad,\"a, quoted\"\ngood,\n");
        let back = RawTable::read(&written[0].1.join("t.csv")).await.unwrap();
        assert_eq!(back.rows[0].cells[1].as_deref(), Some("a, quoted"));
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
