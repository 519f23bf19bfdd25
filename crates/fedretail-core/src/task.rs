//! Task specs: what a job asks every store to do, as data. The coordinator and the
//! stores both need a task's name, options and model layout, so they live here; the
//! code that trains and predicts stays store-side (`fedretail-models`), and the code
//! that reads exports stays in `fedretail-data`.
//!
//! ```
//! use fedretail_core::task::{TaskKind, TaskSpec};
//! let spec: TaskSpec = serde_json::from_str(r#"{"kind":"segments","clusters":4}"#).unwrap();
//! assert_eq!(spec.kind(), TaskKind::Segments);
//! assert_eq!(spec.checked().unwrap().layout().unwrap().len(), 7 * 4 + 7 * 3 + 4);
//! ```

use crate::clustered::{clustered_initial, clustered_layout};
use crate::error::ConfigError;
use crate::kmeans::{bisecting_kmeans_initial, bisecting_kmeans_layout};
use crate::params::{ModelLayout, ModelParameters, Segment};
use crate::tabular::TabularEncoding;
use fedretail_domain::BusinessType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Aggregate metrics a store reports: named numbers, never rows.
pub type TaskMetrics = BTreeMap<String, f64>;

/// Demand feature columns in model order; the data layer produces exactly these.
pub const DEMAND_FEATURES: &[&str] = &[
    "intercept",
    "dow_tue",
    "dow_wed",
    "dow_thu",
    "dow_fri",
    "dow_sat",
    "dow_sun",
    "year_sin1",
    "year_cos1",
    "year_sin2",
    "year_cos2",
    "public_holiday",
    "shopping_event",
    "promo_discount",
    "log_relative_price",
    "log_lag28",
    "log_lag35",
    "log_mean7_lag28",
    "log_mean28_lag28",
    "log_dow_ratio",
    "log_year_ago_change",
    "has_year_ago",
    "missing_lags",
];

/// Terms each business type has its own effect on, beside the network's shared one:
/// florists and fashion stores share the calendar but not its size (a florist sells
/// four times its usual on Valentine's day, a pharmacy nothing extra). They are the
/// first shared features (intercept, weekday, yearly terms, holiday, shopping event),
/// copied into the block of the store's declared business type.
pub const DEMAND_TYPE_TERMS: &[&str] = DEMAND_FEATURES.split_at(13).0;

/// Terms each category of goods has its own effect on, whatever store sells it: its
/// yearly season (ice cream peaks in July, heating in January, at every store). They
/// are the first yearly harmonic, copied into the block of the row's category bucket.
pub const DEMAND_CATEGORY_TERMS: &[&str] = &["year_sin1", "year_cos1"];

/// Buckets category names are hashed into. Stores name their categories freely, so
/// the network agrees on no list; two categories that share a bucket share a season.
/// 128 buckets keep a network of 40 category names to about 6 such pairs expected
/// while the exact path's Hessian stays under 1 MB.
pub const DEMAND_CATEGORY_BUCKETS: usize = 128;

/// Where the business-type blocks start.
pub const DEMAND_TYPE_START: usize = DEMAND_FEATURES.len();

/// Where the category-season blocks start.
pub const DEMAND_CATEGORY_START: usize =
    DEMAND_TYPE_START + BusinessType::ALL.len() * DEMAND_TYPE_TERMS.len();

/// Length of the demand model: the shared features, one block of
/// [`DEMAND_TYPE_TERMS`] per business type (in `BusinessType::ALL` order), then one
/// block of [`DEMAND_CATEGORY_TERMS`] per category bucket.
pub const DEMAND_DIM: usize =
    DEMAND_CATEGORY_START + DEMAND_CATEGORY_BUCKETS * DEMAND_CATEGORY_TERMS.len();

/// The bucket of a category name: FNV-1a of its trimmed, lower-case bytes, so every
/// store puts the same name in the same bucket on any machine and release.
pub fn demand_category_bucket(category: &str) -> usize {
    let hash = category
        .trim()
        .bytes()
        .map(|b| b.to_ascii_lowercase())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % DEMAND_CATEGORY_BUCKETS as u64) as usize
}

