//! Customer and transaction features for the analytics tasks, computed at the store in
//! SQL over the canonical `transactions` view, standardized per store as the seed's
//! `mean_stddev` / `standardized_features` CTEs do, so that stores of very different
//! size and price level share one feature space.

use crate::error::{sql_err, DataError};
use crate::source::{open_store, register_file, text_value, StoreSource};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::prelude::SessionContext;
use fedretail_core::BoxFuture;
use fedretail_models::{LabeledRows, PointSet};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use fedretail_core::task::{CUSTOMER_ANOMALY_FEATURES, SEGMENT_FEATURES, TRANSACTION_FEATURES};

/// Which period of a store's history to use.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureWindow {
    /// Days of history up to the end of the store's data (the seed's
    /// `$start_date .. $end_date`).
    pub window_days: u32,
}

/// Customer-level points with what the evaluation needs beside them.
#[derive(Debug, Clone, Default)]
pub struct CustomerPoints {
    pub customer_ids: Vec<String>,
    /// Standardized features, per store.
    pub points: PointSet,
    /// True for customers the ground-truth file marks (refund abusers).
    pub labels: Vec<bool>,
}

/// Receipt-level points with ground truth.
#[derive(Debug, Clone, Default)]
pub struct TransactionPoints {
    /// The receipt (transaction id) of each point.
    pub ids: Vec<String>,
    pub points: PointSet,
    pub labels: Vec<bool>,
}

async fn date_bounds(ctx: &SessionContext, path: &Path) -> Result<(String, String), DataError> {
    let batches = ctx
        .sql("SELECT CAST(MIN(timestamp) AS VARCHAR), CAST(MAX(timestamp) AS VARCHAR) FROM transactions")
        .await
        .map_err(sql_err(path, "finding date range"))?
        .collect()
        .await
        .map_err(sql_err(path, "finding date range"))?;
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| Some((text_value(b.column(0), 0)?, text_value(b.column(1), 0)?)))
        .ok_or_else(|| DataError::NoRows {
            path: path.to_path_buf(),
        })
}

/// Ids of anomalous transactions from a ground-truth file (`transaction_id,…`).
async fn labelled_transactions(
    ctx: &SessionContext,
    labels: &Path,
) -> Result<HashSet<String>, DataError> {
    register_file(ctx, "anomaly_labels", labels).await?;
    let batches = ctx
        .sql("SELECT DISTINCT CAST(transaction_id AS VARCHAR) FROM anomaly_labels")
        .await
        .map_err(sql_err(labels, "reading labels"))?
        .collect()
        .await
        .map_err(sql_err(labels, "reading labels"))?;
    let mut out = HashSet::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            if let Some(v) = text_value(b.column(0), i) {
                out.insert(v);
            }
        }
    }
    Ok(out)
}

/// Row `i` of the float columns onto `values` (a missing value as 0).
fn push_row(values: &mut Vec<f64>, cols: &[&datafusion::arrow::array::Float64Array], i: usize) {
    values.extend(
        cols.iter()
            .map(|c| if c.is_null(i) { 0.0 } else { c.value(i) }),
    );
}

fn float_columns<'a>(
    batch: &'a RecordBatch,
    names: &[&str],
    path: &Path,
) -> Result<Vec<&'a datafusion::arrow::array::Float64Array>, DataError> {
    names
        .iter()
        .map(|n| {
            batch
                .column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| {
                    DataError::Spec(format!("{}: feature query lost column {n}", path.display()))
                })
        })
        .collect()
}

