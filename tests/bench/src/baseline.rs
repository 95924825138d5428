//! `drover-bench baseline`: ingest, system against system. The same 1,000-device flood stored
//! (a) by Drover: one `drover-agent simulate` process (its agents batch), the embedded broker
//! and the server's store; and (b) by the usual Python recipe (a paho-mqtt subscriber writing
//! SQLite, one message per reading) on a private Mosquitto that never drops. A rate is a rate
//! of readings stored, beside the offered load and the count lost.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::connections::{DataDir, command_line};
use crate::flood::{self, Flood};
use crate::intake::{binaries, parse_join, rate};
use crate::mosquitto::Mosquitto;
use crate::procfs::{self, Machine, Pid};
use crate::report::{file_header, write_section};
use crate::server;
use crate::simulate::{Probe, Simulator, count, until_offline, until_online};

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Ingest against the Python baseline";
/// The section of a run whose Drover side stores into PostgreSQL.
pub const HEADING_POSTGRES: &str = "## Ingest against the Python baseline (PostgreSQL)";
/// How long stored counts may stand still before a drain is over. On PostgreSQL a drain of a
/// large backlog was seen to stand still for 17 s and then go on, every reading still spooled
/// (none dropped): a shorter wait reported those readings as lost.
const DRAIN_IDLE: Duration = Duration::from_secs(60);

/// Options of `drover-bench baseline`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Devices of the flood, on both sides.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Python side: readings (messages) each device publishes, as fast as the broker takes them.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub readings: u32,
    /// Python side: publishing connections sharing the devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,
    /// Drover side: readings per second per simulated device (at most 100).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Drover side: seconds over which stored readings are counted once every device is online.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub hold_s: u64,
    /// Drover side on PostgreSQL instead of SQLite: a fresh database is made on this server
    /// (the URL's own database is only used to create it) and dropped afterwards.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Drover side: enrollments (and starts) per second.
    #[arg(long, default_value_t = 50.0)]
    pub enroll_rate: f64,
    /// The Python recipe [default: ../shared/peers/seed_recipe_ingest.py beside the workspace].
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// The Python interpreter (with paho-mqtt 2: `python3 -m pip install 'paho-mqtt>=2'`).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// The broker for the Python side [default: /usr/sbin/mosquitto].
    #[arg(long)]
    pub mosquitto_bin: Option<PathBuf>,
    /// The server binary [default: target/release/drover].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// The agent binary [default: target/agent/drover-agent].
    #[arg(long)]
    pub agent_bin: Option<PathBuf>,
    /// Write or update this tool's section of this Markdown file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the data directories after the run.
    #[arg(long)]
    pub keep_data: bool,
}

/// The Python recipe's run.
#[derive(Debug, Clone)]
pub struct PythonSide {
    /// Messages (= readings) the broker acknowledged to the publishers.
    pub offered: u64,
    /// Seconds the publishers took until the last PUBACK.
    pub publish_s: f64,
    /// Distinct readings in the recipe's SQLite file afterwards.
    pub stored: u64,
    /// Readings per second by the recipe's own clock (first to last message).
    pub rate: f64,
    /// The recipe's own line.
    pub line: String,
    /// Its peak RSS, KiB (from /proc while it ran).
    pub rss_kib: u64,
}

impl PythonSide {
    /// Offered readings that never reached its store.
    pub fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.stored)
    }
}

