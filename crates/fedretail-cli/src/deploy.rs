//! The commands of a real deployment: `coordinator`, `agent` and `predict`.

use crate::network::runtime;
use crate::watch;
use anyhow::{Context, Result};
use clap::Args;
use fedretail_agent::{read_model, write_results, AgentConfig, StoreAgent};
use fedretail_coordinator::{
    run_coordinator, CoordinatorConfig, CoordinatorEvent, Dashboard, JobOutcome, Metrics,
};
use fedretail_data::{build_local_task, StoreExport, StoreSource};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct CoordinatorArgs {
    /// Coordinator configuration (TOML): listen address, database, stores and jobs.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override the listen address.
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve plain HTTP on an address other machines can reach (no `[tls]`): tokens
    /// and models then cross the network in clear. Only for a network you trust.
    #[arg(long)]
    pub insecure: bool,
    /// Write every job's outcome (rounds, evaluations, model) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (rounds, updates accepted and
    /// refused by reason, bytes, round latency, stores, epsilon spent). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Serve the live dashboard at http://ADDR/ (stores, rounds, convergence, bytes,
    /// refused messages, epsilon against the budget). Off by default; it shows only
    /// aggregate figures, but put it behind your own access control.
    #[arg(long, value_name = "ADDR")]
    pub dashboard_listen: Option<String>,
    /// Write an HTML report of every job (charts in <name>-figures/ beside it)
    /// [default: report.html beside the database, unless it is in memory].
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// How events are logged to stderr: readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How the coordinator logs its events.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One event as a JSON line, with the time it was logged.
fn log_json(e: &CoordinatorEvent) {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match serde_json::to_value(e) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("time".into(), at.into());
            eprintln!("{}", serde_json::Value::Object(fields));
        }
        _ => eprintln!("{{\"time\":\"{at}\",\"event\":\"unprintable\"}}"),
    }
}

fn log_event(e: &CoordinatorEvent) {
    use CoordinatorEvent as E;
    match e {
        E::StoreRegistered {
            store_id,
            registered,
            ..
        } => eprintln!("store {store_id} joined ({registered} registered)"),
        E::JobStarted {
            job_id,
            task,
            strategy,
            ..
        } => eprintln!("job {job_id}: task {task}, strategy {strategy}"),
        E::StoreReady {
            store_id,
            num_train_examples: Some(n),
            ..
        } => eprintln!("store {store_id} ready ({n} training rows)"),
        E::StoreReady {
            store_id, reason, ..
        } => eprintln!(
            "store {store_id} sits this job out: {}",
            reason.as_deref().unwrap_or("no reason given")
        ),
        E::RoundStarted {
            round,
            total_rounds,
            selected,
            ..
        } => eprintln!("round {round}/{total_rounds}: {selected} stores selected"),
        E::RoundCompleted {
            round,
            participants,
            dropped,
            step_norm,
            epsilon_spent,
            ..
        } => {
            let eps = epsilon_spent
                .map(|e| format!(", epsilon spent {e:.3}"))
                .unwrap_or_default();
            eprintln!("round {round} done: {participants} updates, {dropped} dropped, step {step_norm:.3e}{eps}")
        }
        E::BudgetReached { round, reason } => eprintln!("not starting round {round}: {reason}"),
        E::RoundFailed {
            round,
            attempt,
            reason,
        } => eprintln!("round {round} attempt {attempt} failed: {reason}"),
        E::EvaluationStarted { stores } => {
            eprintln!("evaluating at {stores} stores (each keeps its results)")
        }
        E::JobFinished { job_id, status } => eprintln!("job {job_id}: {status}"),
        E::JobSkipped { job_id, reason } => eprintln!("job {job_id} skipped: {reason}"),
        E::Finished { status } => eprintln!("coordinator done: {status}"),
        E::MessageRefused { reason } => eprintln!("refused a store's message: {reason}"),
        E::UpdateAccepted { .. } | E::StoreEvaluated { .. } => {}
    }
}

/// Logs each event and counts it into the metrics and the dashboard.
fn observer(
    format: LogFormat,
    metrics: Arc<Metrics>,
    dashboard: Arc<Dashboard>,
) -> fedretail_coordinator::Observer {
    Arc::new(move |e: &CoordinatorEvent| {
        metrics.observe(e);
        dashboard.observe(e);
        match format {
            LogFormat::Text => log_event(e),
            LogFormat::Json => log_json(e),
        }
    })
}

pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let mut config = CoordinatorConfig::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    check_plain_listen(&config, args.insecure)?;
    let jobs = config
        .checked_jobs()
        .with_context(|| format!("{}", args.config.display()))?;
    let rt = runtime()?;
    let metrics = Arc::new(Metrics::new());
    let dashboard = Arc::new(Dashboard::new());
    let outcomes = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let names: Vec<&str> = jobs.iter().map(|j| j.job_id()).collect();
        eprintln!("coordinator listening on {} for jobs [{}]", listener.local_addr()?, names.join(", "));
        if let Some(dir) = &config.jobs_dir {
            eprintln!("watching {} for more jobs (*.toml); stop with Ctrl-C", dir.display());
        }
        let observer = observer(args.log_format, metrics.clone(), dashboard.clone());
        let run = run_coordinator(config.clone(), listener, observer);
        let serve = watch::metrics_server(args.metrics_listen.as_deref(), metrics).await?;
        let board = watch::dashboard_server(args.dashboard_listen.as_deref(), dashboard).await?;
        tokio::select! {
            r = run => anyhow::Ok(r?),
            r = serve => anyhow::bail!("the metrics server stopped: {r:?}"),
            r = board => anyhow::bail!("the dashboard stopped: {r:?}"),
            _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped by Ctrl-C; the running job resumes from its last round on restart"),
        }
    })?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&serde_json::json!({ "jobs": outcomes }))?;
        std::fs::write(path, json).with_context(|| format!("writing report {}", path.display()))?;
    }
    if let Some(path) = html_path(args.html, &config) {
        watch::write_page(&fedretail_coordinator::outcomes_page(&outcomes), &path)?;
    }
    for o in &outcomes {
        println!("{}", job_line(o));
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed)
        .map(|o| o.job_id.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} jobs failed: {}",
            failed.len(),
            outcomes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Where the jobs' HTML report goes: as asked, or beside an on-disk database.
fn html_path(asked: Option<PathBuf>, config: &CoordinatorConfig) -> Option<PathBuf> {
    asked.or_else(|| {
        let db = &config.database;
        let on_disk = !db.as_os_str().is_empty() && db != Path::new(":memory:");
        on_disk.then(|| db.with_file_name("report.html"))
    })
}

fn job_line(o: &JobOutcome) -> String {
    let skipped = if o.stores_not_taking_part.is_empty() {
        String::new()
    } else {
        format!(", {} stores sat out", o.stores_not_taking_part.len())
    };
    format!(
        "job {} ({}, {}): {} ({} rounds, {} evaluations{skipped}, {} bytes up, {} down, {:.1} s)",
        o.job_id,
        o.task,
        o.strategy,
        o.status,
        o.rounds.len(),
        o.evaluations.len(),
        o.bytes_up,
        o.bytes_down,
        o.wall_seconds
    )
}

/// Whether `host` (an address or `host:port`) can only be reached from this machine.
fn is_loopback(host: &str) -> bool {
    let host = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Plain HTTP is for this machine; elsewhere only with `--insecure`, and said loudly.
fn check_plain_listen(config: &CoordinatorConfig, insecure: bool) -> Result<()> {
    if config.tls.is_some() || is_loopback(&config.listen) {
        return Ok(());
    }
    anyhow::ensure!(
        insecure,
        "the coordinator would serve plain HTTP on {}, where store tokens and models cross the network in clear: add [tls] cert and key to the config (`fedretail certs` makes them), or pass --insecure on a network you trust",
        config.listen
    );
    eprintln!(
        "WARNING: serving plain HTTP on {} (--insecure): store tokens and models cross the network in clear",
        config.listen
    );
    Ok(())
}

/// A store agent's configuration file. What to train comes with each job from the
/// coordinator; this file says only who the store is and where its data lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// e.g. "http://coordinator.example:50051"
    pub coordinator: String,
    pub store_id: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub business_type: String,
    /// Where the store's results go, one folder per job (default `results` beside
    /// this file).
    #[serde(default)]
    pub results_dir: Option<PathBuf>,
    pub data: StoreSource,
    /// The least privacy this store accepts; it sits out jobs and refuses rounds below it.
    #[serde(default)]
    pub privacy: fedretail_agent::PrivacyFloor,
    /// How long to keep reconnecting to an unreachable coordinator (default 6 hours).
    #[serde(default)]
    pub reconnect_for_secs: Option<u64>,
    /// The network's CA certificate (PEM, `ca.pem` from `fedretail certs`): the
    /// coordinator's certificate must chain to it. Needed for an https:// coordinator.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The store's certificate and key (PEM, from `fedretail enroll`), for a coordinator
    /// that requires mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The store's SecAgg+ signing identity (JSON, from `fedretail enroll`): it signs
    /// the store's key advertisements so neighbours can tell they are its own.
    #[serde(default)]
    pub secagg_identity: Option<PathBuf>,
    /// The network roster's public key (hex, printed by `fedretail enroll`). With it
    /// the store deals no SecAgg+ share unless every neighbour's keys are signed by an
    /// enrolled store: a coordinator cannot swap in keys of its own.
    #[serde(default)]
    pub roster_key: Option<String>,
    /// Talk plain HTTP to a coordinator on another machine (the token crosses the
    /// network in clear). Only for a network you trust.
    #[serde(default)]
    pub insecure: bool,
}

