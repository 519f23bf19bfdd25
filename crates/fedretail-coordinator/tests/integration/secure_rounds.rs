//! Secure aggregation and differential privacy over the real transport: a coordinator
//! and real store agents on 127.0.0.1, with stores whose updates are known, so that the
//! model the coordinator ends with can be checked exactly against the plain arithmetic.

use fedretail_agent::{AgentConfig, SecAggTrust, StoreAgent};
use fedretail_coordinator::{
    run_coordinator_with, CheckpointStore, CoordinatorConfig, CoordinatorError, JobOutcome,
};
use fedretail_core::{LocalWork, ModelLayout, TaskKind};
use fedretail_models::{demand_layout, FixedTasks, LocalTask, TaskError, TaskMetrics};
use fedretail_privacy::secagg::{NeighbourGraph, RosterAuthority, SecAggStore};
use fedretail_privacy::{PrivacyBudget, PrivacyLedger, RoundMechanism};
use fedretail_proto::secagg as wire;
use fedretail_proto::v1::{
    self, coordinator_client::CoordinatorClient, poll_task_response::Outcome,
    submit_sec_agg_request::Message,
};
use fedretail_proto::{encode_f64, PROTOCOL_VERSION};
use rand::SeedableRng;
use std::sync::Arc;
use tonic::Code;

/// A store whose every update is the same known vector.
struct FixedStore {
    update: Vec<f64>,
    rows: u64,
}

impl LocalTask for FixedStore {
    fn task_name(&self) -> &'static str {
        "demand"
    }
    fn layout(&self) -> ModelLayout {
        demand_layout()
    }
    fn num_train_examples(&self) -> u64 {
        self.rows
    }
    fn compute_update(&self, _: &[f64], _: &LocalWork) -> Result<Vec<f64>, TaskError> {
        Ok(self.update.clone())
    }
    fn evaluate(&self, _: &[f64]) -> Result<TaskMetrics, TaskError> {
        Ok(TaskMetrics::new())
    }
}

fn d() -> usize {
    demand_layout().len()
}

/// Store i's update: small, distinct, within an L2 norm of 1 except store 0's, which is
/// ten times too long and must arrive clipped.
fn update_of(i: usize) -> Vec<f64> {
    let mut u: Vec<f64> = (0..d())
        .map(|j| ((i * 7 + j * 3) % 11) as f64 / 100.0 - 0.05)
        .collect();
    if i == 0 {
        let n = norm(&u);
        u.iter_mut().for_each(|v| *v *= 10.0 / n);
    }
    u
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn clipped(mut u: Vec<f64>, clip: f64) -> Vec<f64> {
    let n = norm(&u);
    if n > clip {
        u.iter_mut().for_each(|v| *v *= clip / n);
    }
    u
}

async fn start(
    toml: &str,
    checkpoints: CheckpointStore,
) -> (
    String,
    tokio::task::JoinHandle<Result<JobOutcome, CoordinatorError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let mut config = CoordinatorConfig::from_toml(toml).unwrap();
    // The tests' agents join by name, as open enrolment allows when asked for.
    config.open_registration = true;
    let handle = tokio::spawn(async move {
        let mut outcomes =
            run_coordinator_with(config, listener, checkpoints, Arc::new(|_| {})).await?;
        Ok(outcomes.remove(0))
    });
    (addr, handle)
}

fn spawn_agents(addr: &str, stores: &[(String, Vec<f64>, u64)]) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (agent, _) in fixed_agents(addr, stores, |_| SecAggTrust::default()) {
        set.spawn(async move {
            agent.run().await.unwrap();
        });
    }
    set
}

