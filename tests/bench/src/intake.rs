//! `drover-bench intake`: how many readings per second travel from real agents' intake sockets
//! into the server's store, and how long each takes from the intake's acknowledgement until its
//! row is committed there. Release `drover-agent` processes enroll with a release `drover serve`;
//! the bench feeds their sockets as device programs do and watches the store's `telemetry_seen`
//! table for each (device, seq). Bounded: every wait has a deadline, and the agents and the
//! server end with the run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use crate::connections::{DataDir, command_line, default_server_bin};
use crate::procfs::{self, CpuMark, Machine, Pid};
use crate::report::{file_header, percentile, write_section};
use crate::server;

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Telemetry intake";
/// How often the watcher asks the store for new rows.
const POLL: Duration = Duration::from_millis(5);
/// Most rows the watcher takes per query.
const ROWS_PER_QUERY: i64 = 20_000;
/// How long an agent may take to enroll, start, or connect and store its first reading.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping agent may take after SIGTERM.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The metric every reading carries.
const METRIC: &str = "bench";

/// Options of `drover-bench intake`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents: each a `drover-agent run` process enrolled as its own device.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=200))]
    agents: u32,
    /// Readings handed to each agent in the saturation phase.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    readings: u32,
    /// Readings per write to an intake socket (the agent answers them after one fsync).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    burst: u32,
    /// Offered load of the paced phase, in percent of the rate the saturation phase stored.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    paced_percent: u32,
    /// Length of the paced phase, seconds; 0 skips it.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=3600))]
    paced_s: u64,
    /// Longest wait, after a phase's last acknowledgement, for its readings to be stored, seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=7200))]
    drain_timeout_s: u64,
    /// The server binary [default: `drover` beside this binary, i.e. target/release/drover].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The agent binary [default: target/agent/drover-agent, built with `--profile agent`].
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Write or update the "## Telemetry intake" section of this Markdown file (docs/BENCHMARKS.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the server's data directory and the agents' state directories after the run.
    #[arg(long)]
    keep_data: bool,
    /// Alert rules watching the ingested metric during the run (judged on every reading;
    /// none ever holds, so this measures evaluation, not alerting); with rules the section
    /// written is "## Telemetry intake with alert rules".
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    alert_rules: u32,
}

/// `target/agent/drover-agent`: this binary lives in target/release.
fn default_agent_bin() -> Result<PathBuf> {
    let server = default_server_bin()?;
    let target = server
        .parent()
        .and_then(Path::parent)
        .context("this binary is not inside a target directory")?;
    Ok(target.join("agent").join("drover-agent"))
}