impl AgentFile {
    /// Reads the file; relative paths in it are relative to the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut file: AgentFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut file.data.transactions);
        for p in [
            &mut file.ca,
            &mut file.cert,
            &mut file.key,
            &mut file.secagg_identity,
            &mut file.data.promotions,
            &mut file.data.labels,
            &mut file.data.tables_dir,
        ]
        .into_iter()
        .flatten()
        {
            rebase(p);
        }
        let mut results = file
            .results_dir
            .take()
            .unwrap_or_else(|| PathBuf::from("results"));
        rebase(&mut results);
        file.results_dir = Some(results);
        Ok(file)
    }

    fn results_dir(&self) -> PathBuf {
        self.results_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("results"))
    }
}

/// The CA the coordinator's certificate must chain to, for an https:// coordinator;
/// plain HTTP only to this machine, or with `insecure = true`.
fn agent_tls(file: &AgentFile) -> Result<Option<Vec<u8>>> {
    let url = file.coordinator.as_str();
    if url.starts_with("https://") {
        let ca = file.ca.as_ref().with_context(|| {
            format!("coordinator {url} is https://: set ca = the network's CA certificate (ca.pem from `fedretail certs`)")
        })?;
        let pem = std::fs::read(ca)
            .with_context(|| format!("reading CA certificate {}", ca.display()))?;
        return Ok(Some(pem));
    }
    let host = url.strip_prefix("http://").unwrap_or(url);
    let host = host.split('/').next().unwrap_or(host);
    if !is_loopback(host) {
        anyhow::ensure!(
            file.insecure,
            "coordinator {url} is plain HTTP on another machine: this store's token would cross the network in clear. Use https:// with ca = the network's CA certificate, or set insecure = true on a network you trust"
        );
        eprintln!("WARNING: plain HTTP to {url} (insecure = true): the store's token crosses the network in clear");
    }
    Ok(None)
}

/// The store's own certificate and key, when its file names them (both or neither).
fn agent_identity(file: &AgentFile) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the store's {what} {}", p.display()))
    };
    match (&file.cert, &file.key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            anyhow::ensure!(
                file.coordinator.starts_with("https://"),
                "cert and key are for mutual TLS: the coordinator must be https://"
            );
            Ok(Some((read(cert, "certificate")?, read(key, "key")?)))
        }
        _ => anyhow::bail!("set both cert and key (from `fedretail enroll`), or neither"),
    }
}

/// The store's SecAgg+ identity and the roster, each checked here so a wrong file is
/// named at start rather than in the middle of a round.
fn secagg_trust(file: &AgentFile) -> Result<fedretail_agent::SecAggTrust> {
    use fedretail_privacy::secagg::{Roster, StoreIdentity};
    // Neighbours that check signatures refuse this store's unsigned keys, and the
    // round fails for all of them: the half-configuration is refused here instead.
    anyhow::ensure!(
        file.roster_key.is_none() || file.secagg_identity.is_some(),
        "roster_key is set but secagg_identity is not: an enrolled store signs its SecAgg+ keys \
         with the identity `fedretail enroll` wrote ({}-secagg.json); add secagg_identity, or \
         remove roster_key",
        file.store_id
    );
    let roster = file
        .roster_key
        .as_deref()
        .map(Roster::from_hex)
        .transpose()
        .context("roster_key")?;
    let identity = match &file.secagg_identity {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading secagg_identity {}", path.display()))?;
            let identity = StoreIdentity::from_json(&text)
                .with_context(|| format!("secagg_identity {}", path.display()))?;
            anyhow::ensure!(
                identity.store_id() == file.store_id,
                "secagg_identity {} was issued to '{}', this agent is '{}'",
                path.display(),
                identity.store_id(),
                file.store_id
            );
            if let Some(r) = &roster {
                identity.check_against(r).with_context(|| {
                    format!("secagg_identity {} against roster_key", path.display())
                })?;
            }
            Some(std::sync::Arc::new(identity))
        }
    };
    Ok(fedretail_agent::SecAggTrust { identity, roster })
}