/// One agent per store, each with the SecAgg+ trust `trust` gives its id.
fn fixed_agents(
    addr: &str,
    stores: &[(String, Vec<f64>, u64)],
    trust: impl Fn(&str) -> SecAggTrust,
) -> Vec<(StoreAgent, String)> {
    stores
        .iter()
        .cloned()
        .map(|(id, update, rows)| {
            let mut cfg = AgentConfig::new(addr.to_string(), id.clone());
            cfg.poll_wait = std::time::Duration::from_millis(500);
            cfg.secagg_trust = trust(&id);
            let task: Arc<dyn LocalTask> = Arc::new(FixedStore { update, rows });
            let task = Arc::new(FixedTasks::new().with(TaskKind::Demand, task));
            (StoreAgent::new(cfg, task), id)
        })
        .collect()
}

struct Peer {
    client: CoordinatorClient<tonic::transport::Channel>,
    store: String,
    session: String,
}

impl Peer {
    async fn join(addr: &str, store: &str) -> Peer {
        let mut client = CoordinatorClient::connect(addr.to_string()).await.unwrap();
        let resp = client
            .register_store(v1::RegisterStoreRequest {
                protocol_version: PROTOCOL_VERSION,
                store_id: store.into(),
                token: String::new(),
                business_type: "grocery".into(),
            })
            .await
            .unwrap();
        let mut peer = Peer {
            client,
            store: store.into(),
            session: resp.into_inner().session_id,
        };
        let Outcome::Prepare(p) = peer.poll().await else {
            panic!("expected the job's prepare task first")
        };
        peer.client
            .submit_ready(v1::SubmitReadyRequest {
                store_id: peer.store.clone(),
                session_id: peer.session.clone(),
                task_id: p.task_id,
                answer: Some(v1::submit_ready_request::Answer::NumTrainExamples(400)),
            })
            .await
            .unwrap();
        peer
    }

    async fn poll(&mut self) -> Outcome {
        for _ in 0..100 {
            let r = self
                .client
                .poll_task(v1::PollTaskRequest {
                    store_id: self.store.clone(),
                    session_id: self.session.clone(),
                    wait_millis: 500,
                })
                .await
                .unwrap();
            match r.into_inner().outcome.unwrap() {
                Outcome::Wait(_) => continue,
                o => return o,
            }
        }
        panic!("no task for {}", self.store);
    }

    /// The next SecAgg+ step the coordinator sends this peer.
    async fn step(&mut self) -> v1::sec_agg_step::Step {
        match self.poll().await {
            Outcome::Secagg(s) => s.step.expect("a step"),
            other => panic!("expected a SecAgg+ step, got {other:?}"),
        }
    }

    async fn send(&mut self, task: &str, round: u64, m: Message) -> Result<(), (Code, String)> {
        self.client
            .submit_sec_agg(v1::SubmitSecAggRequest {
                store_id: self.store.clone(),
                session_id: self.session.clone(),
                task_id: task.into(),
                round,
                message: Some(m),
            })
            .await
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_string()))
    }
}

