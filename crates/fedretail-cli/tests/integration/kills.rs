//! A coordinator killed with SIGKILL twenty times at arbitrary points of two jobs
//! (FedAvg under SecAgg+ with noise added at the stores, then exact Newton), with
//! its agents reconnecting each time: no completed round is ever lost, the exact job
//! ends on the model of an uninterrupted run, and every release is on the ledger.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use fedretail_coordinator::CheckpointStore;

use crate::common::{
    free_port, generate, read_json, spawn_agent, spawn_coordinator, wait_all, write,
};

const STORES: [&str; 3] = ["store-001", "store-002", "store-003"];
const EXACT_ROUNDS: u64 = 150;
const NOISED_ROUNDS: u64 = 80;

/// The coordinator's config in `dir` (its database there), and one agent config per
/// store reading the network at `dir/net`.
fn configure(dir: &Path, port: u16) -> std::path::PathBuf {
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n\n\
         [[jobs]]\njob_id = \"noised\"\ntask = \"demand\"\nstrategy = \"fedavg\"\n\
         rounds = {NOISED_ROUNDS}\nmin_stores = 3\nexpected_stores = 3\nround_timeout_secs = 30\n\
         [jobs.privacy]\nsecure_aggregation = true\nclip = 1.0\nnoise = \"local\"\n\
         noise_multiplier = 5\nbudget_epsilon = 1000\ndelta = 1e-5\n\n\
         [[jobs]]\njob_id = \"exact\"\ntask = \"demand\"\nstrategy = \"newton\"\n\
         rounds = {EXACT_ROUNDS}\nmin_stores = 3\nexpected_stores = 3\nround_timeout_secs = 30\n",
        dir.join("c.db").display()
    );
    for s in STORES {
        toml.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"t-{s}\"\n"
        ));
        write(
            &dir.join(format!("{s}.toml")),
            &format!(
                "coordinator = \"http://127.0.0.1:{port}\"\nstore_id = \"{s}\"\ntoken = \"t-{s}\"\n\n\
                 [data]\ntransactions = \"net/{s}/transactions.csv\"\n"
            ),
        );
    }
    let config = dir.join("c.toml");
    write(&config, &toml);
    config
}

fn agents(dir: &Path) -> Vec<(String, Child)> {
    STORES
        .iter()
        .map(|s| (s.to_string(), spawn_agent(&dir.join(format!("{s}.toml")))))
        .collect()
}

/// Completed rounds and ledger entries per job, read from the checkpoint database.
fn checkpointed(db: &Path) -> [(u64, usize); 2] {
    let store = CheckpointStore::open(db).unwrap();
    ["exact", "noised"].map(|job| {
        let rounds = store
            .latest(job)
            .unwrap()
            .map_or(0, |(record, _)| record.round);
        (rounds, store.ledger_entries(job).unwrap().len())
    })
}

#[test]
fn a_coordinator_killed_twenty_times_loses_no_round_and_ends_on_the_uninterrupted_model() {
    let root = tempfile::tempdir().unwrap();
    let args = [
        "--stores",
        "3",
        "--days",
        "150",
        "--young-fraction",
        "0",
        "--seed",
        "4",
    ];
    let (calm, killed) = (root.path().join("calm"), root.path().join("killed"));
    for dir in [&calm, &killed] {
        std::fs::create_dir_all(dir).unwrap();
        generate(&dir.join("net"), &args);
    }

    // The reference: the same jobs, never interrupted.
    let config = configure(&calm, free_port());
    let mut children = agents(&calm);
    children.push((
        "coordinator".into(),
        spawn_coordinator(&config, &calm.join("report.json")),
    ));
    wait_all(&mut children, Duration::from_secs(300));
    let reference = read_json(&calm.join("report.json"));

    let config = configure(&killed, free_port());
    let db = killed.join("c.db");
    let mut children = agents(&killed);
    let mut seen = [(0u64, 0usize); 2];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    while kills < 20 {
        let mut coordinator = spawn_coordinator(&config, &killed.join("cut.json"));
        // Anywhere from start-up to a few rounds in: registration, preparing, mid-round,
        // between SecAgg+ stages.
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        let wait = Duration::from_millis(100 + (state >> 33) % 700);
        let start = Instant::now();
        while start.elapsed() < wait && coordinator.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            coordinator.try_wait().unwrap().is_none(),
            "the jobs finished after {kills} kills: make them longer"
        );
        coordinator.kill().unwrap();
        coordinator.wait().unwrap();
        kills += 1;
        let now = checkpointed(&db);
        for (job, (before, after)) in ["exact", "noised"].iter().zip(seen.iter().zip(&now)) {
            assert!(
                after.0 >= before.0,
                "{job}: round {} lost after kill {kills}",
                before.0
            );
            // Every completed round of the noised job was charged, and charges stay.
            if *job == "noised" {
                assert!(
                    after.1 as u64 >= after.0 && after.1 >= before.1,
                    "{job}: {now:?}"
                );
            }
        }
        seen = now;
    }
    assert!(seen[1].0 > 0, "no round completed in twenty runs: {seen:?}");

    children.push((
        "coordinator".into(),
        spawn_coordinator(&config, &killed.join("report.json")),
    ));
    wait_all(&mut children, Duration::from_secs(300));
    let outcome = read_json(&killed.join("report.json"));
    let params = |report: &serde_json::Value, job: usize| -> Vec<f64> {
        report["jobs"][job]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let exact = &outcome["jobs"][1];
    assert_eq!(exact["failed"], false, "{}", exact["status"]);
    let (ours, theirs) = (params(&outcome, 1), params(&reference, 1));
    assert_eq!(ours.len(), theirs.len());
    let gap = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        gap < 1e-9,
        "the exact model after {kills} kills differs by {gap}"
    );

    let [(exact_rounds, _), (noised_rounds, charges)] = checkpointed(&db);
    assert_eq!(exact_rounds, EXACT_ROUNDS);
    assert_eq!(noised_rounds, NOISED_ROUNDS);
    // At least one charge a round, and the kills' cut attempts on top.
    assert!(charges as u64 >= NOISED_ROUNDS, "{charges} charges");
    let spent = |r: &serde_json::Value| r["jobs"][0]["privacy"]["epsilon_spent"].as_f64().unwrap();
    assert!(
        spent(&outcome) >= spent(&reference) - 1e-9,
        "ledger {} below the uninterrupted run's {}",
        spent(&outcome),
        spent(&reference)
    );
    eprintln!(
        "{kills} kills; exact model gap {gap:.1e}; {charges} charges for {NOISED_ROUNDS} rounds; \
         epsilon {:.3} against {:.3} uninterrupted",
        spent(&outcome),
        spent(&reference)
    );
}