#[derive(Args)]
pub struct AgentArgs {
    /// Agent configuration (TOML): coordinator address, store id, token, data files
    /// and results folder.
    #[arg(long, short)]
    pub config: PathBuf,
}

pub fn agent(args: AgentArgs) -> Result<()> {
    let file = AgentFile::read(&args.config)?;
    let mut cfg = AgentConfig::new(file.coordinator.clone(), file.store_id.clone());
    cfg.token = file.token.clone();
    cfg.business_type = file.business_type.clone();
    cfg.privacy_floor = file.privacy.clone();
    if let Some(secs) = file.reconnect_for_secs {
        cfg.reconnect_for = std::time::Duration::from_secs(secs);
    }
    cfg.results_dir = Some(file.results_dir());
    cfg.ca_certificate = agent_tls(&file)?;
    cfg.identity = agent_identity(&file)?;
    cfg.secagg_trust = secagg_trust(&file)?;
    let data = file.data.clone().with_business_type(&file.business_type);
    let tasks = Arc::new(StoreExport::new(&file.store_id, data));
    eprintln!(
        "store {}: results go to {}",
        file.store_id,
        file.results_dir().display()
    );
    let summary = runtime()?.block_on(StoreAgent::new(cfg, tasks).run())?;
    for job in &summary.jobs {
        match (&job.cannot_serve, &job.results) {
            (Some(reason), _) => println!(
                "store {}: job {} ({}): sat out: {reason}",
                file.store_id, job.job_id, job.task
            ),
            (None, Some(dir)) => println!(
                "store {}: job {} ({}): results in {}",
                file.store_id,
                job.job_id,
                job.task,
                dir.display()
            ),
            (None, None) => println!(
                "store {}: job {} ({}): no results (the job ended without a final model here)",
                file.store_id, job.job_id, job.task
            ),
        }
    }
    println!(
        "store {}: {} rounds trained, {} evaluations, {} retries; coordinator says: {}",
        file.store_id,
        summary.rounds_trained,
        summary.evaluations,
        summary.retries,
        summary.finish_reason
    );
    Ok(())
}

#[derive(Args)]
pub struct PredictArgs {
    /// The store's agent configuration (its data section says where the export is).
    #[arg(long, short)]
    pub config: PathBuf,
    /// A saved model (`model.json` from a job's results folder).
    #[arg(long)]
    pub model: PathBuf,
    /// Folder to write the `<job id>-predict` results folder into [default: the
    /// store's results folder].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Scores the store's current data with a saved model, no coordinator needed.
pub fn predict(args: PredictArgs) -> Result<()> {
    let file = AgentFile::read(&args.config)?;
    let model = read_model(&args.model)?;
    let spec = model
        .task
        .checked()
        .with_context(|| format!("{}: task options", args.model.display()))?;
    let results = runtime()?.block_on(async {
        let task = build_local_task(&file.store_id, &file.data, &spec).await?;
        let parameters = model
            .parameters()
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.model.display()))?;
        anyhow::ensure!(
            *parameters.layout() == task.layout(),
            "{}: the model has {} parameters, task '{}' on this store's data needs {}",
            args.model.display(),
            parameters.values().len(),
            spec.kind(),
            task.layout().len()
        );
        let values = parameters.into_values();
        Ok(tokio::task::spawn_blocking(move || task.results(&values)).await??)
    })?;
    let mut saved = model.clone();
    saved.job_id = format!("{}-predict", model.job_id);
    let out_root = match &args.out {
        Some(dir) => dir.clone(),
        None => file.results_dir(),
    };
    let folder = write_results(&out_root, &saved, &results)?;
    for t in &results.tables {
        println!("{}.csv: {} rows", t.name, t.rows.len());
    }
    println!(
        "results of {} (model version {}) in {}",
        spec.kind(),
        model.model_version,
        folder.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roster_key_without_an_identity_to_sign_with_is_refused() {
        let file: AgentFile = toml::from_str(
            "coordinator = \"http://127.0.0.1:50051\"\nstore_id = \"s1\"\n\
             roster_key = \"00\"\n[data]\ntransactions = \"t.csv\"\n",
        )
        .unwrap();
        let err = secagg_trust(&file).unwrap_err().to_string();
        assert!(
            err.contains("secagg_identity is not") && err.contains("s1-secagg.json"),
            "{err}"
        );
    }

    #[test]
    fn only_this_machines_addresses_count_as_loopback() {
        for local in [
            "127.0.0.1:50051",
            "localhost:1",
            "[::1]:50051",
            "127.0.0.1",
            "localhost",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "0.0.0.0:50051",
            "192.0.2.7:50051",
            "coordinator.example:50051",
            "[::]:1",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