/// Four agents and one hand-driven peer in a SecAgg+ round. The peer first sends
/// hostile messages (refused, each with its reason), then takes part honestly until
/// its key shares are dealt, then vanishes before sending its masked input: its
/// pairwise masks are in its neighbours' inputs and must be rebuilt from their shares.
/// The model must be the plain weighted mean of the four survivors' clipped updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_round_over_grpc_recovers_a_dropout_and_refuses_hostile_messages() {
    let toml = "[job]\nstrategy = \"fedavg\"\nrounds = 1\nmin_stores = 3\nexpected_stores = 5\n\
                round_timeout_secs = 3\nregistration_timeout_secs = 30\n\
                [job.privacy]\nsecure_aggregation = true\nclip = 1.0\n";
    let (addr, coordinator) = start(toml, CheckpointStore::in_memory().unwrap()).await;
    let stores: Vec<(String, Vec<f64>, u64)> = (0..4)
        .map(|i| (format!("s{i}"), update_of(i), 100 * (i as u64 + 1)))
        .collect();
    let mut agents = spawn_agents(&addr, &stores);

    let mut peer = Peer::join(&addr, "peer").await;
    let Outcome::Train(task) = peer.poll().await else {
        panic!("expected a training task")
    };
    let params = task.secure.expect("a secure round");
    assert_eq!(params.num_stores, 5);
    assert_eq!(task.privacy.as_ref().map(|p| p.clip), Some(1.0));
    let (id, round) = (task.task_id.clone(), task.round);

    // A plain update in a secure round is refused.
    let plain = peer
        .client
        .submit_update(v1::SubmitUpdateRequest {
            store_id: "peer".into(),
            session_id: peer.session.clone(),
            task_id: id.clone(),
            round,
            update: Some(encode_f64(&vec![0.0; d()])),
            num_examples: 400,
            metrics: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(plain.code(), Code::InvalidArgument);
    assert!(
        plain.message().contains("secure aggregation"),
        "{}",
        plain.message()
    );

    let config = wire::config_from_wire(&params).unwrap();
    let graph = Arc::new(NeighbourGraph::new(&config));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (mut secagg, ad) = SecAggStore::new(config, graph, params.store_index, &mut rng).unwrap();
    let good = wire::advertisement_to_wire(&ad);

    // Posing as another store, a short key, a message of the wrong stage: refused.
    let mut other = good.clone();
    other.store = (params.store_index + 1) % params.num_stores;
    let (code, msg) = peer
        .send(&id, round, Message::Advertisement(other))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("claims store index"), "{msg}");
    let mut short = good.clone();
    short.cipher_public_key.pop();
    let (code, msg) = peer
        .send(&id, round, Message::Advertisement(short))
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("must be 32 bytes"), "{msg}");
    let early = v1::SecAggMaskedInput {
        store: params.store_index,
        words: vec![0; d()],
    };
    let (code, msg) = peer
        .send(&id, round, Message::MaskedInput(early))
        .await
        .unwrap_err();
    assert_eq!(code, Code::FailedPrecondition);
    assert!(msg.contains("key advertisement"), "{msg}");

    // Honest advertisement, then its replay. The peer's advertisement may be the last
    // one the stage waited for, so the replay meets either the same stage (a duplicate)
    // or the next one (a message of the wrong stage): refused either way.
    peer.send(&id, round, Message::Advertisement(good.clone()))
        .await
        .unwrap();
    let (code, msg) = peer
        .send(&id, round, Message::Advertisement(good))
        .await
        .unwrap_err();
    assert!(
        matches!(code, Code::AlreadyExists | Code::FailedPrecondition),
        "{code:?}: {msg}"
    );

    // Deal key shares, then vanish.
    let Outcome::Secagg(step) = peer.poll().await else {
        panic!("expected a SecAgg+ step")
    };
    let Some(v1::sec_agg_step::Step::ShareKeys(neighbours)) = step.step else {
        panic!("expected the neighbours' keys")
    };
    let ads: Vec<_> = neighbours
        .advertisements
        .iter()
        .map(|a| wire::advertisement_from_wire(a).unwrap())
        .collect();
    assert_eq!(ads.len(), 4, "a complete graph for five stores");
    let keys = secagg.share_keys(&ads).unwrap();
    peer.send(
        &id,
        round,
        Message::ShareKeys(wire::share_keys_to_wire(&keys)),
    )
    .await
    .unwrap();

    let outcome = coordinator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}

    let record = &outcome.rounds[0];
    assert_eq!(record.participants, vec!["s0", "s1", "s2", "s3"]);
    assert_eq!(record.dropped.len(), 1);
    assert_eq!(record.dropped[0].0, "peer");
    assert!(
        record.dropped[0].1.contains("masked input"),
        "{:?}",
        record.dropped
    );
    // The plain FedAvg arithmetic on what the stores would have sent in the clear.
    let total: f64 = stores.iter().map(|s| s.2 as f64).sum();
    let mut expected = vec![0.0; d()];
    for (_, u, rows) in &stores {
        for (e, v) in expected.iter_mut().zip(clipped(u.clone(), 1.0)) {
            *e += v * *rows as f64 / total;
        }
    }
    let gap = expected
        .iter()
        .zip(&outcome.parameters)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    // Fixed point: 2^31 units over 5 summands of bound 1 is ~2e-9 per unit.
    assert!(
        gap < 1e-7,
        "secure mean differs from the plain mean by {gap}"
    );
    let privacy = outcome.privacy.expect("privacy in the outcome");
    assert!(privacy.secure_aggregation);
    assert_eq!(privacy.epsilon_spent, None);
}