/// Names of every demand parameter, in model order (`florist:shopping_event`, ...,
/// `category_17:year_sin1`, ...).
pub fn demand_feature_names() -> Vec<String> {
    let shared = DEMAND_FEATURES.iter().map(|f| f.to_string());
    let typed = BusinessType::ALL.into_iter().flat_map(|b| {
        DEMAND_TYPE_TERMS
            .iter()
            .map(move |t| format!("{}:{t}", b.as_str()))
    });
    let categories = (0..DEMAND_CATEGORY_BUCKETS).flat_map(|k| {
        DEMAND_CATEGORY_TERMS
            .iter()
            .map(move |t| format!("category_{k}:{t}"))
    });
    shared.chain(typed).chain(categories).collect()
}

/// The seed's four customer features, plus the share of a customer's receipts that
/// are refunds (the signal of refund abuse, which the seed's four cannot see).
pub const CUSTOMER_ANOMALY_FEATURES: [&str; 5] = [
    "avg_order_value",
    "total_orders",
    "customer_lifetime",
    "days_since_last_purchase",
    "refund_rate",
];

/// RFM-style features for segmentation (log scale where counts and money are skewed).
pub const SEGMENT_FEATURES: [&str; 4] = [
    "recency_days",
    "log_orders",
    "log_avg_order_value",
    "tenure_days",
];

/// Receipt-level features for transaction anomalies.
pub const TRANSACTION_FEATURES: [&str; 9] = [
    "log_amount",
    "hour_sin",
    "hour_cos",
    "refund",
    "log_lines",
    "duplicate_share",
    "price_deviation",
    "anonymous",
    "burst",
];

/// intercept | calendar (dow, yearly Fourier terms, holidays) | price | history.
pub fn demand_layout() -> ModelLayout {
    ModelLayout::new(vec![
        Segment::new("intercept", 1, false),
        Segment::new("calendar", 12, true),
        Segment::new("price", 2, true),
        Segment::new("history", 8, true),
        Segment::new(
            "business_type",
            BusinessType::ALL.len() * DEMAND_TYPE_TERMS.len(),
            true,
        ),
        Segment::new(
            "category_season",
            DEMAND_CATEGORY_BUCKETS * DEMAND_CATEGORY_TERMS.len(),
            true,
        ),
    ])
    .unwrap_or_else(|e| unreachable!("static demand layout is valid: {e}"))
}

/// Which classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierKind {
    Logistic,
    /// One hidden layer of `hidden` tanh units.
    Mlp {
        hidden: usize,
    },
}

impl ClassifierKind {
    pub fn name(&self) -> &'static str {
        match self {
            ClassifierKind::Logistic => "logistic_regression",
            ClassifierKind::Mlp { .. } => "mlp",
        }
    }

    pub fn layout(&self, dim: usize) -> ModelLayout {
        let segments = match *self {
            ClassifierKind::Logistic => vec![
                Segment::new("weights", dim, true),
                Segment::new("bias", 1, false),
            ],
            ClassifierKind::Mlp { hidden } => vec![
                Segment::new("hidden_weights", hidden * dim, true),
                Segment::new("hidden_bias", hidden, false),
                Segment::new("output_weights", hidden, true),
                Segment::new("output_bias", 1, false),
            ],
        };
        // Segment names are distinct and non-empty, so this cannot fail.
        ModelLayout::new(segments).unwrap_or_else(|_| unreachable!("static layout"))
    }

    /// Starting parameters: zeros for logistic regression, small seeded random
    /// weights for the MLP (zeros would keep every hidden unit identical).
    pub fn initial_parameters(&self, dim: usize, seed: u64) -> Vec<f64> {
        match *self {
            ClassifierKind::Logistic => vec![0.0; dim + 1],
            ClassifierKind::Mlp { hidden } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let a = (6.0 / (dim + hidden) as f64).sqrt();
                let b = (6.0 / (hidden + 1) as f64).sqrt();
                let mut w: Vec<f64> = (0..hidden * dim).map(|_| rng.random_range(-a..a)).collect();
                w.extend(std::iter::repeat_n(0.0, hidden));
                w.extend((0..hidden).map(|_| rng.random_range(-b..b)));
                w.push(0.0);
                w
            }
        }
    }
}

