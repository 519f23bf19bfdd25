//! Demand features, computed at the store in SQL: a dense day x category grid of units
//! sold, lags and rolling means that are known 28 days ahead (so the whole held-out
//! period is forecast from data before it), calendar terms, holidays, promotions and
//! relative price, all relative to the series' own scale.

use crate::error::{sql_err, DataError};
use crate::plans::{add_input, plan, planning_session, run, StoreTables};
use crate::source::{register_file, text_value, typed_transactions, StoreSource};
use chrono::{Datelike, NaiveDate};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use fedretail_core::BoxFuture;
use fedretail_domain::calendar::{is_public_holiday, shopping_event};
use fedretail_domain::BusinessType;
use fedretail_models::{
    demand_category_bucket, DemandDataset, DemandRows, RowKeysBuilder, DEMAND_CATEGORY_START,
    DEMAND_CATEGORY_TERMS, DEMAND_DIM, DEMAND_FEATURES, DEMAND_TYPE_START, DEMAND_TYPE_TERMS,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Days of history a row needs before it can be used (a week, for the seasonal-naive
/// forecast). Lags and windows use what history there is; a row without its 35-day
/// lag says so (`missing_lags`), so a store with weeks of history keeps its rows.
const WARM_UP_DAYS: i64 = 7;

/// Days before the validation ones a series' scale is the mean over: a year, so the
/// scale is the level of the latest full season, not of a store's early days (a store
/// that grew 15 % a year would otherwise sit a store-specific step above its scale).
const SCALE_DAYS: i64 = 364;

/// What to forecast and how much to hold out.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemandSpec {
    /// The final days held out for evaluation.
    pub holdout_days: u32,
    /// Days after the end of the history to forecast (at most 28: the features are
    /// known that far ahead); 0 for none.
    #[serde(default)]
    pub horizon_days: u32,
    /// Training days just before the held-out ones kept apart for the store to pick
    /// its forecaster on (at most half the training days, so young stores keep rows
    /// to fit on); 0 for none.
    #[serde(default = "default_validation_days")]
    pub validation_days: u32,
}

fn default_validation_days() -> u32 {
    28
}

impl Default for DemandSpec {
    fn default() -> Self {
        DemandSpec {
            holdout_days: 28,
            horizon_days: 0,
            validation_days: default_validation_days(),
        }
    }
}

/// The store's calendar from its first to its last day.
fn calendar_batch(
    first: NaiveDate,
    last: NaiveDate,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or(NaiveDate::MIN);
    let days: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Date32, false),
        Field::new("day_index", DataType::Int64, false),
        Field::new("dow", DataType::Int64, false),
        Field::new("doy", DataType::Float64, false),
        Field::new("public_holiday", DataType::Boolean, false),
        Field::new("shopping_event", DataType::Boolean, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from_iter_values(
            days.iter().map(|d| (*d - epoch).num_days() as i32),
        )),
        Arc::new(Int64Array::from_iter_values(
            days.iter().map(|d| (*d - first).num_days()),
        )),
        Arc::new(Int64Array::from_iter_values(
            days.iter()
                .map(|d| d.weekday().num_days_from_monday() as i64),
        )),
        Arc::new(Float64Array::from_iter_values(
            days.iter().map(|d| d.ordinal() as f64),
        )),
        Arc::new(BooleanArray::from_iter(
            days.iter().map(|d| Some(is_public_holiday(*d))),
        )),
        Arc::new(BooleanArray::from_iter(
            days.iter().map(|d| Some(shopping_event(*d).is_some())),
        )),
    ];
    RecordBatch::try_new(schema, columns)
}

/// The store's promotion calendar, typed; none without a promotions file.
async fn promotions(
    ctx: &SessionContext,
    source: &StoreSource,
) -> Result<(SchemaRef, Vec<RecordBatch>), DataError> {
    let Some(path) = &source.promotions else {
        return Ok((Arc::new(promo_schema()), Vec::new()));
    };
    register_file(ctx, "raw_promotions", path).await?;
    let sql = "SELECT CAST(category AS VARCHAR) AS category, CAST(start_date AS DATE) AS start_date, \
               CAST(end_date AS DATE) AS end_date, CAST(discount AS DOUBLE) AS discount FROM raw_promotions";
    let df = ctx
        .sql(sql)
        .await
        .map_err(sql_err(path, "reading promotions"))?;
    let planned = Arc::new(df.schema().as_arrow().clone());
    // Materialise once so a bad promotion row is reported here, not mid-query.
    let batches = df.collect().await.map_err(sql_err(
        path,
        "reading promotions (expected category, start_date, end_date, discount)",
    ))?;
    let schema = batches.first().map(|b| b.schema()).unwrap_or(planned);
    Ok((schema, batches))
}

