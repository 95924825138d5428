//! `drover-agent simulate`: a fleet of simulated devices in one process, for demos, end-to-end
//! tests and load. Each device is what `drover-agent run` is, minus the hardware: its own state
//! directory, enrollment (key, CSR, certificate), trust document, MQTT session (the same
//! publisher, spool, heartbeats and commands), certificate keeper and update engine. What is
//! simulated: the readings (`temp_c`, `cpu_pct`, `inference_ms`, `confidence`, with noise and
//! occasional anomalies), the health figures, and the installer (downloads and verification are
//! real; installing changes nothing outside the state directory; the health check fails on
//! `--fail-versions`; `--degrade-versions` shifts a metric while a version is installed).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use drover_proto::{Health, UpdateState, Version};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::config::AgentConfig;
use crate::daemon;
use crate::device_api::ServerUrl;
use crate::enroll::{self, EnrollOptions, Outcome};
use crate::error::{Error, Result};
use crate::identity::renewal::Keeper;
use crate::report::SharedState;
use crate::report::publisher::{HealthSource, Publisher, PublisherConfig};
use crate::report::spool::{NewReading, SPOOL_DIR, Spool};
use crate::state::StateDir;
use crate::update::{self, Engine, Simulation};

/// A simulated device's spool bound: readings are generated, so a small one will do.
const SPOOL_BYTES: u64 = 1024 * 1024;
/// Enrollments in flight at once (each is two TLS connections and a CSR).
const ENROLL_CONCURRENCY: usize = 4;
/// Longest pause between enrollment attempts of one device.
const MAX_ENROLL_PAUSE: Duration = Duration::from_secs(30);
/// Commands received and not yet acted on, per device.
const COMMAND_QUEUE: usize = 8;
/// How often the simulator prints its progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// A simulated device's reading ticks per second at most.
const TICK_HZ: f64 = 10.0;
/// How long stopping devices get to say goodbye to the broker.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// File descriptors each device may hold at once (MQTT socket, spool segment) plus slack.
const FDS_PER_DEVICE: u64 = 3;

/// The metrics a simulated device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Board temperature, °C.
    TempC,
    /// CPU use, percent.
    CpuPct,
    /// Model inference time, ms.
    InferenceMs,
    /// Model confidence, 0 to 1.
    Confidence,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 4] = [
        Metric::TempC,
        Metric::CpuPct,
        Metric::InferenceMs,
        Metric::Confidence,
    ];

    /// The metric's name in readings.
    pub fn name(self) -> &'static str {
        match self {
            Metric::TempC => "temp_c",
            Metric::CpuPct => "cpu_pct",
            Metric::InferenceMs => "inference_ms",
            Metric::Confidence => "confidence",
        }
    }

    fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// `--degrade-versions V:METRIC=FACTOR`: while `version` is installed, `metric` is multiplied.
#[derive(Clone, Debug, PartialEq)]
pub struct Degrade {
    /// The version (of any bundle) that degrades the metric.
    pub version: Version,
    /// The metric.
    pub metric: Metric,
    /// The factor.
    pub factor: f64,
}

/// Parses `--fail-versions V,…` (empty items are skipped).
pub fn parse_fail_versions(text: &str) -> std::result::Result<Vec<Version>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            Version::parse(v).map_err(|e| format!("--fail-versions `{v}` is not a version: {e}"))
        })
        .collect()
}

/// Parses `--degrade-versions V:METRIC=FACTOR,…`.
pub fn parse_degrade(text: &str) -> std::result::Result<Vec<Degrade>, String> {
    let names = || {
        Metric::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    text.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|item| {
            let shape = || format!("--degrade-versions `{item}` is not VERSION:METRIC=FACTOR (for example 2.0.0:inference_ms=1.5)");
            let (version, rest) = item.split_once(':').ok_or_else(shape)?;
            let (metric, factor) = rest.split_once('=').ok_or_else(shape)?;
            let version = Version::parse(version.trim())
                .map_err(|e| format!("--degrade-versions `{item}`: {e}"))?;
            let metric = Metric::parse(metric.trim()).ok_or_else(|| {
                format!(
                    "--degrade-versions `{item}`: unknown metric `{}`; use one of {}",
                    metric.trim(),
                    names()
                )
            })?;
            let factor: f64 = factor.trim().parse().map_err(|_| {
                format!("--degrade-versions `{item}`: the factor must be a number")
            })?;
            if !factor.is_finite() || factor < 0.0 {
                return Err(format!(
                    "--degrade-versions `{item}`: the factor must be a finite number, 0 or more"
                ));
            }
            Ok(Degrade {
                version,
                metric,
                factor,
            })
        })
        .collect()
}

