//! Spare buffers. A folded update's memory is handed to the next update's decode, and
//! a finished round's accumulator to the next round's, so large vectors reuse warm
//! pages instead of faulting in fresh ones: under `perf record`, faults were about
//! 40 % of the ingest's time before.
//! Memory stays O(model size): at most `MAX_SPARE` update buffers and
//! `MAX_SPARE_ACCUMULATORS` accumulators are kept.

use std::sync::Mutex;

/// Shorter vectors are cheap to allocate; only long ones are kept.
const MIN_LEN: usize = 1 << 16;
/// Two fold batches' worth.
const MAX_SPARE: usize = 16;
/// Rounds of a few jobs at once.
const MAX_SPARE_ACCUMULATORS: usize = 4;

/// Long vectors kept for reuse, at most `max` of them.
struct SparePool<T> {
    spare: Mutex<Vec<Vec<T>>>,
    max: usize,
}

static SPARE_F32: SparePool<f32> = SparePool::new(MAX_SPARE);
static SPARE_F64: SparePool<f64> = SparePool::new(MAX_SPARE_ACCUMULATORS);

impl<T> SparePool<T> {
    const fn new(max: usize) -> Self {
        SparePool {
            spare: Mutex::new(Vec::new()),
            max,
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Vec<T>>> {
        // A panic elsewhere cannot leave a list of buffers inconsistent.
        self.spare.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, len: usize) -> Option<Vec<T>> {
        if len < MIN_LEN {
            return None;
        }
        let mut spare = self.spares();
        let at = spare.iter().position(|v| v.len() == len)?;
        Some(spare.swap_remove(at))
    }

    fn give(&self, values: Vec<T>) {
        if values.len() < MIN_LEN {
            return;
        }
        let mut spare = self.spares();
        if spare.len() < self.max {
            spare.push(values);
        }
    }
}

/// A spare buffer of exactly `len` values (its contents are stale), if one is kept.
pub(crate) fn take_f32(len: usize) -> Option<Vec<f32>> {
    SPARE_F32.take(len)
}

/// Keeps `values` for a later [`take_f32`] if it is long and there is room.
pub(crate) fn give_f32(values: Vec<f32>) {
    SPARE_F32.give(values)
}

/// `len` zeros, in a kept accumulator when there is one (zeroing it is a fraction of
/// faulting in fresh pages).
pub(crate) fn zeroed_f64(len: usize) -> Vec<f64> {
    SPARE_F64.zeroed(len)
}

impl SparePool<f64> {
    fn zeroed(&self, len: usize) -> Vec<f64> {
        match self.take(len) {
            Some(mut acc) => {
                acc.fill(0.0);
                acc
            }
            None => vec![0.0; len],
        }
    }
}

/// Keeps a finished round's accumulator for a later [`zeroed_f64`].
pub(crate) fn give_f64(values: Vec<f64>) {
    SPARE_F64.give(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_only_for_its_length_and_the_pool_is_bounded() {
        // A pool of its own: the process-wide one is shared with tests running alongside.
        let pool = SparePool::<f32>::new(MAX_SPARE);
        let len = MIN_LEN + 12_345;
        pool.give(vec![1.0; len]);
        assert!(pool.take(len + 1).is_none());
        assert_eq!(pool.take(len).map(|v| v.len()), Some(len));
        assert!(pool.take(len).is_none());
        pool.give(vec![1.0; 10]);
        assert!(pool.take(10).is_none());
        for _ in 0..MAX_SPARE + 5 {
            pool.give(vec![0.0; len]);
        }
        let mut back = 0;
        while pool.take(len).is_some() {
            back += 1;
        }
        assert_eq!(back, MAX_SPARE);
    }

    #[test]
    fn a_kept_accumulator_comes_back_zeroed() {
        let pool = SparePool::<f64>::new(MAX_SPARE_ACCUMULATORS);
        let len = MIN_LEN + 777;
        pool.give(vec![3.0; len]);
        let acc = pool.zeroed(len);
        assert_eq!(acc.len(), len);
        assert!(acc.iter().all(|&v| v == 0.0));
        // It was the kept one: the pool is empty again, and a miss is zeros too.
        assert!(pool.take(len).is_none());
        assert!(pool.zeroed(len).iter().all(|&v| v == 0.0));
    }
}
