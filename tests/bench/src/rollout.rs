//! `drover-bench rollout`: what a rollout costs the server. Planning: N device rows written
//! straight into the release server's store, then the time `POST /api/v1/rollouts/preview` and
//! `POST /api/v1/rollouts` take to resolve the target and write its snapshot. Delivery: M
//! simulated devices (`drover-agent simulate`) through a three-phase rollout, timed from
//! creation to `completed`, with the server's CPU over that time.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::api::text_field;
use crate::connections::{DataDir, command_line};
use crate::intake::{binaries, parse_join};
use crate::procfs::{self, Machine, Pid};
use crate::report::{file_header, write_section};
use crate::server;
use crate::simulate::Simulator;

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Rollouts";
/// Rows per INSERT when the planning fleet is written.
const ROWS_PER_INSERT: usize = 500;

/// Options of `drover-bench rollout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Device rows for the planning measurement.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    planned: u32,
    /// Simulated devices taken through a three-phase rollout.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    simulated: u32,
    /// The server binary [default: target/release/drover].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The agent binary [default: target/agent/drover-agent].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Write or update the "## Rollouts" section of this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the server's data directory after the run.
    #[arg(long)]
    keep_data: bool,
}

/// What a run measured.
pub struct Report {
    command: String,
    machine: Machine,
    /// Device rows planned over.
    pub planned: u32,
    insert_s: f64,
    preview_s: f64,
    /// Planning and writing the snapshot, seconds.
    pub create_s: f64,
    create_cpu_s: f64,
    /// Simulated devices taken through the rollout.
    pub simulated: u32,
    online_s: f64,
    /// Create to completed, seconds.
    pub rollout_s: f64,
    server_cpu: f64,
    sim_cpu: f64,
    /// Devices by state at the end.
    pub counts: Value,
    events: Vec<String>,
}

