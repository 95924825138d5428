//! `drover-bench connections`: the server's memory and CPU while it holds
//! N device sessions, measured in steps, then a reconnect storm after a
//! restart on the same data directory and ports. The run is bounded: each
//! wait has a deadline, and the fleet's tasks end with the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::api::Api;
use crate::enroll::Enroller;
use crate::fleet::{Fleet, Phase};
use crate::procfs::{self, CpuMark, CpuSplit, Pid};
use crate::report::{Enrollment, Extra, Limits, Report, Step, Storm};
use crate::server::{self, Ports, ServerLog};

/// Options of `drover-bench connections`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Devices to enroll and connect.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    devices: u32,
    /// Connected-device counts at which to measure, ascending; counts above
    /// --devices are dropped and --devices is always the last step.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,10000")]
    steps: Vec<u32>,
    /// The server binary [default: `drover` beside this binary, i.e. target/release/drover].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// MQTT keep-alive of every device, seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(5..=3600))]
    keep_alive_s: u64,
    /// First connections (TCP + TLS + CONNECT) in flight at once.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=5000))]
    handshakes: u64,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=512))]
    enroll_concurrency: u64,
    /// Pause after a step's devices are connected before memory is read, seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    settle_s: u64,
    /// Window over which CPU use is measured at each step, seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    cpu_window_s: u64,
    /// Longest wait for every device to reconnect after the restart, seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
    storm_timeout_s: u64,
    /// Skip the reconnect storm.
    #[arg(long)]
    no_storm: bool,
    /// Write or update the "## Connections" section of this Markdown file (docs/BENCHMARKS.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the server's data directory (and its capped stderr log) after the run.
    #[arg(long)]
    keep_data: bool,
}

/// The steps to measure at: ascending, within 1..=devices, ending at devices.
fn normalize_steps(steps: &[u32], devices: u32) -> Vec<u32> {
    let mut out: Vec<u32> = steps
        .iter()
        .copied()
        .filter(|&s| s > 0 && s < devices)
        .collect();
    out.sort_unstable();
    out.dedup();
    out.push(devices);
    out
}

/// `drover` beside this binary (target/release/drover).
pub(crate) fn default_server_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe
        .parent()
        .context("this binary has no parent directory")?;
    Ok(dir.join("drover"))
}

/// This run's command line, as the report shows it.
pub(crate) fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_word(&a)).collect();
    format!("target/release/drover-bench {}", args.join(" "))
}

fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./,:".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A scratch data directory for the server, removed at the end unless kept.
pub(crate) struct DataDir {
    /// The directory.
    pub(crate) path: PathBuf,
    keep: bool,
}

impl DataDir {
    /// A fresh directory under the system's temporary directory.
    pub(crate) fn create(keep: bool) -> Result<DataDir> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("drover-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(DataDir { path, keep })
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the server's data directory: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the benchmark, prints (and optionally writes) the report, and answers it.
pub async fn run(args: Args) -> Result<Report> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let steps = normalize_steps(&args.steps, args.devices);
    let server_bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => default_server_bin()?,
    };
    if !server_bin.is_file() {
        bail!(
            "the server binary {} does not exist; build it with `cargo build --release -p drover-server` or pass --server-bin",
            server_bin.display()
        );
    }
    let command = command_line();
    let machine = procfs::machine();
    let ticks_per_second = procfs::clock_ticks_per_second();

    // 10,000 sessions need 10,000 sockets here: raise the soft limit as far as the hard one allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (bench_soft, bench_hard) =
        rlimit::getrlimit(rlimit::Resource::NOFILE).context("reading RLIMIT_NOFILE")?;
    if bench_soft < u64::from(args.devices) + 256 {
        eprintln!(
            "warning: this process may open only {bench_soft} files; {} sessions need more, so some will fail",
            args.devices
        );
    }

