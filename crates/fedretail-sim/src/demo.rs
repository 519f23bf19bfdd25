use crate::federation::{run_federation, SimStore, Wiring};
use crate::prepare::{prepare_network, PreparedStore, SkippedStore};
use crate::report::{group_by, summarize, DemandReport, StoreReport};
use crate::truth::ExpectedUnits;
use crate::SimError;
use fedretail_coordinator::{CoordinatorEvent, JobConfig, JobOutcome, StoreEvaluation};
use fedretail_core::clustered::{group_penalty, ClusterTree};
use fedretail_core::task::DemandTaskOptions;
use fedretail_core::{BoxFuture, ClusteredNewtonConfig, FedNewtonConfig, TaskKind, TaskSpec};
use fedretail_data::DemandSpec;
use fedretail_domain::{history_band, size_band, HISTORY_BANDS};
use fedretail_models::demand::{test_errors, DemandOptions};
use fedretail_models::{
    demand_feature_names, demand_layout, glm, metrics, DemandTask, FixedTasks, GroupedTask,
    LocalTask,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: PathBuf,
    pub holdout_days: u32,
    /// Days before the held-out ones on which each store picks its forecaster.
    pub validation_days: u32,
    pub job: JobConfig,
    /// Coordinator checkpoints and how the agents connect.
    pub wiring: Wiring,
    /// Stores whose features are computed at once.
    pub prepare_parallelism: usize,
    /// Each store's agent writes its forecasts and model into `<store>/results/`.
    pub write_results: bool,
    /// Up to this many groups of stores with a model each (clustered federated
    /// learning); 1 trains one model for the network.
    pub groups: u32,
}

impl DemoOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        DemoOptions {
            data_dir,
            holdout_days: 28,
            validation_days: 28,
            job: JobConfig::default(),
            wiring: Wiring::default(),
            prepare_parallelism: 2,
            write_results: true,
            groups: 1,
        }
    }
}

/// Progress of a demo run.
#[derive(Debug, Clone, PartialEq)]
pub enum DemoEvent {
    Preparing {
        store_id: String,
        done: usize,
        total: usize,
    },
    Prepared {
        stores: usize,
        skipped: usize,
    },
    Coordinator(CoordinatorEvent),
    Baselines,
}

/// Run the demand task over the network in `options.data_dir`: real coordinator, one
/// real agent per store, over gRPC on 127.0.0.1.
pub fn run_demo<'a>(
    options: &'a DemoOptions,
    observer: Arc<dyn Fn(&DemoEvent) + Send + Sync>,
) -> BoxFuture<'a, Result<DemandReport, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let (stores, mut skipped_stores) = prepare_demo(options, &observer).await?;
        let prepare_seconds = started.elapsed().as_secs_f64();
        let fed_start = Instant::now();
        let (outcome, agent_failures) = federate_demand(options, &stores, &observer).await?;
        let federated_seconds = fed_start.elapsed().as_secs_f64();

        // Baselines. The centralized reference pools the stores' rows: a yardstick that
        // exists only in this harness.
        observer(&DemoEvent::Baselines);
        let base_start = Instant::now();
        let stores_for_baseline = stores.clone();
        let l2 = options.job.l2;
        let Baselines {
            centralized,
            by_type,
        } = tokio::task::spawn_blocking(move || baselines(&stores_for_baseline, l2))
            .await
            .map_err(|e| SimError::Runtime(format!("baseline fit failed: {e}")))?;
        let max_gap = if options.groups > 1 {
            grouped_gap(&outcome, &stores, l2, options.groups)
        } else {
            centralized
                .iter()
                .zip(&outcome.parameters)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let by_id: std::collections::HashMap<&str, &PreparedStore> =
            stores.iter().map(|s| (s.store_id.as_str(), s)).collect();
        let offices = office_stores(&options.data_dir);
        let store_reports: Vec<StoreReport> = outcome
            .evaluations
            .iter()
            .filter_map(|ev| {
                let store = by_id.get(ev.store_id.as_str())?;
                let yardsticks = Yardsticks {
                    centralized: &centralized,
                    of_type: by_type.get(&store.business_type).map(Vec::as_slice),
                    expected: ExpectedUnits::read(&options.data_dir.join(&store.store_id)),
                };
                let mut r = store_report(ev, store, &yardsticks, options.holdout_days);
                r.district = offices.as_ref().map(|o| {
                    let office = o.contains(&r.store_id);
                    (if office { "office" } else { "other" }).to_string()
                });
                Some(r)
            })
            .collect();
        skipped_stores.extend(agent_failures);
        let timing = DemoTiming {
            wall_seconds: started.elapsed().as_secs_f64(),
            prepare_seconds,
            federated_seconds,
            baseline_seconds: base_start.elapsed().as_secs_f64(),
        };
        Ok(demand_report(
            options,
            &outcome,
            store_reports,
            skipped_stores,
            timing,
            max_gap,
        ))
    })
}

