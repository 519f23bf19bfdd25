//! `fedretail bench`: performance measured, printed as JSON.

use anyhow::{bail, Result};
use clap::Subcommand;
use fedretail_core::{StreamingWeightedSum, UpdateVector};
use fedretail_privacy::secagg::MaskPrg;
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
    /// SecAgg+ against plain FedAvg: per-store and coordinator compute, bytes per
    /// store, for each (stores, dimension, dropout rate); one JSON row per setting.
    Secagg {
        /// Simulated stores per round (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        stores: Vec<u32>,
        /// Update length in 32-bit words (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        dims: Vec<usize>,
        /// Share of stores that deal their shares and then vanish before sending a
        /// masked input (comma-separated); the neighbour graph is sized for it.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.3")]
        dropouts: Vec<f64>,
        /// Stream ciphers to expand the masks with (comma-separated): aes128_ctr
        /// (hardware AES where the CPU has it), chacha20 (SIMD).
        #[arg(long, value_delimiter = ',', default_value = "aes128_ctr,chacha20")]
        prgs: Vec<MaskPrg>,
        /// Enrolled stores: each signs its keys (Ed25519), checks its neighbours'
        /// against the roster, and the round runs the consistency check.
        #[arg(long)]
        signed: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The whole demand job at growing network sizes: each is generated, then trained
    /// with FedAvg by a `fedretail demo` child process over real gRPC. Features and
    /// training are timed apart; bytes, rounds per second and the child's peak memory
    /// are reported, one JSON row per size.
    Scale(crate::scale::ScaleArgs),
    /// Many agents connected at once to one coordinator process on 127.0.0.1, each on
    /// its own connection, through a FedAvg job: the coordinator's peak memory and
    /// round latency (the agents answer at once, so the coordinator is what is timed).
    Load(crate::load::LoadArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Aggregate {
            updates,
            dim,
            repeat,
        } => crate::ingest::run(updates, dim, repeat),
        BenchCommand::Secagg {
            stores,
            dims,
            dropouts,
            prgs,
            signed,
            seed,
        } => secagg(&stores, &dims, &dropouts, &prgs, signed, seed),
        BenchCommand::Scale(args) => crate::scale::run(args),
        BenchCommand::Load(args) => crate::load::run(args),
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn secagg(
    stores: &[u32],
    dims: &[usize],
    dropouts: &[f64],
    prgs: &[MaskPrg],
    signed: bool,
    seed: u64,
) -> Result<()> {
    let mut rows = Vec::new();
    for &n in stores {
        for &dim in dims {
            let mut state = seed | 1;
            let fedavg_seconds = fedavg_fold_seconds(n, dim, &mut state)?;
            for &rate in dropouts {
                for &prg in prgs {
                    let case = SecAggCase {
                        n,
                        dim,
                        rate,
                        prg,
                        signed,
                        seed,
                    };
                    rows.push(case.run(fedavg_seconds, &mut state)?);
                }
            }
        }
    }
    let out = serde_json::json!({ "bench": "secagg", "seed": seed, "rows": rows });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Plain FedAvg for comparison: each store sends and receives `dim` f32; the
/// coordinator folds them into the streaming weighted sum.
fn fedavg_fold_seconds(n: u32, dim: usize, state: &mut u64) -> Result<f64> {
    let update: Vec<f32> = (0..dim)
        .map(|_| (xorshift(state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let t = Instant::now();
    let mut sum = StreamingWeightedSum::new(dim);
    for i in 0..n {
        sum.push(UpdateVector::F32(update.clone()), 1.0 + i as f64)?;
    }
    let seconds = t.elapsed().as_secs_f64();
    std::hint::black_box(sum.finish());
    Ok(seconds)
}

/// One SecAgg+ round: stores, dimension, dropout rate, mask PRG.
struct SecAggCase {
    n: u32,
    dim: usize,
    rate: f64,
    prg: MaskPrg,
    signed: bool,
    seed: u64,
}

impl SecAggCase {
    /// Runs the round (checking the unmasked sum is exact) and returns its JSON row.
    fn run(&self, fedavg_seconds: f64, state: &mut u64) -> Result<serde_json::Value> {
        use fedretail_privacy::secagg::{
            simulate_round, simulate_signed_round, DropoutPlan, SecAggConfig,
        };
        let SecAggCase {
            n,
            dim,
            rate,
            prg,
            signed,
            seed,
        } = *self;
        let config = SecAggConfig {
            prg,
            ..SecAggConfig::for_network_tolerating(n, dim, seed, rate)?
        };
        let dropped_count = (rate * n as f64).round() as usize;
        let mut order: Vec<u32> = (0..n).collect();
        for i in (1..order.len()).rev() {
            let j = (xorshift(state) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let plan = DropoutPlan {
            before_masking: order[..dropped_count].iter().copied().collect(),
            ..Default::default()
        };
        // The expected sum is built alongside, so the bench also checks that the
        // unmasked sum is exact.
        let mut expected = vec![0u32; dim];
        let mut input_state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let started = Instant::now();
        let input = |_: u32, words: &mut [u32]| {
            for (w, e) in words.iter_mut().zip(expected.iter_mut()) {
                *w = xorshift(&mut input_state) as u32;
                *e = e.wrapping_add(*w);
            }
        };
        let (outcome, cost) = if signed {
            simulate_signed_round(&config, &plan, seed, input)?
        } else {
            simulate_round(&config, &plan, seed, input)?
        };
        let wall = started.elapsed().as_secs_f64();
        if outcome.sum != expected {
            bail!("SecAgg+ sum differs from the plain sum for n={n}, d={dim}, dropout={rate}");
        }
        let expansion = cost.store_bytes_up / (4 * dim) as f64;
        eprintln!(
            "n={n:>5} d={dim:>7} drop={rate:.2} k={:>3} {prg:<10}: store {:.3}s, coordinator {:.3}s (FedAvg {:.4}s), round {wall:.3}s, up {:.2}x",
            config.neighbours, cost.store_seconds_mean, cost.coordinator_seconds, fedavg_seconds, expansion
        );
        Ok(serde_json::json!({
            "stores": n,
            "dimension": dim,
            "dropout_rate": rate,
            "mask_prg": prg.name(),
            "signed": signed,
            "dropped": dropped_count,
            "neighbours": config.neighbours,
            "threshold": config.threshold,
            "secagg": {
                "store_seconds_mean": cost.store_seconds_mean,
                "store_seconds_max": cost.store_seconds_max,
                "coordinator_seconds": cost.coordinator_seconds,
                "store_bytes_up": cost.store_bytes_up,
                "store_bytes_down": cost.store_bytes_down,
                "simulation_wall_seconds": wall,
                "sum_exact": true,
            },
            "fedavg": {
                "coordinator_seconds": fedavg_seconds,
                "store_bytes_up": 4 * dim,
                "store_bytes_down": 4 * dim,
            },
            "expansion_up": expansion,
        }))
    }
}