    let data = DataDir::create(args.keep_data)?;
    let log = Arc::new(ServerLog::default());
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let listen = Ports {
        http: any_port,
        device: any_port,
        mqtt: any_port,
    };
    eprintln!(
        "starting {} serve (data in {})",
        server_bin.display(),
        data.path.display()
    );
    let mut server = server::start(&server_bin, &data.path, &listen, true, log.clone()).await?;
    let ports = server.ports;
    let limits = Limits {
        bench_open_files: (bench_soft.to_string(), bench_hard.to_string()),
        server_open_files: procfs::open_files_limit(Pid::Of(server.pid))
            .unwrap_or_else(|| ("?".into(), "?".into())),
    };
    let idle = procfs::sample(Pid::Of(server.pid)).unwrap_or_default();

    // Enroll the fleet (one more device for the storm's newcomer).
    let password = server
        .admin_password
        .clone()
        .context("the server printed no admin password")?;
    let api = Api::new(ports.http)?;
    let jwt = api.login(&password).await?;
    let token = api.enrollment_token(&jwt, args.devices + 1).await?;
    let ca_path = data.path.join("pki").join("ca.crt");
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading the fleet CA {}", ca_path.display()))?;
    let enroller = Arc::new(Enroller::new(ports.device, &ca_pem, token)?);
    eprintln!(
        "enrolling {} devices and a newcomer for the storm ({} at a time)",
        args.devices, args.enroll_concurrency
    );
    let mut enrolled = enroller
        .enroll_many(args.devices + 1, args.enroll_concurrency as usize)
        .await;
    // The last one stays offline until it connects in the middle of the storm.
    let newcomer = enrolled
        .devices
        .pop()
        .context("no device enrolled")
        .with_context(|| format!("enrollment failures: {:?}", enrolled.failures));
    let enrollment = Enrollment {
        enrolled: enrolled.devices.len() + usize::from(newcomer.is_ok()),
        secs: enrolled.elapsed.as_secs_f64(),
        failures: enrolled.failures.into_iter().collect(),
    };
    eprintln!(
        "enrolled {} in {:.1} s ({:.0}/s)",
        enrollment.enrolled,
        enrollment.secs,
        enrollment.rate()
    );
    if enrolled.devices.is_empty() {
        bail!("no device enrolled: {:?}", enrollment.failures);
    }
    drop(enroller);
    let baseline = procfs::sample(Pid::Of(server.pid)).unwrap_or_default();

    // Connect in steps.
    let run_deadline = Instant::now()
        + Duration::from_secs(1800 + args.storm_timeout_s + u64::from(args.devices) / 10);
    let settings = crate::fleet::Settings {
        mqtt: ports.mqtt,
        keep_alive: Duration::from_secs(args.keep_alive_s),
        handshakes: args.handshakes as usize,
        deadline: run_deadline,
    };
    let mut fleet = Fleet::new(settings);
    let mut pending = enrolled.devices.into_iter();
    let mut rows = Vec::new();
    let mut smaps = Vec::new();
    for &target in &steps {
        let started = Instant::now();
        let cpu_before = CpuMark::now(server.pid);
        let threads_before = procfs::thread_ticks(Pid::Of(server.pid));
        let add = (target as usize).saturating_sub(fleet.started());
        fleet.spawn(pending.by_ref().take(add));
        eprintln!("step {target}: connecting {add} more devices");
        let step_deadline = started + Duration::from_secs(120 + add as u64 / 20);
        let settled = fleet.wait_settled(step_deadline).await;
        let connecting = Connecting {
            secs: started.elapsed().as_secs_f64(),
            settled,
            cpu: cpu_before.split_since(server.pid, ticks_per_second),
            threads: procfs::busiest_threads(
                &threads_before,
                &procfs::thread_ticks(Pid::Of(server.pid)),
                ticks_per_second,
            ),
        };
        if !server.running() {
            bail!(
                "the server exited during step {target}; its first log lines: {:?}",
                log.first_lines()
            );
        }
        tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
        let step = measure(
            &fleet,
            server.pid,
            target,
            connecting,
            Duration::from_secs(args.cpu_window_s),
            ticks_per_second,
        )
        .await;
        eprintln!(
            "step {target}: {} connected ({} subscriptions acknowledged), {} failed, server RSS {:.1} MiB, CPU {:.1} %, {} fds; while connecting: server {:.0} %, bench {:.0} %, others {:.0} %, {:?}",
            step.connected,
            fleet.subscribed(),
            step.failed,
            step.server.rss_kib as f64 / 1024.0,
            step.steady.server,
            step.server.fds,
            step.connecting.server,
            step.connecting.bench,
            step.connecting.others,
            step.connect_threads,
        );
        rows.push(step);
        smaps = procfs::smaps_rollup(Pid::Of(server.pid));
    }
    let connect_errors = fleet.errors(Phase::Steps);