/// Drover's run.
#[derive(Debug, Clone, Default)]
pub struct DroverSide {
    /// The server's store.
    pub store: &'static str,
    /// Simulated devices.
    pub devices: u32,
    /// Offered readings per second (devices × rate).
    pub offered_rate: f64,
    /// Seconds until every device was enrolled and online (generating almost nothing).
    pub online_s: f64,
    /// Seconds until every device was online again at the flood's start.
    pub restart_online_s: f64,
    /// The measuring window, seconds.
    pub window_s: f64,
    /// Readings stored in the window.
    pub window_stored: u64,
    /// Telemetry messages the server took in the window.
    pub window_messages: u64,
    /// Readings the flooding simulator generated, and the seconds it ran (coming online and the
    /// window): it generates no faster than it can, a late tick being delayed, not made up.
    pub flood_generated: u64,
    /// See `flood_generated`.
    pub flood_s: f64,
    /// Readings stored from the spools after the flood, and the seconds from the restart to the
    /// last of them (reconnecting included): a fleet back after an outage.
    pub drained: u64,
    /// See `drained`.
    pub drain_s: f64,
    /// Readings the simulator generated in all (both starts).
    pub generated: u64,
    /// Readings stored in all, after the drain.
    pub stored: u64,
    /// CPU over the window, % of one core.
    pub server_cpu: f64,
    /// CPU over the window, % of one core.
    pub sim_cpu: f64,
    /// The server's RSS at the end of the window, KiB.
    pub server_rss_kib: u64,
}

impl DroverSide {
    /// One run's load and outcome, for the Summary's last column.
    pub fn run_note(&self) -> String {
        format!(
            "asked {:.0}/s, generated {:.0}/s; {:.0} readings a message; {} of {} generated stored",
            self.offered_rate,
            self.generated_rate(),
            self.readings_per_message(),
            self.stored,
            self.generated
        )
    }

    /// Readings the flooding simulator generated per second.
    pub fn generated_rate(&self) -> f64 {
        rate(self.flood_generated, self.flood_s)
    }

    /// Readings per telemetry message in the window.
    pub fn readings_per_message(&self) -> f64 {
        self.window_stored as f64 / self.window_messages.max(1) as f64
    }

    /// Readings stored per second in the window.
    pub fn rate(&self) -> f64 {
        rate(self.window_stored, self.window_s)
    }

    /// Generated readings never stored.
    pub fn lost(&self) -> u64 {
        self.generated.saturating_sub(self.stored)
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The Python recipe.
    pub python: PythonSide,
    /// Drover.
    pub drover: DroverSide,
}

impl Figures {
    /// Drover's stored rate over the recipe's, when both stored everything offered.
    pub fn ratio(&self) -> f64 {
        if self.python.rate > 0.0 {
            self.drover.rate() / self.python.rate
        } else {
            0.0
        }
    }
}

/// `../shared/peers/seed_recipe_ingest.py` beside the workspace (this binary is in target/release).
fn default_recipe() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let workspace = exe
        .ancestors()
        .nth(3)
        .context("this binary is not inside a workspace's target directory")?;
    Ok(workspace
        .join("..")
        .join("shared")
        .join("peers")
        .join("seed_recipe_ingest.py"))
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: Args) -> Result<Figures> {
    let (server_bin, agent_bin) = binaries(args.server_bin.as_ref(), args.agent_bin.as_ref())?;
    let recipe = match &args.recipe {
        Some(p) => p.clone(),
        None => default_recipe()?,
    };
    if !recipe.is_file() {
        bail!("the Python recipe {} does not exist", recipe.display());
    }
    let command = command_line();
    let machine = procfs::machine();

    let flood = Flood {
        first_device: 0,
        devices: args.devices,
        readings: args.readings,
        connections: args.connections,
    };
    let data = DataDir::create(args.keep_data)?;
    eprintln!(
        "Python recipe: {} readings from {} devices through a private Mosquitto",
        flood.messages(),
        flood.devices
    );
    let python = python_side(&args, &recipe, flood, &data.path).await?;
    eprintln!(
        "Python recipe: {} of {} stored, {:.0} readings/s",
        python.stored, python.offered, python.rate
    );
    eprintln!(
        "Drover: {} simulated devices at {} readings/s each",
        args.devices, args.rate
    );
    let drover = drover_side(&args, &server_bin, &agent_bin, &data.path).await?;
    eprintln!(
        "Drover: {:.0} readings/s stored over {:.0} s; {} of {} generated stored",
        drover.rate(),
        drover.window_s,
        drover.stored,
        drover.generated
    );
    let figures = Figures { python, drover };
    let section = markdown(&figures, &args, &command, &machine);
    println!("{section}");
    if let Some(out) = &args.out {
        let heading = heading(&args);
        write_section(out, &file_header(&machine), heading, &section)?;
        eprintln!("wrote the {} section of {}", &heading[3..], out.display());
    }
    Ok(figures)
}