/// What `simulate` runs, checked.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    /// Server, token, CA pin, device type and tags (the host name is each device's own).
    pub enroll: EnrollOptions,
    /// How many devices.
    pub devices: u32,
    /// Where the devices' state directories live (`sim-00000`, …).
    pub root: PathBuf,
    /// Readings per second per device.
    pub rate_hz: f64,
    /// Noise, as a share of each metric's typical value.
    pub noise: f64,
    /// How far devices' typical values differ (0 alike, 1 the full spread).
    pub spread: f64,
    /// Chance that a reading is an anomaly.
    pub anomaly_rate: f64,
    /// Time between health reports.
    pub heartbeat: Duration,
    /// Enrollments (and starts) per second.
    pub enroll_rate: f64,
    /// Versions whose health check fails.
    pub fail_versions: Vec<Version>,
    /// Metrics shifted while a version is installed.
    pub degrade: Vec<Degrade>,
}

impl SimulateOptions {
    /// Checks the numbers; a bad one is a usage error naming its flag.
    pub fn validate(&self) -> Result<()> {
        let usage = |m: &str| Err(Error::Usage(m.to_owned()));
        if self.devices == 0 || self.devices > 100_000 {
            return usage("--devices must be from 1 to 100000");
        }
        if !(self.rate_hz > 0.0 && self.rate_hz <= 100.0) {
            return usage("--rate must be more than 0 and at most 100 readings per second");
        }
        if !(self.noise.is_finite() && (0.0..=1.0).contains(&self.noise)) {
            return usage("--noise must be from 0 to 1 (a share of each metric's typical value)");
        }
        if !(self.spread.is_finite() && (0.0..=1.0).contains(&self.spread)) {
            return usage("--spread must be from 0 to 1 (0: every device alike)");
        }
        if !(self.anomaly_rate.is_finite() && (0.0..=1.0).contains(&self.anomaly_rate)) {
            return usage("--anomaly-rate must be from 0 to 1");
        }
        if self.heartbeat < Duration::from_secs(1) || self.heartbeat > Duration::from_secs(3600) {
            return usage("--heartbeat must be from 1 to 3600 seconds");
        }
        if !(self.enroll_rate > 0.0 && self.enroll_rate <= 1000.0) {
            return usage("--enroll-rate must be more than 0 and at most 1000 per second");
        }
        Ok(())
    }
}