fn promo_schema() -> Schema {
    Schema::new(vec![
        Field::new("category", DataType::Utf8, true),
        Field::new("start_date", DataType::Date32, true),
        Field::new("end_date", DataType::Date32, true),
        Field::new("discount", DataType::Float64, true),
    ])
}

/// Day indices where forecasts start: the first validation day, the first held-out
/// day and the first day after the history.
struct Origins {
    /// The first day the series' scale is the mean over.
    scale_from: i64,
    validation: i64,
    test: i64,
    future: i64,
    /// The yearly terms averaged over the days that set the series' scale.
    season_centre: [f64; 4],
}

impl Origins {
    /// A store that has not seen a full year before its validation days cannot tell
    /// the season from a trend, so its training rows do not teach the yearly terms.
    fn learns_season(&self) -> bool {
        self.validation >= 364
    }
}

/// The yearly terms of day-of-year `doy`: the first and second harmonics.
fn yearly_terms(doy: f64) -> [f64; 4] {
    let a = 2.0 * std::f64::consts::PI * doy / 365.25;
    [a.sin(), a.cos(), (2.0 * a).sin(), (2.0 * a).cos()]
}

/// The yearly terms averaged over `days` days from `first`.
fn season_centre(first: NaiveDate, days: i64) -> [f64; 4] {
    let mut sum = [0.0; 4];
    for d in first.iter_days().take(days.max(0) as usize) {
        let t = yearly_terms(d.ordinal() as f64);
        sum.iter_mut().zip(t).for_each(|(s, v)| *s += v);
    }
    sum.map(|s| s / days.max(1) as f64)
}

impl Origins {
    /// The store's origins as the one-row table `origins` the queries join.
    fn batch(&self) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let int = |name: &str| Field::new(name, DataType::Int64, false);
        let float = |name: &str| Field::new(name, DataType::Float64, false);
        let schema = Arc::new(Schema::new(vec![
            int("scale_from"),
            int("validation"),
            int("test"),
            int("future"),
            float("centre1"),
            float("centre2"),
            float("centre3"),
            float("centre4"),
            Field::new("learns_season", DataType::Boolean, false),
        ]));
        let mut columns: Vec<ArrayRef> = [self.scale_from, self.validation, self.test, self.future]
            .into_iter()
            .map(|v| Arc::new(Int64Array::from(vec![v])) as ArrayRef)
            .collect();
        columns.extend(
            self.season_centre
                .iter()
                .map(|&c| Arc::new(Float64Array::from(vec![c])) as ArrayRef),
        );
        columns.push(Arc::new(BooleanArray::from(vec![self.learns_season()])));
        RecordBatch::try_new(schema, columns)
    }
}

/// The first and last day with transactions.
const DATE_RANGE_SQL: &str = "SELECT CAST(MIN(CAST(timestamp AS DATE)) AS VARCHAR), \
     CAST(MAX(CAST(timestamp AS DATE)) AS VARCHAR) FROM transactions";

/// The dense day x category grid of units sold: every category the store sells, on
/// every calendar day, zero where nothing sold. It is materialised once, since the
/// history query reads it three times.
const GRID_SQL: &str = r#"
WITH daily AS (
  SELECT category, CAST(timestamp AS DATE) AS day, SUM(quantity) AS units
  FROM transactions WHERE NOT is_refund GROUP BY category, CAST(timestamp AS DATE)
),
cats AS (SELECT DISTINCT category FROM daily)
SELECT c.category, k.day, k.day_index, k.dow, k.doy, k.public_holiday, k.shopping_event,
       COALESCE(d.units, 0.0) AS units
FROM cats c CROSS JOIN calendar k
LEFT JOIN daily d ON d.category = c.category AND d.day = k.day
"#;

