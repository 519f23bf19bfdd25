//! The federated core of fedretail: model parameters as flat vectors with named
//! segments, the [`Strategy`] seam (who takes part in a round with what work, and how
//! replies become the new global model), and streaming aggregation whose memory is
//! O(model size), independent of how many stores reply.
//!
//! The core is pure and deterministic for a seed: it knows nothing about gRPC,
//! DataFusion, files or clocks. Transport and storage wrap it.
//!
//! ```
//! use fedretail_core::{FedAvg, ModelLayout, ModelParameters, Segment, StreamingWeightedSum,
//!     Strategy, UpdateVector};
//!
//! let layout = ModelLayout::new(vec![Segment::new("weights", 3, true)]).unwrap();
//! let global = ModelParameters::zeros(layout.clone());
//! let mut fedavg = FedAvg::new(Default::default());
//! // Two stores send parameter deltas; FedAvg weights them by training rows.
//! let mut sum = StreamingWeightedSum::new(3);
//! sum.push(UpdateVector::F64(vec![1.0, 0.0, 0.0]), fedavg.update_weight(30)).unwrap();
//! sum.push(UpdateVector::F64(vec![0.0, 1.0, 0.0]), fedavg.update_weight(10)).unwrap();
//! let next = fedavg.apply(1, &global, &sum.finish()).unwrap();
//! assert_eq!(next.parameters.values(), &[0.75, 0.25, 0.0]);
//! ```

mod aggregate;
mod buffers;
pub mod clustered;
mod error;
mod fedavg;
mod kernels;
pub mod kmeans;
mod newton;
mod par;
mod params;
pub mod robust;
mod sampling;
mod server_opt;
mod strategy;
pub mod tabular;
pub mod task;
mod update;
mod validate;
mod wire_fold;

pub use aggregate::{Aggregate, StreamingWeightedSum, Verdict};
pub use clustered::fedavg::{ClusteredFedAvg, ClusteredFedAvgConfig};
pub use clustered::{ClusteredNewton, ClusteredNewtonConfig};
pub use error::{AggregationError, ConfigError, StrategyError, UpdateRejection};
pub use fedavg::{FedAvg, FedAvgConfig};
pub use kernels::WireFloat;
pub use newton::{
    newton_statistics_len, pack_upper, unpack_upper, FedNewton, FedNewtonConfig, L2Penalty,
};
pub use params::{ModelLayout, ModelParameters, Segment};
pub use robust::{RobustRule, RoundAggregator};
pub use sampling::{SamplingConfig, StoreSampler};
pub use server_opt::{ServerOpt, ServerOptimizer};
pub use strategy::{Applied, LocalSgd, LocalWork, RoundPlan, StoreId, Strategy, UpdatePrecision};
pub use task::{CheckedTask, TaskKind, TaskMetrics, TaskSpec};
pub use update::UpdateVector;
pub use validate::{decode_checked, validate_update, UpdateLimits};

/// A boxed future. The public async entry points of the crates that reach DataFusion
/// or the network return one: an `async fn`'s body is compiled again in every crate
/// that awaits it (with all the DataFusion and tonic code it inlines), which made each
/// downstream binary and test cost minutes of build. Boxed, callers link the one copy.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// [`BoxFuture`] for work that borrows a non-`Sync` callback and so is not `Send`.
pub type LocalBoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;
