//! What several commands share: the async runtime, the synthetic network a command
//! generates when it is given no data, and the process's peak memory.

use anyhow::{Context, Result};
use clap::Args;
use fedretail_synth::{generate_network_with_progress, NetworkConfig};
use std::path::PathBuf;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    // Local training runs on the blocking pool. Tokio's default of 512 threads gave a
    // simulation of 1,000 stores 500 threads on this machine's 2 cores, each with its
    // own stack and allocator cache: 40 MB more peak memory, and no speed.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads((4 * cores).max(8))
        .build()
        .context("cannot start the async runtime")
}

#[derive(Args)]
pub struct NetworkArgs {
    /// Number of stores.
    #[arg(long, default_value_t = 40)]
    pub stores: usize,
    /// Days of history of a full-history store.
    #[arg(long, default_value_t = 730)]
    pub days: u32,
    /// Seed; the same seed writes the same network.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of stores that joined recently (8 weeks to 10 months of history).
    #[arg(long, default_value_t = 0.5)]
    pub young_fraction: f64,
    /// Stores that joined last, with 8 weeks of history (the cold start).
    #[arg(long, default_value_t = 1)]
    pub late_joiners: usize,
    /// Multiplies every store's traffic.
    #[arg(long, default_value_t = 1.0)]
    pub volume: f64,
    /// Fraction of stores in office districts (busy on working days, quiet at weekends
    /// and in summer), a difference their metadata does not declare.
    #[arg(long, default_value_t = 0.0)]
    pub office_fraction: f64,
    /// Do not inject labelled fraud and data-quality anomalies.
    #[arg(long)]
    pub no_anomalies: bool,
}

impl NetworkArgs {
    pub fn config(&self) -> NetworkConfig {
        NetworkConfig {
            stores: self.stores,
            days: self.days,
            seed: self.seed,
            young_fraction: self.young_fraction,
            late_joiners: self.late_joiners,
            volume: self.volume,
            office_fraction: self.office_fraction,
            anomalies: !self.no_anomalies,
            ..NetworkConfig::default()
        }
    }
}

pub(crate) fn generate_into(
    args: &NetworkArgs,
    out: &std::path::Path,
) -> Result<fedretail_synth::NetworkSummary> {
    let config = args.config();
    let bar = indicatif::ProgressBar::new(config.stores as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} stores")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix("generating");
    let summary = generate_network_with_progress(&config, out, &|_| bar.inc(1))
        .with_context(|| format!("generating network into {}", out.display()))?;
    bar.finish_and_clear();
    Ok(summary)
}

/// A network to run on: the one at `--data`, or a synthetic one generated.
#[derive(Args)]
pub struct SyntheticArgs {
    /// Network directory (one sub-directory per store) instead of a generated one.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where a generated network is written.
    #[arg(long, default_value = "fedretail-data/demo-network")]
    pub generate_into: PathBuf,
    #[command(flatten)]
    pub network: NetworkArgs,
}

impl SyntheticArgs {
    /// The network's directory, generated first when `--data` is not given.
    pub fn dir(&self) -> Result<PathBuf> {
        let Some(data) = &self.data else {
            let summary = generate_into(&self.network, &self.generate_into)?;
            eprintln!(
                "generated {} stores ({} lines) in {}",
                summary.stores.len(),
                summary.lines,
                self.generate_into.display()
            );
            return Ok(self.generate_into.clone());
        };
        Ok(data.clone())
    }
}

/// This process's peak resident memory so far (Linux), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
