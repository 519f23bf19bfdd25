//! Federated binary classification (credit scoring, churn): every party's model, the
//! federated ones and the references a user needs to judge them, on the same split.
//!
//! Runs in process through the same [`Strategy`]/[`LocalTask`] seam the agents drive,
//! so what is measured here is what the gRPC path computes. The centralized fits
//! exist only here, as yardsticks.

use crate::inprocess::{run_until, InProcessRun};
use crate::prepare::{business_type_of, store_dirs};
use crate::{SimError, SkippedStore};
use fedretail_core::{
    FedAvg, FedAvgConfig, FedNewton, FedNewtonConfig, ModelParameters, SamplingConfig,
    UpdatePrecision,
};
use fedretail_data::{
    load_churn_rows, load_tabular, FeatureWindow, StoreSource, TabularSpec,
    CUSTOMER_ANOMALY_FEATURES,
};
use fedretail_models::classify::{
    classification_metrics, dp_sgd, dp_sgd_schedule, predict_proba, sgd, stratified_split,
    DpSgdConfig,
};
use fedretail_models::metrics::ranking::{accuracy, roc_auc};
use fedretail_models::{ClassifierKind, ClassifierTask, LabeledRows, LocalTask};
use fedretail_privacy::{calibrate_noise_multiplier, RdpAccountant};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One party (a lender, a store) with its own split.
#[derive(Debug, Clone)]
pub struct Party {
    pub name: String,
    /// Business type, or the silo name again for tabular data.
    pub group: String,
    pub train: LabeledRows,
    pub test: LabeledRows,
}

/// Training settings; the defaults are the credit protocol of `shared/data/README.md`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassificationOptions {
    /// FedAvg rounds (and epochs of the local and centralized SGD references).
    pub rounds: u64,
    pub local_epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// L2 penalty per training example on the weights (not the bias).
    pub l2: f64,
    /// Rounds of the exact solver (federated Newton on summed gradients and Hessians).
    pub newton_rounds: u64,
    /// Hidden units of the MLP trained beside the logistic regression (0: none).
    pub mlp_hidden: usize,
    /// Learning rate of the MLP's SGD.
    pub mlp_learning_rate: f64,
    /// A party with fewer training rows, or only one class, is skipped and listed.
    pub min_train_rows: usize,
    pub seed: u64,
    /// Customer-level DP at every party (DP-SGD); None trains without it.
    pub customer_dp: Option<CustomerDp>,
}

/// A per-customer budget each party enforces on its own training: noise is calibrated
/// so that its whole run (local epochs of every round) stays within (ε, δ). Customers
/// belong to one party, so the guarantee of the federation is the largest party's ε.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CustomerDp {
    pub epsilon: f64,
    pub delta: f64,
    pub clip_norm: f64,
}

/// What each party's DP-SGD spent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartyPrivacy {
    pub silo: String,
    pub sampling_rate: f64,
    pub steps: u64,
    pub noise_multiplier: f64,
    pub epsilon: f64,
    pub delta: f64,
}

impl Default for ClassificationOptions {
    fn default() -> Self {
        ClassificationOptions {
            rounds: 20,
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 1e-4,
            newton_rounds: 8,
            mlp_hidden: 8,
            mlp_learning_rate: 0.05,
            min_train_rows: 20,
            seed: 7,
            customer_dp: None,
        }
    }
}

