//! Credit scoring over real agent processes: one table split into lenders, each lender
//! an agent with its own file. The stores first describe their tables (aggregates
//! only), the coordinator agrees the encoding, and exact Newton over the wire equals
//! the in-process reference to 1e-9. A lender with too few rows sits out with its
//! reason; an id column no lender can share is dropped, and said so; every lender's
//! scores come from its own rows only.

use fedretail_data::{write_silos, TabularSpec};
use fedretail_sim::classification::ClassificationOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{
    assert_same_model, free_port, read_json, spawn_coordinator, spawn_coordinator_logged,
    spawn_logged, wait_all, wait_for_line, BIN,
};

/// Three lenders of a few hundred loans and one with ten: income and age drive the
/// risk, home ownership a little, and a loan id is unique per row.
fn loans() -> String {
    let mut text = String::from("Status,Lender,LoanId,Income,Age,Home\n");
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for (lender, n) in [("north", 300), ("south", 240), ("east", 180), ("tiny", 10)] {
        for i in 0..n {
            let income = 40.0 + 120.0 * next();
            let age = 20.0 + 50.0 * next();
            let home = ["rent", "own", "parents"][(next() * 3.0) as usize % 3];
            let z = 2.0 - income / 40.0 + (age - 45.0) / 40.0 + f64::from(home == "rent") * 0.5;
            let bad = next() < 1.0 / (1.0 + (-z).exp());
            let income = if i % 37 == 5 {
                String::new()
            } else {
                format!("{income:.1}")
            };
            text.push_str(&format!(
                "{},{lender},L{lender}{i:04},{income},{age:.0},{home}\n",
                if bad { "bad" } else { "good" }
            ));
        }
    }
    text
}

fn spec() -> TabularSpec {
    TabularSpec {
        target: "Status".into(),
        positive: "bad".into(),
        split_by: "Lender".into(),
        test_fraction: 0.2,
        seed: 7,
        min_train_rows: 20,
        min_category_rows: 5,
        max_categories: 50,
    }
}

