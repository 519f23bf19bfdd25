//! The coordinator over TLS, as the README's deployment runs it: `fedretail certs`
//! makes the network's CA and the coordinator's certificate, two agents that trust the
//! CA run a job over https://, and an agent talking plain HTTP, one holding another
//! network's CA, and plain HTTP to another machine are each refused with a message
//! that says why.

use crate::common::{
    free_port, generate, read_json, spawn_agent, spawn_coordinator, wait_all, wait_for_port, BIN,
};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn certs(out: &Path) {
    let status = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn agent_config(dir: &Path, store: &str, url: &str, ca: Option<&str>) -> std::path::PathBuf {
    let cfg = dir.join(format!(
        "{store}-{}.toml",
        url.len() + ca.map_or(0, str::len)
    ));
    let ca = ca.map(|c| format!("ca = \"{c}\"\n")).unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "coordinator = \"{url}\"\nstore_id = \"{store}\"\ntoken = \"token-{store}\"\nreconnect_for_secs = 20\n{ca}results_dir = \"net/{store}/results\"\n[data]\ntransactions = \"net/{store}/transactions.csv\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// Runs an agent to its end; its exit status and stderr.
fn run_agent(cfg: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agents_that_trust_the_networks_ca_train_over_tls_and_the_rest_are_told_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(&d.join("certs"));
    certs(&d.join("other"));
    generate(
        &d.join("net"),
        &[
            "--stores",
            "2",
            "--days",
            "200",
            "--young-fraction",
            "0",
            "--late-joiners",
            "0",
        ],
    );
    let port = free_port();
    let config = d.join("coordinator.toml");
    let stores = ["store-001", "store-002"];
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[jobs]]\njob_id = \"demand\"\ntask = \"demand\"\nrounds = 2\nmin_stores = 2\nexpected_stores = 2\nround_timeout_secs = 60\nregistration_timeout_secs = 60\n",
        d.join("coordinator.db").display(),
        d.join("certs/coordinator.pem").display(),
        d.join("certs/coordinator-key.pem").display()
    );
    for s in stores {
        text.push_str(&format!(
            "[[stores]]\nstore_id = \"{s}\"\ntoken = \"token-{s}\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let report = d.join("outcome.json");
    let mut children = vec![(
        "coordinator".to_string(),
        spawn_coordinator(&config, &report),
    )];
    wait_for_port(port, Duration::from_secs(60));

    // Refused before the job starts: each says why, and the job waits for the real ones.
    let plain = agent_config(d, stores[0], &format!("http://127.0.0.1:{port}"), None);
    let (ok, err) = run_agent(&plain);
    assert!(
        !ok && err.contains("if it serves TLS, use https://"),
        "{err}"
    );
    let stranger = agent_config(
        d,
        stores[0],
        &format!("https://localhost:{port}"),
        Some("other/ca.pem"),
    );
    let (ok, err) = run_agent(&stranger);
    assert!(
        !ok && err.contains("certificate does not check out"),
        "{err}"
    );
    let no_ca = agent_config(d, stores[0], &format!("https://localhost:{port}"), None);
    let (ok, err) = run_agent(&no_ca);
    assert!(!ok && err.contains("set ca ="), "{err}");
    let remote = agent_config(d, stores[0], "http://192.0.2.7:50051", None);
    let (ok, err) = run_agent(&remote);
    assert!(!ok && err.contains("insecure = true"), "{err}");

    // By name and by address: the certificate covers localhost and 127.0.0.1.
    for (store, host) in stores.iter().zip(["localhost", "127.0.0.1"]) {
        let cfg = agent_config(
            d,
            store,
            &format!("https://{host}:{port}"),
            Some("certs/ca.pem"),
        );
        children.push((store.to_string(), spawn_agent(&cfg)));
    }
    wait_all(&mut children, Duration::from_secs(120));
    let outcome = read_json(&report);
    let job = &outcome["jobs"][0];
    assert_eq!(job["failed"], false, "{}", job["status"]);
    assert_eq!(job["evaluations"].as_array().unwrap().len(), 2);
}

#[test]
fn a_coordinator_refuses_plain_http_off_this_machine_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "listen = \"0.0.0.0:0\"\n[[jobs]]\ntask = \"demand\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["coordinator", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("plain HTTP on 0.0.0.0:0") && err.contains("--insecure"),
        "{err}"
    );
    let missing = dir.path().join("tls.toml");
    std::fs::write(
        &missing,
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"nowhere.pem\"\nkey = \"nowhere-key.pem\"\n[[jobs]]\ntask = \"demand\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["coordinator", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("certificate nowhere.pem"),
        "{err}"
    );
}

/// `fedretail enroll`: the store's certificate and the fingerprint the coordinator pins.
fn enroll(certs: &Path, store: &str) -> String {
    let out = Command::new(BIN)
        .args(["enroll", "--certs"])
        .arg(certs)
        .args(["--store", store])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("certificate sha256 "))
        .unwrap_or_else(|| panic!("no fingerprint in {text}"))
        .to_string()
}

