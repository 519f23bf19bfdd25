//! Models that stores train beside their own data, and the [`LocalTask`] seam the
//! agent drives: given the global parameters and the round's [`LocalWork`], compute an
//! update; given a model, compute aggregate metrics. Nothing here does IO or knows
//! about the network: a task holds its store's prepared rows in memory.
//!
//! Demand forecasting ([`DemandTask`]) is a Poisson GLM on daily units per store and
//! category, relative to the series' own scale so that stores of very different size
//! share one model. The analytics tasks ([`analytics`]) cluster customers and receipts
//! and score churn. Every task can turn the final model into the store's own results
//! ([`LocalTask::results`]): tables its agent writes into the store's results folder.
//!
//! ```
//! use fedretail_models::{glm, demand_layout};
//! let layout = demand_layout();
//! assert_eq!(layout.len(), fedretail_models::DEMAND_DIM);
//! ```

pub mod analytics;
pub mod classify;
pub mod clustering;
pub mod demand;
pub mod glm;
pub mod grouped;
mod keys;
pub mod metrics;
mod rows;
mod source;
mod task;
pub mod words;

pub use analytics::{
    ChurnScoring, ChurnTask, ClusterPurpose, ClusterSettings, LabelledClusterTask, Scoring,
    ScoringTask, TableScoring, TabularTask,
};
pub use classify::{example_gradient, ClassifierKind, ClassifierTask, LabeledRows, OwnHead};
pub use clustering::{ClusterTask, PointSet};
pub use demand::{
    demand_category_bucket, demand_feature_names, demand_layout, ActivePositions, DemandDataset,
    DemandRows, DemandTask, Features, DEMAND_CATEGORY_START, DEMAND_CATEGORY_TERMS, DEMAND_DIM,
    DEMAND_FEATURES, DEMAND_TYPE_START, DEMAND_TYPE_TERMS,
};
pub use fedretail_core::LocalWork;
pub use grouped::GroupedTask;
pub use keys::{RowKeys, RowKeysBuilder};
pub use source::{DescribeFuture, FixedTasks, PrepareFuture, TaskSource};
pub use task::{LocalTask, ResultTable, StoreResults, TaskError, TaskMetrics};
