use fedretail_core::kmeans::{FedBisectingKMeans, KMeansConfig};
use fedretail_core::tabular::TabularEncoding;
use fedretail_core::task::{ChurnTaskOptions, ClassifierKind, TabularTaskOptions, TaskKind};
use fedretail_core::{
    CheckedTask, ClusteredFedAvg, ClusteredFedAvgConfig, ClusteredNewton, ClusteredNewtonConfig,
    ConfigError, FedAvg, FedAvgConfig, FedNewton, FedNewtonConfig, ModelLayout, ModelParameters,
    RobustRule, SamplingConfig, Segment, ServerOpt, ServerOptimizer, Strategy, TaskSpec,
    UpdatePrecision,
};
use fedretail_privacy::secagg::MaskPrg;
use fedretail_privacy::{ClipRule, Denominator, DpFedAvg, DpSettings, Sampling};
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
    /// Exact federated bisecting k-means: stores send per-cluster sums, so every
    /// round is the centralized Lloyd step (clustering tasks).
    BisectingKmeans,
}

impl StrategyKind {
    pub fn name(&self) -> &'static str {
        match self {
            StrategyKind::Newton => "newton",
            StrategyKind::Fedavg => "fedavg",
            StrategyKind::BisectingKmeans => "bisecting_kmeans",
        }
    }

    /// The strategy a task runs when the job does not name one.
    pub fn default_for(task: &TaskSpec) -> StrategyKind {
        match task {
            TaskSpec::Demand(_) => StrategyKind::Newton,
            TaskSpec::Churn(ChurnTaskOptions { model, .. })
            | TaskSpec::Tabular(TabularTaskOptions { model, .. }) => match model {
                ClassifierKind::Logistic => StrategyKind::Newton,
                ClassifierKind::Mlp { .. } => StrategyKind::Fedavg,
            },
            _ => StrategyKind::BisectingKmeans,
        }
    }
}

/// The coordinator's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: every agent must present a certificate this CA signed (`fedretail
    /// enroll` issues them); a store with a `certificate_sha256` must present that one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// A store allowed to join: its pre-shared token, its enrolled certificate, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreCredential {
    pub store_id: String,
    /// Empty when the certificate alone is the store's identity.
    #[serde(default)]
    pub token: String,
    /// SHA-256 (hex) of the certificate `fedretail enroll` issued the store: under
    /// mutual TLS it must present exactly that one.
    #[serde(default)]
    pub certificate_sha256: Option<String>,
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
    /// Most training rows a store may claim. FedAvg weights each update by the rows its
    /// store claims, so one false claim could outweigh every honest store: a store that
    /// claims more sits the job out, with the reason.
    #[serde(default = "default_max_store_rows")]
    pub max_store_rows: u64,
    /// What one connection may ask of the server (`[limits]`).
    #[serde(default)]
    pub limits: ConnectionLimits,
    /// `[tls]`: serve gRPC over TLS with this certificate and key (PEM), e.g. from
    /// `fedretail certs`. Without it the coordinator serves plain HTTP, which the
    /// command allows only on a loopback address or with `--insecure`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Stores allowed to join. Empty: any store id may join with `open_token`.
    #[serde(default)]
    pub stores: Vec<StoreCredential>,
    /// Token for open enrolment (when `stores` is empty).
    #[serde(default)]
    pub open_token: Option<String>,
    /// With no `stores` and no `open_token`, any store may join only if this says so.
    #[serde(default)]
    pub open_registration: bool,
    /// Most stores registered at once; a new one beyond it is refused.
    #[serde(default = "default_max_stores")]
    pub max_stores: usize,
    /// A single job (`[job]`), run before any in `jobs`.
    #[serde(default)]
    pub job: Option<JobConfig>,
    /// Jobs run one after another against the same connected stores (`[[jobs]]`).
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// A folder watched for more jobs while the coordinator runs: each `*.toml` file
    /// in it is one job (the fields of `[job]`), run in file-name order once the
    /// configured ones are done. With a folder the coordinator serves until stopped.
    #[serde(default)]
    pub jobs_dir: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_database() -> PathBuf {
    PathBuf::from("fedretail-coordinator.db")
}
/// What one connection may ask of the coordinator: a few misbehaving peers must not
/// exhaust it. `[limits]` in the coordinator's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Requests one connection may have in service at once; more wait their turn.
    pub concurrency_per_connection: usize,
    /// Longest a request may take; above the longest poll wait (30 s).
    pub request_timeout_secs: u64,
    /// HTTP/2 pings on a connection, and how long an answer may take before it is
    /// closed (a store's PC that vanished frees its connection).
    pub keepalive_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// Failed registrations one address may make per minute before its registrations
    /// are refused for the rest of that minute (0: no limit).
    pub failed_registrations_per_minute: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_concurrent_streams: 16,
            concurrency_per_connection: 8,
            request_timeout_secs: 60,
            keepalive_secs: 30,
            keepalive_timeout_secs: 20,
            failed_registrations_per_minute: 20,
        }
    }
}

