use thiserror::Error;

/// A configuration value that cannot work, found before any round starts.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("{name} must be {requirement}, got {got}")]
    OutOfRange {
        name: &'static str,
        requirement: &'static str,
        got: String,
    },
    #[error("model layout is invalid: {0}")]
    Layout(String),
}

impl ConfigError {
    pub fn out_of_range(name: &'static str, requirement: &'static str, got: impl ToString) -> Self {
        ConfigError::OutOfRange {
            name,
            requirement,
            got: got.to_string(),
        }
    }
}

/// Why a store's update was refused. Each variant names the problem precisely so the
/// store's operator can act on it; a refused update never touches the aggregate.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum UpdateRejection {
    #[error("update has {got} values, the model expects {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("update value at index {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("update L2 norm {norm} exceeds the limit {limit}")]
    NormTooLarge { norm: f64, limit: f64 },
    #[error("update weight must be finite and >= 0, got {0}")]
    BadWeight(f64),
}

/// Errors from the streaming aggregator.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AggregationError {
    #[error(transparent)]
    Rejected(#[from] UpdateRejection),
}

/// A strategy could not turn the aggregate into a new global model.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StrategyError {
    #[error("no updates were aggregated in round {round}")]
    EmptyRound { round: u64 },
    #[error("aggregate has {got} values, strategy expects {expected}")]
    AggregateShape { expected: usize, got: usize },
    #[error("the summed Hessian is not positive definite in round {round}; add L2 regularisation")]
    NotPositiveDefinite { round: u64 },
    #[error("too few stores available: {available} available, {required} required")]
    TooFewStores { available: usize, required: usize },
    #[error("the new global model has a non-finite value at index {index}")]
    NonFiniteModel { index: usize },
    #[error("invalid strategy configuration: {0}")]
    Config(String),
}