/// One party's figures on its own test rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiloReport {
    pub silo: String,
    pub group: String,
    pub train_rows: usize,
    pub test_rows: usize,
    pub test_positives: usize,
    pub auc_local: Option<f64>,
    pub auc_federated: Option<f64>,
    pub auc_newton: Option<f64>,
    pub auc_centralized: Option<f64>,
    pub auc_mlp_local: Option<f64>,
    pub auc_mlp_federated: Option<f64>,
    pub auc_rule: Option<f64>,
    pub accuracy_local: Option<f64>,
    pub accuracy_federated: Option<f64>,
    pub accuracy_centralized: Option<f64>,
    pub accuracy_mlp_federated: Option<f64>,
    pub accuracy_rule: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClassificationReport {
    pub task: String,
    pub feature_names: Vec<String>,
    pub options: ClassificationOptions,
    /// FedAvg rounds of the logistic regression.
    pub rounds: u64,
    pub wall_seconds: f64,
    /// Traffic of the FedAvg logistic regression run.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub pooled_auc_local: Option<f64>,
    pub pooled_auc_federated: Option<f64>,
    pub pooled_auc_centralized: Option<f64>,
    pub pooled_auc_newton: Option<f64>,
    pub pooled_auc_newton_centralized: Option<f64>,
    pub pooled_auc_mlp_local: Option<f64>,
    pub pooled_auc_mlp_federated: Option<f64>,
    pub pooled_auc_mlp_centralized: Option<f64>,
    /// The seed's rule `standardized recency > 1`, where the task has it (churn).
    pub pooled_auc_rule: Option<f64>,
    pub pooled_accuracy_local: Option<f64>,
    pub pooled_accuracy_federated: Option<f64>,
    pub pooled_accuracy_centralized: Option<f64>,
    pub pooled_accuracy_rule: Option<f64>,
    /// Largest parameter difference between federated and centralized Newton.
    pub newton_max_parameter_gap: f64,
    /// The federated models, for the same jobs over agents to be checked against:
    /// exact Newton, FedAvg of the logistic regression, FedAvg of the MLP.
    pub newton_parameters: Vec<f64>,
    pub fedavg_parameters: Vec<f64>,
    pub mlp_parameters: Option<Vec<f64>>,
    /// Per-party DP-SGD settings and ε spent, when customer-level DP is on.
    pub privacy: Option<Vec<PartyPrivacy>>,
    pub silos: Vec<SiloReport>,
    pub skipped: Vec<SkippedStore>,
}

