//! `drover-bench simulate`: what `drover-agent simulate` costs at fleet size. A release server
//! and one simulator process (the `agent` profile's binary) with N devices: time until every
//! device enrolled and is online, the simulator's memory per device and both processes' CPU while
//! the fleet reports, readings stored per second, the clean stop (every device goes offline), and
//! a restart on the same state directory (the same devices come back without enrolling).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, Command};

use crate::connections::{DataDir, command_line};
use crate::intake::parse_join;
use crate::procfs::{self, Machine, Pid};
use crate::report::{file_header, write_section};
use crate::server;

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Fleet simulator";
/// How often the fleet's presence is read from the store.
const POLL: Duration = Duration::from_secs(1);

/// Options of `drover-bench simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,
    /// Readings per second per device.
    #[arg(long, default_value_t = 0.1)]
    rate: f64,
    /// Seconds between each device's health reports.
    #[arg(long, default_value_t = 30)]
    heartbeat: u64,
    /// Enrollments (and starts) per second.
    #[arg(long, default_value_t = 50.0)]
    enroll_rate: f64,
    /// How long the whole fleet reports before it is measured, seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=3600))]
    hold_s: u64,
    /// The server binary [default: `drover` beside this binary, i.e. target/release/drover].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The agent binary [default: target/agent/drover-agent, built with `--profile agent`].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Write or update the "## Fleet simulator" section of this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the server's data directory and the simulator's state after the run.
    #[arg(long)]
    keep_data: bool,
}

/// A running `drover-agent simulate`.
pub(crate) struct Simulator {
    child: Child,
    /// Its process id.
    pub(crate) pid: u32,
}

impl Simulator {
    /// Starts `devices` simulated `bench` devices with state in `state` (log beside it).
    pub(crate) fn start(
        bin: &Path,
        join: &crate::intake::Join,
        devices: u32,
        rate: f64,
        heartbeat: u64,
        enroll_rate: f64,
        state: &Path,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DROVER_") {
                cmd.env_remove(name);
            }
        }
        let log = std::fs::File::create(state.with_extension("log"))
            .context("creating the simulator's log")?;
        cmd.args(["simulate", "--server", &join.server, "--token", &join.token])
            .args(["--ca-hash", &join.ca_hash, "--device-type", "bench"])
            .args(["--devices", &devices.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--heartbeat", &heartbeat.to_string()])
            .args(["--enroll-rate", &enroll_rate.to_string()])
            .arg("--state-dir")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} simulate", bin.display()))?;
        let pid = child.id().context("the simulator exited at once")?;
        Ok(Simulator { child, pid })
    }

    /// SIGTERM; answers how long the stop took and the summary line.
    pub(crate) async fn stop(mut self) -> Result<(Duration, String)> {
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("the simulator did not stop within 60 s of SIGTERM")??;
        let took = started.elapsed();
        let mut summary = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut summary).await?;
        }
        if !status.success() {
            bail!("the simulator exited with {status}: {summary}");
        }
        Ok((took, summary.trim().to_owned()))
    }
}

/// Figures of one start of the fleet.
#[derive(Debug, Default)]
pub(crate) struct Start {
    /// Seconds until every device was online.
    pub(crate) all_online_s: f64,
    /// Devices online at the end of the wait.
    pub(crate) online: u64,
}

/// The measured run.
#[derive(Debug)]
struct Report {
    command: String,
    machine: Machine,
    args_line: String,
    devices: u32,
    rate: f64,
    first: Start,
    hold_s: f64,
    readings_per_s: f64,
    fresh_health: u64,
    heartbeat: u64,
    sim_rss_kib: u64,
    sim_fds: u64,
    server_rss_kib: u64,
    sim_cpu: f64,
    server_cpu: f64,
    stop_s: f64,
    offline_s: f64,
    summary: String,
    again: Start,
}

/// The server's store, opened to read figures from: its SQLite file or its PostgreSQL database.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// The data directory's SQLite file, read-only.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(sqlx::PgPool),
}

impl Probe {
    /// Closes the pool.
    pub(crate) async fn close(&self) {
        match self {
            Probe::Sqlite(p) => p.close().await,
            Probe::Postgres(p) => p.close().await,
        }
    }
}

/// Opens the server's SQLite store in `data_dir` read-only (WAL: it never holds up a write).
pub(crate) async fn open_store(data_dir: &Path) -> Result<Probe> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(data_dir.join("drover.db"))
                .read_only(true)
                .busy_timeout(Duration::from_secs(10)),
        )
        .await
        .context("opening the server's store")?;
    Ok(Probe::Sqlite(pool))
}

