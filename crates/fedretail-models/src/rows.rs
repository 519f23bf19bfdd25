//! The demand task's design matrix: feature rows and what scores a forecast.

/// Rows of a design matrix, row-major, with what is needed to score forecasts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemandRows {
    d: usize,
    x: Vec<f64>,
    /// Units relative to the series' scale (the model's target).
    r: Vec<f64>,
    scale: Vec<f64>,
    units: Vec<f64>,
    /// Weekly seasonal-naive forecast: the last observed same weekday before the
    /// cut-off (held-out rows) or before the end of the history (future rows).
    naive: Vec<f64>,
}

impl DemandRows {
    pub fn new(d: usize) -> Self {
        DemandRows {
            d,
            ..Default::default()
        }
    }

    pub fn push(&mut self, x: &[f64], units: f64, scale: f64, naive: f64) {
        debug_assert_eq!(x.len(), self.d);
        self.x.extend_from_slice(x);
        self.r.push(units / scale);
        self.scale.push(scale);
        self.units.push(units);
        self.naive.push(naive);
    }

    pub fn len(&self) -> usize {
        self.r.len()
    }

    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    pub fn n_features(&self) -> usize {
        self.d
    }

    /// (features, relative target, scale) of row i.
    #[inline]
    pub fn row(&self, i: usize) -> (&[f64], f64, f64) {
        (
            &self.x[i * self.d..(i + 1) * self.d],
            self.r[i],
            self.scale[i],
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[f64], f64, f64)> + '_ {
        self.x
            .chunks_exact(self.d.max(1))
            .zip(&self.r)
            .zip(&self.scale)
            .map(|((x, &r), &s)| (x, r, s))
    }

    pub fn units(&self) -> &[f64] {
        &self.units
    }

    pub fn naive(&self) -> &[f64] {
        &self.naive
    }

    /// Sum of |units - forecast| over rows.
    pub fn abs_error(&self, forecast: &[f64]) -> f64 {
        self.units
            .iter()
            .zip(forecast)
            .map(|(y, f)| (y - f).abs())
            .sum()
    }

    /// Rows concatenated (the centralized reference pools stores this way).
    pub fn extend_from(&mut self, other: &DemandRows) {
        self.x.extend_from_slice(&other.x);
        self.r.extend_from_slice(&other.r);
        self.scale.extend_from_slice(&other.scale);
        self.units.extend_from_slice(&other.units);
        self.naive.extend_from_slice(&other.naive);
    }
}