/// Every store's demand features, prepared a few stores at a time.
async fn prepare_demo(
    options: &DemoOptions,
    observer: &Arc<dyn Fn(&DemoEvent) + Send + Sync>,
) -> Result<(Vec<PreparedStore>, Vec<SkippedStore>), SimError> {
    let spec = DemandSpec {
        holdout_days: options.holdout_days,
        horizon_days: 28,
        validation_days: options.validation_days,
    };
    let obs = observer.clone();
    let on_done = move |store: &str, done: usize, total: usize| {
        obs(&DemoEvent::Preparing {
            store_id: store.to_string(),
            done,
            total,
        })
    };
    let (stores, skipped) = prepare_network(
        &options.data_dir,
        &spec,
        options.prepare_parallelism,
        &on_done,
    )
    .await?;
    observer(&DemoEvent::Prepared {
        stores: stores.len(),
        skipped: skipped.len(),
    });
    Ok((stores, skipped))
}

/// The demand job over a real coordinator and one agent per store; its outcome and
/// the agents that failed.
async fn federate_demand(
    options: &DemoOptions,
    stores: &[PreparedStore],
    observer: &Arc<dyn Fn(&DemoEvent) + Send + Sync>,
) -> Result<(JobOutcome, Vec<SkippedStore>), SimError> {
    let mut job = options.job.clone();
    job.task = TaskSpec::Demand(DemandTaskOptions {
        holdout_days: options.holdout_days,
        validation_days: options.validation_days,
        groups: options.groups,
        ..Default::default()
    });
    let demand_options = DemandOptions {
        l2: job.l2,
        ..Default::default()
    };
    // Each agent gets the task its store prepared above (timed apart), and keeps its
    // results (forecasts, the model) in the store's own folder.
    let sim_stores: Vec<SimStore> = stores
        .iter()
        .map(|store| {
            let task = store_task(store, demand_options, options.groups)?;
            Ok(SimStore {
                store_id: store.store_id.clone(),
                business_type: store.business_type.clone(),
                tasks: Arc::new(FixedTasks::new().with(TaskKind::Demand, task)),
                results_dir: options
                    .write_results
                    .then(|| options.data_dir.join(&store.store_id).join("results")),
            })
        })
        .collect::<Result<_, SimError>>()?;
    let obs = observer.clone();
    let run = run_federation(
        &sim_stores,
        vec![job],
        &options.wiring,
        Arc::new(move |e: &CoordinatorEvent| obs(&DemoEvent::Coordinator(e.clone()))),
    )
    .await?;
    let outcome = run
        .outcomes
        .into_iter()
        .next()
        .ok_or_else(|| SimError::Runtime("the coordinator ran no job".into()))?;
    if outcome.failed {
        return Err(SimError::Runtime(format!(
            "the demand job {}",
            outcome.status
        )));
    }
    Ok((outcome, run.agent_failures))
}

/// The generator's record of the network's office-district stores, when it has any:
/// the truth a grouped model should find, read only to report against it.
fn office_stores(dir: &std::path::Path) -> Option<std::collections::HashSet<String>> {
    let text = std::fs::read_to_string(dir.join("network.json")).ok()?;
    let network: fedretail_synth::NetworkSummary = serde_json::from_str(&text).ok()?;
    let offices: std::collections::HashSet<String> = network
        .stores
        .into_iter()
        .filter(|p| p.office)
        .map(|p| p.store_id)
        .collect();
    (!offices.is_empty()).then_some(offices)
}

/// A store's demand task, grouped when the job trains a model per group of stores.
fn store_task(
    store: &PreparedStore,
    options: DemandOptions,
    groups: u32,
) -> Result<Arc<dyn LocalTask>, SimError> {
    let task: Arc<dyn LocalTask> = Arc::new(DemandTask::new(store.dataset.clone(), options));
    if groups <= 1 {
        return Ok(task);
    }
    GroupedTask::try_new(task, groups as usize)
        .map(|t| Arc::new(t) as Arc<dyn LocalTask>)
        .map_err(|e| SimError::Runtime(e.to_string()))
}

