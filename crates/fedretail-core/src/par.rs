//! Long vectors split across the machine's cores. The coordinator's ingest reads
//! every value of every update, and one core cannot pull memory as fast as all of
//! them; short vectors stay on the calling thread.

use std::sync::OnceLock;

/// Elements below which one thread does the work alone: spawning a thread costs
/// tens of microseconds, about what a core needs for this many values.
const MIN_PER_THREAD: usize = 1 << 17;

/// Threads worth using on `len` elements.
fn threads_for(len: usize) -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores.min(len / MIN_PER_THREAD).max(1)
}

/// Re-raise a worker's panic on the calling thread.
fn joined<R>(result: std::thread::Result<R>) -> R {
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `f` over `data` in contiguous pieces, one per thread; the results in order.
pub(crate) fn map_pieces<T: Sync, R: Send>(data: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let threads = threads_for(data.len());
    if threads == 1 {
        return vec![f(data)];
    }
    let piece = data.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = data.chunks(piece).map(|c| s.spawn(move || f(c))).collect();
        handles.into_iter().map(|h| joined(h.join())).collect()
    })
}

/// `f(piece, offset)` over `data` in contiguous pieces, one per thread; `offset` is
/// where the piece starts in `data`.
pub(crate) fn for_pieces_mut<T: Send>(data: &mut [T], f: impl Fn(&mut [T], usize) + Sync) {
    let threads = threads_for(data.len());
    if threads == 1 {
        return f(data, 0);
    }
    let piece = data.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks_mut(piece)
            .enumerate()
            .map(|(i, c)| s.spawn(move || f(c, i * piece)))
            .collect();
        handles.into_iter().for_each(|h| joined(h.join()));
    })
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
