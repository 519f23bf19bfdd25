//! Binary classifiers for churn and credit scoring: logistic regression (with exact
//! second-order statistics, so federated Newton applies) and a one-hidden-layer MLP
//! (FedAvg only). Both train by the same mini-batch SGD so that local-only,
//! centralized and federated runs differ only in whose rows they see.

use crate::metrics::ranking::{accuracy, roc_auc};
use crate::task::{LocalTask, TaskError, TaskMetrics};
use fedretail_core::{newton_statistics_len, LocalSgd, LocalWork, ModelLayout};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows of features with a binary label, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabeledRows {
    dim: usize,
    x: Vec<f64>,
    y: Vec<bool>,
}

impl LabeledRows {
    pub fn new(dim: usize) -> Self {
        LabeledRows {
            dim,
            x: Vec::new(),
            y: Vec::new(),
        }
    }

    pub fn push(&mut self, x: &[f64], y: bool) {
        debug_assert_eq!(x.len(), self.dim);
        self.x.extend_from_slice(x);
        self.y.push(y);
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> (&[f64], bool) {
        (&self.x[i * self.dim..(i + 1) * self.dim], self.y[i])
    }

    pub fn labels(&self) -> &[bool] {
        &self.y
    }

    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&y| y).count()
    }

    /// All rows of several parts, in order (the centralized reference's pooled data).
    pub fn concat<'a>(dim: usize, parts: impl IntoIterator<Item = &'a LabeledRows>) -> Self {
        let mut out = LabeledRows::new(dim);
        for p in parts {
            out.x.extend_from_slice(&p.x);
            out.y.extend_from_slice(&p.y);
        }
        out
    }
}

pub use fedretail_core::task::ClassifierKind;

#[inline]
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// A classifier's parameters viewed by kind; scratch space for the hidden layer.
struct Net<'a> {
    kind: ClassifierKind,
    dim: usize,
    w: &'a [f64],
}

impl Net<'_> {
    /// P(y = 1 | x); fills `hidden` with the hidden activations for the MLP.
    #[inline]
    fn forward(&self, x: &[f64], hidden: &mut [f64]) -> f64 {
        sigmoid(self.logit(x, hidden))
    }

    /// The log-odds of y = 1 (the output bias is its last term).
    #[inline]
    fn logit(&self, x: &[f64], hidden: &mut [f64]) -> f64 {
        match self.kind {
            ClassifierKind::Logistic => {
                x.iter().zip(self.w).map(|(a, b)| a * b).sum::<f64>() + self.w[self.dim]
            }
            ClassifierKind::Mlp { hidden: h } => {
                let d = self.dim;
                let (wh, rest) = self.w.split_at(h * d);
                let (bh, rest) = rest.split_at(h);
                let (wo, bo) = rest.split_at(h);
                let mut z = bo[0];
                for k in 0..h {
                    let a = (wh[k * d..(k + 1) * d]
                        .iter()
                        .zip(x)
                        .map(|(p, q)| p * q)
                        .sum::<f64>()
                        + bh[k])
                        .tanh();
                    hidden[k] = a;
                    z += wo[k] * a;
                }
                z
            }
        }
    }

    /// Adds d(log loss)/d(params) for one row into `grad`.
    #[inline]
    fn add_gradient(&self, x: &[f64], y: bool, hidden: &mut [f64], grad: &mut [f64]) {
        let p = self.forward(x, hidden);
        let r = p - if y { 1.0 } else { 0.0 };
        match self.kind {
            ClassifierKind::Logistic => {
                for (g, xi) in grad.iter_mut().zip(x) {
                    *g += r * xi;
                }
                grad[self.dim] += r;
            }
            ClassifierKind::Mlp { hidden: h } => {
                let d = self.dim;
                let wo = &self.w[h * d + h..h * d + 2 * h];
                let (gh, rest) = grad.split_at_mut(h * d);
                let (gbh, rest) = rest.split_at_mut(h);
                let (gwo, gbo) = rest.split_at_mut(h);
                gbo[0] += r;
                for k in 0..h {
                    gwo[k] += r * hidden[k];
                    let delta = r * wo[k] * (1.0 - hidden[k] * hidden[k]);
                    gbh[k] += delta;
                    for (g, xi) in gh[k * d..(k + 1) * d].iter_mut().zip(x) {
                        *g += delta * xi;
                    }
                }
            }
        }
    }
}

/// The log-loss gradient of one example: what a store's update on a single record
/// carries, and where gradient-inversion attacks start.
pub fn example_gradient(kind: ClassifierKind, w: &[f64], x: &[f64], y: bool) -> Vec<f64> {
    let net = Net {
        kind,
        dim: x.len(),
        w,
    };
    let mut hidden = vec![0.0; hidden_len(kind)];
    let mut grad = vec![0.0; w.len()];
    net.add_gradient(x, y, &mut hidden, &mut grad);
    grad
}

