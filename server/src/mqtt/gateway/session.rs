//! One device's MQTT session at the gateway, after its TLS handshake and
//! certificate check: the CONNECT rules, then every packet checked against
//! the device's rights, QoS 1 messages acknowledged only once the broker
//! has them, commands delivered, keep-alive enforced, and the last will
//! published when the connection ends without a DISCONNECT.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PubAck, PubComp, PubRec, Publish, QoS, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use drover_proto::TopicKind;

use super::Refusal;
use super::upstream::{Forward, Upstream};
use crate::mqtt::broker::MAX_PACKET_BYTES;
use crate::mqtt::client::Acker;

/// How long a device may take to send its CONNECT after the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a device may have waiting for the broker's acknowledgement;
/// beyond this the gateway stops reading from it until acknowledgements come.
const MAX_UNACKED: usize = 64;

/// How long one write to a device may take before the device counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the rest of the server tells a session.
#[derive(Debug)]
pub enum ToDevice {
    /// The device's message with this packet id is safe: stored (telemetry,
    /// health) or held by the broker (state).
    PubAck(u16),
    /// A command for the device.
    Command(Box<Publish>),
    /// End the session (revoked, taken over, broker link lost).
    Close(&'static str),
}

/// A device's CONNECT, checked: the rest of the session needs these.
pub struct Accepted {
    /// The device.
    pub device_id: String,
    /// Seconds; 0 = no keep-alive.
    pub keep_alive: u16,
    /// Published when the session ends without DISCONNECT.
    pub will: Option<LastWill>,
}

/// Reads the CONNECT and checks it against the certificate's device.
pub async fn read_connect<R: AsyncRead + Unpin>(
    rx: &mut R,
    buf: &mut BytesMut,
    device_id: &str,
) -> Result<Accepted, (Refusal, Option<ConnectReturnCode>)> {
    let first = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(rx, buf))
        .await
        .map_err(|_| {
            (
                Refusal("connect_timeout", "no CONNECT within 10 s".into()),
                None,
            )
        })?
        .map_err(|r| (r, None))?;
    let Packet::Connect(connect) = first else {
        return Err((
            Refusal("protocol", "the first packet was not CONNECT".into()),
            None,
        ));
    };
    if connect.protocol != rumqttc::Protocol::V4 {
        return Err((
            Refusal("protocol", "only MQTT 3.1.1 is served here".into()),
            Some(ConnectReturnCode::RefusedProtocolVersion),
        ));
    }
    if connect.client_id != device_id {
        return Err((
            Refusal(
                "client_id",
                format!(
                    "client id {:?} is not the certificate's device id {device_id}",
                    connect.client_id
                ),
            ),
            Some(ConnectReturnCode::BadClientId),
        ));
    }
    if let Some(will) = &connect.last_will
        && will.topic != format!("drover/v1/devices/{device_id}/state")
    {
        return Err((
            Refusal(
                "will_topic",
                format!("will topic {:?} is outside the device's prefix", will.topic),
            ),
            Some(ConnectReturnCode::NotAuthorized),
        ));
    }
    Ok(Accepted {
        device_id: device_id.to_string(),
        keep_alive: connect.keep_alive,
        will: connect.last_will,
    })
}

/// Answers a CONNECT; a refusal code is sent before the connection closes.
pub fn connack(code: ConnectReturnCode) -> BytesMut {
    let mut out = BytesMut::with_capacity(4);
    // A fixed four bytes; encoding cannot fail.
    let _ = Packet::ConnAck(ConnAck::new(code, false)).write(&mut out, MAX_PACKET_BYTES);
    out
}

/// How a session ended.
pub enum End {
    /// The device sent DISCONNECT: no will.
    Disconnected,
    /// A newer connection of the same device took the session over (the
    /// device is online through it), or the server is stopping (the device
    /// will be back when it returns): no will.
    TakenOver,
    /// Anything else: the will is published.
    Lost(Refusal),
}

/// Where a session's messages go: telemetry and health to the server in
/// process (acknowledged to the device once stored), `state` to the broker.
pub struct Routes<'a> {
    /// The broker link (state, wills).
    pub upstream: &'a Upstream,
    /// The server's link, whose `route` stores telemetry and health.
    pub link: &'a crate::mqtt::client::MqttLink,
}