/// Progress of a classification run, for a progress bar.
#[derive(Debug, Clone)]
pub enum ClassificationEvent {
    Prepared { parties: usize, skipped: usize },
    Stage(&'static str),
}

fn err(e: impl std::fmt::Display) -> SimError {
    SimError::Runtime(e.to_string())
}

fn pooled_scores(parts: &[(Vec<f64>, &LabeledRows)]) -> (Vec<f64>, Vec<bool>) {
    let mut s = Vec::new();
    let mut y = Vec::new();
    for (p, rows) in parts {
        s.extend_from_slice(p);
        y.extend_from_slice(rows.labels());
    }
    (s, y)
}

/// Train every model on `parties` and measure it. `rule_column`: a feature whose
/// value above 1 is a baseline rule (the seed's standardized-recency churn rule).
pub fn run_classification(
    task: &str,
    feature_names: Vec<String>,
    parties: Vec<Party>,
    skipped: Vec<SkippedStore>,
    options: &ClassificationOptions,
    rule_column: Option<usize>,
    on_event: &dyn Fn(ClassificationEvent),
) -> Result<ClassificationReport, SimError> {
    let started = Instant::now();
    let (parties, mut skipped) = screen(parties, skipped, options.min_train_rows);
    on_event(ClassificationEvent::Prepared {
        parties: parties.len(),
        skipped: skipped.len(),
    });
    let Some(dim) = parties.first().map(|p| p.train.dim()) else {
        return Err(SimError::AllSkipped(
            skipped
                .first()
                .map(|s| s.reason.clone())
                .unwrap_or_else(|| "no parties".into()),
        ));
    };
    let lr = ClassifierKind::Logistic;
    let pooled_train = LabeledRows::concat(dim, parties.iter().map(|p| &p.train));
    // Each party calibrates its own DP-SGD noise to the budget for its whole run.
    let mut privacy = None;
    let mut party_dp: Vec<Option<DpSgdConfig>> = vec![None; parties.len()];
    if let Some(budget) = options.customer_dp {
        let mut spent = Vec::new();
        for (i, p) in parties.iter().enumerate() {
            let epochs = options.local_epochs.saturating_mul(options.rounds as u32);
            let (q, steps) = dp_sgd_schedule(p.train.len(), options.batch_size, epochs);
            let sigma = calibrate_noise_multiplier(q, steps, budget.epsilon, budget.delta)
                .map_err(|e| SimError::Options(format!("{}: {e}", p.name)))?;
            let mut acc = RdpAccountant::new();
            acc.compose_poisson_gaussian(q, sigma, steps).map_err(err)?;
            spent.push(PartyPrivacy {
                silo: p.name.clone(),
                sampling_rate: q,
                steps,
                noise_multiplier: sigma,
                epsilon: acc.epsilon(budget.delta).map_err(err)?.epsilon,
                delta: budget.delta,
            });
            party_dp[i] = Some(DpSgdConfig {
                clip_norm: budget.clip_norm,
                noise_multiplier: sigma,
            });
        }
        privacy = Some(spent);
    }
    let tasks = |kind: ClassifierKind, private: bool| -> Vec<(String, Arc<dyn LocalTask>)> {
        parties
            .iter()
            .zip(&party_dp)
            .map(|(p, dp)| {
                let t: Arc<dyn LocalTask> = Arc::new(ClassifierTask {
                    name: "classify",
                    kind,
                    train: p.train.clone(),
                    test: p.test.clone(),
                    dp: if private { *dp } else { None },
                });
                (p.name.clone(), t)
            })
            .collect()
    };
    let fedavg_config = |learning_rate: f64| FedAvgConfig {
        sampling: SamplingConfig {
            fraction: 1.0,
            min_stores: 1,
            seed: options.seed,
        },
        local_epochs: options.local_epochs,
        batch_size: options.batch_size,
        learning_rate,
        l2: options.l2,
        server_learning_rate: 1.0,
        precision: UpdatePrecision::F32,
    };
    let fedavg = |kind: ClassifierKind, learning_rate: f64| -> Result<InProcessRun, SimError> {
        let mut strategy = FedAvg::try_new(fedavg_config(learning_rate)).map_err(err)?;
        let init = ModelParameters::from_values(
            kind.layout(dim),
            kind.initial_parameters(dim, options.seed),
        )
        .map_err(err)?;
        run_until(
            &mut strategy,
            &tasks(kind, true),
            init,
            options.rounds,
            &mut |_, _| false,
        )
        .map_err(err)
    };
    let local_sgd = |kind: ClassifierKind,
                     rows: &LabeledRows,
                     learning_rate: f64,
                     dp: Option<DpSgdConfig>|
     -> Result<Vec<f64>, SimError> {
        let mut w = kind.initial_parameters(dim, options.seed);
        // One epoch per "round", reshuffled each time, as the federation does it.
        for epoch in 0..options.rounds {
            let seed = options.seed.wrapping_add(epoch);
            match dp {
                None => sgd(
                    kind,
                    rows,
                    &mut w,
                    options.local_epochs,
                    options.batch_size,
                    learning_rate,
                    options.l2,
                    seed,
                ),
                Some(dp) => dp_sgd(
                    kind,
                    rows,
                    &mut w,
                    options.local_epochs,
                    options.batch_size,
                    learning_rate,
                    options.l2,
                    dp,
                    seed,
                )
                .map_err(err)?,
            }
        }
        Ok(w)
    };

    on_event(ClassificationEvent::Stage("logistic regression: FedAvg"));
    let fed = fedavg(lr, options.learning_rate)?;
    let w_fed = fed.parameters.values().to_vec();
    on_event(ClassificationEvent::Stage(
        "logistic regression: local and centralized",
    ));
    // The centralized yardstick trains without DP: it is what privacy costs against.
    let w_central = local_sgd(lr, &pooled_train, options.learning_rate, None)?;
    let w_local: Vec<Vec<f64>> = parties
        .iter()
        .zip(&party_dp)
        .map(|(p, dp)| local_sgd(lr, &p.train, options.learning_rate, *dp))
        .collect::<Result<_, _>>()?;

    on_event(ClassificationEvent::Stage(
        "logistic regression: exact Newton",
    ));
    let newton = |stores: &[(String, Arc<dyn LocalTask>)]| -> Result<Vec<f64>, SimError> {
        let mut strategy = FedNewton::try_new(FedNewtonConfig {
            sampling: SamplingConfig::default(),
            // The same objective as the SGD: mean loss + l2/2 |w|^2, times the rows.
            l2: options.l2 * pooled_train.len() as f64,
            ..Default::default()
        })
        .map_err(err)?;
        let init = ModelParameters::zeros(lr.layout(dim));
        Ok(run_until(
            &mut strategy,
            stores,
            init,
            options.newton_rounds,
            &mut |_, _| false,
        )
        .map_err(err)?
        .parameters
        .into_values())
    };
    // The exact solver is a non-private reference (exact sums are not DP).
    let w_newton = newton(&tasks(lr, false))?;
    let pooled_party: Vec<(String, Arc<dyn LocalTask>)> = vec![(
        "pooled".into(),
        Arc::new(ClassifierTask {
            name: "classify",
            kind: lr,
            train: pooled_train.clone(),
            test: LabeledRows::new(dim),
            dp: None,
        }),
    )];
    let w_newton_central = newton(&pooled_party)?;
    let newton_gap = w_newton
        .iter()
        .zip(&w_newton_central)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);

