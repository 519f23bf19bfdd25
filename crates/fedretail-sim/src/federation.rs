//! Wiring only: a real coordinator on an ephemeral 127.0.0.1 port and one real agent
//! per store, talking gRPC, running a queue of jobs. Each agent prepares every job's
//! task from its own store directory (a few stores at a time, as the machine allows)
//! and writes its results into that store's `results/` folder, exactly as a deployed
//! agent does. The analytics reports are built from the metrics the stores send.

use crate::prepare::{business_type_of, store_dirs};
use crate::{SimError, SkippedStore};
use fedretail_agent::{AgentConfig, AgentError, AgentSummary, StoreAgent};
use fedretail_coordinator::{
    run_coordinator_with, CheckpointStore, ConnectionLimits, CoordinatorConfig, CoordinatorEvent,
    JobConfig, JobOutcome, StoreCredential,
};
use fedretail_core::{BoxFuture, CheckedTask};
use fedretail_data::{StoreExport, StoreSource};
use fedretail_models::{DescribeFuture, PrepareFuture, TaskSource};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// One store as the simulated network runs it.
#[derive(Clone)]
pub struct SimStore {
    pub store_id: String,
    pub business_type: String,
    pub tasks: Arc<dyn TaskSource>,
    /// Where its agent writes results; None keeps none.
    pub results_dir: Option<PathBuf>,
}

/// A task source that prepares at most `permits` stores at once, so that a network of
/// agents on one small machine does not run every store's SQL at the same time.
struct Throttled {
    inner: Arc<dyn TaskSource>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl TaskSource for Throttled {
    fn prepare<'a>(&'a self, spec: &'a CheckedTask) -> PrepareFuture<'a> {
        Box::pin(async move {
            let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            self.inner.prepare(spec).await
        })
    }

    fn describe<'a>(&'a self, spec: &'a CheckedTask) -> DescribeFuture<'a> {
        Box::pin(async move {
            let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
            self.inner.describe(spec).await
        })
    }
}

/// Every store directory under `root`, each with its export as its task source and
/// `results/` inside it as its results folder.
pub fn stores_from_dir(root: &Path, parallel: usize) -> Result<Vec<SimStore>, SimError> {
    let dirs = store_dirs(root)?;
    if dirs.is_empty() {
        return Err(SimError::NoStores(root.display().to_string()));
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    Ok(dirs
        .iter()
        .map(|dir| {
            let store_id = dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let mut source = StoreSource::from_dir(dir);
            if !source.transactions.exists() {
                source.transactions = dir.join("transactions.parquet");
            }
            export_store(&store_id, &business_type_of(dir), source, dir, &permits)
        })
        .collect())
}

/// A store whose agent reads `source` (at most `permits` stores preparing at once)
/// and writes its results into `dir/results`.
pub fn export_store(
    store_id: &str,
    business_type: &str,
    source: StoreSource,
    dir: &Path,
    permits: &Arc<tokio::sync::Semaphore>,
) -> SimStore {
    let export: Arc<dyn TaskSource> = Arc::new(StoreExport::new(store_id, source));
    SimStore {
        store_id: store_id.to_string(),
        business_type: business_type.to_string(),
        tasks: Arc::new(Throttled {
            inner: export,
            permits: permits.clone(),
        }),
        results_dir: Some(dir.join("results")),
    }
}

/// What running a queue of jobs over the simulated network produced.
pub struct FederationRun {
    pub outcomes: Vec<JobOutcome>,
    /// Agents that failed outright, with why.
    pub agent_failures: Vec<SkippedStore>,
    pub summaries: Vec<(String, AgentSummary)>,
    pub wall_seconds: f64,
}

/// How the simulated network is wired.
#[derive(Debug, Clone, Default)]
pub struct Wiring {
    /// Coordinator checkpoints; None keeps them in memory.
    pub database: Option<PathBuf>,
    /// The agents share this many HTTP/2 connections (store `i` uses connection
    /// `i % k`); None gives each its own, as real stores have. One process cannot
    /// hold two sockets for each of 10,000 stores.
    pub connections: Option<usize>,
}

impl Wiring {
    /// Per-connection limits for the coordinator: stores sharing a connection each
    /// keep a poll open on it, so it gets room for all of them.
    fn limits(&self, stores: usize) -> ConnectionLimits {
        let defaults = ConnectionLimits::default();
        let Some(k) = self.connections else {
            return defaults;
        };
        let per = 2 * stores.div_ceil(k.max(1));
        ConnectionLimits {
            max_concurrent_streams: (per as u32).max(defaults.max_concurrent_streams),
            concurrency_per_connection: per.max(defaults.concurrency_per_connection),
            ..defaults
        }
    }

    /// The shared connections, opened lazily (on an agent's first request).
    fn channels(&self, url: &str) -> Result<Vec<Channel>, SimError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| SimError::Runtime(format!("bad coordinator address {url}: {e}")))?
            .tcp_nodelay(true);
        Ok((0..self.connections.unwrap_or(0))
            .map(|_| endpoint.connect_lazy())
            .collect())
    }
}

