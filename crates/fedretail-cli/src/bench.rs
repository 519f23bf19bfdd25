//! `fedretail bench`: performance measured, printed as JSON.

use anyhow::{bail, Result};
use clap::Subcommand;
use fedretail_core::{validate_update, StreamingWeightedSum, UpdateLimits, UpdateVector};
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Streaming FedAvg aggregation throughput: GB/s of f32 update data consumed.
    Aggregate {
        /// Updates per round (stores replying).
        #[arg(long, default_value_t = 100)]
        updates: usize,
        /// Parameters per update.
        #[arg(long, default_value_t = 1_000_000)]
        dim: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Aggregate {
            updates,
            dim,
            repeat,
        } => aggregate(updates, dim, repeat),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn aggregate(updates: usize, dim: usize, repeat: usize) -> Result<()> {
    if updates == 0 || dim == 0 || repeat == 0 {
        bail!("updates, dim and repeat must be >= 1");
    }
    // Deterministic, cheap pseudo-random updates (xorshift), built once.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<Vec<f32>> = (0..updates)
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
        .collect();
    let bytes = (updates * dim * 4) as f64;
    let mut streaming = Vec::new();
    let mut validate = Vec::new();
    let mut naive = Vec::new();
    let mut checksum = 0.0;
    for _ in 0..repeat {
        // Updates are moved in as they would arrive off the wire; the clone happens
        // before the clock starts.
        let batch: Vec<UpdateVector> = data.iter().map(|u| UpdateVector::F32(u.clone())).collect();
        let t = Instant::now();
        for u in &batch {
            validate_update(u, dim, &UpdateLimits::default())?;
        }
        validate.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let mut sum = StreamingWeightedSum::new(dim);
        for (i, u) in batch.into_iter().enumerate() {
            sum.push(u, 1.0 + i as f64)?;
        }
        let agg = sum.finish();
        streaming.push(t.elapsed().as_secs_f64());
        checksum += agg.weighted_sum[dim / 2];

        // Reference: one pass over the accumulator per update, consuming (and freeing)
        // owned updates as the streaming path does.
        let owned: Vec<Vec<f32>> = data.to_vec();
        let t = Instant::now();
        let mut acc = vec![0.0f64; dim];
        for (i, u) in owned.into_iter().enumerate() {
            let w = 1.0 + i as f64;
            for (a, &x) in acc.iter_mut().zip(&u) {
                *a += w * x as f64;
            }
        }
        naive.push(t.elapsed().as_secs_f64());
        checksum -= acc[dim / 2];
    }
    let (s, v, n) = (median(streaming), median(validate), median(naive));
    let out = serde_json::json!({
        "bench": "aggregate",
        "updates": updates,
        "dim": dim,
        "dtype": "f32",
        "update_bytes": bytes as u64,
        "repeat": repeat,
        "streaming_fedavg": { "median_seconds": s, "gb_per_s": bytes / s / 1e9 },
        "validate_finite": { "median_seconds": v, "gb_per_s": bytes / v / 1e9 },
        "validate_then_aggregate_gb_per_s": bytes / (s + v) / 1e9,
        "one_pass_per_update_reference": { "median_seconds": n, "gb_per_s": bytes / n / 1e9 },
        "accumulator_bytes": dim * 8,
        "streaming_minus_reference_checksum": checksum,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
