//! The server's own MQTT client: one persistent session (nothing queued for
//! it is lost while it restarts) with a shared subscription to every device's
//! telemetry, health and state, so several replicas can split the load.
//! Messages are acknowledged only after they were handed on.

use std::time::Duration;

use bytes::Bytes;
use drover_proto::{Command, PrefixShape, Presence, TopicKind, parse_topic};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::identity::devices;
use crate::store::{Store, now_ms};

/// A message a device published.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Who sent it (from the topic, which the gateway or broker ACL vouches for).
    pub device_id: String,
    /// Which topic.
    pub kind: TopicKind,
    /// The raw payload.
    pub payload: Bytes,
    /// When the server received it (ms).
    pub received_at: i64,
    ack: Option<Acker>,
}

/// Acknowledges a QoS 1 message once whoever stores it has committed.
#[derive(Clone)]
pub(crate) enum Acker {
    /// A message the server's broker session received.
    Broker {
        acks: tokio::sync::mpsc::UnboundedSender<std::sync::Arc<rumqttc::Publish>>,
        publish: std::sync::Arc<rumqttc::Publish>,
    },
    /// A message a device session at the embedded broker's gateway received:
    /// the device hears its PUBACK only once the message is stored.
    Session {
        tx: tokio::sync::mpsc::UnboundedSender<crate::mqtt::gateway::ToDevice>,
        pkid: u16,
    },
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Acker::Broker { publish, .. } => write!(f, "Acker(broker pkid {})", publish.pkid),
            Acker::Session { pkid, .. } => write!(f, "Acker(session pkid {pkid})"),
        }
    }
}

impl Acker {
    async fn ack(&self) {
        match self {
            // The link's acknowledging task sends it: never wait here (see `acknowledge`).
            Acker::Broker { acks, publish } => {
                let _ = acks.send(publish.clone());
            }
            // A session that has gone away needs no acknowledgement.
            Acker::Session { tx, pkid } => {
                let _ = tx.send(crate::mqtt::gateway::ToDevice::PubAck(*pkid));
            }
        }
    }
}

impl Inbound {
    /// Tells the sender the message is safe (stored); until then it is sent again.
    pub async fn ack(&self) {
        if let Some(a) = &self.ack {
            a.ack().await;
        }
    }
}

/// The server's subscriptions on an external broker: shared, so replicas
/// split the load.
pub const SHARED_SUBSCRIPTIONS: [&str; 3] = [
    "$share/drover/drover/v1/devices/+/telemetry",
    "$share/drover/drover/v1/devices/+/health",
    "$share/drover/drover/v1/devices/+/state",
];

/// The server's subscription on the embedded broker, which serves exactly
/// one server: only `state` (retained, and the last wills) travels through
/// it, because the gateway hands telemetry and health to the server in
/// process (see `route`). Not shared: rumqttd 0.20 keys a shared group by
/// name with one cursor, and its router panics when a persistent shared
/// subscriber disconnects with messages in flight.
pub const PLAIN_SUBSCRIPTIONS: [&str; 1] = ["drover/v1/devices/+/state"];

/// The server's connection to the broker.
#[derive(Clone)]
pub struct MqttLink {
    client: AsyncClient,
    /// Stored messages for [`acknowledge`] to acknowledge.
    acks: tokio::sync::mpsc::UnboundedSender<std::sync::Arc<rumqttc::Publish>>,
    subscriptions: &'static [&'static str],
    events: broadcast::Sender<Inbound>,
    ingest: Option<tokio::sync::mpsc::Sender<Inbound>>,
    /// When the last device message arrived (ms), for draining at stop.
    last_inbound: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// True once the broker acknowledged every subscription of this link.
    ready: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Each device's last contact written to the store (ms), so that a busy device costs one
    /// write per [`TOUCH_EVERY_MS`] rather than one per message: on SQLite those writes queue
    /// behind each other and hold up enrollment and ingest.
    touched: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Presence writes, in arrival order, for the task that stores them.
    presence: tokio::sync::mpsc::UnboundedSender<PresenceJob>,
}

