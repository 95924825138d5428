//! The device gateway in front of the embedded broker. Devices connect here
//! over TLS with their fleet certificates; each connection is its own task
//! (a stalled handshake delays nobody), every packet from the device is
//! parsed and checked — client id, will, publish and subscribe topics — and
//! only then passed to the broker on loopback. A revoked device's sessions
//! are closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Login, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};
use tokio_rustls::TlsAcceptor;

use super::broker::MAX_PACKET_BYTES;
use crate::identity::devices::{self, Status};
use crate::identity::revocation::serial_of;
use crate::store::Store;

/// How long a client may take for the TLS handshake and its CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters the gateway exposes in /metrics.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    /// Connections now open.
    pub open: AtomicU64,
    /// Connections accepted through the handshake and CONNECT checks.
    pub accepted: AtomicU64,
    /// Connections refused or closed for a rule (by reason).
    pub refused: Mutex<HashMap<&'static str, u64>>,
}

impl GatewayMetrics {
    /// The Prometheus text of these counters.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str(
            "# HELP drover_mqtt_connections Device connections open at the MQTT gateway.\n",
        );
        out.push_str("# TYPE drover_mqtt_connections gauge\n");
        let _ = writeln!(
            out,
            "drover_mqtt_connections {}",
            self.open.load(Ordering::Relaxed)
        );
        out.push_str("# HELP drover_mqtt_sessions_accepted_total Device sessions that passed the handshake and CONNECT checks.\n");
        out.push_str("# TYPE drover_mqtt_sessions_accepted_total counter\n");
        let _ = writeln!(
            out,
            "drover_mqtt_sessions_accepted_total {}",
            self.accepted.load(Ordering::Relaxed)
        );
        out.push_str("# HELP drover_mqtt_refused_total Device connections refused or closed by the gateway, by reason.\n");
        out.push_str("# TYPE drover_mqtt_refused_total counter\n");
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut reasons: Vec<_> = refused.iter().collect();
        reasons.sort();
        for (reason, n) in reasons {
            let _ = writeln!(out, "drover_mqtt_refused_total{{reason=\"{reason}\"}} {n}");
        }
        out
    }

    fn refuse(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// Open sessions by device, so revocation can close them.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<String, HashMap<u64, oneshot::Sender<()>>>>,
}

