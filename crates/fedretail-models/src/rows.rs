//! The demand task's design matrix: feature rows and what scores a forecast.
//!
//! A demand row has the shared features and a copy of some of them in its business
//! type's block; every other block is zero. Rows keep only the shared values and say
//! once, for all rows, where the copies go, so a network of many stores holds a fifth
//! of the dense matrix and the Newton statistics visit only the coordinates a store
//! can touch. The kept values are stored as f32 (every product and sum is in f64):
//! features are calendar flags, small counts and log-scaled history, for which seven
//! digits are plenty, and the rows are most of what a simulated network holds.

/// Rows of a design matrix, row-major, with what is needed to score forecasts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemandRows {
    /// Length of the model (of a dense row).
    d: usize,
    /// Values kept per row: model positions `0..stored`.
    stored: usize,
    /// Further model positions that copy a kept value: (position, kept index).
    copies: Vec<(usize, usize)>,
    x: Vec<f32>,
    /// The series' scale; the model's target is units relative to it, computed on use
    /// (the same division as storing it, so the same bits, and 8 bytes a row less).
    scale: Vec<f64>,
    units: Vec<f64>,
    /// Weekly seasonal-naive forecast: the last observed same weekday before the
    /// cut-off (held-out rows) or before the end of the history (future rows).
    naive: Vec<f64>,
}

/// One row's features as the model sees them: the kept values at positions
/// `0..kept.len()`, the copies at theirs, zero elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    kept: &'a [f32],
    copies: &'a [(usize, usize)],
}

impl<'a> Features<'a> {
    /// `x . w` over the row's coordinates.
    #[inline]
    pub fn dot(&self, w: &[f64]) -> f64 {
        let kept: f64 = self
            .kept
            .iter()
            .zip(w)
            .map(|(&x, w)| f64::from(x) * w)
            .sum();
        let copied: f64 = self
            .copies
            .iter()
            .map(|&(to, from)| f64::from(self.kept[from]) * w[to])
            .sum();
        kept + copied
    }

    /// `out += a x`.
    #[inline]
    pub fn add_scaled(&self, out: &mut [f64], a: f64) {
        for (o, &x) in out.iter_mut().zip(self.kept) {
            *o += a * f64::from(x);
        }
        for &(to, from) in self.copies {
            out[to] += a * f64::from(self.kept[from]);
        }
    }

    /// The value at model position `j`.
    pub fn get(&self, j: usize) -> f64 {
        if let Some(&v) = self.kept.get(j) {
            return f64::from(v);
        }
        self.copies
            .iter()
            .find(|(to, _)| *to == j)
            .map_or(0.0, |&(_, from)| f64::from(self.kept[from]))
    }

    /// The row's values in `out`, kept values first, then the copies (the order of
    /// [`DemandRows::positions`]).
    #[inline]
    pub fn active_into(&self, out: &mut [f64]) {
        let (kept, copied) = out.split_at_mut(self.kept.len());
        for (o, &x) in kept.iter_mut().zip(self.kept) {
            *o = f64::from(x);
        }
        for (o, &(_, from)) in copied.iter_mut().zip(self.copies) {
            *o = f64::from(self.kept[from]);
        }
    }
}

impl DemandRows {
    /// Dense rows of `d` features.
    pub fn new(d: usize) -> Self {
        Self::with_copies(d, d, Vec::new())
    }

    /// Rows of a `d`-long model that keep the first `stored` features and copy
    /// kept ones to further positions: `copies` lists (position, kept index).
    pub fn with_copies(d: usize, stored: usize, copies: Vec<(usize, usize)>) -> Self {
        debug_assert!(copies
            .iter()
            .all(|&(to, from)| to >= stored && to < d && from < stored));
        DemandRows {
            d,
            stored,
            copies,
            ..Default::default()
        }
    }

    /// Add a row; `x` has the kept values only (stored to f32 precision).
    pub fn push(&mut self, x: &[f64], units: f64, scale: f64, naive: f64) {
        debug_assert_eq!(x.len(), self.stored);
        self.x.extend(x.iter().map(|&v| v as f32));
        self.scale.push(scale);
        self.units.push(units);
        self.naive.push(naive);
    }

    /// Give back the room kept for further rows (a network of many stores holds
    /// every store's rows at once).
    pub fn shrink_to_fit(&mut self) {
        self.x.shrink_to_fit();
        self.scale.shrink_to_fit();
        self.units.shrink_to_fit();
        self.naive.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Length of the model the rows are for.
    pub fn n_features(&self) -> usize {
        self.d
    }

    /// Model positions a row can be non-zero at: the kept ones, then the copies.
    pub fn positions(&self) -> Vec<usize> {
        (0..self.stored)
            .chain(self.copies.iter().map(|&(to, _)| to))
            .collect()
    }

    /// (features, relative target, scale) of row i.
    #[inline]
    pub fn row(&self, i: usize) -> (Features<'_>, f64, f64) {
        let kept = &self.x[i * self.stored..(i + 1) * self.stored];
        let scale = self.scale[i];
        (self.features(kept), self.units[i] / scale, scale)
    }

    #[inline]
    fn features<'a>(&'a self, kept: &'a [f32]) -> Features<'a> {
        Features {
            kept,
            copies: &self.copies,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Features<'_>, f64, f64)> + '_ {
        self.x
            .chunks_exact(self.stored.max(1))
            .zip(&self.units)
            .zip(&self.scale)
            .map(|((x, &u), &s)| (self.features(x), u / s, s))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_copied_values_act_as_the_dense_row() {
        // Model of 7: keep 3, copy kept 0 and 2 to positions 5 and 6.
        let mut rows = DemandRows::with_copies(7, 3, vec![(5, 0), (6, 2)]);
        rows.push(&[1.0, 2.0, 3.0], 4.0, 2.0, 0.0);
        let dense = [1.0, 2.0, 3.0, 0.0, 0.0, 1.0, 3.0];
        let w = [0.5, -1.0, 0.25, 9.0, 9.0, 2.0, -0.5];
        let (x, r, s) = rows.row(0);
        let want: f64 = dense.iter().zip(&w).map(|(a, b)| a * b).sum();
        assert_eq!(x.dot(&w), want);
        assert_eq!((r, s), (2.0, 2.0));
        let mut out = [0.0; 7];
        x.add_scaled(&mut out, 2.0);
        assert_eq!(out, dense.map(|v| 2.0 * v));
        assert_eq!((0..7).map(|j| x.get(j)).collect::<Vec<_>>(), dense);
        assert_eq!(rows.positions(), vec![0, 1, 2, 5, 6]);
        let mut active = [0.0; 5];
        x.active_into(&mut active);
        assert_eq!(active, [1.0, 2.0, 3.0, 1.0, 3.0]);
    }
}
