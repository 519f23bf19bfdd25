//! Hostile and malformed peer input against a live coordinator on 127.0.0.1: every bad
//! message is refused with a precise status, and the job carries on to completion.

use fedretail_coordinator::{
    run_coordinator_with, CheckpointStore, CoordinatorConfig, JobOutcome, StoreCredential,
};
use fedretail_core::{newton_statistics_len, pack_upper};
use fedretail_proto::v1::{
    self, coordinator_client::CoordinatorClient, poll_task_response::Outcome,
};
use fedretail_proto::{encode_f32, encode_f64, PROTOCOL_VERSION};
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::Code;

/// Parameters of the demand model.
const D: usize = fedretail_core::task::DEMAND_DIM;

struct Peer {
    client: CoordinatorClient<Channel>,
    store: String,
    session: String,
}

async fn start(
    max_message_bytes: usize,
) -> (
    String,
    tokio::task::JoinHandle<Result<Vec<JobOutcome>, fedretail_coordinator::CoordinatorError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let mut config = CoordinatorConfig::from_toml(
        "[job]\nrounds = 1\nmin_stores = 2\nround_timeout_secs = 30\n",
    )
    .unwrap();
    config.max_message_bytes = max_message_bytes;
    config.stores = ["a", "b"]
        .iter()
        .map(|s| StoreCredential {
            store_id: s.to_string(),
            token: format!("secret-{s}"),
            ..Default::default()
        })
        .collect();
    let handle = tokio::spawn(run_coordinator_with(
        config,
        listener,
        CheckpointStore::in_memory().unwrap(),
        Arc::new(|_| {}),
    ));
    (addr, handle)
}

/// Registers, then answers the job's prepare task: ready, with 100 rows.
async fn join(addr: &str, store: &str, token: &str) -> Result<Peer, tonic::Status> {
    let mut client = CoordinatorClient::connect(addr.to_string())
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);
    let resp = client
        .register_store(v1::RegisterStoreRequest {
            protocol_version: PROTOCOL_VERSION,
            store_id: store.into(),
            token: token.into(),
            business_type: "grocery".into(),
        })
        .await?;
    let mut peer = Peer {
        client,
        store: store.into(),
        session: resp.into_inner().session_id,
    };
    let Outcome::Prepare(p) = poll(&mut peer).await else {
        panic!("expected the job's prepare task first")
    };
    peer.client.submit_ready(ready(&peer, &p.task_id)).await?;
    Ok(peer)
}

fn ready(p: &Peer, task_id: &str) -> v1::SubmitReadyRequest {
    v1::SubmitReadyRequest {
        store_id: p.store.clone(),
        session_id: p.session.clone(),
        task_id: task_id.into(),
        answer: Some(v1::submit_ready_request::Answer::NumTrainExamples(100)),
    }
}

async fn poll(p: &mut Peer) -> Outcome {
    for _ in 0..50 {
        let r = p
            .client
            .poll_task(v1::PollTaskRequest {
                store_id: p.store.clone(),
                session_id: p.session.clone(),
                wait_millis: 500,
            })
            .await
            .unwrap();
        match r.into_inner().outcome.unwrap() {
            Outcome::Wait(_) => continue,
            o => return o,
        }
    }
    panic!("no task for {}", p.store);
}

/// Newton statistics that keep the model where it is: zero gradient, identity Hessian.
fn neutral_statistics() -> Vec<f64> {
    let mut h = vec![0.0; D * D];
    for i in 0..D {
        h[i * D + i] = 1.0;
    }
    let mut out = vec![0.0; D];
    pack_upper(&h, D, &mut out);
    assert_eq!(out.len(), newton_statistics_len(D));
    out
}

fn submit(p: &Peer, task: &v1::TrainTask, update: v1::Tensor) -> v1::SubmitUpdateRequest {
    v1::SubmitUpdateRequest {
        store_id: p.store.clone(),
        session_id: p.session.clone(),
        task_id: task.task_id.clone(),
        round: task.round,
        update: Some(update),
        num_examples: 100,
        metrics: Default::default(),
    }
}

