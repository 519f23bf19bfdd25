//! Demand forecasting: daily units per store and category over a held-out final
//! period. Features are computed at the store (in SQL, by `fedretail-data`); this
//! module holds the prepared rows, the model layout and the [`DemandTask`].

use crate::glm;
use crate::keys::RowKeys;
use crate::metrics::{bias, clearly_better, mase, mean_and_se, mean_and_serial_se, wape};
use crate::task::{LocalTask, ResultTable, StoreResults, TaskError, TaskMetrics};
use fedretail_core::{newton_statistics_len, LocalWork, ModelLayout};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

pub use crate::rows::{ActivePositions, DemandRows, Features};
pub use fedretail_core::task::{
    demand_category_bucket, demand_feature_names, demand_layout, DEMAND_CATEGORY_START,
    DEMAND_CATEGORY_TERMS, DEMAND_DIM, DEMAND_FEATURES, DEMAND_TYPE_START, DEMAND_TYPE_TERMS,
};

/// One store's prepared demand data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DemandDataset {
    pub store_id: String,
    /// Days the models are fitted on.
    pub train: DemandRows,
    /// The days just before the held-out ones, on which the store picks its
    /// forecaster: no model is fitted on them before the pick.
    pub validation: DemandRows,
    pub test: DemandRows,
    /// Rows for the days after the store's history (units unknown, zero), to forecast.
    pub future: DemandRows,
    /// (category, ISO date) of each future row.
    pub future_keys: RowKeys,
    /// (category, ISO date) of each held-out row (may be empty: then no backtest table).
    pub test_keys: RowKeys,
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
    /// own rows (Ditto-style personalisation) and has no validation days to pick one
    /// on (otherwise it picks from [`PERSONALIZATION_PULLS`]). Large stores move
    /// further from the global model than small ones because their data outweighs it.
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

/// The pulls toward the global model a store tries on its validation days (Ditto's λ,
/// chosen per store): from barely more than its local fit to nearly the global model.
pub const PERSONALIZATION_PULLS: [f64; 6] = [1.0, 5.0, 20.0, 100.0, 500.0, 2500.0];

/// The demand task at one store.
pub struct DemandTask {
    data: Arc<DemandDataset>,
    options: DemandOptions,
    /// Fitted on the training days only (what the pick scores).
    local_before_validation: OnceLock<Vec<f64>>,
    /// Fitted on every day before the held-out ones (what the store forecasts with).
    local_only: OnceLock<Vec<f64>>,
}

impl DemandTask {
    pub fn new(data: Arc<DemandDataset>, options: DemandOptions) -> Self {
        DemandTask {
            data,
            options,
            local_before_validation: OnceLock::new(),
            local_only: OnceLock::new(),
        }
    }

    pub fn dataset(&self) -> &DemandDataset {
        &self.data
    }

    /// The model this store would fit alone on all its days before the held-out ones
    /// (the local-only baseline).
    pub fn local_only_model(&self) -> &[f64] {
        self.local_only
            .get_or_init(|| self.fit_local(&[&self.data.train, &self.data.validation]))
    }

    fn local_before_validation(&self) -> &[f64] {
        self.local_before_validation
            .get_or_init(|| self.fit_local(&[&self.data.train]))
    }

    fn fit_local(&self, rows: &[&DemandRows]) -> Vec<f64> {
        let mask = demand_layout().regularization_mask();
        glm::fit_newton(
            rows,
            &mask,
            self.options.l2,
            self.options.max_step,
            50,
            1e-9,
        )
        .0
    }

    /// The global model fine-tuned on this store's days before the held-out ones,
    /// pulled toward the global model with strength `pull`.
    pub fn personalize(&self, global: &[f64], pull: f64) -> Vec<f64> {
        self.personalize_on(global, pull, &[&self.data.train, &self.data.validation])
    }

    fn personalize_on(&self, global: &[f64], pull: f64, rows: &[&DemandRows]) -> Vec<f64> {
        let mask = vec![true; global.len()];
        let penalty = fedretail_core::L2Penalty {
            mask: &mask,
            l2: pull,
            center: Some(global),
        };
        glm::fit_newton_from(rows, global, &penalty, self.options.max_step, 50, 1e-9).0
    }

