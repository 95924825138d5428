//! The device gateway in front of the embedded broker. Devices connect here
//! over TLS with their fleet certificates; each connection is its own task
//! (a stalled handshake delays nobody). Device sessions end here: every
//! packet is parsed and checked — client id, will, publish and subscribe
//! topics — and what passes travels to the broker on one shared link
//! ([`upstream`]), so the broker holds one session for the whole fleet
//! rather than one per device. A revoked device's session closes at once.

mod session;
mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, Publish};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_rustls::TlsAcceptor;

use crate::identity::devices::{self, Status};
use crate::identity::revocation::serial_of;
use crate::store::Store;

use session::End;
pub(crate) use session::ToDevice;
pub use upstream::Upstream;

/// How long a client may take for the TLS handshake.
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

/// The open session of each device, so revocation can close it, a newer
/// connection can take it over, and commands can find it.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The accept order of the connection that holds the session.
    connection: u64,
    tx: mpsc::UnboundedSender<ToDevice>,
}

impl Sessions {
    /// Gives the device's session to this connection; an older connection
    /// that held it is closed. Refused when a newer connection already holds
    /// it: a stale attempt (a client that gave up and tried again) must not
    /// take over the live session.
    fn register(
        &self,
        device_id: &str,
        connection: u64,
        tx: mpsc::UnboundedSender<ToDevice>,
    ) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = open.get(device_id) {
            if held.connection > connection {
                return false;
            }
            let _ = held.tx.send(ToDevice::Close("taken over"));
        }
        open.insert(device_id.to_string(), Entry { connection, tx });
        true
    }

    fn unregister(&self, device_id: &str, connection: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open
            .get(device_id)
            .is_some_and(|e| e.connection == connection)
        {
            open.remove(device_id);
        }
    }

    /// Closes the device's open session; answers whether there was one.
    pub fn close(&self, device_id: &str) -> bool {
        let entry = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
        entry.is_some_and(|e| e.tx.send(ToDevice::Close("revoked")).is_ok())
    }

    /// Hands a command from the broker to the device it names, if connected.
    fn deliver(&self, publish: Publish) {
        let Some(device_id) = publish
            .topic
            .strip_prefix("drover/v1/devices/")
            .and_then(|rest| rest.strip_suffix("/commands"))
        else {
            return;
        };
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = open.get(device_id) {
            let _ = entry.tx.send(ToDevice::Command(Box::new(publish)));
        }
    }

    /// Closes every session (the server is stopping); their wills are published.
    pub fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, entry) in open {
            let _ = entry.tx.send(ToDevice::Close("the server is stopping"));
        }
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
    /// The link to the broker.
    pub upstream: Upstream,
    /// The store (device status).
    pub store: Store,
    /// The server's own link: devices wait until its subscriptions stand.
    pub link: crate::mqtt::client::MqttLink,
    /// Open sessions.
    pub sessions: Arc<Sessions>,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
}

