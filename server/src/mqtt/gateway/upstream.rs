//! The gateway's one link to the embedded broker. Every device session ends
//! at the gateway; what devices publish travels on this single multiplexed
//! MQTT connection, and the broker's acknowledgement of each QoS 1 message
//! is routed back to the session that sent it. Commands for devices arrive
//! here on one wildcard subscription and are handed to the device's session.
//!
//! One link instead of one broker session per device keeps the broker's
//! per-session structures and two sockets per device out of the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{Connect, Login, Packet, PubAck, Publish, QoS, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Sessions;
use super::session::ToDevice;
use crate::mqtt::broker::MAX_PACKET_BYTES;

/// The broker-side filter that carries every device's commands.
const COMMANDS: &str = "drover/v1/devices/+/commands";

/// QoS 1 messages the link keeps unacknowledged at once; beyond this,
/// sessions wait (back-pressure reaches the devices).
const MAX_IN_FLIGHT: usize = 4096;

/// How often the link pings the broker.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A message for the broker, and where its acknowledgement goes.
#[derive(Debug)]
pub struct Forward {
    /// Topic (already checked against the device's rights).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// At most once or at least once (the link never asks for more).
    pub qos: QoS,
    /// Retained (the device's `state`).
    pub retain: bool,
    /// The session to tell once the broker has the message, with the device's packet id.
    pub ack: Option<(mpsc::UnboundedSender<ToDevice>, u16)>,
}

/// The sending side of the link, cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    tx: mpsc::Sender<Forward>,
}

impl Upstream {
    /// Starts the link task; it reconnects by itself until the process ends.
    pub fn start(broker: SocketAddr, secret: String, sessions: Arc<Sessions>) -> Upstream {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(broker, secret, sessions, rx));
        Upstream { tx }
    }

    /// Queues a message for the broker; waits while the link is saturated.
    /// Answers false when the link is gone (the process is stopping).
    pub async fn forward(&self, message: Forward) -> bool {
        self.tx.send(message).await.is_ok()
    }
}

async fn run(
    broker: SocketAddr,
    secret: String,
    sessions: Arc<Sessions>,
    mut rx: mpsc::Receiver<Forward>,
) {
    let mut failures = 0u32;
    loop {
        let mut link = Link {
            pending: HashMap::new(),
            next_pkid: 0,
            out: BytesMut::with_capacity(64 * 1024),
        };
        match link.serve(broker, &secret, &sessions, &mut rx).await {
            Ok(()) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, "the gateway lost its broker link; reconnecting");
                }
            }
        }
        // Sessions whose messages the broker never acknowledged are closed:
        // their devices reconnect and send them again (they are de-duplicated).
        for (tx, _) in link.pending.into_values() {
            let _ = tx.send(ToDevice::Close("the broker link was lost"));
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_mul(failures.min(10))).await;
    }
}

struct Link {
    pending: HashMap<u16, (mpsc::UnboundedSender<ToDevice>, u16)>,
    next_pkid: u16,
    out: BytesMut,
}

impl Link {
    /// Runs one connection; Ok when the request channel closed (shutdown).
    async fn serve(
        &mut self,
        broker: SocketAddr,
        secret: &str,
        sessions: &Sessions,
        rx: &mut mpsc::Receiver<Forward>,
    ) -> Result<(), String> {
        let mut stream = TcpStream::connect(broker)
            .await
            .map_err(|e| format!("connecting to {broker}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut connect = Connect::new("drover-gateway");
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16 * 2;
        connect.clean_session = true;
        connect.login = Some(Login::new("drover-gateway", secret));
        self.write(&Packet::Connect(connect))?;
        self.write(&Packet::Subscribe(Subscribe::new(
            COMMANDS,
            QoS::AtLeastOnce,
        )))?;
        self.flush(&mut stream).await?;

        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tokio::select! {
                message = rx.recv(), if self.pending.len() < MAX_IN_FLIGHT => {
                    let Some(message) = message else { return Ok(()) };
                    self.publish(message)?;
                    // Batch whatever else is waiting into the same write.
                    while self.pending.len() < MAX_IN_FLIGHT && self.out.len() < 256 * 1024 {
                        match rx.try_recv() {
                            Ok(m) => self.publish(m)?,
                            Err(_) => break,
                        }
                    }
                    self.flush(&mut stream).await?;
                }
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return Err("the broker closed the link".into()),
                        Ok(_) => {}
                        Err(e) => return Err(format!("reading from the broker: {e}")),
                    }
                    loop {
                        match Packet::read(&mut buf, MAX_PACKET_BYTES) {
                            Ok(packet) => self.incoming(packet, sessions)?,
                            Err(rumqttc::Error::InsufficientBytes(_)) => break,
                            Err(e) => return Err(format!("a malformed packet from the broker: {e}")),
                        }
                    }
                    self.flush(&mut stream).await?;
                }
                _ = ping.tick() => {
                    self.write(&Packet::PingReq)?;
                    self.flush(&mut stream).await?;
                }
            }
        }
    }

    fn publish(&mut self, message: Forward) -> Result<(), String> {
        let mut publish = Publish::from_bytes(message.topic, message.qos, message.payload);
        publish.retain = message.retain;
        if message.qos != QoS::AtMostOnce {
            publish.qos = QoS::AtLeastOnce;
            publish.pkid = self.allocate();
            if let Some(ack) = message.ack {
                self.pending.insert(publish.pkid, ack);
            }
        }
        self.write(&Packet::Publish(publish))
    }

    /// The next packet id not awaiting an acknowledgement (there is always
    /// one: at most MAX_IN_FLIGHT of 65,535 are pending).
    fn allocate(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.pending.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    fn incoming(&mut self, packet: Packet, sessions: &Sessions) -> Result<(), String> {
        match packet {
            Packet::ConnAck(ack) if ack.code != rumqttc::ConnectReturnCode::Success => {
                Err(format!("the broker refused the gateway: {:?}", ack.code))
            }
            Packet::PubAck(ack) => {
                if let Some((tx, device_pkid)) = self.pending.remove(&ack.pkid) {
                    // A session that has gone away no longer needs it.
                    let _ = tx.send(ToDevice::PubAck(device_pkid));
                }
                Ok(())
            }
            Packet::Publish(publish) => {
                if publish.qos != QoS::AtMostOnce {
                    // Commands reach connected devices; a device that is away
                    // hears its desired state again when it reconnects.
                    self.write(&Packet::PubAck(PubAck::new(publish.pkid)))?;
                }
                sessions.deliver(publish);
                Ok(())
            }
            Packet::SubAck(ack) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err("the broker refused the commands subscription".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn write(&mut self, packet: &Packet) -> Result<(), String> {
        packet
            .write(&mut self.out, MAX_PACKET_BYTES)
            .map(|_| ())
            .map_err(|e| format!("encoding a packet for the broker: {e}"))
    }

    async fn flush(&mut self, stream: &mut TcpStream) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("writing to the broker: {e}"))?;
        self.out.clear();
        Ok(())
    }
}
