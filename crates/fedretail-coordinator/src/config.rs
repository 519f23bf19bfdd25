use fedretail_core::{
    ConfigError, FedAvg, FedAvgConfig, FedNewton, FedNewtonConfig, SamplingConfig, Strategy,
    UpdatePrecision,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which federated algorithm the job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Exact federated Newton on summed gradients and Hessians (GLMs).
    Newton,
    /// Federated averaging of local SGD, weighted by training rows.
    Fedavg,
}

/// A store allowed to join, with its pre-shared token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCredential {
    pub store_id: String,
    pub token: String,
}

/// The coordinator's configuration file (TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Address to listen on, e.g. "0.0.0.0:50051".
    #[serde(default = "default_listen")]
    pub listen: String,
    /// SQLite file for rounds, checkpoints and results.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// Largest gRPC message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// Stores allowed to join. Empty: any store id may join with `open_token`.
    #[serde(default)]
    pub stores: Vec<StoreCredential>,
    /// Token for open enrolment (when `stores` is empty).
    #[serde(default)]
    pub open_token: Option<String>,
    pub job: JobConfig,
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_database() -> PathBuf {
    PathBuf::from("fedretail-coordinator.db")
}
fn default_max_message() -> usize {
    fedretail_proto::DEFAULT_MAX_MESSAGE_BYTES
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    #[serde(default = "default_job_id")]
    pub job_id: String,
    #[serde(default = "default_task")]
    pub task: String,
    #[serde(default = "default_strategy")]
    pub strategy: StrategyKind,
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// Stores to wait for before round 1 (defaults to `min_stores`).
    #[serde(default)]
    pub expected_stores: Option<usize>,
    #[serde(default = "default_min_stores")]
    pub min_stores: usize,
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// A round closes when every selected store replied or this deadline passes.
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: f64,
    /// How long to wait for `expected_stores` before starting with what joined.
    #[serde(default = "default_registration_timeout")]
    pub registration_timeout_secs: f64,
    /// Attempts at a round that fails (too few replies) before the job stops.
    #[serde(default = "default_round_attempts")]
    pub round_attempts: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_l2")]
    pub l2: f64,
    #[serde(default)]
    pub fedavg: FedAvgSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAvgSettings {
    pub local_epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// Send deltas as f32 (half the bytes) instead of f64.
    pub f32_updates: bool,
}

impl Default for FedAvgSettings {
    fn default() -> Self {
        FedAvgSettings {
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.05,
            f32_updates: true,
        }
    }
}

fn default_job_id() -> String {
    "demand-forecast".into()
}
fn default_task() -> String {
    "demand".into()
}
fn default_strategy() -> StrategyKind {
    StrategyKind::Newton
}
fn default_rounds() -> u32 {
    8
}
fn default_min_stores() -> usize {
    2
}
fn default_fraction() -> f64 {
    1.0
}
fn default_round_timeout() -> f64 {
    120.0
}
fn default_registration_timeout() -> f64 {
    300.0
}
fn default_round_attempts() -> u32 {
    3
}
fn default_l2() -> f64 {
    1.0
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            job_id: default_job_id(),
            task: default_task(),
            strategy: default_strategy(),
            rounds: default_rounds(),
            expected_stores: None,
            min_stores: default_min_stores(),
            fraction: default_fraction(),
            round_timeout_secs: default_round_timeout(),
            registration_timeout_secs: default_registration_timeout(),
            round_attempts: default_round_attempts(),
            seed: 0,
            l2: default_l2(),
            fedavg: FedAvgSettings::default(),
        }
    }
}

impl CoordinatorConfig {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A validated job: every parameter checked before round 1.
#[derive(Debug, Clone)]
pub struct CheckedJob {
    pub config: JobConfig,
    pub round_timeout: Duration,
    pub registration_timeout: Duration,
    pub expected_stores: usize,
}

impl CheckedJob {
    pub fn new(config: JobConfig) -> Result<Self, ConfigError> {
        if config.job_id.trim().is_empty() {
            return Err(ConfigError::out_of_range("job_id", "non-empty", "\"\""));
        }
        if config.rounds == 0 {
            return Err(ConfigError::out_of_range("rounds", ">= 1", 0));
        }
        for (name, v) in [
            ("round_timeout_secs", config.round_timeout_secs),
            (
                "registration_timeout_secs",
                config.registration_timeout_secs,
            ),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(ConfigError::out_of_range(name, "> 0", v));
            }
        }
        if config.round_attempts == 0 {
            return Err(ConfigError::out_of_range("round_attempts", ">= 1", 0));
        }
        fedretail_models::layout_for_task(&config.task)
            .map_err(|e| ConfigError::Layout(e.to_string()))?;
        let expected_stores = config.expected_stores.unwrap_or(config.min_stores);
        if expected_stores < config.min_stores {
            return Err(ConfigError::out_of_range(
                "expected_stores",
                ">= min_stores",
                expected_stores,
            ));
        }
        let job = CheckedJob {
            round_timeout: Duration::from_secs_f64(config.round_timeout_secs),
            registration_timeout: Duration::from_secs_f64(config.registration_timeout_secs),
            expected_stores,
            config,
        };
        job.build_strategy()?;
        Ok(job)
    }

    pub fn build_strategy(&self) -> Result<Box<dyn Strategy>, ConfigError> {
        let c = &self.config;
        let sampling = SamplingConfig {
            fraction: c.fraction,
            min_stores: c.min_stores,
            seed: c.seed,
        };
        Ok(match c.strategy {
            StrategyKind::Newton => Box::new(FedNewton::try_new(FedNewtonConfig {
                sampling,
                l2: c.l2,
                ..Default::default()
            })?),
            StrategyKind::Fedavg => Box::new(FedAvg::try_new(FedAvgConfig {
                sampling,
                local_epochs: c.fedavg.local_epochs,
                batch_size: c.fedavg.batch_size,
                learning_rate: c.fedavg.learning_rate,
                // FedAvg's local objective is a mean, so its penalty is per example.
                l2: c.l2 * 1e-4,
                server_learning_rate: 1.0,
                precision: if c.fedavg.f32_updates {
                    UpdatePrecision::F32
                } else {
                    UpdatePrecision::F64
                },
            })?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let cfg = CoordinatorConfig::from_toml("[job]\n").unwrap();
        assert_eq!(cfg.job.strategy, StrategyKind::Newton);
        assert!(CheckedJob::new(cfg.job).is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = CoordinatorConfig::from_toml("[job]\nfraction = 1.5\n").unwrap();
        assert_eq!(
            CheckedJob::new(cfg.job).unwrap_err().to_string(),
            "sampling fraction must be in (0, 1], got 1.5"
        );
        let cfg = CoordinatorConfig::from_toml("[job]\ntask = \"astrology\"\n").unwrap();
        assert!(CheckedJob::new(cfg.job)
            .unwrap_err()
            .to_string()
            .contains("unknown task 'astrology'"));
        let err = CoordinatorConfig::from_toml("[job]\nrounds = 3\nround = 4\n").unwrap_err();
        assert!(err.contains("unknown field `round`"), "{err}");
    }
}