fn hidden_len(kind: ClassifierKind) -> usize {
    match kind {
        ClassifierKind::Logistic => 0,
        ClassifierKind::Mlp { hidden } => hidden,
    }
}

/// P(y = 1) for every row.
pub fn predict_proba(kind: ClassifierKind, w: &[f64], rows: &LabeledRows) -> Vec<f64> {
    let net = Net {
        kind,
        dim: rows.dim(),
        w,
    };
    let mut hidden = vec![0.0; hidden_len(kind)];
    (0..rows.len())
        .map(|i| net.forward(rows.row(i).0, &mut hidden))
        .collect()
}

/// The model with only its output bias refitted on `rows`: the party's own base rate
/// on top of everything shared, the lightest personalization (a per-party intercept).
/// A ridge of `pull` toward the shared bias keeps a party with one class finite.
pub fn with_own_intercept(
    kind: ClassifierKind,
    w: &[f64],
    rows: &LabeledRows,
    pull: f64,
) -> Vec<f64> {
    let mut out = w.to_vec();
    let Some(&shared) = w.last() else {
        return out;
    };
    let net = Net {
        kind,
        dim: rows.dim(),
        w,
    };
    let mut hidden = vec![0.0; hidden_len(kind)];
    // Log-odds without the bias: fixed while the bias moves.
    let base: Vec<f64> = (0..rows.len())
        .map(|i| net.logit(rows.row(i).0, &mut hidden) - shared)
        .collect();
    let mut b = shared;
    for _ in 0..50 {
        let (mut g, mut h) = (pull * (b - shared), pull);
        for (z, &y) in base.iter().zip(rows.labels()) {
            let p = sigmoid(z + b);
            g += p - f64::from(u8::from(y));
            h += p * (1.0 - p);
        }
        let step = (g / h.max(1e-12)).clamp(-5.0, 5.0);
        b -= step;
        if step.abs() < 1e-10 {
            break;
        }
    }
    if let Some(last) = out.last_mut() {
        *last = b;
    }
    out
}

/// FedPer's split (Arivazhagan et al. 2019) applied at the store: the shared body
/// (the MLP's hidden layer) kept as federated, the head (its output layer: weights and
/// bias) refitted on the party's own training rows, pulled toward the federated head
/// with strength `pull` (a prior, so a small party stays near it). Exact: with the body
/// fixed the head is a logistic regression on the hidden activations, solved by Newton.
/// For a logistic model the head is the whole model. Returns the personal model.
pub fn with_own_head(kind: ClassifierKind, w: &[f64], rows: &LabeledRows, pull: f64) -> Vec<f64> {
    let d = rows.dim();
    let (start, width) = match kind {
        ClassifierKind::Logistic => (0, d + 1),
        ClassifierKind::Mlp { hidden } => (hidden * d + hidden, hidden + 1),
    };
    if w.len() != start + width || rows.is_empty() {
        return w.to_vec();
    }
    let net = Net { kind, dim: d, w };
    let mut hidden = vec![0.0; hidden_len(kind)];
    // Each row's head inputs: the features (logistic) or hidden activations, then 1.
    let inputs: Vec<Vec<f64>> = (0..rows.len())
        .map(|i| {
            let x = rows.row(i).0;
            let mut z = match kind {
                ClassifierKind::Logistic => x.to_vec(),
                ClassifierKind::Mlp { .. } => {
                    net.logit(x, &mut hidden);
                    hidden.clone()
                }
            };
            z.push(1.0);
            z
        })
        .collect();
    let prior = &w[start..];
    let head = fit_head(&inputs, rows.labels(), prior, pull);
    let mut out = w.to_vec();
    out[start..].copy_from_slice(&head);
    out
}

/// Newton on `sum log loss(y, z . v) + pull/2 |v - prior|^2`, from the prior.
fn fit_head(inputs: &[Vec<f64>], labels: &[bool], prior: &[f64], pull: f64) -> Vec<f64> {
    let k = prior.len();
    let mut v = nalgebra::DVector::from_column_slice(prior);
    for _ in 0..30 {
        let mut g = (&v - nalgebra::DVector::from_column_slice(prior)) * pull;
        let mut h = nalgebra::DMatrix::<f64>::identity(k, k) * pull.max(1e-6);
        for (z, &y) in inputs.iter().zip(labels) {
            let z = nalgebra::DVector::from_column_slice(z);
            let p = sigmoid(z.dot(&v));
            g += &z * (p - f64::from(u8::from(y)));
            h += &z * z.transpose() * (p * (1.0 - p));
        }
        let Some(step) = h.cholesky().map(|c| c.solve(&g)) else {
            break;
        };
        let step = step.map(|s| s.clamp(-5.0, 5.0));
        v -= &step;
        if step.amax() < 1e-10 {
            break;
        }
    }
    v.iter().copied().collect()
}