    fn check_len(&self, global: &[f64]) -> Result<(), TaskError> {
        let expected = DEMAND_DIM;
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
            LocalWork::LocalEpochs(s) => {
                let mut w = global.to_vec();
                let mask = demand_layout().regularization_mask();
                glm::sgd(&self.data.train, &mut w, &mask, s);
                if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                    return Err(TaskError::Diverged(format!(
                        "parameter {i} is not finite; lower the learning rate"
                    )));
                }
                Ok(w.iter().zip(global).map(|(a, b)| a - b).collect())
            }
            LocalWork::ClusterStatistics
            | LocalWork::ClusteredSecondOrderStatistics
            | LocalWork::ClusteredLocalEpochs(_) => Err(TaskError::UnsupportedWork {
                task: "demand",
                work: "cluster statistics (a grouped model wraps this task)",
            }),
        }
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok(self.scores(global)?.0)
    }

    /// The Poisson loss per training row (up to a constant in the units).
    fn train_loss(&self, global: &[f64]) -> Option<f64> {
        let rows = &self.data.train;
        let fits = global.len() == DEMAND_DIM && !rows.is_empty();
        fits.then(|| glm::loss(rows, global) / rows.len() as f64)
            .filter(|l| l.is_finite())
    }

    /// The Poisson loss of each validation row: how a grouped model's store picks its
    /// depth.
    fn validation_losses(&self, global: &[f64]) -> Option<Vec<f64>> {
        let rows = &self.data.validation;
        let fits = global.len() == DEMAND_DIM && !rows.is_empty();
        fits.then(|| glm::row_losses(rows, global))
            .filter(|l| l.iter().all(|v| v.is_finite()))
    }

    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        let (metrics, pick) = self.scores(global)?;
        let data = &self.data;
        let (mut held_out, mut future) = (Vec::new(), Vec::new());
        pick.predictor.predict_into(&data.test, &mut held_out);
        pick.predictor.predict_into(&data.future, &mut future);
        let name = pick.forecaster.name();
        let table = forecast_table(data, &held_out, &future, name, self.options.interval);
        let mut metrics = metrics;
        metrics.insert("forecast_rows".into(), table.rows.len() as f64);
        let mut tables = vec![table];
        if data.test_keys.len() == data.test.len() && !data.test.is_empty() {
            tables.push(backtest_table(data, &held_out, name));
        }
        Ok(StoreResults { tables, metrics })
    }
}

/// The forecasters a store chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forecaster {
    Federated,
    Personalized,
    Local,
    SeasonalNaive,
    /// The mean of the personalized, local and seasonal-naive forecasts: combining
    /// forecasts whose errors differ is the classic way to be rarely worst.
    Ensemble,
}

impl Forecaster {
    /// In order of preference when two score the same.
    pub const ALL: [Forecaster; 5] = [
        Forecaster::Federated,
        Forecaster::Personalized,
        Forecaster::Local,
        Forecaster::SeasonalNaive,
        Forecaster::Ensemble,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Forecaster::Federated => "federated",
            Forecaster::Personalized => "personalized",
            Forecaster::Local => "local",
            Forecaster::SeasonalNaive => "seasonal_naive",
            Forecaster::Ensemble => "ensemble",
        }
    }

    /// The suffix of its metrics (`wape_naive`, `mase_local`, ...).
    fn metric(self) -> &'static str {
        match self {
            Forecaster::SeasonalNaive => "naive",
            other => other.name(),
        }
    }

    /// Whether it needs a fit on the store's own rows.
    fn fits_locally(self) -> bool {
        matches!(
            self,
            Forecaster::Personalized | Forecaster::Local | Forecaster::Ensemble
        )
    }
}

/// How a forecaster turns rows into forecasts.
#[derive(Debug, Clone, PartialEq)]
enum Predictor {
    Model(Vec<f64>),
    Naive,
    /// The mean of its parts' forecasts.
    Mean(Vec<Predictor>),
}