/// A DP job with a budget stops before the round that would overspend, says so, and
/// keeps its ledger with its rounds: restarted with a larger budget it resumes after
/// the last round and goes on spending from where it stopped, not from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dp_job_stops_at_its_budget_and_resumes_its_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("job.db");
    let z = 4.0;
    let job = |budget: f64| {
        format!(
            "[job]\nstrategy = \"fedavg\"\nrounds = 20\nmin_stores = 3\nexpected_stores = 3\n\
             round_timeout_secs = 10\n\
             [job.privacy]\nclip = 1.0\nnoise = \"central\"\nnoise_multiplier = {z}\n\
             budget_epsilon = {budget}\ndelta = 1e-5\n"
        )
    };
    // What the accountant allows: the reference the job must agree with.
    let mut reference = PrivacyLedger::new(PrivacyBudget {
        epsilon: 3.0,
        delta: 1e-5,
    })
    .unwrap();
    let gaussian = RoundMechanism::Gaussian {
        noise_multiplier: z,
    };
    let mut allowed = 0u64;
    while reference.spend_round(allowed + 1, &gaussian).is_ok() {
        allowed += 1;
    }
    assert!((1..20).contains(&allowed), "{allowed}");

    let stores: Vec<(String, Vec<f64>, u64)> = (1..4)
        .map(|i| (format!("s{i}"), update_of(i), 100))
        .collect();
    let (addr, coordinator) = start(&job(3.0), CheckpointStore::open(&db).unwrap()).await;
    let mut agents = spawn_agents(&addr, &stores);
    let first = coordinator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    assert_eq!(first.rounds.len() as u64, allowed);
    assert!(first.status.contains("privacy budget"), "{}", first.status);
    let p = first.privacy.as_ref().unwrap();
    let spent = p.epsilon_spent.unwrap();
    assert!(spent <= 3.0);
    assert!((spent - reference.spent().unwrap().epsilon).abs() < 1e-9);
    assert_eq!(p.ledger.len() as u64, allowed);
    assert_eq!(first.rounds.last().unwrap().epsilon_spent, Some(spent));
    // Evaluation still ran on the model trained so far.
    assert_eq!(first.evaluations.len(), 3);

    // Same job, same database, more budget.
    let (addr, coordinator) = start(&job(3.5), CheckpointStore::open(&db).unwrap()).await;
    let mut agents = spawn_agents(&addr, &stores);
    let second = coordinator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    assert_eq!(second.resumed_after_round, Some(allowed));
    let next = second.rounds.first().expect("at least one more round");
    assert_eq!(next.round, allowed + 1);
    let mut more = PrivacyLedger::restore(
        PrivacyBudget {
            epsilon: 3.5,
            delta: 1e-5,
        },
        reference.entries().to_vec(),
    )
    .unwrap();
    let e = more
        .spend_round(allowed + 1, &gaussian)
        .unwrap()
        .epsilon_after;
    assert!((next.epsilon_spent.unwrap() - e).abs() < 1e-9);
    let total = second.privacy.unwrap().epsilon_spent.unwrap();
    assert!(total > spent && total <= 3.5);

    // The same job with another noise multiplier would account its past rounds
    // wrongly: the coordinator refuses to resume it, and loses nothing.
    let changed = job(4.0).replace("noise_multiplier = 4", "noise_multiplier = 2");
    let (_, coordinator) = start(&changed, CheckpointStore::open(&db).unwrap()).await;
    let e = coordinator.await.unwrap().unwrap_err().to_string();
    assert!(e.contains("noise_multiplier changed"), "{e}");
    let store = CheckpointStore::open(&db).unwrap();
    let job_id = &second.job_id;
    assert_eq!(
        store.ledger_entries(job_id).unwrap().len(),
        allowed as usize + second.rounds.len()
    );
    let (last, _) = store.latest(job_id).unwrap().unwrap();
    assert_eq!(last.round, next.round + second.rounds.len() as u64 - 1);
}

