//! Federated binary classification (credit scoring, churn): every party's model, the
//! federated ones and the references a user needs to judge them, on the same split.
//!
//! Runs in process through the same [`Strategy`]/[`LocalTask`] seam the agents drive,
//! so what is measured here is what the gRPC path computes. The centralized fits
//! exist only here, as yardsticks.

use crate::inprocess::{run_until, InProcessRun};
use crate::prepare::{business_type_of, store_dirs};
use crate::{SimError, SkippedStore};
use fedretail_coordinator::{FedAvgSettings, ServerOptimizerKind};
use fedretail_core::{
    FedNewton, FedNewtonConfig, LocalBoxFuture, LocalSgd, ModelParameters, SamplingConfig,
};
use fedretail_data::{
    load_churn_rows, load_tabular, FeatureWindow, StoreSource, TabularSpec,
    CUSTOMER_ANOMALY_FEATURES,
};
use fedretail_models::classify::{
    classification_metrics, dp_sgd, dp_sgd_schedule, predict_proba, sgd, stratified_split,
    with_own_head, with_own_intercept, DpSgdConfig,
};
use fedretail_models::metrics::ranking::{accuracy, roc_auc, roc_curve};
use fedretail_models::{ClassifierKind, ClassifierTask, LabeledRows, LocalTask, OwnHead};
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
    /// At least this many mini-batch steps a round at every party (more epochs for a
    /// tiny one; 0: `local_epochs` everywhere). Also the party-alone reference's.
    pub min_local_steps: u32,
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
    /// The coordinator's step for FedAvg (plain, momentum, Adagrad, Adam, Yogi).
    pub server_optimizer: ServerOptimizerKind,
    pub server_learning_rate: f64,
    /// FedProx's proximal strength in every party's local steps (0: FedAvg).
    pub proximal_mu: f64,
    /// Also train the MLP FedPer-style: the body shared, each party's output layer
    /// trained and kept at the party through every round.
    pub personal_head: bool,
}

impl ClassificationOptions {
    /// The FedAvg settings a job over agents uses to run the same computation.
    pub fn fedavg_settings(&self, learning_rate: f64) -> FedAvgSettings {
        FedAvgSettings {
            local_epochs: self.local_epochs,
            min_local_steps: self.min_local_steps,
            batch_size: self.batch_size,
            learning_rate,
            f32_updates: true,
            server_optimizer: self.server_optimizer,
            server_learning_rate: self.server_learning_rate,
            proximal_mu: self.proximal_mu,
            ..FedAvgSettings::default()
        }
    }
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
            min_local_steps: 40,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 1e-4,
            newton_rounds: 8,
            mlp_hidden: 8,
            mlp_learning_rate: 0.05,
            min_train_rows: 20,
            seed: 7,
            customer_dp: None,
            server_optimizer: ServerOptimizerKind::None,
            server_learning_rate: 1.0,
            proximal_mu: 0.0,
            personal_head: false,
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
    /// With `personal_head`: the FedPer MLP, with the party's own trained head.
    pub auc_mlp_fedper: Option<f64>,
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
    /// The exact Newton model and the federated MLP with each party's own intercept
    /// (its output bias refitted on its own training rows; everything else shared).
    pub pooled_auc_newton_own_intercept: Option<f64>,
    pub pooled_auc_mlp_own_intercept: Option<f64>,
    /// The federated MLP with each party's own head (FedPer's split: the hidden layer
    /// shared, the output layer refitted on the party's rows, pulled toward the
    /// federated one).
    pub pooled_auc_mlp_own_head: Option<f64>,
    /// With `personal_head`: FedPer proper, each party's head trained with the body
    /// through every round and kept at the party.
    pub pooled_auc_mlp_fedper: Option<f64>,
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
    /// With `personal_head`: the FedPer job's shared model (the head part never moves).
    pub fedper_parameters: Option<Vec<f64>>,
    /// Per-party DP-SGD settings and ε spent, when customer-level DP is on.
    pub privacy: Option<Vec<PartyPrivacy>>,
    /// Pooled ROC curves of the main models, for the report's plot.
    pub roc: Vec<RocCurve>,
    pub silos: Vec<SiloReport>,
    pub skipped: Vec<SkippedStore>,
}

/// A model's ROC curve over every party's test rows: (false-, true-positive rate).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RocCurve {
    pub model: String,
    pub auc: Option<f64>,
    pub points: Vec<(f64, f64)>,
}