/// Per-customer aggregates over `[from, to]` (timestamps as SQL literals), relative to
/// `as_of`. Refund receipts count toward the refund rate, not toward orders.
fn customer_aggregates_sql(from: &str, to: &str, as_of: &str) -> String {
    format!(
        "WITH receipts AS ( \
           SELECT customer_id, transaction_id, MIN(timestamp) AS ts, SUM(amount) AS amount, \
                  BOOL_OR(is_refund) AS refund \
           FROM transactions \
           WHERE customer_id IS NOT NULL AND timestamp >= TIMESTAMP '{from}' AND timestamp <= TIMESTAMP '{to}' \
           GROUP BY customer_id, transaction_id), \
         customers AS ( \
           SELECT customer_id, \
             CAST(SUM(CASE WHEN refund THEN 0 ELSE 1 END) AS DOUBLE) AS total_orders, \
             SUM(CASE WHEN refund THEN 0.0 ELSE amount END) AS spend, \
             CAST(SUM(CASE WHEN refund THEN 1 ELSE 0 END) AS DOUBLE) AS refunds, \
             CAST(date_part('epoch', MAX(CASE WHEN refund THEN NULL ELSE ts END)) AS DOUBLE) AS last_epoch, \
             CAST(date_part('epoch', MIN(ts)) AS DOUBLE) AS first_epoch, \
             CAST(date_part('epoch', MAX(ts)) AS DOUBLE) AS max_epoch \
           FROM receipts GROUP BY customer_id) \
         SELECT customer_id, total_orders, \
           spend / total_orders AS avg_order_value, \
           (max_epoch - first_epoch) / 86400.0 AS customer_lifetime, \
           (CAST(date_part('epoch', TIMESTAMP '{as_of}') AS DOUBLE) - last_epoch) / 86400.0 AS days_since_last_purchase, \
           refunds / (total_orders + refunds) AS refund_rate \
         FROM customers WHERE total_orders > 0"
    )
}

/// Standardize the named columns of `inner` per store: `(x - mean) / stddev`, with a
/// constant column mapped to 0 rather than to NaN.
fn standardized_sql(inner: &str, derived: &[(&str, &str)]) -> String {
    let derived_cols: Vec<String> = derived.iter().map(|(n, e)| format!("{e} AS {n}")).collect();
    let z: Vec<String> = derived
        .iter()
        .map(|(n, _)| {
            format!(
                "COALESCE(({n} - AVG({n}) OVER ()) / NULLIF(STDDEV_POP({n}) OVER (), 0), 0.0) AS {n}"
            )
        })
        .collect();
    format!(
        "WITH base AS ({inner}), derived AS (SELECT customer_id, {d} FROM base) \
         SELECT customer_id, {z} FROM derived",
        d = derived_cols.join(", "),
        z = z.join(", "),
    )
}

/// Which customer feature set to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerFeatureSet {
    Anomaly,
    Segments,
}

impl CustomerFeatureSet {
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            CustomerFeatureSet::Anomaly => &CUSTOMER_ANOMALY_FEATURES,
            CustomerFeatureSet::Segments => &SEGMENT_FEATURES,
        }
    }

    fn expressions(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            CustomerFeatureSet::Anomaly => {
                CUSTOMER_ANOMALY_FEATURES.iter().map(|n| (*n, *n)).collect()
            }
            CustomerFeatureSet::Segments => vec![
                ("recency_days", "days_since_last_purchase"),
                ("log_orders", "LN(1.0 + total_orders)"),
                (
                    "log_avg_order_value",
                    "LN(1.0 + GREATEST(avg_order_value, 0.0))",
                ),
                ("tenure_days", "customer_lifetime"),
            ],
        }
    }
}

/// Standardized customer features over the last `window.window_days` of the store's
/// data, with ground-truth labels when a labels file is given.
pub fn load_customer_points<'a>(
    source: &'a StoreSource,
    window: &'a FeatureWindow,
    set: CustomerFeatureSet,
    labels: Option<&'a Path>,
) -> BoxFuture<'a, Result<CustomerPoints, DataError>> {
    Box::pin(async move {
        let path = source.transactions.clone();
        let ctx = open_store(source).await?;
        let (_, last) = date_bounds(&ctx, &path).await?;
        let from = format!(
            "CAST(TIMESTAMP '{last}' - INTERVAL '{} days' AS VARCHAR)",
            window.window_days
        );
        let from = scalar_text(&ctx, &path, &from).await?;
        let inner = customer_aggregates_sql(&from, &last, &last);
        let exprs = set.expressions();
        let sql = standardized_sql(&inner, &exprs);
        let batches = collect(&ctx, &path, &sql, "computing customer features").await?;

        let abusers = match labels {
            Some(l) => abusive_customers(&ctx, l).await?,
            None => HashSet::new(),
        };
        let names = set.names();
        let mut out = CustomerPoints {
            points: PointSet::new(names.len()),
            ..Default::default()
        };
        for b in &batches {
            let cols = float_columns(b, names, &path)?;
            let ids = b
                .column_by_name("customer_id")
                .ok_or_else(|| DataError::Spec("customer query lost customer_id".into()))?;
            for i in 0..b.num_rows() {
                let id = text_value(ids, i).unwrap_or_default();
                out.labels.push(abusers.contains(&id));
                out.customer_ids.push(id);
                push_row(&mut out.points.values, &cols, i);
            }
        }
        Ok(out)
    })
}

