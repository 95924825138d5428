//! The MQTT publisher: one rumqttc session over TLS (pinned fleet CA, device certificate, client
//! id = device id) that announces presence on `state`, listens on `commands`, sends spooled
//! readings to `telemetry` in QoS 1 batches and health on every heartbeat. A spooled reading is
//! removed only after the broker's PUBACK for its batch; a lost session is rebuilt with jittered
//! backoff and resends from the spool's head (the server de-duplicates on epoch and seq).
//! Batching is a pure function ([`plan_batch`], [`batch_message`]); the driver around it is thin.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use drover_proto::{
    Command, DeviceId, Epoch, Health, Presence, Reading, Readings, Telemetry, TopicKind, Version,
    topic,
};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS};
use tokio::sync::{Notify, mpsc, watch};

use super::health::{self, CpuSample};
use super::intake::SharedSpool;
use super::spool::{Position, Span, Stored};
use crate::identity::schedule::{Backoff, jitter};
use crate::state::{CA_FILE, CERT_FILE, KEY_FILE, StateDir};

/// Most readings in one telemetry message.
pub const MAX_BATCH_READINGS: usize = 500;
/// Most reading bytes in one telemetry message (the server takes packets up to 256 KiB).
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// Telemetry messages awaiting PUBACK at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Longest wait between reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(60);
/// MQTT keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet either way.
const MAX_PACKET: usize = 256 * 1024;
/// Requests queued towards rumqttc's event loop; above every burst this driver makes.
const REQUEST_CAPACITY: usize = 64;
/// How long a stopping agent tries to say it goes offline.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many of the leading `stored` readings go into the next message: all of one epoch and one
/// version map, at most `max_readings` and about `max_bytes` (at least one reading). Readings that
/// no longer decode ride along with any group, and are left out of the message.
pub fn plan_batch(stored: &[Stored], max_readings: usize, max_bytes: usize) -> usize {
    let mut key: Option<(&Epoch, &BTreeMap<String, Version>)> = None;
    let mut bytes = 0;
    for (i, item) in stored.iter().enumerate() {
        if i >= max_readings || (i > 0 && bytes + item.bytes > max_bytes) {
            return i;
        }
        if let Some(t) = &item.telemetry {
            match key {
                None => key = Some((&t.epoch, &t.versions)),
                Some((epoch, versions)) if *epoch != t.epoch || *versions != t.versions => {
                    return i;
                }
                Some(_) => {}
            }
        }
        bytes += item.bytes;
    }
    stored.len()
}

/// The batch-form telemetry message for `items` (one epoch and version map, as [`plan_batch`]
/// grouped them), or `None` when none of them decodes.
pub fn batch_message(items: &[Stored]) -> Option<Telemetry> {
    let mut readings: Vec<Reading> = Vec::with_capacity(items.len());
    let mut head: Option<(Epoch, BTreeMap<String, Version>)> = None;
    for t in items.iter().filter_map(|item| item.telemetry.as_ref()) {
        head.get_or_insert_with(|| (t.epoch.clone(), t.versions.clone()));
        readings.extend(t.readings.as_slice().iter().cloned());
    }
    let (epoch, versions) = head?;
    Some(Telemetry {
        epoch,
        versions,
        readings: Readings::Batch(readings),
    })
}

/// The acknowledgement span of `items` (consecutive, from one segment).
pub fn span_of(items: &[Stored]) -> Option<Span> {
    Some(Span {
        start: items.first()?.start,
        end: items.last()?.end,
        count: items.len() as u64,
    })
}

/// Host and port of `mqtts://HOST[:PORT]` (port 8883 by default).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| format!("mqtt_url `{url}` must start with mqtts:// (TLS)"))?
        .trim_end_matches('/');
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("mqtt_url `{url}` has an unclosed [ in its host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("mqtt_url `{url}` has no valid host"));
    }
    let port = match port {
        None => 8883,
        Some(p) => p
            .parse()
            .map_err(|_| format!("mqtt_url `{url}` has an invalid port"))?,
    };
    Ok((host.to_owned(), port))
}

