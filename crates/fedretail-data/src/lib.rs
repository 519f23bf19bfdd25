//! Store data: a store's point-of-sale export read with DataFusion (CSV or Parquet),
//! mapped onto the canonical schema by an optional SQL view, validated with errors that
//! name the file, column and line, and turned into model features in SQL.
//!
//! Everything here runs at the store, beside its data. What leaves this crate is a
//! prepared in-memory dataset for the store's own agent, never for the coordinator.
//!
//! ```no_run
//! # async fn run() -> Result<(), fedretail_data::DataError> {
//! use fedretail_data::{load_demand_dataset, DemandSpec, StoreSource};
//! let source = StoreSource::from_dir("network/store-001".as_ref());
//! let data = load_demand_dataset("store-001", &source, &DemandSpec::default()).await?;
//! println!("{} training rows", data.train.len());
//! # Ok(()) }
//! ```

mod customer_sql;
mod demand_sql;
mod error;
mod plans;
mod source;
mod tabular;
mod tasks;

pub use customer_sql::{
    load_churn_rows, load_customer_points, load_transaction_points, CustomerFeatureSet,
    CustomerPoints, FeatureWindow, TransactionPoints, CUSTOMER_ANOMALY_FEATURES, SEGMENT_FEATURES,
    TRANSACTION_FEATURES,
};
pub use demand_sql::{load_demand_dataset, DemandSpec};
pub use error::DataError;
pub use source::{declared_business_type_text, open_store, StoreSource, LABELS_FILE};
pub use tabular::{
    load_tabular, write_silos, StoreTable, TabularSilo, TabularSpec, TabularTable, RANDOM_SPLIT,
};
pub use tasks::{build_local_task, describe_table, StoreExport};