/// Runs the benchmark, prints (and optionally writes) the report, and answers it.
pub async fn run(args: Args) -> Result<Report> {
    let (server_bin, agent_bin) = binaries(args.server_bin.as_ref(), args.agent_bin.as_ref())?;
    let command = command_line();
    let machine = procfs::machine();
    let tps = procfs::clock_ticks_per_second();
    let data = DataDir::create(args.keep_data)?;
    let server::Fresh {
        server, api, jwt, ..
    } = server::start_fresh(&server_bin, &data.path).await?;
    let artifact = api
        .upload_artifact(&jwt, "model.onnx", b"bench weights".to_vec())
        .await?;
    let bundle = text_field(
        &api.post(
            Some(&jwt),
            "/api/v1/bundles",
            &json!({"name": "detector", "kind": "model", "version": "1.0.0",
                    "device_types": ["plan", "bench"], "installer": "files",
                    "artifacts": [artifact], "expires_in_days": 30}),
        )
        .await?,
        "id",
    )?;

    eprintln!("writing {} device rows", args.planned);
    let started = Instant::now();
    write_devices(&data.path.join("drover.db"), args.planned).await?;
    let insert_s = started.elapsed().as_secs_f64();
    let target = json!({"device_type": "plan"});
    let phases = json!([{"percent": 1}, {"percent": 10}, {"percent": 100}]);
    let started = Instant::now();
    let preview = api
        .post(
            Some(&jwt),
            "/api/v1/rollouts/preview",
            &json!({"bundle_id": bundle, "target": target, "phases": phases}),
        )
        .await?;
    let preview_s = started.elapsed().as_secs_f64();
    if preview["matching"].as_u64() != Some(u64::from(args.planned)) {
        bail!("the preview matched {} devices", preview["matching"]);
    }
    let ticks = procfs::cpu_ticks(Pid::Of(server.pid)).unwrap_or(0);
    let started = Instant::now();
    let planned = api
        .post(
            Some(&jwt),
            "/api/v1/rollouts",
            &json!({"name": "planning", "bundle_id": bundle, "target": target, "phases": phases}),
        )
        .await?;
    let create_s = started.elapsed().as_secs_f64();
    let create_cpu_s = procfs::cpu_ticks(Pid::Of(server.pid))
        .unwrap_or(0)
        .saturating_sub(ticks) as f64
        / tps as f64;
    let planned_id = text_field(&planned, "id")?;
    api.post(
        Some(&jwt),
        &format!("/api/v1/rollouts/{planned_id}/abort"),
        &json!({}),
    )
    .await?;

    eprintln!("starting {} simulated devices", args.simulated);
    let join_command = api.join_command(&jwt, args.simulated).await?;
    let join = parse_join(&join_command).context("the join command lacks a flag")?;
    let state = data.path.join("sim");
    let sim = Simulator::start(&agent_bin, &join, args.simulated, 0.1, 30, 50.0, &state)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(data.path.join("drover.db"))
                .read_only(true),
        )
        .await?;
    let started = Instant::now();
    loop {
        let online: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM devices WHERE online AND device_type = 'bench'",
        )
        .fetch_one(&pool)
        .await?;
        if online >= i64::from(args.simulated) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {online} of {} simulated devices came online",
                args.simulated
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let online_s = started.elapsed().as_secs_f64();
    pool.close().await;

    let server_ticks = procfs::cpu_ticks(Pid::Of(server.pid)).unwrap_or(0);
    let sim_ticks = procfs::cpu_ticks(Pid::Of(sim.pid)).unwrap_or(0);
    let started = Instant::now();
    let r = api
        .post(
            Some(&jwt),
            "/api/v1/rollouts",
            &json!({"name": "delivery", "bundle_id": bundle, "target": {"device_type": "bench"},
                    "phases": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
                    "max_in_flight": 1000}),
        )
        .await?;
    let id = text_field(&r, "id")?;
    let done = loop {
        let now = api.get(&jwt, &format!("/api/v1/rollouts/{id}")).await?;
        match now["state"].as_str() {
            Some("completed") => break now,
            Some("running") => {}
            other => bail!("the rollout ended {other:?}: {now}"),
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the rollout did not complete in 900 s: {now}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rollout = started.elapsed();
    let server_cpu = procfs::cpu_percent(
        procfs::cpu_ticks(Pid::Of(server.pid))
            .unwrap_or(0)
            .saturating_sub(server_ticks),
        tps,
        rollout,
    );
    let sim_cpu = procfs::cpu_percent(
        procfs::cpu_ticks(Pid::Of(sim.pid))
            .unwrap_or(0)
            .saturating_sub(sim_ticks),
        tps,
        rollout,
    );
    let events: Vec<String> = api
        .get(&jwt, &format!("/api/v1/rollouts/{id}/events"))
        .await?
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e["at"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = sim.stop().await;
    let _ = server.stop().await;
    let report = Report {
        command,
        machine,
        planned: args.planned,
        insert_s,
        preview_s,
        create_s,
        create_cpu_s,
        simulated: args.simulated,
        online_s,
        rollout_s: rollout.as_secs_f64(),
        server_cpu,
        sim_cpu,
        counts: done["counts"].clone(),
        events,
    };
    let section = report.markdown();
    println!("{section}");
    if let Some(out) = &args.out {
        write_section(out, &file_header(&report.machine), HEADING, &section)?;
        eprintln!("wrote the Rollouts section of {}", out.display());
    }
    Ok(report)
}

/// Writes `n` accepted devices of type `plan` straight into the store (the server keeps running;
/// WAL lets it read meanwhile).
async fn write_devices(db: &std::path::Path, n: u32) -> Result<()> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(db)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await
        .context("opening the server's store for writing")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let ids: Vec<String> = (0..n).map(|i| format!("{i:032x}")).collect();
    let mut tx = pool.begin().await?;
    for chunk in ids.chunks(ROWS_PER_INSERT) {
        let values = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, ${}, 'plan', 'accepted', ${}, 'bench', $1, $1)",
                    i * 3 + 2,
                    i * 3 + 3,
                    i * 3 + 4
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = sqlx::AssertSqlSafe(format!(
            "INSERT INTO devices (id, name, device_type, status, public_key_sha256, enrollment_token_id, created_at, updated_at) VALUES {values}"
        ));
        let mut q = sqlx::query(sql).bind(now);
        for id in chunk {
            q = q.bind(id).bind(format!("plan-{id}")).bind(id);
        }
        q.execute(&mut *tx).await.context("writing device rows")?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

impl Report {
    fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "{HEADING}\n");
        let _ = writeln!(
            o,
            "Measured {} on {} ({} cores, {:.1} GiB, {}; {}). The server and the simulator \
             share the machine.\n",
            m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc
        );
        let _ = writeln!(
            o,
            "```sh\ncargo build --release -p drover-server -p drover-bench\n\
             cargo build --profile agent -p drover-agent\n{}\n```\n",
            self.command
        );
        let _ = writeln!(
            o,
            "**Method.** Planning: {} accepted devices are written straight into the release \
             server's SQLite store, then the bench times `POST /api/v1/rollouts/preview` and \
             `POST /api/v1/rollouts` (phases 1/10/100 %), which resolve the target, order it \
             and write one snapshot row per device before answering. Delivery: {} devices of \
             one `drover-agent simulate` process, all online, take a real signed bundle through \
             a rollout of phases 10/50/100 % (no soak, 1,000 in flight); the time runs from \
             the create request to the rollout's `completed`.\n",
            self.planned, self.simulated
        );
        let _ = writeln!(o, "| figure | value |\n|---|---|");
        let rows = [
            (
                format!("writing {} device rows (setup)", self.planned),
                format!("{:.1} s", self.insert_s),
            ),
            (
                "preview of the target".into(),
                format!("{:.2} s", self.preview_s),
            ),
            (
                "create: plan and write the snapshot".into(),
                format!(
                    "{:.2} s ({:.1} s of server CPU)",
                    self.create_s, self.create_cpu_s
                ),
            ),
            (
                format!("{} simulated devices online (setup)", self.simulated),
                format!("{:.0} s", self.online_s),
            ),
            (
                "three-phase rollout, create to completed".into(),
                format!("{:.1} s", self.rollout_s),
            ),
            (
                "CPU during the rollout (% of one core)".into(),
                format!(
                    "server {:.0} %, simulator {:.0} %",
                    self.server_cpu, self.sim_cpu
                ),
            ),
            (
                "devices by state at the end".into(),
                self.counts.to_string(),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        let _ = writeln!(o, "\nThe rollout's events:\n\n```");
        for e in &self.events {
            let _ = writeln!(o, "{e}");
        }
        let _ = writeln!(o, "```");
        o
    }
}
