//! Long vectors split across the machine's cores (rayon's pool). The coordinator's
//! ingest reads every value of every update, and one core cannot pull memory as fast
//! as all of them; short vectors stay on the calling thread.

use rayon::prelude::*;

/// Elements below which one thread does the work alone: handing work to the pool
/// costs microseconds, about what a core needs for this many values.
const MIN_PER_THREAD: usize = 1 << 17;

/// Length of each piece when `len` elements are split across the pool's threads
/// (the whole slice when it is short). The pool's threads persist, so a call does not
/// pay for starting threads, as a scoped spawn per call did.
fn piece_len(len: usize) -> usize {
    let threads = rayon::current_num_threads()
        .min(len / MIN_PER_THREAD)
        .max(1);
    len.div_ceil(threads).max(1)
}

/// `f` over `data` in contiguous pieces, one per thread; the results in order.
pub(crate) fn map_pieces<T: Sync, R: Send>(data: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let piece = piece_len(data.len());
    if piece >= data.len() {
        return vec![f(data)];
    }
    data.par_chunks(piece).map(&f).collect()
}

/// `f(piece, offset)` over `data` in contiguous pieces, one per thread; `offset` is
/// where the piece starts in `data`. The results in order.
pub(crate) fn map_pieces_mut<T: Send, R: Send>(
    data: &mut [T],
    f: impl Fn(&mut [T], usize) -> R + Sync,
) -> Vec<R> {
    let piece = piece_len(data.len());
    if piece >= data.len() {
        return vec![f(data, 0)];
    }
    let f = &f;
    data.par_chunks_mut(piece)
        .enumerate()
        .map(|(i, c)| f(c, i * piece))
        .collect()
}

/// [`map_pieces_mut`] for work that returns nothing.
pub(crate) fn for_pieces_mut<T: Send>(data: &mut [T], f: impl Fn(&mut [T], usize) + Sync) {
    map_pieces_mut(data, f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_data_once_and_in_order() {
        for len in [0, 5, MIN_PER_THREAD * 2 + 3, MIN_PER_THREAD * 5] {
            let data: Vec<u64> = (0..len as u64).collect();
            let sums = map_pieces(&data, |c| c.iter().sum::<u64>());
            assert_eq!(sums.iter().sum::<u64>(), data.iter().sum::<u64>());
            let firsts = map_pieces(&data, |c| c.first().copied());
            assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
            let mut marks = vec![0u64; len];
            for_pieces_mut(&mut marks, |c, offset| {
                for (i, m) in c.iter_mut().enumerate() {
                    *m += (offset + i) as u64;
                }
            });
            assert_eq!(marks, data);
        }
    }
}
