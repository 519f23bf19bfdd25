//! Forecast accuracy.

/// Weighted absolute percentage error: sum |y - f| / sum y. None when nothing sold.
pub fn wape(abs_error_sum: f64, actual_sum: f64) -> Option<f64> {
    (actual_sum > 0.0).then(|| abs_error_sum / actual_sum)
}

/// Relative bias: (forecast total - actual total) / actual total; positive when the
/// forecast over-predicts.
pub fn bias(forecast_sum: f64, actual_sum: f64) -> Option<f64> {
    (actual_sum > 0.0).then(|| (forecast_sum - actual_sum) / actual_sum)
}

/// Mean absolute scaled error: mean |y - f| over the forecast rows divided by the
/// in-sample mean absolute error of the weekly seasonal-naive forecast.
pub fn mase(abs_error_sum: f64, rows: usize, naive_scale: f64) -> Option<f64> {
    (rows > 0 && naive_scale > 0.0).then(|| abs_error_sum / rows as f64 / naive_scale)
}

/// The standard normal quantile (Acklam's rational approximation, relative error
/// below 1.2e-9), for forecast intervals.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Whether the mean of `base - other` (per row errors or losses) exceeds its standard
/// error: the one-standard-error rule, so that a choice does not follow the noise of a
/// few weeks of one store's days.
pub fn clearly_better(base: &[f64], other: &[f64]) -> bool {
    let d: Vec<f64> = base.iter().zip(other).map(|(b, o)| b - o).collect();
    mean_and_se(&d).is_some_and(|(mean, se)| mean > se)
}

/// How many standard errors of the per-day difference make a store's kept forecast
/// clearly better or worse than its own: about 95 % two-sided, so a store whose
/// forecasts differ only by chance is called `same` 19 times in 20.
pub const CLEARLY_BEYOND_SE: f64 = 2.0;

/// `better`, `same` or `worse`: the kept forecast against the store's own, from the
/// absolute error it saves per held-out day (`mean`) and that mean's standard error.
pub fn kept_vs_local(mean: f64, se: f64) -> &'static str {
    if mean > CLEARLY_BEYOND_SE * se && mean > 0.0 {
        "better"
    } else if -mean > CLEARLY_BEYOND_SE * se && mean < 0.0 {
        "worse"
    } else {
        "same"
    }
}

/// Mean of `values` and its standard error; None for fewer than two.
pub fn mean_and_se(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    Some((mean, (var / n as f64).sqrt()))
}

