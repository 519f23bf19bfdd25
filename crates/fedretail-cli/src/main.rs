//! `fedretail`: the command line. Glue only: parse, wire the library crates together,
//! show progress and report. Every capability lives in a library crate.

mod analyze;
mod bench;
mod certs;
mod commands;
mod deploy;
mod ingest;
mod load;
mod network;
mod outputs;
mod poisoning;
mod progress;
mod scale;
mod watch;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Federated learning for networks of independent retailers: shared demand models
/// trained where each store's transactions live, without any of them leaving it.
#[derive(Parser)]
#[command(name = "fedretail", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a shared demand model over a simulated network (coordinator + one agent per store on 127.0.0.1) and compare it with local-only and centralized models.
    Demo(commands::DemoArgs),
    /// Write a synthetic retail network, one export directory per store.
    Generate(commands::GenerateArgs),
    /// Run the coordinator of a real deployment: its jobs, one after another.
    Coordinator(deploy::CoordinatorArgs),
    /// Run a store's agent beside its data; it keeps each job's results at the store.
    Agent(deploy::AgentArgs),
    /// Make the network's own CA and the coordinator's TLS certificate.
    Certs(certs::CertsArgs),
    /// Issue a store its certificate (its identity under mutual TLS), signed by the
    /// network's CA, and print the fingerprint the coordinator pins it by.
    Enroll(certs::EnrollArgs),
    /// Score a store's current data with a saved model (no coordinator needed).
    Predict(deploy::PredictArgs),
    /// Check a store's export and show the features it yields (nothing leaves the machine).
    Inspect(commands::InspectArgs),
    /// Analytics tasks: anomaly detection, customer segments, churn, credit scoring.
    #[command(subcommand)]
    Analyze(analyze::AnalyzeCommand),
    /// Measure performance and print JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FEDRETAIL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo(a) => commands::demo(a),
        Command::Generate(a) => commands::generate(a),
        Command::Coordinator(a) => deploy::coordinator(a),
        Command::Agent(a) => deploy::agent(a),
        Command::Certs(a) => certs::certs(a),
        Command::Enroll(a) => certs::enroll(a),
        Command::Predict(a) => deploy::predict(a),
        Command::Inspect(a) => commands::inspect(a),
        Command::Analyze(a) => analyze::run(a),
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
