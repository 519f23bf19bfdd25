//! The built `fedretail` binary as an operator runs it: one coordinator process and
//! several agent processes on 127.0.0.1, configured by files.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{
    free_port, generate, read_json, spawn_agent, spawn_coordinator, stdout_of, wait_all, write, BIN,
};

#[test]
fn coordinator_and_three_agent_processes_complete_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
    let args = [
        "--stores",
        "3",
        "--days",
        "200",
        "--young-fraction",
        "0",
        "--seed",
        "9",
    ];
    assert!(generate(&net, &args).contains("wrote 3 stores"));

    let port = free_port();
    // store-004 (with store-001's data) accepts only jobs with an epsilon budget.
    let stores = ["store-001", "store-002", "store-003", "store-004"];
    let mut coordinator_toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n\n[job]\nstrategy = \"fedavg\"\nrounds = 3\nmin_stores = 3\nexpected_stores = 4\nround_timeout_secs = 60\n\n[job.fedavg]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.05\nf32_updates = true\n\n[job.privacy]\nsecure_aggregation = true\nclip = 0.5\nnoise = \"distributed\"\nnoise_multiplier = 0.3\nexpected_dropout = 0.0\n",
        dir.path().join("coordinator.db").display()
    );
    for s in stores {
        coordinator_toml.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\n"
        ));
    }
    write(&dir.path().join("coordinator.toml"), &coordinator_toml);

    // Agents start first: they must retry until the coordinator is up.
    let mut children = Vec::new();
    for s in stores {
        let cfg = dir.path().join(format!("{s}.toml"));
        let (data, floor) = match s {
            "store-004" => (
                "store-001",
                "[privacy]\nrequire_secure_aggregation = true\nmax_epsilon = 8.0\n",
            ),
            _ => (s, ""),
        };
        write(
            &cfg,
            &format!(
                "coordinator = \"http://127.0.0.1:{port}\"\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\nbusiness_type = \"grocery\"\n{floor}\n[data]\ntransactions = \"net/{data}/transactions.csv\"\npromotions = \"net/{data}/promotions.csv\"\n"
            ),
        );
        children.push((s.to_string(), spawn_agent(&cfg)));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = dir.path().join("outcome.json");
    let coordinator = spawn_coordinator(&dir.path().join("coordinator.toml"), &report);
    children.push(("coordinator".into(), coordinator));
    wait_all(&mut children, Duration::from_secs(240));

    let report = read_json(&report);
    let outcome = &report["jobs"][0];
    assert_eq!(outcome["strategy"], "fedavg");
    assert_eq!(outcome["rounds"].as_array().unwrap().len(), 3);
    for r in outcome["rounds"].as_array().unwrap() {
        assert_eq!(r["participants"].as_array().unwrap().len(), 3);
    }
    let evals = outcome["evaluations"].as_array().unwrap();
    assert_eq!(evals.len(), 3);
    for e in evals {
        let wape = e["metrics"]["wape_federated"].as_f64().unwrap();
        assert!(wape.is_finite() && wape > 0.0 && wape < 2.0, "{wape}");
    }
    assert!(outcome["bytes_up"].as_u64().unwrap() > 0);
    // The store whose floor asks for an epsilon budget sat the job out, and said why.
    let out = outcome["stores_not_taking_part"].as_array().unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0][0], "store-004");
    assert!(
        out[0][1]
            .as_str()
            .unwrap()
            .contains("epsilon 8; the job sets none"),
        "{out:?}"
    );
    // Every round ran under SecAgg+ with distributed noise, and was charged for it.
    let privacy = &outcome["privacy"];
    assert_eq!(privacy["secure_aggregation"], true);
    assert_eq!(privacy["noise"], "distributed");
    assert_eq!(privacy["ledger"].as_array().unwrap().len(), 3);
    assert!(privacy["epsilon_spent"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_configs_and_data_are_reported_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // Bad settings, a job naming an unknown task, or an option the task does not have,
    // are refused before anything starts, with the name.
    for (job, says) in [
        (
            "[job]\nfraction = 2.0\n",
            "sampling fraction must be in (0, 1], got 2",
        ),
        (
            "[job]\nstrategy = \"fedavg\"\nmin_stores = 3\n[job.privacy]\nclip = 0.5\nnoise = \"distributed\"\nnoise_multiplier = 1.0\n",
            "only with secure_aggregation = true",
        ),
        ("[job]\ntask = \"weather\"\n", "weather"),
        (
            "[job.task]\nkind = \"segments\"\nclusters = 1\n",
            "task.clusters must be in 2..=64, got 1",
        ),
        ("[job.task]\nkind = \"churn\"\nhorizon = 30\n", "horizon"),
        (
            "[job]\ntask = \"segments\"\nstrategy = \"newton\"\n",
            "bisecting_kmeans",
        ),
        (
            "[limits]\nrequest_timeout_secs = 10\n",
            "limits.request_timeout_secs must be > 30",
        ),
        ("[limits]\nmax_concurrent_streams = 0\n", "limits.max_concurrent_streams"),
    ] {
        write(&cfg, job);
        let out = Command::new(BIN)
            .args(["coordinator", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{job}: {err}"
        );
    }

    let store = dir.path().join("s");
    std::fs::create_dir_all(&store).unwrap();
    write(
        &store.join("transactions.csv"),
        "transaction_id,timestamp,product_id,category,quantity,unit_price\nt1,not-a-date,p,c,1,2\n",
    );
    let out = Command::new(BIN)
        .args(["inspect", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("column 'timestamp', line 2: cannot read 'not-a-date'"),
        "{err}"
    );
}

#[test]
fn analyze_credit_writes_its_report_and_names_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("Status,Job,Income,Home\n");
    for i in 0..160 {
        let job = ["fixed", "freelance"][i % 2];
        let bad = i % 3 == 0; // both lenders need both classes
        let income = if bad { 40 + i % 50 } else { 90 + i % 60 };
        let status = if bad { "bad" } else { "good" };
        let home = ["rent", "owner", ""][i % 3];
        text.push_str(&format!("{status},{job},{income},{home}\n"));
    }
    let data = dir.path().join("credit.csv");
    write(&data, &text);
    let report = dir.path().join("credit.json");
    let html = dir.path().join("credit.html");
    let out = Command::new(BIN)
        .args(["analyze", "credit", "--rounds", "5", "--mlp-hidden", "0"])
        .arg("--data")
        .arg(&data)
        .arg("--work-dir")
        .arg(dir.path().join("lenders"))
        .arg("--report")
        .arg(&report)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The HTML report: ROC curves of the reference, then the jobs over agents.
    let page = std::fs::read_to_string(&html).unwrap();
    for needle in ["ROC curves", "Job credit-newton", "Summary as printed"] {
        assert!(page.contains(needle), "the HTML report lacks {needle}");
    }
    assert!(dir.path().join("credit-figures").join("roc.svg").is_file());
    let json = read_json(&report);
    let reference = &json["reference"];
    for key in ["pooled_auc_federated", "pooled_auc_centralized", "silos"] {
        assert!(reference.get(key).is_some(), "report lacks {key}");
    }
    let silos = reference["silos"].as_array().unwrap();
    assert_eq!(silos.len(), 2);
    for s in silos {
        assert!(s["auc_local"].is_number() && s["auc_federated"].is_number());
    }
    // The same jobs over one agent per lender, exact Newton equal to the reference.
    let jobs = json["network"]["jobs"].as_array().unwrap();
    let ids: Vec<&str> = jobs
        .iter()
        .map(|j| j["job"]["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["credit-newton", "credit-fedavg"]);
    // Exact Newton to rounding; FedAvg is the same computation (same seeds, f32
    // updates), summed in arrival order.
    let gaps = &json["gap_network_vs_in_process"];
    assert!(gaps["credit-newton"].as_f64().unwrap() < 1e-9, "{gaps}");
    assert!(gaps["credit-fedavg"].as_f64().unwrap() < 1e-6, "{gaps}");
    for j in jobs {
        assert_eq!(j["job"]["evaluations"].as_array().unwrap().len(), 2);
    }
    assert!(dir
        .path()
        .join("lenders/silo-000-fixed/results/credit-newton/scores.csv")
        .exists());

    let out = Command::new(BIN)
        .args(["analyze", "credit", "--target", "Missing"])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Missing") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn bench_secagg_checks_its_sums_and_prints_json() {
    let out = stdout_of(Command::new(BIN).args([
        "bench",
        "secagg",
        "--stores",
        "5,12",
        "--dims",
        "64",
        "--dropouts",
        "0,0.2",
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = json["rows"].as_array().unwrap();
    // Two sizes x two dropout rates x both mask PRGs.
    assert_eq!(rows.len(), 8);
    for row in rows {
        assert_eq!(row["secagg"]["sum_exact"], true);
        assert!(row["secagg"]["store_bytes_up"].as_f64().unwrap() > 4.0 * 64.0);
    }
    let prgs: std::collections::BTreeSet<&str> =
        rows.iter().filter_map(|r| r["mask_prg"].as_str()).collect();
    assert_eq!(prgs, ["aes128_ctr", "chacha20"].into());
}

/// Two tiny sizes end to end: each generated, trained over gRPC by a child process,
/// reported with its own figures, and its network removed afterwards.
#[test]
fn bench_scale_trains_each_size_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout_of(
        Command::new(BIN)
            .args(["bench", "scale", "--stores", "3,5", "--rounds", "2"])
            .args(["--days", "120", "--volume", "0.3"])
            .arg("--dir")
            .arg(dir.path()),
    );
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, n) in rows.iter().zip([3, 5]) {
        assert_eq!(row["stores"], n);
        assert_eq!(row["stores_trained"], n);
        assert!(row["features_seconds"].as_f64().unwrap() > 0.0);
        let rate = row["rounds_per_second"].as_f64().unwrap();
        assert!(rate > 0.0 && rate.is_finite(), "{rate}");
        assert!(row["bytes_up"].as_f64().unwrap() > 0.0);
        assert!(row["peak_rss_mib"].as_f64().unwrap() > 1.0);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Many agents on their own connections against a coordinator process: every agent
/// takes part in every round, and the coordinator's own memory and round times are
/// reported.
#[test]
fn bench_load_runs_every_agent_through_every_round() {
    let out =
        stdout_of(Command::new(BIN).args(["bench", "load", "--agents", "30", "--rounds", "2"]));
    let row: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(row["status"], "completed 2 rounds", "{row}");
    assert_eq!(row["participants_per_round"], serde_json::json!([30, 30]));
    assert!(
        row["coordinator_peak_rss_bytes"].as_f64().unwrap() > 1e6,
        "{row}"
    );
    let median = row["round_seconds_median"].as_f64().unwrap();
    assert!(median > 0.0 && median <= row["round_seconds_max"].as_f64().unwrap());
}

/// `GET path` on 127.0.0.1:port; the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

#[test]
fn metrics_count_refused_messages_and_json_logs_name_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port, board_port) = (free_port(), free_port(), free_port());
    let cfg = dir.path().join("c.toml");
    // A jobs folder and no job: the coordinator serves until it is stopped.
    write(
        &cfg,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\njobs_dir = \"{}\"\n\n[limits]\nfailed_registrations_per_minute = 2\n\n[[stores]]\nstore_id = \"s1\"\ntoken = \"right\"\n",
            dir.path().join("c.db").display(),
            dir.path().join("jobs").display()
        ),
    );
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    let log = std::fs::File::create(dir.path().join("log.jsonl")).unwrap();
    let mut coordinator = Command::new(BIN)
        .args(["coordinator", "--log-format", "json", "--config"])
        .arg(&cfg)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--dashboard-listen")
        .arg(format!("127.0.0.1:{board_port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = None;
    for _ in 0..100 {
        first = http_get(metrics_port, "/metrics");
        if first.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = first.expect("no /metrics answer within 10 s");
    assert!(
        first.contains("fedretail_stores_registered 0\n") && first.ends_with("# EOF\n"),
        "{first}"
    );

    // Two registrations with the wrong token are refused, and counted by reason.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}");
        let mut client = fedretail_proto::v1::coordinator_client::CoordinatorClient::connect(url)
            .await
            .unwrap();
        for _ in 0..2 {
            let req = fedretail_proto::v1::RegisterStoreRequest {
                protocol_version: fedretail_proto::PROTOCOL_VERSION,
                store_id: "s1".into(),
                token: "wrong".into(),
                business_type: "florist".into(),
            };
            assert!(client.register_store(req).await.is_err());
        }
        // Two failures used this address's budget: even the right token waits.
        let req = fedretail_proto::v1::RegisterStoreRequest {
            protocol_version: fedretail_proto::PROTOCOL_VERSION,
            store_id: "s1".into(),
            token: "right".into(),
            business_type: "florist".into(),
        };
        let held = client.register_store(req).await.unwrap_err();
        assert_eq!(held.code(), tonic::Code::Unavailable, "{held:?}");
        assert!(held.message().contains("too many failed registrations"));
    });
    let after = http_get(metrics_port, "/metrics").unwrap();
    assert!(
        after.contains("fedretail_messages_refused_total{reason=\"wrong_token\"} 2"),
        "{after}"
    );
    assert!(
        after.contains("fedretail_messages_refused_total{reason=\"rate_limited\"} 1"),
        "{after}"
    );
    assert!(http_get(metrics_port, "/nothing").is_none());
    // The dashboard counts them too, and its page lists them.
    let state = http_get(board_port, "/api/state").expect("the dashboard answers");
    assert!(state.contains("\"wrong_token\":2"), "{state}");
    let page = http_get(board_port, "/").unwrap();
    assert!(page.contains("refused a message: wrong_token") && page.contains("<svg"));
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();

    let log = std::fs::read_to_string(dir.path().join("log.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "message_refused")
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    assert_eq!(refused[0]["reason"], "wrong_token");
    assert_eq!(refused[2]["reason"], "rate_limited");
    assert!(refused[0]["time"].as_str().unwrap().ends_with('Z'));
}

/// Rounds the coordinator has completed, from its metrics; None while it is not up.
fn rounds_completed(metrics_port: u16) -> Option<u64> {
    http_get(metrics_port, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix("fedretail_rounds_completed_total "))?
        .parse()
        .ok()
}

#[test]
fn agents_reconnect_to_a_coordinator_killed_mid_job_which_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let net = dir.path().join("net");
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
    generate(&net, &args);
    let (port, metrics_port) = (free_port(), free_port());
    let stores = ["store-001", "store-002", "store-003"];
    let mut toml = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n\n[job]\nstrategy = \"fedavg\"\nrounds = 40\nmin_stores = 3\nexpected_stores = 3\nround_timeout_secs = 60\n",
        dir.path().join("c.db").display()
    );
    let mut children = Vec::new();
    for s in stores {
        toml.push_str(&format!(
            "\n[[stores]]\nstore_id = \"{s}\"\ntoken = \"t-{s}\"\n"
        ));
        let cfg = dir.path().join(format!("{s}.toml"));
        write(
            &cfg,
            &format!("coordinator = \"http://127.0.0.1:{port}\"\nstore_id = \"{s}\"\ntoken = \"t-{s}\"\n\n[data]\ntransactions = \"net/{s}/transactions.csv\"\n"),
        );
        children.push((s.to_string(), spawn_agent(&cfg)));
    }
    let config = dir.path().join("c.toml");
    write(&config, &toml);
    let coordinator = |report: &str| {
        Command::new(BIN)
            .args(["coordinator", "--config"])
            .arg(&config)
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--report")
            .arg(dir.path().join(report))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill it (SIGKILL: no goodbye) once a few rounds are checkpointed.
    let mut first = coordinator("first.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rounds_completed(metrics_port).unwrap_or(0) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no rounds within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();

    children.push(("coordinator".into(), coordinator("second.json")));
    wait_all(&mut children, Duration::from_secs(240));
    let job = &read_json(&dir.path().join("second.json"))["jobs"][0];
    assert_eq!(job["failed"], false, "{}", job["status"]);
    let resumed = job["resumed_after_round"]
        .as_u64()
        .expect("the job resumed");
    assert!(resumed >= 3, "resumed after round {resumed}");
    let rounds: Vec<u64> = job["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["round"].as_u64().unwrap())
        .collect();
    // No completed round is lost or redone: the rest of the job, in order.
    assert_eq!(rounds, (resumed + 1..=40).collect::<Vec<_>>());
    assert_eq!(job["evaluations"].as_array().unwrap().len(), 3);
}
