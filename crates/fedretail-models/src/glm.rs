//! Poisson regression with a log link on a relative target: for row i with features
//! x_i, series scale s_i and units y_i, the model says E[y_i] = s_i exp(w . x_i). The
//! loss is the Poisson negative log-likelihood of r_i = y_i / s_i,
//! `sum_i exp(w . x_i) - r_i (w . x_i)`, so every series weighs the same whatever its
//! volume. Its gradient and Hessian are sums over rows, which is what makes the exact
//! federated Newton solver possible.

use crate::rows::{ActivePositions, DemandRows, Features};
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
/// at the rows' positions (the shared features, one business type's block of many and
/// its categories' season blocks), so the sums are taken over those in a small dense
/// matrix, added into the packed one once at the end.
pub fn add_second_order_statistics(rows: &DemandRows, w: &[f64], out: &mut [f64]) {
    let at = rows.active_positions();
    add_statistics_at(rows, &at, w, &at.positions, w.len(), out);
}

/// The sums over `at`'s positions, added at `slots` (one per position) of the packed
/// statistics of a `len`-long vector.
fn add_statistics_at(
    rows: &DemandRows,
    at: &ActivePositions,
    w: &[f64],
    slots: &[usize],
    len: usize,
    out: &mut [f64],
) {
    let m = at.positions.len();
    let mut g = vec![0.0; m];
    let mut h = vec![0.0; m * m];
    let mut a = vec![0.0; m];
    // The row's non-zero values: about half of its positions (flags, other blocks).
    let mut nz = Vec::with_capacity(m);
    for (x, r, _) in rows.iter() {
        x.active_into(at, &mut a);
        nz.clear();
        nz.extend((0..m).filter(|&i| a[i] != 0.0));
        let mu = eta(x, w).exp();
        let resid = mu - r;
        for (k, &i) in nz.iter().enumerate() {
            g[i] += resid * a[i];
            let mxi = mu * a[i];
            let hi = &mut h[i * m..(i + 1) * m];
            for &j in &nz[k..] {
                hi[j] += mxi * a[j];
            }
        }
    }
    scatter_packed(slots, &g, &h, len, out);
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
/// local data while pulling it toward the center). Only the coordinates some row can
/// touch are solved for: the others sit at the penalty's center (zero without one),
/// where the full solve puts them, so a store's fit costs its own few dozen
/// coordinates, not the network's model.
pub fn fit_newton_from(
    sources: &[&DemandRows],
    start: &[f64],
    penalty: &L2Penalty<'_>,
    max_step: f64,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, usize) {
    let d = start.len();
    let ats: Vec<ActivePositions> = sources.iter().map(|r| r.active_positions()).collect();
    let mut union: Vec<usize> = ats.iter().flat_map(|a| a.positions.clone()).collect();
    union.sort_unstable();
    union.dedup();
    let slots: Vec<Vec<usize>> = ats
        .iter()
        .map(|a| {
            let slot = |p: &usize| union.binary_search(p).unwrap_or_default();
            a.positions.iter().map(slot).collect()
        })
        .collect();
    let mut w = start.to_vec();
    for j in 0..d {
        if penalty.mask[j] && union.binary_search(&j).is_err() {
            w[j] = penalty.center.map_or(0.0, |c| c[j]);
        }
    }
    let sub = |v: &[f64]| -> Vec<f64> { union.iter().map(|&p| v[p]).collect() };
    let mask: Vec<bool> = union.iter().map(|&p| penalty.mask[p]).collect();
    let center = penalty.center.map(sub);
    let sub_penalty = L2Penalty {
        mask: &mask,
        l2: penalty.l2,
        center: center.as_deref(),
    };
    let m = union.len();
    let mut stats = vec![0.0; fedretail_core::newton_statistics_len(m)];
    for iter in 1..=max_iter {
        stats.iter_mut().for_each(|s| *s = 0.0);
        for ((rows, at), slots) in sources.iter().zip(&ats).zip(&slots) {
            add_statistics_at(rows, at, &w, slots, m, &mut stats);
        }
        let (g, h) = stats.split_at(m);
        let Some(next) = FedNewton::newton_step(&sub(&w), g, h, &sub_penalty, max_step) else {
            return (w, iter);
        };
        let mut step = 0.0;
        for (&p, v) in union.iter().zip(next) {
            step += (v - w[p]) * (v - w[p]);
            w[p] = v;
        }
        if step.sqrt() < tol {
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
    fn a_fit_over_the_rows_own_coordinates_equals_the_full_fit() {
        // A 10-long model: rows keep 4, two copy sets (two categories) copy kept 1
        // to 5 or 7; positions 4, 6, 8 and 9 no row touches.
        let dense = toy_rows(80, 4, 5);
        let mut rows = DemandRows::with_copies(10, 4, Vec::new());
        let sets = [
            rows.add_copy_set(vec![(5, 1)]),
            rows.add_copy_set(vec![(7, 1)]),
        ];
        let mut full = DemandRows::new(10);
        for (i, (x, r, s)) in dense.iter().enumerate() {
            let kept: Vec<f64> = (0..4).map(|j| x.get(j)).collect();
            rows.push_in(sets[i % 2], &kept, r * s, s, 0.0);
            let mut all = kept.clone();
            all.resize(10, 0.0);
            all[[5, 7][i % 2]] = kept[1];
            full.push(&all, r * s, s, 0.0);
        }
        let mask: Vec<bool> = (0..10).map(|j| j > 0).collect();
        let center: Vec<f64> = (0..10).map(|j| 0.05 * j as f64).collect();
        for center in [None, Some(center.as_slice())] {
            let penalty = L2Penalty {
                mask: &mask,
                l2: 2.0,
                center,
            };
            let start = center.map_or(vec![0.0; 10], <[f64]>::to_vec);
            let (sub, _) = fit_newton_from(&[&rows], &start, &penalty, 2.0, 50, 1e-12);
            let (all, _) = fit_newton_from(&[&full], &start, &penalty, 2.0, 50, 1e-12);
            for (a, b) in sub.iter().zip(&all) {
                assert!((a - b).abs() < 1e-10, "{sub:?} vs {all:?}");
            }
            assert_eq!(sub[8], start[8]);
            assert!(sub[5] != start[5] && sub[7] != start[7]);
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