/// Runs an accepted session until it ends.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    accepted: &Accepted,
    routes: &Routes<'_>,
    tx: &mpsc::UnboundedSender<ToDevice>,
    rx: &mut mpsc::UnboundedReceiver<ToDevice>,
) -> End {
    let prefix = format!("drover/v1/devices/{}/", accepted.device_id);
    let commands = format!("{prefix}commands");
    // MQTT allows one and a half keep-alive periods of silence.
    let idle = (accepted.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(accepted.keep_alive) * 1500));
    let mut deadline = idle.map(|d| Instant::now() + d);
    let mut session = Session {
        device_id: accepted.device_id.clone(),
        prefix,
        commands,
        subscribed: None,
        unacked: 0,
        exactly_once: Vec::new(),
        next_pkid: 0,
        out: BytesMut::new(),
    };
    loop {
        let result = tokio::select! {
            read = stream.read_buf(buf), if session.unacked < MAX_UNACKED => match read {
                Ok(0) => Err(End::Lost(Refusal("closed", "the device closed the connection".into()))),
                Ok(_) => {
                    deadline = idle.map(|d| Instant::now() + d);
                    session.packets(buf, routes, tx).await
                }
                Err(e) => Err(End::Lost(Refusal("closed", e.to_string()))),
            },
            message = rx.recv() => match message {
                Some(ToDevice::PubAck(pkid)) => session.acked(pkid),
                Some(ToDevice::Command(publish)) => session.command(*publish),
                Some(ToDevice::Close("taken over" | "the server is stopping")) => Err(End::TakenOver),
                Some(ToDevice::Close(reason)) => Err(End::Lost(Refusal(reason_code(reason), reason.into()))),
                // The session holds a sender itself, so this cannot happen.
                None => Err(End::Lost(Refusal("closed", "session channel closed".into()))),
            },
            _ = sleep_until(deadline) => Err(End::Lost(Refusal(
                "keep_alive",
                "nothing heard within one and a half keep-alive periods".into(),
            ))),
        };
        // Write whatever the packets produced even when the session ends
        // (a refusal is still worth telling the device).
        let flushed = session.flush(stream).await;
        match (result, flushed) {
            (Err(end), _) => return end,
            (Ok(()), Err(e)) => return End::Lost(e),
            (Ok(()), Ok(())) => {}
        }
    }
}