/// The tasks a job can run, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Daily units per category, forecast 28 days ahead.
    Demand,
    /// Seed 001: customers clustered by bisecting k-means; far or rare ones flagged.
    CustomerAnomaly,
    /// Receipts clustered; those far from every receipt centroid flagged.
    ReceiptAnomaly,
    /// RFM customer segments, named in words.
    Segments,
    /// Which customers stop buying: a classifier on customer features.
    Churn,
    /// A classifier on any table with a binary target (credit scoring): every store
    /// holds a table with the same columns.
    Tabular,
}

impl TaskKind {
    /// The tasks every store of a retail network can run from its transactions export.
    pub const RETAIL: [TaskKind; 5] = [
        TaskKind::Demand,
        TaskKind::CustomerAnomaly,
        TaskKind::ReceiptAnomaly,
        TaskKind::Segments,
        TaskKind::Churn,
    ];

    pub const ALL: [TaskKind; 6] = [
        TaskKind::Demand,
        TaskKind::CustomerAnomaly,
        TaskKind::ReceiptAnomaly,
        TaskKind::Segments,
        TaskKind::Churn,
        TaskKind::Tabular,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Demand => "demand",
            TaskKind::CustomerAnomaly => "customer_anomaly",
            TaskKind::ReceiptAnomaly => "receipt_anomaly",
            TaskKind::Segments => "segments",
            TaskKind::Churn => "churn",
            TaskKind::Tabular => "tabular",
        }
    }

    /// The spec with every option at its default.
    pub fn default_spec(&self) -> TaskSpec {
        match self {
            TaskKind::Demand => TaskSpec::Demand(DemandTaskOptions::default()),
            TaskKind::CustomerAnomaly => TaskSpec::CustomerAnomaly(ClusterTaskOptions::default()),
            TaskKind::ReceiptAnomaly => TaskSpec::ReceiptAnomaly(ClusterTaskOptions::default()),
            TaskKind::Segments => TaskSpec::Segments(ClusterTaskOptions::default()),
            TaskKind::Churn => TaskSpec::Churn(ChurnTaskOptions::default()),
            TaskKind::Tabular => TaskSpec::Tabular(TabularTaskOptions::default()),
        }
    }

    /// Whether the task needs customer ids in the export.
    pub fn needs_customers(&self) -> bool {
        matches!(
            self,
            TaskKind::CustomerAnomaly | TaskKind::Segments | TaskKind::Churn
        )
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TaskKind {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ConfigError::out_of_range(
                    "task",
                    "one of demand, customer_anomaly, receipt_anomaly, segments, churn, tabular",
                    s,
                )
            })
    }
}

/// `kind = "demand"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemandTaskOptions {
    /// Final days of each store's history held out to evaluate (and to calibrate the
    /// forecast interval).
    pub holdout_days: u32,
    /// Days forecast past the end of the store's history.
    pub horizon_days: u32,
    /// Days before the held-out ones on which each store picks its forecaster (local,
    /// federated, personalized or seasonal naive). No model is trained on them before
    /// the pick, and the held-out days play no part in it. Young stores use fewer (at
    /// most half their training days); 0 keeps the federated model at every store.
    pub validation_days: u32,
    /// Coverage of the forecast interval written with every forecast.
    pub interval: f64,
    /// Up to this many groups of stores with a model each, found from the data
    /// (clustered federated learning, exact Newton per group; each store keeps the
    /// network's or its group's model, whichever does better on its validation days).
    /// 1: one model for the network.
    pub groups: u32,
}

impl Default for DemandTaskOptions {
    fn default() -> Self {
        DemandTaskOptions {
            holdout_days: 28,
            horizon_days: 28,
            validation_days: 28,
            interval: 0.8,
            groups: 1,
        }
    }
}

