//! Demand forecasting: daily units per store and category over a held-out final
//! period. Features are computed at the store (in SQL, by `fedretail-data`); this
//! module holds the prepared rows, the model layout and the [`DemandTask`].

use crate::glm;
use crate::metrics::{mase, wape};
use crate::task::{LocalTask, ResultTable, StoreResults, TaskError, TaskMetrics};
use fedretail_core::{newton_statistics_len, LocalWork, ModelLayout};
use std::sync::{Arc, OnceLock};

pub use crate::rows::DemandRows;
pub use fedretail_core::task::{demand_layout, DEMAND_FEATURES};

/// One store's prepared demand data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DemandDataset {
    pub store_id: String,
    pub train: DemandRows,
    pub test: DemandRows,
    /// Rows for the days after the store's history (units unknown, zero), to forecast.
    pub future: DemandRows,
    /// (category, ISO date) of each future row.
    pub future_keys: Vec<(String, String)>,
    /// In-sample mean absolute error of the weekly seasonal-naive forecast (MASE scale).
    pub naive_scale: f64,
    /// Days of history the store has.
    pub history_days: u32,
}

/// Hyper-parameters of the store-side fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandOptions {
    /// L2 penalty of the local-only baseline fit (same as the federated Newton's).
    pub l2: f64,
    pub max_step: f64,
    /// Strength of the pull toward the global model when a store fine-tunes it on its
    /// own rows (Ditto-style personalisation). Large stores move further from the
    /// global model than small ones because their data outweighs the pull.
    pub personalization: f64,
    /// Coverage of the forecast interval the store writes.
    pub interval: f64,
}

impl Default for DemandOptions {
    fn default() -> Self {
        DemandOptions {
            l2: 1.0,
            max_step: 2.0,
            personalization: 20.0,
            interval: 0.8,
        }
    }
}

/// The demand task at one store.
pub struct DemandTask {
    data: Arc<DemandDataset>,
    options: DemandOptions,
    local_only: OnceLock<Vec<f64>>,
}

impl DemandTask {
    pub fn new(data: Arc<DemandDataset>, options: DemandOptions) -> Self {
        DemandTask {
            data,
            options,
            local_only: OnceLock::new(),
        }
    }

    pub fn dataset(&self) -> &DemandDataset {
        &self.data
    }

    /// The model this store would fit alone (the local-only baseline).
    pub fn local_only_model(&self) -> &[f64] {
        self.local_only.get_or_init(|| {
            let mask = demand_layout().regularization_mask();
            glm::fit_newton(
                &[&self.data.train],
                &mask,
                self.options.l2,
                self.options.max_step,
                50,
                1e-9,
            )
            .0
        })
    }

    /// The global model fine-tuned on this store's rows, pulled toward the global model.
    pub fn personalize(&self, global: &[f64]) -> Vec<f64> {
        let mask = vec![true; global.len()];
        let penalty = fedretail_core::L2Penalty {
            mask: &mask,
            l2: self.options.personalization,
            center: Some(global),
        };
        glm::fit_newton_from(
            &[&self.data.train],
            global,
            &penalty,
            self.options.max_step,
            50,
            1e-9,
        )
        .0
    }

    fn check_len(&self, global: &[f64]) -> Result<(), TaskError> {
        let expected = DEMAND_FEATURES.len();
        if global.len() != expected {
            return Err(TaskError::WrongParameterCount {
                task: "demand",
                expected,
                got: global.len(),
            });
        }
        Ok(())
    }
}

/// Forecast errors of a model on a store's test rows.
pub fn test_errors(data: &DemandDataset, w: &[f64]) -> f64 {
    let mut forecast = Vec::with_capacity(data.test.len());
    glm::predict_into(&data.test, w, &mut forecast);
    data.test.abs_error(&forecast)
}

impl LocalTask for DemandTask {
    fn task_name(&self) -> &'static str {
        "demand"
    }

    fn layout(&self) -> ModelLayout {
        demand_layout()
    }

    fn num_train_examples(&self) -> u64 {
        self.data.train.len() as u64
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        self.check_len(global)?;
        if self.data.train.is_empty() {
            return Err(TaskError::NoTrainingRows("demand"));
        }
        let d = global.len();
        match work {
            LocalWork::SecondOrderStatistics => {
                let mut out = vec![0.0; newton_statistics_len(d)];
                glm::add_second_order_statistics(&self.data.train, global, &mut out);
                Ok(out)
            }
            LocalWork::LocalEpochs {
                epochs,
                batch_size,
                learning_rate,
                l2,
                seed,
            } => {
                let mut w = global.to_vec();
                let mask = demand_layout().regularization_mask();
                glm::sgd(
                    &self.data.train,
                    &mut w,
                    &mask,
                    *epochs,
                    *batch_size,
                    *learning_rate,
                    *l2,
                    *seed,
                );
                if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                    return Err(TaskError::Diverged(format!(
                        "parameter {i} is not finite; lower the learning rate"
                    )));
                }
                Ok(w.iter().zip(global).map(|(a, b)| a - b).collect())
            }
            LocalWork::ClusterStatistics => Err(TaskError::UnsupportedWork {
                task: "demand",
                work: "cluster statistics",
            }),
        }
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok(self.scores(global)?.0)
    }

    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        let (mut metrics, personalized) = self.scores(global)?;
        let (chosen, model) = self.forecast_model(global, personalized, &metrics);
        let data = &self.data;
        let (mut held_out, mut future) = (Vec::new(), Vec::new());
        match &model {
            Some(w) => {
                glm::predict_into(&data.test, w, &mut held_out);
                glm::predict_into(&data.future, w, &mut future);
            }
            None => {
                held_out.extend_from_slice(data.test.naive());
                future.extend_from_slice(data.future.naive());
            }
        }
        let table = forecast_table(data, &held_out, &future, chosen, self.options.interval);
        // Which forecaster the store kept, and its held-out WAPE (chosen on those days).
        metrics.insert(format!("forecast_by_{chosen}"), 1.0);
        let actual: f64 = data.test.units().iter().sum();
        if let Some(v) = wape(data.test.abs_error(&held_out), actual) {
            metrics.insert("wape_forecast".into(), v);
        }
        metrics.insert("forecast_rows".into(), table.rows.len() as f64);
        Ok(StoreResults {
            tables: vec![table],
            metrics,
        })
    }
}