impl ConnectionLimits {
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, got: u64| {
            if got == 0 {
                Err(ConfigError::out_of_range(name, ">= 1", got))
            } else {
                Ok(())
            }
        };
        positive(
            "limits.max_concurrent_streams",
            u64::from(self.max_concurrent_streams),
        )?;
        positive(
            "limits.concurrency_per_connection",
            self.concurrency_per_connection as u64,
        )?;
        positive("limits.keepalive_secs", self.keepalive_secs)?;
        positive("limits.keepalive_timeout_secs", self.keepalive_timeout_secs)?;
        if self.request_timeout_secs <= 30 {
            // A poll may wait 30 s at the coordinator before it answers.
            return Err(ConfigError::out_of_range(
                "limits.request_timeout_secs",
                "> 30 (a poll may wait 30 s for work)",
                self.request_timeout_secs,
            ));
        }
        Ok(())
    }
}

fn default_max_stores() -> usize {
    10_000
}

fn default_max_store_rows() -> u64 {
    DEFAULT_MAX_STORE_ROWS
}

/// Ten million training rows: far more than a shop's history of daily sales per
/// category, customers or receipts in a feature window.
pub const DEFAULT_MAX_STORE_ROWS: u64 = 10_000_000;

fn default_max_message() -> usize {
    fedretail_proto::DEFAULT_MAX_MESSAGE_BYTES
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    #[serde(default = "default_job_id")]
    pub job_id: String,
    /// The task and its options: a name (`task = "segments"`) or a table with `kind`
    /// (`[job.task]`, `kind = "segments"`, `clusters = 4`).
    #[serde(default, deserialize_with = "task_field")]
    pub task: TaskSpec,
    /// The federated algorithm; by default the task's own (newton for demand and
    /// logistic churn, fedavg for the MLP, bisecting_kmeans for clustering).
    #[serde(default)]
    pub strategy: Option<StrategyKind>,
    /// Rounds at most; by default 8 (newton), 20 (fedavg) or as many as the clustering
    /// can take (it stops when its tree is complete).
    #[serde(default)]
    pub rounds: Option<u32>,
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
    /// Secure aggregation and store-level differential privacy; off by default.
    #[serde(default)]
    pub privacy: PrivacySettings,
    /// `[job.robust]`: combine each round's updates by a rule a few lying stores
    /// cannot steer: `rule = "median"`, `"trimmed_mean"` (with `trim`, the share
    /// dropped at each end) or `"norm_bounded"` (with `factor`, a multiple of the
    /// round's median update norm). For fedavg, without privacy (the coordinator must
    /// see each update). Off by default: the streaming weighted mean.
    #[serde(default)]
    pub robust: Option<RobustRule>,
}

/// `[job.privacy]`: what protects the stores' updates.
///
/// ```toml
/// [job.privacy]
/// secure_aggregation = true   # SecAgg+: the coordinator sees only the sum
/// clip = 0.5                  # L2 clip of each store's update
/// noise = "distributed"       # "none", "central", "distributed" or "local"
/// noise_multiplier = 1.0      # noise std of the sum, in clips
/// budget_epsilon = 8.0        # refuse any round that would spend more
/// delta = 1e-5
/// mask_prg = "aes128_ctr"     # or "chacha20" (faster on CPUs without hardware AES)
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    #[serde(default)]
    pub secure_aggregation: bool,
    /// The stream cipher SecAgg+ masks are expanded with; every store uses the job's.
    #[serde(default)]
    pub mask_prg: MaskPrg,
    /// Share of a round's stores expected to drop out; sizes the SecAgg+ graph.
    #[serde(default = "default_dropout")]
    pub expected_dropout: f64,
    /// L2 norm each store clips its update to. Needed by secure aggregation (the
    /// fixed-point encoding needs a bound) and by any noise (it is the sensitivity).
    #[serde(default)]
    pub clip: Option<f64>,
    #[serde(default = "default_noise")]
    pub noise: NoiseKind,
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// ε the job may spend at `delta`; without it the ledger only records.
    #[serde(default)]
    pub budget_epsilon: Option<f64>,
    #[serde(default = "default_delta")]
    pub delta: f64,
}

/// Who adds the Gaussian noise (see `fedretail_privacy::NoisePlacement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    None,
    Central,
    Distributed,
    Local,
}

impl NoiseKind {
    /// Whether the stores noise their own updates (so what they send is a release).
    pub fn at_stores(self) -> bool {
        matches!(self, NoiseKind::Distributed | NoiseKind::Local)
    }
}

fn default_dropout() -> f64 {
    0.1
}
fn default_noise() -> NoiseKind {
    NoiseKind::None
}
fn default_delta() -> f64 {
    1e-5
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings {
            secure_aggregation: false,
            mask_prg: MaskPrg::default(),
            expected_dropout: default_dropout(),
            clip: None,
            noise: NoiseKind::None,
            noise_multiplier: None,
            budget_epsilon: None,
            delta: default_delta(),
        }
    }
}

