//! Models that stores train beside their own data, and the [`LocalTask`] seam the
//! agent drives: given the global parameters and the round's [`LocalWork`], compute an
//! update; given a model, compute aggregate metrics. Nothing here does IO or knows
//! about the network: a task holds its store's prepared rows in memory.
//!
//! The first task is demand forecasting ([`DemandTask`]): a Poisson GLM on daily units
//! per store and category, relative to the series' own scale so that stores of very
//! different size share one model.
//!
//! ```
//! use fedretail_models::{glm, demand_layout};
//! let layout = demand_layout();
//! assert_eq!(layout.len(), fedretail_models::DEMAND_FEATURES.len());
//! ```

pub mod classify;
pub mod clustering;
pub mod demand;
pub mod glm;
pub mod metrics;
mod task;

pub use classify::{example_gradient, ClassifierKind, ClassifierTask, LabeledRows};
pub use clustering::{ClusterTask, PointSet};
pub use demand::{demand_layout, DemandDataset, DemandRows, DemandTask, DEMAND_FEATURES};
pub use fedretail_core::LocalWork;
pub use task::{layout_for_task, LocalTask, TaskError, TaskMetrics};
