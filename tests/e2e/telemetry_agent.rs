//! Issue 6 with real agents: every reading an agent's intake acknowledged is stored exactly
//! once, whether the server stops meanwhile, the agent is cut off from its broker, the agent is
//! killed with SIGKILL over a full spool (beyond its bound the oldest readings are dropped,
//! counted and reported in health), or the agent starts its sequence numbers again. Each
//! scenario runs on the embedded broker and on Mosquitto.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::{TestApp, agent, spawn_app, spawn_app_on_mosquitto, wait_until};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::process::Child;
use tokio::sync::watch;

/// The metric every reading here carries; its value names the reading.
const METRIC: &str = "n";
/// How long stored readings may take to appear.
const ARRIVAL: Duration = Duration::from_secs(30);
/// The smallest spool an agent accepts (`spool_max_bytes`).
const SMALL_SPOOL: u64 = 65_536;

/// An enrolled agent's state directory and device id.
struct Agent {
    state: PathBuf,
    id: String,
}

/// Enrolls a real agent with its heartbeat at one second and, when given, a spool bound.
async fn enroll(app: &TestApp, admin: &str, spool_max_bytes: Option<u64>) -> Agent {
    let token = app.enrollment_token(admin, json!({"uses": 1})).await;
    let state = app.scratch().join("agent");
    let out = agent(&state)
        .args([
            "enroll",
            "--server",
            &app.device_base,
            "--token",
            token["token"].as_str().expect("token"),
            "--ca-hash",
            &app.ca_hash,
        ])
        .output()
        .await
        .expect("run drover-agent enroll");
    assert!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = state.join("agent.toml");
    let mut toml = std::fs::read_to_string(&path)
        .expect("agent.toml")
        .replace("heartbeat_s = 30", "heartbeat_s = 1");
    if let Some(bytes) = spool_max_bytes {
        toml = toml.replace(
            "spool_max_bytes = 67108864",
            &format!("spool_max_bytes = {bytes}"),
        );
    }
    std::fs::write(&path, toml).expect("write agent.toml");
    let id = status(&state).await["device_id"]
        .as_str()
        .expect("device_id")
        .to_string();
    Agent { state, id }
}

/// `drover-agent status --json`.
async fn status(state: &Path) -> Value {
    let out = agent(state)
        .args(["status", "--json"])
        .output()
        .await
        .expect("run drover-agent status");
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

async fn spool_depth(state: &Path) -> u64 {
    status(state).await["spool_depth"]
        .as_u64()
        .expect("spool_depth")
}

/// Starts `drover-agent run` and waits until its intake answers (a socket left by a killed
/// agent exists but refuses connections).
async fn run(state: &Path) -> Child {
    let daemon = agent(state).arg("run").spawn().expect("run drover-agent");
    let socket = state.join("intake.sock");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            UnixStream::connect(&socket).await.is_ok()
        })
        .await,
        "the agent's intake answers"
    );
    daemon
}

/// SIGKILL: no goodbye, nothing flushed beyond what the agent already made durable.
async fn kill_hard(mut daemon: Child) {
    daemon.start_kill().expect("SIGKILL the agent");
    daemon.wait().await.expect("the agent ends");
}

/// A device program's connection to the agent's intake socket.
struct Intake {
    stream: BufReader<UnixStream>,
}

impl Intake {
    async fn connect(state: &Path) -> Intake {
        let stream = UnixStream::connect(state.join("intake.sock"))
            .await
            .expect("connect to intake.sock");
        Intake {
            stream: BufReader::new(stream),
        }
    }

    /// Hands over one reading and answers the sequence number the agent acknowledged it with.
    async fn send(&mut self, value: f64) -> u64 {
        let line = format!("{}\n", json!({"metrics": {METRIC: value}}));
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .expect("write to the intake");
        let mut answer = String::new();
        self.stream
            .read_line(&mut answer)
            .await
            .expect("the intake answers");
        let answer: Value = serde_json::from_str(&answer).expect("the answer is JSON");
        assert_eq!(
            answer["ok"], true,
            "the intake acknowledges {value}: {answer}"
        );
        answer["seq"].as_u64().expect("seq")
    }

