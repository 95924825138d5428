//! The simulated fleet: one task and one real rumqttc session (TLS with the
//! device's own certificate) per device. A device subscribes to its
//! `commands` and publishes a retained `state` at every connection, and
//! reconnects by itself after a jittered 0.5–3 s pause, as an agent does.
//! First connections are bounded by a handshake semaphore; every task ends
//! at shutdown or at the fleet's deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_proto::{Presence, TopicKind, topic};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Packet,
    QoS, TlsConfiguration, Transport,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::enroll::Device;

/// Failed first attempts after which a device gives up (it never connected).
const FIRST_ATTEMPTS: u32 = 3;
/// rumqttc's limit for TCP + TLS + CONNECT/CONNACK, seconds.
const CONNECT_TIMEOUT_S: u64 = 10;
/// Reconnect pause range, milliseconds.
const RECONNECT_MS: (u64, u64) = (500, 3000);

/// How the devices connect.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The MQTT gateway.
    pub mqtt: SocketAddr,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First connections in flight at once.
    pub handshakes: usize,
    /// No device task outlives this.
    pub deadline: Instant,
}

/// What one device saw.
#[derive(Debug, Default)]
pub struct DeviceStats {
    connected: AtomicBool,
    ever_connected: AtomicBool,
    gave_up: AtomicBool,
    failures: AtomicU32,
    /// When the first CONNACK after the storm began arrived (ms since the fleet began; 0 = not yet).
    reconnected_at_ms: AtomicU64,
    /// Connection attempts that failed while the restarted server was listening.
    storm_retries: AtomicU32,
}

impl DeviceStats {
    /// Connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The first CONNACK after the storm began (ms since the fleet began).
    pub fn reconnected_at_ms(&self) -> Option<u64> {
        Some(self.reconnected_at_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Failed attempts against the restarted server.
    pub fn storm_retries(&self) -> u32 {
        self.storm_retries.load(Ordering::Relaxed)
    }
}

/// Which part of the run an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting in steps.
    Steps,
    /// The reconnect storm.
    Storm,
}

/// Counters shared by every device task.
pub struct Shared {
    epoch: Instant,
    settings: Settings,
    handshakes: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    connected: AtomicUsize,
    gave_up: AtomicUsize,
    subscribed: AtomicUsize,
    /// ms since epoch when the storm began (0 = not in a storm).
    storm_started_ms: AtomicU64,
    /// ms since epoch when the restarted server was listening (0 = not yet).
    ready_ms: AtomicU64,
    storm_drops: AtomicU64,
    errors: Mutex<BTreeMap<(Phase, String), u64>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        // Never 0, so that 0 can mean "not yet".
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    fn phase(&self) -> Phase {
        if self.storm_started_ms.load(Ordering::Relaxed) > 0 {
            Phase::Storm
        } else {
            Phase::Steps
        }
    }

    fn record_error(&self, e: &ConnectionError) {
        let message: String = crate::enroll::error_chain(e).chars().take(160).collect();
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry((self.phase(), message)).or_insert(0) += 1;
    }
}

/// The devices that are running.
pub struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    stats: Vec<Arc<DeviceStats>>,
    tasks: tokio::task::JoinSet<()>,
    seed: u64,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(settings: Settings) -> Fleet {
        let (stop, shutdown) = watch::channel(false);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        Fleet {
            shared: Arc::new(Shared {
                epoch: Instant::now(),
                settings,
                handshakes: Arc::new(Semaphore::new(settings.handshakes.max(1))),
                shutdown,
                connected: AtomicUsize::new(0),
                gave_up: AtomicUsize::new(0),
                subscribed: AtomicUsize::new(0),
                storm_started_ms: AtomicU64::new(0),
                ready_ms: AtomicU64::new(0),
                storm_drops: AtomicU64::new(0),
                errors: Mutex::new(BTreeMap::new()),
            }),
            stop,
            stats: Vec::new(),
            tasks: tokio::task::JoinSet::new(),
            seed,
        }
    }

    /// Starts a session task for each device.
    pub fn spawn(&mut self, devices: impl IntoIterator<Item = Device>) {
        for device in devices {
            let stats = Arc::new(DeviceStats::default());
            self.stats.push(stats.clone());
            let seed = splitmix(self.seed ^ self.stats.len() as u64);
            self.tasks
                .spawn(run_device(device, stats, self.shared.clone(), seed));
        }
    }

    /// Devices started so far.
    pub fn started(&self) -> usize {
        self.stats.len()
    }

    /// Devices connected now.
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Devices that never connected and stopped trying.
    pub fn gave_up(&self) -> usize {
        self.shared.gave_up.load(Ordering::Relaxed)
    }

    /// SUBACKs received (one per connection).
    pub fn subscribed(&self) -> usize {
        self.shared.subscribed.load(Ordering::Relaxed)
    }

    /// Each device's counters, in start order.
    pub fn stats(&self) -> &[Arc<DeviceStats>] {
        &self.stats
    }

    /// ms since the fleet began.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    /// Marks the start of the reconnect storm (call before stopping the server).
    pub fn storm_begins(&self) {
        self.shared
            .storm_started_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
    }

    /// Marks the moment the restarted server is listening; answers that time (ms).
    pub fn server_ready(&self) -> u64 {
        let now = self.shared.now_ms();
        self.shared.ready_ms.store(now, Ordering::Relaxed);
        now
    }