fn coordinator_config(dir: &Path, port: u16, l2: f64, silos: &[String]) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n",
        dir.join("coordinator.db").display()
    );
    text.push_str(&format!(
        r#"
[[jobs]]
job_id = "credit"
rounds = 8
l2 = {l2}
min_stores = 3
expected_stores = 4
round_timeout_secs = 60
[jobs.task]
kind = "tabular"
file = "loans.csv"
target = "Status"
positive = "bad"
"#
    ));
    for s in silos {
        text.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\n"
        ));
    }
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_agent(dir: &Path, port: u16, store: &str, folder: &Path) -> Child {
    let cfg = dir.join(format!("{store}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "coordinator = \"http://127.0.0.1:{port}\"\nstore_id = \"{store}\"\ntoken = \"token-{store}\"\nbusiness_type = \"lender\"\nresults_dir = \"{0}/results\"\n\n[data]\ntransactions = \"{0}/transactions.csv\"\ntables_dir = \"{0}\"\n",
            folder.display()
        ),
    )
    .unwrap();
    Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The whole table written to `dir`, and one folder per lender with its rows as `file`.
fn lenders(dir: &Path, text: &str, file: &str) -> (PathBuf, Vec<(String, PathBuf)>) {
    let table = dir.join("loans-all.csv");
    std::fs::write(&table, text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let silos = rt
        .block_on(write_silos(&table, "Lender", &dir.join("lenders"), file))
        .unwrap();
    (table, silos)
}

/// Runs `jobs` (TOML `[[jobs]]` tables) on a coordinator process with one agent process
/// per lender in `silos`, each known by its token; the coordinator's outcome.
fn run_lenders(dir: &Path, silos: &[(String, PathBuf)], jobs: &str) -> serde_json::Value {
    let port = free_port();
    let config = lenders_coordinator(dir, port, silos, jobs);
    let mut children: Vec<(String, Child)> = silos
        .iter()
        .map(|(name, folder)| (name.clone(), spawn_agent(dir, port, name, folder)))
        .collect();
    let report = dir.join("outcome.json");
    children.push(("coordinator".into(), spawn_coordinator(&config, &report)));
    wait_all(&mut children, Duration::from_secs(120));
    read_json(&report)
}

/// A coordinator config on `port` running `jobs` for the lenders `silos`.
fn lenders_coordinator(dir: &Path, port: u16, silos: &[(String, PathBuf)], jobs: &str) -> PathBuf {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n{jobs}",
        dir.join("coordinator.db").display()
    );
    for (s, _) in silos {
        text.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\n"
        ));
    }
    let config = dir.join("coordinator.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_credit_job_over_agent_processes_equals_the_in_process_newton_fit() {
    let dir = tempfile::tempdir().unwrap();
    let (table, silos) = lenders(dir.path(), &loans(), "loans.csv");
    let options = ClassificationOptions {
        mlp_hidden: 0,
        ..Default::default()
    };
    let reference = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fedretail_sim::run_credit(
            &table,
            &spec(),
            &options,
            &|_| {},
        ))
        .unwrap();
    let pooled_train: usize = reference.silos.iter().map(|s| s.train_rows).sum();

    let port = free_port();
    let ids: Vec<String> = silos.iter().map(|(name, _)| name.clone()).collect();
    let config = coordinator_config(dir.path(), port, options.l2 * pooled_train as f64, &ids);
    let mut children: Vec<(String, Child)> = silos
        .iter()
        .map(|(name, folder)| (name.clone(), spawn_agent(dir.path(), port, name, folder)))
        .collect();
    let report = dir.path().join("outcome.json");
    children.push(("coordinator".into(), spawn_coordinator(&config, &report)));
    wait_all(&mut children, Duration::from_secs(120));

    let outcome = read_json(&report);
    let job = &outcome["jobs"][0];
    assert_eq!(job["failed"], false, "{}", job["status"]);
    assert_eq!(job["strategy"], "newton");
    // The encoding: numbers standardized, homes one-hot, the loan id dropped.
    let features: Vec<&str> = job["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(features, reference.feature_names);
    assert_eq!(
        features,
        ["Income", "Age", "Home=own", "Home=parents", "Home=rent"]
    );
    let dropped = job["dropped_features"].as_array().unwrap();
    assert_eq!(dropped[0][0], "LoanId", "{dropped:?}");
    let out = job["stores_not_taking_part"].as_array().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0][0], "tiny");
    assert!(
        out[0][1].as_str().unwrap().contains("training rows"),
        "{out:?}"
    );

    assert_same_model(
        job,
        &reference.newton_parameters,
        "Newton over agents vs in process",
    );

    // Each lender scored its own rows, and only those.
    for (name, folder) in silos.iter().filter(|(n, _)| n != "tiny") {
        let own = std::fs::read_to_string(folder.join("loans.csv")).unwrap();
        let rows = own.lines().count() - 1;
        let scores = folder.join("results").join("credit").join("scores.csv");
        let mut r = csv::Reader::from_path(&scores).unwrap();
        let mut lines: Vec<u64> = r
            .records()
            .map(|rec| rec.unwrap()[0].parse().unwrap())
            .collect();
        lines.sort_unstable();
        let expected: Vec<u64> = (2..rows as u64 + 2).collect();
        assert_eq!(lines, expected, "{name}: one score per row of its own file");
        let card = read_json(
            &folder
                .join("results")
                .join("credit")
                .join("model_card.json"),
        );
        assert_eq!(card["task"], "tabular");
        assert!(card["metrics"]["auc"].as_f64().unwrap() > 0.6, "{card}");
    }
}