/// Points kept per ROC curve.
const ROC_POINTS: usize = 120;

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
    let (privacy, party_dp) = calibrate_parties(&parties, options)?;
    let trainer = Trainer {
        pooled_train: LabeledRows::concat(dim, parties.iter().map(|p| &p.train)),
        parties: &parties,
        party_dp,
        options,
        dim,
    };
    let logistic = trainer.logistic(on_event)?;
    let mlp = trainer.mlp(on_event)?;
    on_event(ClassificationEvent::Stage("evaluating"));
    let (silos, pooled) = evaluate_silos(&parties, &logistic, mlp.as_ref(), rule_column);
    let (rule_auc, rule_acc) = rule_baseline(&parties, rule_column);
    skipped.sort_by(|a, b| a.store_id.cmp(&b.store_id));
    let has_mlp = mlp.is_some();
    let roc = pooled.curves(has_mlp);
    Ok(ClassificationReport {
        task: task.to_string(),
        feature_names,
        options: options.clone(),
        rounds: logistic.fed.rounds,
        wall_seconds: started.elapsed().as_secs_f64(),
        bytes_up: logistic.fed.bytes_up,
        bytes_down: logistic.fed.bytes_down,
        pooled_auc_local: pooled.auc(0),
        pooled_auc_federated: pooled.auc(1),
        pooled_auc_centralized: pooled.auc(2),
        pooled_auc_newton: pooled.auc(3),
        pooled_auc_newton_centralized: pooled.auc(4),
        pooled_auc_mlp_local: pooled.auc(5).filter(|_| has_mlp),
        pooled_auc_mlp_federated: pooled.auc(6).filter(|_| has_mlp),
        pooled_auc_mlp_centralized: pooled.auc(7).filter(|_| has_mlp),
        pooled_auc_newton_own_intercept: pooled.auc(8),
        pooled_auc_mlp_own_intercept: pooled.auc(9).filter(|_| has_mlp),
        pooled_auc_mlp_own_head: pooled.auc(10).filter(|_| has_mlp),
        pooled_auc_mlp_fedper: pooled.auc(11),
        pooled_auc_rule: rule_auc,
        pooled_accuracy_local: pooled.accuracy(0),
        pooled_accuracy_federated: pooled.accuracy(1),
        pooled_accuracy_centralized: pooled.accuracy(2),
        pooled_accuracy_rule: rule_acc,
        newton_max_parameter_gap: max_gap(&logistic.newton, &logistic.newton_central),
        newton_parameters: logistic.newton,
        fedavg_parameters: logistic.fed.parameters.into_values(),
        fedper_parameters: mlp
            .as_ref()
            .and_then(|m| m.fedper.as_ref())
            .map(|f| f.body.clone()),
        mlp_parameters: mlp.map(|m| m.fed),
        privacy,
        roc,
        silos,
        skipped,
    })
}

fn max_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// What each party's DP-SGD spends, and its settings (None without customer DP).
type PartyDp = (Option<Vec<PartyPrivacy>>, Vec<Option<DpSgdConfig>>);

/// Each party calibrates its own DP-SGD noise to the budget for its whole run.
fn calibrate_parties(
    parties: &[Party],
    options: &ClassificationOptions,
) -> Result<PartyDp, SimError> {
    let Some(budget) = options.customer_dp else {
        return Ok((None, vec![None; parties.len()]));
    };
    let mut spent = Vec::new();
    let mut party_dp = Vec::new();
    for p in parties {
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
        party_dp.push(Some(DpSgdConfig {
            clip_norm: budget.clip_norm,
            noise_multiplier: sigma,
        }));
    }
    Ok((Some(spent), party_dp))
}

/// The logistic regression, federated (FedAvg and exact Newton), per party, pooled.
struct Logistic {
    fed: InProcessRun,
    central: Vec<f64>,
    local: Vec<Vec<f64>>,
    newton: Vec<f64>,
    newton_central: Vec<f64>,
}

/// The MLP, federated, pooled and per party.
struct Mlp {
    kind: ClassifierKind,
    fed: Vec<f64>,
    central: Vec<f64>,
    local: Vec<Vec<f64>>,
    fedper: Option<FedPerRun>,
}

/// FedPer's outcome: the shared model, and each party's model with its own head.
struct FedPerRun {
    body: Vec<f64>,
    models: Vec<Vec<f64>>,
}

/// What every model of a run is trained from.
struct Trainer<'a> {
    parties: &'a [Party],
    party_dp: Vec<Option<DpSgdConfig>>,
    pooled_train: LabeledRows,
    options: &'a ClassificationOptions,
    dim: usize,
}