/// Noise that is really there, of the size the settings promise, wherever it is added:
/// the model's deviation from the plain mean has the standard deviation z C / m for
/// central and distributed noise and z C / sqrt(m) for local noise. A missing noise or
/// one off by sqrt(m) falls outside the bounds; a correct one falls outside them about
/// once in 10^4 runs (22 coordinates, chi-squared tails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_has_the_promised_size_central_distributed_and_local() {
    let m = 6usize;
    let z = 1.0;
    let stores: Vec<(String, Vec<f64>, u64)> = (1..=m)
        .map(|i| (format!("s{i}"), update_of(i), 100))
        .collect();
    let plain: Vec<f64> = (0..d())
        .map(|j| stores.iter().map(|s| s.1[j]).sum::<f64>() / m as f64)
        .collect();
    for (noise, secure, expected_std) in [
        ("central", false, z / m as f64),
        ("distributed", true, z / m as f64),
        ("local", false, z / (m as f64).sqrt()),
        ("local", true, z / (m as f64).sqrt()),
    ] {
        let toml = format!(
            "[job]\nstrategy = \"fedavg\"\nrounds = 1\nmin_stores = 3\nexpected_stores = {m}\n\
             round_timeout_secs = 10\n\
             [job.privacy]\nsecure_aggregation = {secure}\nclip = 1.0\nnoise = \"{noise}\"\n\
             noise_multiplier = {z}\n"
        );
        let (addr, coordinator) = start(&toml, CheckpointStore::in_memory().unwrap()).await;
        let mut agents = spawn_agents(&addr, &stores);
        let outcome = coordinator.await.unwrap().unwrap();
        while agents.join_next().await.is_some() {}
        assert_eq!(outcome.rounds[0].participants.len(), m);
        let dev: Vec<f64> = outcome
            .parameters
            .iter()
            .zip(&plain)
            .map(|(a, b)| a - b)
            .collect();
        let std = (dev.iter().map(|x| x * x).sum::<f64>() / dev.len() as f64).sqrt();
        let ratio = std / expected_std;
        assert!(
            (0.5..1.7).contains(&ratio),
            "{noise} noise (secure {secure}): deviation std {std:.4}, expected {expected_std:.4}"
        );
        let p = outcome.privacy.unwrap();
        assert!(p.epsilon_spent.unwrap() > 0.0);
        assert_eq!(p.ledger.len(), 1);
    }
}

