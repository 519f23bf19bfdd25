//! `fedretail bench load`: many agents connected at once to one coordinator process
//! on 127.0.0.1, each with its own connection, through a FedAvg demand job. The
//! coordinator runs as a child process, so its peak memory is its own; the agents run
//! in this process with a stand-in task that answers at once (what is measured is the
//! coordinator under that many live stores, not the stores' training).

use anyhow::{bail, Context, Result};
use fedretail_agent::{AgentConfig, StoreAgent};
use fedretail_core::{LocalWork, ModelLayout, TaskKind};
use fedretail_models::{demand_layout, FixedTasks, LocalTask, TaskError, TaskMetrics};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Agents connected at once, each with its own HTTP/2 connection.
    #[arg(long, default_value_t = 1000)]
    pub agents: u32,
    /// FedAvg rounds, every agent in every round.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Give up (and kill the coordinator) after this long.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// A store that answers every round at once with a small fixed delta.
struct StandIn {
    delta: Vec<f64>,
}

impl LocalTask for StandIn {
    fn task_name(&self) -> &'static str {
        "demand"
    }
    fn layout(&self) -> ModelLayout {
        demand_layout()
    }
    fn num_train_examples(&self) -> u64 {
        100
    }
    fn compute_update(&self, _: &[f64], _: &LocalWork) -> Result<Vec<f64>, TaskError> {
        Ok(self.delta.clone())
    }
    fn evaluate(&self, _: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok(TaskMetrics::new())
    }
}

pub fn run(args: LoadArgs) -> Result<()> {
    if args.agents == 0 || args.rounds == 0 {
        bail!("give at least one agent and one round");
    }
    let dir = std::env::temp_dir().join(format!("fedretail-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("making a scratch folder")?;
    let result = measure(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

fn measure(args: &LoadArgs, dir: &Path) -> Result<serde_json::Value> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = write_config(dir, port, args)?;
    let report = dir.join("outcome.json");
    let start = Instant::now();
    let exe = std::env::current_exe().context("finding the fedretail executable")?;
    let mut coordinator = Command::new(exe)
        .args(["coordinator", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the coordinator")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let agents = runtime.block_on(async { spawn_agents(port, args.agents) });
    let peak = watch(&mut coordinator, Duration::from_secs(args.timeout_secs))?;
    let wall = start.elapsed().as_secs_f64();
    runtime.block_on(async {
        for a in agents {
            a.abort();
        }
    });
    let outcome: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report).context("reading the coordinator's report")?,
    )?;
    Ok(row(args, &outcome, peak, wall))
}

fn write_config(dir: &Path, port: u16, args: &LoadArgs) -> Result<std::path::PathBuf> {
    let n = args.agents;
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{db}\"\nopen_registration = true\n\
         max_stores = {n}\n\n[[jobs]]\njob_id = \"load\"\ntask = \"demand\"\n\
         strategy = \"fedavg\"\nrounds = {r}\nmin_stores = {n}\nexpected_stores = {n}\n\
         round_timeout_secs = 300\nregistration_timeout_secs = 600\n",
        db = dir.join("coordinator.db").display(),
        r = args.rounds,
    );
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn spawn_agents(port: u16, n: u32) -> Vec<tokio::task::JoinHandle<()>> {
    let d = demand_layout().len();
    let task: Arc<dyn LocalTask> = Arc::new(StandIn {
        delta: (0..d).map(|i| 1e-3 * ((i % 7) as f64 - 3.0)).collect(),
    });
    let tasks = Arc::new(FixedTasks::new().with(TaskKind::Demand, task));
    (0..n)
        .map(|i| {
            let cfg = AgentConfig::new(format!("http://127.0.0.1:{port}"), format!("load-{i:05}"));
            let tasks = tasks.clone();
            tokio::spawn(async move {
                let _ = StoreAgent::new(cfg, tasks).run().await;
            })
        })
        .collect()
}

/// Waits for the coordinator to finish, reading its peak resident memory as it runs
/// (the kernel keeps it in /proc until the process is reaped). Kills it at `timeout`.
fn watch(child: &mut Child, timeout: Duration) -> Result<Option<u64>> {
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = Instant::now() + timeout;
    let mut peak = None;
    loop {
        if let Some(hwm) = vm_hwm(&status_file) {
            peak = Some(hwm);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the coordinator failed ({status})");
            }
            return Ok(peak);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the coordinator did not finish within {} s",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn vm_hwm(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn row(
    args: &LoadArgs,
    outcome: &serde_json::Value,
    peak: Option<u64>,
    wall: f64,
) -> serde_json::Value {
    let job = &outcome["jobs"][0];
    let mut seconds: Vec<f64> = job["rounds"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["seconds"].as_f64()).collect())
        .unwrap_or_default();
    seconds.sort_by(f64::total_cmp);
    let participants: Vec<u64> = job["rounds"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["participants"].as_array().map(|p| p.len() as u64))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "bench": "load",
        "agents": args.agents,
        "connections": args.agents,
        "rounds": seconds.len(),
        "status": job["status"],
        "participants_per_round": participants,
        "round_seconds_median": seconds.get(seconds.len() / 2),
        "round_seconds_max": seconds.last(),
        "coordinator_peak_rss_bytes": peak,
        "wall_seconds": wall,
        "bytes_up": job["bytes_up"],
        "bytes_down": job["bytes_down"],
    })
}