/// Why a connection was closed: a metrics reason and a detail for the log.
#[derive(Debug)]
pub struct Refusal(&'static str, String);

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
                            if sessions.close(&device_id) {
                                tracing::info!(
                                    device_id,
                                    "closed the MQTT session of a revoked device"
                                );
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        // Until the server's subscriptions stand, the broker would acknowledge
        // and drop what devices send; their connections wait in the backlog.
        self.link.subscribed().await;
        let mut connection = 0u64;
        let mut accept_errors = 0u64;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving, and do not flood the log while it lasts.
                    accept_errors += 1;
                    if accept_errors == 1 || accept_errors.is_multiple_of(1000) {
                        tracing::warn!(error = %e, times = accept_errors, "MQTT accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            connection += 1;
            let gateway = self.clone();
            tokio::spawn(async move {
                gateway.metrics.open.fetch_add(1, Ordering::Relaxed);
                if let Err(Refusal(reason, detail)) = gateway.serve(tcp, connection).await {
                    gateway.metrics.refuse(reason);
                    tracing::info!(%peer, reason, detail, "MQTT connection closed");
                }
                gateway.metrics.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    async fn serve(&self, tcp: TcpStream, connection: u64) -> Result<(), Refusal> {
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
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
        drop(der);

        let mut buf = BytesMut::with_capacity(1024);
        let accepted = match session::read_connect(&mut tls, &mut buf, &device_id).await {
            Ok(a) => a,
            Err((refusal, code)) => {
                if let Some(code) = code {
                    let _ = tls.write_all(&session::connack(code)).await;
                    let _ = tls.shutdown().await;
                }
                return Err(refusal);
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        if !self.sessions.register(&device_id, connection, tx.clone()) {
            let _ = tls
                .write_all(&session::connack(ConnectReturnCode::ServiceUnavailable))
                .await;
            return Err(Refusal(
                "superseded",
                format!("a newer connection of {device_id} already holds its session"),
            ));
        }
        self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let sent = async {
            tls.write_all(&session::connack(ConnectReturnCode::Success))
                .await?;
            tls.flush().await
        };
        let end = match sent.await {
            Ok(()) => {
                let routes = session::Routes {
                    upstream: &self.upstream,
                    link: &self.link,
                };
                session::run(&mut tls, &mut buf, &accepted, &routes, &tx, &mut rx).await
            }
            Err(e) => End::Lost(Refusal("closed", e.to_string())),
        };
        self.sessions.unregister(&device_id, connection);
        let result = match end {
            End::Disconnected | End::TakenOver => Ok(()),
            End::Lost(refusal) => {
                if let Some(will) = accepted.will {
                    let will = upstream::Forward {
                        topic: will.topic,
                        payload: will.message,
                        qos: will.qos,
                        retain: will.retain,
                        ack: None,
                    };
                    self.upstream.forward(will).await;
                }
                match refusal {
                    Refusal("closed", _) => Ok(()),
                    other => Err(other),
                }
            }
        };
        let _ = tls.shutdown().await;
        result
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    const PREFIX: &str = "drover/v1/devices/abc/";

    #[test]
    fn devices_publish_only_their_own_telemetry_health_and_state() {
        for ok in ["telemetry", "health", "state"] {
            let p = Publish::new(format!("{PREFIX}{ok}"), QoS::AtLeastOnce, "{}");
            assert!(session::check_publish(&p, PREFIX).is_ok(), "{ok}");
        }
        for bad in [
            "drover/v1/devices/other/telemetry",
            "drover/v1/devices/abc/commands",
            "drover/v1/devices/abc/telemetry/extra",
            "drover/v1/devices/+/telemetry",
            "elsewhere",
        ] {
            let p = Publish::new(bad, QoS::AtLeastOnce, "{}");
            assert!(session::check_publish(&p, PREFIX).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_newer_connection_takes_the_session_and_a_stale_one_cannot() {
        let s = Sessions::default();
        let (tx1, mut rx1) = mpsc::unbounded_channel();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        let (tx3, mut rx3) = mpsc::unbounded_channel();
        assert!(s.register("d1", 5, tx1));
        assert!(s.register("d1", 7, tx2));
        assert!(matches!(rx1.try_recv(), Ok(ToDevice::Close("taken over"))));
        // Connection 6 was accepted before 7 but finished its CONNECT later.
        assert!(!s.register("d1", 6, tx3));
        assert!(rx2.try_recv().is_err());
        assert!(rx3.try_recv().is_err());
        // The loser leaving does not remove the holder.
        s.unregister("d1", 5);
        assert_eq!(s.devices(), 1);
        s.deliver(Publish::new(
            "drover/v1/devices/d1/commands",
            QoS::AtLeastOnce,
            "{}",
        ));
        assert!(matches!(rx2.try_recv(), Ok(ToDevice::Command(_))));
        assert!(s.close("d1"));
        assert!(matches!(rx2.try_recv(), Ok(ToDevice::Close("revoked"))));
        assert!(!s.close("d1"));
        assert_eq!(s.devices(), 0);
    }
}
