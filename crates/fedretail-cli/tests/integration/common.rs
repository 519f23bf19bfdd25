//! Helpers for the tests that run the built binary as processes.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fedretail");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for every process to exit successfully; kills them all after `limit`.
pub fn wait_all(children: &mut [(String, Child)], limit: Duration) {
    let start = Instant::now();
    loop {
        let mut running = 0;
        for (name, c) in children.iter_mut() {
            match c.try_wait().unwrap() {
                Some(status) => assert!(status.success(), "{name} exited with {status}"),
                None => running += 1,
            }
        }
        if running == 0 {
            return;
        }
        if start.elapsed() > limit {
            for (_, c) in children.iter_mut() {
                let _ = c.kill();
            }
            panic!("processes still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until something listens on 127.0.0.1:`port` (a coordinator just spawned):
/// a fixed sleep is too short on a machine busy with other tests.
pub fn wait_for_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listens on {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn write(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
}

/// Starts `fedretail coordinator --config CONFIG --report REPORT`, output discarded.
pub fn spawn_coordinator(config: &Path, report: &Path) -> Child {
    Command::new(BIN)
        .args(["coordinator", "--config"])
        .arg(config)
        .arg("--report")
        .arg(report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts `cmd` with its stderr read line by line into the returned channel (keep
/// the channel until the process ends: once it is dropped nothing drains the pipe).
pub fn spawn_logged(cmd: &mut Command) -> (Child, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Starts `fedretail coordinator --config CONFIG --report REPORT` with its stderr
/// read line by line (see [`spawn_logged`]).
pub fn spawn_coordinator_logged(
    config: &Path,
    report: &Path,
) -> (Child, std::sync::mpsc::Receiver<String>) {
    spawn_logged(
        Command::new(BIN)
            .args(["coordinator", "--config"])
            .arg(config)
            .arg("--report")
            .arg(report),
    )
}

/// Lines from `lines` until one for which `done` holds; panics after `limit`.
pub fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the process went quiet before the line awaited");
        if done(&line) {
            return;
        }
    }
}

/// Starts `fedretail agent --config CONFIG`, output discarded.
pub fn spawn_agent(config: &Path) -> Child {
    Command::new(BIN)
        .args(["agent", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Run `cmd`, which must succeed; its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `fedretail generate ARGS --out NET`, which must succeed; its stdout.
pub fn generate(net: &Path, args: &[&str]) -> String {
    stdout_of(
        Command::new(BIN)
            .arg("generate")
            .args(args)
            .arg("--out")
            .arg(net),
    )
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A job's model in an outcome report equals `expected` to 1e-9 in every parameter.
pub fn assert_same_model(job: &serde_json::Value, expected: &[f64], what: &str) {
    let federated: Vec<f64> = job["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(expected.len(), federated.len(), "{what}");
    let gap = expected
        .iter()
        .zip(&federated)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(gap < 1e-9, "{what}: the job's model differs by {gap}");
}