/// FedProx and a server optimizer (FedAdam) over agent processes, and FedPer on top:
/// each job's model is its in-process run's (the same local steps, proximal pull,
/// server moments and heads kept at the lenders), so what the reference tests prove of
/// the strategies holds over the wire too.
#[test]
fn fedprox_and_fedadam_jobs_over_agent_processes_equal_their_in_process_runs() {
    use fedretail_coordinator::{JobConfig, ServerOptimizerKind};
    use fedretail_core::TaskSpec;
    let dir = tempfile::tempdir().unwrap();
    let (table, silos) = lenders(dir.path(), &loans(), fedretail_sim::SILO_TABLE_FILE);
    let options = ClassificationOptions {
        rounds: 6,
        mlp_hidden: 3,
        proximal_mu: 0.1,
        server_optimizer: ServerOptimizerKind::Adam,
        server_learning_rate: 0.03,
        personal_head: true,
        ..Default::default()
    };
    let reference = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fedretail_sim::run_credit(
            &table,
            &spec(),
            &options,
            &|_| {},
        ))
        .unwrap();
    // With personal heads, the MLP again, FedPer-style, and nothing else changes.
    let with_heads = fedretail_sim::tabular_jobs(&spec(), &options, &reference);
    let ids: Vec<&str> = with_heads.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "credit-newton",
            "credit-fedavg",
            "credit-mlp",
            "credit-mlp-fedper"
        ]
    );
    let heads = |j: &JobConfig| matches!(&j.task, TaskSpec::Tabular(t) if t.personal_head);
    assert!(heads(&with_heads[3]) && !with_heads[..3].iter().any(heads));
    let jobs: Vec<JobConfig> = with_heads
        .into_iter()
        .filter(|j| j.job_id != "credit-newton")
        .map(|j| JobConfig {
            min_stores: 3,
            expected_stores: Some(4),
            ..j
        })
        .collect();
    assert_eq!(jobs.len(), 3);

    #[derive(serde::Serialize)]
    struct Jobs {
        jobs: Vec<JobConfig>,
    }
    let jobs = toml::to_string(&Jobs { jobs }).unwrap();
    assert!(
        jobs.contains("proximal_mu = 0.1") && jobs.contains("server_optimizer = \"adam\""),
        "{jobs}"
    );
    let outcome = run_lenders(dir.path(), &silos, &jobs);
    let expected = [
        ("credit-fedavg", reference.fedavg_parameters.clone()),
        ("credit-mlp", reference.mlp_parameters.clone().unwrap()),
        (
            "credit-mlp-fedper",
            reference.fedper_parameters.clone().unwrap(),
        ),
    ];
    for (job, (id, parameters)) in outcome["jobs"].as_array().unwrap().iter().zip(expected) {
        assert_eq!(job["job_id"], id);
        assert_eq!(job["failed"], false, "{id}: {}", job["status"]);
        assert_same_model(job, &parameters, id);
    }
    // The heads too: each lender's AUC under its own head is its in-process party's.
    let fedper = &outcome["jobs"][2];
    for silo in &reference.silos {
        let at_lender = fedper["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["store_id"] == silo.silo.as_str())
            .map(|e| e["metrics"]["auc"].as_f64().unwrap());
        let (Some(wire), Some(own)) = (at_lender, silo.auc_mlp_fedper) else {
            panic!("{}: no FedPer AUC over the wire or in process", silo.silo);
        };
        assert!((wire - own).abs() < 1e-9, "{}: {wire} vs {own}", silo.silo);
    }
}

/// Eight lenders of two kinds whose borrowers' risk runs opposite ways with income.
fn two_kinds_of_loans() -> String {
    let mut text = String::from("Status,Lender,Income,Age\n");
    let mut state = 99u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for lender in ["a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"] {
        let sign = if lender.starts_with('a') { -1.0 } else { 1.0 };
        for _ in 0..160 {
            let income = 40.0 + 120.0 * next();
            let age = 20.0 + 50.0 * next();
            let z = sign * (income - 100.0) / 15.0 + (age - 45.0) / 40.0;
            let bad = next() < 1.0 / (1.0 + (-z).exp());
            let status = if bad { "bad" } else { "good" };
            text.push_str(&format!("{status},{lender},{income:.1},{age:.0}\n"));
        }
    }
    text
}