/// `kind = "customer_anomaly" | "receipt_anomaly" | "segments"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTaskOptions {
    /// Days of history up to each store's last day (the seed's date window).
    pub window_days: u32,
    /// Clusters wanted; the default is 6 for customers and 8 for receipts.
    pub clusters: Option<usize>,
    /// Lloyd iterations per split.
    pub max_iterations: u32,
    /// Each store flags this share of its customers (or receipts) as unusual.
    pub flag_share: f64,
    /// Silhouette is exact up to this many points a store, sampled above it.
    pub silhouette_points: usize,
    /// A store with fewer customers (receipts) in the window sits the job out.
    pub min_points: usize,
    /// Seeds the direction of every split.
    pub seed: u64,
    /// `exact`: federated bisecting k-means on the stores' points, equal to the
    /// centralized fit. `meta`: seed 001's global model from per-store results, the
    /// stores' own clusters clustered (each store fits alone, then the federation
    /// clusters the stores' centroids weighted by cluster size).
    pub fit: ClusterFit,
}

/// Which global clustering a clustering job fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterFit {
    #[default]
    Exact,
    Meta,
}

impl Default for ClusterTaskOptions {
    fn default() -> Self {
        ClusterTaskOptions {
            window_days: 180,
            clusters: None,
            max_iterations: 15,
            flag_share: 0.01,
            silhouette_points: 600,
            min_points: 30,
            seed: 2,
            fit: ClusterFit::Exact,
        }
    }
}

/// `kind = "churn"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChurnTaskOptions {
    /// Days of history before the cut-off that the features describe.
    pub window_days: u32,
    /// A customer who buys nothing in this many days after the cut-off has churned.
    pub horizon_days: u32,
    pub model: ClassifierKind,
    /// Share of each store's labelled customers held out to evaluate, by class.
    pub test_fraction: f64,
    /// A store with fewer training rows, or only one class, sits the job out.
    pub min_train_rows: usize,
    /// Seeds the store's split and the MLP's initial weights.
    pub seed: u64,
}

impl Default for ChurnTaskOptions {
    fn default() -> Self {
        ChurnTaskOptions {
            window_days: 180,
            horizon_days: 60,
            model: ClassifierKind::Logistic,
            test_fraction: 0.2,
            min_train_rows: 20,
            seed: 7,
        }
    }
}

/// `kind = "tabular"`: a classifier on a table every store holds (credit scoring).
///
/// ```toml
/// [jobs.task]
/// kind = "tabular"
/// file = "loans.csv"
/// target = "Status"
/// positive = "bad"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TabularTaskOptions {
    /// The table, CSV or Parquet, relative to the store's export folder.
    pub file: String,
    /// The binary target column.
    pub target: String,
    /// The target value that counts as positive; the column has one other value.
    pub positive: String,
    /// Columns never used as features (ids, dates, the lender's own name...).
    pub exclude: Vec<String>,
    pub model: ClassifierKind,
    /// Share of each store's rows held out to evaluate, by class.
    pub test_fraction: f64,
    /// A store with fewer training rows, or only one class, sits the job out.
    pub min_train_rows: usize,
    /// A store reports a category only if this many of its training rows have it.
    pub min_category_rows: u64,
    /// A text column with more categories than this is dropped (an id or free text).
    pub max_categories: usize,
    /// Seeds the store's split and the MLP's initial weights.
    pub seed: u64,
    /// Up to this many groups of stores with a model each, found from the data
    /// (clustered FedAvg or Newton; 1: one model for the network).
    pub groups: u32,
    /// FedPer: each store keeps the MLP's output layer (its head) out of averaging and
    /// trains it on its own rows from round to round; the network shares the body.
    #[serde(default)]
    pub personal_head: bool,
    /// How rows become inputs; agreed from the stores' summaries before round 1 (the
    /// coordinator fills it in).
    pub encoding: Option<TabularEncoding>,
}

impl Default for TabularTaskOptions {
    fn default() -> Self {
        TabularTaskOptions {
            file: "table.csv".into(),
            target: String::new(),
            positive: String::new(),
            exclude: Vec::new(),
            model: ClassifierKind::Logistic,
            test_fraction: 0.2,
            min_train_rows: 20,
            min_category_rows: 5,
            max_categories: 50,
            seed: 7,
            groups: 1,
            personal_head: false,
            encoding: None,
        }
    }
}