impl Trainer<'_> {
    fn tasks(&self, kind: ClassifierKind, private: bool) -> Vec<(String, Arc<dyn LocalTask>)> {
        self.classifiers(kind, private, false)
            .into_iter()
            .map(|(name, t)| (name, t as Arc<dyn LocalTask>))
            .collect()
    }

    /// Each party's classifier, with a head of its own when `own_head`.
    fn classifiers(
        &self,
        kind: ClassifierKind,
        private: bool,
        own_head: bool,
    ) -> Vec<(String, Arc<ClassifierTask>)> {
        self.parties
            .iter()
            .zip(&self.party_dp)
            .map(|(p, dp)| {
                let t = Arc::new(ClassifierTask {
                    name: "classify",
                    kind,
                    train: p.train.clone(),
                    test: p.test.clone(),
                    dp: if private { *dp } else { None },
                    own_head: if own_head {
                        OwnHead::on()
                    } else {
                        OwnHead::off()
                    },
                });
                (p.name.clone(), t)
            })
            .collect()
    }

    fn fedavg(&self, kind: ClassifierKind, learning_rate: f64) -> Result<InProcessRun, SimError> {
        self.fedavg_on(kind, learning_rate, &self.tasks(kind, true))
    }

    /// FedPer: FedAvg of the body while each party trains and keeps its own head.
    fn fedper(&self, kind: ClassifierKind, learning_rate: f64) -> Result<FedPerRun, SimError> {
        let parties = self.classifiers(kind, true, true);
        let stores: Vec<(String, Arc<dyn LocalTask>)> = parties
            .iter()
            .map(|(name, t)| (name.clone(), t.clone() as Arc<dyn LocalTask>))
            .collect();
        let body = self
            .fedavg_on(kind, learning_rate, &stores)?
            .parameters
            .into_values();
        let models = parties.iter().map(|(_, t)| t.model_for(&body)).collect();
        Ok(FedPerRun { body, models })
    }

    fn fedavg_on(
        &self,
        kind: ClassifierKind,
        learning_rate: f64,
        stores: &[(String, Arc<dyn LocalTask>)],
    ) -> Result<InProcessRun, SimError> {
        let o = self.options;
        let sampling = SamplingConfig {
            fraction: 1.0,
            min_stores: 1,
            seed: o.seed,
        };
        // The very strategy a job over agents builds from the same settings.
        let mut strategy = o
            .fedavg_settings(learning_rate)
            .strategy(sampling, o.l2)
            .map_err(err)?;
        let init = ModelParameters::from_values(
            kind.layout(self.dim),
            kind.initial_parameters(self.dim, o.seed),
        )
        .map_err(err)?;
        run_until(strategy.as_mut(), stores, init, o.rounds, &mut |_, _| false).map_err(err)
    }

    /// SGD on one party's (or the pooled) rows, one epoch per "round", reshuffled each
    /// time, as the federation does it.
    fn local_sgd(
        &self,
        kind: ClassifierKind,
        rows: &LabeledRows,
        learning_rate: f64,
        dp: Option<DpSgdConfig>,
    ) -> Result<Vec<f64>, SimError> {
        let o = self.options;
        let mut w = kind.initial_parameters(self.dim, o.seed);
        for epoch in 0..o.rounds {
            let s = LocalSgd {
                epochs: o.local_epochs,
                batch_size: o.batch_size,
                learning_rate,
                l2: o.l2,
                proximal_mu: 0.0,
                seed: o.seed.wrapping_add(epoch),
                min_steps: o.min_local_steps,
            };
            match dp {
                None => sgd(kind, rows, &mut w, &s),
                Some(dp) => dp_sgd(kind, rows, &mut w, &s, dp).map_err(err)?,
            }
        }
        Ok(w)
    }

    /// Every party's own model, with its own DP-SGD when it has one.
    fn each_party(
        &self,
        kind: ClassifierKind,
        learning_rate: f64,
    ) -> Result<Vec<Vec<f64>>, SimError> {
        self.parties
            .iter()
            .zip(&self.party_dp)
            .map(|(p, dp)| self.local_sgd(kind, &p.train, learning_rate, *dp))
            .collect()
    }

    fn newton(&self, stores: &[(String, Arc<dyn LocalTask>)]) -> Result<Vec<f64>, SimError> {
        let mut strategy = FedNewton::try_new(FedNewtonConfig {
            sampling: SamplingConfig::default(),
            // The same objective as the SGD: mean loss + l2/2 |w|^2, times the rows.
            l2: self.options.l2 * self.pooled_train.len() as f64,
            ..Default::default()
        })
        .map_err(err)?;
        let init = ModelParameters::zeros(ClassifierKind::Logistic.layout(self.dim));
        let rounds = self.options.newton_rounds;
        Ok(
            run_until(&mut strategy, stores, init, rounds, &mut |_, _| false)
                .map_err(err)?
                .parameters
                .into_values(),
        )
    }

    fn logistic(&self, on_event: &dyn Fn(ClassificationEvent)) -> Result<Logistic, SimError> {
        let (lr, rate) = (ClassifierKind::Logistic, self.options.learning_rate);
        on_event(ClassificationEvent::Stage("logistic regression: FedAvg"));
        let fed = self.fedavg(lr, rate)?;
        on_event(ClassificationEvent::Stage(
            "logistic regression: local and centralized",
        ));
        // The centralized yardstick trains without DP: it is what privacy costs against.
        let central = self.local_sgd(lr, &self.pooled_train, rate, None)?;
        let local = self.each_party(lr, rate)?;
        on_event(ClassificationEvent::Stage(
            "logistic regression: exact Newton",
        ));
        // The exact solver is a non-private reference (exact sums are not DP).
        let newton = self.newton(&self.tasks(lr, false))?;
        let pooled: Vec<(String, Arc<dyn LocalTask>)> = vec![(
            "pooled".into(),
            Arc::new(ClassifierTask {
                name: "classify",
                kind: lr,
                train: self.pooled_train.clone(),
                test: LabeledRows::new(self.dim),
                dp: None,
                own_head: OwnHead::off(),
            }),
        )];
        let newton_central = self.newton(&pooled)?;
        Ok(Logistic {
            fed,
            central,
            local,
            newton,
            newton_central,
        })
    }

    fn mlp(&self, on_event: &dyn Fn(ClassificationEvent)) -> Result<Option<Mlp>, SimError> {
        if self.options.mlp_hidden == 0 {
            return Ok(None);
        }
        let kind = ClassifierKind::Mlp {
            hidden: self.options.mlp_hidden,
        };
        let rate = self.options.mlp_learning_rate;
        on_event(ClassificationEvent::Stage(
            "MLP: FedAvg, local and centralized",
        ));
        let fedper = if self.options.personal_head {
            on_event(ClassificationEvent::Stage("MLP: FedPer"));
            Some(self.fedper(kind, rate)?)
        } else {
            None
        };
        Ok(Some(Mlp {
            kind,
            fed: self.fedavg(kind, rate)?.parameters.into_values(),
            central: self.local_sgd(kind, &self.pooled_train, rate, None)?,
            local: self.each_party(kind, rate)?,
            fedper,
        }))
    }
}

