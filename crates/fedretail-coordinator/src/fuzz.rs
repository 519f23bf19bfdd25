//! Bounded fuzzing of what the coordinator reads from outside: its configuration
//! (a valid file mutated byte by byte) and stores' updates of any shape, value, store,
//! task and round. Each is taken or refused with a reason; nothing panics, and a
//! refused update leaves the round's aggregate as if it had never come.

use crate::config::CoordinatorConfig;
use crate::machine::{RoundMachine, RoundSetup};
use fedretail_core::{
    FedAvg, FedAvgConfig, ModelLayout, ModelParameters, RobustRule, Segment, UpdateVector,
};
use proptest::prelude::*;
use std::time::Duration;

const CONFIG: &str = r#"listen = "127.0.0.1:50051"
max_store_rows = 1000
[limits]
max_concurrent_streams = 16
[tls]
cert = "c.pem"
key = "k.pem"
[[jobs]]
job_id = "a"
strategy = "fedavg"
rounds = 3
[jobs.robust]
rule = "trimmed_mean"
trim = 0.1
[jobs.privacy]
clip = 0.5
[jobs.task]
kind = "demand"
groups = 2
[[stores]]
store_id = "s"
token = "t"
"#;

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -10.0f64..10.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::MAX)
    ]
}

/// Cases per target: 512 in the test suite; CI's fuzz step sets
/// `FEDRETAIL_FUZZ_CASES` for a longer bounded run.
fn cases() -> u32 {
    std::env::var("FEDRETAIL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_mutated_config_is_refused_or_read(edits in proptest::collection::vec((0usize..CONFIG.len(), any::<u8>()), 0..4)) {
        let mut bytes = CONFIG.as_bytes().to_vec();
        for (i, b) in edits {
            bytes[i] = b;
        }
        if let Ok(config) = CoordinatorConfig::from_toml(&String::from_utf8_lossy(&bytes)) {
            if let Ok(jobs) = config.checked_jobs() {
                for j in jobs {
                    let _ = j.build_strategy();
                    let _ = j.initial_model();
                }
            }
        }
    }

    #[test]
    fn hostile_updates_are_refused_and_leave_the_round_as_if_unsent(
        updates in proptest::collection::vec(
            (0usize..4, any::<bool>(), 0u64..3, proptest::collection::vec(value(), 0..5), 0u8..3),
            0..10,
        ),
        robust in any::<bool>(),
    ) {
        let layout = ModelLayout::new(vec![Segment::new("w", 3, true)]).unwrap();
        let ready = [("a", 10u64), ("b", 30)].iter().map(|(s, n)| (s.to_string(), *n)).collect();
        let mut m = RoundMachine::with_ready_stores("job", layout.clone(), ready);
        let global = ModelParameters::zeros(layout);
        let ids = vec!["a".to_string(), "b".to_string()];
        let setup = RoundSetup {
            round: 1,
            global: &global,
            available: &ids,
            privacy: None,
            ledger: None,
            robust: robust.then_some(RobustRule::Median),
        };
        let mut fedavg = FedAvg::new(FedAvgConfig::default());
        m.open_round(&mut fedavg, setup).unwrap();
        let orders = m.train_orders();
        let names = ["a", "b", "c", ""];
        let mut accepted: Vec<Vec<f64>> = Vec::new();
        let mut waiting = Vec::new();
        // kind: 0 f64, 1 f32 decoded, 2 f32 folded from its wire bytes.
        for (who, real_task, round, values, kind) in updates {
            let store = names[who];
            let task = orders
                .iter()
                .find(|o| o.store == store && real_task)
                .map_or("forged".to_string(), |o| o.task_id.clone());
            let Ok(check) = m.update_check(store, &task, round) else { continue };
            if kind == 2 {
                let bytes = values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
                if let Ok(verdict) = m.fold_wire_update(store, &task, round, bytes, check.limits(), None) {
                    waiting.push(verdict);
                }
                continue;
            }
            let update = if kind == 1 {
                UpdateVector::F32(values.iter().map(|v| *v as f32).collect())
            } else {
                UpdateVector::F64(values.clone())
            };
            if RoundMachine::validate(&check, store, round, &update).is_err() {
                continue;
            }
            if m.fold_update(store, &task, round, update.clone(), None).is_ok() {
                accepted.push(update.to_f64());
            }
        }
        let closed = m.close_round(Duration::from_secs(1)).unwrap();
        let folded = waiting
            .into_iter()
            .map(|mut v| matches!(v.try_recv(), Ok(Ok(_))))
            .filter(|ok| *ok)
            .count();
        prop_assert!(accepted.len() + folded <= 2, "one update per selected store");
        prop_assert_eq!(closed.aggregate.num_updates, accepted.len() + folded);
        prop_assert!(closed.aggregate.weighted_sum.iter().all(|v| v.is_finite()));
    }
}