/// Least time between two writes of a device's last contact; well under the 90 s after which
/// a silent device counts as offline.
pub const TOUCH_EVERY_MS: i64 = 15_000;

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink").finish_non_exhaustive()
    }
}

impl MqttLink {
    /// Connects with the given options and starts the event loop task;
    /// telemetry and health go to `ingest`, which acknowledges them once stored.
    pub fn start(
        mut options: MqttOptions,
        store: Store,
        ingest: Option<tokio::sync::mpsc::Sender<Inbound>>,
        subscriptions: &'static [&'static str],
        live: crate::live::Live,
    ) -> (MqttLink, tokio::task::JoinHandle<()>) {
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_manual_acks(true)
            .set_max_packet_size(
                super::broker::MAX_PACKET_BYTES,
                super::broker::MAX_PACKET_BYTES,
            )
            .set_inflight(100);
        let (client, eventloop) = AsyncClient::new(options, 16_384);
        let (acks, pending) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(acknowledge(client.clone(), pending));
        let (events, _) = broadcast::channel(4096);
        let touched: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>> =
            Default::default();
        let (presence, jobs) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(record_presence(
            jobs,
            store.clone(),
            live.clone(),
            touched.clone(),
        ));
        let link = MqttLink {
            client,
            acks,
            subscriptions,
            events,
            ingest,
            last_inbound: Default::default(),
            ready: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
            touched,
            presence,
        };
        let task = tokio::spawn(link.clone().drive(eventloop));
        (link, task)
    }

    /// Milliseconds since a device message last arrived, and messages
    /// waiting for ingest: a stopping server waits for both to settle.
    pub fn backlog(&self) -> (i64, usize) {
        let last = self.last_inbound.load(std::sync::atomic::Ordering::Relaxed);
        let queued = self
            .ingest
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity());
        (now_ms().saturating_sub(last), queued)
    }

    /// Resolves once the broker has acknowledged every subscription: a
    /// broker drops (and acknowledges!) messages no subscription matches, so
    /// devices must not be let in before this.
    pub async fn subscribed(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    fn touches(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, i64>> {
        self.touched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a message from the device should write its last contact now (and notes it).
    fn touch_due(&self, device_id: &str) -> bool {
        let now = now_ms();
        let mut touched = self.touches();
        match touched.get(device_id) {
            Some(at) if now - at < TOUCH_EVERY_MS => false,
            _ => {
                touched.insert(device_id.to_owned(), now);
                true
            }
        }
    }

    /// Receives every message devices publish from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Inbound> {
        self.events.subscribe()
    }

    /// Sends a command to a device (QoS 1).
    pub async fn send_command(&self, device_id: &str, command: &Command) -> Result<()> {
        let payload =
            serde_json::to_vec(command).map_err(|e| Error::Internal(format!("command: {e}")))?;
        self.client
            .publish(
                format!("drover/v1/devices/{device_id}/commands"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| Error::Internal(format!("publishing a command: {e}")))
    }

    async fn drive(self, mut eventloop: EventLoop) {
        let mut failures = 0u32;
        let mut acknowledged = 0usize;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acknowledged += 1;
                    if acknowledged >= self.subscriptions.len() {
                        self.ready.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    failures = 0;
                    acknowledged = 0;
                    tracing::info!("connected to the MQTT broker");
                    for &filter in self.subscriptions {
                        if let Err(e) = self.client.subscribe(filter, QoS::AtLeastOnce).await {
                            tracing::error!(filter, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // Telemetry and health are acknowledged by ingest after they are stored.
                    let acker = Acker::Broker {
                        acks: self.acks.clone(),
                        publish: std::sync::Arc::new(publish),
                    };
                    self.dispatch(acker).await;
                }
                Ok(_) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                    }
                    tokio::time::sleep(
                        Duration::from_millis(500).min(Duration::from_millis(100) * failures),
                    )
                    .await;
                }
            }
        }
    }

    /// Hands on a message from the broker, acknowledging it when ingest does not take it.
    async fn dispatch(&self, acker: Acker) {
        let Acker::Broker { publish, .. } = &acker else {
            return;
        };
        let Ok((device, kind)) = parse_topic(&publish.topic, PrefixShape::Plain) else {
            tracing::warn!(topic = %publish.topic, "a message on a topic the server does not handle");
            acker.ack().await;
            return;
        };
        let payload = publish.payload.clone();
        self.route(device.as_str().to_string(), kind, payload, Some(acker))
            .await;
    }

    /// Hands a device's message on: presence for `state`, ingest for
    /// telemetry and health (which acknowledges once stored); anything not
    /// taken by ingest is acknowledged here.
    pub(crate) async fn route(
        &self,
        device_id: String,
        kind: TopicKind,
        payload: Bytes,
        ack: Option<Acker>,
    ) {
        self.last_inbound
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        // Presence is written by its own task, in arrival order: a write waits for the store's
        // lock behind ingest's transactions, and waiting here would stop reading the broker.
        if kind == TopicKind::State {
            // Whatever the state says, the next message writes the contact again.
            self.touches().remove(&device_id);
            let _ = self
                .presence
                .send(PresenceJob::State(device_id.clone(), payload.clone()));
        } else if self.touch_due(&device_id) {
            let _ = self.presence.send(PresenceJob::Touch(device_id.clone()));
        }
        let inbound = Inbound {
            device_id,
            kind,
            payload,
            received_at: now_ms(),
            ack: None,
        };
        let _ = self.events.send(inbound.clone());
        let stored_by_ingest = matches!(kind, TopicKind::Telemetry | TopicKind::Health);
        match (&self.ingest, stored_by_ingest) {
            (Some(queue), true) => {
                // A full queue holds the caller here: back-pressure reaches the
                // broker (which keeps the messages for this persistent session)
                // or the device's session at the gateway.
                if queue.send(Inbound { ack, ..inbound }).await.is_err() {
                    tracing::error!("the ingest worker has stopped; messages stay unacknowledged");
                }
            }
            _ => {
                if let Some(a) = ack {
                    a.ack().await;
                }
            }
        }
    }
}

/// Acknowledges stored messages to the broker, in the order they were stored, until the link
/// is gone. Ingest must never wait on the link's request queue: the event loop that empties it
/// may itself be waiting for room in ingest's queue, and a backlog flood would deadlock for
/// good. So ingest hands its acknowledgements here without waiting, and this one task waits
/// for room. (A task per acknowledgement waiting on a full queue cost O(n²): each one leaving
/// flume's queue of waiting senders scans all the others, 15 % of the server's CPU in a flood.)
async fn acknowledge(
    client: AsyncClient,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<std::sync::Arc<rumqttc::Publish>>,
) {
    while let Some(publish) = pending.recv().await {
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "cannot acknowledge a message");
        }
    }
}

/// A presence write: a `state` message, or a contact due to be written.
enum PresenceJob {
    State(String, Bytes),
    Touch(String),
}

/// Stores presence in arrival order until every link is gone. Presence changes record their
/// own events in the same transaction.
async fn record_presence(
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<PresenceJob>,
    store: Store,
    live: crate::live::Live,
    touched: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            PresenceJob::State(device_id, payload) => {
                match serde_json::from_slice::<Presence>(&payload) {
                    Ok(p) => match devices::set_online(&store, &device_id, p.online, p.ts).await {
                        Ok(true) => live.presence(&device_id, p.online),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(device_id, error = %e, "cannot record presence"),
                    },
                    Err(e) => {
                        tracing::info!(device_id, error = %e, "a state message that is not {{online, ts}}")
                    }
                }
            }
            PresenceJob::Touch(device_id) => match devices::touch(&store, &device_id).await {
                Ok(true) => live.presence(&device_id, true),
                Ok(false) => {}
                Err(e) => {
                    touched
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&device_id);
                    tracing::warn!(device_id, error = %e, "cannot record contact");
                }
            },
        }
    }
}