    /// Sessions lost again after reconnecting during the storm.
    pub fn storm_drops(&self) -> u64 {
        self.shared.storm_drops.load(Ordering::Relaxed)
    }

    /// Connection errors of a phase, by message, most frequent first.
    pub fn errors(&self, phase: Phase) -> Vec<(String, u64)> {
        let errors = self.shared.errors.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = errors
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .map(|((_, m), n)| (m.clone(), *n))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Waits until every started device has connected or given up, or until `deadline`.
    /// Answers whether they all settled.
    pub async fn wait_settled(&self, deadline: Instant) -> bool {
        let mut last_report = Instant::now();
        loop {
            let done = self.connected() + self.gave_up();
            if done >= self.started() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "  {} of {} connected, {} gave up",
                    self.connected(),
                    self.started(),
                    self.gave_up()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every device task and waits for them (bounded).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}

fn options(device: &Device, settings: &Settings) -> MqttOptions {
    let state = topic(&device.prefix, TopicKind::State);
    let offline = presence(false);
    let mut options = MqttOptions::new(
        device.id.as_str(),
        settings.mqtt.ip().to_string(),
        settings.mqtt.port(),
    );
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(true)
        .set_last_will(LastWill::new(state, offline, QoS::AtLeastOnce, true))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            device.tls.clone(),
        )));
    options
}

fn presence(online: bool) -> Vec<u8> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    serde_json::to_vec(&Presence { online, ts }).unwrap_or_default()
}

fn event_loop(device: &Device, settings: &Settings) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options(device, settings), 8);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(network);
    (client, eventloop)
}

async fn handshake_permit(shared: &Shared) -> Option<OwnedSemaphorePermit> {
    shared.handshakes.clone().acquire_owned().await.ok()
}

async fn run_device(device: Device, stats: Arc<DeviceStats>, shared: Arc<Shared>, mut seed: u64) {
    let settings = shared.settings;
    let deadline = tokio::time::Instant::from_std(settings.deadline);
    let mut shutdown = shared.shutdown.clone();
    let commands = topic(&device.prefix, TopicKind::Commands);
    let state = topic(&device.prefix, TopicKind::State);
    let (client, mut eventloop) = event_loop(&device, &settings);
    let mut permit = tokio::select! {
        p = handshake_permit(&shared) => p,
        _ = shutdown.changed() => return,
    };
    loop {
        let polled = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                drop(permit.take());
                let now = shared.now_ms();
                stats.connected.store(true, Ordering::Relaxed);
                stats.ever_connected.store(true, Ordering::Relaxed);
                shared.connected.fetch_add(1, Ordering::Relaxed);
                let storm = shared.storm_started_ms.load(Ordering::Relaxed);
                if storm > 0 && now >= storm {
                    let _ = stats.reconnected_at_ms.compare_exchange(
                        0,
                        now,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                // Clean sessions: an agent subscribes and announces itself at every connection.
                let _ = client.try_subscribe(commands.as_str(), QoS::AtLeastOnce);
                let _ = client.try_publish(state.as_str(), QoS::AtLeastOnce, true, presence(true));
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                shared.subscribed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                drop(permit.take());
                shared.record_error(&e);
                let failures = stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if stats.connected.swap(false, Ordering::Relaxed) {
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                    if stats.reconnected_at_ms().is_some() {
                        shared.storm_drops.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let ready = shared.ready_ms.load(Ordering::Relaxed);
                    if ready > 0 && shared.now_ms() >= ready {
                        stats.storm_retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let ever = stats.ever_connected.load(Ordering::Relaxed);
                if !ever && failures >= FIRST_ATTEMPTS {
                    stats.gave_up.store(true, Ordering::Relaxed);
                    shared.gave_up.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                seed = splitmix(seed);
                let pause = RECONNECT_MS.0 + seed % (RECONNECT_MS.1 - RECONNECT_MS.0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = shutdown.changed() => break,
                }
                if !ever {
                    permit = tokio::select! {
                        p = handshake_permit(&shared) => p,
                        _ = shutdown.changed() => break,
                    };
                }
            }
        }
    }
    if stats.connected.swap(false, Ordering::Relaxed) {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connects one device and measures how long until its CONNACK (retrying
/// until `within` passes); answers the time and the failed attempts, and
/// disconnects.
pub async fn time_to_connect(
    device: &Device,
    settings: &Settings,
    within: Duration,
) -> Result<(Duration, u32), String> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let (client, mut eventloop) = event_loop(device, settings);
    let mut failures = 0u32;
    let mut last_error = String::from("no attempt finished");
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let took = started.elapsed();
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                return Ok((took, failures));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failures += 1;
                last_error = crate::enroll::error_chain(&e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => {
                return Err(format!(
                    "no CONNACK within {} s after {failures} failed attempts (last: {last_error})",
                    within.as_secs()
                ));
            }
        }
    }
}

/// A step of the SplitMix64 generator: cheap, seedable jitter.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut seed = 42;
        let mut seen = [false; 5];
        for _ in 0..1000 {
            seed = splitmix(seed);
            let pause = RECONNECT_MS.0 + seed % (RECONNECT_MS.1 - RECONNECT_MS.0);
            assert!((RECONNECT_MS.0..RECONNECT_MS.1).contains(&pause));
            seen[((pause - RECONNECT_MS.0) / 500) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
    }
}