/// Where and as whom the publisher connects.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// The state directory (key, certificate and CA are read at each connection, so a renewed
    /// certificate is used from the next one).
    pub state: StateDir,
    /// Client id and topic owner.
    pub device_id: DeviceId,
    /// `mqtts://HOST:PORT` from the enrollment.
    pub mqtt_url: String,
    /// The enrollment's `mqtt_topic_prefix`.
    pub topic_prefix: String,
    /// Time between health reports.
    pub heartbeat: Duration,
    /// What the update engine last said about installed bundles and its state (for health).
    pub shared: super::SharedState,
    /// Where health figures come from.
    pub health: HealthSource,
}

/// A simulated device's health figures at a time (ms since the epoch).
pub type HealthFn = dyn Fn(i64) -> Health + Send + Sync;

/// Where the publisher's health reports come from.
#[derive(Clone, Default)]
pub enum HealthSource {
    /// This machine: `/proc`, `/sys` and the state directory's file system.
    #[default]
    Host,
    /// A simulated device (the fleet simulator); spool counts, installed bundles and the update
    /// state are still the real ones.
    Simulated(Arc<HealthFn>),
}

impl std::fmt::Debug for HealthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthSource::Host => "Host",
            HealthSource::Simulated(_) => "Simulated",
        })
    }
}

/// What the publisher tracks per QoS 1 message until its PUBACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Telemetry(Span),
    Other,
}

/// Messages handed to rumqttc, matched to packet ids as rumqttc reports sending them (in the
/// order they were handed over), until acknowledged.
#[derive(Debug, Default)]
struct Flight {
    queued: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    telemetry: usize,
}

impl Flight {
    fn push(&mut self, tag: Tag) {
        if matches!(tag, Tag::Telemetry(_)) {
            self.telemetry += 1;
        }
        self.queued.push_back(tag);
    }

    fn sent(&mut self, pkid: u16) {
        if let Some(tag) = self.queued.pop_front() {
            self.by_pkid.insert(pkid, tag);
        }
    }

    fn acked(&mut self, pkid: u16) -> Option<Tag> {
        let tag = self.by_pkid.remove(&pkid)?;
        if matches!(tag, Tag::Telemetry(_)) {
            self.telemetry = self.telemetry.saturating_sub(1);
        }
        Some(tag)
    }
}

/// What [`Publisher::send_next`] sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// Nothing was waiting.
    Nothing,
    /// A batch with all that was waiting in its segment.
    Partial,
    /// A batch cut short: more is waiting.
    Full,
}

/// How a session ended.
enum End {
    Stopped,
    Lost { connected: bool, error: String },
}

/// The publisher task's state across sessions.
pub struct Publisher {
    config: PublisherConfig,
    spool: SharedSpool,
    spooled: Arc<Notify>,
    commands: mpsc::Sender<Command>,
    topics: Topics,
    cpu: CpuSample,
}

struct Topics {
    telemetry: String,
    health: String,
    state: String,
    commands: String,
}

impl Publisher {
    /// A publisher for `spool`, woken by `spooled` when readings arrive; commands received on
    /// `commands` are handed to `commands` (bounded: when it is full, a command is dropped and
    /// logged, as the server repeats what matters).
    pub fn new(
        config: PublisherConfig,
        spool: SharedSpool,
        spooled: Arc<Notify>,
        commands: mpsc::Sender<Command>,
    ) -> Publisher {
        let prefix = &config.topic_prefix;
        let topics = Topics {
            telemetry: topic(prefix, TopicKind::Telemetry),
            health: topic(prefix, TopicKind::Health),
            state: topic(prefix, TopicKind::State),
            commands: topic(prefix, TopicKind::Commands),
        };
        Publisher {
            config,
            spool,
            spooled,
            commands,
            topics,
            cpu: CpuSample::now(),
        }
    }

