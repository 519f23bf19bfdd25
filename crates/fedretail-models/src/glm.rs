//! Poisson regression with a log link on a relative target: for row i with features
//! x_i, series scale s_i and units y_i, the model says E[y_i] = s_i exp(w . x_i). The
//! loss is the Poisson negative log-likelihood of r_i = y_i / s_i,
//! `sum_i exp(w . x_i) - r_i (w . x_i)`, so every series weighs the same whatever its
//! volume. Its gradient and Hessian are sums over rows, which is what makes the exact
//! federated Newton solver possible.

use crate::rows::{DemandRows, Features};
use fedretail_core::{pack_upper, FedNewton, L2Penalty, LocalSgd};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Linear predictors are capped here so exp never overflows on a bad step.
const MAX_ETA: f64 = 20.0;

#[inline]
pub fn eta(x: Features<'_>, w: &[f64]) -> f64 {
    x.dot(w).min(MAX_ETA)
}

/// Expected units for each row.
pub fn predict_into(rows: &DemandRows, w: &[f64], out: &mut Vec<f64>) {
    out.clear();
    out.extend(rows.iter().map(|(x, _, s)| s * eta(x, w).exp()));
}

/// Loss (unpenalised) summed over rows.
pub fn loss(rows: &DemandRows, w: &[f64]) -> f64 {
    rows.iter()
        .map(|(x, r, _)| {
            let e = eta(x, w);
            e.exp() - r * e
        })
        .sum()
}

/// The loss of each row at `w` (the terms of [`loss`]).
pub fn row_losses(rows: &DemandRows, w: &[f64]) -> Vec<f64> {
    rows.iter()
        .map(|(x, r, _)| {
            let e = eta(x, w);
            e.exp() - r * e
        })
        .collect()
}

/// Gradient and Hessian of the summed loss at `w`, packed as `[g, upper(H)]` and
/// added into `out` (which must have the packed length). A row can be non-zero only
/// at the rows' positions (the shared features and one business type's block of
/// many), so the sums are taken over those in a small dense matrix, added into the
/// packed one once at the end.
pub fn add_second_order_statistics(rows: &DemandRows, w: &[f64], out: &mut [f64]) {
    let d = w.len();
    let positions = rows.positions();
    let m = positions.len();
    let mut g = vec![0.0; m];
    let mut h = vec![0.0; m * m];
    let mut a = vec![0.0; m];
    for (x, r, _) in rows.iter() {
        x.active_into(&mut a);
        let mu = eta(x, w).exp();
        let resid = mu - r;
        for i in 0..m {
            if a[i] == 0.0 {
                continue;
            }
            g[i] += resid * a[i];
            let mxi = mu * a[i];
            for (hij, aj) in h[i * m + i..(i + 1) * m].iter_mut().zip(&a[i..]) {
                *hij += mxi * aj;
            }
        }
    }
    scatter_packed(&positions, &g, &h, d, out);
}

/// Add the small dense sums over `positions` into the packed `[g, upper(H)]` of a
/// `d`-long model.
fn scatter_packed(positions: &[usize], g: &[f64], h: &[f64], d: usize, out: &mut [f64]) {
    let m = positions.len();
    let (gout, hout) = out.split_at_mut(d);
    // Entry (i, j), i <= j, of the packed upper triangle.
    let at = |i: usize, j: usize| i * d - i * i.saturating_sub(1) / 2 - i + j;
    for (a, &pa) in positions.iter().enumerate() {
        gout[pa] += g[a];
        for (b, &pb) in positions.iter().enumerate().skip(a) {
            hout[at(pa.min(pb), pa.max(pb))] += h[a * m + b];
        }
    }
}

/// Newton's method on the pooled rows of several sources, the same iteration as the
/// federated Newton strategy: the reference for local-only and centralized fits.
pub fn fit_newton(
    sources: &[&DemandRows],
    mask: &[bool],
    l2: f64,
    max_step: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, usize) {
    let penalty = L2Penalty {
        mask,
        l2,
        center: None,
    };
    fit_newton_from(
        sources,
        &vec![0.0; mask.len()],
        &penalty,
        max_step,
        max_iter,
        tol,
    )
}

/// Newton from `start` under `penalty` (with a center, this fine-tunes a model toward
/// local data while pulling it toward the center).
pub fn fit_newton_from(
    sources: &[&DemandRows],
    start: &[f64],
    penalty: &L2Penalty<'_>,
    max_step: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, usize) {
    let d = start.len();
    let mut w = start.to_vec();
    let mut stats = vec![0.0; fedretail_core::newton_statistics_len(d)];
    for iter in 1..=max_iter {
        stats.iter_mut().for_each(|s| *s = 0.0);
        for rows in sources {
            add_second_order_statistics(rows, &w, &mut stats);
        }
        let (g, h) = stats.split_at(d);
        let Some(next) = FedNewton::newton_step(&w, g, h, penalty, max_step) else {
            return (w, iter);
        };
        let step: f64 = next
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        w = next;
        if step < tol {
            return (w, iter);
        }
    }
    (w, max_iter)
}