/// What the simulator did, for its summary line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices enrolled by this run.
    pub enrolled: AtomicU64,
    /// Devices that came back from their state directory.
    pub reused: AtomicU64,
    /// Devices that could not enroll or start.
    pub failed: AtomicU64,
    /// Devices running now.
    pub running: AtomicU64,
    /// The most devices running at once.
    pub peak: AtomicU64,
    /// Readings generated.
    pub readings: AtomicU64,
    /// Updates that ended `succeeded`.
    pub succeeded: AtomicU64,
    /// Updates that ended `reverted`.
    pub reverted: AtomicU64,
    /// Updates that ended `failed`.
    pub update_failed: AtomicU64,
    /// Rollbacks that ended `rolled_back`.
    pub rolled_back: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether any device enrolled or came back yet.
    fn any_up(&self) -> bool {
        self.enrolled.load(Ordering::Relaxed) + self.reused.load(Ordering::Relaxed) > 0
    }

    /// One line of what happened so far (`summary`: the closing line, with peak figures).
    pub fn line(&self, devices: u32, elapsed: Duration, summary: bool) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (running, rss, rss_name) = if summary {
            (get(&self.peak), memory_bytes("VmHWM:"), "peak rss")
        } else {
            (get(&self.running), memory_bytes("VmRSS:"), "rss")
        };
        let per_device = rss / running.max(1);
        let secs = elapsed.as_secs_f64().round();
        let head = if summary {
            format!("simulated {devices} devices for {secs} s, {running} at once")
        } else {
            format!("{running} of {devices} devices running after {secs} s")
        };
        format!(
            "{head} ({} enrolled now, {} reused, {} failed); {} readings; updates: {} succeeded, {} reverted, {} failed, {} rolled back; {rss_name} {} MiB ({} KiB per device)",
            get(&self.enrolled),
            get(&self.reused),
            get(&self.failed),
            get(&self.readings),
            get(&self.succeeded),
            get(&self.reverted),
            get(&self.update_failed),
            get(&self.rolled_back),
            rss / (1024 * 1024),
            per_device / 1024,
        )
    }
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:`) in bytes; 0
/// where /proc is missing.
pub fn memory_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the fleet until SIGTERM or Ctrl-C; answers the summary line.
pub async fn run(options: SimulateOptions) -> Result<String> {
    options.validate()?;
    raise_fd_limit(options.devices);
    std::fs::create_dir_all(&options.root)
        .map_err(|e| Error::io("create the simulator's state directory", &options.root, e))?;
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let simulation = Arc::new(Simulation {
        fail_versions: options.fail_versions.clone(),
    });
    let options = Arc::new(options);
    let (stop_devices, stopping) = watch::channel(false);
    let stop = daemon::stop_signal()?;
    tokio::pin!(stop);
    let enrolling = Arc::new(Semaphore::new(ENROLL_CONCURRENCY));
    let mut devices = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / options.enroll_rate);
    let mut pace = tokio::time::interval(gap);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let (first_error_tx, mut first_error) = mpsc::channel::<Error>(1);
    let mut next = 0u32;
    eprintln!(
        "drover-agent simulate: {} devices in {} ({} enrollments/s)",
        options.devices,
        options.root.display(),
        options.enroll_rate
    );
    let signal = loop {
        tokio::select! {
            _ = pace.tick(), if next < options.devices => {
                let index = next;
                next += 1;
                let device = Device {
                    index,
                    state: StateDir::new(options.root.join(format!("sim-{index:05}"))),
                    options: Arc::clone(&options),
                    simulation: Arc::clone(&simulation),
                    counters: Arc::clone(&counters),
                };
                let enrolling = Arc::clone(&enrolling);
                let stopping = stopping.clone();
                let first_error = first_error_tx.clone();
                devices.spawn(async move {
                    if let Err(e) = device.live(enrolling, stopping).await {
                        Counters::add(&device.counters.failed);
                        tracing::warn!(device = index, error = %e, "simulated device stopped");
                        if device.counters.running.load(Ordering::Relaxed) == 0 {
                            let _ = first_error.try_send(e);
                        }
                    }
                });
            }
            Some(error) = first_error.recv() => {
                // Nothing runs yet and a device already failed: the flags or the server are wrong,
                // and every other device would fail the same way.
                if counters.running.load(Ordering::Relaxed) == 0 && !counters.any_up() {
                    let _ = stop_devices.send(true);
                    devices.abort_all();
                    return Err(error);
                }
            }
            _ = progress.tick() => {
                eprintln!("drover-agent simulate: {}", counters.line(options.devices, started.elapsed(), false));
            }
            signal = &mut stop => break signal,
        }
    };
    eprintln!("drover-agent simulate: {signal}; stopping the devices");
    let _ = stop_devices.send(true);
    let drained = tokio::time::timeout(STOP_TIMEOUT, async {
        while devices.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        devices.abort_all();
    }
    Ok(counters.line(options.devices, started.elapsed(), true))
}

/// One simulated device.
struct Device {
    index: u32,
    state: StateDir,
    options: Arc<SimulateOptions>,
    simulation: Arc<Simulation>,
    counters: Arc<Counters>,
}

impl Device {
    /// Enrolls (or comes back from its state directory), then runs until `stopping`.
    async fn live(
        &self,
        enrolling: Arc<Semaphore>,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<()> {
        let reused = match self.state.enrollment()? {
            Some(_) => true,
            None => {
                let _permit = enrolling
                    .acquire()
                    .await
                    .map_err(|_| Error::Runtime("the simulator is stopping".into()))?;
                let mut options = self.options.enroll.clone();
                options.hostname = format!("sim-{:05}", self.index);
                let mut pause = Duration::from_secs(1);
                loop {
                    match enroll::enroll(&self.state, &options, crate::now).await {
                        Ok(Outcome::Enrolled(_)) => break false,
                        Ok(Outcome::AlreadyEnrolled(_)) => break true,
                        // The server's enrollment rate limit, a restart or an overload: wait
                        // and try again, as an operator would.
                        Err(e)
                            if transient(&e)
                                || (self.counters.any_up()
                                    && matches!(e, Error::Unreachable { .. })) =>
                        {
                            tracing::info!(device = self.index, error = %e, "enrollment will be retried");
                            let wait = pause.mul_f64(0.5 + crate::identity::schedule::jitter());
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                _ = stopping.changed() => return Ok(()),
                            }
                            pause = (pause * 2).min(MAX_ENROLL_PAUSE);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        let enrolled = self.state.load()?;
        if enrolled.enrollment.server != self.options.enroll.server.to_string() {
            return Err(Error::State(format!(
                "{} is enrolled with {}, not {}; use another --state-dir",
                self.state.root().display(),
                enrolled.enrollment.server,
                self.options.enroll.server
            )));
        }
        Counters::add(if reused {
            &self.counters.reused
        } else {
            &self.counters.enrolled
        });
        let server = ServerUrl::parse(&enrolled.enrollment.server)
            .map_err(|e| Error::State(format!("enrollment server {e}")))?;
        let spool_dir = self.state.file(SPOOL_DIR);
        let epoch = daemon::draw_epoch();
        let spool =
            tokio::task::spawn_blocking(move || Spool::open(&spool_dir, SPOOL_BYTES, epoch))
                .await
                .map_err(|e| Error::Runtime(format!("cannot open the spool: {e}")))?
                .map_err(|e| Error::io("open the spool", &self.state.file(SPOOL_DIR), e))?
                .without_fsync();
        let spool = Arc::new(Mutex::new(spool));
        let shared = SharedState::default();
        let vitals = Arc::new(Mutex::new(Vitals::new(self.index, self.options.spread)));
        let spooled = Arc::new(Notify::new());
        let (commands_in, commands) = mpsc::channel(COMMAND_QUEUE);
        let config = AgentConfig {
            heartbeat_s: self.options.heartbeat.as_secs(),
            ..AgentConfig::default()
        };
        let health = {
            let vitals = Arc::clone(&vitals);
            HealthSource::Simulated(Arc::new(move |ts| {
                vitals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .health(ts)
            }))
        };
        let publisher = Publisher::new(
            PublisherConfig {
                state: self.state.clone(),
                device_id: enrolled.enrollment.device_id.clone(),
                mqtt_url: enrolled.enrollment.mqtt_url.clone(),
                topic_prefix: enrolled.enrollment.mqtt_topic_prefix.clone(),
                heartbeat: self.options.heartbeat,
                shared: shared.clone(),
                health,
            },
            Arc::clone(&spool),
            Arc::clone(&spooled),
            commands_in,
        );
        let (stop_publisher, publisher_stops) = watch::channel(false);
        let publishing = tokio::spawn(publisher.run(publisher_stops));
        let keeper = Keeper::new(
            self.state.clone(),
            server,
            enrolled.key,
            enrolled.certificate,
            enrolled.ca_der,
        );
        let outbox = Arc::new(Notify::new());
        let engine = Engine::new(
            self.state.clone(),
            config,
            Some(shared.clone()),
            Arc::clone(&outbox),
            true,
        )
        .simulated(Arc::clone(&self.simulation));
        let (orders_in, orders) = mpsc::channel(COMMAND_QUEUE);
        let now = self.counters.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters.peak.fetch_max(now, Ordering::Relaxed);
        let counted = Mutex::new(shared.lock().update_state);
        let readings = self.readings(&spool, &spooled, &shared, &vitals, &counted);
        tokio::select! {
            () = keeper.keep_alive(crate::now) => {}
            () = daemon::serve_commands(self.state.clone(), commands, orders_in) => {}
            () = update::serve(engine, orders) => {}
            () = update::send_outbox(self.state.clone(), outbox) => {}
            () = readings => {}
            _ = stopping.changed() => {}
        }
        // An update that ended since the last reading's tick is counted too.
        self.count_update_change(&shared, &counted);
        self.counters.running.fetch_sub(1, Ordering::Relaxed);
        let _ = stop_publisher.send(true);
        let _ = publishing.await;
        Ok(())
    }

    /// Generates readings at the configured rate into the spool, and counts finished updates.
    async fn readings(
        &self,
        spool: &Arc<Mutex<Spool>>,
        spooled: &Notify,
        shared: &SharedState,
        vitals: &Mutex<Vitals>,
        counted: &Mutex<Option<UpdateState>>,
    ) {
        // Above TICK_HZ a tick generates several readings, a period apart in time, and spools
        // them in one append, as a program that writes a few lines at once does: a thousand
        // devices at 100 readings/s would otherwise cost the load generator 100,000 timer
        // wakeups and appends a second.
        let per_tick = (self.options.rate_hz / TICK_HZ).ceil().max(1.0);
        let period = Duration::from_secs_f64(1.0 / self.options.rate_hz);
        let tick_period = period.mul_f64(per_tick);
        let per_tick = per_tick as u64;
        let period_ms = period.as_secs_f64() * 1000.0;
        // Devices started together do not report in lockstep.
        let phase = tick_period.mul_f64(Rng::seeded(u64::from(self.index)).unit());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, tick_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(per_tick as usize);
        loop {
            tick.tick().await;
            self.count_update_change(shared, counted);
            let versions = shared.lock().versions.clone();
            let now = crate::now().unix_millis();
            {
                let mut vitals = vitals.lock().unwrap_or_else(PoisonError::into_inner);
                for i in (0..per_tick).rev() {
                    batch.push(NewReading {
                        ts: now - (i as f64 * period_ms) as i64,
                        metrics: vitals.reading(&self.options, &versions),
                        versions: BTreeMap::new(),
                    });
                }
            }
            let appended = spool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(&batch, &versions);
            match appended {
                Ok(seqs) => {
                    self.counters
                        .readings
                        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    spooled.notify_one();
                }
                Err(e) => tracing::warn!(device = self.index, error = %e, "cannot spool readings"),
            }
            batch.clear();
        }
    }

    /// Counts the update state if it changed since it was last counted.
    fn count_update_change(&self, shared: &SharedState, counted: &Mutex<Option<UpdateState>>) {
        let state = shared.lock().update_state;
        let mut last = counted.lock().unwrap_or_else(PoisonError::into_inner);
        if state != *last {
            self.count_update(state);
            *last = state;
        }
    }

    fn count_update(&self, state: Option<UpdateState>) {
        let counter = match state {
            Some(UpdateState::Succeeded) => &self.counters.succeeded,
            Some(UpdateState::Reverted) => &self.counters.reverted,
            Some(UpdateState::Failed) => &self.counters.update_failed,
            Some(UpdateState::RolledBack) => &self.counters.rolled_back,
            _ => return,
        };
        Counters::add(counter);
    }
}

/// Whether an enrollment failure is worth retrying: the server throttled or was overloaded (an
/// unreachable server too, once it was reached by another device). A wrong pin, token or device
/// type is not.
fn transient(e: &Error) -> bool {
    matches!(e, Error::Refused { status, .. } if *status == 429 || *status >= 500)
}

/// A device's simulated body: typical values drawn once per device, noise drawn per reading.
#[derive(Debug)]
struct Vitals {
    rng: Rng,
    base: [f64; 4],
    last: [f64; 4],
    born: Instant,
    mem_total: u64,
}

impl Vitals {
    fn new(index: u32, spread: f64) -> Vitals {
        let mut rng = Rng::seeded(u64::from(index) ^ 0x5eed_d00d);
        // A device's place in each range; `spread` pulls every device towards the middle.
        let mut at = || 0.5 + spread * (rng.unit() - 0.5);
        let base = [
            42.0 + 8.0 * at(),
            20.0 + 25.0 * at(),
            30.0 + 20.0 * at(),
            0.88 + 0.08 * at(),
        ];
        Vitals {
            rng,
            base,
            last: base,
            born: Instant::now(),
            mem_total: [1u64, 2, 4, 8][index as usize % 4] << 30,
        }
    }

    /// The next reading: typical value, noise, now and then an anomaly, and the degradations of
    /// what is installed.
    fn reading(
        &mut self,
        options: &SimulateOptions,
        versions: &BTreeMap<String, Version>,
    ) -> BTreeMap<String, f64> {
        let mut values = self.base;
        for v in &mut values {
            *v *= 1.0 + options.noise * self.rng.normal();
        }
        if self.rng.unit() < options.anomaly_rate {
            // A hot board, a stalled model or a confused one.
            match self.rng.below(3) {
                0 => values[0] += 25.0,
                1 => values[2] *= 4.0,
                _ => values[3] *= 0.5,
            }
        }
        for d in &options.degrade {
            if versions.values().any(|v| *v == d.version) {
                let i = Metric::ALL.iter().position(|m| *m == d.metric).unwrap_or(0);
                values[i] *= d.factor;
            }
        }
        values[1] = values[1].clamp(0.0, 100.0);
        values[3] = values[3].clamp(0.0, 1.0);
        self.last = values;
        Metric::ALL
            .iter()
            .zip(values)
            .map(|(m, v)| (m.name().to_owned(), (v * 1000.0).round() / 1000.0))
            .collect()
    }

    fn health(&self, ts: i64) -> Health {
        Health {
            ts,
            uptime_s: self.born.elapsed().as_secs(),
            cpu_pct: self.last[1],
            mem_used: (self.mem_total as f64 * (0.3 + self.last[1] / 400.0)) as u64,
            mem_total: self.mem_total,
            disk_free: 12 << 30,
            temp_c: Some(self.last[0]),
            installed: Vec::new(),
            spool_depth: 0,
            spool_dropped: 0,
            update_state: None,
        }
    }
}

/// A small deterministic generator (splitmix64): simulated noise needs no crate.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ crate::identity::schedule::jitter().to_bits())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// About normal (mean 0, deviation 1): the sum of twelve uniforms, less six.
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

/// Raises the open-file limit toward what `devices` need; warns when it cannot.
fn raise_fd_limit(devices: u32) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = u64::from(devices) * FDS_PER_DEVICE + 256;
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let raised = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed.max(now.current.unwrap_or(0))),
            maximum: Some(hard.max(needed)),
        },
    );
    if raised.is_err() {
        let soft = needed.min(hard);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft.max(now.current.unwrap_or(0))),
                maximum: now.maximum,
            },
        );
        if hard < needed {
            eprintln!(
                "drover-agent simulate: the open-file limit ({hard}) is below what {devices} devices need ({needed}); raise it (ulimit -n, or LimitNOFILE=) or some devices will fail to connect"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrade_flags_parse_and_bad_ones_name_the_problem() {
        let d = parse_degrade("2.0.0:inference_ms=1.5, 3.1.0:confidence=0.5").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].metric, Metric::InferenceMs);
        assert_eq!(d[0].factor, 1.5);
        assert_eq!(d[1].version.to_string(), "3.1.0");
        assert!(parse_degrade("").unwrap().is_empty());
        for (bad, says) in [
            ("2.0.0", "VERSION:METRIC=FACTOR"),
            ("2.0.0:inference_ms", "VERSION:METRIC=FACTOR"),
            ("2.0:x=1", "2.0"),
            ("2.0.0:humidity=2", "unknown metric `humidity`"),
            ("2.0.0:temp_c=hot", "must be a number"),
            ("2.0.0:temp_c=-1", "0 or more"),
            ("2.0.0:temp_c=inf", "finite"),
        ] {
            let e = parse_degrade(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn fail_versions_parse_and_a_bad_one_is_named() {
        let v = parse_fail_versions("1.2.3,2.0.0-rc.1").unwrap();
        assert_eq!(v.len(), 2);
        let e = parse_fail_versions("1.2.3,banana").unwrap_err();
        assert!(e.contains("`banana`"), "{e}");
    }

    #[test]
    fn readings_have_the_four_metrics_and_a_degraded_version_shifts_one() {
        let mut options = sample_options();
        options.degrade = parse_degrade("2.0.0:inference_ms=2").unwrap();
        let mut vitals = Vitals::new(7, 1.0);
        let plain = vitals.reading(&options, &BTreeMap::new());
        let names: Vec<&str> = plain.keys().map(String::as_str).collect();
        assert_eq!(names, ["confidence", "cpu_pct", "inference_ms", "temp_c"]);
        let on_v2 = BTreeMap::from([("detector".to_owned(), Version::parse("2.0.0").unwrap())]);
        let degraded = vitals.reading(&options, &on_v2);
        let ratio = degraded["inference_ms"] / plain["inference_ms"];
        assert!((ratio - 2.0).abs() < 0.001, "{ratio}");
        assert_eq!(degraded["temp_c"], plain["temp_c"]);
        assert!((0.0..=1.0).contains(&plain["confidence"]));
    }

    #[test]
    fn noise_spreads_readings_and_anomalies_happen_at_their_rate() {
        let mut rng = Rng::seeded(1);
        let samples: Vec<f64> = (0..10_000).map(|_| rng.normal()).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / samples.len() as f64;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.1, "{mean} {var}");

        let mut options = sample_options();
        options.anomaly_rate = 0.0;
        let mut vitals = Vitals::new(3, 1.0);
        let quiet = vitals.reading(&options, &BTreeMap::new());
        assert_eq!(
            quiet,
            vitals.reading(&options, &BTreeMap::new()),
            "no noise, no change"
        );
        options.anomaly_rate = 1.0;
        for _ in 0..20 {
            let odd = vitals.reading(&options, &BTreeMap::new());
            let differing = odd.iter().filter(|(k, v)| quiet[*k] != **v).count();
            assert_eq!(differing, 1, "an anomaly moves one metric: {odd:?}");
        }
        options.anomaly_rate = 0.0;
        options.noise = 0.05;
        let noisy: Vec<f64> = (0..200)
            .map(|_| vitals.reading(&options, &BTreeMap::new())["temp_c"])
            .collect();
        let spread = noisy.iter().cloned().fold(f64::MIN, f64::max)
            - noisy.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 1.0 && spread < 0.5 * quiet["temp_c"], "{spread}");
    }

    fn sample_options() -> SimulateOptions {
        SimulateOptions {
            enroll: EnrollOptions {
                server: ServerUrl::parse("https://127.0.0.1:1").unwrap(),
                token: "t".into(),
                ca_hash: enroll::CaHash::of_der(b"x"),
                device_type: "rpi4".into(),
                tags: BTreeMap::new(),
                hostname: "h".into(),
            },
            devices: 10,
            root: PathBuf::from("/tmp"),
            rate_hz: 1.0,
            noise: 0.0,
            spread: 1.0,
            anomaly_rate: 0.0,
            heartbeat: Duration::from_secs(30),
            enroll_rate: 10.0,
            fail_versions: Vec::new(),
            degrade: Vec::new(),
        }
    }

    #[test]
    fn bad_numbers_are_usage_errors_naming_the_flag() {
        let good = sample_options();
        assert!(good.validate().is_ok());
        type Spoil = fn(&mut SimulateOptions);
        let cases: [(Spoil, &str); 6] = [
            (|o| o.devices = 0, "--devices"),
            (|o| o.rate_hz = 0.0, "--rate"),
            (|o| o.noise = f64::NAN, "--noise"),
            (|o| o.spread = 1.5, "--spread"),
            (|o| o.anomaly_rate = 2.0, "--anomaly-rate"),
            (|o| o.heartbeat = Duration::ZERO, "--heartbeat"),
        ];
        for (spoil, flag) in cases {
            let mut o = good.clone();
            spoil(&mut o);
            let e = o.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
    }
}