/// Each grid row with its promotion, its series' scale and its history: lags and
/// rolling means. Units are scaled by the mean over the year before the first
/// validation day ([`SCALE_DAYS`]), so nothing a store picks or is scored on leaks
/// into its features.
const HISTORY_SQL: &str = r#"
WITH promo AS (
  SELECT g.category, g.day_index, MAX(p.discount) AS discount
  FROM grid g JOIN promotions p
    ON p.category = g.category AND g.day >= p.start_date AND g.day <= p.end_date
  GROUP BY g.category, g.day_index
),
scale AS (
  SELECT g.category, GREATEST(AVG(g.units), 0.05) AS scale
  FROM grid g CROSS JOIN origins o
  WHERE g.day_index >= o.scale_from AND g.day_index < o.validation GROUP BY g.category
)
SELECT g.category, g.day, g.day_index, g.dow, g.doy, g.public_holiday, g.shopping_event, g.units,
  COALESCE(pr.discount, 0.0) AS discount, s.scale,
  LAG(g.units, 7) OVER w AS lag7, LAG(g.units, 14) OVER w AS lag14,
  LAG(g.units, 21) OVER w AS lag21, LAG(g.units, 28) OVER w AS lag28,
  LAG(g.units, 35) OVER w AS lag35,
  AVG(g.units) OVER (PARTITION BY g.category ORDER BY g.day_index ROWS BETWEEN 34 PRECEDING AND 28 PRECEDING) AS mean7_lag28,
  AVG(g.units) OVER (PARTITION BY g.category ORDER BY g.day_index ROWS BETWEEN 55 PRECEDING AND 28 PRECEDING) AS mean28_lag28,
  AVG(g.units) OVER (PARTITION BY g.category ORDER BY g.day_index ROWS BETWEEN 83 PRECEDING AND 28 PRECEDING) AS mean56_lag28,
  -- The same weekday over weeks 4-11 back: the series' own weekly profile.
  AVG(g.units) OVER (PARTITION BY g.category, g.dow ORDER BY g.day_index ROWS BETWEEN 11 PRECEDING AND 4 PRECEDING) AS same_dow_mean,
  -- A year ago: the week around this day, and the 28 days before the forecast origin.
  AVG(g.units) OVER (PARTITION BY g.category ORDER BY g.day_index ROWS BETWEEN 367 PRECEDING AND 361 PRECEDING) AS year_ago_week,
  AVG(g.units) OVER (PARTITION BY g.category ORDER BY g.day_index ROWS BETWEEN 419 PRECEDING AND 392 PRECEDING) AS year_ago_base
FROM grid g
JOIN scale s ON s.category = g.category
LEFT JOIN promo pr ON pr.category = g.category AND pr.day_index = g.day_index
WINDOW w AS (PARTITION BY g.category ORDER BY g.day_index)
"#;

/// The weekly seasonal-naive forecast from the origin in column `origin`: the last
/// observed same weekday.
fn naive_from(origin: &str) -> String {
    format!(
        "CASE WHEN day_index - {origin} < 7 THEN lag7 WHEN day_index - {origin} < 14 THEN lag14 \
         WHEN day_index - {origin} < 21 THEN lag21 ELSE lag28 END"
    )
}

/// The yearly features, centred on the scale's days (the season relative to the level
/// the store's scale was set at) and zero in the training rows of a store that cannot
/// learn them (`learns_season`).
fn yearly_sql() -> String {
    let names = ["year_sin1", "year_cos1", "year_sin2", "year_cos2"];
    let terms = ["sin(2", "cos(2", "sin(4", "cos(4"];
    names
        .iter()
        .zip(terms)
        .enumerate()
        .map(|(k, (name, term))| {
            format!(
                "CASE WHEN learns_season OR day_index >= validation \
                 THEN {term} * pi() * doy / 365.25) - centre{n} ELSE 0.0 END AS {name}",
                n = k + 1
            )
        })
        .collect::<Vec<_>>()
        .join(",\n  ")
}