/// The job's mask PRG reaches every agent: a secure round's sum under either cipher
/// equals the plain clipped round's (if one side expanded masks with another cipher,
/// nothing would cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_round_sums_exactly_under_either_mask_prg() {
    let stores: Vec<(String, Vec<f64>, u64)> = (0..4)
        .map(|i| (format!("s{i}"), update_of(i), 100 * (i as u64 + 1)))
        .collect();
    let mut results = Vec::new();
    for privacy in [
        "clip = 1.0\n",
        "secure_aggregation = true\nclip = 1.0\nmask_prg = \"aes128_ctr\"\n",
        "secure_aggregation = true\nclip = 1.0\nmask_prg = \"chacha20\"\n",
    ] {
        let toml = format!(
            "[job]\nstrategy = \"fedavg\"\nrounds = 1\nmin_stores = 4\nexpected_stores = 4\n\
             round_timeout_secs = 10\n[job.privacy]\n{privacy}"
        );
        let (addr, coordinator) = start(&toml, CheckpointStore::in_memory().unwrap()).await;
        let mut agents = spawn_agents(&addr, &stores);
        let outcome = coordinator.await.unwrap().unwrap();
        while agents.join_next().await.is_some() {}
        assert_eq!(outcome.rounds[0].participants.len(), 4, "{privacy}");
        results.push(outcome.parameters);
    }
    for secure in &results[1..] {
        let gap = secure
            .iter()
            .zip(&results[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // The fixed-point encoding's rounding only.
        assert!(gap < 1e-6, "secure and plain sums differ by {gap}");
    }
}

/// Stores that noise their own updates release them as they reply, so every attempt
/// is charged before its tasks go out and stays charged if it then fails: here a
/// round whose third store sends an update the coordinator refuses, with two others
/// already in. The charge is stored at once, so a restarted coordinator keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_fails_after_noised_updates_arrived_stays_charged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("job.db");
    let toml = "[job]\nstrategy = \"fedavg\"\nrounds = 3\nmin_stores = 3\nexpected_stores = 3\n\
                round_timeout_secs = 10\nround_attempts = 1\n\
                [job.privacy]\nclip = 1.0\nnoise = \"local\"\nnoise_multiplier = 2\n\
                budget_epsilon = 50\ndelta = 1e-5\n";
    let stores: Vec<(String, Vec<f64>, u64)> = (1..3)
        .map(|i| (format!("s{i}"), update_of(i), 100))
        .collect();
    let (addr, coordinator) = start(toml, CheckpointStore::open(&db).unwrap()).await;
    let mut agents = spawn_agents(&addr, &stores);
    // The third store's update is one value short: refused, and its agent stops.
    let mut cfg = AgentConfig::new(addr.clone(), "s3".to_string());
    cfg.poll_wait = std::time::Duration::from_millis(500);
    let short = Arc::new(FixedStore {
        update: vec![0.01; d() - 1],
        rows: 100,
    });
    let task = Arc::new(FixedTasks::new().with(TaskKind::Demand, short));
    agents.spawn(async move {
        // Its one refused update ends the job (one attempt a round), not the agent.
        let summary = StoreAgent::new(cfg, task).run().await.unwrap();
        assert_eq!(summary.updates_refused, 1);
    });
    let outcome = coordinator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    assert!(outcome.failed, "{}", outcome.status);
    assert!(outcome.rounds.is_empty());
    let privacy = outcome.privacy.expect("privacy in the outcome");
    assert_eq!(
        privacy.ledger.len(),
        1,
        "the failed attempt is on the ledger"
    );
    let spent = privacy.epsilon_spent.expect("something spent");
    let mut reference = PrivacyLedger::new(PrivacyBudget {
        epsilon: 50.0,
        delta: 1e-5,
    })
    .unwrap();
    let one = reference
        .spend_round(
            1,
            &RoundMechanism::Gaussian {
                noise_multiplier: 2.0,
            },
        )
        .unwrap()
        .epsilon_after;
    assert!((spent - one).abs() < 1e-9, "{spent} vs {one}");
    let stored = CheckpointStore::open(&db).unwrap();
    assert_eq!(stored.ledger_entries(&outcome.job_id).unwrap().len(), 1);
}

