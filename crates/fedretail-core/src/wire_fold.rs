//! A fold batch in which some updates are still in their wire bytes. Their values are
//! checked in the very pass that folds them, so the batch is folded before their
//! verdicts are known: into the second accumulator (`dst = src + batch`), leaving the
//! first untouched. A refused update costs one more fold of the batch without it; the
//! sum is then bit for bit the one it would have been had the update never arrived.

use crate::error::UpdateRejection;
use crate::kernels::{axpy_dispatch, fold_wire_dispatch, BLOCK};
use crate::par::map_pieces_mut;
use crate::update::UpdateVector;
use crate::validate::{judge_norm, name_non_finite_wire, UpdateLimits};

/// One update waiting in a fold batch.
#[derive(Debug)]
pub(crate) enum Entry {
    Decoded(UpdateVector),
    /// Little-endian f32 values, checked against `limits` when folded; `ticket` names
    /// the update in its verdict.
    Wire {
        bytes: Vec<u8>,
        limits: UpdateLimits,
        ticket: u64,
    },
}

impl Entry {
    pub(crate) fn is_wire(&self) -> bool {
        matches!(self, Entry::Wire { .. })
    }

    fn wire_bytes(&self) -> &[u8] {
        match self {
            Entry::Wire { bytes, .. } => bytes,
            Entry::Decoded(_) => &[],
        }
    }
}

/// `dst = src + sum of the batch`, each element in the batch's order; returns each
/// entry's sum of squares (0 for decoded entries, which were checked on arrival).
pub(crate) fn fold_from(dst: &mut [f64], src: &[f64], batch: &[(Entry, f64)]) -> Vec<f64> {
    let pieces = map_pieces_mut(dst, |piece, offset| {
        fold_piece(piece, &src[offset..offset + piece.len()], batch, offset)
    });
    let mut squares = vec![0.0; batch.len()];
    for piece in pieces {
        for (total, part) in squares.iter_mut().zip(piece) {
            *total += part;
        }
    }
    squares
}

/// The verdict on each wire entry of the batch, from its sum of squares: the entries
/// refused, by position in the batch.
pub(crate) fn judge(batch: &[(Entry, f64)], squares: &[f64]) -> Vec<(usize, UpdateRejection)> {
    let mut refused = Vec::new();
    for (i, ((entry, _), &sq)) in batch.iter().zip(squares).enumerate() {
        if let Entry::Wire { bytes, limits, .. } = entry {
            if let Err(e) = judge_norm(sq.sqrt(), limits, || name_non_finite_wire(bytes)) {
                refused.push((i, e));
            }
        }
    }
    refused
}

/// [`fold_from`] over the accumulator slice starting at `offset`, a cache block at a
/// time.
fn fold_piece(dst: &mut [f64], src: &[f64], batch: &[(Entry, f64)], offset: usize) -> Vec<f64> {
    let mut squares = vec![0.0; batch.len()];
    let n = dst.len();
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let (d, s) = (&mut dst[start..end], &src[start..end]);
        fold_block(d, s, batch, offset + start, &mut squares);
        start = end;
    }
    squares
}

/// `d = s + batch` over one block, whose first element is the update's element `lo`;
/// adds each wire entry's squares to `squares`. Consecutive wire entries go
/// `WIRE_FUSE` at a time; the first group reads `s`, so the block is copied only when
/// the batch starts with a decoded entry.
fn fold_block(d: &mut [f64], s: &[f64], batch: &[(Entry, f64)], lo: usize, squares: &mut [f64]) {
    let hi = lo + d.len();
    let mut started = false;
    let mut i = 0;
    while i < batch.len() {
        let run = batch[i..]
            .iter()
            .take(WIRE_FUSE)
            .take_while(|(e, _)| e.is_wire())
            .count();
        if run == 0 && !started {
            d.copy_from_slice(s);
        }
        if run > 0 {
            let from = (!started).then_some(s);
            let q = fold_wire_group(d, from, &batch[i..i + run], 4 * lo..4 * hi);
            for (total, part) in squares[i..i + run].iter_mut().zip(q) {
                *total += part;
            }
        } else if let (Entry::Decoded(update), w) = &batch[i] {
            match update {
                UpdateVector::F32(v) => axpy_dispatch(d, &v[lo..hi], *w),
                UpdateVector::F64(v) => axpy_dispatch(d, &v[lo..hi], *w),
            }
        }
        started = true;
        i += run.max(1);
    }
    if !started {
        d.copy_from_slice(s);
    }
}

/// Wire updates folded in one pass over an accumulator block: a whole batch, so the
/// block is read from `src` and written once.
const WIRE_FUSE: usize = 8;

/// One group of 1..=`WIRE_FUSE` wire entries folded into `d` over the byte range
/// `bytes`.
fn fold_wire_group(
    d: &mut [f64],
    from: Option<&[f64]>,
    group: &[(Entry, f64)],
    bytes: std::ops::Range<usize>,
) -> Vec<f64> {
    match group.len() {
        1 => fused::<1>(d, from, group, bytes),
        2 => fused::<2>(d, from, group, bytes),
        3 => fused::<3>(d, from, group, bytes),
        4 => fused::<4>(d, from, group, bytes),
        5 => fused::<5>(d, from, group, bytes),
        6 => fused::<6>(d, from, group, bytes),
        7 => fused::<7>(d, from, group, bytes),
        _ => fused::<WIRE_FUSE>(d, from, group, bytes),
    }
}

fn fused<const K: usize>(
    d: &mut [f64],
    from: Option<&[f64]>,
    group: &[(Entry, f64)],
    bytes: std::ops::Range<usize>,
) -> Vec<f64> {
    let xs = std::array::from_fn(|k| &group[k].0.wire_bytes()[bytes.clone()]);
    let ws = std::array::from_fn(|k| group[k].1);
    fold_wire_dispatch::<K>(d, from, xs, ws).to_vec()
}
