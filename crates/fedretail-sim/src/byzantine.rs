//! Poisoning, measured: a share of the stores lie in each round, and the model the
//! federation ends with is scored on the honest stores' held-out rows, under the plain
//! weighted mean and under each robust rule. Every run goes through the coordinator's
//! own round machine ([`run_guarded`]); the liars are [`LocalTask`] wrappers, so they
//! send what a modified agent could send and nothing more.

use crate::classification::{ClassificationOptions, Party};
use crate::inprocess::{run_guarded, Guards};
use crate::SimError;
use fedretail_core::{
    LocalWork, ModelLayout, ModelParameters, RobustRule, SamplingConfig, Strategy, TaskMetrics,
};
use fedretail_models::classify::predict_proba;
use fedretail_models::metrics::ranking::roc_auc;
use fedretail_models::{
    ClassifierKind, ClassifierTask, LabeledRows, LocalTask, OwnHead, TaskError,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

/// What a lying store does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Every store honest: the clean reference.
    None,
    /// Sends its honest update reversed and boosted five times.
    SignFlip,
    /// Sends its honest update fifty times over.
    Scaled,
    /// Trains honestly on its rows with every label flipped.
    LabelFlip,
    /// Claims the most rows the coordinator accepts, with its update reversed, so the
    /// weighted mean listens to it above everyone.
    HugeCount,
}

impl Attack {
    pub const ALL: [Attack; 5] = [
        Attack::None,
        Attack::SignFlip,
        Attack::Scaled,
        Attack::LabelFlip,
        Attack::HugeCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::SignFlip => "sign_flip",
            Attack::Scaled => "scaled",
            Attack::LabelFlip => "label_flip",
            Attack::HugeCount => "huge_count",
        }
    }
}

/// The harness's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ByzantineOptions {
    /// The rows are dealt at random into this many stores.
    pub stores: usize,
    /// Share of the stores that lie (rounded up).
    pub attacker_share: f64,
    pub model: ClassifierKind,
    /// Training settings of the FedAvg run (rounds, local steps, learning rate...).
    pub training: ClassificationOptions,
    /// The rules measured beside the plain mean.
    pub rules: Vec<RobustRule>,
}

impl Default for ByzantineOptions {
    fn default() -> Self {
        ByzantineOptions {
            stores: 10,
            attacker_share: 0.2,
            model: ClassifierKind::Logistic,
            training: ClassificationOptions::default(),
            rules: default_rules(),
        }
    }
}

/// The robust rules the harnesses measure beside the plain mean.
pub fn default_rules() -> Vec<RobustRule> {
    vec![
        RobustRule::Median,
        RobustRule::TrimmedMean { trim: 0.2 },
        RobustRule::NormBounded { factor: 1.0 },
    ]
}

/// One attack under one aggregation rule.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ByzantineCell {
    pub attack: Attack,
    /// `mean` or the robust rule's name.
    pub aggregation: String,
    /// Pooled AUC on the honest stores' held-out rows (None if training failed).
    pub pooled_auc: Option<f64>,
    /// AUC below the clean run with the plain mean.
    pub loss_against_clean: Option<f64>,
    /// Why training failed, if it did (a liar can make the plain mean diverge).
    pub failure: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ByzantineReport {
    pub options: ByzantineOptions,
    pub attackers: Vec<String>,
    pub clean_auc: Option<f64>,
    pub cells: Vec<ByzantineCell>,
    pub wall_seconds: f64,
}

/// [`run_byzantine`] on a tabular file's silos (as `analyze credit` reads them).
pub fn run_byzantine_on<'a>(
    path: &'a std::path::Path,
    spec: &'a fedretail_data::TabularSpec,
    options: &'a ByzantineOptions,
) -> fedretail_core::LocalBoxFuture<'a, Result<ByzantineReport, SimError>> {
    Box::pin(async move {
        let table = fedretail_data::load_tabular(path, spec)
            .await
            .map_err(|e| SimError::Options(e.to_string()))?;
        let parties = table
            .silos
            .into_iter()
            .filter(|s| s.skipped.is_none())
            .map(|s| Party {
                group: s.name.clone(),
                name: s.name,
                train: s.train,
                test: s.test,
            })
            .collect();
        run_byzantine(parties, options)
    })
}

