//! `fedretail bench aggregate`: the coordinator's ingest of FedAvg updates, measured
//! path by path (median of the repetitions; GB/s of f32 update data consumed).

use anyhow::{bail, Result};
use fedretail_core::{
    decode_checked, validate_update, StreamingWeightedSum, UpdateLimits, UpdateVector,
};
use std::time::Instant;

/// The bound every real update is checked against (see the coordinator's
/// `UpdateCheck::limits`): it makes the check read every value for the norm.
const BOUNDED: UpdateLimits = UpdateLimits {
    max_l2_norm: Some(f64::MAX),
};

pub fn run(updates: usize, dim: usize, repeat: usize) -> Result<()> {
    if updates == 0 || dim == 0 || repeat == 0 {
        bail!("updates, dim and repeat must be >= 1");
    }
    keep_freed_memory();
    let data = random_updates(updates, dim);
    let wire: Vec<Vec<u8>> = data
        .iter()
        .map(|u| u.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut t = Timings::default();
    let mut checksum = 0.0;
    for _ in 0..repeat {
        t.validate_finite
            .push(validate_all(&data, dim, UpdateLimits::default())?);
        t.validate_norm.push(validate_all(&data, dim, BOUNDED)?);
        let (seconds, fold) = fold_decoded(&data, dim, false)?;
        t.fold.push(seconds);
        t.validate_then_fold.push(fold_decoded(&data, dim, true)?.0);
        t.wire_before.push(fold_wire(&wire, dim, false)?.0);
        t.wire_decode_checked.push(fold_wire(&wire, dim, true)?.0);
        let (seconds, checked) = fold_wire_one_pass(&wire, dim)?;
        t.wire_one_pass.push(seconds);
        let (seconds, reference) = per_update_reference(&data, dim);
        t.reference.push(seconds);
        checksum += (fold - reference).abs() + (checked - reference).abs();
    }
    let out = t.report(updates, dim, repeat, checksum);
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Every path consumes its updates and frees each one once folded. With glibc's
/// defaults each free of a long update unmaps its pages and the next copy faults them
/// in again, which costs more than the fold and varies from run to run; a
/// long-running coordinator's allocator soon keeps such blocks. Keeping them here
/// makes every path timed on the ingest itself, all on the same footing.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any timing.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Deterministic, cheap pseudo-random updates (xorshift) in [-0.5, 0.5).
fn random_updates(updates: usize, dim: usize) -> Vec<Vec<f32>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..updates)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

fn validate_all(data: &[Vec<f32>], dim: usize, limits: UpdateLimits) -> Result<f64> {
    let batch: Vec<UpdateVector> = data.iter().map(|u| UpdateVector::F32(u.clone())).collect();
    let t = Instant::now();
    for u in &batch {
        validate_update(u, dim, &limits)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Decoded updates moved into the streaming sum as they would arrive (the clones are
/// made before the clock starts), each checked first when `check`. Returns the
/// seconds and one coordinate of the sum.
fn fold_decoded(data: &[Vec<f32>], dim: usize, check: bool) -> Result<(f64, f64)> {
    let batch: Vec<UpdateVector> = data.iter().map(|u| UpdateVector::F32(u.clone())).collect();
    let t = Instant::now();
    let mut sum = StreamingWeightedSum::new(dim);
    for (i, u) in batch.into_iter().enumerate() {
        if check {
            validate_update(&u, dim, &BOUNDED)?;
        }
        sum.push(u, 1.0 + i as f64)?;
    }
    let agg = sum.finish();
    Ok((t.elapsed().as_secs_f64(), agg.weighted_sum[dim / 2]))
}

/// The path a real update takes, from its wire bytes to the sum: moved into the sum
/// as they arrived (the copies are made before the clock starts, as the decoded
/// updates' are) and folded and checked in one pass over the bytes, a batch at a time.
fn fold_wire_one_pass(wire: &[Vec<u8>], dim: usize) -> Result<(f64, f64)> {
    let owned: Vec<Vec<u8>> = wire.to_vec();
    let t = Instant::now();
    let mut sum = StreamingWeightedSum::new(dim);
    for (i, bytes) in owned.into_iter().enumerate() {
        sum.push_wire(bytes, 1.0 + i as f64, BOUNDED, i as u64)?;
    }
    sum.settle();
    if let Some((ticket, Err(e))) = sum.take_verdicts().into_iter().find(|v| v.1.is_err()) {
        bail!("update {ticket} was refused: {e}");
    }
    let agg = sum.finish();
    Ok((t.elapsed().as_secs_f64(), agg.weighted_sum[dim / 2]))
}

/// The paths updates took before, from their wire bytes to the sum: decoded and
/// checked in one pass into a buffer, then folded (`checked`); or decoded into
/// a fresh vector, then checked, then folded.
fn fold_wire(wire: &[Vec<u8>], dim: usize, checked: bool) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut sum = StreamingWeightedSum::new(dim);
    for (i, bytes) in wire.iter().enumerate() {
        let update = if checked {
            UpdateVector::F32(decode_checked(bytes, dim, &BOUNDED)?)
        } else {
            let update = UpdateVector::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
            validate_update(&update, dim, &BOUNDED)?;
            update
        };
        sum.push(update, 1.0 + i as f64)?;
    }
    let agg = sum.finish();
    Ok((t.elapsed().as_secs_f64(), agg.weighted_sum[dim / 2]))
}

/// One pass over the accumulator per update, on one thread, consuming (and freeing)
/// owned updates as the streaming path does: what the batching is measured against,
/// and a check of its sum.
fn per_update_reference(data: &[Vec<f32>], dim: usize) -> (f64, f64) {
    let owned: Vec<Vec<f32>> = data.to_vec();
    let t = Instant::now();
    let mut acc = vec![0.0f64; dim];
    for (i, u) in owned.into_iter().enumerate() {
        let w = 1.0 + i as f64;
        for (a, &x) in acc.iter_mut().zip(&u) {
            *a += w * x as f64;
        }
    }
    (t.elapsed().as_secs_f64(), acc[dim / 2])
}

#[derive(Default)]
struct Timings {
    validate_finite: Vec<f64>,
    validate_norm: Vec<f64>,
    fold: Vec<f64>,
    validate_then_fold: Vec<f64>,
    wire_before: Vec<f64>,
    wire_decode_checked: Vec<f64>,
    wire_one_pass: Vec<f64>,
    reference: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Timings {
    fn report(self, updates: usize, dim: usize, repeat: usize, checksum: f64) -> serde_json::Value {
        let bytes = (updates * dim * 4) as f64;
        let row = |seconds: f64| serde_json::json!({ "median_seconds": seconds, "gb_per_s": bytes / seconds / 1e9 });
        let fold = median(self.fold);
        let one_pass = median(self.wire_one_pass);
        let before = median(self.wire_before);
        serde_json::json!({
            "bench": "aggregate",
            "updates": updates,
            "dim": dim,
            "dtype": "f32",
            "update_bytes": bytes as u64,
            "repeat": repeat,
            "streaming_fedavg": row(fold),
            "validate_finite": row(median(self.validate_finite)),
            "validate_finite_and_norm": row(median(self.validate_norm)),
            "validate_then_fold": row(median(self.validate_then_fold)),
            "wire_decode_then_validate_then_fold": row(before),
            "wire_decode_and_validate_then_fold": row(median(self.wire_decode_checked)),
            "wire_one_pass_fold_and_validate": row(one_pass),
            "one_pass_speedup_over_before": before / one_pass,
            "one_pass_over_plain_fold": fold / one_pass,
            "one_pass_per_update_reference": row(median(self.reference)),
            "accumulator_bytes": dim * 8,
            "sums_minus_reference": checksum,
        })
    }
}