impl Predictor {
    fn predict_into(&self, rows: &DemandRows, out: &mut Vec<f64>) {
        match self {
            Predictor::Model(w) => glm::predict_into(rows, w, out),
            Predictor::Naive => {
                out.clear();
                out.extend_from_slice(rows.naive());
            }
            Predictor::Mean(parts) => {
                out.clear();
                out.resize(rows.len(), 0.0);
                let mut part = Vec::with_capacity(rows.len());
                let share = 1.0 / parts.len().max(1) as f64;
                for p in parts {
                    p.predict_into(rows, &mut part);
                    out.iter_mut().zip(&part).for_each(|(o, v)| *o += share * v);
                }
            }
        }
    }
}

/// The models a store's forecasters are made of, fitted on some of its days.
struct Fitted {
    global: Vec<f64>,
    personal: Vec<f64>,
    local: Vec<f64>,
}

impl Fitted {
    fn predictor(&self, f: Forecaster) -> Predictor {
        match f {
            Forecaster::Federated => Predictor::Model(self.global.clone()),
            Forecaster::Personalized => Predictor::Model(self.personal.clone()),
            Forecaster::Local => Predictor::Model(self.local.clone()),
            Forecaster::SeasonalNaive => Predictor::Naive,
            Forecaster::Ensemble => Predictor::Mean(vec![
                Predictor::Model(self.global.clone()),
                Predictor::Model(self.personal.clone()),
                Predictor::Model(self.local.clone()),
            ]),
        }
    }
}

/// The forecaster a store keeps, and how it forecasts.
struct Pick {
    forecaster: Forecaster,
    predictor: Predictor,
}

/// Scores forecasts of one set of rows into metrics named `{prefix}{measure}_{name}`.
struct Scorer<'a> {
    rows: &'a DemandRows,
    prefix: &'static str,
    naive_scale: f64,
    actual: f64,
    forecast: Vec<f64>,
}

impl<'a> Scorer<'a> {
    fn new(rows: &'a DemandRows, prefix: &'static str, naive_scale: f64) -> Self {
        Scorer {
            rows,
            prefix,
            naive_scale,
            actual: rows.units().iter().sum(),
            forecast: Vec::with_capacity(rows.len()),
        }
    }

    /// Forecast the rows with `p`; the absolute error.
    fn forecast(&mut self, p: &Predictor) -> f64 {
        p.predict_into(self.rows, &mut self.forecast);
        self.rows.abs_error(&self.forecast)
    }

    fn wape_of_model(&mut self, w: &[f64]) -> Option<f64> {
        glm::predict_into(self.rows, w, &mut self.forecast);
        wape(self.rows.abs_error(&self.forecast), self.actual)
    }

    /// |units - forecast| of each row, for the last forecast made.
    fn row_errors(&self) -> Vec<f64> {
        let units = self.rows.units();
        units
            .iter()
            .zip(&self.forecast)
            .map(|(y, f)| (y - f).abs())
            .collect()
    }

    /// Score `p` as `name`; its WAPE when defined.
    fn score(&mut self, m: &mut TaskMetrics, name: &str, p: &Predictor) -> Option<f64> {
        let abs_err = self.forecast(p);
        let pre = self.prefix;
        m.insert(format!("{pre}abs_error_{name}"), abs_err);
        let w = wape(abs_err, self.actual);
        let measures = [
            ("wape", w),
            ("mase", mase(abs_err, self.rows.len(), self.naive_scale)),
            ("bias", bias(self.forecast.iter().sum(), self.actual)),
        ];
        for (measure, v) in measures {
            if let Some(v) = v {
                m.insert(format!("{pre}{measure}_{name}"), v);
            }
        }
        w
    }
}