async fn python_side(args: &Args, recipe: &Path, flood: Flood, dir: &Path) -> Result<PythonSide> {
    let broker = Mosquitto::start(dir, "mosquitto-python", args.mosquitto_bin.as_ref()).await?;
    let db = dir.join("peer.db");
    let expect = flood.messages();
    let mut child = tokio::process::Command::new(&args.python)
        .arg(recipe)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &broker.addr.port().to_string(),
        ])
        .args(["--topic", flood::TELEMETRY_FILTER, "--db"])
        .arg(&db)
        .args(["--expect", &expect.to_string(), "--idle", "15"])
        .args(["--max-seconds", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {}", args.python, recipe.display()))?;
    let pid = child.id().context("the recipe exited at once")?;
    // The recipe says nothing until it ends: give it time to import paho and subscribe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(status) = child.try_wait()? {
        let out = child.wait_with_output().await?;
        bail!(
            "the Python recipe exited at start ({status}): {}; install paho-mqtt with `{} -m pip install 'paho-mqtt>=2'`",
            String::from_utf8_lossy(&out.stderr).trim(),
            args.python
        );
    }
    let rss = tokio::spawn(peak_rss(pid));
    let (_, published) = flood::publish(broker.addr, flood).await?;
    let out = tokio::time::timeout(Duration::from_secs(3700), child.wait_with_output())
        .await
        .context("the Python recipe did not finish within an hour")??;
    // The process is gone now, so the watcher ends at its next reading.
    let rss_kib = rss.await.unwrap_or(0);
    broker.stop().await;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "the Python recipe failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rate = recipe_rate(&line).with_context(|| format!("the recipe printed {line:?}"))?;
    let stored = distinct_readings(&db).await?;
    Ok(PythonSide {
        offered: published.acked,
        publish_s: published.secs,
        stored,
        rate,
        line,
        rss_kib,
    })
}