/// Mini-batch SGD from `w`, in place: the local work of FedAvg. The shuffle depends
/// only on `seed`, so stores with identical data and seed take identical steps.
pub fn sgd(rows: &DemandRows, w: &mut [f64], mask: &[bool], s: &LocalSgd) {
    let n = rows.len();
    if n == 0 {
        return;
    }
    let d = w.len();
    let anchor = w.to_vec();
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut grad = vec![0.0; d];
    let b = s.batch_size.max(1) as usize;
    for _ in 0..s.epochs_for(n) {
        order.shuffle(&mut rng);
        for batch in order.chunks(b) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &i in batch {
                let (x, r, _) = rows.row(i);
                let resid = eta(x, w).exp() - r;
                x.add_scaled(&mut grad, resid);
            }
            s.step(w, &grad, 1.0 / batch.len() as f64, mask, &anchor);
        }
    }
}

/// Pack a dense Hessian (for tests and tools).
pub fn pack(g: &[f64], h: &[f64]) -> Vec<f64> {
    let mut out = g.to_vec();
    pack_upper(h, g.len(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn toy_rows(n: usize, d: usize, seed: u64) -> DemandRows {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let truth: Vec<f64> = (0..d)
            .map(|j| if j == 0 { 0.2 } else { 0.3 / j as f64 })
            .collect();
        let mut rows = DemandRows::new(d);
        for _ in 0..n {
            let mut x = vec![1.0];
            x.extend((1..d).map(|_| rng.random_range(-1.0..1.0)));
            let mu = dot(&x, &truth).exp() * 5.0;
            let y =
                rand_distr::Distribution::sample(&rand_distr::Poisson::new(mu).unwrap(), &mut rng);
            rows.push(&x, y, 5.0, 0.0);
        }
        rows
    }

    #[test]
    fn analytic_gradient_matches_finite_differences() {
        let rows = toy_rows(50, 4, 1);
        let w = vec![0.1, -0.2, 0.05, 0.3];
        let mut stats = vec![0.0; fedretail_core::newton_statistics_len(4)];
        add_second_order_statistics(&rows, &w, &mut stats);
        for j in 0..4 {
            let mut wp = w.clone();
            let mut wm = w.clone();
            wp[j] += 1e-6;
            wm[j] -= 1e-6;
            let fd = (loss(&rows, &wp) - loss(&rows, &wm)) / 2e-6;
            assert!(
                (fd - stats[j]).abs() < 1e-4 * fd.abs().max(1.0),
                "{j}: {fd} vs {}",
                stats[j]
            );
        }
    }

    #[test]
    fn statistics_over_kept_and_copied_features_equal_the_dense_sums() {
        // Half the kept features zero in each row, in a pattern that changes row by
        // row, and two of them copied to the end of an 8-long model.
        let dense = toy_rows(60, 6, 3);
        let mut rows = DemandRows::with_copies(8, 6, vec![(6, 0), (7, 2)]);
        for (i, (x, r, s)) in dense.iter().enumerate() {
            let x: Vec<f64> = (0..6)
                .map(|j| {
                    if j > 0 && (i + j) % 2 == 0 {
                        0.0
                    } else {
                        x.get(j)
                    }
                })
                .collect();
            rows.push(&x, r * s, s, 0.0);
        }
        let w = [0.1, -0.2, 0.05, 0.3, 0.0, -0.1, 0.2, -0.3];
        let mut stats = vec![0.0; fedretail_core::newton_statistics_len(8)];
        add_second_order_statistics(&rows, &w, &mut stats);
        let mut g = [0.0; 8];
        let mut h = [[0.0; 8]; 8];
        for (x, r, _) in rows.iter() {
            let x: Vec<f64> = (0..8).map(|j| x.get(j)).collect();
            let mu = dot(&x, &w).min(MAX_ETA).exp();
            for i in 0..8 {
                g[i] += (mu - r) * x[i];
                for j in 0..8 {
                    h[i][j] += mu * x[i] * x[j];
                }
            }
        }
        let mut packed = g.to_vec();
        for i in 0..8 {
            packed.extend_from_slice(&h[i][i..]);
        }
        for (a, b) in stats.iter().zip(&packed) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn newton_recovers_the_truth_and_sgd_approaches_it() {
        let rows = toy_rows(4000, 4, 2);
        let mask = vec![false, true, true, true];
        let (w, iters) = fit_newton(&[&rows], &mask, 0.0, 2.0, 50, 1e-10);
        assert!(iters < 15);
        assert!(
            (w[0] - 0.2).abs() < 0.05 && (w[1] - 0.3).abs() < 0.05,
            "{w:?}"
        );
        let mut ws = vec![0.0; 4];
        let s = LocalSgd {
            epochs: 20,
            learning_rate: 0.02,
            seed: 9,
            ..LocalSgd::default()
        };
        sgd(&rows, &mut ws, &mask, &s);
        for j in 0..4 {
            assert!((ws[j] - w[j]).abs() < 0.05, "sgd {ws:?} vs newton {w:?}");
        }
    }
}