/// Every model's scores on every party's test rows, pooled per model: local,
/// FedAvg, centralized, Newton, centralized Newton, then the MLP's local, FedAvg and
/// centralized, the own intercepts (Newton, MLP), the MLP's own head, and FedPer.
#[derive(Default)]
struct Pooled<'a>([Vec<(Vec<f64>, &'a LabeledRows)>; 12]);

impl Pooled<'_> {
    fn scores(&self, k: usize) -> (Vec<f64>, Vec<bool>) {
        pooled_scores(&self.0[k])
    }

    fn auc(&self, k: usize) -> Option<f64> {
        let (s, y) = self.scores(k);
        roc_auc(&s, &y)
    }

    fn accuracy(&self, k: usize) -> Option<f64> {
        let (s, y) = self.scores(k);
        accuracy(&s, &y)
    }

    /// ROC curves of each party's own model, the FedAvg and exact federated logistic
    /// models, the centralized one, and the MLP's federated and centralized fits.
    fn curves(&self, has_mlp: bool) -> Vec<RocCurve> {
        let mut models = vec![
            (0, "logistic, each party alone"),
            (1, "logistic, FedAvg"),
            (3, "logistic, exact federated"),
            (2, "logistic, centralized"),
        ];
        if has_mlp {
            models.extend([(6, "MLP, FedAvg"), (7, "MLP, centralized")]);
        }
        models
            .into_iter()
            .filter_map(|(k, name)| {
                let (s, y) = self.scores(k);
                Some(RocCurve {
                    model: name.to_string(),
                    auc: roc_auc(&s, &y),
                    points: roc_curve(&s, &y, ROC_POINTS)?,
                })
            })
            .collect()
    }
}