/// The feature rows, from the materialised `hist` and the store's `origins`. Planned
/// apart from the history query: one query holding both costs DataFusion several
/// times as much to plan. `origins` comes first: a cross join emits a batch per row
/// of its first input.
fn feature_sql() -> String {
    format!(
        r#"
SELECT
  category,
  CAST(day_index AS DOUBLE) AS day_index,
  units, scale,
  CAST(day_index >= validation AND day_index < test AS DOUBLE) AS is_validation,
  CAST(day_index >= test AS DOUBLE) AS is_test,
  CAST(day_index >= future AS DOUBLE) AS is_future,
  CAST(day AS VARCHAR) AS day_text,
  CASE WHEN day_index >= future THEN {naive_future} WHEN day_index >= test THEN {naive_test}
       ELSE {naive_validation} END AS naive,
  ABS(units - lag7) AS abs_diff7,
  1.0 AS intercept,
  CAST(dow = 1 AS DOUBLE) AS dow_tue, CAST(dow = 2 AS DOUBLE) AS dow_wed,
  CAST(dow = 3 AS DOUBLE) AS dow_thu, CAST(dow = 4 AS DOUBLE) AS dow_fri,
  CAST(dow = 5 AS DOUBLE) AS dow_sat, CAST(dow = 6 AS DOUBLE) AS dow_sun,
  {yearly},
  CAST(public_holiday AS DOUBLE) AS public_holiday,
  CAST(shopping_event AS DOUBLE) AS shopping_event,
  discount AS promo_discount,
  ln(1.0 - LEAST(discount, 0.95)) AS log_relative_price,
  COALESCE(ln((lag28 + 0.5) / (scale + 0.5)), 0.0) AS log_lag28,
  COALESCE(ln((lag35 + 0.5) / (scale + 0.5)), 0.0) AS log_lag35,
  COALESCE(ln((mean7_lag28 + 0.5) / (scale + 0.5)), 0.0) AS log_mean7_lag28,
  COALESCE(ln((mean28_lag28 + 0.5) / (scale + 0.5)), 0.0) AS log_mean28_lag28,
  COALESCE(ln((same_dow_mean + 0.5) / (mean56_lag28 + 0.5)), 0.0) AS log_dow_ratio,
  COALESCE(ln((year_ago_week + 0.5) / (year_ago_base + 0.5)), 0.0) AS log_year_ago_change,
  CAST(year_ago_week IS NOT NULL AND year_ago_base IS NOT NULL AS DOUBLE) AS has_year_ago,
  CAST(lag35 IS NULL AS DOUBLE) AS missing_lags
FROM origins CROSS JOIN hist
WHERE day_index >= {warm_up}
ORDER BY category, day_index
"#,
        naive_future = naive_from("future"),
        naive_test = naive_from("test"),
        naive_validation = naive_from("validation"),
        yearly = yearly_sql(),
        warm_up = WARM_UP_DAYS - 1,
    )
}

/// The demand queries, planned once per shape of a store's inputs.
struct DemandPlans {
    date_range: Arc<dyn ExecutionPlan>,
    grid: Arc<dyn ExecutionPlan>,
    history: Arc<dyn ExecutionPlan>,
    features: Arc<dyn ExecutionPlan>,
}

impl DemandPlans {
    async fn plan(transactions: SchemaRef, promotions: SchemaRef) -> DfResult<Self> {
        let calendar = calendar_batch(NaiveDate::MIN, NaiveDate::MIN)?.schema();
        let origins = Origins {
            scale_from: 0,
            validation: 0,
            test: 0,
            future: 0,
            season_centre: [0.0; 4],
        }
        .batch()?
        .schema();
        let inputs = [
            ("transactions", transactions),
            ("promotions", promotions),
            ("calendar", calendar),
            ("origins", origins),
        ];
        let ctx = planning_session(&inputs)?;
        let date_range = plan(&ctx, DATE_RANGE_SQL).await?;
        let grid = plan(&ctx, GRID_SQL).await?;
        add_input(&ctx, "grid", grid.schema())?;
        let history = plan(&ctx, HISTORY_SQL).await?;
        add_input(&ctx, "hist", history.schema())?;
        let features = plan(&ctx, &feature_sql()).await?;
        Ok(DemandPlans {
            date_range,
            grid,
            history,
            features,
        })
    }

    /// The plans for these input schemas, planned on first use.
    async fn for_inputs(transactions: &SchemaRef, promotions: &SchemaRef) -> DfResult<Arc<Self>> {
        static PLANS: Mutex<Vec<(SchemaRef, SchemaRef, Arc<DemandPlans>)>> = Mutex::new(Vec::new());
        let lock = || PLANS.lock().unwrap_or_else(|p| p.into_inner());
        let found = lock()
            .iter()
            .find(|(t, p, _)| t == transactions && p == promotions)
            .map(|(_, _, plans)| plans.clone());
        if let Some(plans) = found {
            return Ok(plans);
        }
        let plans = Arc::new(Self::plan(transactions.clone(), promotions.clone()).await?);
        lock().push((transactions.clone(), promotions.clone(), plans.clone()));
        Ok(plans)
    }
}