/// Mean of a series in time order and its Newey-West standard error: a day's gain is
/// like the day before's (the same promotion, the same weather), and the plain standard
/// error would count such days as independent evidence. Bartlett weights over
/// `4 (n / 100)^(2/9)` lags (3 for four weeks); None for fewer than two values.
pub fn mean_and_serial_se(series: &[f64]) -> Option<(f64, f64)> {
    let n = series.len();
    if n < 2 {
        return None;
    }
    let mean = series.iter().sum::<f64>() / n as f64;
    let autocovariance = |lag: usize| {
        let pairs = series.iter().zip(&series[lag..]);
        pairs.map(|(a, b)| (a - mean) * (b - mean)).sum::<f64>() / n as f64
    };
    let lags = ((4.0 * (n as f64 / 100.0).powf(2.0 / 9.0)) as usize).min(n - 1);
    let mut long_run = autocovariance(0) * n as f64 / (n - 1) as f64;
    for lag in 1..=lags {
        let weight = 1.0 - lag as f64 / (lags + 1) as f64;
        long_run += 2.0 * weight * autocovariance(lag);
    }
    Some((mean, (long_run.max(0.0) / n as f64).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.9, 1.281_551_565_5),
            (0.975, 1.959_963_985),
            (0.01, -2.326_347_874),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-8,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn a_series_that_runs_in_spells_has_a_wider_serial_standard_error() {
        assert_eq!(mean_and_serial_se(&[1.0]), None);
        // By hand: one lag at n = 4, autocovariance 0.3125 at weight 1/2.
        let (mean, se) = mean_and_serial_se(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(mean, 2.5);
        assert!(
            (se - ((5.0 / 3.0 + 0.3125) / 4.0f64).sqrt()).abs() < 1e-12,
            "{se}"
        );
        // Four weeks in spells of four like days, and the same days alternating.
        let spells: Vec<f64> = (0..28)
            .map(|d| if (d / 4) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let alternating: Vec<f64> = (0..28)
            .map(|d| if d % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let plain = mean_and_se(&spells).unwrap().1;
        assert!(mean_and_serial_se(&spells).unwrap().1 > 1.25 * plain);
        assert!(mean_and_serial_se(&alternating).unwrap().1 < plain);
    }

    #[test]
    fn mean_and_standard_error() {
        assert_eq!(mean_and_se(&[1.0]), None);
        let (mean, se) = mean_and_se(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(mean, 2.5);
        // Sample variance 5/3 over 4 values.
        assert!((se - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        // A gain of one standard error exactly is not clearly better.
        assert!(!clearly_better(&[1.0, 3.0], &[1.0, 1.0]));
        assert!(clearly_better(&[2.0, 2.1], &[1.0, 1.0]));
    }

    #[test]
    fn only_a_gain_or_loss_beyond_two_standard_errors_is_called_clear() {
        assert_eq!(kept_vs_local(2.1, 1.0), "better");
        assert_eq!(kept_vs_local(1.9, 1.0), "same");
        assert_eq!(kept_vs_local(-2.1, 1.0), "worse");
        // A store that kept its own forecast: nothing saved on any day.
        assert_eq!(kept_vs_local(0.0, 0.0), "same");
    }

    #[test]
    fn wape_and_mase() {
        assert_eq!(wape(5.0, 20.0), Some(0.25));
        assert_eq!(wape(5.0, 0.0), None);
        assert_eq!(mase(10.0, 5, 4.0), Some(0.5));
        assert_eq!(mase(10.0, 0, 4.0), None);
    }
}

/// Classification and ranking quality.
pub mod ranking {
    /// Area under the ROC curve of `scores` for binary `labels` (true = positive), with
    /// ties counted half (the Mann-Whitney statistic). None without both classes or
    /// with a non-finite score.
    pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
        if scores.len() != labels.len() || scores.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let positives = labels.iter().filter(|&&l| l).count();
        let negatives = labels.len() - positives;
        if positives == 0 || negatives == 0 {
            return None;
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        // Sum of positive ranks, average rank within ties.
        let mut rank_sum = 0.0;
        let mut i = 0;
        while i < order.len() {
            let mut j = i;
            while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
                j += 1;
            }
            let avg_rank = (i + j) as f64 / 2.0 + 1.0;
            rank_sum += avg_rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
            i = j + 1;
        }
        let p = positives as f64;
        Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
    }

    /// The ROC curve of `scores` for binary `labels`: (false-positive rate, true-positive
    /// rate) from (0, 0) to (1, 1), one point per distinct score (tied scores move
    /// both rates at once), thinned to at most `max_points`. Its trapezoid area is
    /// [`roc_auc`]. None where `roc_auc` is None.
    pub fn roc_curve(
        scores: &[f64],
        labels: &[bool],
        max_points: usize,
    ) -> Option<Vec<(f64, f64)>> {
        roc_auc(scores, labels)?;
        let positives = labels.iter().filter(|&&l| l).count() as f64;
        let negatives = labels.len() as f64 - positives;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut curve = vec![(0.0, 0.0)];
        let (mut tp, mut fp) = (0.0, 0.0);
        for (n, &k) in order.iter().enumerate() {
            if labels[k] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            let tie_follows = order
                .get(n + 1)
                .is_some_and(|&next| scores[next] == scores[k]);
            if !tie_follows {
                curve.push((fp / negatives, tp / positives));
            }
        }
        let step = curve.len().div_ceil(max_points.max(2));
        if step > 1 {
            let last = curve.len() - 1;
            curve = curve
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i == last)
                .map(|(_, p)| p)
                .collect();
        }
        Some(curve)
    }

    /// Share of positives among the `k` highest scores (ties broken by position).
    pub fn precision_at_k(scores: &[f64], labels: &[bool], k: usize) -> Option<f64> {
        if k == 0 || scores.len() != labels.len() || scores.is_empty() {
            return None;
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let k = k.min(order.len());
        Some(order[..k].iter().filter(|&&i| labels[i]).count() as f64 / k as f64)
    }

    /// Share of correct labels at probability threshold 0.5.
    pub fn accuracy(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
        if probabilities.is_empty() || probabilities.len() != labels.len() {
            return None;
        }
        let right = probabilities
            .iter()
            .zip(labels)
            .filter(|(p, &l)| (**p >= 0.5) == l)
            .count();
        Some(right as f64 / labels.len() as f64)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn auc_matches_hand_counts() {
            assert_eq!(
                roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
                Some(0.75)
            );
            assert_eq!(roc_auc(&[1.0, 1.0], &[true, false]), Some(0.5));
            assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
            assert_eq!(roc_auc(&[f64::NAN, 2.0], &[true, false]), None);
        }

        #[test]
        fn the_roc_curve_runs_corner_to_corner_and_its_area_is_the_auc() {
            let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2];
            let l = [false, false, true, true, true, false, true];
            let c = roc_curve(&s, &l, 100).unwrap();
            assert_eq!(c.first(), Some(&(0.0, 0.0)));
            assert_eq!(c.last(), Some(&(1.0, 1.0)));
            let area: f64 = c
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
                .sum();
            assert!((area - roc_auc(&s, &l).unwrap()).abs() < 1e-12);
            let many: Vec<f64> = (0..1000).map(|i| i as f64).collect();
            let labels: Vec<bool> = (0..1000).map(|i| i % 3 == 0).collect();
            let thin = roc_curve(&many, &labels, 50).unwrap();
            assert!(thin.len() <= 51 && thin.last() == Some(&(1.0, 1.0)));
            assert!(roc_curve(&[1.0], &[true], 10).is_none());
        }

        #[test]
        fn precision_at_k_counts_the_top() {
            let s = [0.9, 0.1, 0.8, 0.7];
            let l = [true, true, false, true];
            assert_eq!(precision_at_k(&s, &l, 2), Some(0.5));
            assert_eq!(precision_at_k(&s, &l, 10), Some(0.75));
            assert_eq!(accuracy(&[0.9, 0.2], &[true, true]), Some(0.5));
        }
    }
}