/// Pull of a party's own intercept toward the shared one (a prior worth one example).
const OWN_INTERCEPT_PULL: f64 = 1.0;
/// The pull of a party's own MLP head toward the federated one, as at a store.
const OWN_HEAD_PULL: f64 = fedretail_models::analytics::OWN_HEAD_PULL;

fn evaluate_silos<'a>(
    parties: &'a [Party],
    logistic: &Logistic,
    mlp: Option<&Mlp>,
    rule_column: Option<usize>,
) -> (Vec<SiloReport>, Pooled<'a>) {
    let lr = ClassifierKind::Logistic;
    let mut silos = Vec::new();
    let mut pooled = Pooled::default();
    for (i, p) in parties.iter().enumerate() {
        let mut silo = silo_report(p, i, logistic, rule_column);
        let l = logistic;
        let fed = l.fed.parameters.values();
        let models = [
            &l.local[i][..],
            fed,
            &l.central,
            &l.newton,
            &l.newton_central,
        ];
        for (k, w) in models.into_iter().enumerate() {
            pooled.0[k].push((predict_proba(lr, w, &p.test), &p.test));
        }
        let own = with_own_intercept(lr, &l.newton, &p.train, OWN_INTERCEPT_PULL);
        pooled.0[8].push((predict_proba(lr, &own, &p.test), &p.test));
        if let Some(m) = mlp {
            silo.auc_mlp_local = metric(m.kind, &m.local[i], &p.test, "auc");
            silo.auc_mlp_federated = metric(m.kind, &m.fed, &p.test, "auc");
            silo.accuracy_mlp_federated = metric(m.kind, &m.fed, &p.test, "accuracy");
            for (k, w) in [&m.local[i], &m.fed, &m.central].into_iter().enumerate() {
                pooled.0[5 + k].push((predict_proba(m.kind, w, &p.test), &p.test));
            }
            let own = with_own_intercept(m.kind, &m.fed, &p.train, OWN_INTERCEPT_PULL);
            pooled.0[9].push((predict_proba(m.kind, &own, &p.test), &p.test));
            let head = with_own_head(m.kind, &m.fed, &p.train, OWN_HEAD_PULL);
            pooled.0[10].push((predict_proba(m.kind, &head, &p.test), &p.test));
            if let Some(own) = m.fedper.as_ref().map(|f| &f.models[i]) {
                silo.auc_mlp_fedper = metric(m.kind, own, &p.test, "auc");
                pooled.0[11].push((predict_proba(m.kind, own, &p.test), &p.test));
            }
        }
        silos.push(silo);
    }
    (silos, pooled)
}

fn metric(kind: ClassifierKind, w: &[f64], rows: &LabeledRows, name: &str) -> Option<f64> {
    classification_metrics(kind, w, rows).get(name).copied()
}

/// One party's figures for the logistic models (and the rule, where there is one).
fn silo_report(p: &Party, i: usize, l: &Logistic, rule_column: Option<usize>) -> SiloReport {
    let lr = ClassifierKind::Logistic;
    let fed = l.fed.parameters.values();
    let rule_scores: Option<Vec<f64>> = rule_column.map(|c| {
        (0..p.test.len())
            .map(|r| p.test.row(r).0.get(c).copied().unwrap_or(0.0))
            .collect()
    });
    let rule_hard = rule_scores.as_ref().map(|s| {
        s.iter()
            .map(|&v| f64::from(u8::from(v > 1.0)))
            .collect::<Vec<f64>>()
    });
    SiloReport {
        silo: p.name.clone(),
        group: p.group.clone(),
        train_rows: p.train.len(),
        test_rows: p.test.len(),
        test_positives: p.test.positives(),
        auc_local: metric(lr, &l.local[i], &p.test, "auc"),
        auc_federated: metric(lr, fed, &p.test, "auc"),
        auc_newton: metric(lr, &l.newton, &p.test, "auc"),
        auc_centralized: metric(lr, &l.central, &p.test, "auc"),
        auc_mlp_local: None,
        auc_mlp_federated: None,
        auc_mlp_fedper: None,
        auc_rule: rule_scores
            .as_ref()
            .and_then(|s| roc_auc(s, p.test.labels())),
        accuracy_local: metric(lr, &l.local[i], &p.test, "accuracy"),
        accuracy_federated: metric(lr, fed, &p.test, "accuracy"),
        accuracy_centralized: metric(lr, &l.central, &p.test, "accuracy"),
        accuracy_mlp_federated: None,
        accuracy_rule: rule_hard
            .as_ref()
            .and_then(|s| accuracy(s, p.test.labels())),
    }
}