/// A task and its options, as a job names it (TOML or JSON):
///
/// ```toml
/// [jobs.task]
/// kind = "customer_anomaly"
/// clusters = 6
/// window_days = 180
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    Demand(DemandTaskOptions),
    CustomerAnomaly(ClusterTaskOptions),
    ReceiptAnomaly(ClusterTaskOptions),
    Segments(ClusterTaskOptions),
    Churn(ChurnTaskOptions),
    Tabular(TabularTaskOptions),
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec::Demand(DemandTaskOptions::default())
    }
}

/// A spec whose options were checked: only these reach a coordinator's round or an
/// agent's data.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedTask(TaskSpec);

fn in_unit(name: &'static str, v: f64) -> Result<(), ConfigError> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(name, "in (0, 1)", v))
    }
}

fn window(name: &'static str, days: u32) -> Result<(), ConfigError> {
    if (1..=3660).contains(&days) {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(name, "in 1..=3660 days", days))
    }
}

fn check_model(model: ClassifierKind) -> Result<(), ConfigError> {
    match model {
        ClassifierKind::Mlp { hidden } if !(1..=256).contains(&hidden) => Err(
            ConfigError::out_of_range("task.model.mlp.hidden", "in 1..=256", hidden),
        ),
        _ => Ok(()),
    }
}

/// The file must stay inside the store's export folder: a coordinator cannot point a
/// store at any other file on its machine.
fn check_tabular(o: &TabularTaskOptions) -> Result<(), ConfigError> {
    let path = std::path::Path::new(&o.file);
    let inside = !o.file.is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(ConfigError::out_of_range(
            "task.file",
            "a relative path inside the store's export folder",
            &o.file,
        ));
    }
    for (name, v) in [("task.target", &o.target), ("task.positive", &o.positive)] {
        if v.trim().is_empty() {
            return Err(ConfigError::out_of_range(name, "non-empty", "\"\""));
        }
    }
    in_unit("task.test_fraction", o.test_fraction)?;
    check_model(o.model)?;
    clustered_layout(&o.model.layout(1), o.groups as usize)?;
    if o.personal_head && (o.model == ClassifierKind::Logistic || o.groups > 1) {
        return Err(ConfigError::out_of_range(
            "task.personal_head",
            "with model = \"mlp\" and groups = 1 (the head is the MLP's output layer)",
            "true",
        ));
    }
    if !(2..=10_000).contains(&o.max_categories) {
        return Err(ConfigError::out_of_range(
            "task.max_categories",
            "in 2..=10000",
            o.max_categories,
        ));
    }
    if o.min_category_rows == 0 {
        return Err(ConfigError::out_of_range(
            "task.min_category_rows",
            ">= 1",
            0,
        ));
    }
    Ok(())
}

impl TaskSpec {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::Demand(_) => TaskKind::Demand,
            TaskSpec::CustomerAnomaly(_) => TaskKind::CustomerAnomaly,
            TaskSpec::ReceiptAnomaly(_) => TaskKind::ReceiptAnomaly,
            TaskSpec::Segments(_) => TaskKind::Segments,
            TaskSpec::Churn(_) => TaskKind::Churn,
            TaskSpec::Tabular(_) => TaskKind::Tabular,
        }
    }

    /// Validate every option, naming the first that cannot work.
    pub fn checked(&self) -> Result<CheckedTask, ConfigError> {
        match self {
            TaskSpec::Demand(o) => {
                if !(1..=365).contains(&o.holdout_days) {
                    return Err(ConfigError::out_of_range(
                        "task.holdout_days",
                        "in 1..=365",
                        o.holdout_days,
                    ));
                }
                if !(1..=28).contains(&o.horizon_days) {
                    return Err(ConfigError::out_of_range(
                        "task.horizon_days",
                        "in 1..=28 (the features are known 28 days ahead)",
                        o.horizon_days,
                    ));
                }
                if o.validation_days > 28 {
                    return Err(ConfigError::out_of_range(
                        "task.validation_days",
                        "in 0..=28 (the features are known 28 days ahead)",
                        o.validation_days,
                    ));
                }
                in_unit("task.interval", o.interval)?;
                clustered_layout(&demand_layout(), o.groups as usize)?;
            }
            TaskSpec::CustomerAnomaly(o) | TaskSpec::ReceiptAnomaly(o) | TaskSpec::Segments(o) => {
                window("task.window_days", o.window_days)?;
                if let Some(k) = o.clusters {
                    if !(2..=64).contains(&k) {
                        return Err(ConfigError::out_of_range("task.clusters", "in 2..=64", k));
                    }
                }
                if !(1..=200).contains(&o.max_iterations) {
                    return Err(ConfigError::out_of_range(
                        "task.max_iterations",
                        "in 1..=200",
                        o.max_iterations,
                    ));
                }
                in_unit("task.flag_share", o.flag_share)?;
                if o.silhouette_points < 10 {
                    return Err(ConfigError::out_of_range(
                        "task.silhouette_points",
                        ">= 10",
                        o.silhouette_points,
                    ));
                }
            }
            TaskSpec::Churn(o) => {
                window("task.window_days", o.window_days)?;
                window("task.horizon_days", o.horizon_days)?;
                in_unit("task.test_fraction", o.test_fraction)?;
                check_model(o.model)?;
            }
            TaskSpec::Tabular(o) => check_tabular(o)?,
        }
        Ok(CheckedTask(self.clone()))
    }
}