    /// Runs sessions until `stop` turns true; then says `{"online":false}` (best effort).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // One crypto provider for the process (rumqttc builds its TLS config from the default).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut backoff = Backoff::with_cap(MAX_RECONNECT_DELAY);
        loop {
            match self.session(&mut stop, &mut backoff).await {
                End::Stopped => return,
                End::Lost { connected, error } => {
                    let delay = backoff.next_delay(jitter());
                    tracing::warn!(
                        %error,
                        was_connected = connected,
                        retry_in_s = (delay.as_secs_f64() * 10.0).round() / 10.0,
                        "MQTT connection lost; readings stay in the spool"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// The session's options; its last will is stamped `session_ts`, as is the `online` message
    /// sent once connected, so the broker's will for this session is never older than that
    /// message (the server ignores presence older than what it applied: a will of an earlier
    /// session delivered late).
    async fn options(&self, session_ts: i64) -> Result<MqttOptions, String> {
        let (host, port) = parse_mqtt_url(&self.config.mqtt_url)?;
        let read = |name: &'static str| {
            let path = self.config.state.file(name);
            async move {
                tokio::fs::read(&path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
            }
        };
        let (ca, cert, key) = (
            read(CA_FILE).await?,
            read(CERT_FILE).await?,
            read(KEY_FILE).await?,
        );
        let mut options = MqttOptions::new(self.config.device_id.as_str(), host, port);
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                &self.topics.state,
                presence_at(false, session_ts),
                QoS::AtLeastOnce,
                true,
            ))
            .set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: Some((cert, key)),
                },
            ));
        Ok(options)
    }

    async fn session(&mut self, stop: &mut watch::Receiver<bool>, backoff: &mut Backoff) -> End {
        let session_ts = crate::now().unix_millis();
        let options = match self.options(session_ts).await {
            Ok(options) => options,
            Err(error) => {
                return End::Lost {
                    connected: false,
                    error,
                };
            }
        };
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let mut flight = Flight::default();
        let mut connected = false;
        let mut cursor = Position::default();
        let mut more = false;
        // The last batch took all that was waiting, and is in flight: what arrives meanwhile
        // waits for its acknowledgement and goes in the next batch. An idle device sends each
        // reading at once; under load a batch holds what arrived in one round trip.
        let mut held = false;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = |connected: bool, error: String| End::Lost { connected, error };
        loop {
            if connected
                && more
                && flight.telemetry < MAX_IN_FLIGHT
                && !(held && flight.telemetry > 0)
            {
                match self.send_next(&client, &mut flight, &mut cursor).await {
                    Ok(sent) => {
                        more = sent != Sent::Nothing;
                        held = sent == Sent::Partial;
                    }
                    Err(error) => return lost(connected, error),
                }
                continue;
            }
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        connected = true;
                        backoff.reset();
                        tracing::info!(
                            broker = %self.config.mqtt_url,
                            session_present = ack.session_present,
                            "connected to the MQTT broker"
                        );
                        if let Err(e) = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, presence_at(true, session_ts)) {
                            return lost(true, format!("cannot queue the presence message: {e}"));
                        }
                        flight.push(Tag::Other);
                        if let Err(e) = client.try_subscribe(&self.topics.commands, QoS::AtLeastOnce) {
                            return lost(true, format!("cannot queue the commands subscription: {e}"));
                        }
                        cursor = self.with_spool(|s| s.head()).await;
                        more = true;
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        if let Some(Tag::Telemetry(span)) = flight.acked(ack.pkid) {
                            let acked = self.with_spool(move |s| s.ack(span)).await;
                            if let Err(e) = acked {
                                tracing::warn!(error = %e, "cannot record acknowledged readings; they will be sent again");
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        self.command(&publish.topic, &publish.payload);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        tracing::debug!(return_codes = ?ack.return_codes, "subscribed to commands");
                    }
                    Ok(Event::Incoming(Incoming::Disconnect)) => {
                        return lost(connected, "the broker disconnected".into());
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flight.sent(pkid),
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                        // The broker acknowledged out of order and packet ids wrapped onto an
                        // unacknowledged one; start a clean session of ids instead of guessing.
                        return lost(connected, format!("packet id {pkid} still awaits its acknowledgement"));
                    }
                    Ok(_) => {}
                    Err(e) => return lost(connected, e.to_string()),
                },
                () = self.spooled.notified() => more = true,
                _ = heartbeat.tick(), if connected => {
                    if let Err(error) = self.publish_health(&client, &mut flight).await {
                        return lost(connected, error);
                    }
                }
                _ = stop.changed() => {
                    if connected {
                        self.goodbye(&client, &mut eventloop, &mut flight).await;
                    }
                    return End::Stopped;
                }
            }
        }
    }

    /// Sends the next batch from `cursor`, and says whether it took all that was waiting.
    async fn send_next(
        &mut self,
        client: &AsyncClient,
        flight: &mut Flight,
        cursor: &mut Position,
    ) -> Result<Sent, String> {
        let from = *cursor;
        let stored = self
            .with_spool(move |s| s.peek(from, MAX_BATCH_BYTES as u64))
            .await
            .map_err(|e| format!("cannot read the spool: {e}"))?;
        let n = plan_batch(&stored, MAX_BATCH_READINGS, MAX_BATCH_BYTES);
        let items = &stored[..n];
        let Some(span) = span_of(items) else {
            return Ok(Sent::Nothing);
        };
        // Only a batch cut short by its limits or a change of versions knows more is waiting;
        // the next segment's readings, if any, go once this batch is acknowledged.
        let sent = if n < stored.len() || n == MAX_BATCH_READINGS {
            Sent::Full
        } else {
            Sent::Partial
        };
        *cursor = span.end;
        match batch_message(items) {
            None => {
                let _ = self.with_spool(move |s| s.ack(span)).await;
            }
            Some(message) => {
                let payload = serde_json::to_vec(&message)
                    .map_err(|e| format!("cannot encode telemetry: {e}"))?;
                client
                    .try_publish(&self.topics.telemetry, QoS::AtLeastOnce, false, payload)
                    .map_err(|e| format!("cannot queue telemetry: {e}"))?;
                flight.push(Tag::Telemetry(span));
                tracing::debug!(readings = n, "telemetry batch sent");
            }
        }
        Ok(sent)
    }

    async fn publish_health(
        &mut self,
        client: &AsyncClient,
        flight: &mut Flight,
    ) -> Result<(), String> {
        let (depth, dropped) = self.with_spool(|s| (s.depth(), s.dropped())).await;
        let mut report = match &self.config.health {
            HealthSource::Host => {
                let dir = self.config.state.root().to_owned();
                let mut cpu = self.cpu;
                let collected = tokio::task::spawn_blocking(move || {
                    let report =
                        health::collect(&dir, &mut cpu, depth, dropped, crate::now().unix_millis());
                    (report, cpu)
                })
                .await;
                let Ok((report, cpu)) = collected else {
                    return Ok(());
                };
                self.cpu = cpu;
                report
            }
            HealthSource::Simulated(figures) => {
                let mut report = figures(crate::now().unix_millis());
                report.spool_depth = depth;
                report.spool_dropped = dropped;
                report
            }
        };
        {
            let shared = self.config.shared.lock();
            report.installed = shared.installed.clone();
            report.update_state = shared.update_state;
        }
        let payload =
            serde_json::to_vec(&report).map_err(|e| format!("cannot encode health: {e}"))?;
        client
            .try_publish(&self.topics.health, QoS::AtLeastOnce, false, payload)
            .map_err(|e| format!("cannot queue health: {e}"))?;
        flight.push(Tag::Other);
        Ok(())
    }

    /// Parses a command and hands it to the daemon's command task.
    fn command(&self, topic: &str, payload: &[u8]) {
        if topic != self.topics.commands {
            tracing::debug!(topic, "message on an unexpected topic ignored");
            return;
        }
        match serde_json::from_slice::<Command>(payload) {
            Ok(command) => {
                tracing::info!(?command, "command received");
                if let Err(e) = self.commands.try_send(command) {
                    tracing::warn!(error = %e, "command dropped: the agent is busy with earlier ones");
                }
            }
            Err(e) => tracing::warn!(error = %e, "command not understood; ignored"),
        }
    }

    /// Publishes `{"online":false}` and disconnects, waiting at most [`GOODBYE_TIMEOUT`].
    async fn goodbye(&self, client: &AsyncClient, eventloop: &mut EventLoop, flight: &mut Flight) {
        if client
            .try_publish(&self.topics.state, QoS::AtLeastOnce, true, presence(false))
            .is_err()
        {
            return;
        }
        let _ = client.try_disconnect();
        let said = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flight.sent(pkid),
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        tracing::info!(
            sent = said.is_ok(),
            "told the broker this device goes offline"
        );
    }

    /// Runs `f` on the spool on the blocking pool (it may read or fsync files).
    async fn with_spool<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut super::spool::Spool) -> T + Send + 'static,
    ) -> T {
        let spool = Arc::clone(&self.spool);
        let run = move || f(&mut spool.lock().unwrap_or_else(PoisonError::into_inner));
        match tokio::task::spawn_blocking(run).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// The `state` payload at this moment.
fn presence(online: bool) -> Vec<u8> {
    presence_at(online, crate::now().unix_millis())
}

/// The `state` payload stamped `ts`.
fn presence_at(online: bool, ts: i64) -> Vec<u8> {
    serde_json::to_vec(&Presence { online, ts }).expect("a presence is a bool and a number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(i: u64, epoch: &str, version: Option<&str>, bytes: usize) -> Stored {
        let versions = version
            .map(|v| BTreeMap::from([("detector".to_owned(), v.parse().unwrap())]))
            .unwrap_or_default();
        Stored {
            start: Position {
                segment: 1,
                offset: i * 10,
            },
            end: Position {
                segment: 1,
                offset: (i + 1) * 10,
            },
            bytes,
            telemetry: Some(Telemetry {
                epoch: Epoch::parse(epoch).unwrap(),
                versions,
                readings: Readings::Single(Reading {
                    seq: i + 1,
                    ts: 1000 + i as i64,
                    metrics: BTreeMap::from([("t".to_owned(), i as f64)]),
                }),
            }),
        }
    }

    #[test]
    fn a_batch_stops_at_the_reading_and_byte_limits() {
        let items: Vec<_> = (0..10).map(|i| stored(i, "aa", None, 100)).collect();
        assert_eq!(plan_batch(&items, 4, 1 << 20), 4);
        assert_eq!(plan_batch(&items, 500, 350), 3);
        assert_eq!(plan_batch(&items, 500, 1 << 20), 10);
        // A single reading above the byte limit still goes, alone.
        assert_eq!(plan_batch(&items, 500, 10), 1);
        assert_eq!(plan_batch(&[], 500, 10), 0);
    }

    #[test]
    fn epochs_and_version_maps_are_never_mixed_in_one_message() {
        let items = vec![
            stored(0, "aa", None, 10),
            stored(1, "aa", None, 10),
            stored(2, "bb", None, 10),
            stored(3, "bb", Some("1.0.0"), 10),
            stored(4, "bb", Some("1.0.0"), 10),
        ];
        assert_eq!(plan_batch(&items, 500, 1 << 20), 2);
        assert_eq!(plan_batch(&items[2..], 500, 1 << 20), 1);
        assert_eq!(plan_batch(&items[3..], 500, 1 << 20), 2);
    }

    #[test]
    fn the_message_is_the_contract_batch_form() {
        let items = vec![
            stored(0, "aa", Some("1.2.0"), 10),
            stored(1, "aa", Some("1.2.0"), 10),
        ];
        let message = batch_message(&items).unwrap();
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"epoch":"aa","versions":{"detector":"1.2.0"},"batch":[
                {"seq":1,"ts":1000,"metrics":{"t":0.0}},
                {"seq":2,"ts":1001,"metrics":{"t":1.0}}
            ]})
        );
        let span = span_of(&items).unwrap();
        assert_eq!((span.start.offset, span.end.offset, span.count), (0, 20, 2));
    }

    #[test]
    fn undecodable_readings_ride_along_but_are_not_sent() {
        let mut broken = stored(1, "aa", None, 10);
        broken.telemetry = None;
        let items = vec![stored(0, "aa", None, 10), broken, stored(2, "aa", None, 10)];
        assert_eq!(plan_batch(&items, 500, 1 << 20), 3);
        let message = batch_message(&items).unwrap();
        assert_eq!(message.readings.as_slice().len(), 2);
        assert_eq!(batch_message(&items[1..2]), None);
    }

    #[test]
    fn mqtt_urls_give_host_and_port() {
        assert_eq!(
            parse_mqtt_url("mqtts://broker:8883").unwrap(),
            ("broker".into(), 8883)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://127.0.0.1:41234/").unwrap(),
            ("127.0.0.1".into(), 41234)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://broker").unwrap(),
            ("broker".into(), 8883)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        for bad in [
            "mqtt://broker:1883",
            "mqtts://:1",
            "mqtts://b:x",
            "broker:8883",
        ] {
            assert!(parse_mqtt_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn packet_ids_are_matched_in_the_order_messages_were_queued() {
        let span = Span {
            start: Position::default(),
            end: Position {
                segment: 0,
                offset: 5,
            },
            count: 1,
        };
        let mut flight = Flight::default();
        flight.push(Tag::Other);
        flight.push(Tag::Telemetry(span));
        assert_eq!(flight.telemetry, 1);
        flight.sent(7);
        flight.sent(8);
        assert_eq!(flight.acked(8), Some(Tag::Telemetry(span)));
        assert_eq!(flight.telemetry, 0);
        assert_eq!(flight.acked(7), Some(Tag::Other));
        assert_eq!(flight.acked(7), None);
    }
}