    let mlp = (options.mlp_hidden > 0).then_some(ClassifierKind::Mlp {
        hidden: options.mlp_hidden,
    });
    let mut mlp_models = None;
    if let Some(kind) = mlp {
        on_event(ClassificationEvent::Stage(
            "MLP: FedAvg, local and centralized",
        ));
        let fed = fedavg(kind, options.mlp_learning_rate)?
            .parameters
            .into_values();
        let central = local_sgd(kind, &pooled_train, options.mlp_learning_rate, None)?;
        let local: Vec<Vec<f64>> = parties
            .iter()
            .zip(&party_dp)
            .map(|(p, dp)| local_sgd(kind, &p.train, options.mlp_learning_rate, *dp))
            .collect::<Result<_, _>>()?;
        mlp_models = Some((kind, fed, central, local));
    }

    on_event(ClassificationEvent::Stage("evaluating"));
    let metric = |kind: ClassifierKind, w: &[f64], rows: &LabeledRows, name: &str| {
        classification_metrics(kind, w, rows).get(name).copied()
    };
    let mut silos = Vec::new();
    let mut pooled: [Vec<(Vec<f64>, &LabeledRows)>; 8] = Default::default();
    for (i, p) in parties.iter().enumerate() {
        let rule_scores: Option<Vec<f64>> = rule_column.map(|c| {
            (0..p.test.len())
                .map(|r| p.test.row(r).0.get(c).copied().unwrap_or(0.0))
                .collect()
        });
        let rule_proba = rule_scores.as_ref().map(|s| {
            s.iter()
                .map(|&v| if v > 1.0 { 1.0 } else { 0.0 })
                .collect::<Vec<f64>>()
        });
        let mut silo = SiloReport {
            silo: p.name.clone(),
            group: p.group.clone(),
            train_rows: p.train.len(),
            test_rows: p.test.len(),
            test_positives: p.test.positives(),
            auc_local: metric(lr, &w_local[i], &p.test, "auc"),
            auc_federated: metric(lr, &w_fed, &p.test, "auc"),
            auc_newton: metric(lr, &w_newton, &p.test, "auc"),
            auc_centralized: metric(lr, &w_central, &p.test, "auc"),
            auc_mlp_local: None,
            auc_mlp_federated: None,
            auc_rule: rule_scores
                .as_ref()
                .and_then(|s| roc_auc(s, p.test.labels())),
            accuracy_local: metric(lr, &w_local[i], &p.test, "accuracy"),
            accuracy_federated: metric(lr, &w_fed, &p.test, "accuracy"),
            accuracy_centralized: metric(lr, &w_central, &p.test, "accuracy"),
            accuracy_mlp_federated: None,
            accuracy_rule: rule_proba
                .as_ref()
                .and_then(|s| accuracy(s, p.test.labels())),
        };
        pooled[0].push((predict_proba(lr, &w_local[i], &p.test), &p.test));
        pooled[1].push((predict_proba(lr, &w_fed, &p.test), &p.test));
        pooled[2].push((predict_proba(lr, &w_central, &p.test), &p.test));
        pooled[3].push((predict_proba(lr, &w_newton, &p.test), &p.test));
        pooled[4].push((predict_proba(lr, &w_newton_central, &p.test), &p.test));
        if let Some((kind, fed, central, local)) = &mlp_models {
            silo.auc_mlp_local = metric(*kind, &local[i], &p.test, "auc");
            silo.auc_mlp_federated = metric(*kind, fed, &p.test, "auc");
            silo.accuracy_mlp_federated = metric(*kind, fed, &p.test, "accuracy");
            pooled[5].push((predict_proba(*kind, &local[i], &p.test), &p.test));
            pooled[6].push((predict_proba(*kind, fed, &p.test), &p.test));
            pooled[7].push((predict_proba(*kind, central, &p.test), &p.test));
        }
        silos.push(silo);
    }
    let auc = |k: usize| {
        let (s, y) = pooled_scores(&pooled[k]);
        roc_auc(&s, &y)
    };
    let acc = |k: usize| {
        let (s, y) = pooled_scores(&pooled[k]);
        accuracy(&s, &y)
    };
    let (rule_auc, rule_acc) = match rule_column {
        Some(c) => {
            let mut s = Vec::new();
            let mut y = Vec::new();
            for p in &parties {
                for r in 0..p.test.len() {
                    let (x, label) = p.test.row(r);
                    s.push(x.get(c).copied().unwrap_or(0.0));
                    y.push(label);
                }
            }
            let hard: Vec<f64> = s.iter().map(|&v| f64::from(u8::from(v > 1.0))).collect();
            (roc_auc(&s, &y), accuracy(&hard, &y))
        }
        None => (None, None),
    };
    skipped.sort_by(|a, b| a.store_id.cmp(&b.store_id));
    Ok(ClassificationReport {
        task: task.to_string(),
        feature_names,
        options: options.clone(),
        rounds: fed.rounds,
        wall_seconds: started.elapsed().as_secs_f64(),
        bytes_up: fed.bytes_up,
        bytes_down: fed.bytes_down,
        pooled_auc_local: auc(0),
        pooled_auc_federated: auc(1),
        pooled_auc_centralized: auc(2),
        pooled_auc_newton: auc(3),
        pooled_auc_newton_centralized: auc(4),
        pooled_auc_mlp_local: mlp.and_then(|_| auc(5)),
        pooled_auc_mlp_federated: mlp.and_then(|_| auc(6)),
        pooled_auc_mlp_centralized: mlp.and_then(|_| auc(7)),
        pooled_auc_rule: rule_auc,
        pooled_accuracy_local: acc(0),
        pooled_accuracy_federated: acc(1),
        pooled_accuracy_centralized: acc(2),
        pooled_accuracy_rule: rule_acc,
        newton_max_parameter_gap: newton_gap,
        newton_parameters: w_newton.clone(),
        fedavg_parameters: w_fed.clone(),
        mlp_parameters: mlp_models.as_ref().map(|m| m.1.clone()),
        privacy,
        silos,
        skipped,
    })
}

