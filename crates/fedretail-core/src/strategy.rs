use crate::aggregate::Aggregate;
use crate::error::StrategyError;
use crate::params::{ModelLayout, ModelParameters};

/// A store's identifier as the network knows it (e.g. `store-007`).
pub type StoreId = String;

/// Numeric precision a store uses to send its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdatePrecision {
    /// Half the bytes; right for FedAvg deltas.
    F32,
    /// Exact sums; right for sufficient statistics.
    F64,
}

/// The work a store does in a round, starting from the global parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalWork {
    /// Mini-batch SGD over the local training rows; the store returns
    /// `local_parameters - global_parameters`.
    LocalEpochs {
        epochs: u32,
        batch_size: u32,
        learning_rate: f64,
        /// L2 penalty on regularised segments, per training example.
        l2: f64,
        /// Seeds the local shuffle; identical data and seed give identical updates.
        seed: u64,
    },
    /// The gradient and Hessian of the local loss at the global parameters, packed as
    /// `[gradient (d), upper triangle of the Hessian (d(d+1)/2)]`.
    SecondOrderStatistics,
    /// Per-cluster sums, weights and squared errors of the store's points under the
    /// global clustering (see [`crate::kmeans`]).
    ClusterStatistics,
}

/// Who takes part in a round and with what work.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundPlan {
    pub stores: Vec<StoreId>,
    pub work: LocalWork,
    pub precision: UpdatePrecision,
    /// The coordinator scales each update down to this L2 norm before folding it in
    /// (server-side clipping, set by a DP wrapper); None folds updates as they come.
    pub server_clip: Option<f64>,
}

/// A new global model and how far it moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub parameters: ModelParameters,
    /// L2 norm of the change to the global parameters.
    pub step_norm: f64,
}

/// A federated algorithm. It decides only who takes part with what work
/// ([`Strategy::configure_round`]) and how the aggregate of the replies becomes the new
/// global model ([`Strategy::apply`]); the round driver owns the loop, the transport
/// and the streaming aggregation, so every strategy is one small file and privacy or
/// robustness can wrap any of them.
pub trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// Choose the stores for `round` among those available, and their work.
    fn configure_round(
        &mut self,
        round: u64,
        available: &[StoreId],
    ) -> Result<RoundPlan, StrategyError>;

    /// Length of the update vector each store sends for a model of this layout.
    fn update_len(&self, layout: &ModelLayout) -> usize {
        layout.len()
    }

    /// Weight of a store's update in the aggregate, from its training rows.
    fn update_weight(&self, num_examples: u64) -> f64;

    /// Whether `global` is final, so the job stops before its round limit (k-means
    /// ends when its tree is complete; averaging strategies run every round).
    fn is_finished(&self, _global: &ModelParameters) -> bool {
        false
    }

    /// Rounds after which the strategy is surely finished, if it knows.
    fn round_limit(&self) -> Option<u64> {
        None
    }

    /// Turn the round's aggregate into the next global model.
    fn apply(
        &mut self,
        round: u64,
        global: &ModelParameters,
        aggregate: &Aggregate,
    ) -> Result<Applied, StrategyError>;
}

pub fn check_finite_model(values: &[f64]) -> Result<(), StrategyError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(StrategyError::NonFiniteModel { index }),
        None => Ok(()),
    }
}