async fn abusive_customers(
    ctx: &SessionContext,
    labels: &Path,
) -> Result<HashSet<String>, DataError> {
    let ids = labelled_transactions(ctx, labels).await?;
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let batches = collect(
        ctx,
        labels,
        "SELECT DISTINCT t.customer_id FROM transactions t JOIN anomaly_labels l \
         ON t.transaction_id = CAST(l.transaction_id AS VARCHAR) \
         WHERE t.customer_id IS NOT NULL AND CAST(l.anomaly AS VARCHAR) = 'refund_abuse'",
        "joining labels",
    )
    .await?;
    let mut out = HashSet::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            if let Some(v) = text_value(b.column(0), i) {
                out.insert(v);
            }
        }
    }
    Ok(out)
}

async fn collect(
    ctx: &SessionContext,
    path: &Path,
    sql: &str,
    what: &'static str,
) -> Result<Vec<RecordBatch>, DataError> {
    ctx.sql(sql)
        .await
        .map_err(sql_err(path, what))?
        .collect()
        .await
        .map_err(sql_err(path, what))
}

async fn scalar_text(ctx: &SessionContext, path: &Path, expr: &str) -> Result<String, DataError> {
    let batches = collect(ctx, path, &format!("SELECT {expr}"), "evaluating a date").await?;
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| text_value(b.column(0), 0))
        .ok_or_else(|| DataError::Spec(format!("could not evaluate {expr}")))
}

/// Churn rows: features of each customer as of `horizon_days` before the end of the
/// store's data (over the `window_days` before that), labelled churned when the
/// customer buys nothing in the horizon. Features are the seed's, standardized per
/// store; `standardized_recency` (the seed's `> 1` rule) is column 3.
pub fn load_churn_rows<'a>(
    source: &'a StoreSource,
    window: &'a FeatureWindow,
    horizon_days: u32,
) -> BoxFuture<'a, Result<LabeledRows, DataError>> {
    Box::pin(async move {
        let path = source.transactions.clone();
        let ctx = open_store(source).await?;
        let (first, last) = date_bounds(&ctx, &path).await?;
        let cutoff = scalar_text(
            &ctx,
            &path,
            &format!("CAST(TIMESTAMP '{last}' - INTERVAL '{horizon_days} days' AS VARCHAR)"),
        )
        .await?;
        if cutoff <= first {
            return Err(DataError::Spec(format!(
            "{}: history from {first} to {last} is shorter than the churn horizon of {horizon_days} days",
            path.display()
        )));
        }
        let from = scalar_text(
            &ctx,
            &path,
            &format!(
                "CAST(TIMESTAMP '{cutoff}' - INTERVAL '{} days' AS VARCHAR)",
                window.window_days
            ),
        )
        .await?;
        let inner = customer_aggregates_sql(&from, &cutoff, &cutoff);
        let exprs: Vec<(&str, &str)> = CUSTOMER_ANOMALY_FEATURES.iter().map(|n| (*n, *n)).collect();
        let features = standardized_sql(&inner, &exprs);
        let sql = format!(
            "WITH f AS ({features}), later AS ( \
           SELECT DISTINCT customer_id AS buyer FROM transactions \
           WHERE customer_id IS NOT NULL AND NOT is_refund AND timestamp > TIMESTAMP '{cutoff}') \
         SELECT f.*, CASE WHEN later.buyer IS NULL THEN 1.0 ELSE 0.0 END AS churned \
         FROM f LEFT JOIN later ON f.customer_id = later.buyer ORDER BY f.customer_id"
        );
        let batches = collect(&ctx, &path, &sql, "computing churn features").await?;
        let mut rows = LabeledRows::new(CUSTOMER_ANOMALY_FEATURES.len());
        let mut x = vec![0.0; CUSTOMER_ANOMALY_FEATURES.len()];
        for b in &batches {
            let cols = float_columns(b, &CUSTOMER_ANOMALY_FEATURES, &path)?;
            let label = float_columns(b, &["churned"], &path)?[0];
            for i in 0..b.num_rows() {
                for (v, c) in x.iter_mut().zip(&cols) {
                    *v = if c.is_null(i) { 0.0 } else { c.value(i) };
                }
                rows.push(&x, label.value(i) > 0.5);
            }
        }
        Ok(rows)
    })
}

