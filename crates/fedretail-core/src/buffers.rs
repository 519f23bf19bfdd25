//! Spare update buffers. A folded update's memory is handed to the next update's
//! decode, so a steady stream of large updates reuses warm pages instead of faulting
//! in fresh ones: page faults were about 40 % of the ingest's time before.
//! Memory stays O(model size): at most `MAX_SPARE` buffers are kept.

use std::sync::Mutex;

/// Shorter vectors are cheap to allocate; only long ones are kept.
const MIN_LEN: usize = 1 << 16;
/// Two fold batches' worth.
const MAX_SPARE: usize = 16;

/// Buffers of folded updates, kept for later decodes.
struct SparePool(Mutex<Vec<Vec<f32>>>);

static SPARE_F32: SparePool = SparePool(Mutex::new(Vec::new()));

impl SparePool {
    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A panic elsewhere cannot leave a list of buffers inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, len: usize) -> Option<Vec<f32>> {
        if len < MIN_LEN {
            return None;
        }
        let mut spare = self.spares();
        let at = spare.iter().position(|v| v.len() == len)?;
        Some(spare.swap_remove(at))
    }

    fn give(&self, values: Vec<f32>) {
        if values.len() < MIN_LEN {
            return;
        }
        let mut spare = self.spares();
        if spare.len() < MAX_SPARE {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_only_for_its_length_and_the_pool_is_bounded() {
        // A pool of its own: the process-wide one is shared with tests running alongside.
        let pool = SparePool(Mutex::new(Vec::new()));
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
}
