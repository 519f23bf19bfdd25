//! A coordinator that watches a jobs folder: it runs its configured job, then each
//! job file dropped into the folder while it runs, against the same connected agents;
//! a bad file is reported with its reason and the coordinator keeps serving.

use fedretail_agent::{AgentConfig, StoreAgent};
use fedretail_coordinator::{
    run_coordinator_with, CheckpointStore, CoordinatorConfig, CoordinatorEvent,
};
use fedretail_core::{LocalWork, ModelLayout, TaskKind};
use fedretail_models::{demand_layout, FixedTasks, LocalTask, TaskError, TaskMetrics};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A store whose update is always the same small vector.
struct Steady;

impl LocalTask for Steady {
    fn task_name(&self) -> &'static str {
        "demand"
    }
    fn layout(&self) -> ModelLayout {
        demand_layout()
    }
    fn num_train_examples(&self) -> u64 {
        50
    }
    fn compute_update(&self, _: &[f64], _: &LocalWork) -> Result<Vec<f64>, TaskError> {
        Ok(vec![0.01; demand_layout().len()])
    }
    fn evaluate(&self, _: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok([("wape_federated".to_string(), 0.3)].into())
    }
}

async fn wait_for(events: &Mutex<Vec<CoordinatorEvent>>, what: impl Fn(&CoordinatorEvent) -> bool) {
    for _ in 0..600 {
        if events.lock().unwrap().iter().any(&what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out; events: {:#?}", events.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dropped_into_the_folder_run_against_the_same_agents() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let mut config = CoordinatorConfig::from_toml(
        "open_registration = true\n[[jobs]]\njob_id = \"first\"\nstrategy = \"fedavg\"\nrounds = 2\nmin_stores = 2\nround_timeout_secs = 20\n",
    )
    .unwrap();
    config.jobs_dir = Some(jobs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let coordinator = tokio::spawn(run_coordinator_with(
        config,
        listener,
        CheckpointStore::in_memory().unwrap(),
        Arc::new(move |e: &CoordinatorEvent| seen.lock().unwrap().push(e.clone())),
    ));
    let mut agents = tokio::task::JoinSet::new();
    for id in ["a", "b"] {
        let mut cfg = AgentConfig::new(addr.clone(), id);
        cfg.poll_wait = Duration::from_millis(300);
        let task: Arc<dyn LocalTask> = Arc::new(Steady);
        let tasks = Arc::new(FixedTasks::new().with(TaskKind::Demand, task));
        agents.spawn(async move { StoreAgent::new(cfg, tasks).run().await });
    }
    let finished = |id: &'static str| move |e: &CoordinatorEvent| matches!(e, CoordinatorEvent::JobFinished { job_id, .. } if job_id == id);
    wait_for(&events, finished("first")).await;

    // While it serves: a bad file and a good one.
    std::fs::write(jobs.join("a-bad.toml"), "task = \"weather\"\n").unwrap();
    std::fs::write(
        jobs.join("b-second.toml"),
        "strategy = \"fedavg\"\nrounds = 3\nmin_stores = 2\nround_timeout_secs = 20\n",
    )
    .unwrap();
    wait_for(&events, finished("b-second")).await;
    {
        let events = events.lock().unwrap();
        let refused = events.iter().find_map(|e| match e {
            CoordinatorEvent::JobSkipped { job_id, reason } if job_id.ends_with("a-bad.toml") => {
                Some(reason.clone())
            }
            _ => None,
        });
        assert!(
            refused.is_some_and(|r| r.contains("weather")),
            "{events:#?}"
        );
        let rounds = events
            .iter()
            .filter(|e| matches!(e, CoordinatorEvent::RoundCompleted { .. }))
            .count();
        assert_eq!(rounds, 2 + 3);
        let registered = events
            .iter()
            .filter(|e| matches!(e, CoordinatorEvent::StoreRegistered { .. }))
            .count();
        assert_eq!(
            registered, 2,
            "the agents stayed connected between the jobs"
        );
    }
    // A folder coordinator serves until it is stopped.
    assert!(!coordinator.is_finished());
    coordinator.abort();
    agents.abort_all();
}