impl PrivacySettings {
    pub fn is_active(&self) -> bool {
        self.secure_aggregation || self.noise != NoiseKind::None || self.clip.is_some()
    }

    fn validate(&self, strategy: StrategyKind) -> Result<(), ConfigError> {
        if !self.is_active() {
            return Ok(());
        }
        if strategy != StrategyKind::Fedavg {
            return Err(ConfigError::out_of_range(
                "privacy",
                "strategy = \"fedavg\" (newton sums unbounded second-order statistics, which \
                 cannot be clipped or fit a 32-bit secure-aggregation ring)",
                format!("{strategy:?}").to_lowercase(),
            ));
        }
        match self.clip {
            Some(c) if c > 0.0 && c.is_finite() => {}
            Some(c) => return Err(ConfigError::out_of_range("privacy.clip", "> 0", c)),
            None => {
                return Err(ConfigError::out_of_range(
                    "privacy.clip",
                    "set (secure aggregation and noise both need each update's L2 norm bounded)",
                    "nothing",
                ))
            }
        }
        if !(0.0..0.5).contains(&self.expected_dropout) {
            return Err(ConfigError::out_of_range(
                "privacy.expected_dropout",
                "in [0, 0.5)",
                self.expected_dropout,
            ));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(ConfigError::out_of_range(
                "privacy.delta",
                "in (0, 1)",
                self.delta,
            ));
        }
        self.validate_noise()
    }

    /// The noise settings: a multiplier exactly when noise is added, distributed noise
    /// only under SecAgg+, a budget only with noise.
    fn validate_noise(&self) -> Result<(), ConfigError> {
        match (self.noise, self.noise_multiplier) {
            (NoiseKind::None, Some(_)) => {
                return Err(ConfigError::out_of_range(
                    "privacy.noise_multiplier",
                    "unset when noise = \"none\"",
                    "a value",
                ))
            }
            (NoiseKind::None, None) => {}
            (_, Some(z)) if z > 0.0 && z.is_finite() => {}
            (_, Some(z)) => {
                return Err(ConfigError::out_of_range(
                    "privacy.noise_multiplier",
                    "> 0",
                    z,
                ))
            }
            (_, None) => {
                return Err(ConfigError::out_of_range(
                    "privacy.noise_multiplier",
                    "set when noise is added",
                    "nothing",
                ))
            }
        }
        if self.noise == NoiseKind::Distributed && !self.secure_aggregation {
            return Err(ConfigError::out_of_range(
                "privacy.noise",
                "\"distributed\" only with secure_aggregation = true (otherwise the coordinator \
                 sees each store's update with only its small share of the noise)",
                "\"distributed\"",
            ));
        }
        if let Some(eps) = self.budget_epsilon {
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(ConfigError::out_of_range(
                    "privacy.budget_epsilon",
                    "> 0",
                    eps,
                ));
            }
            if self.noise == NoiseKind::None {
                return Err(ConfigError::out_of_range(
                    "privacy.budget_epsilon",
                    "set only with noise (without noise nothing is private in the DP sense)",
                    eps,
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FedAvgSettings {
    pub local_epochs: u32,
    /// At least this many mini-batch steps a round per store: a tiny store passes over
    /// its rows more often (0: every store runs `local_epochs`).
    pub min_local_steps: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// Send deltas as f32 (half the bytes) instead of f64.
    pub f32_updates: bool,
    /// FedProx (Li et al. 2020): each store adds `mu/2 |w - w_global|^2` to its local
    /// loss, so very different stores drift less in their local steps; 0 is FedAvg.
    pub proximal_mu: f64,
    /// What the coordinator does with the mean delta (Reddi et al. 2021).
    pub server_optimizer: ServerOptimizerKind,
    /// Multiplies the server optimizer's step (1 with `none` is plain FedAvg).
    pub server_learning_rate: f64,
    /// Momentum (FedAvgM), or β1 (FedAdam, FedYogi).
    pub server_momentum: f64,
    /// β2 of FedAdam and FedYogi.
    pub server_beta2: f64,
    /// τ, the adaptivity floor of FedAdagrad, FedAdam and FedYogi.
    pub server_tau: f64,
}

/// The server optimizer of a FedAvg job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerOptimizerKind {
    /// Plain FedAvg: the mean delta, times the server learning rate.
    None,
    Momentum,
    Adagrad,
    Adam,
    Yogi,
}

impl Default for FedAvgSettings {
    fn default() -> Self {
        FedAvgSettings {
            local_epochs: 1,
            min_local_steps: 0,
            batch_size: 32,
            learning_rate: 0.05,
            f32_updates: true,
            proximal_mu: 0.0,
            server_optimizer: ServerOptimizerKind::None,
            server_learning_rate: 1.0,
            server_momentum: 0.9,
            server_beta2: 0.99,
            server_tau: 1e-3,
        }
    }
}

impl FedAvgSettings {
    /// FedAvg's server step: plain, or through a server optimizer.
    /// FedAvg with these settings and penalty `l2` per example, through the server
    /// optimizer if one is named.
    pub fn strategy(
        &self,
        sampling: SamplingConfig,
        l2: f64,
    ) -> Result<Box<dyn Strategy>, ConfigError> {
        let opt = self.server_optimizer();
        let fedavg = Box::new(FedAvg::try_new(self.fedavg_config(
            sampling,
            l2,
            opt.is_some(),
        ))?);
        Ok(match opt {
            Some(opt) => Box::new(ServerOpt::try_new(fedavg, opt, self.server_learning_rate)?),
            None => fedavg,
        })
    }

    /// FedAvg's own settings; `optimized` when a server optimizer takes the rate
    /// (plain FedAvg multiplies its mean by it).
    pub fn fedavg_config(
        &self,
        sampling: SamplingConfig,
        l2: f64,
        optimized: bool,
    ) -> FedAvgConfig {
        FedAvgConfig {
            sampling,
            local_epochs: self.local_epochs,
            min_local_steps: self.min_local_steps,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            l2,
            proximal_mu: self.proximal_mu,
            server_learning_rate: if optimized {
                1.0
            } else {
                self.server_learning_rate
            },
            precision: if self.f32_updates {
                UpdatePrecision::F32
            } else {
                UpdatePrecision::F64
            },
        }
    }

    pub fn server_optimizer(&self) -> Option<ServerOptimizer> {
        let (beta1, beta2, tau) = (self.server_momentum, self.server_beta2, self.server_tau);
        Some(match self.server_optimizer {
            ServerOptimizerKind::None => return None,
            ServerOptimizerKind::Momentum => ServerOptimizer::Momentum { momentum: beta1 },
            ServerOptimizerKind::Adagrad => ServerOptimizer::Adagrad { tau },
            ServerOptimizerKind::Adam => ServerOptimizer::Adam { beta1, beta2, tau },
            ServerOptimizerKind::Yogi => ServerOptimizer::Yogi { beta1, beta2, tau },
        })
    }
}

fn default_job_id() -> String {
    "demand-forecast".into()
}

/// A task as a name with default options, or as a table of options with its `kind`.
fn task_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TaskSpec, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(name) => name
            .parse::<TaskKind>()
            .map(|k| k.default_spec())
            .map_err(D::Error::custom),
        other => serde_json::from_value(other).map_err(D::Error::custom),
    }
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
            task: TaskSpec::default(),
            strategy: None,
            rounds: None,
            expected_stores: None,
            min_stores: default_min_stores(),
            fraction: default_fraction(),
            round_timeout_secs: default_round_timeout(),
            registration_timeout_secs: default_registration_timeout(),
            round_attempts: default_round_attempts(),
            seed: 0,
            l2: default_l2(),
            fedavg: FedAvgSettings::default(),
            privacy: PrivacySettings::default(),
            robust: None,
        }
    }
}

