//! `drover-bench ceiling`: ingest on the same broker with the same messages. A flood of
//! single-reading QoS 1 messages through a private Mosquitto is taken first by a subscriber that
//! only counts (the broker's own ceiling on this machine), then, on a fresh instance of the same
//! broker and configuration, by the release server (`DROVER_MQTT_URL`, SQLite) until every
//! reading is stored. Both rates run from the first publish to the last message taken.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::connections::{DataDir, command_line};
use crate::flood::{self, Flood};
use crate::intake::{rate, server_binary};
use crate::mosquitto::Mosquitto;
use crate::procfs::{self, Machine, Pid};
use crate::report::{file_header, write_section};
use crate::server::{self, Backing};
use crate::simulate::{count, open_store};

/// The section this tool owns in docs/BENCHMARKS.md.
pub const HEADING: &str = "## Ingest against the broker's ceiling";
/// How long a count may stand still before the flood counts as over.
const IDLE: Duration = Duration::from_secs(15);

/// Options of `drover-bench ceiling`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Devices (topics) of the flood.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Readings (messages) each device publishes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub readings: u32,
    /// Publishing connections sharing the devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,
    /// The broker [default: /usr/sbin/mosquitto].
    #[arg(long)]
    pub mosquitto_bin: Option<PathBuf>,
    /// The server binary [default: target/release/drover].
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Write or update this tool's section of this Markdown file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the data directory after the run.
    #[arg(long)]
    pub keep_data: bool,
}

/// One consumer's take of the flood.
#[derive(Debug, Clone, Copy, Default)]
pub struct Take {
    /// Messages the publishers had acknowledged.
    pub offered: u64,
    /// Seconds the publishers took.
    pub publish_s: f64,
    /// Messages counted (the counter) or readings stored (Drover).
    pub taken: u64,
    /// First publish to the last message taken, seconds.
    pub secs: f64,
    /// The consumer's CPU over that time, % of one core (the server; 0 for the counter).
    pub cpu: f64,
}

impl Take {
    /// Taken per second.
    pub fn rate(&self) -> f64 {
        rate(self.taken, self.secs)
    }

