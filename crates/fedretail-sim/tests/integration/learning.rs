//! Learning is checked against references, not against itself.

use fedretail_core::{
    FedAvg, FedAvgConfig, FedNewton, FedNewtonConfig, LocalSgd, ModelParameters, SamplingConfig,
    UpdatePrecision,
};
use fedretail_models::demand::DemandOptions;
use fedretail_models::{
    demand_layout, glm, DemandDataset, DemandRows, DemandTask, LocalTask, DEMAND_DIM,
};
use fedretail_sim::inprocess::run_rounds;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// A store's rows drawn from a known Poisson model.
fn synthetic_store(id: &str, rows: usize, seed: u64) -> DemandDataset {
    let d = DEMAND_DIM;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..d)
        .map(|j| {
            if j == 0 {
                0.1
            } else {
                0.2 * ((j % 5) as f64 - 2.0) / 2.0
            }
        })
        .collect();
    let make = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
        let mut out = DemandRows::new(d);
        for _ in 0..n {
            let mut x = vec![1.0];
            x.extend((1..d).map(|_| rng.random_range(-1.0..1.0)));
            let scale = 4.0;
            let mu: f64 = scale * x.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>().exp();
            // Poisson by inversion (small means).
            let (mut k, mut p, u) = (0.0, (-mu).exp(), rng.random::<f64>());
            let mut cdf = p;
            while u > cdf && k < 200.0 {
                k += 1.0;
                p *= mu / k;
                cdf += p;
            }
            out.push(&x, k, scale, scale);
        }
        out
    };
    let train = make(rows, &mut rng);
    let test = make(rows / 4, &mut rng);
    DemandDataset {
        store_id: id.into(),
        train,
        test,
        naive_scale: 1.0,
        history_days: 365,
        ..Default::default()
    }
}

fn tasks(data: &[DemandDataset]) -> Vec<(String, Arc<dyn LocalTask>)> {
    data.iter()
        .map(|d| {
            (
                d.store_id.clone(),
                Arc::new(DemandTask::new(
                    Arc::new(d.clone()),
                    DemandOptions::default(),
                )) as Arc<dyn LocalTask>,
            )
        })
        .collect()
}

#[test]
fn fedavg_of_identical_stores_equals_local_training() {
    let one = synthetic_store("a", 400, 1);
    let same: Vec<DemandDataset> = ["a", "b", "c"]
        .iter()
        .map(|id| DemandDataset {
            store_id: id.to_string(),
            ..one.clone()
        })
        .collect();
    let config = FedAvgConfig {
        sampling: SamplingConfig {
            fraction: 1.0,
            min_stores: 1,
            seed: 5,
        },
        local_epochs: 2,
        batch_size: 16,
        learning_rate: 0.05,
        l2: 1e-3,
        proximal_mu: 0.0,
        server_learning_rate: 1.0,
        min_local_steps: 0,
        precision: UpdatePrecision::F64,
    };
    let rounds = 4;
    let federated = run_rounds(
        &mut FedAvg::new(config.clone()),
        &tasks(&same),
        ModelParameters::zeros(demand_layout()),
        rounds,
    )
    .unwrap();

    // Plain local training with the same schedule: round r runs the epochs seeded r.
    let mask = demand_layout().regularization_mask();
    let mut w = vec![0.0; DEMAND_DIM];
    for round in 1..=rounds {
        let s = LocalSgd {
            epochs: config.local_epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            l2: config.l2,
            proximal_mu: 0.0,
            seed: config.sampling.seed + round,
            min_steps: 0,
        };
        glm::sgd(&one.train, &mut w, &mask, &s);
    }
    let gap = federated
        .values()
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        gap < 1e-6,
        "FedAvg of identical stores differs from local training by {gap}"
    );
    assert!(
        w.iter().any(|v| v.abs() > 1e-3),
        "training must have moved the model"
    );
}