/// A store whose update is refused once carries on: it polls again and, its task for
/// that round still open, sends a good update, and takes part in the rounds after.
/// One bad update does not end its agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_update_is_refused_once_carries_on() {
    struct FirstBad {
        calls: std::sync::atomic::AtomicU32,
    }
    impl LocalTask for FirstBad {
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
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(vec![0.01; if n == 0 { d() - 1 } else { d() }])
        }
        fn evaluate(&self, _: &[f64]) -> Result<TaskMetrics, TaskError> {
            Ok(TaskMetrics::new())
        }
    }
    let toml = "[job]\nstrategy = \"fedavg\"\nrounds = 3\nmin_stores = 2\nexpected_stores = 3\n\
                round_timeout_secs = 10\n";
    let stores: Vec<(String, Vec<f64>, u64)> = (1..3)
        .map(|i| (format!("s{i}"), update_of(i), 100))
        .collect();
    let (addr, coordinator) = start(toml, CheckpointStore::in_memory().unwrap()).await;
    let mut agents = spawn_agents(&addr, &stores);
    let mut cfg = AgentConfig::new(addr.clone(), "flaky".to_string());
    cfg.poll_wait = std::time::Duration::from_millis(500);
    let task = Arc::new(FixedTasks::new().with(
        TaskKind::Demand,
        Arc::new(FirstBad { calls: 0.into() }) as Arc<dyn LocalTask>,
    ));
    let flaky = tokio::spawn(async move { StoreAgent::new(cfg, task).run().await });
    let outcome = coordinator.await.unwrap().unwrap();
    while agents.join_next().await.is_some() {}
    let summary = flaky.await.unwrap().expect("the agent carried on");
    assert_eq!(summary.updates_refused, 1);
    assert_eq!(summary.rounds_trained, 3);
    assert!(!outcome.failed, "{}", outcome.status);
    let with_flaky: Vec<bool> = outcome
        .rounds
        .iter()
        .map(|r| r.participants.iter().any(|p| p == "flaky"))
        .collect();
    assert_eq!(with_flaky, vec![true, true, true]);
}

/// Enrolled stores sign their SecAgg+ keys and check each other's over the real
/// transport: four signing stores sum exactly as a plain round does. When one seat's
/// keys come unsigned (as a coordinator substituting its own keys would send them),
/// every store that checks signatures leaves the round before dealing a share, and
/// no round completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_stores_sign_their_keys_and_refuse_a_round_with_unsigned_ones() {
    let stores: Vec<(String, Vec<f64>, u64)> = (0..4)
        .map(|i| (format!("s{i}"), update_of(i), 100 * (i as u64 + 1)))
        .collect();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
    let authority = RosterAuthority::generate(&mut rng);
    let identities: std::collections::BTreeMap<String, _> = stores
        .iter()
        .map(|(id, _, _)| (id.clone(), Arc::new(authority.enroll(id, &mut rng))))
        .collect();
    let trust = |signing: bool| {
        let identities = identities.clone();
        let roster = authority.roster();
        move |id: &str| SecAggTrust {
            identity: identities
                .get(id)
                .filter(|_| signing || id != "s3")
                .cloned(),
            roster: Some(roster.clone()),
        }
    };
    let mut models = Vec::new();
    for (privacy, all_sign) in [
        ("clip = 1.0\n", true),
        ("secure_aggregation = true\nclip = 1.0\n", true),
        ("secure_aggregation = true\nclip = 1.0\n", false),
    ] {
        let toml = format!(
            "[job]\nstrategy = \"fedavg\"\nrounds = 1\nmin_stores = 4\nexpected_stores = 4\n\
             round_timeout_secs = 3\nround_attempts = 1\n[job.privacy]\n{privacy}"
        );
        let (addr, coordinator) = start(&toml, CheckpointStore::in_memory().unwrap()).await;
        let mut agents = tokio::task::JoinSet::new();
        for (agent, id) in fixed_agents(&addr, &stores, trust(all_sign)) {
            agents.spawn(async move { (id, agent.run().await.unwrap()) });
        }
        let outcome = coordinator.await.unwrap();
        let summaries: Vec<_> = agents.join_all().await;
        if all_sign {
            let outcome = outcome.unwrap();
            assert_eq!(outcome.rounds[0].participants.len(), 4, "{privacy}");
            models.push(outcome.parameters);
            continue;
        }
        assert!(
            outcome.map_or(true, |o| o.rounds.is_empty()),
            "a round completed with an unsigned seat"
        );
        for (id, summary) in summaries {
            if id != "s3" {
                assert_eq!(summary.secure_rounds_abandoned, 1, "{id}: {summary:?}");
            }
        }
    }
    let gap = models[1]
        .iter()
        .zip(&models[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap < 1e-6, "signed secure and plain sums differ by {gap}");
}