    // The reconnect storm: stop, start again on the same data directory and ports.
    let (storm, server) = if args.no_storm {
        (None, server)
    } else {
        let (figures, restarted) = storm(
            &mut fleet,
            server,
            newcomer,
            &data.path,
            &server_bin,
            &log,
            &args,
            ticks_per_second,
        )
        .await?;
        (Some(figures), restarted)
    };

    fleet.shutdown().await;
    let _ = server.stop().await;

    let report = Report {
        command,
        machine,
        keep_alive_s: args.keep_alive_s,
        handshakes: args.handshakes,
        limits,
        idle,
        baseline,
        enrollment,
        steps: rows,
        connect_errors,
        storm,
        smaps,
        server_log_lines: log.lines(),
        server_log_first: log.first_lines(),
        cpu_window_s: args.cpu_window_s,
        settle_s: args.settle_s,
    };
    let section = report.markdown();
    println!("{section}");
    if let Some(out) = &args.out {
        crate::report::write_section(
            out,
            &report.header(),
            crate::report::CONNECTIONS_HEADING,
            &section,
        )?;
        eprintln!("wrote the Connections section of {}", out.display());
    }
    Ok(report)
}

/// How a step's devices connected.
struct Connecting {
    secs: f64,
    settled: bool,
    cpu: CpuSplit,
    threads: Vec<(String, f64)>,
}

/// Reads the server and this process after a step.
async fn measure(
    fleet: &Fleet,
    pid: u32,
    target: u32,
    connecting: Connecting,
    window: Duration,
    ticks_per_second: u64,
) -> Step {
    let server = procfs::sample(Pid::Of(pid)).unwrap_or_default();
    let bench = procfs::sample(Pid::Own).unwrap_or_default();
    let mark = CpuMark::now(pid);
    tokio::time::sleep(window).await;
    Step {
        target,
        connected: fleet.connected(),
        failed: fleet.gave_up(),
        settled: connecting.settled,
        connect_secs: connecting.secs,
        connecting: connecting.cpu,
        connect_threads: connecting.threads,
        server,
        bench,
        steady: mark.split_since(pid, ticks_per_second),
    }
}