/// Mini-batch SGD on the mean log loss plus `l2/2 |w|^2` on regularised segments (and
/// FedProx's `mu/2 |w - w_start|^2`), in place. The shuffle depends only on the seed.
pub fn sgd(kind: ClassifierKind, rows: &LabeledRows, w: &mut [f64], s: &LocalSgd) {
    let n = rows.len();
    if n == 0 {
        return;
    }
    let mask = kind.layout(rows.dim()).regularization_mask();
    let anchor = w.to_vec();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut grad = vec![0.0; w.len()];
    let mut hidden = vec![0.0; hidden_len(kind)];
    for _ in 0..s.epochs_for(n) {
        order.shuffle(&mut rng);
        for batch in order.chunks(s.batch_size.max(1) as usize) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            {
                let net = Net {
                    kind,
                    dim: rows.dim(),
                    w,
                };
                for &i in batch {
                    let (x, y) = rows.row(i);
                    net.add_gradient(x, y, &mut hidden, &mut grad);
                }
            }
            s.step(w, &grad, 1.0 / batch.len() as f64, &mask, &anchor);
        }
    }
}

/// Customer-level differential privacy at the store: DP-SGD (Abadi et al. 2016) with
/// Poisson sampling at rate `batch_size / rows`, each example's gradient clipped to
/// `clip_norm`, and Gaussian noise of std `noise_multiplier * clip_norm` on every
/// step's sum. The store's accountant turns (rate, noise multiplier, steps) into ε.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DpSgdConfig {
    pub clip_norm: f64,
    pub noise_multiplier: f64,
}

/// Sampling rate and steps of [`dp_sgd`] over `epochs` on `rows` examples: what the
/// accountant needs.
pub fn dp_sgd_schedule(rows: usize, batch_size: u32, epochs: u32) -> (f64, u64) {
    let b = f64::from(batch_size.max(1));
    let n = rows.max(1) as f64;
    let q = (b / n).min(1.0);
    let steps_per_epoch = (n / b).ceil() as u64;
    (q, steps_per_epoch * u64::from(epochs))
}

/// DP-SGD on the mean log loss plus `l2/2 |w|^2` (and FedProx's term, which reads no
/// data), in place; see [`DpSgdConfig`].
pub fn dp_sgd(
    kind: ClassifierKind,
    rows: &LabeledRows,
    w: &mut [f64],
    s: &LocalSgd,
    dp: DpSgdConfig,
) -> Result<(), TaskError> {
    let n = rows.len();
    if n == 0 {
        return Ok(());
    }
    if !(dp.clip_norm > 0.0 && dp.clip_norm.is_finite()) {
        return Err(TaskError::InvalidPrivacy(format!(
            "clip norm must be positive and finite, got {}",
            dp.clip_norm
        )));
    }
    let (q, steps) = dp_sgd_schedule(n, s.batch_size, s.epochs);
    // Normalise by the expected batch, not the drawn one: the drawn size is private.
    let expected = q * n as f64;
    let mask = kind.layout(rows.dim()).regularization_mask();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let anchor = w.to_vec();
    let noise = rand_distr::Normal::new(0.0, dp.noise_multiplier * dp.clip_norm).map_err(|_| {
        TaskError::InvalidPrivacy(format!(
            "noise multiplier must be non-negative and finite, got {}",
            dp.noise_multiplier
        ))
    })?;
    let mut sum = vec![0.0; w.len()];
    let mut one = vec![0.0; w.len()];
    let mut hidden = vec![0.0; hidden_len(kind)];
    for _ in 0..steps {
        sum.iter_mut().for_each(|g| *g = 0.0);
        {
            let net = Net {
                kind,
                dim: rows.dim(),
                w,
            };
            for i in 0..n {
                if rng.random::<f64>() >= q {
                    continue;
                }
                one.iter_mut().for_each(|g| *g = 0.0);
                let (x, y) = rows.row(i);
                net.add_gradient(x, y, &mut hidden, &mut one);
                let norm = one.iter().map(|g| g * g).sum::<f64>().sqrt();
                let scale = if norm > dp.clip_norm {
                    dp.clip_norm / norm
                } else {
                    1.0
                };
                for (s, g) in sum.iter_mut().zip(&one) {
                    *s += scale * g;
                }
            }
        }
        for g in sum.iter_mut() {
            *g += rng.sample(noise);
        }
        s.step(w, &sum, 1.0 / expected, &mask, &anchor);
    }
    Ok(())
}