/// Read, validate and featurise one store's data for the demand task.
pub fn load_demand_dataset<'a>(
    store_id: &'a str,
    source: &'a StoreSource,
    spec: &'a DemandSpec,
) -> BoxFuture<'a, Result<DemandDataset, DataError>> {
    Box::pin(async move {
        check_spec(spec)?;
        let path = &source.transactions;
        let (ctx, schema, transactions) = typed_transactions(source).await?;
        let (promo_schema, promos) = promotions(&ctx, source).await?;
        let plans = DemandPlans::for_inputs(&schema, &promo_schema)
            .await
            .map_err(sql_err(path, "planning demand features"))?;
        let tables = StoreTables::default()
            .with("transactions", transactions)
            .with("promotions", promos);
        let (first, last) = date_range(&plans, &tables, path).await?;
        let days = (last - first).num_days() + 1;
        let origins = Origins::new(first, days, spec, path)?;
        let until = last + chrono::Duration::days(spec.horizon_days as i64);
        let calendar = calendar_batch(first, until).and_then(|c| Ok((c, origins.batch()?)));
        let (calendar, origins) = calendar
            .map_err(DataFusionError::from)
            .map_err(sql_err(path, "building calendar"))?;
        let tables = tables
            .with("calendar", vec![calendar])
            .with("origins", vec![origins]);
        let batches = features(&plans, tables, path).await?;
        let mut split = Split::new(source.business_type);
        for batch in &batches {
            split.absorb(batch)?;
        }
        Ok(split.into_dataset(store_id, days as u32))
    })
}

fn check_spec(spec: &DemandSpec) -> Result<(), DataError> {
    if spec.holdout_days == 0 || spec.holdout_days > 365 {
        return Err(DataError::Spec(format!(
            "holdout_days must be in 1..=365, got {}",
            spec.holdout_days
        )));
    }
    if spec.horizon_days > 28 {
        return Err(DataError::Spec(format!(
            "horizon_days must be at most 28 (features are known 28 days ahead), got {}",
            spec.horizon_days
        )));
    }
    Ok(())
}

impl Origins {
    /// Where a store of `days` days from `first` starts its validation, held-out and
    /// future days; too short a history for the spec is an error.
    fn new(first: NaiveDate, days: i64, spec: &DemandSpec, path: &Path) -> Result<Self, DataError> {
        let needed = WARM_UP_DAYS + spec.holdout_days as i64 + 14;
        if days < needed {
            return Err(DataError::TooLittleHistory {
                path: path.to_path_buf(),
                days,
                needed,
                holdout: spec.holdout_days,
            });
        }
        let cutoff = days - spec.holdout_days as i64;
        let validation = (spec.validation_days as i64).min((cutoff - WARM_UP_DAYS) / 2);
        let validation = cutoff - validation.max(0);
        let scale_from = (validation - SCALE_DAYS).max(0);
        Ok(Origins {
            scale_from,
            validation,
            test: cutoff,
            future: days,
            season_centre: season_centre(
                first + chrono::Duration::days(scale_from),
                validation - scale_from,
            ),
        })
    }
}

/// The grid, its history, then the feature rows, each over the store's tables.
async fn features(
    plans: &DemandPlans,
    tables: StoreTables,
    path: &Path,
) -> Result<Vec<RecordBatch>, DataError> {
    let grid = run(&plans.grid, &tables)
        .await
        .map_err(sql_err(path, "computing the daily grid"))?;
    let tables = tables.with("grid", grid);
    let history = run(&plans.history, &tables)
        .await
        .map_err(sql_err(path, "computing lags"))?;
    let tables = tables.with("hist", history);
    run(&plans.features, &tables)
        .await
        .map_err(sql_err(path, "computing demand features"))
}

/// The first and last day with transactions.
async fn date_range(
    plans: &DemandPlans,
    tables: &StoreTables,
    path: &Path,
) -> Result<(NaiveDate, NaiveDate), DataError> {
    let range = run(&plans.date_range, tables)
        .await
        .map_err(sql_err(path, "finding date range"))?;
    range
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            let a = text_value(b.column(0), 0)?;
            let z = text_value(b.column(1), 0)?;
            Some((a.parse::<NaiveDate>().ok()?, z.parse::<NaiveDate>().ok()?))
        })
        .ok_or_else(|| DataError::NoRows {
            path: path.to_path_buf(),
        })
}