/// The largest difference between a group's model and the centralized fit of the same
/// objective (the group's pull toward the model it was split from) on its stores'
/// pooled rows; the stores say which group they joined.
fn grouped_gap(outcome: &JobOutcome, stores: &[PreparedStore], l2: f64, groups: u32) -> f64 {
    let d = demand_layout().len();
    let Ok(tree) = ClusterTree::new(&outcome.parameters, d, groups as usize) else {
        return f64::INFINITY;
    };
    let leaf_of: std::collections::HashMap<&str, usize> = outcome
        .evaluations
        .iter()
        .filter_map(|ev| {
            Some((
                ev.store_id.as_str(),
                *ev.metrics.get("group_leaf")? as usize,
            ))
        })
        .collect();
    let masks = (demand_layout().regularization_mask(), vec![true; d]);
    let config = ClusteredNewtonConfig {
        newton: FedNewtonConfig {
            l2,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut gap: f64 = 0.0;
    for leaf in tree.leaves() {
        let rows: Vec<&fedretail_models::DemandRows> = stores
            .iter()
            .filter(|s| leaf_of.get(s.store_id.as_str()) == Some(&leaf))
            .map(|s| &s.dataset.train)
            .collect();
        if rows.is_empty() {
            continue; // No store joined it at the end: nothing to compare.
        }
        let penalty = group_penalty(&tree, leaf, &masks, &config);
        let max_step = config.newton.max_step;
        let (central, _) =
            glm::fit_newton_from(&rows, &vec![0.0; d], &penalty, max_step, 100, 1e-10);
        gap = central
            .iter()
            .zip(tree.model(leaf))
            .map(|(a, b)| (a - b).abs())
            .fold(gap, f64::max);
    }
    gap
}

/// What a store is measured against: the pooled models (the whole network's, and its
/// declared business type's) and, on a synthetic network, the generator's expected
/// demand (the floor).
struct Yardsticks<'a> {
    centralized: &'a [f64],
    of_type: Option<&'a [f64]>,
    expected: Option<ExpectedUnits>,
}

/// One store's figures: what it reported, and the centralized yardsticks on its days.
fn store_report(
    ev: &StoreEvaluation,
    store: &PreparedStore,
    yardsticks: &Yardsticks<'_>,
    holdout_days: u32,
) -> StoreReport {
    let ds = &store.dataset;
    let m = |k: &str| ev.metrics.get(k).copied();
    let actual: f64 = ds.test.units().iter().sum();
    let central_err = test_errors(ds, yardsticks.centralized);
    let n_cat = (ds.test.len() / holdout_days as usize).max(1);
    let train_days = (ds.train.len() / n_cat).max(1);
    let units_per_day = ds.train.units().iter().sum::<f64>() / train_days as f64;
    let forecast_model = ev
        .metrics
        .keys()
        .find_map(|k| k.strip_prefix("forecast_by_"))
        .map(str::to_string);
    StoreReport {
        store_id: ev.store_id.clone(),
        business_type: store.business_type.clone(),
        size_band: size_band(units_per_day).to_string(),
        units_per_day: (units_per_day * 10.0).round() / 10.0,
        history_days: ds.history_days,
        train_rows: ds.train.len() as u64,
        test_rows: ds.test.len() as u64,
        wape_seasonal_naive: m("wape_naive"),
        wape_local: m("wape_local"),
        wape_federated: m("wape_federated"),
        wape_centralized: metrics::wape(central_err, actual),
        wape_centralized_by_type: yardsticks
            .of_type
            .and_then(|w| metrics::wape(test_errors(ds, w), actual)),
        wape_expected: yardsticks
            .expected
            .as_ref()
            .and_then(|truth| truth.wape_on_test(ds)),
        wape_personalized: m("wape_personalized"),
        wape_ensemble: m("wape_ensemble"),
        mase_local: m("mase_local"),
        mase_federated: m("mase_federated"),
        mase_centralized: metrics::mase(central_err, ds.test.len(), ds.naive_scale),
        mase_personalized: m("mase_personalized"),
        mase_seasonal_naive: m("mase_naive"),
        chosen: forecast_model
            .as_deref()
            .map(|f| chosen_name(f).to_string()),
        wape_chosen: m("wape_forecast"),
        kept_vs_local: m("gain_over_local_per_day")
            .zip(m("gain_over_local_se"))
            .map(|(mean, se)| metrics::kept_vs_local(mean, se).to_string()),
        group: m("group_leaf").map(|v| v as u32),
        group_depth: m("group_depth").map(|v| v as u32),
        district: None,
        forecast_model,
        wape_forecast: m("wape_forecast"),
        mase_forecast: m("mase_forecast"),
        bias_forecast: m("bias_forecast"),
    }
}

/// A store's forecaster in the words of the report: the federated model is the
/// network's global one, seasonal naive is "naive".
fn chosen_name(forecaster: &str) -> &str {
    match forecaster {
        "federated" => "global",
        "seasonal_naive" => "naive",
        other => other,
    }
}

/// Where a demo's time went.
struct DemoTiming {
    wall_seconds: f64,
    prepare_seconds: f64,
    federated_seconds: f64,
    baseline_seconds: f64,
}

fn demand_report(
    options: &DemoOptions,
    outcome: &JobOutcome,
    store_reports: Vec<StoreReport>,
    skipped_stores: Vec<SkippedStore>,
    timing: DemoTiming,
    max_gap: f64,
) -> DemandReport {
    let refs: Vec<&StoreReport> = store_reports.iter().collect();
    let types = [
        "grocery",
        "convenience",
        "florist",
        "hardware",
        "pharmacy",
        "fashion",
    ];
    DemandReport {
        task: outcome.task.clone(),
        strategy: outcome.strategy.clone(),
        rounds: outcome.rounds.len(),
        holdout_days: options.holdout_days,
        data_dir: options.data_dir.display().to_string(),
        wall_seconds: timing.wall_seconds,
        prepare_seconds: timing.prepare_seconds,
        federated_seconds: timing.federated_seconds,
        baseline_seconds: timing.baseline_seconds,
        bytes_up: outcome.bytes_up,
        bytes_down: outcome.bytes_down,
        overall: summarize("all stores", &refs),
        by_business_type: group_by(&store_reports, |s| &s.business_type, &types),
        by_size_band: group_by(
            &store_reports,
            |s| &s.size_band,
            &["small", "medium", "large"],
        ),
        small_and_young: summarize(
            "small, under 6 months",
            &refs
                .iter()
                .copied()
                .filter(|s| {
                    let young = HISTORY_BANDS[..2].contains(&history_band(s.history_days));
                    s.size_band == "small" && young
                })
                .collect::<Vec<_>>(),
        ),
        by_history_band: group_by(
            &store_reports,
            |s| history_band(s.history_days),
            &HISTORY_BANDS,
        ),
        by_district: if store_reports.iter().any(|s| s.district.is_some()) {
            group_by(
                &store_reports,
                |s| s.district.as_deref().unwrap_or("unknown"),
                &["office", "other"],
            )
        } else {
            Vec::new()
        },
        stores: store_reports,
        skipped_stores,
        missing_evaluations: outcome.missing_evaluations.clone(),
        round_history: outcome.rounds.clone(),
        model: demand_feature_names()
            .into_iter()
            .zip(outcome.parameters.iter().copied())
            .collect(),
        max_weight_gap_to_centralized: max_gap,
        privacy: outcome.privacy.clone(),
        status: outcome.status.clone(),
        peak_rss_bytes: None,
    }
}

/// The yardsticks that pool rows, which exist only in this harness.
struct Baselines {
    /// One model on every store's rows.
    centralized: Vec<f64>,
    /// One model per declared business type on its stores' rows: what clustering by
    /// declared metadata into separate models would give at best.
    by_type: std::collections::HashMap<String, Vec<f64>>,
}

fn baselines(stores: &[PreparedStore], l2: f64) -> Baselines {
    let mut types: Vec<&str> = stores.iter().map(|s| s.business_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let by_type = types
        .into_iter()
        .map(|t| {
            let of_type: Vec<PreparedStore> = stores
                .iter()
                .filter(|s| s.business_type == t)
                .cloned()
                .collect();
            (t.to_string(), centralized_fit(&of_type, l2))
        })
        .collect();
    Baselines {
        centralized: centralized_fit(stores, l2),
        by_type,
    }
}

/// Newton to convergence on the pooled training rows of every store.
pub(crate) fn centralized_fit(stores: &[PreparedStore], l2: f64) -> Vec<f64> {
    let sources: Vec<&fedretail_models::DemandRows> =
        stores.iter().map(|s| &s.dataset.train).collect();
    let mask = demand_layout().regularization_mask();
    glm::fit_newton(
        &sources,
        &mask,
        l2,
        DemandOptions::default().max_step,
        100,
        1e-10,
    )
    .0
}