impl CheckedTask {
    pub fn spec(&self) -> &TaskSpec {
        &self.0
    }

    pub fn kind(&self) -> TaskKind {
        self.0.kind()
    }

    /// Feature names of the points or rows the task's model reads (a tabular task's
    /// are known once its encoding is agreed).
    pub fn features(&self) -> Vec<String> {
        let fixed: &[&str] = match &self.0 {
            TaskSpec::Demand(_) => return demand_feature_names(),
            TaskSpec::CustomerAnomaly(_) | TaskSpec::Churn(_) => &CUSTOMER_ANOMALY_FEATURES,
            TaskSpec::ReceiptAnomaly(_) => &TRANSACTION_FEATURES,
            TaskSpec::Segments(_) => &SEGMENT_FEATURES,
            TaskSpec::Tabular(o) => {
                return o
                    .encoding
                    .as_ref()
                    .map(TabularEncoding::feature_names)
                    .unwrap_or_default()
            }
        };
        fixed.iter().map(|f| f.to_string()).collect()
    }

    /// Whether the stores must first describe their data (a tabular task without an
    /// agreed encoding): the model's shape depends on it.
    pub fn needs_description(&self) -> bool {
        matches!(&self.0, TaskSpec::Tabular(o) if o.encoding.is_none())
    }

    /// The task with the encoding the stores' summaries gave.
    pub fn with_encoding(&self, encoding: TabularEncoding) -> Result<CheckedTask, ConfigError> {
        match &self.0 {
            TaskSpec::Tabular(o) => TaskSpec::Tabular(TabularTaskOptions {
                encoding: Some(encoding),
                ..o.clone()
            })
            .checked(),
            other => Err(ConfigError::out_of_range(
                "task",
                "tabular to take an encoding",
                other.kind(),
            )),
        }
    }

    /// Clusters of a clustering task (its default where the job did not say).
    pub fn clusters(&self) -> Option<usize> {
        match &self.0 {
            TaskSpec::CustomerAnomaly(o) | TaskSpec::Segments(o) => Some(o.clusters.unwrap_or(6)),
            TaskSpec::ReceiptAnomaly(o) => Some(o.clusters.unwrap_or(8)),
            _ => None,
        }
    }

    /// Groups of stores the model may split into (1: one model for the network).
    pub fn groups(&self) -> usize {
        match &self.0 {
            TaskSpec::Demand(o) => o.groups as usize,
            TaskSpec::Tabular(o) => o.groups as usize,
            _ => 1,
        }
    }

