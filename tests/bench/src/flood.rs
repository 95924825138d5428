//! The device flood of the ingest benchmarks, on a plain MQTT broker: D devices' readings, one
//! reading per QoS 1 message in the contract's single-reading form
//! (`{"epoch","seq","ts","metrics","versions"}` on `drover/v1/devices/ID/telemetry`), and a
//! subscriber that only counts them (the broker's own ceiling). A flood is fully published only
//! when every message has its PUBACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::Mutex;

/// The metrics of every flood reading (three, as the issue asks).
pub const METRICS: [&str; 3] = ["temp_c", "cpu_pct", "inference_ms"];
/// The filter that takes every device's telemetry.
pub const TELEMETRY_FILTER: &str = "drover/v1/devices/+/telemetry";
/// How long a flood may wait for its last PUBACK.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1800);

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// The first device's number (devices are `first_device..first_device + devices`).
    pub first_device: u32,
    /// Devices (topics).
    pub devices: u32,
    /// Readings (messages) per device.
    pub readings: u32,
    /// Publishing connections, each taking an equal share of the devices.
    pub connections: u32,
}

impl Flood {
    /// Messages in all.
    pub fn messages(&self) -> u64 {
        u64::from(self.devices) * u64::from(self.readings)
    }
}

/// The device id of flood device `n`: alphanumeric, as the contract requires.
pub fn device_id(n: u32) -> String {
    format!("bench{n:06}")
}

/// The topic and payload of device `n`'s reading `seq`.
pub fn message(n: u32, seq: u32, ts: i64) -> (String, Vec<u8>) {
    let v = f64::from(seq % 1000);
    let payload = format!(
        "{{\"epoch\":\"b0b0\",\"seq\":{seq},\"ts\":{ts},\"metrics\":{{\"{}\":{:.1},\"{}\":{:.1},\"{}\":{:.1}}},\"versions\":{{}}}}",
        METRICS[0],
        40.0 + v / 100.0,
        METRICS[1],
        v / 10.0,
        METRICS[2],
        20.0 + v / 50.0,
    );
    (
        format!("drover/v1/devices/{}/telemetry", device_id(n)),
        payload.into_bytes(),
    )
}

/// A published flood.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Messages acknowledged by the broker.
    pub acked: u64,
    /// From the first publish to the last PUBACK.
    pub secs: f64,
}

fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// Polls until CONNACK (and SUBACK when `subscribed` is wanted).
async fn until_ready(eventloop: &mut EventLoop, want_suback: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = false;
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), eventloop.poll())
            .await
            .context("the broker did not answer within 10 s")?
            .context("connecting to the broker")?;
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                connected = true;
                if !want_suback {
                    return Ok(());
                }
            }
            Event::Incoming(Packet::SubAck(_)) if connected => return Ok(()),
            _ => {}
        }
    }
}

/// Publishes the flood as fast as the broker acknowledges (QoS 1, 100 in flight per connection);
/// `started` is stamped at the first publish.
pub async fn publish(addr: SocketAddr, flood: Flood) -> Result<(Instant, Published)> {
    let connections = flood.connections.clamp(1, flood.devices.max(1));
    let mut ready = Vec::new();
    for c in 0..connections {
        let (client, mut eventloop) = AsyncClient::new(options(addr, &format!("flood-{c}")), 1000);
        until_ready(&mut eventloop, false).await?;
        ready.push((client, eventloop));
    }
    let acked = Arc::new(AtomicU64::new(0));
    let last_ack = Arc::new(Mutex::new(Instant::now()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, (client, mut eventloop)) in ready.into_iter().enumerate() {
        let c = u32::try_from(c).unwrap_or(0);
        let mine: Vec<u32> = (0..flood.devices)
            .filter(|n| n % connections == c)
            .map(|n| flood.first_device + n)
            .collect();
        let expect = mine.len() as u64 * u64::from(flood.readings);
        let acked = acked.clone();
        let last_ack = last_ack.clone();
        let readings = flood.readings;
        tasks.spawn(async move {
            let sender = tokio::spawn(async move {
                for seq in 0..readings {
                    let ts = now_ms();
                    for &n in &mine {
                        let (topic, payload) = message(n, seq, ts);
                        client
                            .publish(topic, QoS::AtLeastOnce, false, payload)
                            .await
                            .context("queueing a publish")?;
                    }
                }
                anyhow::Ok(client)
            });
            let mut mine_acked = 0u64;
            while mine_acked < expect {
                match eventloop.poll().await.context("publishing the flood")? {
                    Event::Incoming(Packet::PubAck(_)) => {
                        mine_acked += 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                        if mine_acked == expect {
                            *last_ack.lock().await = Instant::now();
                        }
                    }
                    Event::Incoming(Packet::Disconnect) => bail!("the broker disconnected"),
                    _ => {}
                }
            }
            let client = sender.await.context("the publisher panicked")??;
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
            anyhow::Ok(())
        });
    }
    let all = async {
        while let Some(done) = tasks.join_next().await {
            done.context("a publishing connection panicked")??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(PUBLISH_TIMEOUT, all)
        .await
        .context("the flood was not acknowledged within 30 minutes")??;
    let last = *last_ack.lock().await;
    Ok((
        started,
        Published {
            acked: acked.load(Ordering::Relaxed),
            secs: last.saturating_duration_since(started).as_secs_f64(),
        },
    ))
}

/// A subscriber that only counts the telemetry it receives (QoS 1, acknowledged at once).
pub struct Counter {
    count: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Counter {
    /// Connects and subscribes to every device's telemetry; answers once the SUBACK arrived.
    pub async fn start(addr: SocketAddr) -> Result<Counter> {
        let (client, mut eventloop) = AsyncClient::new(options(addr, "bench-counter"), 16);
        client
            .subscribe(TELEMETRY_FILTER, QoS::AtLeastOnce)
            .await
            .context("subscribing the counter")?;
        until_ready(&mut eventloop, true).await?;
        let count = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(None));
        let task = tokio::spawn(count_messages(
            client,
            eventloop,
            count.clone(),
            last.clone(),
        ));
        Ok(Counter { count, last, task })
    }

    /// Messages received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` messages arrived, or nothing arrived for `idle`; answers the count and
    /// when the last one arrived.
    pub async fn wait_for(&self, n: u64, idle: Duration) -> Result<(u64, Option<Instant>)> {
        let mut seen = self.count();
        let mut since = Instant::now();
        while self.count() < n {
            if self.task.is_finished() {
                bail!("the counting subscriber stopped");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.count();
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() > idle {
                break;
            }
        }
        Ok((self.count(), *self.last.lock().await))
    }

    /// Disconnects.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Counts every PUBLISH until the connection fails (the client is kept so the session stays).
async fn count_messages(
    _client: AsyncClient,
    mut eventloop: EventLoop,
    count: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
) -> Result<()> {
    loop {
        if let Event::Incoming(Packet::Publish(_)) = eventloop.poll().await.context("counting")? {
            count.fetch_add(1, Ordering::Relaxed);
            *last.lock().await = Some(Instant::now());
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_message_is_the_contract_single_reading_form() {
        let (topic, payload) = message(7, 3, 1_700_000_000_000);
        assert_eq!(topic, "drover/v1/devices/bench000007/telemetry");
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(v["seq"], 3);
        assert_eq!(v["ts"], 1_700_000_000_000_i64);
        assert_eq!(v["metrics"].as_object().map(|m| m.len()), Some(3));
        assert!(v["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
}