impl DemandTask {
    /// Held-out metrics of every forecaster, the one the store keeps (picked on its
    /// validation days, never on the held-out ones) and that pick's held-out metrics.
    fn scores(&self, global: &[f64]) -> Result<(TaskMetrics, Pick), TaskError> {
        self.check_len(global)?;
        let data = &self.data;
        let mut m = TaskMetrics::new();
        m.insert("train_rows".into(), data.train.len() as f64);
        m.insert("validation_rows".into(), data.validation.len() as f64);
        m.insert("test_rows".into(), data.test.len() as f64);
        m.insert("actual_units".into(), data.test.units().iter().sum());
        m.insert("history_days".into(), data.history_days as f64);
        let (forecaster, pull) = self.pick(global, &mut m);
        m.insert("personalization_pull".into(), pull);
        let fitted = self.fits_locally().then(|| Fitted {
            global: global.to_vec(),
            personal: self.personalize(global, pull),
            local: self.local_only_model().to_vec(),
        });
        let mut test = Scorer::new(&data.test, "", data.naive_scale);
        let mut pick = None;
        let (mut local_errors, mut kept_errors) = (None, None);
        for f in self.candidates() {
            let predictor = match &fitted {
                Some(fitted) => fitted.predictor(f),
                None if f == Forecaster::Federated => Predictor::Model(global.to_vec()),
                None => Predictor::Naive,
            };
            test.score(&mut m, f.metric(), &predictor);
            if f == Forecaster::Local {
                local_errors = Some(test.row_errors());
            }
            if f == forecaster {
                test.score(&mut m, "forecast", &predictor);
                kept_errors = Some(test.row_errors());
                pick = Some(Pick {
                    forecaster,
                    predictor,
                });
            }
        }
        if let (Some(local), Some(kept)) = (local_errors, kept_errors) {
            if let Some((mean, se)) = gain_per_day(&data.test_keys, &local, &kept) {
                m.insert("gain_over_local_per_day".into(), mean);
                m.insert("gain_over_local_se".into(), se);
            }
        }
        m.insert(format!("forecast_by_{}", forecaster.name()), 1.0);
        let pick = pick.unwrap_or(Pick {
            forecaster: Forecaster::Federated,
            predictor: Predictor::Model(global.to_vec()),
        });
        Ok((m, pick))
    }

    fn fits_locally(&self) -> bool {
        !self.data.train.is_empty()
    }

    /// The forecasters this store can use: those fitted at the store need training rows.
    fn candidates(&self) -> impl Iterator<Item = Forecaster> {
        let fits = self.fits_locally();
        Forecaster::ALL
            .into_iter()
            .filter(move |f| fits || !f.fits_locally())
    }

    /// The forecaster with the lowest WAPE on the validation days, each fitted on the
    /// training days only, and the personalization pull that did best there; the
    /// federated model and the default pull when there are no validation days.
    fn pick(&self, global: &[f64], m: &mut TaskMetrics) -> (Forecaster, f64) {
        let data = &self.data;
        if data.validation.is_empty() || data.train.is_empty() {
            return (Forecaster::Federated, self.options.personalization);
        }
        let mut val = Scorer::new(&data.validation, "val_", data.naive_scale);
        let (pull, personal) = self.pick_pull(global, &mut val);
        let fitted = Fitted {
            global: global.to_vec(),
            personal,
            local: self.local_before_validation().to_vec(),
        };
        let mut scored = Vec::new();
        for f in self.candidates() {
            let predictor = fitted.predictor(f);
            if let Some(w) = val.score(m, f.metric(), &predictor) {
                scored.push(Candidate {
                    forecaster: f,
                    wape: w,
                    errors: val.row_errors(),
                });
            }
        }
        (choose_beyond_noise(&scored), pull)
    }

    /// The pull toward the global model with the lowest validation WAPE, and the
    /// model it gives on the training days.
    fn pick_pull(&self, global: &[f64], val: &mut Scorer<'_>) -> (f64, Vec<f64>) {
        let mut best: Option<(f64, Vec<f64>, f64)> = None;
        for pull in PERSONALIZATION_PULLS {
            let model = self.personalize_on(global, pull, &[&self.data.train]);
            let w = val.wape_of_model(&model).unwrap_or(f64::INFINITY);
            if best.as_ref().is_none_or(|b| w < b.2) {
                best = Some((pull, model, w));
            }
        }
        match best {
            Some((pull, model, w)) if w.is_finite() => (pull, model),
            _ => {
                let pull = self.options.personalization;
                (pull, self.personalize_on(global, pull, &[&self.data.train]))
            }
        }
    }
}