/// The server binary to run (given, or the built default), checked to exist.
pub(crate) fn server_binary(given: Option<&PathBuf>) -> Result<PathBuf> {
    let bin = match given {
        Some(p) => p.clone(),
        None => default_server_bin()?,
    };
    if !bin.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p drover-server` or pass its path",
            bin.display()
        );
    }
    Ok(bin)
}

/// The server and agent binaries to run (given, or the built defaults), each checked to exist.
pub(crate) fn binaries(
    server: Option<&PathBuf>,
    agent: Option<&PathBuf>,
) -> Result<(PathBuf, PathBuf)> {
    let server_bin = match server {
        Some(p) => p.clone(),
        None => default_server_bin()?,
    };
    let agent_bin = match agent {
        Some(p) => p.clone(),
        None => default_agent_bin()?,
    };
    for (bin, build) in [
        (&server_bin, "cargo build --release -p drover-server"),
        (&agent_bin, "cargo build --profile agent -p drover-agent"),
    ] {
        if !bin.is_file() {
            bail!(
                "{} does not exist; build it with `{build}` or pass its path",
                bin.display()
            );
        }
    }
    Ok((server_bin, agent_bin))
}

/// A `drover-agent` command with the bench's environment kept out of it.
fn agent_command(bin: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DROVER_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("DROVER_AGENT_STATE_DIR", state)
        .env("DROVER_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The server URL, token and CA hash of a join command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Join {
    pub(crate) server: String,
    pub(crate) token: String,
    pub(crate) ca_hash: String,
}

pub(crate) fn parse_join(command: &str) -> Option<Join> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let after = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|w| w.to_string())
    };
    Some(Join {
        server: after("--server")?,
        token: after("--token")?,
        ca_hash: after("--ca-hash")?,
    })
}

/// Enrolls an agent in `state`; answers its device id.
pub(crate) async fn enroll(bin: &Path, state: &Path, join: &Join, n: u32) -> Result<String> {
    let out = agent_command(bin, state)
        .args(["enroll", "--server", &join.server, "--token", &join.token])
        .args(["--ca-hash", &join.ca_hash, "--device-type", "bench"])
        .args(["--hostname", &format!("bench-agent-{n}")])
        .output()
        .await
        .with_context(|| format!("running {} enroll", bin.display()))?;
    if !out.status.success() {
        bail!(
            "agent {n} did not enroll: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let out = agent_command(bin, state)
        .args(["status", "--json"])
        .output()
        .await
        .context("running drover-agent status")?;
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("drover-agent status --json")?;
    status["device_id"]
        .as_str()
        .map(str::to_string)
        .context("drover-agent status names no device_id")
}

/// A running `drover-agent run`.
pub(crate) struct AgentProcess {
    child: Child,
    pub(crate) pid: u32,
    socket: PathBuf,
}

impl AgentProcess {
    /// Starts the daemon (its log in `STATE/agent.log`) and waits until its intake answers.
    pub(crate) async fn start(bin: &Path, state: &Path) -> Result<AgentProcess> {
        let log = std::fs::File::create(state.join("agent.log"))
            .with_context(|| format!("creating {}/agent.log", state.display()))?;
        let mut child = agent_command(bin, state)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} run", bin.display()))?;
        let pid = child.id().context("the agent exited at once")?;
        let socket = state.join("intake.sock");
        let deadline = Instant::now() + READY_TIMEOUT;
        while UnixStream::connect(&socket).await.is_err() {
            if let Some(status) = child.try_wait().context("waiting for the agent")? {
                bail!(
                    "the agent in {} exited ({status}); see its agent.log",
                    state.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the agent's intake {} never answered", socket.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(AgentProcess { child, pid, socket })
    }

    /// SIGTERM (the agent says goodbye and exits), SIGKILL after a grace period.
    pub(crate) async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(AGENT_STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// When each reading's row became visible in the store: by agent, indexed by seq.
type Visible = Vec<Vec<Option<Instant>>>;

/// Reads new `telemetry_seen` rows from the server's SQLite store, read-only (WAL: it never
/// holds up the server's writes), and stamps each (device, seq) with the start of the query that
/// first saw it. A row seen by a query was committed before the query began, and after the start
/// of the previous one.
struct Watcher {
    visible: Arc<Mutex<Visible>>,
    stored: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Watcher {
    async fn start(db: &Path, devices: &[String]) -> Result<Watcher> {
        let options = SqliteConnectOptions::new()
            .filename(db)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the server's store {}", db.display()))?;
        let index: HashMap<String, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let visible = Arc::new(Mutex::new(vec![Vec::new(); devices.len()]));
        let stored = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch(
            pool,
            index,
            visible.clone(),
            stored.clone(),
            stop.clone(),
        ));
        Ok(Watcher {
            visible,
            stored,
            stop,
            task,
        })
    }

    /// Readings of the agents seen stored so far.
    fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Waits until `count` readings were seen stored or `deadline` passes; answers whether they were.
    async fn wait_for(&self, count: u64, deadline: Instant) -> Result<bool> {
        while self.stored() < count {
            if self.task.is_finished() {
                bail!("the store watcher stopped");
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(true)
    }

    /// When agent `agent`'s reading `seq` was first seen stored.
    fn when(&self, agent: usize, seq: u64) -> Option<Instant> {
        let visible = self.visible.lock().unwrap_or_else(|p| p.into_inner());
        visible
            .get(agent)?
            .get(usize::try_from(seq).ok()?)
            .copied()
            .flatten()
    }

    async fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.context("the store watcher panicked")?
    }
}

async fn watch(
    pool: sqlx::SqlitePool,
    index: HashMap<String, usize>,
    visible: Arc<Mutex<Visible>>,
    stored: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut after: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT rowid, device_id, seq FROM telemetry_seen WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )
        .bind(after)
        .bind(ROWS_PER_QUERY)
        .fetch_all(&pool)
        .await
        .context("reading telemetry_seen")?;
        let full = rows.len() as i64 == ROWS_PER_QUERY;
        {
            let mut visible = visible.lock().unwrap_or_else(|p| p.into_inner());
            for (rowid, device, seq) in rows {
                after = after.max(rowid);
                let (Some(&agent), Ok(seq)) = (index.get(&device), usize::try_from(seq)) else {
                    continue;
                };
                let seen = &mut visible[agent];
                if seen.len() <= seq {
                    seen.resize(seq + 1, None);
                }
                if seen[seq].is_none() {
                    seen[seq] = Some(asked);
                    stored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
    pool.close().await;
    Ok(())
}

/// Hands `count` readings to an agent's intake, `burst` per write, a write at most every `pace`;
/// answers each reading's seq and when its answer arrived.
async fn feed(
    socket: PathBuf,
    count: u64,
    burst: u64,
    pace: Option<Duration>,
) -> Result<Vec<(u64, Instant)>> {
    let stream = UnixStream::connect(&socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    let mut ticks = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut acks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut sent = 0u64;
    let mut lines = String::new();
    while sent < count {
        if let Some(t) = ticks.as_mut() {
            t.tick().await;
        }
        let n = burst.min(count - sent);
        lines.clear();
        for i in 0..n {
            let _ = writeln!(lines, "{{\"metrics\":{{\"{METRIC}\":{}}}}}", sent + i);
        }
        write
            .write_all(lines.as_bytes())
            .await
            .context("writing to the intake")?;
        for _ in 0..n {
            let line = answers
                .next_line()
                .await
                .context("reading the intake's answer")?
                .context("the agent closed its intake")?;
            let at = Instant::now();
            let answer: serde_json::Value =
                serde_json::from_str(&line).context("the intake's answer is not JSON")?;
            match answer["seq"].as_u64() {
                Some(seq) if answer["ok"] == true => acks.push((seq, at)),
                _ => bail!("the agent refused a reading: {line}"),
            }
        }
        sent += n;
    }
    Ok(acks)
}

/// CPU time read at one moment: the server, this process, the machine and the agents.
struct Cpu {
    at: Instant,
    mark: CpuMark,
    agents: u64,
    threads: std::collections::BTreeMap<String, u64>,
}

impl Cpu {
    fn now(server: u32, agents: &[AgentProcess]) -> Cpu {
        Cpu {
            at: Instant::now(),
            mark: CpuMark::now(server),
            agents: agent_ticks(agents),
            threads: procfs::thread_ticks(Pid::Of(server)),
        }
    }

    /// % of one core since this reading: (server, agents, bench, others), and the server's
    /// busiest threads.
    fn since(&self, server: u32, agents: &[AgentProcess], tps: u64) -> PhaseCpu {
        let window = self.at.elapsed();
        let split = self.mark.split_since(server, tps);
        let agents_pct =
            procfs::cpu_percent(agent_ticks(agents).saturating_sub(self.agents), tps, window);
        PhaseCpu {
            server: split.server,
            agents: agents_pct,
            bench: split.bench,
            // The agents are part of "the rest of the machine" in the split.
            others: (split.others - agents_pct).max(0.0),
            threads: procfs::busiest_threads(
                &self.threads,
                &procfs::thread_ticks(Pid::Of(server)),
                tps,
            ),
        }
    }
}

fn agent_ticks(agents: &[AgentProcess]) -> u64 {
    agents
        .iter()
        .filter_map(|a| procfs::cpu_ticks(Pid::Of(a.pid)))
        .sum()
}

/// CPU over a phase, % of one core.
#[derive(Debug, Clone, Default)]
struct PhaseCpu {
    server: f64,
    agents: f64,
    bench: f64,
    others: f64,
    threads: Vec<(String, f64)>,
}

/// What one phase measured.
#[derive(Debug, Clone, Default)]
struct Phase {
    name: String,
    /// Offered readings/s (paced phase only).
    offered: Option<f64>,
    /// Readings the intakes acknowledged.
    acknowledged: u64,
    /// Of them, seen stored by the deadline.
    stored: u64,
    /// From the first write to the last acknowledgement.
    intake_secs: f64,
    /// From the first write to the last row seen.
    stored_secs: f64,
    /// From the last acknowledgement to the last row seen.
    drain_secs: f64,
    /// Each stored reading's acknowledgement → row visible, µs, sorted.
    latencies_us: Vec<u64>,
    cpu: PhaseCpu,
}

impl Phase {
    fn acknowledged_rate(&self) -> f64 {
        rate(self.acknowledged, self.intake_secs)
    }

    fn stored_rate(&self) -> f64 {
        rate(self.stored, self.stored_secs)
    }

    fn latency_ms(&self, q: f64) -> String {
        percentile(&self.latencies_us, q)
            .map(|us| format!("{:.0}", us as f64 / 1000.0))
            .unwrap_or_else(|| "–".into())
    }
}

/// `count` per second over `secs`; 0 over no time.
pub(crate) fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Everything a run needs while it measures.
struct Rig<'a> {
    agents: &'a [AgentProcess],
    watcher: &'a Watcher,
    server_pid: u32,
    burst: u64,
    drain_timeout: Duration,
    ticks_per_second: u64,
}

impl Rig<'_> {
    /// Hands every agent `per_agent` readings (paced, when `pace` is set), waits until they are
    /// stored, and measures.
    async fn phase(
        &self,
        name: &str,
        per_agent: u64,
        pace: Option<Duration>,
        offered: Option<f64>,
    ) -> Result<Phase> {
        let before = self.watcher.stored();
        let cpu = Cpu::now(self.server_pid, self.agents);
        let started = Instant::now();
        let mut feeders = tokio::task::JoinSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            let socket = agent.socket.clone();
            let burst = self.burst;
            feeders.spawn(async move { (i, feed(socket, per_agent, burst, pace).await) });
        }
        let mut acks: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); self.agents.len()];
        while let Some(done) = feeders.join_next().await {
            let (i, result) = done.context("a feeder panicked")?;
            acks[i] = result.with_context(|| format!("feeding agent {i}"))?;
        }
        let acknowledged: u64 = acks.iter().map(|a| a.len() as u64).sum();
        let last_ack = acks
            .iter()
            .flatten()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(started);
        eprintln!(
            "{name}: {acknowledged} readings acknowledged in {:.1} s; waiting for the store",
            last_ack.duration_since(started).as_secs_f64()
        );
        let all = self
            .watcher
            .wait_for(before + acknowledged, last_ack + self.drain_timeout)
            .await?;
        let cpu = cpu.since(self.server_pid, self.agents, self.ticks_per_second);
        if !all {
            eprintln!(
                "{name}: only {} of {acknowledged} stored within {} s of the last acknowledgement",
                self.watcher.stored() - before,
                self.drain_timeout.as_secs()
            );
        }
        let mut latencies_us = Vec::with_capacity(acks.iter().map(Vec::len).sum());
        let mut last_visible = None::<Instant>;
        for (agent, acks) in acks.iter().enumerate() {
            for &(seq, acked) in acks {
                if let Some(seen) = self.watcher.when(agent, seq) {
                    latencies_us.push(
                        u64::try_from(seen.saturating_duration_since(acked).as_micros())
                            .unwrap_or(u64::MAX),
                    );
                    last_visible = Some(last_visible.map_or(seen, |l| l.max(seen)));
                }
            }
        }
        latencies_us.sort_unstable();
        let last_visible = last_visible.unwrap_or(last_ack);
        let phase = Phase {
            name: name.to_string(),
            offered,
            acknowledged,
            stored: latencies_us.len() as u64,
            intake_secs: last_ack.duration_since(started).as_secs_f64(),
            stored_secs: last_visible.duration_since(started).as_secs_f64(),
            drain_secs: last_visible
                .saturating_duration_since(last_ack)
                .as_secs_f64(),
            latencies_us,
            cpu,
        };
        eprintln!(
            "{name}: {} stored in {:.1} s ({:.0}/s); latency p50 {} ms, p99 {} ms",
            phase.stored,
            phase.stored_secs,
            phase.stored_rate(),
            phase.latency_ms(0.5),
            phase.latency_ms(0.99)
        );
        Ok(phase)
    }
}

/// Everything a run measured.
struct Report {
    command: String,
    machine: Machine,
    agents: u32,
    burst: u32,
    phases: Vec<Phase>,
    agent_rss_max_kib: u64,
    server_rss_kib: u64,
    server_log_lines: u64,
    server_log_first: Vec<String>,
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: Args) -> Result<()> {
    let (server_bin, agent_bin) = binaries(args.server_bin.as_ref(), args.agent_bin.as_ref())?;
    let command = command_line();
    let machine = procfs::machine();
    let ticks_per_second = procfs::clock_ticks_per_second();

    let data = DataDir::create(args.keep_data)?;
    eprintln!(
        "starting {} serve (data in {})",
        server_bin.display(),
        data.path.display()
    );
    let server::Fresh {
        server,
        log,
        api,
        jwt,
    } = server::start_fresh(&server_bin, &data.path).await?;
    let join_command = api.join_command(&jwt, args.agents).await?;
    for n in 0..args.alert_rules {
        let rule = serde_json::json!({"name": format!("bench rule {n}"), "metric": "bench",
            "condition": {"op": ">", "value": 1e15 + f64::from(n)}, "for_seconds": 60});
        api.post(Some(&jwt), "/api/v1/alert-rules", &rule).await?;
    }
    let join = parse_join(&join_command)
        .with_context(|| format!("the join command `{join_command}` lacks a flag"))?;

    eprintln!(
        "enrolling and starting {} agents ({})",
        args.agents,
        agent_bin.display()
    );
    let mut devices = Vec::new();
    let mut agents = Vec::new();
    for n in 0..args.agents {
        let state = data.path.join("agents").join(n.to_string());
        devices.push(enroll(&agent_bin, &state, &join, n).await?);
        agents.push(AgentProcess::start(&agent_bin, &state).await?);
    }
    let watcher = Watcher::start(&data.path.join("drover.db"), &devices).await?;
    let rig = Rig {
        agents: &agents,
        watcher: &watcher,
        server_pid: server.pid,
        burst: u64::from(args.burst),
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        ticks_per_second,
    };
    // One reading each, stored: every agent is connected and the path is warm.
    let warm = rig.phase("warm-up", 1, None, None).await?;
    if warm.stored < u64::from(args.agents) {
        bail!(
            "only {} of {} agents got a reading stored; see the agents' agent.log in {}",
            warm.stored,
            args.agents,
            data.path.join("agents").display()
        );
    }

    let mut phases = Vec::new();
    let saturation = rig
        .phase("saturation", u64::from(args.readings), None, None)
        .await?;
    let paced_rate = saturation.stored_rate() * f64::from(args.paced_percent) / 100.0;
    phases.push(saturation);
    if args.paced_s > 0 && paced_rate > 0.0 {
        // Each agent writes a burst every `pace`, so all of them together offer `paced_rate`.
        let per_agent_rate = paced_rate / f64::from(args.agents);
        let pace = Duration::from_secs_f64(f64::from(args.burst) / per_agent_rate);
        let per_agent = (per_agent_rate * args.paced_s as f64).ceil() as u64;
        let name = format!("paced ({} %)", args.paced_percent);
        phases.push(
            rig.phase(&name, per_agent.max(1), Some(pace), Some(paced_rate))
                .await?,
        );
    }

    let agent_rss_max_kib = agents
        .iter()
        .filter_map(|a| procfs::sample(Pid::Of(a.pid)))
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let server_rss_kib = procfs::sample(Pid::Of(server.pid))
        .map(|s| s.rss_kib)
        .unwrap_or(0);
    watcher.finish().await?;
    for agent in agents {
        agent.stop().await;
    }
    let _ = server.stop().await;

    let report = Report {
        command,
        machine,
        agents: args.agents,
        burst: args.burst,
        phases,
        agent_rss_max_kib,
        server_rss_kib,
        server_log_lines: log.lines(),
        server_log_first: log.first_lines(),
    };
    let section = report.markdown();
    println!("{section}");
    if let Some(out) = &args.out {
        let heading = if args.alert_rules > 0 {
            format!("{HEADING} with alert rules")
        } else {
            HEADING.to_string()
        };
        let section = if args.alert_rules > 0 {
            section.replacen(&format!("{HEADING}\n"), &format!("{heading}\n"), 1).replacen(
                "**Method.**",
                &format!(
                    "**With {} alert rules** on the ingested metric (none ever holds: the cost of judging each reading). **Method.**",
                    args.alert_rules
                ),
                1,
            )
        } else {
            section
        };
        write_section(out, &file_header(&report.machine), &heading, &section)?;
        eprintln!(
            "wrote the {} section of {}",
            heading.trim_start_matches("## "),
            out.display()
        );
    }
    Ok(())
}

impl Report {
    /// The section, Markdown.
    fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "{HEADING}\n");
        let _ = writeln!(
            o,
            "Measured {} on {} ({} cores, {:.1} GiB, {}; {}). The server, the agents and the \
             load generator share the machine.\n",
            m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc
        );
        let _ = writeln!(
            o,
            "On the embedded broker the gateway hands telemetry to ingest in process and \
             acknowledges each message to the agent only after its batch committed, so a \
             reading's way from intake to row includes the agent's spool, MQTT over TLS and \
             the commit.\n"
        );
        let _ = writeln!(
            o,
            "```sh\ncargo build --release -p drover-server -p drover-bench\n\
             cargo build --profile agent -p drover-agent\n{}\n```\n",
            self.command
        );
        let _ = writeln!(
            o,
            "**Method.** {} real `drover-agent run` processes (the `agent` profile's binary), \
             each enrolled as its own device with the release server (embedded broker, SQLite \
             store, defaults otherwise), take readings on their intake sockets from the load \
             generator, which writes {} readings per write as a device program would \
             (`{{\"metrics\":{{\"{METRIC}\":N}}}}` lines; the agent answers each with its `seq` \
             after one fsync of its spool) and stamps the moment each answer arrives. A watcher \
             reads the server's store (read-only; WAL, so it never holds up a write) every {} ms \
             for new `telemetry_seen` rows, which ingest commits in the same transaction as the \
             points the API serves, and stamps each (device, seq) with the start of the query \
             that first saw it. **Latency** is that stamp minus the reading's acknowledgement: \
             intake answer → row committed, to within one poll. **Rates** count from the first \
             write: acknowledged/s until the last answer, stored/s until the last row; drain is \
             the time from the last answer to the last row. The saturation phase hands every \
             agent its readings as fast as its intake answers; the paced phase offers a share of \
             the rate the saturation phase stored, in evenly spaced bursts. CPU is % of one core \
             over the phase.\n",
            self.agents,
            self.burst,
            POLL.as_millis()
        );
        let _ = writeln!(
            o,
            "| phase | readings | offered/s | acknowledged/s | stored/s | stored | drain s | latency p50 ms | p90 ms | p99 ms | max ms | server CPU % | agents CPU % | bench CPU % | others CPU % |"
        );
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for p in &self.phases {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} | **{:.0}** | {} | {:.1} | **{}** | {} | **{}** | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.name,
                p.acknowledged,
                p.offered
                    .map(|r| format!("{r:.0}"))
                    .unwrap_or_else(|| "as fast as answered".into()),
                p.acknowledged_rate(),
                p.stored_rate(),
                p.stored,
                p.drain_secs,
                p.latency_ms(0.5),
                p.latency_ms(0.9),
                p.latency_ms(0.99),
                p.latency_ms(1.0),
                p.cpu.server,
                p.cpu.agents,
                p.cpu.bench,
                p.cpu.others,
            );
        }
        o.push('\n');
        let lost: u64 = self.phases.iter().map(|p| p.acknowledged - p.stored).sum();
        let acknowledged: u64 = self.phases.iter().map(|p| p.acknowledged).sum();
        if lost == 0 {
            let _ = writeln!(
                o,
                "Every one of the {acknowledged} acknowledged readings was stored, once."
            );
        } else {
            let _ = writeln!(
                o,
                "**{lost} of the {acknowledged} acknowledged readings were not stored** within \
                 the drain timeout."
            );
        }
        let _ = writeln!(
            o,
            "Largest agent RSS {:.1} MiB; server RSS at the end {:.1} MiB.\n",
            self.agent_rss_max_kib as f64 / 1024.0,
            self.server_rss_kib as f64 / 1024.0
        );
        for p in &self.phases {
            if !p.cpu.threads.is_empty() {
                let threads: Vec<String> = p
                    .cpu
                    .threads
                    .iter()
                    .map(|(name, secs)| format!("{name} {secs:.1}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "The server's busiest threads in the {} phase (CPU s over {:.1} s): {}.\n",
                    p.name,
                    p.stored_secs,
                    threads.join(", ")
                );
            }
        }
        if self.server_log_lines > 0 {
            let _ = writeln!(
                o,
                "The server wrote {} lines of warnings and errors; the first:\n\n```text",
                self.server_log_lines
            );
            for line in &self.server_log_first {
                let _ = writeln!(o, "{line}");
            }
            let _ = writeln!(o, "```\n");
        }
        let _ = write!(
            o,
            "**What bounds these figures.** The server, {} agents and the load generator share \
             {} cores, so every figure is a lower bound of what the server reaches on a machine \
             of its own, where the agents run on the devices. In the saturation phase the \
             intakes take readings faster than they are stored, so the spools grow and most of \
             that phase's latency is time waiting in a spool (it grows through the phase: p50 \
             and max are the middle and the end of the queue); the paced phase, below that \
             rate, shows the pipeline's own latency: the agent's batching and MQTT publish, the \
             gateway and the embedded broker, and ingest's batched transaction.",
            self.agents, self.machine.cores
        );
        if let Some(p) = self.phases.first() {
            let busy = p.cpu.server + p.cpu.agents + p.cpu.bench + p.cpu.others;
            let idle = (self.machine.cores as f64 * 100.0 - busy).max(0.0);
            let _ = write!(
                o,
                " Over the {} phase the server used {:.0} % of one core and the machine still had \
                 about {idle:.0} % of one core idle, so ",
                p.name, p.cpu.server
            );
            if idle >= 25.0 {
                o.push_str(
                    "the cores alone did not set the pace: the server's own pipeline (gateway, \
                     embedded broker, ingest's single writer) did.",
                );
            } else {
                o.push_str("the shared cores set the pace.");
            }
        }
        o.push('\n');
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_command_gives_server_token_and_ca_hash() {
        let join = parse_join(
            "drover-agent enroll --server https://localhost:8443 --token tok_1 --ca-hash sha256:ab",
        );
        assert_eq!(
            join,
            Some(Join {
                server: "https://localhost:8443".into(),
                token: "tok_1".into(),
                ca_hash: "sha256:ab".into(),
            })
        );
        assert_eq!(parse_join("drover-agent enroll --server x --token"), None);
    }

    #[test]
    fn rates_count_from_the_first_write() {
        let phase = Phase {
            acknowledged: 1000,
            stored: 1000,
            intake_secs: 0.5,
            stored_secs: 2.0,
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
            ..Phase::default()
        };
        assert_eq!(phase.acknowledged_rate(), 2000.0);
        assert_eq!(phase.stored_rate(), 500.0);
        assert_eq!(phase.latency_ms(0.5), "50");
        assert_eq!(phase.latency_ms(0.99), "99");
        assert_eq!(Phase::default().latency_ms(0.5), "–");
        assert_eq!(rate(5, 0.0), 0.0);
    }
}