#[test]
fn federated_newton_equals_the_centralized_fit() {
    let stores: Vec<DemandDataset> = (0..5)
        .map(|i| synthetic_store(&format!("s{i}"), 100 + 150 * i, 10 + i as u64))
        .collect();
    let l2 = 1.0;
    let mut strategy = FedNewton::try_new(FedNewtonConfig {
        l2,
        ..Default::default()
    })
    .unwrap();
    let federated = run_rounds(
        &mut strategy,
        &tasks(&stores),
        ModelParameters::zeros(demand_layout()),
        12,
    )
    .unwrap();
    let pooled: Vec<&DemandRows> = stores.iter().map(|s| &s.train).collect();
    let (central, iters) = glm::fit_newton(
        &pooled,
        &demand_layout().regularization_mask(),
        l2,
        2.0,
        100,
        1e-12,
    );
    assert!(iters < 12, "centralized Newton needed {iters} iterations");
    let gap = federated
        .values()
        .iter()
        .zip(&central)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        gap < 1e-8,
        "federated Newton differs from centralized by {gap}"
    );
}

#[test]
fn federated_newton_with_f32_free_transport_is_exact_per_step() {
    // One round from zero equals one centralized Newton step exactly (same sums).
    let stores: Vec<DemandDataset> = (0..3)
        .map(|i| synthetic_store(&format!("s{i}"), 200, 30 + i as u64))
        .collect();
    let mut strategy = FedNewton::try_new(FedNewtonConfig::default()).unwrap();
    let one_round = run_rounds(
        &mut strategy,
        &tasks(&stores),
        ModelParameters::zeros(demand_layout()),
        1,
    )
    .unwrap();
    let pooled: Vec<&DemandRows> = stores.iter().map(|s| &s.train).collect();
    let (one_step, _) = glm::fit_newton(
        &pooled,
        &demand_layout().regularization_mask(),
        1.0,
        2.0,
        1,
        0.0,
    );
    let gap = one_round
        .values()
        .iter()
        .zip(&one_step)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap < 1e-12, "{gap}");
}

/// A FedAvg job with `[job.robust]` over the coordinator and agents on 127.0.0.1: the
/// coordinator combines the updates by the job's rule, exactly as the same rule does in
/// process, and not as the plain mean would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robust_fedavg_job_over_grpc_equals_its_rule_in_process() {
    use fedretail_coordinator::{CheckedJob, JobConfig, StrategyKind};
    use fedretail_core::{RobustRule, TaskKind};
    use fedretail_sim::federation::{run_federation, SimStore, Wiring};
    use fedretail_sim::inprocess::{run_guarded, Guards};

    let data: Vec<DemandDataset> = (0..4)
        .map(|i| synthetic_store(&format!("s{i}"), 150 + 100 * i, 20 + i as u64))
        .collect();
    let job = JobConfig {
        job_id: "robust".into(),
        strategy: Some(StrategyKind::Fedavg),
        rounds: Some(3),
        min_stores: 4,
        robust: Some(RobustRule::TrimmedMean { trim: 0.25 }),
        ..JobConfig::default()
    };
    let stores: Vec<SimStore> = tasks(&data)
        .into_iter()
        .map(|(id, task)| SimStore {
            store_id: id,
            business_type: "grocery".into(),
            tasks: Arc::new(fedretail_models::FixedTasks::new().with(TaskKind::Demand, task)),
            results_dir: None,
        })
        .collect();
    let run = run_federation(
        &stores,
        vec![job.clone()],
        &Wiring::default(),
        Arc::new(|_| {}),
    )
    .await
    .unwrap();
    let over_grpc = &run.outcomes[0].parameters;
    let in_process = |robust: Option<RobustRule>| {
        let checked = CheckedJob::new(job.clone()).unwrap();
        let mut strategy = checked.build_strategy().unwrap();
        let guards = Guards {
            privacy: None,
            robust,
        };
        let init = checked.initial_model().unwrap();
        run_guarded(
            strategy.as_mut(),
            &tasks(&data),
            init,
            3,
            guards,
            &mut |_, _| false,
        )
        .unwrap()
        .parameters
        .into_values()
    };
    let gap = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    let same = in_process(job.robust);
    assert!(gap(over_grpc, &same) < 1e-9, "{}", gap(over_grpc, &same));
    let plain = in_process(None);
    assert!(gap(over_grpc, &plain) > 1e-6, "the rule made no difference");
}