/// Stops the server with SIGTERM, starts it again on the same data directory
/// and ports, and measures how the fleet comes back.
#[allow(clippy::too_many_arguments)]
async fn storm(
    fleet: &mut Fleet,
    server: server::ServerProcess,
    newcomer: Result<crate::enroll::Device>,
    data_dir: &Path,
    server_bin: &Path,
    log: &Arc<ServerLog>,
    args: &Args,
    ticks_per_second: u64,
) -> Result<(Storm, server::ServerProcess)> {
    let ports = server.ports;
    let connected_before: Vec<usize> = fleet
        .stats()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.connected())
        .map(|(i, _)| i)
        .collect();
    let before = connected_before.len();
    eprintln!("storm: stopping the server with {before} devices connected");
    let began = Instant::now();
    fleet.storm_begins();
    let (stop_took, killed) = server.stop().await?;

    // The old sockets may linger in TIME_WAIT; the server binds with SO_REUSEADDR,
    // but give a refused bind a few more tries.
    let mut attempt = 0;
    let server = loop {
        attempt += 1;
        match server::start(server_bin, data_dir, &ports, false, log.clone()).await {
            Ok(s) => break s,
            Err(e) if attempt < 5 => {
                eprintln!("storm: restart attempt {attempt} failed: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context("restarting the server on the same ports")),
        }
    };
    let restart_took = began.elapsed();
    let ready_ms = fleet.server_ready();
    let cpu_mark = CpuMark::now(server.pid);
    eprintln!(
        "storm: stopped in {:.2} s, listening again after {:.2} s",
        stop_took.as_secs_f64(),
        restart_took.as_secs_f64()
    );

    // The newcomer connects once about half the fleet is back (or after 10 s).
    let extra_settings = crate::fleet::Settings {
        mqtt: ports.mqtt,
        keep_alive: Duration::from_secs(args.keep_alive_s),
        handshakes: 1,
        deadline: Instant::now() + Duration::from_secs(120),
    };
    let mut extra_task: Option<tokio::task::JoinHandle<Extra>> = None;
    let mut newcomer = Some(newcomer);
    let extra_deadline = Instant::now() + Duration::from_secs(10);

    let deadline = Instant::now() + Duration::from_secs(args.storm_timeout_s);
    let mut last_report = Instant::now();
    let mut all_back = None;
    loop {
        let back = connected_before
            .iter()
            .filter(|&&i| fleet.stats()[i].reconnected_at_ms().is_some())
            .count();
        if extra_task.is_none()
            && (back * 2 >= before || Instant::now() >= extra_deadline)
            && let Some(device) = newcomer.take()
        {
            extra_task = Some(tokio::spawn(newcomer_connects(
                device,
                extra_settings,
                back,
            )));
        }
        if back >= before {
            all_back = Some(fleet.now_ms().saturating_sub(ready_ms));
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("storm: {back} of {before} back");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu_mark.split_since(server.pid, ticks_per_second);
    let threads = procfs::busiest_threads(
        &Default::default(),
        &procfs::thread_ticks(Pid::Of(server.pid)),
        ticks_per_second,
    );
    let extra = match extra_task {
        Some(task) => match tokio::time::timeout(Duration::from_secs(90), task).await {
            Ok(Ok(extra)) => Some(extra),
            _ => None,
        },
        None => None,
    };

    let mut reconnect_ms: Vec<u64> = Vec::with_capacity(before);
    let mut retried = 0usize;
    for &i in &connected_before {
        let s = &fleet.stats()[i];
        if let Some(at) = s.reconnected_at_ms() {
            reconnect_ms.push(at.saturating_sub(ready_ms));
        }
        if s.storm_retries() > 0 {
            retried += 1;
        }
    }
    reconnect_ms.sort_unstable();
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let after = measure(
        fleet,
        server.pid,
        before as u32,
        Connecting {
            secs: 0.0,
            settled: true,
            cpu,
            threads: threads.clone(),
        },
        Duration::from_secs(args.cpu_window_s),
        ticks_per_second,
    )
    .await;
    Ok((
        Storm {
            before,
            stop_secs: stop_took.as_secs_f64(),
            killed,
            restart_secs: restart_took.as_secs_f64(),
            reconnected: reconnect_ms.len(),
            all_back_ms: all_back,
            reconnect_ms,
            retried,
            drops: fleet.storm_drops(),
            extra,
            cpu,
            threads,
            after,
            errors: fleet.errors(Phase::Storm),
            timeout_s: args.storm_timeout_s,
        },
        server,
    ))
}

/// The newcomer's first connection in the middle of the storm.
async fn newcomer_connects(
    device: Result<crate::enroll::Device>,
    settings: crate::fleet::Settings,
    when_back: usize,
) -> Extra {
    let device = match device {
        Ok(d) => d,
        Err(e) => {
            return Extra {
                when_back,
                connect_ms: None,
                failures: 0,
                error: Some(format!("enrolling it before the storm failed: {e:#}")),
            };
        }
    };
    match crate::fleet::time_to_connect(&device, &settings, Duration::from_secs(60)).await {
        Ok((took, failures)) => Extra {
            when_back,
            connect_ms: Some(took.as_secs_f64() * 1000.0),
            failures,
            error: None,
        },
        Err(e) => Extra {
            when_back,
            connect_ms: None,
            failures: 0,
            error: Some(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_ascending_and_end_at_the_fleet_size() {
        assert_eq!(
            normalize_steps(&[1000, 2500, 5000, 10000], 10000),
            vec![1000, 2500, 5000, 10000]
        );
        assert_eq!(
            normalize_steps(&[1000, 2500, 5000, 10000], 1000),
            vec![1000]
        );
        assert_eq!(normalize_steps(&[1000, 500, 500, 0], 1000), vec![500, 1000]);
        assert_eq!(normalize_steps(&[], 7), vec![7]);
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("--steps"), "--steps");
        assert_eq!(shell_word("500,1000"), "500,1000");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