    /// Hands over each value in turn; answers their sequence numbers.
    async fn send_all(&mut self, values: impl IntoIterator<Item = f64>) -> Vec<u64> {
        let mut seqs = Vec::new();
        for value in values {
            seqs.push(self.send(value).await);
        }
        seqs
    }
}

/// Every stored value of the metric, sorted.
async fn stored(app: &TestApp, admin: &str, device: &str) -> Vec<f64> {
    let res = app
        .get(
            admin,
            &format!("/api/v1/devices/{device}/telemetry?metric={METRIC}&from=0"),
        )
        .await;
    assert_eq!(res.status(), 200, "telemetry query");
    let body: Value = res.json().await.expect("telemetry JSON");
    let mut values: Vec<f64> = body["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().expect("value"))
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Waits until as many readings as `expected` are stored, then asserts they are exactly those
/// (each value once: nothing lost, nothing twice), and still exactly those a moment later, when
/// a late redelivery would have landed.
async fn assert_stored_exactly(app: &TestApp, admin: &str, device: &str, expected: &[f64]) {
    let arrived = wait_until(ARRIVAL, || async {
        stored(app, admin, device).await.len() >= expected.len()
    })
    .await;
    let got = stored(app, admin, device).await;
    assert!(
        arrived,
        "{} of {} readings stored; missing: {:?}",
        got.len(),
        expected.len(),
        missing(expected, &got)
    );
    assert_eq!(got, expected, "each acknowledged reading stored once");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stored(app, admin, device).await,
        expected,
        "no reading stored twice later"
    );
}

fn missing(expected: &[f64], got: &[f64]) -> Vec<f64> {
    expected
        .iter()
        .filter(|v| !got.contains(v))
        .take(20)
        .copied()
        .collect()
}

fn values(range: std::ops::Range<u32>) -> Vec<f64> {
    range.map(f64::from).collect()
}

/// A TCP relay between an agent and its broker: the network, which a test cuts and restores.
/// The agent's TLS passes through untouched.
struct Relay {
    port: u16,
    online: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay that holds what the broker sends for `delay` (when not zero) before passing it
    /// on: a slow link, where acknowledgements take that long to come back.
    async fn start(upstream: SocketAddr, delay: Duration) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let (online, watch) = watch::channel(true);
        let task = tokio::spawn(async move {
            // Dropping the set (the task aborted) ends every relayed connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut device, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                if !*watch.borrow() {
                    continue;
                }
                let mut watch = watch.clone();
                connections.spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    if delay.is_zero() {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut device, &mut broker) => {}
                            _ = watch.wait_for(|online| !online) => {}
                        }
                        return;
                    }
                    let (mut from_device, mut to_device) = device.into_split();
                    let (mut from_broker, mut to_broker) = broker.into_split();
                    let up = tokio::io::copy(&mut from_device, &mut to_broker);
                    let down = async {
                        // Each chunk is sent on its own after the delay, in order.
                        let (chunks, mut arriving) = tokio::sync::mpsc::unbounded_channel();
                        let reading = async {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                match tokio::io::AsyncReadExt::read(&mut from_broker, &mut buf)
                                    .await
                                {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        let due = tokio::time::Instant::now() + delay;
                                        if chunks.send((due, buf[..n].to_vec())).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            drop(chunks);
                        };
                        let writing = async {
                            while let Some((due, chunk)) = arriving.recv().await {
                                tokio::time::sleep_until(due).await;
                                if to_device.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        };
                        tokio::join!(reading, writing);
                    };
                    tokio::select! {
                        _ = up => {}
                        () = down => {}
                        _ = watch.wait_for(|online| !online) => {}
                    }
                });
            }
        });
        Relay { port, online, task }
    }

    /// Closes every relayed connection and refuses new ones.
    fn cut(&self) {
        self.online.send_replace(false);
    }

    fn restore(&self) {
        self.online.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Points an enrolled agent's MQTT address at a relay to the broker it was given.
async fn behind_relay(agent: &Agent) -> Relay {
    behind_slow_relay(agent, Duration::ZERO).await
}

/// As [`behind_relay`], the broker's answers taking `delay` to arrive.
async fn behind_slow_relay(agent: &Agent, delay: Duration) -> Relay {
    let path = agent.state.join("enrollment.json");
    let mut enrollment: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("enrollment.json")).expect("JSON");
    let url = enrollment["mqtt_url"]
        .as_str()
        .expect("mqtt_url")
        .to_string();
    let (host, port) = url
        .strip_prefix("mqtts://")
        .and_then(|rest| rest.rsplit_once(':'))
        .expect("mqtts://HOST:PORT");
    let port: u16 = port.parse().expect("port");
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], port)), delay).await;
    enrollment["mqtt_url"] = json!(format!("mqtts://{host}:{}", relay.port));
    std::fs::write(&path, enrollment.to_string()).expect("write enrollment.json");
    relay
}