/// A store that skips its clip and masks an input fifty times too long cannot be
/// seen in its masked input, but it shows in the sum: the coordinator refuses the
/// round rather than take the step, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_input_outside_its_clip_shows_in_the_sum_and_the_round_is_refused() {
    use fedretail_privacy::secagg::FixedPoint;
    use v1::sec_agg_step::Step;
    let toml = "[job]\nstrategy = \"fedavg\"\nrounds = 1\nmin_stores = 4\nexpected_stores = 4\n\
                round_timeout_secs = 10\nround_attempts = 1\nregistration_timeout_secs = 30\n\
                [job.privacy]\nsecure_aggregation = true\nclip = 1.0\n";
    let (addr, coordinator) = start(toml, CheckpointStore::in_memory().unwrap()).await;
    let stores: Vec<(String, Vec<f64>, u64)> = (0..3)
        .map(|i| (format!("s{i}"), update_of(i), 100))
        .collect();
    let mut agents = spawn_agents(&addr, &stores);

    let mut peer = Peer::join(&addr, "cheat").await;
    let Outcome::Train(task) = peer.poll().await else {
        panic!("expected a training task")
    };
    let params = task.secure.expect("a secure round");
    let (id, round) = (task.task_id.clone(), task.round);
    let config = wire::config_from_wire(&params).unwrap();
    let graph = Arc::new(NeighbourGraph::new(&config));
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    let (mut secagg, ad) = SecAggStore::new(config, graph, params.store_index, &mut rng).unwrap();
    let ad = Message::Advertisement(wire::advertisement_to_wire(&ad));
    peer.send(&id, round, ad).await.unwrap();
    let Step::ShareKeys(n) = peer.step().await else {
        panic!("expected the neighbours' keys")
    };
    let ads: Vec<_> = n
        .advertisements
        .iter()
        .map(|a| wire::advertisement_from_wire(a).unwrap())
        .collect();
    let keys = wire::share_keys_to_wire(&secagg.share_keys(&ads).unwrap());
    peer.send(&id, round, Message::ShareKeys(keys))
        .await
        .unwrap();
    let Step::MaskedInput(inbox) = peer.step().await else {
        panic!("expected the inbox")
    };
    // An honest, clipped input, then every encoded value fifty times over.
    let fp = FixedPoint::for_sum(params.num_stores, params.bound, params.sum_noise_stddev).unwrap();
    let mut words = vec![0u32; d()];
    fp.encode_into(&clipped(update_of(3), 1.0), &mut words, &mut rng);
    words
        .iter_mut()
        .for_each(|w| *w = (*w as i32).wrapping_mul(50) as u32);
    let shares: Vec<_> = inbox
        .shares
        .into_iter()
        .map(wire::share_from_wire)
        .collect();
    let masked = wire::masked_input_to_wire(secagg.masked_input(&shares, &words).unwrap());
    peer.send(&id, round, Message::MaskedInput(masked))
        .await
        .unwrap();
    let Step::Unmask(request) = peer.step().await else {
        panic!("expected the unmask request")
    };
    let request = wire::unmask_request_from_wire(request).unwrap();
    let response = wire::unmask_response_to_wire(&secagg.unmask(&request).unwrap());
    peer.send(&id, round, Message::Unmask(response))
        .await
        .unwrap();

    let status = match coordinator.await.unwrap() {
        Ok(outcome) => {
            assert!(outcome.rounds.is_empty(), "the step was taken");
            outcome.status
        }
        Err(e) => e.to_string(),
    };
    while agents.join_next().await.is_some() {}
    assert!(status.contains("outside its clip"), "{status}");
}
