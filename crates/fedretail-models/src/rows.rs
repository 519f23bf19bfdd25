//! The demand task's design matrix: feature rows and what scores a forecast.
//!
//! A demand row has the shared features and a copy of some of them in its business
//! type's block and its category's season block; every other block is zero. Rows keep
//! only the shared values and name a copy set, said once for all rows that share it,
//! so a network of many stores holds a small part of the dense matrix and the Newton
//! statistics visit only the coordinates a store can touch. The kept values are stored as f32 (every product and sum is in f64):
//! features are calendar flags, small counts and log-scaled history, for which seven
//! digits are plenty, and the rows are most of what a simulated network holds.
//!
//! Most kept values are exactly 0 or 1 (weekday and holiday flags, the intercept, a
//! price at its usual level), so a row keeps a 2-bit code per value for its first
//! [`CODED`] values (0: stored, 1: zero, 2: one) and stores only the others. A value
//! reads back with the same bits either way, so every product and sum is unchanged.

/// Values per row with a 2-bit code in the row's code word.
const CODED: usize = 32;
const ZERO: u64 = 1;
const ONE: u64 = 2;

/// Rows of a design matrix, row-major, with what is needed to score forecasts.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandRows {
    /// Length of the model (of a dense row).
    d: usize,
    /// Values kept per row: model positions `0..stored`.
    stored: usize,
    /// Sets of further model positions that copy a kept value: (position, kept
    /// index). Each row names its set: the store's business-type block, say, and the
    /// season block of the row's category.
    copy_sets: Vec<Vec<(usize, usize)>>,
    /// Per row, its set of copies.
    set_of: Vec<u16>,
    /// Per row, the 2-bit code of each of its first [`CODED`] kept values.
    codes: Vec<u64>,
    /// Where each row's stored values start in `packed` (one entry more than rows).
    starts: Vec<u32>,
    packed: Vec<f32>,
    /// The series' scale; the model's target is units relative to it, computed on use
    /// (the same division as storing it, so the same bits, and 8 bytes a row less).
    scale: Vec<f64>,
    units: Vec<f64>,
    /// Weekly seasonal-naive forecast: the last observed same weekday before the
    /// cut-off (held-out rows) or before the end of the history (future rows).
    naive: Vec<f64>,
}

impl Default for DemandRows {
    fn default() -> Self {
        DemandRows::new(0)
    }
}

/// One row's features as the model sees them: the kept values at positions
/// `0..stored`, the copies at theirs, zero elsewhere.
#[derive(Debug, Clone, Copy)]
pub struct Features<'a> {
    codes: u64,
    packed: &'a [f32],
    stored: usize,
    set: usize,
    copies: &'a [(usize, usize)],
}

/// Where each kept value and copy of a set of rows goes among the positions the rows
/// can be non-zero at ([`DemandRows::active_positions`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivePositions {
    /// Model positions: the kept ones, then every set's copies, ascending.
    pub positions: Vec<usize>,
    /// Per copy set, the index in `positions` of each of its copies.
    slots: Vec<Vec<usize>>,
}

impl<'a> Features<'a> {
    /// Kept value `j`, from its code or the stored values.
    #[inline]
    fn value(&self, j: usize) -> f32 {
        if j < CODED {
            match (self.codes >> (2 * j)) & 3 {
                ZERO => return 0.0,
                ONE => return 1.0,
                _ => {}
            }
        }
        // Stored values before j: j minus the coded ones among the first min(j, CODED).
        let before = j.min(CODED);
        let mask = if before == CODED {
            u64::MAX
        } else {
            (1u64 << (2 * before)) - 1
        };
        let special = (self.codes | (self.codes >> 1)) & 0x5555_5555_5555_5555 & mask;
        self.packed[j - special.count_ones() as usize]
    }