/// Gradient and Hessian of the summed logistic log loss at `w`, packed as
/// `[g, upper(H)]`, added into `out`.
pub fn add_logistic_second_order_statistics(rows: &LabeledRows, w: &[f64], out: &mut [f64]) {
    let d = rows.dim() + 1;
    let (g, h) = out.split_at_mut(d);
    let mut xb = vec![0.0; d];
    for i in 0..rows.len() {
        let (x, y) = rows.row(i);
        xb[..d - 1].copy_from_slice(x);
        xb[d - 1] = 1.0;
        let z: f64 = xb.iter().zip(w).map(|(a, b)| a * b).sum();
        let p = sigmoid(z);
        let r = p - if y { 1.0 } else { 0.0 };
        let s = p * (1.0 - p);
        let mut k = 0;
        for a in 0..d {
            g[a] += r * xb[a];
            let sa = s * xb[a];
            for xj in &xb[a..] {
                h[k] += sa * xj;
                k += 1;
            }
        }
    }
}

/// Metrics of `w` on `rows`: ROC AUC (when both classes are present), accuracy, mean
/// log loss, and the row counts.
pub fn classification_metrics(kind: ClassifierKind, w: &[f64], rows: &LabeledRows) -> TaskMetrics {
    let p = predict_proba(kind, w, rows);
    let mut m = TaskMetrics::new();
    m.insert("rows".into(), rows.len() as f64);
    m.insert("positives".into(), rows.positives() as f64);
    if let Some(auc) = roc_auc(&p, rows.labels()) {
        m.insert("auc".into(), auc);
    }
    if let Some(acc) = accuracy(&p, rows.labels()) {
        m.insert("accuracy".into(), acc);
    }
    if let Some(ll) = mean_log_loss(&p, rows.labels()) {
        m.insert("log_loss".into(), ll);
    }
    m
}

/// Mean log loss of probabilities `p` for `labels`; None without rows.
pub fn mean_log_loss(p: &[f64], labels: &[bool]) -> Option<f64> {
    if p.is_empty() {
        return None;
    }
    let sum: f64 = p
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            if y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    Some(sum / p.len() as f64)
}

/// Hold out `test_fraction` of each class, seeded.
pub fn stratified_split(
    rows: &LabeledRows,
    test_fraction: f64,
    seed: u64,
) -> (LabeledRows, LabeledRows) {
    let mut train = LabeledRows::new(rows.dim());
    let mut test = LabeledRows::new(rows.dim());
    for class in [true, false] {
        let mut idx: Vec<usize> = (0..rows.len())
            .filter(|&i| rows.row(i).1 == class)
            .collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(
            seed.wrapping_mul(2).wrapping_add(u64::from(class)),
        ));
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        for (j, &i) in idx.iter().enumerate() {
            let (x, y) = rows.row(i);
            if j < n_test {
                test.push(x, y);
            } else {
                train.push(x, y);
            }
        }
    }
    (train, test)
}

/// FedPer (Arivazhagan et al. 2019): the store keeps the MLP's output layer (its head)
/// out of averaging. It trains the shared body with its own head, sends the body's
/// delta only, and keeps its head from round to round of the job, in memory.
#[derive(Debug, Default)]
pub struct OwnHead {
    enabled: bool,
    head: std::sync::Mutex<Option<Vec<f64>>>,
}

impl OwnHead {
    /// The whole model is averaged (FedAvg).
    pub fn off() -> Self {
        OwnHead::default()
    }

    /// The head stays at the store.
    pub fn on() -> Self {
        OwnHead {
            enabled: true,
            ..OwnHead::default()
        }
    }

