use std::path::PathBuf;

/// What is wrong with a store's data, precisely enough for its operator to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    #[error("{path}: file is empty (expected a header line and rows)")]
    EmptyFile { path: PathBuf },
    #[error("{path}: has a header but no rows")]
    NoRows { path: PathBuf },
    #[error("{path}: unsupported file type (expected .csv or .parquet)")]
    UnsupportedFormat { path: PathBuf },
    #[error("{path}: missing required column '{column}' (columns present: {present}); map it with `view_sql` in the store's agent config")]
    MissingColumn {
        path: PathBuf,
        column: String,
        present: String,
    },
    #[error("{path}: column '{column}', line {line}: cannot read '{value}' as {expected}")]
    BadValue {
        path: PathBuf,
        column: String,
        line: u64,
        value: String,
        expected: &'static str,
    },
    #[error("{path}: column '{column}', line {line}: value is required but empty")]
    MissingValue {
        path: PathBuf,
        column: String,
        line: u64,
    },
    #[error("{path}: {days} days of history; demand forecasting needs at least {needed} (56 days of lags, {holdout} held out)")]
    TooLittleHistory {
        path: PathBuf,
        days: i64,
        needed: i64,
        holdout: u32,
    },
    #[error("the store's view_sql is invalid: {0}")]
    BadView(String),
    #[error("{path}: {context}: {source}")]
    Query {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid demand spec: {0}")]
    Spec(String),
    #[error("this store cannot take part in task '{task}': {reason}")]
    CannotServe { task: &'static str, reason: String },
}

/// Wrap a DataFusion error with the file and what was being done.
pub(crate) fn sql_err<'a>(
    path: &'a std::path::Path,
    context: &'static str,
) -> impl Fn(datafusion::error::DataFusionError) -> DataError + 'a {
    move |source| DataError::Query {
        path: path.to_path_buf(),
        context,
        source,
    }
}