/// Runs `jobs` in order over a coordinator and one agent per store on 127.0.0.1.
/// Every store is expected: a job starts once every store answered its prepare task.
pub fn run_federation<'a>(
    stores: &'a [SimStore],
    mut jobs: Vec<JobConfig>,
    wiring: &'a Wiring,
    observer: Arc<dyn Fn(&CoordinatorEvent) + Send + Sync>,
) -> BoxFuture<'a, Result<FederationRun, SimError>> {
    Box::pin(async move {
        let started = Instant::now();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| SimError::Runtime(format!("cannot listen on 127.0.0.1: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| SimError::Runtime(e.to_string()))?;
        let credentials: Vec<StoreCredential> = stores
            .iter()
            .map(|s| StoreCredential {
                store_id: s.store_id.clone(),
                token: format!("{:032x}", rand::random::<u128>()),
                ..Default::default()
            })
            .collect();
        for job in &mut jobs {
            job.expected_stores = Some(stores.len());
            job.min_stores = job.min_stores.min(stores.len()).max(1);
        }
        let config = CoordinatorConfig {
            listen: addr.to_string(),
            database: wiring.database.clone().unwrap_or_default(),
            max_message_bytes: fedretail_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_store_rows: fedretail_coordinator::DEFAULT_MAX_STORE_ROWS,
            limits: wiring.limits(stores.len()),
            tls: None,
            stores: credentials.clone(),
            open_token: None,
            open_registration: false,
            max_stores: credentials.len().max(1),
            job: None,
            jobs,
            jobs_dir: None,
        };
        let checkpoints = match &wiring.database {
            Some(path) => CheckpointStore::open(path),
            None => CheckpointStore::in_memory(),
        }
        .map_err(|e| SimError::Coordinator(e.into()))?;
        let coordinator = tokio::spawn(run_coordinator_with(
            config,
            listener,
            checkpoints,
            observer,
        ));
        let url = format!("http://{addr}");
        let channels = wiring.channels(&url)?;
        let mut agents = tokio::task::JoinSet::new();
        for (i, (store, cred)) in stores.iter().zip(&credentials).enumerate() {
            let mut cfg = AgentConfig::new(url.clone(), store.store_id.clone());
            cfg.token = cred.token.clone();
            cfg.business_type = store.business_type.clone();
            cfg.results_dir = store.results_dir.clone();
            let (id, tasks) = (store.store_id.clone(), store.tasks.clone());
            let mut agent = StoreAgent::new(cfg, tasks);
            if !channels.is_empty() {
                agent = agent.sharing(channels[i % channels.len()].clone());
            }
            agents.spawn(async move { (id, agent.run().await) });
        }
        let outcomes = coordinator
            .await
            .map_err(|e| SimError::Runtime(format!("coordinator task failed: {e}")))??;
        let (summaries, agent_failures) = join_agents(agents).await;
        Ok(FederationRun {
            outcomes,
            agent_failures,
            summaries,
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    })
}

type AgentRuns = tokio::task::JoinSet<(String, Result<AgentSummary, AgentError>)>;

/// Every agent's summary (by store id), and the agents that failed.
async fn join_agents(mut agents: AgentRuns) -> (Vec<(String, AgentSummary)>, Vec<SkippedStore>) {
    let mut agent_failures = Vec::new();
    let mut summaries = Vec::new();
    while let Some(joined) = agents.join_next().await {
        match joined {
            Ok((id, Ok(summary))) => summaries.push((id, summary)),
            Ok((id, Err(e))) => agent_failures.push(SkippedStore {
                store_id: id,
                reason: format!("agent failed: {e}"),
            }),
            Err(e) => agent_failures.push(SkippedStore {
                store_id: "?".into(),
                reason: format!("agent task failed: {e}"),
            }),
        }
    }
    summaries.sort_by(|a, b| a.0.cmp(&b.0));
    (summaries, agent_failures)
}
