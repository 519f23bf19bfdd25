//! Forecast accuracy.

/// Weighted absolute percentage error: sum |y - f| / sum y. None when nothing sold.
pub fn wape(abs_error_sum: f64, actual_sum: f64) -> Option<f64> {
    (actual_sum > 0.0).then(|| abs_error_sum / actual_sum)
}

/// Mean absolute scaled error: mean |y - f| over the forecast rows divided by the
/// in-sample mean absolute error of the weekly seasonal-naive forecast.
pub fn mase(abs_error_sum: f64, rows: usize, naive_scale: f64) -> Option<f64> {
    (rows > 0 && naive_scale > 0.0).then(|| abs_error_sum / rows as f64 / naive_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        fn precision_at_k_counts_the_top() {
            let s = [0.9, 0.1, 0.8, 0.7];
            let l = [true, true, false, true];
            assert_eq!(precision_at_k(&s, &l, 2), Some(0.5));
            assert_eq!(precision_at_k(&s, &l, 10), Some(0.75));
            assert_eq!(accuracy(&[0.9, 0.2], &[true, true]), Some(0.5));
        }
    }
}