    pub fn is_on(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<f64>>> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clone for OwnHead {
    fn clone(&self) -> Self {
        OwnHead {
            enabled: self.enabled,
            head: std::sync::Mutex::new(self.lock().clone()),
        }
    }
}

/// Where the head starts in a `kind` model over `dim` inputs: the MLP's output layer.
fn head_start(kind: ClassifierKind, dim: usize) -> Option<usize> {
    match kind {
        ClassifierKind::Logistic => None,
        ClassifierKind::Mlp { hidden } => Some(hidden * dim + hidden),
    }
}

/// A store's (or lender's) classification task: its own train and test rows.
#[derive(Debug, Clone)]
pub struct ClassifierTask {
    pub name: &'static str,
    pub kind: ClassifierKind,
    pub train: LabeledRows,
    pub test: LabeledRows,
    /// Customer-level DP for local epochs; the store's own choice.
    pub dp: Option<DpSgdConfig>,
    /// FedPer: the MLP's head stays at the store.
    pub own_head: OwnHead,
}

impl ClassifierTask {
    /// The model this store uses under the network's `global` one: the global model,
    /// with the store's own head once it has one (FedPer).
    pub fn model_for(&self, global: &[f64]) -> Vec<f64> {
        let mut w = global.to_vec();
        if let (Some(start), Some(head)) = (
            head_start(self.kind, self.train.dim()),
            self.own_head.lock().as_ref(),
        ) {
            if w.len() == start + head.len() {
                w[start..].copy_from_slice(head);
            }
        }
        w
    }

    /// Local epochs from `global` (with the store's own head under FedPer); the delta
    /// to send, whose head part is zero under FedPer (the trained head stays here).
    fn local_epochs(&self, global: &[f64], s: &LocalSgd) -> Result<Vec<f64>, TaskError> {
        let start = self.model_for(global);
        let mut w = start.clone();
        match self.dp {
            None => sgd(self.kind, &self.train, &mut w, s),
            Some(dp) => dp_sgd(self.kind, &self.train, &mut w, s, dp)?,
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(TaskError::Diverged(format!(
                "parameter {i} is not finite; lower the learning rate"
            )));
        }
        let mut delta: Vec<f64> = w.iter().zip(&start).map(|(a, b)| a - b).collect();
        if let Some(h) = head_start(self.kind, self.train.dim()).filter(|_| self.own_head.is_on()) {
            *self.own_head.lock() = Some(w[h..].to_vec());
            delta[h..].iter_mut().for_each(|d| *d = 0.0);
        }
        Ok(delta)
    }

    fn check_len(&self, global: &[f64]) -> Result<(), TaskError> {
        let expected = self.kind.layout(self.train.dim()).len();
        if global.len() != expected {
            return Err(TaskError::WrongParameterCount {
                task: self.name,
                expected,
                got: global.len(),
            });
        }
        Ok(())
    }
}

impl LocalTask for ClassifierTask {
    fn task_name(&self) -> &'static str {
        self.name
    }

    fn train_loss(&self, global: &[f64]) -> Option<f64> {
        self.check_len(global).ok()?;
        let p = predict_proba(self.kind, &self.model_for(global), &self.train);
        mean_log_loss(&p, self.train.labels()).filter(|l| l.is_finite())
    }

    fn layout(&self) -> ModelLayout {
        self.kind.layout(self.train.dim())
    }

    fn num_train_examples(&self) -> u64 {
        self.train.len() as u64
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        self.check_len(global)?;
        if self.train.is_empty() {
            return Err(TaskError::NoTrainingRows(self.name));
        }
        match (work, self.kind) {
            (LocalWork::LocalEpochs(s), _) => self.local_epochs(global, s),
            (_, _) if self.own_head.is_on() => Err(TaskError::UnsupportedWork {
                task: self.name,
                work: "anything but local epochs with a head kept at the store (FedPer)",
            }),
            (LocalWork::SecondOrderStatistics, _) if self.dp.is_some() => {
                Err(TaskError::UnsupportedWork {
                    task: self.name,
                    work: "second-order statistics under DP-SGD (exact sums are not private)",
                })
            }
            (LocalWork::SecondOrderStatistics, ClassifierKind::Logistic) => {
                let mut out = vec![0.0; newton_statistics_len(global.len())];
                add_logistic_second_order_statistics(&self.train, global, &mut out);
                Ok(out)
            }
            (LocalWork::SecondOrderStatistics, ClassifierKind::Mlp { .. }) => {
                Err(TaskError::UnsupportedWork {
                    task: self.name,
                    work: "second-order statistics with an MLP (use FedAvg)",
                })
            }
            (
                LocalWork::ClusterStatistics
                | LocalWork::ClusteredSecondOrderStatistics
                | LocalWork::ClusteredLocalEpochs(_),
                _,
            ) => Err(TaskError::UnsupportedWork {
                task: self.name,
                work: "cluster statistics (a grouped model wraps this task)",
            }),
        }
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        self.check_len(global)?;
        Ok(classification_metrics(
            self.kind,
            &self.model_for(global),
            &self.test,
        ))
    }

    fn kept_state(&self) -> Option<Vec<f64>> {
        self.own_head.lock().clone()
    }

    fn restore_state(&self, state: &[f64]) -> Result<(), TaskError> {
        let refuse = |reason: String| TaskError::KeptState {
            task: self.name,
            reason,
        };
        let dim = self.train.dim();
        let Some(start) = head_start(self.kind, dim).filter(|_| self.own_head.is_on()) else {
            return Err(refuse("it keeps no head of its own (FedPer is off)".into()));
        };
        let expected = self.kind.layout(dim).len() - start;
        if state.len() != expected {
            return Err(refuse(format!(
                "a head of {} values, where this model's has {expected}",
                state.len()
            )));
        }
        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(refuse(format!("value {i} of the head is not finite")));
        }
        *self.own_head.lock() = Some(state.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, seed: u64) -> LabeledRows {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rows = LabeledRows::new(2);
        for _ in 0..n {
            let x = [rng.random_range(-2.0..2.0), rng.random_range(-2.0..2.0)];
            let p = sigmoid(1.5 * x[0] - x[1] + 0.3);
            rows.push(&x, rng.random::<f64>() < p);
        }
        rows
    }

    fn loss(kind: ClassifierKind, w: &[f64], rows: &LabeledRows) -> f64 {
        predict_proba(kind, w, rows)
            .iter()
            .zip(rows.labels())
            .map(|(p, &y)| if y { -p.ln() } else { -(1.0 - p).ln() })
            .sum()
    }

    #[test]
    fn an_own_intercept_matches_the_party_base_rate_and_moves_nothing_else() {
        // A party whose positives are far more common than the shared model expects.
        let mut rows = LabeledRows::new(2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..400 {
            let x = [rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0)];
            rows.push(&x, rng.random::<f64>() < sigmoid(0.5 * x[0] + 1.5));
        }
        for kind in [ClassifierKind::Logistic, ClassifierKind::Mlp { hidden: 3 }] {
            let shared = kind.initial_parameters(2, 5);
            let own = with_own_intercept(kind, &shared, &rows, 1e-9);
            let n = shared.len();
            assert_eq!(own[..n - 1], shared[..n - 1]);
            // At the optimum the mean prediction equals the base rate (score equation).
            let p = predict_proba(kind, &own, &rows);
            let rate = rows.positives() as f64 / rows.len() as f64;
            let mean = p.iter().sum::<f64>() / p.len() as f64;
            assert!((mean - rate).abs() < 1e-8, "{mean} vs {rate}");
            assert!(loss(kind, &own, &rows) < loss(kind, &shared, &rows));
        }
        // A strong pull keeps the shared bias.
        let shared = ClassifierKind::Logistic.initial_parameters(2, 5);
        let kept = with_own_intercept(ClassifierKind::Logistic, &shared, &rows, 1e12);
        assert!((kept[2] - shared[2]).abs() < 1e-6);
    }

    #[test]
    fn an_own_head_keeps_the_body_fits_the_party_and_stays_home_under_a_strong_pull() {
        let rows = toy(300, 5);
        let kind = ClassifierKind::Mlp { hidden: 3 };
        let d = rows.dim();
        let w: Vec<f64> = (0..3 * d + 3 + 4)
            .map(|i| 0.1 * ((i % 5) as f64 - 2.0))
            .collect();
        let own = with_own_head(kind, &w, &rows, 1e-3);
        let body = 3 * d + 3;
        assert_eq!(&own[..body], &w[..body], "the body is shared as it came");
        assert!(
            loss(kind, &own, &rows) < loss(kind, &w, &rows),
            "the head fits the rows"
        );
        // Under a very strong pull the head stays the federated one.
        let home = with_own_head(kind, &w, &rows, 1e9);
        let moved = home
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(moved < 1e-5, "{moved}");
        // For a logistic model the head is all of it: the party's own penalized fit,
        // whose gradient vanishes.
        let lr = ClassifierKind::Logistic;
        let fit = with_own_head(lr, &vec![0.0; d + 1], &rows, 1e-3);
        let mut grad = vec![0.0; d + 1];
        for i in 0..rows.len() {
            let (x, y) = rows.row(i);
            for (g, e) in grad.iter_mut().zip(example_gradient(lr, &fit, x, y)) {
                *g += e;
            }
        }
        let pen: f64 = grad
            .iter()
            .zip(&fit)
            .map(|(g, v)| (g + 1e-3 * v).abs())
            .fold(0.0, f64::max);
        assert!(pen < 1e-6, "{pen}");
    }

    #[test]
    fn fedprox_local_training_drifts_less_the_stronger_its_pull() {
        let rows = toy(200, 4);
        for kind in [ClassifierKind::Logistic, ClassifierKind::Mlp { hidden: 3 }] {
            let start = kind.initial_parameters(2, 5);
            let drift = |mu: f64| {
                let mut w = start.clone();
                let s = LocalSgd {
                    epochs: 5,
                    learning_rate: 0.1,
                    proximal_mu: mu,
                    seed: 2,
                    ..LocalSgd::default()
                };
                sgd(kind, &rows, &mut w, &s);
                w.iter()
                    .zip(&start)
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let d: Vec<f64> = [0.0, 0.5, 2.0, 9.0].into_iter().map(drift).collect();
            assert!(d.windows(2).all(|p| p[1] < p[0]), "{d:?}");
        }
    }

    fn mlp_task(rows: LabeledRows, own_head: OwnHead) -> ClassifierTask {
        ClassifierTask {
            name: "t",
            kind: ClassifierKind::Mlp { hidden: 4 },
            train: rows.clone(),
            test: rows,
            dp: None,
            own_head,
        }
    }

    /// `rounds` of FedAvg over `tasks` (equal weights) from the MLP's initial model.
    fn fedavg_rounds(tasks: &[&ClassifierTask], rounds: u64) -> Vec<f64> {
        let mut global = ClassifierKind::Mlp { hidden: 4 }.initial_parameters(2, 3);
        for r in 0..rounds {
            let work = LocalWork::LocalEpochs(LocalSgd {
                epochs: 2,
                learning_rate: 0.2,
                seed: r,
                ..LocalSgd::default()
            });
            let deltas: Vec<Vec<f64>> = tasks
                .iter()
                .map(|t| t.compute_update(&global, &work).unwrap())
                .collect();
            for (j, g) in global.iter_mut().enumerate() {
                *g += deltas.iter().map(|d| d[j]).sum::<f64>() / tasks.len() as f64;
            }
        }
        global
    }

    /// With one store, FedPer is FedAvg: the body moves as FedAvg's, bit for bit, and
    /// the head the store keeps is the head FedAvg averages in (to rounding: FedAvg's is
    /// `global + (local - global)`). The shared head's delta is zero.
    #[test]
    fn with_one_store_fedper_is_fedavg() {
        let plain = mlp_task(toy(120, 8), OwnHead::off());
        let fedper = mlp_task(toy(120, 8), OwnHead::on());
        let want = fedavg_rounds(&[&plain], 4);
        let global = fedavg_rounds(&[&fedper], 4);
        let start = head_start(fedper.kind, 2).unwrap();
        assert_eq!(global[..start], want[..start]);
        let own = fedper.model_for(&global);
        for (a, b) in own[start..].iter().zip(&want[start..]) {
            assert!((a - b).abs() < 1e-12, "{own:?} vs {want:?}");
        }
        let initial = ClassifierKind::Mlp { hidden: 4 }.initial_parameters(2, 3);
        assert_eq!(
            global[start..],
            initial[start..],
            "the shared head never moves"
        );
    }

    /// Two stores whose labels run opposite ways with the same inputs: one averaged
    /// head cannot serve both, a head each can.
    #[test]
    fn stores_with_opposite_labels_are_served_by_their_own_heads() {
        let flipped = |rows: &LabeledRows| {
            let mut out = LabeledRows::new(2);
            for i in 0..rows.len() {
                let (x, y) = rows.row(i);
                out.push(x, !y);
            }
            out
        };
        let a = toy(300, 9);
        let b = flipped(&toy(300, 10));
        let auc = |t: &ClassifierTask, global: &[f64]| t.evaluate(global).unwrap()["auc"];
        let (pa, pb) = (
            mlp_task(a.clone(), OwnHead::off()),
            mlp_task(b.clone(), OwnHead::off()),
        );
        let plain = fedavg_rounds(&[&pa, &pb], 30);
        let (fa, fb) = (mlp_task(a, OwnHead::on()), mlp_task(b, OwnHead::on()));
        let fedper = fedavg_rounds(&[&fa, &fb], 30);
        let (plain_a, plain_b) = (auc(&pa, &plain), auc(&pb, &plain));
        let (own_a, own_b) = (auc(&fa, &fedper), auc(&fb, &fedper));
        assert!(plain_a.min(plain_b) < 0.7, "{plain_a} {plain_b}");
        assert!(own_a.min(own_b) > 0.8, "{own_a} {own_b}");
    }

    #[test]
    fn a_restored_head_serves_the_store_as_the_one_it_trained() {
        let trained = mlp_task(toy(120, 8), OwnHead::on());
        assert_eq!(trained.kept_state(), None, "nothing kept before a round");
        let global = fedavg_rounds(&[&trained], 3);
        let head = trained.kept_state().unwrap();
        // A new task over the same rows (the agent after a restart) takes the head back.
        let restarted = mlp_task(toy(120, 8), OwnHead::on());
        restarted.restore_state(&head).unwrap();
        assert_eq!(restarted.model_for(&global), trained.model_for(&global));
        // What does not fit is refused by name, and the head is left as it was.
        let short = restarted.restore_state(&head[1..]).unwrap_err().to_string();
        assert!(
            short.contains(&format!("{} values", head.len() - 1)),
            "{short}"
        );
        let mut bad = head.clone();
        bad[0] = f64::NAN;
        let nan = restarted.restore_state(&bad).unwrap_err().to_string();
        assert!(nan.contains("value 0"), "{nan}");
        assert_eq!(restarted.kept_state(), Some(head.clone()));
        let plain = mlp_task(toy(120, 8), OwnHead::off());
        assert!(plain.restore_state(&head).is_err());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let rows = toy(30, 1);
        for kind in [ClassifierKind::Logistic, ClassifierKind::Mlp { hidden: 3 }] {
            let w: Vec<f64> = kind
                .initial_parameters(2, 5)
                .iter()
                .enumerate()
                .map(|(i, v)| v + 0.1 * (i as f64 % 3.0 - 1.0))
                .collect();
            let net = Net {
                kind,
                dim: 2,
                w: &w,
            };
            let mut grad = vec![0.0; w.len()];
            let mut hidden = vec![0.0; hidden_len(kind)];
            for i in 0..rows.len() {
                let (x, y) = rows.row(i);
                net.add_gradient(x, y, &mut hidden, &mut grad);
            }
            for j in 0..w.len() {
                let (mut wp, mut wm) = (w.clone(), w.clone());
                wp[j] += 1e-6;
                wm[j] -= 1e-6;
                let fd = (loss(kind, &wp, &rows) - loss(kind, &wm, &rows)) / 2e-6;
                assert!(
                    (fd - grad[j]).abs() < 1e-5 * fd.abs().max(1.0),
                    "{kind:?} {j}: {fd} vs {}",
                    grad[j]
                );
            }
        }
    }

    #[test]
    fn logistic_hessian_matches_finite_differences_of_the_gradient() {
        let rows = toy(40, 2);
        let w = vec![0.2, -0.1, 0.05];
        let mut stats = vec![0.0; newton_statistics_len(3)];
        add_logistic_second_order_statistics(&rows, &w, &mut stats);
        let h = fedretail_core::unpack_upper(&stats[3..], 3);
        for j in 0..3 {
            let grad_at = |w: &[f64]| {
                let mut s = vec![0.0; newton_statistics_len(3)];
                add_logistic_second_order_statistics(&rows, w, &mut s);
                s[..3].to_vec()
            };
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[j] += 1e-6;
            wm[j] -= 1e-6;
            let (gp, gm) = (grad_at(&wp), grad_at(&wm));
            for i in 0..3 {
                let fd = (gp[i] - gm[i]) / 2e-6;
                assert!((fd - h[i * 3 + j]).abs() < 1e-5 * fd.abs().max(1.0));
            }
        }
    }

    #[test]
    fn sgd_learns_a_separable_signal() {
        let train = toy(2000, 3);
        let test = toy(500, 4);
        for kind in [ClassifierKind::Logistic, ClassifierKind::Mlp { hidden: 8 }] {
            let mut w = kind.initial_parameters(2, 1);
            sgd(
                kind,
                &train,
                &mut w,
                &LocalSgd {
                    epochs: 10,
                    batch_size: 32,
                    learning_rate: 0.1,
                    l2: 1e-4,
                    proximal_mu: 0.0,
                    seed: 7,
                    min_steps: 0,
                },
            );
            let auc = classification_metrics(kind, &w, &test)["auc"];
            assert!(auc > 0.8, "{kind:?}: auc {auc}");
        }
    }

    #[test]
    fn mlp_cannot_be_asked_for_newton_statistics() {
        let task = ClassifierTask {
            own_head: OwnHead::off(),
            name: "churn",
            kind: ClassifierKind::Mlp { hidden: 2 },
            train: toy(10, 1),
            test: toy(10, 2),
            dp: None,
        };
        let w = task.kind.initial_parameters(2, 1);
        assert!(matches!(
            task.compute_update(&w, &LocalWork::SecondOrderStatistics),
            Err(TaskError::UnsupportedWork { .. })
        ));
        assert!(matches!(
            task.compute_update(&w[1..], &LocalWork::SecondOrderStatistics),
            Err(TaskError::WrongParameterCount { .. })
        ));
    }

    #[test]
    fn dp_sgd_learns_with_moderate_noise_and_clipping_bounds_one_example() {
        let train = toy(4000, 5);
        let test = toy(500, 6);
        let kind = ClassifierKind::Logistic;
        let mut w = kind.initial_parameters(2, 1);
        let dp = DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        };
        dp_sgd(
            kind,
            &train,
            &mut w,
            &LocalSgd {
                epochs: 5,
                batch_size: 64,
                learning_rate: 0.2,
                l2: 1e-4,
                proximal_mu: 0.0,
                seed: 3,
                min_steps: 0,
            },
            dp,
        )
        .unwrap();
        let auc = classification_metrics(kind, &w, &test)["auc"];
        assert!(auc > 0.8, "auc {auc}");

        // Without noise, one step's change from adding an example is at most
        // lr * clip / expected batch, however extreme the example.
        let mut rows = LabeledRows::new(2);
        rows.push(&[1e6, -1e6], true);
        let mut w = vec![0.0; 3];
        let quiet = DpSgdConfig {
            clip_norm: 0.5,
            noise_multiplier: 0.0,
        };
        dp_sgd(
            kind,
            &rows,
            &mut w,
            &LocalSgd {
                epochs: 1,
                batch_size: 1,
                learning_rate: 1.0,
                l2: 0.0,
                proximal_mu: 0.0,
                seed: 1,
                min_steps: 0,
            },
            quiet,
        )
        .unwrap();
        let moved = w.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(moved <= 0.5 + 1e-12, "moved {moved}");

        let bad = DpSgdConfig {
            clip_norm: 1.0,
            noise_multiplier: f64::NAN,
        };
        assert!(matches!(
            dp_sgd(
                kind,
                &train,
                &mut w,
                &LocalSgd {
                    epochs: 1,
                    batch_size: 64,
                    learning_rate: 0.1,
                    l2: 0.0,
                    proximal_mu: 0.0,
                    seed: 1,
                    min_steps: 0,
                },
                bad
            ),
            Err(TaskError::InvalidPrivacy(_))
        ));
    }
}