/// Opens the server's PostgreSQL database.
pub(crate) async fn open_postgres(url: &str) -> Result<Probe> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("opening the server's PostgreSQL database")?;
    Ok(Probe::Postgres(pool))
}

/// One number from the store.
pub(crate) async fn count(probe: &Probe, sql: &str) -> Result<u64> {
    let sql_safe = || sqlx::AssertSqlSafe(sql.to_owned());
    let n: std::result::Result<i64, sqlx::Error> = match probe {
        Probe::Sqlite(p) => sqlx::query_scalar(sql_safe()).fetch_one(p).await,
        Probe::Postgres(p) => sqlx::query_scalar(sql_safe()).fetch_one(p).await,
    };
    let n = n.with_context(|| format!("reading the store: {sql}"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Waits until `target` devices are online (or `deadline`); prints progress.
pub(crate) async fn until_online(pool: &Probe, target: u64, deadline: Duration) -> Result<Start> {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let online = count(pool, "SELECT COUNT(*) FROM devices WHERE online").await?;
        if online >= target || started.elapsed() > deadline {
            return Ok(Start {
                all_online_s: started.elapsed().as_secs_f64(),
                online,
            });
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {online} of {target} online after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until no device is shown online (after a stop, their goodbyes are stored).
pub(crate) async fn until_offline(pool: &Probe, deadline: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let online = count(pool, "SELECT COUNT(*) FROM devices WHERE online").await?;
        if online == 0 {
            return Ok(());
        }
        if started.elapsed() > deadline {
            anyhow::bail!("{online} devices still shown online {deadline:?} after the stop");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: Args) -> Result<()> {
    let (server_bin, agent_bin) =
        crate::intake::binaries(args.server_bin.as_ref(), args.agent_bin.as_ref())?;
    let command = command_line();
    let machine = procfs::machine();
    let tps = procfs::clock_ticks_per_second();
    let data = DataDir::create(args.keep_data)?;
    let server::Fresh {
        server, api, jwt, ..
    } = server::start_fresh(&server_bin, &data.path).await?;
    let join_command = api.join_command(&jwt, args.devices).await?;
    let join = parse_join(&join_command)
        .with_context(|| format!("the join command `{join_command}` lacks a flag"))?;
    let pool = open_store(&data.path).await?;
    let state = data.path.join("sim");
    let target = u64::from(args.devices);
    let start_deadline =
        Duration::from_secs_f64(f64::from(args.devices) / args.enroll_rate * 3.0 + 120.0);

    eprintln!("starting {} simulated devices", args.devices);
    let sim = Simulator::start(
        &agent_bin,
        &join,
        args.devices,
        args.rate,
        args.heartbeat,
        args.enroll_rate,
        &state,
    )?;
    let first = until_online(&pool, target, start_deadline).await?;
    if first.online < target {
        bail!(
            "only {} of {} devices came online within {:.0} s; see {}",
            first.online,
            target,
            first.all_online_s,
            state.with_extension("log").display()
        );
    }
    eprintln!(
        "all online after {:.0} s; holding {} s",
        first.all_online_s, args.hold_s
    );
    let readings_before = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    let sim_ticks = procfs::cpu_ticks(Pid::Of(sim.pid)).unwrap_or(0);
    let server_ticks = procfs::cpu_ticks(Pid::Of(server.pid)).unwrap_or(0);
    let held = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let hold = held.elapsed();
    let readings_after = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    let sim_cpu = procfs::cpu_percent(
        procfs::cpu_ticks(Pid::Of(sim.pid))
            .unwrap_or(0)
            .saturating_sub(sim_ticks),
        tps,
        hold,
    );
    let server_cpu = procfs::cpu_percent(
        procfs::cpu_ticks(Pid::Of(server.pid))
            .unwrap_or(0)
            .saturating_sub(server_ticks),
        tps,
        hold,
    );
    let fresh_health = count(
        &pool,
        &format!(
            "SELECT COUNT(*) FROM device_health WHERE received_at >= {}",
            now_ms() - i64::try_from(args.heartbeat * 1000).unwrap_or(0)
        ),
    )
    .await?;
    let sim_sample = procfs::sample(Pid::Of(sim.pid)).unwrap_or_default();
    let server_rss_kib = procfs::sample(Pid::Of(server.pid))
        .map(|s| s.rss_kib)
        .unwrap_or(0);
    eprintln!("stopping the simulator");
    let (stop, summary) = sim.stop().await?;
    let offline_started = Instant::now();
    loop {
        let online = count(&pool, "SELECT COUNT(*) FROM devices WHERE online").await?;
        if online == 0 || offline_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let offline_s = (stop + offline_started.elapsed()).as_secs_f64();

    eprintln!("starting the same devices again");
    let sim = Simulator::start(
        &agent_bin,
        &join,
        args.devices,
        args.rate,
        args.heartbeat,
        args.enroll_rate,
        &state,
    )?;
    let again = until_online(&pool, target, start_deadline).await?;
    let _ = sim.stop().await?;
    let enrolled = count(&pool, "SELECT COUNT(*) FROM devices").await?;
    if enrolled != target {
        bail!("{enrolled} devices enrolled for {target} simulated: a restart enrolled anew");
    }
    pool.close().await;
    let _ = server.stop().await;

    let report = Report {
        command,
        machine,
        args_line: format!(
            "--rate {} --heartbeat {} --enroll-rate {}",
            args.rate, args.heartbeat, args.enroll_rate
        ),
        devices: args.devices,
        rate: args.rate,
        first,
        hold_s: hold.as_secs_f64(),
        readings_per_s: readings_after.saturating_sub(readings_before) as f64 / hold.as_secs_f64(),
        fresh_health,
        heartbeat: args.heartbeat,
        sim_rss_kib: sim_sample.rss_kib,
        sim_fds: sim_sample.fds,
        server_rss_kib,
        sim_cpu,
        server_cpu,
        stop_s: stop.as_secs_f64(),
        offline_s,
        summary,
        again,
    };
    let section = report.markdown();
    println!("{section}");
    if let Some(out) = &args.out {
        write_section(out, &file_header(&report.machine), HEADING, &section)?;
        eprintln!("wrote the Fleet simulator section of {}", out.display());
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

impl Report {
    fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let n = f64::from(self.devices);
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
            "**Method.** One `drover-agent simulate` process (the `agent` profile's binary; \
             `{}`) runs {} devices against the release server (embedded broker, SQLite). Each \
             device enrolls with its own key and CSR, holds its own mutual-TLS MQTT session, \
             sends readings of four metrics and health, and runs the update engine. The bench \
             reads presence and stored readings from the server's store (read-only), the \
             processes' CPU and memory from /proc, then stops the simulator with SIGTERM and \
             starts it again on the same state directory.\n",
            self.args_line, self.devices
        );
        let _ = writeln!(o, "| figure | value |\n|---|---|");
        let rows = [
            (
                "enrolled and online (first start)",
                format!(
                    "{} devices in {:.0} s ({:.0} devices/s)",
                    self.first.online,
                    self.first.all_online_s,
                    n / self.first.all_online_s.max(0.001)
                ),
            ),
            (
                "simulator memory (RSS) with all online",
                format!(
                    "{:.0} MiB, {:.1} KiB per device",
                    self.sim_rss_kib as f64 / 1024.0,
                    self.sim_rss_kib as f64 / n
                ),
            ),
            ("simulator open files", self.sim_fds.to_string()),
            (
                "server memory (RSS)",
                format!("{:.0} MiB", self.server_rss_kib as f64 / 1024.0),
            ),
            (
                "readings stored (steady)",
                format!(
                    "{:.0}/s over {:.0} s ({:.0}/s offered)",
                    self.readings_per_s,
                    self.hold_s,
                    n * self.rate
                ),
            ),
            (
                "devices whose health arrived in the last heartbeat",
                format!(
                    "{} of {} ({} s)",
                    self.fresh_health, self.devices, self.heartbeat
                ),
            ),
            (
                "CPU while reporting (% of one core)",
                format!(
                    "simulator {:.0} %, server {:.0} %",
                    self.sim_cpu, self.server_cpu
                ),
            ),
            (
                "SIGTERM to every device offline",
                format!(
                    "{:.1} s (the simulator itself stopped in {:.1} s)",
                    self.offline_s, self.stop_s
                ),
            ),
            (
                "restart on the same state directory",
                format!(
                    "{} devices online again in {:.0} s, none enrolled anew",
                    self.again.online, self.again.all_online_s
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(o, "| {k} | {v} |");
        }
        let _ = writeln!(
            o,
            "\nThe simulator's own summary line:\n\n```\n{}\n```",
            self.summary
        );
        o
    }
}