/// The highest RSS seen of a process while it runs (read every 100 ms), KiB.
async fn peak_rss(pid: u32) -> u64 {
    let mut peak = 0;
    while let Some(s) = procfs::sample(Pid::Of(pid)) {
        peak = peak.max(s.rss_kib);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// The rate in the recipe's line `stored N messages in S s = R msg/s (bad B)`.
fn recipe_rate(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once(" = ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Distinct (device, seq) readings in the recipe's SQLite file.
async fn distinct_readings(db: &Path) -> Result<u64> {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::new().filename(db).read_only(true))
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let probe = Probe::Sqlite(pool);
    let n = count(
        &probe,
        "SELECT COUNT(*) FROM (SELECT DISTINCT device_id, seq FROM telemetry)",
    )
    .await?;
    probe.close().await;
    Ok(n)
}

/// The readings count in the simulator's summary line (`…; N readings; …`).
pub(crate) fn generated(summary: &str) -> Option<u64> {
    summary
        .split(';')
        .find_map(|part| part.trim().strip_suffix(" readings"))
        .and_then(|n| n.trim().parse().ok())
}

async fn drover_side(
    args: &Args,
    server_bin: &Path,
    agent_bin: &Path,
    dir: &Path,
) -> Result<DroverSide> {
    let tps = procfs::clock_ticks_per_second();
    let data = dir.join("drover");
    std::fs::create_dir_all(&data)?;
    let fresh_db = match &args.database_url {
        Some(url) => Some(FreshDatabase::create(url).await?),
        None => None,
    };
    let backing = server::Backing {
        database_url: fresh_db.as_ref().map(|d| d.url.clone()),
        ..Default::default()
    };
    let server::Fresh {
        server, api, jwt, ..
    } = server::start_fresh_backed(server_bin, &data, &backing).await?;
    let join_command = api.join_command(&jwt, args.devices).await?;
    let join = parse_join(&join_command)
        .with_context(|| format!("the join command `{join_command}` lacks a flag"))?;
    let pool = match &fresh_db {
        Some(d) => crate::simulate::open_postgres(&d.url).await?,
        None => crate::simulate::open_store(&data).await?,
    };
    let state = data.join("sim");
    let target = u64::from(args.devices);
    let deadline =
        Duration::from_secs_f64(f64::from(args.devices) / args.enroll_rate * 3.0 + 120.0);
    let start = |rate: f64, starts_per_s: f64| {
        Simulator::start(
            agent_bin,
            &join,
            args.devices,
            rate,
            30,
            starts_per_s,
            &state,
        )
    };
    let came_online = |online: crate::simulate::Start| {
        if online.online < target {
            bail!(
                "only {} of {} devices came online within {:.0} s; see {}",
                online.online,
                target,
                online.all_online_s,
                state.with_extension("log").display()
            );
        }
        Ok(online)
    };
    // Enroll the fleet first, generating almost nothing: under a flood, the first devices'
    // readings would slow the later ones' enrollment, and the window would measure a fleet
    // still coming up. Then start it again, flooding, with every identity in place.
    let warm = start(0.0001, args.enroll_rate)?;
    let enrolled = came_online(until_online(&pool, target, deadline).await?)?;
    let (_, summary) = warm.stop().await?;
    let mut generated_total = generated(&summary).unwrap_or(0);
    until_offline(&pool, deadline).await?;
    let sim = start(args.rate, 1_000.0)?;
    let flood_started = Instant::now();
    let online = came_online(until_online(&pool, target, deadline).await?)?;
    const MESSAGES: &str = "drover_telemetry_messages_total";
    let before = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    let messages_before = api.counter(MESSAGES).await?;
    let sim_ticks = procfs::cpu_ticks(Pid::Of(sim.pid)).unwrap_or(0);
    let server_ticks = procfs::cpu_ticks(Pid::Of(server.pid)).unwrap_or(0);
    let held = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let after = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    let window_messages = api.counter(MESSAGES).await? - messages_before;
    let window = held.elapsed();
    let cpu = |pid: u32, since: u64| {
        procfs::cpu_percent(
            procfs::cpu_ticks(Pid::Of(pid))
                .unwrap_or(0)
                .saturating_sub(since),
            tps,
            window,
        )
    };
    let sim_cpu = cpu(sim.pid, sim_ticks);
    let server_cpu = cpu(server.pid, server_ticks);
    let server_rss_kib = procfs::sample(Pid::Of(server.pid))
        .map(|s| s.rss_kib)
        .unwrap_or(0);
    let (_, summary) = sim.stop().await?;
    let flood_s = flood_started.elapsed().as_secs_f64();
    let flood_generated = generated(&summary)
        .with_context(|| format!("the simulator's summary {summary:?} names no readings"))?;
    generated_total += flood_generated;
    // What the devices spooled and had not sent at the stop is theirs to send on the next start:
    // start them again, generating almost nothing, until the store stops growing.
    eprintln!("draining the devices' spools ({generated_total} readings generated)");
    let sim = start(0.0001, 1_000.0)?;
    let mut last = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    let drain_from = last;
    let drain_started = Instant::now();
    let mut since = Instant::now();
    let drain_deadline = Instant::now() + deadline + Duration::from_secs(600);
    while Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
        if now != last {
            last = now;
            since = Instant::now();
            continue;
        }
        // Everything is in, and has been for a moment; or nothing more is coming.
        let settled = now >= generated_total && since.elapsed() > Duration::from_secs(3);
        if settled || since.elapsed() > DRAIN_IDLE {
            break;
        }
    }
    let drained = last - drain_from;
    let drain_s = since.duration_since(drain_started).as_secs_f64();
    let (_, summary) = sim.stop().await?;
    generated_total += generated(&summary).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    pool.close().await;
    let _ = server.stop().await;
    if let Some(d) = fresh_db
        && !args.keep_data
    {
        d.drop_it().await;
    }
    Ok(DroverSide {
        store: if args.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        devices: args.devices,
        offered_rate: f64::from(args.devices) * args.rate,
        online_s: enrolled.all_online_s,
        restart_online_s: online.all_online_s,
        window_s: window.as_secs_f64(),
        window_stored: after.saturating_sub(before),
        window_messages,
        drained,
        drain_s,
        flood_generated,
        flood_s,
        generated: generated_total,
        stored,
        server_cpu,
        sim_cpu,
        server_rss_kib,
    })
}

/// A PostgreSQL database made for one run.
struct FreshDatabase {
    admin: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    /// Creates `drover_bench_<pid>_<ms>` on the server `admin_url` points at.
    async fn create(admin_url: &str) -> Result<FreshDatabase> {
        let name = format!(
            "drover_bench_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("creating the database {name}"))?;
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let url = match base.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
                format!("{server}/{name}")
            }
            _ => bail!("{admin_url} names no database to replace (postgres://USER@HOST:PORT/DB)"),
        };
        Ok(FreshDatabase {
            admin: admin_url.to_string(),
            name,
            url,
        })
    }

    /// Drops the database (a failure is only reported).
    async fn drop_it(self) {
        let dropped = async {
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&self.admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop the database {}: {e}", self.name);
        }
    }
}

/// This run's section: the store decides.
fn heading(args: &Args) -> &'static str {
    if args.database_url.is_some() {
        HEADING_POSTGRES
    } else {
        HEADING
    }
}