/// The rule `feature > 1` over every party's test rows: (AUC, accuracy).
fn rule_baseline(parties: &[Party], rule_column: Option<usize>) -> (Option<f64>, Option<f64>) {
    let Some(c) = rule_column else {
        return (None, None);
    };
    let mut s = Vec::new();
    let mut y = Vec::new();
    for p in parties {
        for r in 0..p.test.len() {
            let (x, label) = p.test.row(r);
            s.push(x.get(c).copied().unwrap_or(0.0));
            y.push(label);
        }
    }
    let hard: Vec<f64> = s.iter().map(|&v| f64::from(u8::from(v > 1.0))).collect();
    (roc_auc(&s, &y), accuracy(&hard, &y))
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
pub fn run_credit<'a>(
    path: &'a Path,
    spec: &'a TabularSpec,
    options: &'a ClassificationOptions,
    on_event: &'a dyn Fn(ClassificationEvent),
) -> LocalBoxFuture<'a, Result<ClassificationReport, SimError>> {
    Box::pin(async move {
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
    })
}

/// Churn on a network directory: each store's customers as of `horizon_days` before
/// its last day, labelled by whether they bought again; an 80/20 split per store,
/// stratified by the label.
pub fn run_churn<'a>(
    root: &'a Path,
    window: &'a FeatureWindow,
    horizon_days: u32,
    options: &'a ClassificationOptions,
    on_event: &'a dyn Fn(ClassificationEvent),
) -> LocalBoxFuture<'a, Result<ClassificationReport, SimError>> {
    Box::pin(async move {
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
    })
}

/// A readable summary of a classification report.
fn fmt3(v: Option<f64>) -> String {
    v.map_or("  -  ".to_string(), |v| format!("{v:.3}"))
}

pub fn render_classification(r: &ClassificationReport) -> String {
    let mut s = render_pooled(r);
    if r.silos.len() <= 12 {
        s.push_str(&render_parties(&r.silos));
    } else {
        s.push_str(&render_groups(&r.silos));
    }
    for k in &r.skipped {
        s.push_str(&format!("  skipped {}: {}\n", k.store_id, k.reason));
    }
    s
}

/// The run's headline and the pooled figures of every model.
fn render_pooled(r: &ClassificationReport) -> String {
    let f = fmt3;
    let mut s = format!(
        "\n{} — {} parties, {} features, FedAvg {} rounds ({:.1} s, {} KiB up, {} KiB down)\n",
        r.task,
        r.silos.len(),
        r.feature_names.len(),
        r.rounds,
        r.wall_seconds,
        r.bytes_up / 1024,
        r.bytes_down / 1024
    );
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
    s.push_str(&format!(
        "  own intercepts        exact Newton {}   MLP {}   (each party refits only its bias)\n",
        f(r.pooled_auc_newton_own_intercept),
        f(r.pooled_auc_mlp_own_intercept)
    ));
    if r.pooled_auc_mlp_federated.is_some() {
        s.push_str(&format!(
            "  MLP (FedAvg)          local {}   federated {}   centralized {}\n",
            f(r.pooled_auc_mlp_local),
            f(r.pooled_auc_mlp_federated),
            f(r.pooled_auc_mlp_centralized)
        ));
        s.push_str(&format!(
            "  own head (FedPer)     MLP {}   (hidden layer shared, output layer refitted by each party)\n",
            f(r.pooled_auc_mlp_own_head)
        ));
        if r.pooled_auc_mlp_fedper.is_some() {
            s.push_str(&format!(
                "  FedPer, trained       MLP {}   (each party's head trained with the body every round, kept at the party)\n",
                f(r.pooled_auc_mlp_fedper)
            ));
        }
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
    s
}

/// One line per party, for a few parties.
fn render_parties(silos: &[SiloReport]) -> String {
    let f = fmt3;
    let mut s = String::from(
        "  party         train  test  pos   AUC local  federated  centralized   acc local  federated\n",
    );
    for x in silos {
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
    s
}

/// Means per group (business type), for many parties.
fn render_groups(silos: &[SiloReport]) -> String {
    let f = fmt3;
    let mut groups: std::collections::BTreeMap<&str, Vec<&SiloReport>> = Default::default();
    for x in silos {
        groups.entry(&x.group).or_default().push(x);
    }
    let mut s = String::from(
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
    s
}