// 1. Readings handed over while the server is down arrive once it is back.

mod readings_sent_while_the_server_is_down_arrive_after_it_returns {
    use super::*;

    async fn scenario(app: TestApp) {
        const BEFORE: u32 = 20;
        const DOWN: u32 = 300;
        let admin = app.admin_token().await;
        let a = enroll(&app, &admin, None).await;
        let daemon = run(&a.state).await;
        let mut intake = Intake::connect(&a.state).await;
        intake.send_all(values(0..BEFORE)).await;
        assert_stored_exactly(&app, &admin, &a.id, &values(0..BEFORE)).await;

        let external_broker = app.broker.is_some();
        let stopped = app.shut_down().await;
        let seqs = intake.send_all(values(BEFORE..BEFORE + DOWN)).await;
        assert_eq!(seqs.len(), DOWN as usize, "each reading acknowledged");
        if external_broker {
            // The agent stays connected to Mosquitto, which takes the readings and keeps them for
            // the server's persistent session.
            assert!(
                wait_until(Duration::from_secs(15), || async {
                    spool_depth(&a.state).await == 0
                })
                .await,
                "Mosquitto acknowledged every reading while the server was down: {} still spooled",
                spool_depth(&a.state).await
            );
        } else {
            // The embedded broker went with the server: everything waits in the agent's spool.
            assert_eq!(spool_depth(&a.state).await, u64::from(DOWN));
        }

        let app = stopped.start_on_same_ports().await;
        let admin = app.admin_token().await;
        assert_stored_exactly(&app, &admin, &a.id, &values(0..BEFORE + DOWN)).await;
        assert_eq!(spool_depth(&a.state).await, 0, "the spool is empty again");
        drop(daemon);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_embedded_broker() {
        scenario(spawn_app().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_mosquitto() {
        scenario(spawn_app_on_mosquitto().await).await;
    }
}

// 1b. Readings handed over while the agent is cut off from its broker arrive once it is back.

mod readings_spooled_while_the_agent_is_offline_arrive_when_it_returns {
    use super::*;

    async fn scenario(app: TestApp) {
        const BEFORE: u32 = 20;
        const OFFLINE: u32 = 300;
        let admin = app.admin_token().await;
        let a = enroll(&app, &admin, None).await;
        let network = behind_relay(&a).await;
        let daemon = run(&a.state).await;
        let mut intake = Intake::connect(&a.state).await;
        intake.send_all(values(0..BEFORE)).await;
        assert_stored_exactly(&app, &admin, &a.id, &values(0..BEFORE)).await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                spool_depth(&a.state).await == 0
            })
            .await,
            "the broker acknowledged the first readings"
        );

        network.cut();
        intake.send_all(values(BEFORE..BEFORE + OFFLINE)).await;
        assert_eq!(
            spool_depth(&a.state).await,
            u64::from(OFFLINE),
            "every reading waits in the spool"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            stored(&app, &admin, &a.id).await,
            values(0..BEFORE),
            "nothing arrives while the agent is offline"
        );

        network.restore();
        assert_stored_exactly(&app, &admin, &a.id, &values(0..BEFORE + OFFLINE)).await;
        drop(daemon);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_embedded_broker() {
        scenario(spawn_app().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_mosquitto() {
        scenario(spawn_app_on_mosquitto().await).await;
    }
}

// 1c. On a slow link, readings handed over while a batch awaits its acknowledgement go together
// in the next batch, not each in a message of its own.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_arriving_while_a_batch_is_unacknowledged_wait_and_go_together() {
    const BURST: u32 = 40;
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let a = enroll(&app, &admin, None).await;
    let _network = behind_slow_relay(&a, Duration::from_millis(400)).await;
    let daemon = run(&a.state).await;
    let mut intake = Intake::connect(&a.state).await;
    intake.send(0.0).await;
    assert_stored_exactly(&app, &admin, &a.id, &[0.0]).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            spool_depth(&a.state).await == 0
        })
        .await,
        "the first reading was acknowledged"
    );
    let before = app.counter("drover_telemetry_messages_total").await;

    // One at a time, 10 ms apart: all of them arrive within one round trip of the first.
    for n in 1..=BURST {
        intake.send(f64::from(n)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_stored_exactly(&app, &admin, &a.id, &values(0..BURST + 1)).await;
    let messages = app.counter("drover_telemetry_messages_total").await - before;
    // The first goes at once; the others wait for its acknowledgement (400 ms) and go in one
    // or two batches. Sending each as it came, up to 8 in flight, took 9 or more.
    assert!(
        (1..=4).contains(&messages),
        "{BURST} readings went in {messages} messages"
    );
    drop(daemon);
}

// 2. SIGKILL over a full spool loses nothing the intake acknowledged; beyond the bound the
// oldest readings are dropped, counted and reported.

/// Bytes of the spool's segment files (README "Spool": the bound counts these).
fn segment_bytes(state: &Path) -> u64 {
    std::fs::read_dir(state.join("spool"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Readings the spool has dropped over its lifetime (`spool/state.json`, README "Spool").
fn dropped_on_disk(state: &Path) -> u64 {
    std::fs::read(state.join("spool/state.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| v["dropped"].as_u64())
        .unwrap_or(0)
}

fn digits(n: u64) -> u64 {
    n.to_string().len() as u64
}

mod a_killed_agent_with_a_full_spool_loses_nothing_it_acknowledged {
    use super::*;

    async fn scenario(app: TestApp) {
        // Values of one width keep every frame the same size but for the digits of its seq.
        const FIRST: u32 = 1000;
        let admin = app.admin_token().await;
        let a = enroll(&app, &admin, Some(SMALL_SPOOL)).await;
        let network = behind_relay(&a).await;
        network.cut();
        let daemon = run(&a.state).await;
        let mut intake = Intake::connect(&a.state).await;

        // Fill the spool to its bound exactly: hand over readings while the next one's frame still
        // fits (a frame grows by one byte with each digit of its seq).
        let mut sent = vec![f64::from(FIRST)];
        assert_eq!(intake.send(f64::from(FIRST)).await, 1);
        let mut frame = segment_bytes(&a.state);
        loop {
            let seq = sent.len() as u64 + 1;
            let next = frame + digits(seq) - digits(seq - 1);
            if segment_bytes(&a.state) + next > SMALL_SPOOL {
                break;
            }
            let value = f64::from(FIRST) + sent.len() as f64;
            let before = segment_bytes(&a.state);
            assert_eq!(intake.send(value).await, seq);
            frame = segment_bytes(&a.state) - before;
            assert_eq!(frame, next, "frame size of seq {seq}");
            sent.push(value);
        }
        let capacity = sent.len() as u64;
        assert!(capacity > 400, "a 64 KiB spool holds {capacity} readings");
        assert_eq!(
            dropped_on_disk(&a.state),
            0,
            "the spool is full, nothing dropped"
        );
        assert_eq!(spool_depth(&a.state).await, capacity);

        kill_hard(daemon).await;
        let daemon = run(&a.state).await;
        assert_eq!(
            spool_depth(&a.state).await,
            capacity,
            "all survived SIGKILL"
        );
        network.restore();
        assert_stored_exactly(&app, &admin, &a.id, &sent).await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                spool_depth(&a.state).await == 0
            })
            .await,
            "the spool drains"
        );

        // Beyond the bound: hand over one and a half times as many as fit, while offline. Whole segments of the
        // oldest are dropped, counted, persisted, and reported in health.
        network.cut();
        let mut intake = Intake::connect(&a.state).await;
        let over: Vec<f64> = (0..capacity * 3 / 2)
            .map(|i| f64::from(FIRST) + (capacity + i) as f64)
            .collect();
        intake.send_all(over.iter().copied()).await;
        let dropped = dropped_on_disk(&a.state);
        let depth = spool_depth(&a.state).await;
        assert!(dropped > 0, "a spool past its bound drops readings");
        assert_eq!(
            depth + dropped,
            over.len() as u64,
            "every reading kept or counted"
        );
        assert!(segment_bytes(&a.state) <= SMALL_SPOOL, "the bound holds");

        kill_hard(daemon).await;
        let daemon = run(&a.state).await;
        network.restore();
        let kept = &over[usize::try_from(dropped).expect("count")..];
        let expected: Vec<f64> = sent.iter().chain(kept).copied().collect();
        assert_stored_exactly(&app, &admin, &a.id, &expected).await;
        let reported = wait_until(Duration::from_secs(10), || async {
            let res = app
                .get(&admin, &format!("/api/v1/devices/{}/health", a.id))
                .await;
            if res.status() != 200 {
                return false;
            }
            let health: Value = res.json().await.expect("health JSON");
            health["report"]["spool_dropped"].as_u64() == Some(dropped)
        })
        .await;
        assert!(reported, "health reports spool_dropped = {dropped}");
        drop(daemon);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_embedded_broker() {
        scenario(spawn_app().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_mosquitto() {
        scenario(spawn_app_on_mosquitto().await).await;
    }
}

// 3. An agent whose sequence numbers start again (a new epoch) has its new readings stored.

mod an_agent_restarted_with_its_sequence_reset_stores_its_new_readings {
    use super::*;

    async fn scenario(app: TestApp) {
        const N: u32 = 50;
        let admin = app.admin_token().await;
        let a = enroll(&app, &admin, None).await;
        let daemon = run(&a.state).await;
        let seqs = Intake::connect(&a.state).await.send_all(values(0..N)).await;
        assert_eq!(seqs, (1..=u64::from(N)).collect::<Vec<_>>());
        assert_stored_exactly(&app, &admin, &a.id, &values(0..N)).await;

        // A power cut: the agent dies, and with it the spool's record of what the broker
        // acknowledged (the agent keeps no other sequence state: each start draws a new epoch and
        // counts from 1). The readings still in the spool's files are sent again, under their old
        // epoch, and must not be stored twice.
        kill_hard(daemon).await;
        std::fs::remove_file(a.state.join("spool/state.json")).expect("remove spool/state.json");
        let daemon = run(&a.state).await;
        let seqs = Intake::connect(&a.state)
            .await
            .send_all(values(N..2 * N))
            .await;
        assert_eq!(
            seqs,
            (1..=u64::from(N)).collect::<Vec<_>>(),
            "the sequence numbers start again"
        );
        assert_stored_exactly(&app, &admin, &a.id, &values(0..2 * N)).await;
        drop(daemon);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_embedded_broker() {
        scenario(spawn_app().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_mosquitto() {
        scenario(spawn_app_on_mosquitto().await).await;
    }
}