/// The feature rows sorted into training, held-out and future days, with the
/// in-sample seasonal-naive error that scales MASE.
struct Split {
    train: DemandRows,
    validation: DemandRows,
    test: DemandRows,
    future: DemandRows,
    future_keys: RowKeysBuilder,
    test_keys: RowKeysBuilder,
    naive_abs: f64,
    naive_n: usize,
    x: Vec<f64>,
    /// Where the store's business-type block goes (every row copies it).
    typed: Vec<(usize, usize)>,
    /// Each category's copy set, the same index in all four row sets.
    categories: HashMap<String, u16>,
    /// The last category seen and its set: rows come a category at a time.
    last: (String, u16),
}

/// Where the terms of `business`'s block go in a row, and which shared feature each
/// copies (the block's terms are the first shared features); none for a store that
/// declared no type.
fn typed_positions(business: Option<BusinessType>) -> Vec<(usize, usize)> {
    let Some(k) = business.and_then(|b| BusinessType::ALL.iter().position(|t| *t == b)) else {
        return Vec::new();
    };
    let start = DEMAND_TYPE_START + k * DEMAND_TYPE_TERMS.len();
    (0..DEMAND_TYPE_TERMS.len())
        .map(|j| (start + j, j))
        .collect()
}

/// Text of row `i` of a text column, borrowed where the column is a string array.
fn text_ref(column: &ArrayRef, i: usize) -> std::borrow::Cow<'_, str> {
    if column.is_null(i) {
        return "".into();
    }
    if let Some(text) = column.as_string_opt::<i32>() {
        return text.value(i).into();
    }
    if let Some(text) = column.as_string_view_opt() {
        return text.value(i).into();
    }
    text_value(column, i).unwrap_or_default().into()
}

/// Where a category's season terms go in a row, and which shared feature each copies.
fn category_positions(category: &str) -> impl Iterator<Item = (usize, usize)> {
    let start =
        DEMAND_CATEGORY_START + demand_category_bucket(category) * DEMAND_CATEGORY_TERMS.len();
    DEMAND_CATEGORY_TERMS
        .iter()
        .enumerate()
        .map(move |(j, term)| {
            let from = DEMAND_FEATURES.iter().position(|f| f == term);
            (start + j, from.unwrap_or_default())
        })
}

impl Split {
    fn new(business: Option<BusinessType>) -> Self {
        // Rows keep the shared features; the business type's block copies its terms,
        // and so does the season block of the row's category (a copy set each).
        let rows = || DemandRows::with_copies(DEMAND_DIM, DEMAND_FEATURES.len(), Vec::new());
        Split {
            train: rows(),
            validation: rows(),
            test: rows(),
            future: rows(),
            future_keys: RowKeysBuilder::default(),
            test_keys: RowKeysBuilder::default(),
            naive_abs: 0.0,
            naive_n: 0,
            x: vec![0.0; DEMAND_FEATURES.len()],
            typed: typed_positions(business),
            categories: HashMap::new(),
            last: (String::new(), u16::MAX),
        }
    }

    /// The copy set of `category`'s rows, added to all four row sets on first sight.
    fn copy_set(&mut self, category: &str) -> u16 {
        if self.last.1 != u16::MAX && self.last.0 == category {
            return self.last.1;
        }
        let set = self.new_or_known_set(category);
        self.last = (category.to_string(), set);
        set
    }

    fn new_or_known_set(&mut self, category: &str) -> u16 {
        if let Some(&set) = self.categories.get(category) {
            return set;
        }
        let copies: Vec<_> = self
            .typed
            .iter()
            .copied()
            .chain(category_positions(category))
            .collect();
        let mut set = 0;
        for rows in [
            &mut self.train,
            &mut self.validation,
            &mut self.test,
            &mut self.future,
        ] {
            set = rows.add_copy_set(copies.clone());
        }
        self.categories.insert(category.to_string(), set);
        set
    }