impl DemandTask {
    /// Held-out metrics of the federated, local, personalized and naive forecasts, and
    /// the personalized model (fitted once, for the forecast too).
    fn scores(&self, global: &[f64]) -> Result<(TaskMetrics, Option<Vec<f64>>), TaskError> {
        self.check_len(global)?;
        let data = &self.data;
        let test_rows = data.test.len();
        let actual: f64 = data.test.units().iter().sum();
        let mut m = TaskMetrics::new();
        m.insert("train_rows".into(), data.train.len() as f64);
        m.insert("test_rows".into(), test_rows as f64);
        m.insert("actual_units".into(), actual);
        m.insert("history_days".into(), data.history_days as f64);
        let mut put = |name: &str, abs_err: f64| {
            m.insert(format!("abs_error_{name}"), abs_err);
            if let Some(v) = wape(abs_err, actual) {
                m.insert(format!("wape_{name}"), v);
            }
            if let Some(v) = mase(abs_err, test_rows, data.naive_scale) {
                m.insert(format!("mase_{name}"), v);
            }
        };
        put("federated", test_errors(data, global));
        let mut personalized = None;
        if !data.train.is_empty() {
            put("local", test_errors(data, self.local_only_model()));
            let p = self.personalize(global);
            put("personalized", test_errors(data, &p));
            personalized = Some(p);
        }
        put("naive", data.test.abs_error(data.test.naive()));
        Ok((m, personalized))
    }

    /// What makes the forecast the store keeps: the lowest WAPE on its held-out days
    /// among the federated, personalized and local-only models and the seasonal-naive
    /// forecast (None), so a store's forecast is never worse than naive on those days.
    fn forecast_model(
        &self,
        global: &[f64],
        personalized: Option<Vec<f64>>,
        metrics: &TaskMetrics,
    ) -> (&'static str, Option<Vec<f64>>) {
        let wape = |k: &str| metrics.get(k).copied().unwrap_or(f64::INFINITY);
        let mut best = ("federated", wape("wape_federated"));
        for name in ["personalized", "local", "naive"] {
            let w = wape(&format!("wape_{name}"));
            if w < best.1 {
                best = (name, w);
            }
        }
        match (best.0, personalized) {
            ("personalized", Some(p)) => ("personalized", Some(p)),
            ("local", _) => ("local", Some(self.local_only_model().to_vec())),
            ("naive", _) => ("seasonal_naive", None),
            _ => ("federated", Some(global.to_vec())),
        }
    }
}

/// Forecasts for the days after the history (`future`, one per future row), with a
/// central interval of `coverage` from a Poisson with the overdispersion the same
/// forecaster showed on the held-out days (`held_out`, one per held-out row).
fn forecast_table(
    data: &DemandDataset,
    held_out: &[f64],
    future: &[f64],
    chosen: &str,
    coverage: f64,
) -> ResultTable {
    let pearson: Vec<f64> = data
        .test
        .units()
        .iter()
        .zip(held_out)
        .filter(|(_, mu)| **mu > 1e-9)
        .map(|(y, mu)| (y - mu) * (y - mu) / mu)
        .collect();
    let dispersion = if pearson.is_empty() {
        1.0
    } else {
        (pearson.iter().sum::<f64>() / pearson.len() as f64).max(1.0)
    };
    let z = crate::metrics::normal_quantile(0.5 + coverage / 2.0);
    let mut table = ResultTable::new(
        "forecast",
        &[
            "date",
            "category",
            "forecast_units",
            "lower",
            "upper",
            "model",
        ],
    );
    for ((category, date), mu) in data.future_keys.iter().zip(future) {
        let half = z * (dispersion * mu).sqrt();
        table.push(vec![
            date.clone(),
            category.clone(),
            format!("{mu:.2}"),
            format!("{:.2}", (mu - half).max(0.0)),
            format!("{:.2}", mu + half),
            chosen.to_string(),
        ]);
    }
    table
}