/// An 18-round FedAvg job over the eight lenders' `loans.csv`, with `task` (TOML
/// lines) added to its task.
fn lender_fedavg_job(job: &str, task: &str) -> String {
    format!(
        "\n[[jobs]]\njob_id = \"{job}\"\nstrategy = \"fedavg\"\nrounds = 18\nmin_stores = 8\n\
         [jobs.fedavg]\nlearning_rate = 0.3\nlocal_epochs = 2\n\
         [jobs.task]\nkind = \"tabular\"\nfile = \"loans.csv\"\ntarget = \"Status\"\n\
         positive = \"bad\"\n{task}\n"
    )
}

/// The mean held-out AUC of `job` at the four lenders of `kind` ('a' or 'b').
fn mean_auc(job: &serde_json::Value, kind: char) -> f64 {
    let aucs: Vec<f64> = job["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["store_id"].as_str().unwrap().starts_with(kind))
        .map(|e| e["metrics"]["auc"].as_f64().unwrap())
        .collect();
    assert_eq!(aucs.len(), 4, "{job}");
    aucs.iter().sum::<f64>() / 4.0
}

/// Clustered FedAvg over agent processes, beside one FedAvg model in the same run: the
/// groups found from the lenders' data are their two kinds, and each kind scores its
/// own held-out rows better with its group's model than with the single one.
#[test]
fn a_grouped_fedavg_job_over_agent_processes_finds_two_kinds_of_lender() {
    let dir = tempfile::tempdir().unwrap();
    let (_, silos) = lenders(dir.path(), &two_kinds_of_loans(), "loans.csv");
    let jobs = [("one-model", "groups = 1"), ("grouped", "groups = 2")]
        .map(|(job, task)| lender_fedavg_job(job, task))
        .concat();
    let outcome = run_lenders(dir.path(), &silos, &jobs);
    let jobs = outcome["jobs"].as_array().unwrap();
    let (one, grouped) = (&jobs[0], &jobs[1]);
    assert_eq!(
        grouped["strategy"], "clustered_fedavg",
        "{}",
        grouped["status"]
    );
    assert_eq!(grouped["failed"], false, "{}", grouped["status"]);
    let leaf = |store: &str| {
        grouped["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["store_id"] == store)
            .map(|e| e["metrics"]["group_leaf"].as_f64().unwrap())
            .unwrap()
    };
    for kind in ['a', 'b'] {
        let leaves: Vec<f64> = (1..=4).map(|i| leaf(&format!("{kind}{i}"))).collect();
        assert!(leaves.iter().all(|l| *l == leaves[0]), "{kind}: {leaves:?}");
        let (single, own) = (mean_auc(one, kind), mean_auc(grouped, kind));
        eprintln!("lenders {kind}: mean AUC {own:.3} grouped, {single:.3} one model");
        assert!(
            own > single + 0.05,
            "{kind}: grouped {own}, one model {single}"
        );
    }
    assert_ne!(leaf("a1"), leaf("b1"), "the two kinds share a group");
}

/// FedPer over agent processes: eight lenders of two kinds whose risk runs opposite
/// ways with income share an MLP's body and keep their own heads. Each kind is
/// served far better than by the averaged MLP, which has to split the difference.
#[test]
fn fedper_heads_kept_at_the_lenders_serve_both_kinds_over_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (_, silos) = lenders(dir.path(), &two_kinds_of_loans(), "loans.csv");
    let mlp = "model = { mlp = { hidden = 4 } }";
    let jobs = [
        ("mlp", format!("{mlp}\npersonal_head = false")),
        ("fedper", format!("{mlp}\npersonal_head = true")),
    ]
    .map(|(job, task)| lender_fedavg_job(job, &task))
    .concat();
    let outcome = run_lenders(dir.path(), &silos, &jobs);
    let jobs = outcome["jobs"].as_array().unwrap();
    for job in jobs {
        assert_eq!(job["failed"], false, "{}", job["status"]);
    }
    // Each lender saved its head where it keeps its results, for a restart to carry
    // on from: the output layer of a 4-unit MLP, 5 values. The averaged MLP keeps none.
    for (_, folder) in &silos {
        let kept = folder.join("results/fedper/kept_state.json");
        let state: serde_json::Value = read_json(&kept);
        assert_eq!(state["values"].as_array().unwrap().len(), 5, "{state}");
        assert!(!folder.join("results/mlp/kept_state.json").exists());
    }
    for kind in ['a', 'b'] {
        let (plain, fedper) = (mean_auc(&jobs[0], kind), mean_auc(&jobs[1], kind));
        eprintln!("lenders {kind}: mean AUC {fedper:.3} FedPer, {plain:.3} FedAvg MLP");
        assert!(fedper > 0.8, "{kind}: FedPer {fedper}");
        assert!(
            fedper > plain + 0.05,
            "{kind}: FedPer {fedper}, FedAvg {plain}"
        );
    }
}

/// A lender killed (SIGKILL) in the middle of a FedPer job and started again carries
/// on with the head it trained: the agent takes back what it saved in its results
/// folder, and the job finishes with it.
#[test]
fn a_lender_restarted_mid_job_carries_on_with_its_own_head() {
    let dir = tempfile::tempdir().unwrap();
    let (_, silos) = lenders(dir.path(), &two_kinds_of_loans(), "loans.csv");
    // Seven of eight lenders make a round, and a round missing one closes in 5 s.
    let job = lender_fedavg_job(
        "fedper",
        "model = { mlp = { hidden = 4 } }\npersonal_head = true",
    )
    .replace("rounds = 18", "rounds = 40")
    .replace("min_stores = 8", "min_stores = 7\nround_timeout_secs = 5.0");
    let port = free_port();
    let config = lenders_coordinator(dir.path(), port, &silos, &job);
    let mut children: Vec<(String, Child)> = silos
        .iter()
        .map(|(name, folder)| (name.clone(), spawn_agent(dir.path(), port, name, folder)))
        .collect();
    let report = dir.path().join("outcome.json");
    let (coordinator, lines) = spawn_coordinator_logged(&config, &report);
    wait_for_line(&lines, Duration::from_secs(120), |l| {
        l.starts_with("round 4 done")
    });
    let (name, mut first) = children.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let kept = silos[0].1.join("results/fedper/kept_state.json");
    assert!(kept.exists(), "{name} saved no head before it was killed");
    // The head is the coordinator's run of the job's: its run id came over the wire.
    let run_id = |path: &std::path::Path| read_json(path)["run_id"].as_str().unwrap().to_string();
    let run = run_id(&kept);
    assert!(
        run.len() == 32 && run.chars().all(|c| c.is_ascii_hexdigit()),
        "{run}"
    );
    let (again, log) = spawn_logged(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(dir.path().join(format!("{name}.toml")))
            .env("FEDRETAIL_LOG", "info"),
    );
    children.push((name.clone(), again));
    children.push(("coordinator".into(), coordinator));
    wait_all(&mut children, Duration::from_secs(180));
    let log: Vec<String> = log.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("carrying on from the state kept before a restart")),
        "{log:#?}"
    );
    let outcome = read_json(&report);
    let job = &outcome["jobs"][0];
    assert_eq!(job["failed"], false, "{}", job["status"]);
    let evaluated = job["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["store_id"] == name.as_str());
    assert!(evaluated, "the restarted {name} was not evaluated: {job}");
    for (_, folder) in &silos {
        assert_eq!(run_id(&folder.join("results/fedper/kept_state.json")), run);
    }
    drop(lines);
}