impl CoordinatorConfig {
    /// Who may join must be said: a list of stores, an enrolment token, or open
    /// registration asked for by name.
    pub fn check_admission(&self) -> Result<(), ConfigError> {
        if self.max_stores == 0 {
            return Err(ConfigError::out_of_range("max_stores", ">= 1", 0));
        }
        let client_ca = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        for c in &self.stores {
            if c.token.is_empty() && c.certificate_sha256.is_none() {
                return Err(ConfigError::out_of_range(
                    "stores.token",
                    "a token or a certificate_sha256",
                    &c.store_id,
                ));
            }
            if c.certificate_sha256.is_some() && !client_ca {
                return Err(ConfigError::out_of_range(
                    "tls.client_ca",
                    "set when a store is known by its certificate (mutual TLS)",
                    &c.store_id,
                ));
            }
        }
        if self.stores.is_empty() && self.open_token.is_none() && !self.open_registration {
            return Err(ConfigError::out_of_range(
                "stores",
                "a [[stores]] list, an open_token, or open_registration = true (anyone may \
                 then join as any store id)",
                "none of them",
            ));
        }
        Ok(())
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The configured jobs in order (`[job]` first), each checked, with distinct ids.
    /// No job at all means one demand job with every default.
    pub fn checked_jobs(&self) -> Result<Vec<CheckedJob>, ConfigError> {
        self.limits.check()?;
        let mut configs: Vec<JobConfig> = self.job.iter().chain(&self.jobs).cloned().collect();
        if configs.is_empty() && self.jobs_dir.is_none() {
            configs.push(JobConfig::default());
        }
        let mut seen = std::collections::BTreeSet::new();
        configs
            .into_iter()
            .map(|c| {
                if !seen.insert(c.job_id.clone()) {
                    return Err(ConfigError::out_of_range(
                        "job_id",
                        "distinct for every job",
                        format!("'{}' twice", c.job_id),
                    ));
                }
                CheckedJob::new(c)
            })
            .collect()
    }
}

impl JobConfig {
    /// One job from a file of the jobs folder (the fields of `[job]`).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A validated job: every parameter checked before round 1.
#[derive(Debug, Clone)]
pub struct CheckedJob {
    pub config: JobConfig,
    pub task: CheckedTask,
    pub strategy: StrategyKind,
    pub rounds: u64,
    pub layout: ModelLayout,
    pub round_timeout: Duration,
    pub registration_timeout: Duration,
    pub expected_stores: usize,
}

fn pending_layout() -> ModelLayout {
    ModelLayout::new(vec![Segment::new("pending_description", 1, false)])
        .unwrap_or_else(|_| unreachable!("static layout"))
}

/// A grouped model's updates are sums of products in every group's block: no clip,
/// noise or robust rule applies to them, and the server's step is FedAvg's own.
fn check_grouped(config: &JobConfig, task: &CheckedTask) -> Result<(), ConfigError> {
    if task.groups() <= 1 {
        return Ok(());
    }
    let why = "none with task.groups > 1 (a grouped model's updates are per-group sums)";
    if config.privacy.is_active() {
        return Err(ConfigError::out_of_range("privacy", why, "[job.privacy]"));
    }
    if let Some(rule) = config.robust {
        return Err(ConfigError::out_of_range("robust", why, rule.name()));
    }
    if config.fedavg.server_optimizer != ServerOptimizerKind::None {
        return Err(ConfigError::out_of_range(
            "fedavg.server_optimizer",
            why,
            format!("{:?}", config.fedavg.server_optimizer).to_lowercase(),
        ));
    }
    Ok(())
}

/// Whether the job's robust rule can work with its strategy and privacy.
fn check_defence(config: &JobConfig, strategy: StrategyKind) -> Result<(), ConfigError> {
    let Some(rule) = config.robust else {
        return Ok(());
    };
    rule.check()?;
    if strategy != StrategyKind::Fedavg {
        return Err(ConfigError::out_of_range(
            "robust",
            "strategy = \"fedavg\" (a robust rule replaces a mean of updates; newton and \
             k-means sum statistics)",
            strategy.name(),
        ));
    }
    if config.privacy.is_active() {
        return Err(ConfigError::out_of_range(
            "robust",
            "no [job.privacy] (a robust rule reads every update: no secure aggregation, and \
             its output has no per-store bound for noise)",
            rule.name(),
        ));
    }
    Ok(())
}

/// Whether `strategy` can train `task`, and if not why.
fn check_pairing(checked: &CheckedTask, strategy: StrategyKind) -> Result<(), ConfigError> {
    let task = checked.spec();
    let ok = match (task, strategy) {
        (TaskSpec::Demand(_), StrategyKind::Newton | StrategyKind::Fedavg) => true,
        (TaskSpec::Churn(ChurnTaskOptions { model, .. }), StrategyKind::Newton)
        | (TaskSpec::Tabular(TabularTaskOptions { model, .. }), StrategyKind::Newton) => {
            *model == ClassifierKind::Logistic
        }
        (TaskSpec::Churn(_) | TaskSpec::Tabular(_), StrategyKind::Fedavg) => true,
        (
            TaskSpec::CustomerAnomaly(_) | TaskSpec::ReceiptAnomaly(_) | TaskSpec::Segments(_),
            StrategyKind::BisectingKmeans,
        ) => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let requirement = match task {
        TaskSpec::Demand(_) => "newton or fedavg for task 'demand'",
        TaskSpec::Churn(_) | TaskSpec::Tabular(_) => {
            "fedavg, or newton with model = \"logistic\", for a classifier task"
        }
        _ => "bisecting_kmeans for a clustering task",
    };
    Err(ConfigError::out_of_range(
        "strategy",
        requirement,
        strategy.name(),
    ))
}

impl CheckedJob {
    pub fn new(config: JobConfig) -> Result<Self, ConfigError> {
        if config.job_id.trim().is_empty() {
            return Err(ConfigError::out_of_range("job_id", "non-empty", "\"\""));
        }
        if config.rounds == Some(0) {
            return Err(ConfigError::out_of_range("rounds", ">= 1", 0));
        }
        let task = config.task.checked()?;
        let strategy = config
            .strategy
            .unwrap_or_else(|| StrategyKind::default_for(&config.task));
        check_pairing(&task, strategy)?;
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
        // A tabular task's model is shaped once the stores described their tables
        // (`described`); until then nothing reads the layout.
        let layout = if task.needs_description() {
            pending_layout()
        } else {
            task.layout()?
        };
        let expected_stores = config.expected_stores.unwrap_or(config.min_stores);
        if expected_stores < config.min_stores {
            return Err(ConfigError::out_of_range(
                "expected_stores",
                ">= min_stores",
                expected_stores,
            ));
        }
        config.privacy.validate(strategy)?;
        check_defence(&config, strategy)?;
        check_grouped(&config, &task)?;
        if config.privacy.secure_aggregation && config.min_stores < 3 {
            return Err(ConfigError::out_of_range(
                "min_stores",
                ">= 3 with secure aggregation",
                config.min_stores,
            ));
        }
        let rounds = match (config.rounds, strategy) {
            (Some(r), _) => r as u64,
            // A grouped model runs a level of Newton rounds per group.
            (None, StrategyKind::Newton) if task.groups() > 1 => u64::MAX,
            (None, StrategyKind::Newton) => 8,
            (None, StrategyKind::Fedavg) => 20,
            (None, StrategyKind::BisectingKmeans) => u64::MAX,
        };
        let mut job = CheckedJob {
            task,
            strategy,
            rounds,
            layout,
            round_timeout: Duration::from_secs_f64(config.round_timeout_secs),
            registration_timeout: Duration::from_secs_f64(config.registration_timeout_secs),
            expected_stores,
            config,
        };
        let built = job.build_strategy()?;
        if job.rounds == u64::MAX {
            job.rounds = built.round_limit().unwrap_or(8);
        }
        Ok(job)
    }

    pub fn job_id(&self) -> &str {
        &self.config.job_id
    }

    /// The job with the encoding its stores agreed on: its model shaped for it.
    pub fn described(&self, encoding: TabularEncoding) -> Result<CheckedJob, ConfigError> {
        let task = self.task.with_encoding(encoding)?;
        Ok(CheckedJob {
            layout: task.layout()?,
            task,
            ..self.clone()
        })
    }

    /// Where round 1 starts.
    pub fn initial_model(&self) -> Result<ModelParameters, ConfigError> {
        self.task.initial_model()
    }

    /// The job's strategy; with noise, wrapped in DP-FedAvg, which adds the
    /// coordinator's noise (central DP) and divides by the number of stores selected,
    /// so that no one store moves the mean.
    pub fn build_strategy(&self) -> Result<Box<dyn Strategy>, ConfigError> {
        let inner = self.build_inner_strategy()?;
        let p = &self.config.privacy;
        if p.noise == NoiseKind::None {
            return Ok(inner);
        }
        let settings = DpSettings {
            noise_multiplier: match p.noise {
                NoiseKind::Central => p.noise_multiplier.unwrap_or(0.0),
                _ => 0.0,
            },
            clip: ClipRule::AtStores(p.clip.unwrap_or(f64::INFINITY)),
            denominator: Denominator::Selected,
            sampling: Sampling::Inner,
            seed: None,
        };
        DpFedAvg::new(inner, settings)
            .map(|s| Box::new(s) as Box<dyn Strategy>)
            .map_err(|e| ConfigError::out_of_range("privacy", "settings DP-FedAvg accepts", e))
    }

    fn build_inner_strategy(&self) -> Result<Box<dyn Strategy>, ConfigError> {
        let c = &self.config;
        let sampling = SamplingConfig {
            fraction: c.fraction,
            min_stores: c.min_stores,
            seed: c.seed,
        };
        Ok(match self.strategy {
            StrategyKind::Newton if self.task.groups() > 1 => {
                Box::new(ClusteredNewton::try_new(ClusteredNewtonConfig {
                    newton: FedNewtonConfig {
                        sampling,
                        l2: c.l2,
                        ..Default::default()
                    },
                    max_groups: self.task.groups(),
                    ..Default::default()
                })?)
            }
            StrategyKind::Newton => Box::new(FedNewton::try_new(FedNewtonConfig {
                sampling,
                l2: c.l2,
                ..Default::default()
            })?),
            StrategyKind::Fedavg if self.task.groups() > 1 => {
                Box::new(ClusteredFedAvg::try_new(ClusteredFedAvgConfig {
                    fedavg: c.fedavg.fedavg_config(sampling, c.l2 * 1e-4, false),
                    max_groups: self.task.groups(),
                    ..Default::default()
                })?)
            }
            StrategyKind::Fedavg => c.fedavg.strategy(sampling, c.l2 * 1e-4)?,
            StrategyKind::BisectingKmeans => {
                let (max_iterations, seed) = match self.task.spec() {
                    TaskSpec::CustomerAnomaly(o)
                    | TaskSpec::ReceiptAnomaly(o)
                    | TaskSpec::Segments(o) => (o.max_iterations, o.seed),
                    _ => (15, 2),
                };
                Box::new(FedBisectingKMeans::try_new(KMeansConfig {
                    num_clusters: self.task.clusters().unwrap_or(2),
                    dim: self.task.features().len(),
                    max_iterations,
                    tolerance: 1e-6,
                    seed,
                    sampling,
                })?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grouped_job_trains_a_model_per_group_by_newton_or_fedavg() {
        let toml = "[job.task]\nkind = \"demand\"\ngroups = 3\n";
        let jobs = CoordinatorConfig::from_toml(toml)
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(jobs[0].build_strategy().unwrap().name(), "clustered_newton");
        assert_eq!(jobs[0].rounds, 18, "a level of Newton rounds per group");
        let demand = fedretail_core::task::demand_layout();
        let tree = fedretail_core::clustered::clustered_layout(&demand, 3).unwrap();
        assert_eq!(
            jobs[0].layout, tree,
            "five nodes of the demand model and the tree"
        );
        let fedavg = "[job]\nstrategy = \"fedavg\"\n[job.task]\nkind = \"demand\"\ngroups = 2\n";
        let jobs = CoordinatorConfig::from_toml(fedavg)
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(jobs[0].build_strategy().unwrap().name(), "clustered_fedavg");
        assert_eq!(jobs[0].layout, clustered_layout_of(2));
        // Per-group sums take no clip, noise, robust rule or server optimizer.
        for extra in [
            "[job.privacy]\nsecure_aggregation = true\nclip = 1.0\n",
            "[job.robust]\nrule = \"median\"\n",
            "[job.fedavg]\nserver_optimizer = \"adam\"\n",
        ] {
            let e = CoordinatorConfig::from_toml(&format!("{fedavg}{extra}"))
                .unwrap()
                .checked_jobs()
                .unwrap_err()
                .to_string();
            assert!(e.contains("task.groups > 1"), "{e}");
        }
        let many = "[job.task]\nkind = \"demand\"\ngroups = 9\n";
        let e = CoordinatorConfig::from_toml(many)
            .unwrap()
            .checked_jobs()
            .unwrap_err()
            .to_string();
        assert!(e.contains("task.groups") && e.contains('9'), "{e}");
    }

    #[test]
    fn a_store_known_by_its_certificate_needs_mutual_tls_and_every_store_a_credential() {
        let pinned = "[[stores]]\nstore_id = \"s1\"\ncertificate_sha256 = \"ab\"\n";
        let e = CoordinatorConfig::from_toml(pinned)
            .unwrap()
            .check_admission()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.client_ca"), "{e}");
        let with_ca =
            format!("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n{pinned}");
        assert!(CoordinatorConfig::from_toml(&with_ca)
            .unwrap()
            .check_admission()
            .is_ok());
        let bare = "[[stores]]\nstore_id = \"s1\"\n";
        let e = CoordinatorConfig::from_toml(bare)
            .unwrap()
            .check_admission()
            .unwrap_err()
            .to_string();
        assert!(e.contains("a token or a certificate_sha256"), "{e}");
    }

    fn clustered_layout_of(groups: usize) -> ModelLayout {
        let demand = fedretail_core::task::demand_layout();
        fedretail_core::clustered::clustered_layout(&demand, groups).unwrap()
    }

    #[test]
    fn a_robust_rule_is_read_by_name_and_refused_where_it_cannot_work() {
        let fedavg =
            "[job]\nstrategy = \"fedavg\"\n[job.robust]\nrule = \"trimmed_mean\"\ntrim = 0.1\n";
        let jobs = CoordinatorConfig::from_toml(fedavg)
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(
            jobs[0].config.robust,
            Some(RobustRule::TrimmedMean { trim: 0.1 })
        );
        let refused = |toml: &str| {
            CoordinatorConfig::from_toml(toml)
                .and_then(|c| c.checked_jobs().map_err(|e| e.to_string()))
                .unwrap_err()
        };
        let e = refused("[job]\nstrategy = \"newton\"\n[job.robust]\nrule = \"median\"\n");
        assert!(e.contains("robust") && e.contains("fedavg"), "{e}");
        let e = refused("[job]\nstrategy = \"fedavg\"\n[job.robust]\nrule = \"median\"\n[job.privacy]\nsecure_aggregation = true\nclip = 1.0\n");
        assert!(e.contains("no [job.privacy]"), "{e}");
        let e = refused(
            "[job]\nstrategy = \"fedavg\"\n[job.robust]\nrule = \"trimmed_mean\"\ntrim = 0.7\n",
        );
        assert!(e.contains("robust.trim"), "{e}");
        let e = refused("[job]\nstrategy = \"fedavg\"\n[job.robust]\nrule = \"mode\"\n");
        assert!(e.contains("mode"), "{e}");
    }

    #[test]
    fn a_fedavg_job_names_its_server_optimizer() {
        let toml = "[job]\nstrategy = \"fedavg\"\n[job.fedavg]\nserver_optimizer = \"adam\"\nserver_learning_rate = 0.01\n";
        let jobs = CoordinatorConfig::from_toml(toml)
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(jobs[0].build_strategy().unwrap().name(), "fedadam");
        let bad = "[job]\nstrategy = \"fedavg\"\n[job.fedavg]\nserver_optimizer = \"yogi\"\nserver_beta2 = 1.5\n";
        let err = CoordinatorConfig::from_toml(bad)
            .unwrap()
            .checked_jobs()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("server beta2 must be in [0, 1), got 1.5"),
            "{err}"
        );
        // Without an optimizer it is FedAvg itself.
        let plain = "[job]\nstrategy = \"fedavg\"\n";
        let jobs = CoordinatorConfig::from_toml(plain)
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(jobs[0].build_strategy().unwrap().name(), "fedavg");
    }

    #[test]
    fn defaults_parse_and_validate() {
        let cfg = CoordinatorConfig::from_toml("[job]\n").unwrap();
        let jobs = cfg.checked_jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].strategy, StrategyKind::Newton);
        assert_eq!(jobs[0].rounds, 8);
        // No job at all: one demand job with every default.
        let none = CoordinatorConfig::from_toml("")
            .unwrap()
            .checked_jobs()
            .unwrap();
        assert_eq!(none[0].task.kind(), TaskKind::Demand);
    }

    #[test]
    fn a_queue_of_jobs_names_tasks_and_options() {
        let cfg = CoordinatorConfig::from_toml(
            "[[jobs]]\njob_id = \"a\"\ntask = \"demand\"\n\n[[jobs]]\njob_id = \"b\"\n[jobs.task]\nkind = \"receipt_anomaly\"\nclusters = 5\n\n[[jobs]]\njob_id = \"c\"\n[jobs.task]\nkind = \"churn\"\nmodel = { mlp = { hidden = 4 } }\n",
        )
        .unwrap();
        let jobs = cfg.checked_jobs().unwrap();
        let kinds: Vec<_> = jobs.iter().map(|j| (j.job_id(), j.strategy)).collect();
        assert_eq!(
            kinds,
            [
                ("a", StrategyKind::Newton),
                ("b", StrategyKind::BisectingKmeans),
                ("c", StrategyKind::Fedavg)
            ]
        );
        assert_eq!(jobs[1].task.clusters(), Some(5));
        // Bisecting k-means with 5 clusters of 15 iterations stops when complete.
        assert_eq!(jobs[1].rounds, 1 + 4 * 16 + 1);
        assert_eq!(jobs[2].layout.len(), 4 * 5 + 4 + 4 + 1);
        let dup =
            CoordinatorConfig::from_toml("[[jobs]]\njob_id = \"x\"\n[[jobs]]\njob_id = \"x\"\n")
                .unwrap();
        assert!(dup
            .checked_jobs()
            .unwrap_err()
            .to_string()
            .contains("'x' twice"));
        let mlp_newton = CoordinatorConfig::from_toml(
            "[[jobs]]\nstrategy = \"newton\"\n[jobs.task]\nkind = \"churn\"\nmodel = { mlp = { hidden = 4 } }\n",
        )
        .unwrap();
        let e = mlp_newton.checked_jobs().unwrap_err().to_string();
        assert!(e.contains("newton with model = \"logistic\""), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = CoordinatorConfig::from_toml("[job]\nfraction = 1.5\n").unwrap();
        assert_eq!(
            cfg.checked_jobs().unwrap_err().to_string(),
            "sampling fraction must be in (0, 1], got 1.5"
        );
        let err = CoordinatorConfig::from_toml("[job]\ntask = \"astrology\"\n").unwrap_err();
        assert!(
            err.contains("astrology") && err.contains("customer_anomaly"),
            "{err}"
        );
        let err = CoordinatorConfig::from_toml("[job.task]\nkind = \"segments\"\nclustrs = 3\n")
            .unwrap_err();
        assert!(err.contains("clustrs"), "{err}");
        let err = CoordinatorConfig::from_toml("[job]\nrounds = 3\nround = 4\n").unwrap_err();
        assert!(err.contains("unknown field `round`"), "{err}");
    }

    #[test]
    fn privacy_settings_are_checked_and_named() {
        let check = |privacy: &str| {
            let text =
                format!("[job]\nstrategy = \"fedavg\"\nmin_stores = 3\n[job.privacy]\n{privacy}");
            CoordinatorConfig::from_toml(&text)
                .unwrap()
                .checked_jobs()
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(check("secure_aggregation = true\nclip = 0.5\n").is_ok());
        assert!(check("secure_aggregation = true\nclip = 0.5\nnoise = \"distributed\"\nnoise_multiplier = 1.0\nbudget_epsilon = 8.0\n").is_ok());
        assert!(check("clip = 0.5\nnoise = \"local\"\nnoise_multiplier = 1.0\n").is_ok());
        for (privacy, says) in [
            ("secure_aggregation = true\n", "privacy.clip"),
            (
                "clip = 0.5\nnoise = \"distributed\"\nnoise_multiplier = 1.0\n",
                "only with secure_aggregation",
            ),
            (
                "clip = 0.5\nnoise = \"central\"\n",
                "privacy.noise_multiplier",
            ),
            ("clip = -1.0\n", "privacy.clip"),
            ("clip = 0.5\nbudget_epsilon = 4.0\n", "set only with noise"),
            (
                "clip = 0.5\nnoise = \"central\"\nnoise_multiplier = 1.0\ndelta = 2.0\n",
                "privacy.delta",
            ),
            (
                "secure_aggregation = true\nclip = 0.5\nexpected_dropout = 0.7\n",
                "expected_dropout",
            ),
        ] {
            let err = check(privacy).unwrap_err();
            assert!(err.contains(says), "{privacy}: {err}");
        }
        let newton = CoordinatorConfig::from_toml(
            "[job]\nmin_stores = 3\n[job.privacy]\nsecure_aggregation = true\nclip = 1.0\n",
        )
        .unwrap();
        assert!(newton
            .checked_jobs()
            .unwrap_err()
            .to_string()
            .contains("fedavg"));
    }
}
