//! `drover-bench`: load tools that measure the real `drover` server binary
//! from outside, as a fleet sees it. Every loop is bounded in count and
//! time, and all traffic stays on 127.0.0.1.

mod agent;
mod all;
mod api;
mod baseline;
mod ceiling;
mod connections;
mod dashboard;
mod enroll;
mod fleet;
mod flood;
mod intake;
mod mosquitto;
mod procfs;
mod report;
mod rollout;
mod server;
mod simulate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load tools for the Drover server.
#[derive(Debug, Parser)]
#[command(
    name = "drover-bench",
    version,
    about = "Load tools that run the real drover server binary and measure it from outside",
    after_help = "Every benchmark of issue 15, three runs each, into docs/BENCHMARKS.md (it builds what it needs):\n  \
                  cargo run --release -p drover-bench -- all\n\
                  Or build the binaries first (release, so the figures mean something):\n  \
                  cargo build --release -p drover-server -p drover-bench\n  \
                  cargo build --profile agent -p drover-agent    (for `intake`)\n\
                  then, for example:\n  \
                  target/release/drover-bench connections --devices 10000 --out docs/BENCHMARKS.md\n  \
                  target/release/drover-bench intake --agents 10 --readings 20000 --out docs/BENCHMARKS.md\n  \
                  target/release/drover-bench simulate --devices 10000 --out docs/BENCHMARKS.md\n  \
                  target/release/drover-bench rollout --planned 100000 --simulated 1000 --out docs/BENCHMARKS.md\n  \
                  target/release/drover-bench dashboard --out docs/BENCHMARKS.md"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark of issue 15 (ingest against the Python baseline and against the broker's
    /// ceiling, connected devices, rollouts, the agent), `--runs` times each: median, min and
    /// max against the goals, printed and written as the Summary of docs/BENCHMARKS.md.
    All(all::Args),
    /// Ingest, system against system: the same 1,000-device flood stored by Drover (simulated
    /// agents, embedded broker, SQLite) and by the usual Python recipe (paho-mqtt → SQLite) on a
    /// private Mosquitto.
    Baseline(baseline::Args),
    /// Ingest on one broker: the server consuming single-reading messages from a private
    /// Mosquitto, against that broker's ceiling measured by a subscriber that only counts.
    Ceiling(ceiling::Args),
    /// The agent: `verify` of a large bundle against `openssl dgst -sha256`, RSS at rest and
    /// the stripped binary's size.
    Agent(agent::Args),
    /// Enrolls N devices and holds N real TLS MQTT sessions with their own
    /// certificates, measuring the server's memory and CPU at each step, then
    /// restarts the server and measures the reconnect storm.
    Connections(connections::Args),
    /// Runs N real agents (the `agent` profile's binary) against the release server and
    /// measures readings per second from their intake sockets to the store, and each
    /// reading's latency from the intake's acknowledgement to its row being committed.
    Intake(intake::Args),
    /// Runs N simulated devices in one `drover-agent simulate` process (the `agent` profile's
    /// binary) against the release server and measures enrollment, memory per device, CPU,
    /// readings stored, the clean stop and a restart as the same devices.
    Simulate(simulate::Args),
    /// Plans a rollout over N device rows (preview and create, timed), then takes M simulated
    /// devices through a three-phase rollout (wall time, server CPU).
    Rollout(rollout::Args),
    /// Seeds the release server's store with a fleet (100,000 devices, 10 million readings by
    /// default), then times the overview and device-list pages from a signed-in session and
    /// each reading from a device's MQTT publish to the Server-Sent Event on its page.
    Dashboard(dashboard::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::All(args) => all::run(args).await,
            Command::Baseline(args) => baseline::run(args).await.map(drop),
            Command::Ceiling(args) => ceiling::run(args).await.map(drop),
            Command::Agent(args) => agent::run(args).await.map(drop),
            Command::Connections(args) => connections::run(args).await.map(drop),
            Command::Intake(args) => intake::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Rollout(args) => rollout::run(args).await.map(drop),
            Command::Dashboard(args) => dashboard::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