fn markdown(f: &Figures, args: &Args, command: &str, m: &Machine) -> String {
    let mut o = String::new();
    let (p, d) = (&f.python, &f.drover);
    let _ = writeln!(o, "{}\n", heading(args));
    let _ = writeln!(
        o,
        "Measured {} on {} ({} cores, {:.1} GiB, {}; {}). Every process (servers, brokers, \
         publishers, simulator) shares the machine.\n",
        m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc
    );
    let _ = writeln!(
        o,
        "```sh\ncargo build --release -p drover-server -p drover-bench\n\
         cargo build --profile agent -p drover-agent\npython3 -m pip install 'paho-mqtt>=2'\n{command}\n```\n"
    );
    let _ = writeln!(
        o,
        "**Method.** *Python baseline:* the recipe in shared/peers/seed_recipe_ingest.py (a \
         paho-mqtt subscriber, QoS 1, that writes each message's reading into SQLite and \
         commits every 1,000) on a private Mosquitto (`max_queued_messages 0`: it queues \
         rather than drops). {} publishing connections flood {} readings ({} devices × {}, \
         one reading of {} metrics per QoS 1 message) as fast as the broker acknowledges; the \
         rate is the recipe's own (first to last message), the count stored is read from its \
         file. *Drover:* one `drover-agent simulate` process runs {} devices (each its own \
         enrollment and mutual-TLS session to the embedded broker, readings of four metrics \
         spooled and published in batches) offering {} readings/s each against the release \
         server on {}; once every device is online, readings stored \
         (`telemetry_seen`) are counted over {} s. The simulator is then stopped and started \
         again on the same state, generating almost nothing, until the store stops growing: a \
         reading generated and never stored is lost (offered faster than it is taken, a \
         simulated device's 1 MiB spool fills and drops its oldest readings, as a real \
         device's would).\n",
        args.connections,
        args.devices as u64 * args.readings as u64,
        args.devices,
        args.readings,
        flood::METRICS.len(),
        args.devices,
        args.rate,
        d.store,
        args.hold_s
    );
    let _ = writeln!(
        o,
        "| system | offered | stored | lost | readings stored/s | CPU % of one core | RSS MiB |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---|---:|");
    let _ = writeln!(
        o,
        "| Python recipe + Mosquitto | {} readings, published in {:.1} s ({:.0}/s) | {} | {} | **{:.0}** | | {:.0} |",
        p.offered,
        p.publish_s,
        rate(p.offered, p.publish_s),
        p.stored,
        p.lost(),
        p.rate,
        p.rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        o,
        "| Drover (simulate → embedded broker → {}) | {:.0}/s ({} devices × {}/s); {} generated in all | {} ({} in the {:.0} s window) | {} | **{:.0}** | server {:.0}, simulator {:.0} | {:.0} |",
        d.store,
        d.offered_rate,
        d.devices,
        args.rate,
        d.generated,
        d.stored,
        d.window_stored,
        d.window_s,
        d.lost(),
        d.rate(),
        d.server_cpu,
        d.sim_cpu,
        d.server_rss_kib as f64 / 1024.0
    );
    o.push('\n');
    let lossless = p.lost() == 0 && d.lost() == 0;
    if lossless {
        let _ = writeln!(
            o,
            "Neither lost a reading. Drover stored **{:.1}× the Python baseline's rate** (the goal is ≥ 20×).",
            f.ratio()
        );
    } else {
        let _ = writeln!(
            o,
            "**Readings were lost** (Python {}, Drover {}), so the ratio ({:.1}×) is not a \
             speed: a rate that loses messages is a loss.",
            p.lost(),
            d.lost(),
            f.ratio()
        );
    }
    let _ = writeln!(
        o,
        "\nThe recipe's own line: `{}`. The {} simulated devices first enrolled and came online \
         in {:.0} s, generating almost nothing, and were stopped; started again with the flood \
         they were all back online in {:.1} s, and the window began then.",
        p.line, d.devices, d.online_s, d.restart_online_s
    );
    let _ = writeln!(
        o,
        "\nIn the window the server took {} telemetry messages, {:.1} readings each (a device \
         sends what it has at once when nothing is in flight, and what arrives meanwhile in its \
         next batch).",
        d.window_messages,
        d.readings_per_message()
    );
    if d.drained > 0 {
        let _ = writeln!(
            o,
            "\nAfter the flood, the devices (started again, generating almost nothing) sent \
             what waited in their spools: {} readings stored in {:.0} s from their restart, \
             reconnecting included, {:.0}/s.",
            d.drained,
            d.drain_s,
            rate(d.drained, d.drain_s)
        );
    }
    if d.rate() < d.offered_rate * 0.95 {
        let _ = writeln!(
            o,
            "\nDrover stored less than it was asked for ({:.0} of {:.0}/s). The simulator \
             generates a reading only when it gets to it (a late tick is delayed, not made up): \
             while flooding it generated {} readings in {:.0} s, {:.0}/s, coming online \
             included. What it generated and had not sent waited in the devices' spools. This \
             is the pipeline's ceiling on this machine, load generator included, not loss.",
            d.rate(),
            d.offered_rate,
            d.flood_generated,
            d.flood_s,
            d.generated_rate()
        );
    } else {
        let _ = writeln!(
            o,
            "\nDrover kept up with all it was offered, so its rate (and the ratio) is a lower \
             bound: its ceiling is above it; raise `--rate` (at most 100 per device) or \
             `--devices` to find it."
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipes_rate_is_read_from_its_line() {
        assert_eq!(
            recipe_rate("stored 100000 messages in 20.000 s = 5000 msg/s (bad 0)"),
            Some(5000.0)
        );
        assert_eq!(recipe_rate("nothing"), None);
    }

    #[test]
    fn the_simulators_summary_names_readings_generated() {
        let line = "simulated 10 devices for 5 s, 10 at once (10 enrolled now, 0 reused, 0 failed); 309029 readings; updates: 0 succeeded";
        assert_eq!(generated(line), Some(309_029));
        assert_eq!(generated("no figures"), None);
    }
}