/// What the kept forecast saves over the local-only one on the held-out days: the
/// mean per day of the local absolute error minus the kept one, and its standard
/// error. Days, not rows, are the draws: a day's categories share its ups and downs,
/// and neighbouring days each other's, so the error is Newey-West's over the days in
/// order (rows are their own days when the store gave no keys).
fn gain_per_day(keys: &RowKeys, local: &[f64], kept: &[f64]) -> Option<(f64, f64)> {
    let saved = local.iter().zip(kept).map(|(l, k)| l - k);
    if keys.len() != local.len() {
        return mean_and_se(&saved.collect::<Vec<_>>());
    }
    let mut by_day: BTreeMap<&str, f64> = BTreeMap::new();
    for ((_, day), s) in keys.iter().zip(saved) {
        *by_day.entry(day).or_default() += s;
    }
    // ISO dates sort in time order.
    mean_and_serial_se(&by_day.into_values().collect::<Vec<_>>())
}

/// A forecaster's score on the validation days.
#[derive(Debug, Clone)]
struct Candidate {
    forecaster: Forecaster,
    wape: f64,
    errors: Vec<f64>,
}

/// The federated model unless another forecaster beats it on the validation days by
/// more than one standard error of the mean per-row improvement (the one-standard-error
/// rule of model selection): a few weeks of one small store's days are noisy, and a pick
/// that follows the noise loses on the days after. Among those that clear the bar, the
/// lowest WAPE.
fn choose_beyond_noise(scored: &[Candidate]) -> Forecaster {
    let Some(base) = scored
        .iter()
        .find(|c| c.forecaster == Forecaster::Federated)
    else {
        return scored
            .iter()
            .min_by(|a, b| a.wape.total_cmp(&b.wape))
            .map_or(Forecaster::Federated, |c| c.forecaster);
    };
    scored
        .iter()
        .filter(|c| c.wape < base.wape && clearly_better(&base.errors, &c.errors))
        .min_by(|a, b| a.wape.total_cmp(&b.wape))
        .map_or(Forecaster::Federated, |c| c.forecaster)
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
            date.to_string(),
            category.to_string(),
            format!("{mu:.2}"),
            format!("{:.2}", (mu - half).max(0.0)),
            format!("{:.2}", mu + half),
            chosen.to_string(),
        ]);
    }
    table
}