/// Keep the parties that can train; say why the others cannot.
fn screen(
    parties: Vec<Party>,
    mut skipped: Vec<SkippedStore>,
    min_train_rows: usize,
) -> (Vec<Party>, Vec<SkippedStore>) {
    let mut kept = Vec::new();
    for p in parties {
        let positives = p.train.positives();
        let reason = if p.train.len() < min_train_rows {
            Some(format!(
                "only {} training rows (at least {min_train_rows} needed)",
                p.train.len()
            ))
        } else if positives == 0 || positives == p.train.len() {
            Some(format!(
                "training rows are all of one class ({positives} positive of {})",
                p.train.len()
            ))
        } else if p.test.is_empty() {
            Some("no test rows".into())
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(SkippedStore {
                store_id: p.name,
                reason,
            }),
            None => kept.push(p),
        }
    }
    (kept, skipped)
}

/// Credit scoring from a tabular file, one lender per value of `spec.split_by`.
pub async fn run_credit(
    path: &Path,
    spec: &TabularSpec,
    options: &ClassificationOptions,
    on_event: &dyn Fn(ClassificationEvent),
) -> Result<ClassificationReport, SimError> {
    let table = load_tabular(path, spec).await.map_err(err)?;
    let mut parties = Vec::new();
    let mut skipped = Vec::new();
    for silo in table.silos {
        match silo.skipped {
            Some(reason) => skipped.push(SkippedStore {
                store_id: silo.name,
                reason,
            }),
            None => parties.push(Party {
                group: silo.name.clone(),
                name: silo.name,
                train: silo.train,
                test: silo.test,
            }),
        }
    }
    run_classification(
        "credit",
        table.feature_names,
        parties,
        skipped,
        options,
        None,
        on_event,
    )
}

/// Churn on a network directory: each store's customers as of `horizon_days` before
/// its last day, labelled by whether they bought again; an 80/20 split per store,
/// stratified by the label.
pub async fn run_churn(
    root: &Path,
    window: &FeatureWindow,
    horizon_days: u32,
    options: &ClassificationOptions,
    on_event: &dyn Fn(ClassificationEvent),
) -> Result<ClassificationReport, SimError> {
    let dirs = store_dirs(root)?;
    if dirs.is_empty() {
        return Err(SimError::NoStores(root.display().to_string()));
    }
    let mut parties = Vec::new();
    let mut skipped = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        match load_churn_rows(&StoreSource::from_dir(dir), window, horizon_days).await {
            Ok(rows) => {
                let (train, test) = stratified_split(&rows, 0.2, options.seed + i as u64);
                parties.push(Party {
                    name,
                    group: business_type_of(dir),
                    train,
                    test,
                });
            }
            Err(e) => skipped.push(SkippedStore {
                store_id: name,
                reason: e.to_string(),
            }),
        }
    }
    run_classification(
        "churn",
        CUSTOMER_ANOMALY_FEATURES[..4]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        parties,
        skipped,
        options,
        Some(3),
        on_event,
    )
}