impl Sessions {
    fn register(&self, device_id: &str) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device_id.to_string())
            .or_default()
            .insert(id, tx);
        (id, rx)
    }

    fn unregister(&self, device_id: &str, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = open.get_mut(device_id) {
            m.remove(&id);
            if m.is_empty() {
                open.remove(device_id);
            }
        }
    }

    /// Closes every open session of a device; answers how many.
    pub fn close(&self, device_id: &str) -> usize {
        let closed = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id)
            .unwrap_or_default();
        let n = closed.len();
        for (_, tx) in closed {
            let _ = tx.send(());
        }
        n
    }

    /// How many devices have a session now.
    pub fn devices(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Everything a connection task needs.
pub struct Gateway {
    /// Accepts TLS with the fleet CA's client verifier (revocation-aware, certificate required).
    pub acceptor: TlsAcceptor,
    /// The broker on loopback.
    pub upstream: SocketAddr,
    /// The broker's password.
    pub secret: String,
    /// The store (device status).
    pub store: Store,
    /// Open sessions.
    pub sessions: Arc<Sessions>,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
}

/// Why a connection was closed.
#[derive(Debug)]
struct Refusal(&'static str, String);

impl Gateway {
    /// Accepts connections until the listener fails; each gets its own task.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        mut revocations: broadcast::Receiver<String>,
    ) {
        {
            let sessions = self.sessions.clone();
            // Ends by itself when the revocation channel closes.
            tokio::spawn(async move {
                loop {
                    match revocations.recv().await {
                        Ok(device_id) => {
                            let n = sessions.close(&device_id);
                            if n > 0 {
                                tracing::info!(
                                    device_id,
                                    sessions = n,
                                    "closed the MQTT sessions of a revoked device"
                                );
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                gateway.metrics.open.fetch_add(1, Ordering::Relaxed);
                if let Err(Refusal(reason, detail)) = gateway.serve(tcp).await {
                    gateway.metrics.refuse(reason);
                    tracing::info!(%peer, reason, detail, "MQTT connection closed");
                }
                gateway.metrics.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    async fn serve(&self, tcp: TcpStream) -> Result<(), Refusal> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| Refusal("handshake_timeout", "no TLS handshake within 10 s".into()))?
            .map_err(|e| Refusal("tls", e.to_string()))?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| Refusal("no_certificate", "no client certificate".into()))?;
        let device_id = self.device_for(&der).await?;
        let prefix = format!("drover/v1/devices/{device_id}/");

        let (mut device_rx, mut device_tx) = tokio::io::split(tls);
        let mut buf = BytesMut::with_capacity(4096);
        let connect =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(&mut device_rx, &mut buf))
                .await
                .map_err(|_| Refusal("connect_timeout", "no CONNECT within 10 s".into()))??;
        let Packet::Connect(mut connect) = connect else {
            return Err(Refusal(
                "protocol",
                "the first packet was not CONNECT".into(),
            ));
        };
        if connect.client_id != device_id {
            return Err(Refusal(
                "client_id",
                format!(
                    "client id {:?} is not the certificate's device id {device_id}",
                    connect.client_id
                ),
            ));
        }
        if let Some(will) = &connect.last_will
            && will.topic != format!("{prefix}state")
        {
            return Err(Refusal(
                "will_topic",
                format!("will topic {:?} is outside the device's prefix", will.topic),
            ));
        }
        connect.login = Some(Login::new(device_id.clone(), self.secret.clone()));

        let upstream = TcpStream::connect(self.upstream)
            .await
            .map_err(|e| Refusal("upstream", e.to_string()))?;
        let _ = upstream.set_nodelay(true);
        let (mut broker_rx, mut broker_tx) = upstream.into_split();
        let mut out = BytesMut::new();
        Packet::Connect(connect)
            .write(&mut out, MAX_PACKET_BYTES)
            .map_err(|e| Refusal("protocol", e.to_string()))?;
        broker_tx
            .write_all(&out)
            .await
            .map_err(|e| Refusal("upstream", e.to_string()))?;
        out.clear();

        let (session, mut revoked) = self.sessions.register(&device_id);
        self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let inbound = async {
            loop {
                let packet = read_packet(&mut device_rx, &mut buf).await?;
                check(&packet, &prefix)?;
                packet
                    .write(&mut out, MAX_PACKET_BYTES)
                    .map_err(|e| Refusal("protocol", e.to_string()))?;
                // Forward everything already buffered in one write.
                while let Ok(more) = Packet::read(&mut buf, MAX_PACKET_BYTES) {
                    check(&more, &prefix)?;
                    more.write(&mut out, MAX_PACKET_BYTES)
                        .map_err(|e| Refusal("protocol", e.to_string()))?;
                }
                broker_tx
                    .write_all(&out)
                    .await
                    .map_err(|e| Refusal("upstream", e.to_string()))?;
                out.clear();
            }
            #[allow(unreachable_code)]
            Ok::<(), Refusal>(())
        };
        let outbound = async {
            tokio::io::copy(&mut broker_rx, &mut device_tx)
                .await
                .map_err(|e| Refusal("closed", e.to_string()))?;
            let _ = device_tx.shutdown().await;
            Ok::<(), Refusal>(())
        };
        let result = tokio::select! {
            r = inbound => r,
            r = outbound => r,
            _ = &mut revoked => Err(Refusal("revoked", format!("device {device_id} was revoked"))),
        };
        self.sessions.unregister(&device_id, session);
        match result {
            Err(Refusal("closed", _)) => Ok(()),
            other => other,
        }
    }

    /// The accepted device a client certificate belongs to.
    async fn device_for(&self, der: &[u8]) -> Result<String, Refusal> {
        let serial =
            serial_of(der).ok_or_else(|| Refusal("tls", "unreadable client certificate".into()))?;
        let cert = devices::certificate(&self.store, &serial)
            .await
            .map_err(|e| Refusal("store", e.to_string()))?
            .ok_or_else(|| {
                Refusal(
                    "unknown_certificate",
                    format!("certificate {serial} is not known"),
                )
            })?;
        if cert.revoked_at.is_some() {
            return Err(Refusal(
                "revoked",
                format!("certificate {serial} is revoked"),
            ));
        }
        let device = devices::get(&self.store, &cert.device_id)
            .await
            .map_err(|e| Refusal("store", e.to_string()))?
            .ok_or_else(|| Refusal("unknown_device", cert.device_id.clone()))?;
        if device.status() != Status::Accepted {
            return Err(Refusal(
                "not_accepted",
                format!("device {} is {}", device.id, device.status().as_str()),
            ));
        }
        Ok(device.id)
    }
}

/// Reads one packet, pulling more bytes from `rx` until it is whole.
async fn read_packet<R: tokio::io::AsyncRead + Unpin>(
    rx: &mut R,
    buf: &mut BytesMut,
) -> Result<Packet, Refusal> {
    loop {
        match Packet::read(buf, MAX_PACKET_BYTES) {
            Ok(p) => return Ok(p),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(Refusal("malformed", e.to_string())),
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
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

/// The topic rights of a device: publish under its prefix to telemetry,
/// health and state only; subscribe to its own commands only.
fn check(packet: &Packet, prefix: &str) -> Result<(), Refusal> {
    match packet {
        Packet::Publish(p) => {
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
        Packet::Subscribe(s) => {
            let commands = format!("{prefix}commands");
            match s.filters.iter().find(|f| f.path != commands) {
                None => Ok(()),
                Some(f) => Err(Refusal(
                    "subscribe_topic",
                    format!("subscribe to {:?} is outside the device's rights", f.path),
                )),
            }
        }
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::PingReq
        | Packet::Unsubscribe(_)
        | Packet::Disconnect => Ok(()),
        other => Err(Refusal(
            "protocol",
            format!("a device may not send {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Publish, QoS, Subscribe, SubscribeFilter};

    const PREFIX: &str = "drover/v1/devices/abc/";

    #[test]
    fn devices_publish_only_their_own_telemetry_health_and_state() {
        for ok in ["telemetry", "health", "state"] {
            let p = Packet::Publish(Publish::new(
                format!("{PREFIX}{ok}"),
                QoS::AtLeastOnce,
                "{}",
            ));
            assert!(check(&p, PREFIX).is_ok(), "{ok}");
        }
        for bad in [
            "drover/v1/devices/other/telemetry",
            "drover/v1/devices/abc/commands",
            "drover/v1/devices/abc/telemetry/extra",
            "drover/v1/devices/+/telemetry",
            "elsewhere",
        ] {
            let p = Packet::Publish(Publish::new(bad, QoS::AtLeastOnce, "{}"));
            assert!(check(&p, PREFIX).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices_subscribe_only_to_their_own_commands() {
        let ok = Packet::Subscribe(Subscribe::new(
            format!("{PREFIX}commands"),
            QoS::AtLeastOnce,
        ));
        assert!(check(&ok, PREFIX).is_ok());
        for bad in [
            "drover/v1/devices/other/commands",
            "drover/v1/devices/#",
            "#",
            "drover/v1/devices/+/commands",
        ] {
            let p = Packet::Subscribe(Subscribe::new(bad, QoS::AtLeastOnce));
            assert!(check(&p, PREFIX).is_err(), "{bad}");
        }
        let mixed = Packet::Subscribe(Subscribe::new_many([
            SubscribeFilter::new(format!("{PREFIX}commands"), QoS::AtLeastOnce),
            SubscribeFilter::new("#".into(), QoS::AtLeastOnce),
        ]));
        assert!(check(&mixed, PREFIX).is_err());
    }

    #[test]
    fn sessions_close_every_connection_of_a_device() {
        let s = Sessions::default();
        let (a, mut ra) = s.register("d1");
        let (_b, mut rb) = s.register("d1");
        let (_c, mut rc) = s.register("d2");
        s.unregister("d1", a);
        assert_eq!(s.close("d1"), 1);
        assert!(ra.try_recv().is_err());
        assert!(rb.try_recv().is_ok());
        assert!(rc.try_recv().is_err());
        assert_eq!(s.devices(), 1);
    }
}