/// The held-out days as the store lived them: what sold, what the kept forecaster
/// said, and what seasonal naive said, so the shop owner can judge the forecast.
fn backtest_table(data: &DemandDataset, held_out: &[f64], chosen: &str) -> ResultTable {
    let mut table = ResultTable::new(
        "backtest",
        &[
            "date",
            "category",
            "actual_units",
            "forecast_units",
            "naive_units",
            "model",
        ],
    );
    let rows = data.test_keys.iter().zip(held_out);
    let truth = data.test.units().iter().zip(data.test.naive());
    for (((category, date), mu), (units, naive)) in rows.zip(truth) {
        table.push(vec![
            date.to_string(),
            category.to_string(),
            format!("{units:.0}"),
            format!("{mu:.2}"),
            format!("{naive:.2}"),
            chosen.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows with only the intercept set; `units(i)` and `naive(i)` per row.
    fn rows(n: usize, units: impl Fn(usize) -> f64, naive: impl Fn(usize) -> f64) -> DemandRows {
        let d = DEMAND_DIM;
        let mut x = vec![0.0; d];
        x[0] = 1.0;
        let mut out = DemandRows::new(d);
        for i in 0..n {
            out.push(&x, units(i), 5.0, naive(i));
        }
        out
    }

    fn task(validation: DemandRows, test: DemandRows) -> DemandTask {
        let data = DemandDataset {
            store_id: "s".into(),
            train: rows(60, |i| 4.0 + (i % 3) as f64, |_| 5.0),
            validation,
            test,
            naive_scale: 1.0,
            history_days: 120,
            ..Default::default()
        };
        DemandTask::new(Arc::new(data), DemandOptions::default())
    }

    fn picked(m: &TaskMetrics) -> &str {
        m.keys()
            .find_map(|k| k.strip_prefix("forecast_by_"))
            .unwrap_or("")
    }

    #[test]
    fn the_pick_is_made_on_validation_days_and_never_sees_the_held_out_ones() {
        let global = vec![0.0; DEMAND_DIM];
        // Seasonal naive is exact on the validation days, so it is picked...
        let seasonal = |i: usize| if i.is_multiple_of(2) { 2.0 } else { 9.0 };
        let val = || rows(28, seasonal, seasonal);
        // ...whether it is also good on the held-out days or far off.
        let good = task(val(), rows(28, seasonal, seasonal));
        let bad = task(val(), rows(28, |_| 5.0, |i| 4.0 * seasonal(i)));
        let (mg, mb) = (
            good.evaluate(&global).unwrap(),
            bad.evaluate(&global).unwrap(),
        );
        assert_eq!(picked(&mg), "seasonal_naive");
        assert_eq!(picked(&mb), "seasonal_naive");
        assert_eq!(mg["val_wape_naive"], 0.0);
        // The pick's held-out scores are those of the picked forecaster.
        assert_eq!(mb["wape_forecast"], mb["wape_naive"]);
        assert_eq!(mb["bias_forecast"], mb["bias_naive"]);
        assert!(mb["wape_naive"] > mb["wape_local"]);
        // What the pick saves over the store's own forecast: a loss here, per row
        // (these rows have no keys, so each is its own day).
        let per_row = (mb["abs_error_local"] - mb["abs_error_forecast"]) / 28.0;
        assert!((mb["gain_over_local_per_day"] - per_row).abs() < 1e-9);
        assert!(per_row < 0.0 && mb["gain_over_local_se"] > 0.0);
    }

    #[test]
    fn the_gain_over_local_is_summed_per_day_before_its_noise_is_measured() {
        let keys: RowKeys = [("a", "d1"), ("b", "d1"), ("a", "d2"), ("b", "d2")]
            .into_iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect();
        let local = [3.0, 1.0, 2.0, 2.0];
        let kept = [1.0, 0.0, 1.0, 0.0];
        // Days save 3 and 3: a gain of 3 per day with no spread between days...
        assert_eq!(gain_per_day(&keys, &local, &kept), Some((3.0, 0.0)));
        // ...where rows alone (without keys) would show a spread.
        let (mean, se) = gain_per_day(&RowKeys::default(), &local, &kept).unwrap();
        assert_eq!(mean, 1.5);
        assert!(se > 0.0);
        // One day is no measure of noise.
        let one_day: RowKeys = [("a", "d1"), ("b", "d1")]
            .into_iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect();
        assert_eq!(gain_per_day(&one_day, &local[..2], &kept[..2]), None);
    }

    #[test]
    fn the_pick_leaves_the_federated_model_only_for_a_gain_beyond_the_noise() {
        let candidate = |forecaster, errors: Vec<f64>| Candidate {
            forecaster,
            wape: errors.iter().sum::<f64>() / 100.0,
            errors,
        };
        let federated = candidate(Forecaster::Federated, vec![5.0, 1.0, 5.0, 1.0, 5.0, 1.0]);
        // Better on the sum (17 against 18) but worse on half the rows: noise.
        let noisy = candidate(Forecaster::Local, vec![1.0, 5.0, 1.0, 5.0, 1.0, 4.0]);
        assert!(noisy.wape < federated.wape);
        let scored = [federated, noisy];
        assert_eq!(choose_beyond_noise(&scored), Forecaster::Federated);
        // Better on every row: kept.
        let steady = candidate(Forecaster::Personalized, vec![4.0, 0.5, 4.5, 0.5, 4.0, 0.8]);
        let scored = [scored[0].clone(), scored[1].clone(), steady];
        assert_eq!(choose_beyond_noise(&scored), Forecaster::Personalized);
        // Without the federated model to compare with: the lowest WAPE.
        assert_eq!(choose_beyond_noise(&scored[1..]), Forecaster::Personalized);
    }

    #[test]
    fn an_ensemble_forecasts_the_mean_of_its_parts() {
        let r = rows(5, |i| i as f64, |i| 2.0 * i as f64);
        let mut w = vec![0.0; DEMAND_DIM];
        w[0] = 2f64.ln();
        let (mut model, mut naive, mut mean) = (vec![], vec![], vec![]);
        Predictor::Model(w.clone()).predict_into(&r, &mut model);
        Predictor::Naive.predict_into(&r, &mut naive);
        Predictor::Mean(vec![Predictor::Model(w), Predictor::Naive]).predict_into(&r, &mut mean);
        for i in 0..5 {
            assert!((model[i] - 10.0).abs() < 1e-9 && naive[i] == 2.0 * i as f64);
            assert!((mean[i] - (model[i] + naive[i]) / 2.0).abs() < 1e-12);
        }
    }

    #[test]
    fn the_training_loss_is_the_mean_poisson_loss_and_falls_with_a_newton_step() {
        // Twice the units of the series' scale: the intercept should move to ln 2.
        let data = DemandDataset {
            train: rows(60, |i| 9.0 + (i % 3) as f64, |_| 5.0),
            ..Default::default()
        };
        let t = DemandTask::new(Arc::new(data), DemandOptions::default());
        let zero = vec![0.0; DEMAND_DIM];
        let rows = &t.dataset().train;
        let at_zero = t.train_loss(&zero).unwrap();
        assert!((at_zero - glm::loss(rows, &zero) / rows.len() as f64).abs() < 1e-12);
        let fitted = t.fit_local(&[rows]);
        assert!(t.train_loss(&fitted).unwrap() < at_zero);
        assert_eq!(
            t.train_loss(&[0.0]),
            None,
            "a model of the wrong size has no loss"
        );
    }

    #[test]
    fn without_validation_days_the_store_keeps_the_federated_model() {
        let global = vec![0.0; DEMAND_DIM];
        let t = task(DemandRows::default(), rows(28, |_| 5.0, |_| 1.0));
        let m = t.evaluate(&global).unwrap();
        assert_eq!(picked(&m), "federated");
        assert!(!m.contains_key("val_wape_federated"));
        // A constant 5 forecast of a constant 5: no error, no bias.
        assert_eq!(m["wape_forecast"], 0.0);
        assert_eq!(m["bias_forecast"], 0.0);
    }

    #[test]
    fn a_level_the_store_sees_on_validation_days_favours_its_own_fits() {
        // The global model says 5 a day; this store sells 20 a day throughout.
        let global = vec![0.0; DEMAND_DIM];
        let data = DemandDataset {
            store_id: "big".into(),
            train: rows(60, |_| 20.0, |_| 20.0 * 0.5),
            validation: rows(28, |_| 20.0, |_| 10.0),
            test: rows(28, |_| 20.0, |_| 10.0),
            naive_scale: 1.0,
            history_days: 120,
            ..Default::default()
        };
        let m = DemandTask::new(Arc::new(data), DemandOptions::default())
            .evaluate(&global)
            .unwrap();
        assert!(matches!(picked(&m), "local" | "personalized"), "{m:?}");
        assert!(
            m["wape_forecast"] < 0.05 && m["bias_federated"] < -0.7,
            "{m:?}"
        );
    }

    #[test]
    fn personalization_reduces_to_the_global_model_under_a_strong_pull() {
        let mut global = vec![0.0; DEMAND_DIM];
        global[0] = -0.5;
        let t = task(rows(28, |_| 9.0, |_| 9.0), rows(28, |_| 9.0, |_| 9.0));
        let p = t.personalize(&global, 1e12);
        assert!(
            p.iter().zip(&global).all(|(a, b)| (a - b).abs() < 1e-6),
            "{p:?}"
        );
        // The store sells more than the global model says (its level is about 0.2 on
        // the log scale): under the weakest pull tried the intercept moves most of the way.
        assert!(t.personalize(&global, PERSONALIZATION_PULLS[0])[0] > 0.0);
        let m = t.evaluate(&global).unwrap();
        assert!(PERSONALIZATION_PULLS.contains(&m["personalization_pull"]));
    }
}