async fn code_of(
    client: &mut CoordinatorClient<Channel>,
    req: v1::SubmitUpdateRequest,
) -> (Code, String) {
    let e = client.submit_update(req).await.unwrap_err();
    (e.code(), e.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_are_refused_and_the_job_completes() {
    let (addr, handle) = start(1 << 20).await;

    // Unknown store, wrong token, wrong protocol.
    let e = join(&addr, "mallory", "x").await.err().unwrap();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e
        .message()
        .contains("'mallory' is not part of this network"));
    let e = join(&addr, "a", "wrong").await.err().unwrap();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut raw = CoordinatorClient::connect(addr.clone()).await.unwrap();
    let e = raw
        .register_store(v1::RegisterStoreRequest {
            protocol_version: 99,
            store_id: "a".into(),
            token: "secret-a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("protocol version 99"));

    let mut a = join(&addr, "a", "secret-a").await.unwrap();
    // Answering the prepare task again, or one that is not current, changes nothing.
    let e = a.client.submit_ready(ready(&a, "nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let mut b = join(&addr, "b", "secret-b").await.unwrap();
    let Outcome::Train(task_a) = poll(&mut a).await else {
        panic!("expected a training task")
    };
    let Outcome::Train(task_b) = poll(&mut b).await else {
        panic!("expected a training task")
    };
    let good = neutral_statistics();

    // Wrong shape.
    let (code, msg) = code_of(
        &mut a.client.clone(),
        submit(&a, &task_a, encode_f64(&good[..10])),
    )
    .await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.contains(&format!(
            "tensor has 10 values, expected {}",
            newton_statistics_len(D)
        )),
        "{msg}"
    );
    // Declared length disagrees with the bytes.
    let mut t = encode_f64(&good);
    t.len += 1;
    let (code, msg) = code_of(&mut a.client.clone(), submit(&a, &task_a, t)).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(
        msg.contains(&format!("declares {} values", newton_statistics_len(D) + 1)),
        "{msg}"
    );
    // NaN and infinity, named by index.
    let mut bad = good.clone();
    bad[7] = f64::NAN;
    let (code, msg) = code_of(&mut a.client.clone(), submit(&a, &task_a, encode_f64(&bad))).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("index 7 is not finite"), "{msg}");
    // In f32 the update is folded from its bytes with its batch and checked in that
    // pass; the reply waits for the batch (here, until it is settled as it is). Only
    // an update this long takes that path.
    assert!(good.len() >= fedretail_coordinator::machine::ONE_PASS_MIN_VALUES);
    let f32s: Vec<f32> = good
        .iter()
        .enumerate()
        .map(|(i, v)| if i == 3 { f32::INFINITY } else { *v as f32 })
        .collect();
    let (code, msg) = code_of(
        &mut a.client.clone(),
        submit(&a, &task_a, encode_f32(&f32s)),
    )
    .await;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("index 3"), "{msg}");
    // A sparse tensor whose positions run backwards.
    let mut few = vec![0.0; good.len()];
    few[5] = 1.0;
    few[9] = 2.0;
    let mut sparse = fedretail_proto::encode_update(&few, fedretail_core::UpdatePrecision::F64);
    sparse.indices.extend_from_slice(&0u32.to_le_bytes());
    sparse.data.extend_from_slice(&1.0f64.to_le_bytes());
    let (code, msg) = code_of(&mut a.client.clone(), submit(&a, &task_a, sparse)).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("does not follow the one before it"), "{msg}");
    // Unknown dtype.
    let (code, _) = code_of(
        &mut a.client.clone(),
        submit(
            &a,
            &task_a,
            v1::Tensor {
                dtype: 0,
                len: 0,
                data: vec![],
                indices: vec![],
            },
        ),
    )
    .await;
    assert_eq!(code, Code::InvalidArgument);
    // Oversize message: refused from its length prefix, before it is buffered.
    let huge = vec![0.0f64; (1 << 20) / 8 + 1000];
    let (code, msg) = code_of(
        &mut a.client.clone(),
        submit(&a, &task_a, encode_f64(&huge)),
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted, "{msg}");
    assert!(
        msg.contains("SubmitUpdate") && msg.contains("over the limit"),
        "{msg}"
    );
    // Each kind of message has its own limit: a registration of 100 KiB is refused
    // though the transport would take a megabyte.
    let mut raw = CoordinatorClient::connect(addr.clone()).await.unwrap();
    let e = raw
        .register_store(v1::RegisterStoreRequest {
            protocol_version: PROTOCOL_VERSION,
            store_id: "a".into(),
            token: "x".repeat(100 << 10),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("RegisterStore"), "{}", e.message());
    // Store a using b's task, an unknown session, an old round.
    let (code, msg) = code_of(
        &mut a.client.clone(),
        submit(&a, &task_b, encode_f64(&good)),
    )
    .await;
    assert_eq!(code, Code::FailedPrecondition, "{msg}");
    let mut forged = submit(&a, &task_a, encode_f64(&good));
    forged.session_id = "0".repeat(32);
    let (code, _) = code_of(&mut a.client.clone(), forged).await;
    assert_eq!(code, Code::NotFound);
    let mut old = submit(&a, &task_a, encode_f64(&good));
    old.round = 0;
    let (code, _) = code_of(&mut a.client.clone(), old).await;
    assert_eq!(code, Code::FailedPrecondition);
    // Non-finite metric.
    let mut m = submit(&a, &task_a, encode_f64(&good));
    m.metrics.insert("loss".into(), f64::INFINITY);
    let (code, msg) = code_of(&mut a.client.clone(), m).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("metric 'loss'"), "{msg}");

    // After all that, good updates are accepted; a replay is refused.
    a.client
        .submit_update(submit(&a, &task_a, encode_f64(&good)))
        .await
        .unwrap();
    let (code, msg) = code_of(
        &mut a.client.clone(),
        submit(&a, &task_a, encode_f64(&good)),
    )
    .await;
    assert_eq!(code, Code::AlreadyExists);
    assert!(msg.contains("replay"), "{msg}");
    // b's in f32: long enough to be folded from its bytes with its batch, which the
    // round's close settles (b's update completes the round).
    let good_f32: Vec<f32> = good.iter().map(|v| *v as f32).collect();
    b.client
        .submit_update(submit(&b, &task_b, encode_f32(&good_f32)))
        .await
        .unwrap();

    // Evaluation, then the job ends.
    for p in [&mut a, &mut b] {
        let Outcome::Evaluate(ev) = poll(p).await else {
            panic!("expected evaluation")
        };
        let mut metrics = std::collections::HashMap::new();
        metrics.insert("wape_federated".to_string(), 0.25);
        p.client
            .submit_evaluation(v1::SubmitEvaluationRequest {
                store_id: p.store.clone(),
                session_id: p.session.clone(),
                task_id: ev.task_id,
                metrics,
            })
            .await
            .unwrap();
    }
    for p in [&mut a, &mut b] {
        assert!(matches!(poll(p).await, Outcome::Finished(_)));
    }
    let outcomes = handle.await.unwrap().unwrap();
    let outcome = &outcomes[0];
    assert!(!outcome.failed, "{}", outcome.status);
    assert_eq!(outcome.rounds.len(), 1);
    assert_eq!(
        outcome.rounds[0].participants,
        vec!["a".to_string(), "b".to_string()]
    );
    assert_eq!(outcome.evaluations.len(), 2);
    assert!(outcome.parameters.iter().all(|v| *v == 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_without_enough_replies_fails_cleanly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let config = CoordinatorConfig::from_toml(
        "open_registration = true\n[job]\nrounds = 2\nmin_stores = 2\nround_timeout_secs = 0.5\nround_attempts = 2\n",
    )
    .unwrap();
    let handle = tokio::spawn(run_coordinator_with(
        config,
        listener,
        CheckpointStore::in_memory().unwrap(),
        Arc::new(|_| {}),
    ));
    let mut a = join(&addr, "a", "").await.unwrap();
    let _b = join(&addr, "b", "").await.unwrap(); // joins, then never answers
    let Outcome::Train(task) = poll(&mut a).await else {
        panic!()
    };
    a.client
        .submit_update(submit(&a, &task, encode_f64(&neutral_statistics())))
        .await
        .unwrap();
    let outcomes = handle.await.unwrap().unwrap();
    let status = &outcomes[0].status;
    assert!(outcomes[0].failed);
    assert!(status.contains("round 1 failed 2 times"), "{status}");
    assert!(
        status.contains("of 2 selected stores replied; the round needs 2"),
        "{status}"
    );
}
