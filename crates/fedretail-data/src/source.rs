use crate::error::{sql_err, DataError};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use fedretail_core::BoxFuture;
use fedretail_domain::schema::{
    ColumnType, PROMOTIONS_FILE, STORE_META_FILE, TRANSACTIONS_FILE, TRANSACTION_COLUMNS,
};
use fedretail_domain::BusinessType;
use std::io::BufRead;
use std::sync::Arc;

/// The ground-truth file `fedretail generate` writes beside each store's export.
pub const LABELS_FILE: &str = "anomaly_labels.csv";
use std::path::{Path, PathBuf};

/// Where a store's data lives and how it maps onto the canonical schema.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StoreSource {
    /// Transactions export, `.csv` or `.parquet`.
    pub transactions: PathBuf,
    /// Promotion calendar (optional; without it no promotion features).
    #[serde(default)]
    pub promotions: Option<PathBuf>,
    /// A SELECT over the table `raw_transactions` that yields the canonical column
    /// names, for exports that name or shape columns differently.
    #[serde(default)]
    pub view_sql: Option<String>,
    /// Ground truth of labelled anomalies (`transaction_id,product_id,anomaly`), used
    /// only to score the store's own anomaly flags; synthetic networks have one.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Folder of the store's other tables (a tabular task's `file`); by default the
    /// folder of the transactions export.
    #[serde(default)]
    pub tables_dir: Option<PathBuf>,
    /// The store's declared business type: its demand rows carry that type's own
    /// calendar effects beside the shared ones (none without it).
    #[serde(default)]
    pub business_type: Option<BusinessType>,
}

impl StoreSource {
    /// The layout `fedretail generate` writes: `DIR/transactions.csv`, `DIR/promotions.csv`.
    pub fn from_dir(dir: &Path) -> Self {
        let promotions = dir.join(PROMOTIONS_FILE);
        let labels = dir.join(LABELS_FILE);
        StoreSource {
            transactions: dir.join(TRANSACTIONS_FILE),
            promotions: promotions.exists().then_some(promotions),
            view_sql: None,
            labels: labels.exists().then_some(labels),
            tables_dir: Some(dir.to_path_buf()),
            business_type: declared_business_type(dir),
        }
    }

    /// The source with the business type the store declared (ignored when it is not
    /// one the network knows).
    pub fn with_business_type(mut self, declared: &str) -> Self {
        if let Ok(b) = declared.parse() {
            self.business_type = Some(b);
        }
        self
    }

    /// Where a table named by a task lives (the spec checked it stays inside).
    pub fn table_path(&self, file: &str) -> PathBuf {
        let dir = self
            .tables_dir
            .clone()
            .or_else(|| self.transactions.parent().map(Path::to_path_buf))
            .unwrap_or_default();
        dir.join(file)
    }
}

/// Column names of a CSV header line.
fn csv_header(path: &Path) -> Result<Vec<String>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let mut reader = std::io::BufReader::new(file);
    let mut header = String::new();
    let n = reader
        .read_line(&mut header)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if n == 0 || header.trim().is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let mut second = String::new();
    let rows = reader
        .read_line(&mut second)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if rows == 0 || second.trim().is_empty() {
        return Err(DataError::NoRows {
            path: path.to_path_buf(),
        });
    }
    Ok(header
        .trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect())
}