/// Receipt-level features over the last `window_days`, standardized per store, with
/// ground truth (a receipt is anomalous when the labels file names it).
pub fn load_transaction_points<'a>(
    source: &'a StoreSource,
    window: &'a FeatureWindow,
    labels: Option<&'a Path>,
) -> BoxFuture<'a, Result<TransactionPoints, DataError>> {
    Box::pin(async move {
        let path: PathBuf = source.transactions.clone();
        let ctx = open_store(source).await?;
        let (_, last) = date_bounds(&ctx, &path).await?;
        let from = scalar_text(
            &ctx,
            &path,
            &format!(
                "CAST(TIMESTAMP '{last}' - INTERVAL '{} days' AS VARCHAR)",
                window.window_days
            ),
        )
        .await?;
        let sql = format!(
        "WITH lines AS ( \
           SELECT * FROM transactions WHERE timestamp >= TIMESTAMP '{from}'), \
         usual AS (SELECT product_id, MEDIAN(unit_price) AS usual_price FROM lines GROUP BY product_id), \
         receipts AS ( \
           SELECT l.transaction_id, MIN(l.timestamp) AS ts, SUM(l.amount) AS amount, \
             CAST(COUNT(*) AS DOUBLE) AS lines, \
             CAST(COUNT(DISTINCT concat(l.product_id, '|', CAST(l.quantity AS VARCHAR), '|', CAST(l.unit_price AS VARCHAR))) AS DOUBLE) AS distinct_lines, \
             MAX(CASE WHEN l.is_refund THEN 1.0 ELSE 0.0 END) AS refund, \
             MAX(CASE WHEN l.customer_id IS NULL THEN 1.0 ELSE 0.0 END) AS anonymous, \
             MAX(ABS(LN(GREATEST(l.unit_price, 0.01) / GREATEST(u.usual_price, 0.01)))) AS price_deviation \
           FROM lines l JOIN usual u ON l.product_id = u.product_id \
           GROUP BY l.transaction_id), \
         timed AS ( \
           SELECT *, CAST(date_part('epoch', ts) AS DOUBLE) AS epoch, \
             CAST(date_part('hour', ts) AS DOUBLE) + CAST(date_part('minute', ts) AS DOUBLE) / 60.0 AS hour \
           FROM receipts), \
         gaps AS ( \
           SELECT *, epoch - LAG(epoch) OVER (ORDER BY epoch, transaction_id) AS gap_prev, \
             LEAD(epoch) OVER (ORDER BY epoch, transaction_id) - epoch AS gap_next FROM timed), \
         raw AS ( \
           SELECT transaction_id, \
             LN(1.0 + ABS(amount)) AS log_amount, \
             SIN(2.0 * PI() * hour / 24.0) AS hour_sin, COS(2.0 * PI() * hour / 24.0) AS hour_cos, \
             refund, LN(lines) AS log_lines, 1.0 - distinct_lines / lines AS duplicate_share, \
             price_deviation, anonymous, \
             -LN(1.0 + LEAST(COALESCE(gap_prev, 86400.0), COALESCE(gap_next, 86400.0))) AS burst \
           FROM gaps) \
         SELECT transaction_id, {z} FROM raw ORDER BY transaction_id",
        z = TRANSACTION_FEATURES
            .iter()
            .map(|n| format!("COALESCE(({n} - AVG({n}) OVER ()) / NULLIF(STDDEV_POP({n}) OVER (), 0), 0.0) AS {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
        let batches = collect(&ctx, &path, &sql, "computing transaction features").await?;
        let anomalous = match labels {
            Some(l) => labelled_transactions(&ctx, l).await?,
            None => HashSet::new(),
        };
        let mut out = TransactionPoints {
            ids: Vec::new(),
            points: PointSet::new(TRANSACTION_FEATURES.len()),
            labels: Vec::new(),
        };
        for b in &batches {
            let cols = float_columns(b, &TRANSACTION_FEATURES, &path)?;
            let ids = b.column(0);
            for i in 0..b.num_rows() {
                let id = text_value(ids, i).unwrap_or_default();
                out.labels.push(anomalous.contains(&id));
                out.ids.push(id);
                push_row(&mut out.points.values, &cols, i);
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardized_sql_names_every_feature_once() {
        let sql = standardized_sql("SELECT 1", &[("a", "x"), ("b", "LN(y)")]);
        assert!(sql.contains("x AS a") && sql.contains("LN(y) AS b"));
    }
}