    fn absorb(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        let lost = |name: &str| DataError::Spec(format!("feature query lost column {name}"));
        let col = |name: &str| -> Result<&Float64Array, DataError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| lost(name))
        };
        let features: Vec<&Float64Array> = DEMAND_FEATURES
            .iter()
            .map(|f| col(f))
            .collect::<Result<_, _>>()?;
        let (units, scale, is_test) = (col("units")?, col("scale")?, col("is_test")?);
        let (naive, diff7, is_future) = (col("naive")?, col("abs_diff7")?, col("is_future")?);
        let is_validation = col("is_validation")?;
        let category = batch
            .column_by_name("category")
            .ok_or_else(|| lost("category"))?;
        let day = batch
            .column_by_name("day_text")
            .ok_or_else(|| lost("day_text"))?;
        for i in 0..batch.num_rows() {
            for (xj, f) in self.x.iter_mut().zip(&features) {
                *xj = f.value(i);
            }
            let set = self.copy_set(&text_ref(category, i));
            let naive_i = if naive.is_null(i) {
                0.0
            } else {
                naive.value(i)
            };
            let key = |keys: &mut RowKeysBuilder| {
                let category = text_value(category, i).unwrap_or_default();
                keys.push(&category, &text_value(day, i).unwrap_or_default());
            };
            if is_future.value(i) > 0.5 {
                self.future
                    .push_in(set, &self.x, 0.0, scale.value(i), naive_i);
                key(&mut self.future_keys);
            } else if is_test.value(i) > 0.5 {
                self.test
                    .push_in(set, &self.x, units.value(i), scale.value(i), naive_i);
                key(&mut self.test_keys);
            } else {
                let rows = if is_validation.value(i) > 0.5 {
                    &mut self.validation
                } else {
                    &mut self.train
                };
                rows.push_in(set, &self.x, units.value(i), scale.value(i), naive_i);
                if !diff7.is_null(i) {
                    self.naive_abs += diff7.value(i);
                    self.naive_n += 1;
                }
            }
        }
        Ok(())
    }

    fn into_dataset(mut self, store_id: &str, history_days: u32) -> DemandDataset {
        for rows in [
            &mut self.train,
            &mut self.validation,
            &mut self.test,
            &mut self.future,
        ] {
            rows.shrink_to_fit();
        }
        DemandDataset {
            store_id: store_id.to_string(),
            train: self.train,
            validation: self.validation,
            test: self.test,
            future: self.future,
            future_keys: self.future_keys.finish(),
            test_keys: self.test_keys.finish(),
            naive_scale: if self.naive_n > 0 {
                self.naive_abs / self.naive_n as f64
            } else {
                0.0
            },
            history_days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(validation: i64, first: NaiveDate) -> Origins {
        Origins {
            scale_from: 0,
            validation,
            test: validation + 28,
            future: validation + 56,
            season_centre: season_centre(first, validation),
        }
    }

    #[test]
    fn a_business_types_block_copies_its_shared_terms_and_no_type_has_none() {
        assert!(typed_positions(None).is_empty());
        let florist = typed_positions(Some(BusinessType::Florist));
        assert_eq!(florist.len(), DEMAND_TYPE_TERMS.len());
        let start = DEMAND_FEATURES.len() + 2 * DEMAND_TYPE_TERMS.len();
        assert_eq!(florist[0], (start, 0));
        let names = fedretail_models::demand_feature_names();
        assert_eq!(names[start + 12], "florist:shopping_event");
        for (to, from) in florist {
            assert_eq!(names[to], format!("florist:{}", names[from]));
        }
        assert_eq!(names.len(), DEMAND_DIM);
    }

    #[test]
    fn the_season_is_centred_on_the_days_that_set_the_scale() {
        let first = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap();
        // Whole years average out: the centre is nearly zero.
        let years = season_centre(first, 731);
        assert!(years.iter().all(|c| c.abs() < 0.01), "{years:?}");
        // Winter only: the first cosine (high in winter) is well above zero.
        let winter = season_centre(first, 60);
        assert!(winter[1] > 0.8, "{winter:?}");
    }

    #[test]
    fn a_stores_origins_are_one_row_and_gate_the_season_at_a_year() {
        let first = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
        let learns = |o: &Origins| {
            let batch = o.batch().unwrap();
            assert_eq!(batch.num_rows(), 1);
            batch
                .column_by_name("learns_season")
                .unwrap()
                .as_boolean()
                .value(0)
        };
        assert!(!learns(&origins(200, first)));
        assert!(learns(&origins(400, first)));
        // The yearly features read the gate and the centres from the origins row.
        let yearly = yearly_sql();
        assert_eq!(
            yearly
                .matches("learns_season OR day_index >= validation")
                .count(),
            4
        );
        assert!((1..=4).all(|k| yearly.contains(&format!("centre{k} "))));
    }
}