    pub fn layout(&self) -> Result<ModelLayout, ConfigError> {
        let dim = self.features().len();
        match &self.0 {
            TaskSpec::Demand(_) if self.groups() > 1 => {
                clustered_layout(&demand_layout(), self.groups())
            }
            TaskSpec::Demand(_) => Ok(demand_layout()),
            TaskSpec::Churn(o) => Ok(o.model.layout(dim)),
            TaskSpec::Tabular(_) if dim == 0 => Err(ConfigError::Layout(
                "a tabular task's model is shaped once the stores described their tables".into(),
            )),
            TaskSpec::Tabular(o) if self.groups() > 1 => {
                clustered_layout(&o.model.layout(dim), self.groups())
            }
            TaskSpec::Tabular(o) => Ok(o.model.layout(dim)),
            _ => bisecting_kmeans_layout(self.clusters().unwrap_or(2), dim),
        }
    }

    /// Where round 1 starts.
    pub fn initial_model(&self) -> Result<ModelParameters, ConfigError> {
        let dim = self.features().len();
        match &self.0 {
            TaskSpec::Demand(_) if self.groups() > 1 => {
                clustered_initial(&ModelParameters::zeros(demand_layout()), self.groups())
            }
            TaskSpec::Demand(_) => Ok(ModelParameters::zeros(demand_layout())),
            TaskSpec::Tabular(o) if self.groups() > 1 => {
                let base = o.model.initial_parameters(dim, o.seed);
                let base = ModelParameters::from_values(o.model.layout(dim), base)?;
                clustered_initial(&base, self.groups())
            }
            TaskSpec::Churn(ChurnTaskOptions { model, seed, .. })
            | TaskSpec::Tabular(TabularTaskOptions { model, seed, .. }) => {
                ModelParameters::from_values(self.layout()?, model.initial_parameters(dim, *seed))
            }
            _ => bisecting_kmeans_initial(self.clusters().unwrap_or(2), dim),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_personal_head_needs_one_mlp() {
        let tabular = |model, groups| TabularTaskOptions {
            target: "y".into(),
            positive: "1".into(),
            model,
            groups,
            personal_head: true,
            ..TabularTaskOptions::default()
        };
        let mlp = ClassifierKind::Mlp { hidden: 4 };
        assert!(TaskSpec::Tabular(tabular(mlp, 1)).checked().is_ok());
        for (model, groups) in [(ClassifierKind::Logistic, 1), (mlp, 2)] {
            let err = TaskSpec::Tabular(tabular(model, groups))
                .checked()
                .unwrap_err();
            assert!(err.to_string().contains("task.personal_head"), "{err}");
        }
    }

    #[test]
    fn every_kind_round_trips_through_json_with_defaults() {
        for kind in TaskKind::RETAIL {
            let spec = kind.default_spec();
            let text = serde_json::to_string(&spec).unwrap();
            let back: TaskSpec = serde_json::from_str(&text).unwrap();
            assert_eq!(back, spec);
            let checked = back.checked().unwrap();
            assert_eq!(
                checked.layout().unwrap().len(),
                checked.initial_model().unwrap().values().len()
            );
            assert_eq!(kind.name().parse::<TaskKind>().unwrap(), kind);
        }
    }

    #[test]
    fn unknown_tasks_and_options_are_refused_by_name() {
        let e = serde_json::from_str::<TaskSpec>(r#"{"kind":"forecast_weather"}"#).unwrap_err();
        assert!(e.to_string().contains("forecast_weather"), "{e}");
        let e =
            serde_json::from_str::<TaskSpec>(r#"{"kind":"segments","clustres":4}"#).unwrap_err();
        assert!(e.to_string().contains("clustres"), "{e}");
        let spec: TaskSpec = serde_json::from_str(r#"{"kind":"segments","clusters":1}"#).unwrap();
        let e = spec.checked().unwrap_err().to_string();
        assert!(e.contains("task.clusters") && e.contains("got 1"), "{e}");
        let e = "weather".parse::<TaskKind>().unwrap_err().to_string();
        assert!(e.contains("weather"), "{e}");
    }

    #[test]
    fn receipts_default_to_eight_clusters_and_customers_to_six() {
        let r = TaskKind::ReceiptAnomaly.default_spec().checked().unwrap();
        let c = TaskKind::CustomerAnomaly.default_spec().checked().unwrap();
        assert_eq!((r.clusters(), c.clusters()), (Some(8), Some(6)));
        assert_eq!(r.features().len(), 9);
    }
}