    /// The kept values in order, decoded as they are read: a coded value is its
    /// code less one (zero, one), any other the next stored value.
    #[inline]
    fn kept(&self) -> impl Iterator<Item = f32> + '_ {
        let mut codes = self.codes;
        let mut stored = self.packed.iter();
        (0..self.stored).map(move |j| {
            let code = if j < CODED { codes & 3 } else { 0 };
            codes >>= 2;
            if code == 0 {
                stored.next().copied().unwrap_or(0.0)
            } else {
                (code - 1) as f32
            }
        })
    }

    /// `x . w` over the row's coordinates.
    #[inline]
    pub fn dot(&self, w: &[f64]) -> f64 {
        let kept: f64 = self.kept().zip(w).map(|(x, w)| f64::from(x) * w).sum();
        let copied: f64 = self
            .copies
            .iter()
            .map(|&(to, from)| f64::from(self.value(from)) * w[to])
            .sum();
        kept + copied
    }

    /// `out += a x`.
    #[inline]
    pub fn add_scaled(&self, out: &mut [f64], a: f64) {
        for (o, x) in out.iter_mut().zip(self.kept()) {
            *o += a * f64::from(x);
        }
        for &(to, from) in self.copies {
            out[to] += a * f64::from(self.value(from));
        }
    }

    /// The value at model position `j`.
    pub fn get(&self, j: usize) -> f64 {
        if j < self.stored {
            return f64::from(self.value(j));
        }
        self.copies
            .iter()
            .find(|(to, _)| *to == j)
            .map_or(0.0, |&(_, from)| f64::from(self.value(from)))
    }

    /// The row's values at `at`'s positions in `out`, zero at other sets' copies.
    #[inline]
    pub fn active_into(&self, at: &ActivePositions, out: &mut [f64]) {
        let (kept, copied) = out.split_at_mut(self.stored);
        for (o, x) in kept.iter_mut().zip(self.kept()) {
            *o = f64::from(x);
        }
        copied.fill(0.0);
        for (&slot, &(_, from)) in at.slots[self.set].iter().zip(self.copies) {
            out[slot] = f64::from(self.value(from));
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
            copy_sets: vec![copies],
            set_of: Vec::new(),
            codes: Vec::new(),
            starts: vec![0],
            packed: Vec::new(),
            scale: Vec::new(),
            units: Vec::new(),
            naive: Vec::new(),
        }
    }

    /// Add a set of copies (position, kept index) for rows to name; its index.
    pub fn add_copy_set(&mut self, copies: Vec<(usize, usize)>) -> u16 {
        debug_assert!(copies
            .iter()
            .all(|&(to, from)| to >= self.stored && to < self.d && from < self.stored));
        self.copy_sets.push(copies);
        u16::try_from(self.copy_sets.len() - 1).unwrap_or(u16::MAX)
    }

    /// Add a row with the first set of copies; `x` has the kept values only (stored
    /// to f32 precision).
    pub fn push(&mut self, x: &[f64], units: f64, scale: f64, naive: f64) {
        self.push_in(0, x, units, scale, naive);
    }

    /// Add a row whose copies are set `set` (from [`DemandRows::add_copy_set`]).
    pub fn push_in(&mut self, set: u16, x: &[f64], units: f64, scale: f64, naive: f64) {
        debug_assert_eq!(x.len(), self.stored);
        debug_assert!(usize::from(set) < self.copy_sets.len());
        let mut codes = 0u64;
        for (j, &v) in x.iter().enumerate() {
            let v = v as f32;
            // By bits, so -0.0 is stored rather than read back as +0.0.
            match v.to_bits() {
                0 if j < CODED => codes |= ZERO << (2 * j),
                b if b == 1f32.to_bits() && j < CODED => codes |= ONE << (2 * j),
                _ => self.packed.push(v),
            }
        }
        self.codes.push(codes);
        self.set_of.push(set);
        self.starts.push(self.packed.len() as u32);
        self.scale.push(scale);
        self.units.push(units);
        self.naive.push(naive);
    }

    /// Give back the room kept for further rows (a network of many stores holds
    /// every store's rows at once).
    pub fn shrink_to_fit(&mut self) {
        self.codes.shrink_to_fit();
        self.set_of.shrink_to_fit();
        self.starts.shrink_to_fit();
        self.packed.shrink_to_fit();
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

    /// Model positions a row can be non-zero at: the kept ones, then every set's
    /// copies, ascending.
    pub fn positions(&self) -> Vec<usize> {
        self.active_positions().positions
    }

    /// The positions a row can be non-zero at, and where each set's copies go in them.
    pub fn active_positions(&self) -> ActivePositions {
        let mut copied: Vec<usize> = self.copy_sets.iter().flatten().map(|&(to, _)| to).collect();
        copied.sort_unstable();
        copied.dedup();
        let slots = self
            .copy_sets
            .iter()
            .map(|set| {
                let slot = |to| self.stored + copied.binary_search(&to).unwrap_or(0);
                set.iter().map(|&(to, _)| slot(to)).collect()
            })
            .collect();
        ActivePositions {
            positions: (0..self.stored).chain(copied).collect(),
            slots,
        }
    }

    /// (features, relative target, scale) of row i.
    #[inline]
    pub fn row(&self, i: usize) -> (Features<'_>, f64, f64) {
        let scale = self.scale[i];
        (self.features(i), self.units[i] / scale, scale)
    }

    #[inline]
    fn features(&self, i: usize) -> Features<'_> {
        let (start, end) = (self.starts[i] as usize, self.starts[i + 1] as usize);
        let set = usize::from(self.set_of[i]);
        Features {
            codes: self.codes[i],
            packed: &self.packed[start..end],
            stored: self.stored,
            set,
            copies: &self.copy_sets[set],
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Features<'_>, f64, f64)> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    pub fn units(&self) -> &[f64] {
        &self.units
    }

    /// The same rows with every row's units times `factor`: a store that lies about
    /// what it sold (the poisoning harness's data attack).
    pub fn with_units_scaled(&self, factor: f64) -> DemandRows {
        let mut rows = self.clone();
        rows.units.iter_mut().for_each(|u| *u *= factor);
        rows
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

    /// Rows of 40 kept values (past the coded 32) mixing 0, 1, -0 and others read
    /// back with the bits they were stored with, and act as the dense f32 row.
    #[test]
    fn coded_values_read_back_bit_for_bit() {
        let stored = 40;
        let mut rows = DemandRows::with_copies(45, stored, vec![(41, 3), (44, 35)]);
        let mut dense = Vec::new();
        let mut state = 7u64;
        for _ in 0..50 {
            let x: Vec<f64> = (0..stored)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    match state >> 61 {
                        0 | 1 => 0.0,
                        2 | 3 => 1.0,
                        4 => -0.0,
                        _ => (state >> 20) as f64 / 1e12 - 2.0,
                    }
                })
                .collect();
            rows.push(&x, 3.0, 1.5, 0.0);
            dense.push(x);
        }
        let w: Vec<f64> = (0..45).map(|j| j as f64 * 0.1 - 2.0).collect();
        for (i, x) in dense.iter().enumerate() {
            let (f, _, _) = rows.row(i);
            let mut full = vec![0.0f64; 45];
            for (j, &v) in x.iter().enumerate() {
                let v = v as f32;
                assert_eq!(
                    f.get(j).to_bits(),
                    f64::from(v).to_bits(),
                    "row {i} value {j}"
                );
                full[j] = f64::from(v);
            }
            full[41] = full[3];
            full[44] = full[35];
            let kept: f64 = full[..stored].iter().zip(&w).map(|(a, b)| a * b).sum();
            let copied = 0.0 + full[41] * w[41] + full[44] * w[44];
            assert_eq!(f.dot(&w), kept + copied);
            let mut active = vec![0.0; stored + 2];
            f.active_into(&rows.active_positions(), &mut active);
            assert_eq!(active[stored], full[41]);
        }
    }

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
        x.active_into(&rows.active_positions(), &mut active);
        assert_eq!(active, [1.0, 2.0, 3.0, 1.0, 3.0]);
    }

    #[test]
    fn rows_of_different_copy_sets_copy_to_their_own_positions() {
        // Model of 8: keep 2; every row copies kept 0 to 2; set a copies kept 1 to 4,
        // set b to 6 (two categories' season blocks, say).
        let mut rows = DemandRows::with_copies(8, 2, Vec::new());
        let a = rows.add_copy_set(vec![(2, 0), (4, 1)]);
        let b = rows.add_copy_set(vec![(2, 0), (6, 1)]);
        rows.push_in(a, &[1.0, 3.0], 1.0, 1.0, 0.0);
        rows.push_in(b, &[1.0, 5.0], 1.0, 1.0, 0.0);
        let at = rows.active_positions();
        assert_eq!(at.positions, vec![0, 1, 2, 4, 6]);
        let dense = [
            [1.0, 3.0, 1.0, 0.0, 3.0, 0.0, 0.0, 0.0],
            [1.0, 5.0, 1.0, 0.0, 0.0, 0.0, 5.0, 0.0],
        ];
        let w: Vec<f64> = (0..8).map(|j| j as f64 - 2.5).collect();
        for (i, want) in dense.iter().enumerate() {
            let (x, _, _) = rows.row(i);
            assert_eq!((0..8).map(|j| x.get(j)).collect::<Vec<_>>(), want);
            let dot: f64 = want.iter().zip(&w).map(|(a, b)| a * b).sum();
            assert_eq!(x.dot(&w), dot);
            let mut out = [0.0; 8];
            x.add_scaled(&mut out, 1.0);
            assert_eq!(&out, want);
            let mut active = [9.0; 5];
            x.active_into(&at, &mut active);
            let expected: Vec<f64> = at.positions.iter().map(|&p| want[p]).collect();
            assert_eq!(active.to_vec(), expected);
        }
    }
}