fn reason_code(reason: &'static str) -> &'static str {
    match reason {
        "revoked" => "revoked",
        _ => "upstream",
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

struct Session {
    device_id: String,
    prefix: String,
    commands: String,
    /// The QoS the device subscribed to its commands with.
    subscribed: Option<QoS>,
    unacked: usize,
    /// Packet ids the device sent with QoS 2 (answered with PUBREC).
    exactly_once: Vec<u16>,
    next_pkid: u16,
    out: BytesMut,
}

impl Session {
    /// Handles every whole packet in `buf`.
    async fn packets(
        &mut self,
        buf: &mut BytesMut,
        routes: &Routes<'_>,
        tx: &mpsc::UnboundedSender<ToDevice>,
    ) -> Result<(), End> {
        loop {
            let packet = match Packet::read(buf, MAX_PACKET_BYTES) {
                Ok(p) => p,
                Err(rumqttc::Error::InsufficientBytes(_)) => break,
                Err(e) => return Err(End::Lost(Refusal("malformed", e.to_string()))),
            };
            self.packet(packet, routes, tx).await?;
        }
        // An idle session should not keep a large buffer from a burst.
        if buf.is_empty() && buf.capacity() > 16 * 1024 {
            *buf = BytesMut::new();
        }
        Ok(())
    }

    async fn packet(
        &mut self,
        packet: Packet,
        routes: &Routes<'_>,
        tx: &mpsc::UnboundedSender<ToDevice>,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(p) => {
                check_publish(&p, &self.prefix).map_err(End::Lost)?;
                let ack = match p.qos {
                    QoS::AtMostOnce => None,
                    qos => {
                        self.unacked += 1;
                        // QoS 2 travels on as QoS 1 and is answered with
                        // PUBREC: the server de-duplicates readings itself.
                        if qos == QoS::ExactlyOnce {
                            self.exactly_once.push(p.pkid);
                        }
                        Some((tx.clone(), p.pkid))
                    }
                };
                let kind = match p.topic.strip_prefix(&self.prefix) {
                    Some("telemetry") => Some(TopicKind::Telemetry),
                    Some("health") => Some(TopicKind::Health),
                    _ => None,
                };
                if let Some(kind) = kind {
                    // In process, so the device's PUBACK means stored: the
                    // in-memory broker would acknowledge before the commit.
                    let ack = ack.map(|(tx, pkid)| Acker::Session { tx, pkid });
                    routes
                        .link
                        .route(self.device_id.clone(), kind, p.payload, ack)
                        .await;
                    return Ok(());
                }
                let forward = Forward {
                    topic: p.topic,
                    payload: p.payload,
                    qos: if ack.is_some() {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                    retain: p.retain,
                    ack,
                };
                if !routes.upstream.forward(forward).await {
                    return Err(End::Lost(Refusal(
                        "upstream",
                        "the server is stopping".into(),
                    )));
                }
                Ok(())
            }
            Packet::PubRel(rel) => self.write(&Packet::PubComp(PubComp::new(rel.pkid))),
            Packet::Subscribe(s) => {
                if let Some(f) = s.filters.iter().find(|f| f.path != self.commands) {
                    return Err(End::Lost(Refusal(
                        "subscribe_topic",
                        format!("subscribe to {:?} is outside the device's rights", f.path),
                    )));
                }
                let codes: Vec<_> = s
                    .filters
                    .iter()
                    .map(|f| {
                        let qos = min_qos(f.qos, QoS::AtLeastOnce);
                        self.subscribed = Some(qos);
                        SubscribeReasonCode::Success(qos)
                    })
                    .collect();
                self.write(&Packet::SubAck(SubAck::new(s.pkid, codes)))
            }
            Packet::Unsubscribe(u) => {
                if u.topics.contains(&self.commands) {
                    self.subscribed = None;
                }
                self.write(&Packet::UnsubAck(UnsubAck::new(u.pkid)))
            }
            Packet::PingReq => self.write(&Packet::PingResp),
            // Acknowledgements of commands: nothing is redelivered, so nothing to track.
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::Disconnect => Err(End::Disconnected),
            other => Err(End::Lost(Refusal(
                "protocol",
                format!("a device may not send {other:?}"),
            ))),
        }
    }

    /// The broker has a message the device sent: acknowledge it to the device.
    fn acked(&mut self, pkid: u16) -> Result<(), End> {
        self.unacked = self.unacked.saturating_sub(1);
        if let Some(i) = self.exactly_once.iter().position(|&p| p == pkid) {
            self.exactly_once.swap_remove(i);
            return self.write(&Packet::PubRec(PubRec::new(pkid)));
        }
        self.write(&Packet::PubAck(PubAck::new(pkid)))
    }

    /// Delivers a command if the device subscribed to its commands.
    fn command(&mut self, mut publish: Publish) -> Result<(), End> {
        let Some(granted) = self.subscribed else {
            tracing::debug!(topic = %publish.topic, "a command for a device not subscribed to its commands");
            return Ok(());
        };
        if publish.topic != self.commands {
            return Ok(());
        }
        publish.qos = min_qos(publish.qos, granted);
        publish.retain = false;
        publish.dup = false;
        publish.pkid = if publish.qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            self.next_pkid
        };
        self.write(&Packet::Publish(publish))
    }

    fn write(&mut self, packet: &Packet) -> Result<(), End> {
        packet
            .write(&mut self.out, MAX_PACKET_BYTES)
            .map(|_| ())
            .map_err(|e| End::Lost(Refusal("protocol", e.to_string())))
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), Refusal> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            stream.write_all(&self.out).await?;
            stream.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| Refusal("write_timeout", "the device stopped reading".into()))?
            .map_err(|e| Refusal("closed", e.to_string()))?;
        self.out.clear();
        if self.out.capacity() > 16 * 1024 {
            self.out = BytesMut::new();
        }
        Ok(())
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) < (b as u8) { a } else { b }
}

/// A device publishes under its own prefix to telemetry, health and state only.
pub fn check_publish(p: &Publish, prefix: &str) -> Result<(), Refusal> {
    let ok = p
        .topic
        .strip_prefix(prefix)
        .is_some_and(|rest| matches!(rest, "telemetry" | "health" | "state"));
    if ok {
        Ok(())
    } else {
        Err(Refusal(
            "publish_topic",
            format!("publish to {:?} is outside the device's rights", p.topic),
        ))
    }
}

/// Reads one packet, pulling more bytes from `rx` until it is whole.
pub async fn read_packet<R: AsyncRead + Unpin>(
    rx: &mut R,
    buf: &mut BytesMut,
) -> Result<Packet, Refusal> {
    loop {
        match Packet::read(buf, MAX_PACKET_BYTES) {
            Ok(p) => return Ok(p),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(Refusal("malformed", e.to_string())),
        }
        let n = rx
            .read_buf(buf)
            .await
            .map_err(|e| Refusal("closed", e.to_string()))?;
        if n == 0 {
            return Err(Refusal("closed", "the device closed the connection".into()));
        }
    }
}