/// An agent config for `store` that shows `cert_of`'s certificate (no token) and signs
/// its SecAgg+ keys with its own enrolled identity, checking neighbours by the roster.
fn enrolled_agent(dir: &Path, store: &str, port: u16, cert_of: Option<&str>) -> std::path::PathBuf {
    let cfg = dir.join(format!("{store}-as-{}.toml", cert_of.unwrap_or("none")));
    let roster = std::fs::read_to_string(dir.join("certs/roster.pub")).unwrap();
    let identity = cert_of
        .map(|c| {
            format!(
                "cert = \"certs/stores/{c}.pem\"\nkey = \"certs/stores/{c}-key.pem\"\n\
                 secagg_identity = \"certs/stores/{store}-secagg.json\"\nroster_key = \"{roster}\"\n"
            )
        })
        .unwrap_or_default();
    std::fs::write(
        &cfg,
        format!(
            "coordinator = \"https://localhost:{port}\"\nstore_id = \"{store}\"\nca = \"certs/ca.pem\"\n\
             {identity}reconnect_for_secs = 10\nresults_dir = \"net/{store}/results\"\n\
             [data]\ntransactions = \"net/{store}/transactions.csv\"\n"
        ),
    )
    .unwrap();
    cfg
}

/// Mutual TLS: each store's certificate, issued by `fedretail enroll`, is its identity
/// (no token). A store showing no certificate, or another enrolled store's, is refused
/// with the reason; the stores showing their own train under SecAgg+, each signing its
/// keys with the identity `enroll` issued and checking every neighbour's.
#[test]
fn stores_enrolled_by_certificate_join_under_mutual_tls_and_impostors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(&d.join("certs"));
    let stores = ["store-001", "store-002", "store-003"];
    let pins: Vec<String> = stores.iter().map(|s| enroll(&d.join("certs"), s)).collect();
    enroll(&d.join("certs"), "store-009");
    generate(
        &d.join("net"),
        &[
            "--stores",
            "3",
            "--days",
            "200",
            "--young-fraction",
            "0",
            "--late-joiners",
            "0",
        ],
    );
    let port = free_port();
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\n[tls]\ncert = \"{c}/coordinator.pem\"\n\
         key = \"{c}/coordinator-key.pem\"\nclient_ca = \"{c}/ca.pem\"\n[[jobs]]\njob_id = \"demand\"\n\
         task = \"demand\"\nstrategy = \"fedavg\"\nrounds = 2\nmin_stores = 3\nexpected_stores = 3\nround_timeout_secs = 60\n\
         registration_timeout_secs = 60\n[jobs.privacy]\nsecure_aggregation = true\nclip = 10.0\n",
        d.join("coordinator.db").display(),
        c = d.join("certs").display(),
    );
    for (s, pin) in stores.iter().zip(&pins) {
        text.push_str(&format!(
            "[[stores]]\nstore_id = \"{s}\"\ncertificate_sha256 = \"{pin}\"\n"
        ));
    }
    let config = d.join("coordinator.toml");
    std::fs::write(&config, text).unwrap();
    let report = d.join("outcome.json");
    let mut children = vec![(
        "coordinator".to_string(),
        spawn_coordinator(&config, &report),
    )];
    wait_for_port(port, Duration::from_secs(60));

    let (ok, err) = run_agent(&enrolled_agent(d, stores[0], port, Some("store-009")));
    assert!(
        !ok && err.contains("must present the certificate it was enrolled with"),
        "{err}"
    );
    let (ok, err) = run_agent(&enrolled_agent(d, stores[0], port, None));
    assert!(
        !ok && err.contains("requires each store's certificate"),
        "{err}"
    );
    // Another store's signing identity is named at start, before any connection.
    let borrowed = enrolled_agent(d, stores[0], port, Some(stores[0]));
    let text = std::fs::read_to_string(&borrowed).unwrap();
    std::fs::write(
        &borrowed,
        text.replace("store-001-secagg", "store-009-secagg"),
    )
    .unwrap();
    let (ok, err) = run_agent(&borrowed);
    assert!(
        !ok && err.contains("was issued to 'store-009', this agent is 'store-001'"),
        "{err}"
    );

    for s in stores {
        let cfg = enrolled_agent(d, s, port, Some(s));
        children.push((s.to_string(), spawn_agent(&cfg)));
    }
    wait_all(&mut children, Duration::from_secs(120));
    let job = &read_json(&report)["jobs"][0];
    assert_eq!(job["failed"], false, "{}", job["status"]);
    assert_eq!(job["evaluations"].as_array().unwrap().len(), 3);
    for round in job["rounds"].as_array().unwrap() {
        assert_eq!(
            round["participants"].as_array().unwrap().len(),
            3,
            "{round}"
        );
    }
}
