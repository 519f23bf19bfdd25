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