/// Register `path` as table `name`. CSV columns are read as text and typed later by
/// validation, so a bad value is reported with its line instead of failing the read.
pub(crate) async fn register_file(
    ctx: &SessionContext,
    name: &str,
    path: &Path,
) -> Result<(), DataError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let path_str = path.to_string_lossy().to_string();
    match ext.as_str() {
        "csv" => {
            let columns = csv_header(path)?;
            let schema = Schema::new(
                columns
                    .iter()
                    .map(|c| Field::new(c, DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            );
            let options = CsvReadOptions::new()
                .has_header(true)
                .schema(&schema)
                .file_extension(".csv");
            ctx.register_csv(name, &path_str, options)
                .await
                .map_err(sql_err(path, "reading CSV"))
        }
        "parquet" => {
            if !path.exists() {
                return Err(DataError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            ctx.register_parquet(name, &path_str, ParquetReadOptions::default())
                .await
                .map_err(sql_err(path, "reading Parquet"))
        }
        _ => Err(DataError::UnsupportedFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// A DataFusion session over one store's data, with the canonical table
/// `transactions` (typed, validated) registered.
pub fn open_store<'a>(source: &'a StoreSource) -> BoxFuture<'a, Result<SessionContext, DataError>> {
    Box::pin(async move {
        let path = &source.transactions;
        let (ctx, schema, batches) = typed_transactions(source).await?;
        let table = MemTable::try_new(schema, vec![batches])
            .map_err(sql_err(path, "reading transactions"))?;
        ctx.register_table("transactions", Arc::new(table))
            .map_err(sql_err(path, "registering view"))?;
        Ok(ctx)
    })
}

/// The store's transactions in the canonical columns, typed and validated, with the
/// session they were read in (the export registered as `raw_transactions`).
///
/// The export is read once: one scan types every column and flags rows that cannot
/// be typed. Only when a row is flagged does a second, slower query find the first
/// bad line for the error message.
pub(crate) async fn typed_transactions(
    source: &StoreSource,
) -> Result<(SessionContext, SchemaRef, Vec<RecordBatch>), DataError> {
    // One partition: stores are prepared in parallel already, and it keeps line
    // numbers of validation errors in file order.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let path = &source.transactions;
    register_file(&ctx, "raw_transactions", path).await?;
    let view = source
        .view_sql
        .clone()
        .unwrap_or_else(|| "SELECT * FROM raw_transactions".to_string());
    let mapped = ctx
        .sql(&view)
        .await
        .map_err(|e| DataError::BadView(e.to_string()))?;
    ctx.register_table("mapped_transactions", mapped.into_view())
        .map_err(sql_err(path, "registering view"))?;
    let present = mapped_columns(&ctx, path).await?;
    let has = |c: &str| present.iter().any(|p| p == c);
    let canonical = ctx
        .sql(&canonical_sql(&has))
        .await
        .map_err(sql_err(path, "building canonical view"))?;
    let planned = Arc::new(canonical.schema().as_arrow().clone());
    let batches = canonical
        .collect()
        .await
        .map_err(sql_err(path, "reading transactions"))?;
    if batches.iter().any(has_bad_row) {
        validate(&ctx, path, &has).await?;
    }
    let (schema, batches) =
        without_flag(planned, batches).map_err(sql_err(path, "reading transactions"))?;
    Ok((ctx, schema, batches))
}

/// The columns the store's view yields, after checking the required ones are there.
async fn mapped_columns(ctx: &SessionContext, path: &Path) -> Result<Vec<String>, DataError> {
    let schema = ctx
        .table("mapped_transactions")
        .await
        .map_err(sql_err(path, "reading view"))?
        .schema()
        .clone();
    let present: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for col in TRANSACTION_COLUMNS.iter().filter(|c| c.required) {
        if !present.iter().any(|p| p == col.name) {
            return Err(DataError::MissingColumn {
                path: path.to_path_buf(),
                column: col.name.to_string(),
                present: present.join(", "),
            });
        }
    }
    Ok(present)
}

/// The name of the flag column the canonical query adds (true on a row that fails a
/// check); it is dropped before the table is registered.
const BAD_ROW: &str = "bad_row";

/// The canonical typed columns, optional ones defaulted, and the row's check flag.
fn canonical_sql(has: &(dyn Fn(&str) -> bool + Sync)) -> String {
    let text = |c: &str| {
        if has(c) {
            format!("CAST({c} AS VARCHAR)")
        } else {
            "CAST(NULL AS VARCHAR)".into()
        }
    };
    let refund = if has("is_refund") {
        "COALESCE(TRY_CAST(is_refund AS BOOLEAN), false)".to_string()
    } else {
        "false".into()
    };
    let amount = if has("amount") {
        "TRY_CAST(amount AS DOUBLE)".to_string()
    } else {
        "TRY_CAST(quantity AS DOUBLE) * TRY_CAST(unit_price AS DOUBLE)".into()
    };
    let checks = value_checks(has);
    let bad = if checks.is_empty() {
        "false".to_string()
    } else {
        let any: Vec<&str> = checks.iter().map(|(_, _, c)| c.as_str()).collect();
        format!("COALESCE({}, false)", any.join(" OR "))
    };
    format!(
        "SELECT {store} AS store_id, CAST(transaction_id AS VARCHAR) AS transaction_id, \
         TRY_CAST(timestamp AS TIMESTAMP) AS timestamp, NULLIF({customer}, '') AS customer_id, \
         CAST(product_id AS VARCHAR) AS product_id, CAST(category AS VARCHAR) AS category, \
         TRY_CAST(quantity AS DOUBLE) AS quantity, TRY_CAST(unit_price AS DOUBLE) AS unit_price, \
         {amount} AS amount, {payment} AS payment_method, {refund} AS is_refund, \
         {bad} AS {BAD_ROW} FROM mapped_transactions",
        store = text("store_id"),
        customer = text("customer_id"),
        payment = text("payment_method"),
    )
}

/// Whether any row of `batch` failed a check.
fn has_bad_row(batch: &RecordBatch) -> bool {
    use datafusion::arrow::array::AsArray;
    batch
        .column_by_name(BAD_ROW)
        .and_then(|c| c.as_boolean_opt())
        .is_some_and(|flags| flags.true_count() > 0)
}

/// The typed rows without the check flag. The batches' own schema is used when there
/// are any (the plan's may differ in nullability).
fn without_flag(
    planned: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>), DataFusionError> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or(planned);
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| schema.field(i).name() != BAD_ROW)
        .collect();
    let batches = batches
        .iter()
        .map(|b| b.project(&keep))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((Arc::new(schema.project(&keep)?), batches))
}

/// One check on one column: (column, "required" or the SQL type, the SQL condition
/// that is true on a bad row).
type Check = (&'static str, &'static str, String);

/// The checks of every present column: required values, then typed values.
fn value_checks(has: &(dyn Fn(&str) -> bool + Sync)) -> Vec<Check> {
    let mut checks = Vec::new();
    for col in TRANSACTION_COLUMNS.iter().filter(|c| has(c.name)) {
        let v = format!("NULLIF(CAST({} AS VARCHAR), '')", col.name);
        if col.required {
            checks.push((col.name, "required", format!("{v} IS NULL")));
        }
        let sql_type = match col.ty {
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Number => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Text => continue,
        };
        checks.push((
            col.name,
            sql_type,
            format!("({v} IS NOT NULL AND TRY_CAST({v} AS {sql_type}) IS NULL)"),
        ));
    }
    checks
}

/// Find the first row whose value cannot be typed, in one pass over the file.
async fn validate(
    ctx: &SessionContext,
    path: &Path,
    has: &(dyn Fn(&str) -> bool + Sync),
) -> Result<(), DataError> {
    let checks = value_checks(has);
    if checks.is_empty() {
        return Ok(());
    }
    let flags: Vec<String> = checks
        .iter()
        .enumerate()
        .map(|(i, (_, _, c))| format!("{c} AS bad_{i}"))
        .collect();
    let any: Vec<String> = (0..checks.len()).map(|i| format!("bad_{i}")).collect();
    let values: Vec<String> = checks
        .iter()
        .enumerate()
        .map(|(i, (n, _, _))| format!("CAST({n} AS VARCHAR) AS value_{i}"))
        .collect();
    let sql = format!(
        "SELECT * FROM (SELECT ROW_NUMBER() OVER () AS row_number, {flags}, {values} FROM mapped_transactions) WHERE {any} ORDER BY row_number LIMIT 1",
        flags = flags.join(", "),
        values = values.join(", "),
        any = any.join(" OR "),
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(sql_err(path, "validating"))?
        .collect()
        .await
        .map_err(sql_err(path, "validating"))?;
    let bad = batches.iter().find(|b| b.num_rows() > 0);
    match bad.and_then(|batch| first_bad_value(batch, &checks, path)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The error for the first failing check of the (only) row in `batch`, if any fails.
fn first_bad_value(batch: &RecordBatch, checks: &[Check], path: &Path) -> Option<DataError> {
    use datafusion::arrow::array::{Array, AsArray};
    let row = text_value(batch.column(0), 0)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let line = row + 1; // the header is line 1
    let failed = checks.iter().enumerate().find(|(i, _)| {
        let bad = batch.column(1 + i).as_boolean_opt();
        bad.is_some_and(|b| b.is_valid(0) && b.value(0))
    });
    let (i, (name, expected, _)) = failed?;
    if *expected == "required" {
        return Some(DataError::MissingValue {
            path: path.to_path_buf(),
            column: name.to_string(),
            line,
        });
    }
    Some(DataError::BadValue {
        path: path.to_path_buf(),
        column: name.to_string(),
        line,
        value: text_value(batch.column(1 + checks.len() + i), 0).unwrap_or_default(),
        expected: match *expected {
            "TIMESTAMP" => "a timestamp (YYYY-MM-DD HH:MM:SS)",
            "DOUBLE" => "a number",
            _ => "true/false",
        },
    })
}

/// A cell as text, whatever its Arrow type (DataFusion may return Utf8 or Utf8View).
pub(crate) fn text_value(
    column: &datafusion::arrow::array::ArrayRef,
    row: usize,
) -> Option<String> {
    use datafusion::arrow::array::Array;
    if column.is_null(row) {
        return None;
    }
    datafusion::arrow::util::display::array_value_to_string(column, row).ok()
}

/// The business type in the export's `store.json`, when it has one.
fn declared_business_type(dir: &Path) -> Option<BusinessType> {
    declared_business_type_text(dir)?.parse().ok()
}

/// The `business_type` text of the export's `store.json`, as written (reports show
/// it even when it is not a type the network knows).
pub fn declared_business_type_text(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(STORE_META_FILE)).ok()?;
    let meta: serde_json::Value = serde_json::from_str(&text).ok()?;
    meta.get("business_type")?.as_str().map(str::to_string)
}