/// A readable summary of a classification report.
pub fn render_classification(r: &ClassificationReport) -> String {
    let f = |v: Option<f64>| v.map_or("  -  ".to_string(), |v| format!("{v:.3}"));
    let mut s = String::new();
    s.push_str(&format!(
        "\n{} — {} parties, {} features, FedAvg {} rounds ({:.1} s, {} KiB up, {} KiB down)\n",
        r.task,
        r.silos.len(),
        r.feature_names.len(),
        r.rounds,
        r.wall_seconds,
        r.bytes_up / 1024,
        r.bytes_down / 1024
    ));
    s.push_str(&format!(
        "\n  pooled test ROC AUC   local {}   federated {}   centralized {}\n",
        f(r.pooled_auc_local),
        f(r.pooled_auc_federated),
        f(r.pooled_auc_centralized)
    ));
    s.push_str(&format!(
        "  exact Newton          federated {}   centralized {}   max parameter gap {:.1e}\n",
        f(r.pooled_auc_newton),
        f(r.pooled_auc_newton_centralized),
        r.newton_max_parameter_gap
    ));
    if r.pooled_auc_mlp_federated.is_some() {
        s.push_str(&format!(
            "  MLP (FedAvg)          local {}   federated {}   centralized {}\n",
            f(r.pooled_auc_mlp_local),
            f(r.pooled_auc_mlp_federated),
            f(r.pooled_auc_mlp_centralized)
        ));
    }
    if r.pooled_auc_rule.is_some() {
        s.push_str(&format!(
            "  rule recency > 1      AUC {}   accuracy {}\n",
            f(r.pooled_auc_rule),
            f(r.pooled_accuracy_rule)
        ));
    }
    s.push_str(&format!(
        "  pooled accuracy       local {}   federated {}   centralized {}\n\n",
        f(r.pooled_accuracy_local),
        f(r.pooled_accuracy_federated),
        f(r.pooled_accuracy_centralized)
    ));
    if let Some(p) = &r.privacy {
        let worst = p.iter().map(|x| x.epsilon).fold(0.0, f64::max);
        s.push_str(&format!(
            "  customer-level DP-SGD at every party: epsilon {:.2} at delta {:e} (largest party); noise multipliers {}\n\n",
            worst,
            p.first().map_or(0.0, |x| x.delta),
            p.iter()
                .map(|x| format!("{} {:.2}", x.silo, x.noise_multiplier))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let show = r.silos.len() <= 12;
    if show {
        s.push_str("  party         train  test  pos   AUC local  federated  centralized   acc local  federated\n");
        for x in &r.silos {
            s.push_str(&format!(
                "  {:<12} {:>6} {:>5} {:>4}   {:>9}  {:>9}  {:>11}   {:>9}  {:>9}\n",
                x.silo,
                x.train_rows,
                x.test_rows,
                x.test_positives,
                f(x.auc_local),
                f(x.auc_federated),
                f(x.auc_centralized),
                f(x.accuracy_local),
                f(x.accuracy_federated)
            ));
        }
    } else {
        let mut groups: std::collections::BTreeMap<&str, Vec<&SiloReport>> = Default::default();
        for x in &r.silos {
            groups.entry(&x.group).or_default().push(x);
        }
        s.push_str(
            "  group         parties   mean AUC local  federated  centralized   federated wins\n",
        );
        for (g, xs) in groups {
            let mean = |get: &dyn Fn(&SiloReport) -> Option<f64>| {
                let v: Vec<f64> = xs.iter().filter_map(|x| get(x)).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let wins = xs
                .iter()
                .filter(|x| matches!((x.auc_federated, x.auc_local), (Some(a), Some(b)) if a > b))
                .count();
            s.push_str(&format!(
                "  {:<12} {:>8}   {:>14}  {:>9}  {:>11}   {:>6}/{}\n",
                g,
                xs.len(),
                f(mean(&|x| x.auc_local)),
                f(mean(&|x| x.auc_federated)),
                f(mean(&|x| x.auc_centralized)),
                wins,
                xs.len()
            ));
        }
    }
    for k in &r.skipped {
        s.push_str(&format!("  skipped {}: {}\n", k.store_id, k.reason));
    }
    s
}
