//! `fedretail bench scale`: the whole demand job at growing network sizes. Each size
//! is generated, then trained by a `fedretail demo` child process (a coordinator and
//! one agent per store over gRPC on 127.0.0.1), so every size starts from a fresh
//! process and its peak memory is its own. Each agent has its own connection unless
//! the process's open-file limit cannot hold two sockets a store; then the agents
//! share as many connections as it can hold, and the row says how many.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the sizes are run with.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Network sizes, in stores (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    pub stores: Vec<u32>,
    /// FedAvg rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Days of history of a full-history store.
    #[arg(long, default_value_t = 180)]
    pub days: u32,
    /// Traffic multiplier (0.2: small stores).
    #[arg(long, default_value_t = 0.2)]
    pub volume: f64,
    /// Seed of the generated networks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the networks are generated (each is deleted after its run); a scratch
    /// folder under the system's temporary directory by default.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub fn run(args: ScaleArgs) -> Result<()> {
    if args.stores.is_empty() || args.rounds == 0 {
        bail!("give at least one network size and at least one round");
    }
    let root = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fedretail-scale-{}", std::process::id()))
    });
    let mut rows = Vec::new();
    for &n in &args.stores {
        let connections = match connections_for(n, open_file_limit()) {
            Ok(k) => k,
            Err(reason) => {
                eprintln!("{n} stores: skipped, {reason}");
                rows.push(serde_json::json!({ "stores": n, "skipped": reason }));
                continue;
            }
        };
        let dir = root.join(format!("scale-{n}"));
        generate(&args, n, &dir)?;
        let row = train(&args, n, connections, &dir);
        // The network is large and a later size does not need it.
        let _ = std::fs::remove_dir_all(&dir);
        let row = row?;
        eprintln!("{n} stores: {}", row);
        rows.push(row);
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    let out = serde_json::json!({
        "bench": "scale",
        "strategy": "fedavg",
        "rounds": args.rounds,
        "days": args.days,
        "volume": args.volume,
        "seed": args.seed,
        "rows": rows,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn fedretail() -> Result<Command> {
    let exe = std::env::current_exe().context("finding the fedretail executable")?;
    Ok(Command::new(exe))
}

fn generate(args: &ScaleArgs, n: u32, dir: &Path) -> Result<()> {
    let status = fedretail()?
        .args(["generate", "--stores", &n.to_string()])
        .args(["--days", &args.days.to_string()])
        .args(["--volume", &args.volume.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running fedretail generate")?;
    if !status.success() {
        bail!("generating {n} stores failed ({status})");
    }
    Ok(())
}

/// One size's JSON row, from the demo's own report.
fn train(args: &ScaleArgs, n: u32, connections: u32, dir: &Path) -> Result<serde_json::Value> {
    let mut demo = fedretail()?;
    demo.args(["demo", "--strategy", "fedavg", "--json", "--no-dashboard"])
        .args(["--rounds", &args.rounds.to_string()])
        .arg("--data")
        .arg(dir);
    if connections < n {
        demo.args(["--connections", &connections.to_string()]);
    }
    let out = demo
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running fedretail demo")?;
    if !out.status.success() {
        bail!("training {n} stores failed ({})", out.status);
    }
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the demo's JSON report")?;
    let get = |k: &str| report.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    // The rounds' own seconds: the federated phase also connects the agents and
    // computes each store's results.
    let history = report.get("round_history").and_then(|h| h.as_array());
    let round_seconds: f64 = history
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("seconds").and_then(|s| s.as_f64()))
        .sum();
    let stores = report
        .get("stores")
        .and_then(|s| s.as_array())
        .map_or(0, Vec::len);
    Ok(serde_json::json!({
        "stores": n,
        "stores_trained": stores,
        "connections": connections,
        "wall_seconds": get("wall_seconds"),
        "features_seconds": get("prepare_seconds"),
        "federated_seconds": get("federated_seconds"),
        "rounds_per_second": get("rounds") / round_seconds,
        "bytes_up": get("bytes_up"),
        "bytes_down": get("bytes_down"),
        "peak_rss_mib": get("peak_rss_bytes") / (1u64 << 20) as f64,
    }))
}

/// Open files kept for everything but the agents' connections (exports, the
/// checkpoint database, the runtime).
const OTHER_FILES: u64 = 1024;

/// How many connections `n` agents get: one each (two sockets a store, the agent's
/// and the coordinator's end) if `limit` allows, else as many as it holds, shared.
fn connections_for(n: u32, limit: Option<u64>) -> Result<u32, String> {
    let Some(limit) = limit else {
        return Ok(n);
    };
    let room = limit.saturating_sub(OTHER_FILES) / 2;
    if room == 0 {
        return Err(format!(
            "this process may open {limit} files (ulimit -n), too few for any connection"
        ));
    }
    Ok(room.min(u64::from(n)) as u32)
}

/// The soft limit on open files (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_share_connections_only_when_the_file_limit_is_short() {
        assert_eq!(connections_for(1000, Some(20_000)), Ok(1000));
        assert_eq!(connections_for(10_000, Some(20_000)), Ok(9488));
        assert_eq!(connections_for(10_000, None), Ok(10_000));
        assert!(connections_for(10, Some(100)).is_err());
    }
}