/// Deal every party's rows into `options.stores` stores at random, pick the liars,
/// and train under every attack and aggregation rule.
pub fn run_byzantine(
    parties: Vec<Party>,
    options: &ByzantineOptions,
) -> Result<ByzantineReport, SimError> {
    let started = Instant::now();
    let stores = deal(parties, options.stores, options.training.seed)?;
    let liars = ((options.stores as f64) * options.attacker_share).ceil() as usize;
    if liars >= options.stores.div_ceil(2) {
        return Err(SimError::Options(format!(
            "{liars} of {} stores lying is no minority",
            options.stores
        )));
    }
    let honest_test = LabeledRows::concat(
        stores[0].train.dim(),
        stores[liars..].iter().map(|p| &p.test),
    );
    let aggregations: Vec<Option<RobustRule>> = std::iter::once(None)
        .chain(options.rules.iter().copied().map(Some))
        .collect();
    let mut cells = Vec::new();
    for attack in Attack::ALL {
        for rule in &aggregations {
            let outcome = train(&stores, liars, attack, *rule, options);
            let auc = outcome.as_ref().ok().and_then(|w| {
                roc_auc(
                    &predict_proba(options.model, w, &honest_test),
                    honest_test.labels(),
                )
            });
            cells.push(ByzantineCell {
                attack,
                aggregation: rule.map_or("mean", |r| r.name()).to_string(),
                pooled_auc: auc,
                loss_against_clean: None,
                failure: outcome.err(),
            });
        }
    }
    let clean_auc = cells.first().and_then(|c| c.pooled_auc);
    for c in &mut cells {
        c.loss_against_clean = clean_auc.zip(c.pooled_auc).map(|(a, b)| a - b);
    }
    Ok(ByzantineReport {
        options: options.clone(),
        attackers: stores[..liars].iter().map(|p| p.name.clone()).collect(),
        clean_auc,
        cells,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The parties' rows pooled and dealt into `n` stores at random (train and test apart).
fn deal(parties: Vec<Party>, n: usize, seed: u64) -> Result<Vec<Party>, SimError> {
    let dim = parties
        .first()
        .map(|p| p.train.dim())
        .ok_or_else(|| SimError::Options("no parties to deal".into()))?;
    if n < 2 {
        return Err(SimError::Options(format!("stores must be >= 2, got {n}")));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stores: Vec<Party> = (0..n)
        .map(|i| Party {
            name: format!("store-{:02}", i + 1),
            group: "dealt".into(),
            train: LabeledRows::new(dim),
            test: LabeledRows::new(dim),
        })
        .collect();
    for split in [false, true] {
        let mut rows: Vec<(&[f64], bool)> = Vec::new();
        for p in &parties {
            let part = if split { &p.test } else { &p.train };
            rows.extend((0..part.len()).map(|i| part.row(i)));
        }
        rows.shuffle(&mut rng);
        for (i, (x, y)) in rows.into_iter().enumerate() {
            let s = &mut stores[i % n];
            let part = if split { &mut s.test } else { &mut s.train };
            part.push(x, y);
        }
    }
    Ok(stores)
}

/// FedAvg over the stores with the first `liars` of them running `attack`.
fn train(
    stores: &[Party],
    liars: usize,
    attack: Attack,
    rule: Option<RobustRule>,
    options: &ByzantineOptions,
) -> Result<Vec<f64>, String> {
    let o = &options.training;
    let kind = options.model;
    let tasks: Vec<(String, Arc<dyn LocalTask>)> = stores
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut train = p.train.clone();
            if i < liars && attack == Attack::LabelFlip {
                train = flipped(&train);
            }
            let honest: Arc<dyn LocalTask> = Arc::new(ClassifierTask {
                name: "classify",
                kind,
                train,
                test: p.test.clone(),
                dp: None,
                own_head: OwnHead::off(),
            });
            (p.name.clone(), honest)
        })
        .collect();
    let sampling = SamplingConfig {
        fraction: 1.0,
        min_stores: 1,
        seed: o.seed,
    };
    let rate = match kind {
        ClassifierKind::Logistic => o.learning_rate,
        ClassifierKind::Mlp { .. } => o.mlp_learning_rate,
    };
    let mut strategy = o
        .fedavg_settings(rate)
        .strategy(sampling, o.l2)
        .map_err(|e| e.to_string())?;
    let init = ModelParameters::from_values(
        kind.layout(stores[0].train.dim()),
        kind.initial_parameters(stores[0].train.dim(), o.seed),
    )
    .map_err(|e| e.to_string())?;
    let liars = Liars {
        count: liars,
        attack,
        rule,
    };
    liars.train(tasks, strategy.as_mut(), init, o.rounds)
}

/// Who lies in a run, how, and the rule the coordinator aggregates with.
pub(crate) struct Liars {
    /// The first `count` stores lie.
    pub count: usize,
    pub attack: Attack,
    pub rule: Option<RobustRule>,
}

impl Liars {
    /// Wraps the liars' honest tasks (already changed by a data attack) in [`Liar`]s
    /// and trains through the coordinator's round machine; the final model.
    pub fn train(
        &self,
        tasks: Vec<(String, Arc<dyn LocalTask>)>,
        strategy: &mut dyn Strategy,
        init: ModelParameters,
        rounds: u64,
    ) -> Result<Vec<f64>, String> {
        let tasks: Vec<(String, Arc<dyn LocalTask>)> = tasks
            .into_iter()
            .enumerate()
            .map(|(i, (name, inner))| {
                if i >= self.count || self.attack == Attack::None {
                    return (name, inner);
                }
                let liar = Liar {
                    inner,
                    attack: self.attack,
                };
                (name, Arc::new(liar) as Arc<dyn LocalTask>)
            })
            .collect();
        let guards = Guards {
            privacy: None,
            robust: self.rule,
        };
        run_guarded(strategy, &tasks, init, rounds, guards, &mut |_, _| false)
            .map(|run| run.parameters.into_values())
            .map_err(|e| e.to_string())
    }
}

fn flipped(rows: &LabeledRows) -> LabeledRows {
    let mut out = LabeledRows::new(rows.dim());
    for i in 0..rows.len() {
        let (x, y) = rows.row(i);
        out.push(x, !y);
    }
    out
}

/// A store that lies: its honest task, with what it sends changed.
struct Liar {
    inner: Arc<dyn LocalTask>,
    attack: Attack,
}

impl LocalTask for Liar {
    fn task_name(&self) -> &'static str {
        self.inner.task_name()
    }

    fn layout(&self) -> ModelLayout {
        self.inner.layout()
    }

    fn num_train_examples(&self) -> u64 {
        match self.attack {
            Attack::HugeCount => fedretail_coordinator::DEFAULT_MAX_STORE_ROWS,
            _ => self.inner.num_train_examples(),
        }
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        let mut u = self.inner.compute_update(global, work)?;
        let factor = match self.attack {
            Attack::SignFlip => -5.0,
            Attack::Scaled => 50.0,
            Attack::HugeCount => -1.0,
            Attack::None | Attack::LabelFlip => 1.0,
        };
        u.iter_mut().for_each(|v| *v *= factor);
        Ok(u)
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        self.inner.evaluate(global)
    }
}

/// The table: AUC per attack (rows) and aggregation (columns), with the loss against
/// the clean run.
pub fn render_byzantine(r: &ByzantineReport) -> String {
    let mut s = String::new();
    let o = &r.options;
    let _ = writeln!(
        s,
        "Poisoning: {} of {} stores lie every round ({}); {} FedAvg, {} rounds; pooled AUC on the honest stores' held-out rows, and (in brackets) below the clean run with the plain mean ({}):",
        r.attackers.len(),
        o.stores,
        r.attackers.join(", "),
        o.model.name(),
        o.training.rounds,
        r.clean_auc.map_or("-".into(), |a| format!("{a:.3}")),
    );
    let names: Vec<String> = std::iter::once("mean".to_string())
        .chain(o.rules.iter().map(|r| r.name().to_string()))
        .collect();
    let _ = write!(s, "\n  {:<12}", "attack");
    for n in &names {
        let _ = write!(s, " {n:>22}");
    }
    s.push('\n');
    for attack in Attack::ALL {
        let _ = write!(s, "  {:<12}", attack.name());
        for n in &names {
            let cell = r
                .cells
                .iter()
                .find(|c| c.attack == attack && &c.aggregation == n);
            let text = match cell.map(|c| (c.pooled_auc, c.loss_against_clean)) {
                Some((Some(a), Some(l))) => format!("{a:.3} ({l:+.3})"),
                Some((Some(a), None)) => format!("{a:.3}"),
                _ => "failed".into(),
            };
            let _ = write!(s, " {text:>22}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n  sign_flip: the honest update reversed x5; scaled: x50; label_flip: trained on flipped labels; huge_count: claims the coordinator's row cap ({}) and reverses its update. median and trimmed_mean give each store one vote; norm_bounded caps every update at the round's median norm but still weighs by claimed rows. wall time {:.1} s",
        fedretail_coordinator::DEFAULT_MAX_STORE_ROWS,
        r.wall_seconds
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// Two informative features; the label follows their sum.
    fn party(name: &str, rows: usize, rng: &mut ChaCha8Rng) -> Party {
        let mut p = Party {
            name: name.into(),
            group: name.into(),
            train: LabeledRows::new(2),
            test: LabeledRows::new(2),
        };
        for i in 0..rows {
            let x = [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)];
            let y = x[0] + x[1] + rng.random_range(-0.5..0.5) > 0.0;
            let part = if i % 5 == 0 {
                &mut p.test
            } else {
                &mut p.train
            };
            part.push(&x, y);
        }
        p
    }

    #[test]
    fn liars_wreck_the_mean_and_the_median_holds() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let parties = (0..4)
            .map(|i| party(&format!("p{i}"), 300, &mut rng))
            .collect();
        let options = ByzantineOptions {
            training: ClassificationOptions {
                rounds: 10,
                ..Default::default()
            },
            rules: vec![RobustRule::Median],
            ..Default::default()
        };
        let r = run_byzantine(parties, &options).unwrap();
        assert_eq!(r.attackers.len(), 2, "20 % of 10 stores");
        let auc = |a: Attack, g: &str| {
            r.cells
                .iter()
                .find(|c| c.attack == a && c.aggregation == g)
                .and_then(|c| c.pooled_auc)
                .unwrap_or(0.0)
        };
        let clean = r.clean_auc.unwrap();
        assert!(clean > 0.9, "{clean}");
        assert!(
            auc(Attack::HugeCount, "mean") < 0.5,
            "{}",
            render_byzantine(&r)
        );
        for a in Attack::ALL {
            assert!(auc(a, "median") > clean - 0.02, "{}", render_byzantine(&r));
        }
    }
}