    /// Offered and not taken.
    pub fn lost(&self) -> u64 {
        self.offered.saturating_sub(self.taken)
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The counting subscriber.
    pub ceiling: Take,
    /// The server.
    pub drover: Take,
    /// The broker's version line.
    pub broker: String,
}

impl Figures {
    /// Drover's rate as a percentage of the ceiling.
    pub fn percent(&self) -> f64 {
        if self.ceiling.rate() > 0.0 {
            self.drover.rate() / self.ceiling.rate() * 100.0
        } else {
            0.0
        }
    }
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: Args) -> Result<Figures> {
    let server_bin = server_binary(args.server_bin.as_ref())?;
    let command = command_line();
    let machine = procfs::machine();
    let tps = procfs::clock_ticks_per_second();
    let data = DataDir::create(args.keep_data)?;
    let flood = Flood {
        first_device: 0,
        devices: args.devices,
        readings: args.readings,
        connections: args.connections,
    };
    let n = flood.messages();

    eprintln!("ceiling: {n} messages to a subscriber that only counts");
    let broker =
        Mosquitto::start(&data.path, "mosquitto-ceiling", args.mosquitto_bin.as_ref()).await?;
    let version = broker.version.clone();
    let counter = flood::Counter::start(broker.addr).await?;
    let (started, published) = flood::publish(broker.addr, flood).await?;
    let (taken, last) = counter.wait_for(n, IDLE).await?;
    counter.stop();
    broker.stop().await;
    let ceiling = Take {
        offered: published.acked,
        publish_s: published.secs,
        taken,
        secs: last.map_or(0.0, |l| l.duration_since(started).as_secs_f64()),
        cpu: 0.0,
    };
    eprintln!("ceiling: {} of {n} in {:.1} s", ceiling.taken, ceiling.secs);

    eprintln!("Drover: the same {n} messages to the release server on a fresh broker");
    let broker =
        Mosquitto::start(&data.path, "mosquitto-drover", args.mosquitto_bin.as_ref()).await?;
    let server_dir = data.path.join("drover");
    std::fs::create_dir_all(&server_dir)?;
    let backing = Backing {
        broker: Some(broker.addr),
        database_url: None,
    };
    let fresh = server::start_fresh_backed(&server_bin, &server_dir, &backing).await?;
    let pool = open_store(&server_dir).await?;
    // One reading of a device outside the flood, sent until it is stored: the server's shared
    // subscription is in place and the path is warm.
    let warm = Flood {
        first_device: args.devices,
        devices: 1,
        readings: 1,
        connections: 1,
    };
    let warm_deadline = Instant::now() + Duration::from_secs(60);
    while count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await? == 0 {
        if Instant::now() > warm_deadline {
            bail!("the server stored no reading from the broker within 60 s");
        }
        flood::publish(broker.addr, warm).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let base = fresh.api.readings_stored().await?;
    let ticks = procfs::cpu_ticks(Pid::Of(fresh.server.pid)).unwrap_or(0);
    let (started, published) = flood::publish(broker.addr, flood).await?;
    let mut stored = fresh.api.readings_stored().await? - base;
    let mut last = Instant::now();
    while stored < n && last.elapsed() < IDLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = fresh.api.readings_stored().await? - base;
        if now != stored {
            stored = now;
            last = Instant::now();
        }
    }
    // The counter moves only after a commit; the table must hold at least what it counted.
    let in_table = count(&pool, "SELECT COUNT(*) FROM telemetry_seen").await?;
    if in_table < base + stored {
        bail!(
            "the server counted {} stored readings but its table holds {in_table}",
            base + stored
        );
    }
    let secs = last.duration_since(started).as_secs_f64();
    let cpu = procfs::cpu_percent(
        procfs::cpu_ticks(Pid::Of(fresh.server.pid))
            .unwrap_or(0)
            .saturating_sub(ticks),
        tps,
        Duration::from_secs_f64(secs),
    );
    let log_lines = fresh.log.lines();
    pool.close().await;
    let _ = fresh.server.stop().await;
    broker.stop().await;
    let drover = Take {
        offered: published.acked,
        publish_s: published.secs,
        taken: stored,
        secs,
        cpu,
    };
    eprintln!(
        "Drover: {} of {n} stored in {:.1} s",
        drover.taken, drover.secs
    );
    if log_lines > 0 {
        eprintln!("the server wrote {log_lines} warning or error lines");
    }

    let figures = Figures {
        ceiling,
        drover,
        broker: version,
    };
    let section = markdown(&figures, &args, &command, &machine);
    println!("{section}");
    if let Some(out) = &args.out {
        write_section(out, &file_header(&machine), HEADING, &section)?;
        eprintln!("wrote the {} section of {}", &HEADING[3..], out.display());
    }
    Ok(figures)
}

fn markdown(f: &Figures, args: &Args, command: &str, m: &Machine) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Measured {} on {} ({} cores, {:.1} GiB, {}; {}) with {}. The broker, the publishers \
         and the consumer share the machine.\n",
        m.date, m.cpu, m.cores, m.memory_gib, m.os, m.rustc, f.broker
    );
    let _ = writeln!(
        o,
        "```sh\ncargo build --release -p drover-server -p drover-bench\n{command}\n```\n"
    );
    let _ = writeln!(
        o,
        "**Method.** A private Mosquitto (plain listener on loopback, anonymous, \
         `max_queued_messages 0`) takes {} single-reading telemetry messages ({} devices × {}, \
         three metrics each, the contract's topic and payload, QoS 1) from {} publishing \
         connections as fast as it acknowledges them. First a subscriber that only counts \
         (rumqttc, QoS 1, `{}`) takes them: the broker's ceiling. Then a fresh instance of the \
         same broker and configuration takes the same messages, and the release server \
         (`DROVER_MQTT_URL=mqtt://…`, its shared QoS 1 subscription, SQLite) stores them; a \
         reading counts once its transaction committed (the server's \
         `drover_telemetry_readings_stored_total`, read from `/metrics` every 20 ms, checked at \
         the end against the rows of `telemetry_seen`). Both rates run from the first publish \
         to the last message taken.\n",
        u64::from(args.devices) * u64::from(args.readings),
        args.devices,
        args.readings,
        args.connections,
        flood::TELEMETRY_FILTER
    );
    let _ = writeln!(
        o,
        "| consumer | offered (published in) | taken | lost | per second | server CPU % |"
    );
    let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
    for (name, t, cpu) in [
        ("counting subscriber (ceiling)", &f.ceiling, String::new()),
        (
            "Drover server → SQLite",
            &f.drover,
            format!("{:.0}", f.drover.cpu),
        ),
    ] {
        let _ = writeln!(
            o,
            "| {name} | {} ({:.1} s) | {} | {} | **{:.0}** | {cpu} |",
            t.offered,
            t.publish_s,
            t.taken,
            t.lost(),
            t.rate()
        );
    }
    o.push('\n');
    if f.drover.lost() == 0 && f.ceiling.lost() == 0 {
        let _ = writeln!(
            o,
            "Nothing was lost. Drover stored **{:.0} % of the broker's ceiling** (the goal is ≥ 90 %).",
            f.percent()
        );
    } else {
        let _ = writeln!(
            o,
            "**Messages were lost** (counter {}, Drover {}): the {:.0} % is not a speed.",
            f.ceiling.lost(),
            f.drover.lost(),
            f.percent()
        );
    }
    o
}
