//! An external broker (Mosquitto, EMQX) instead of the embedded one. The
//! server connects with a client certificate of its own (`drover-server`,
//! which the shipped ACL lets read every device's topics); device rights are
//! the broker's ACL. Revocation reaches the broker two ways: the CRL file the
//! broker reads (rewritten on every revocation, then the configured reload
//! command), and the device's open session, which the server takes over with
//! the device's client id and drops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::KeyPair;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::identity::ca::{FleetCa, certificate_not_after, pem_to_der};
use crate::identity::{crl, devices};
use crate::secrets::write_private;
use crate::store::{Store, now_ms};

/// The user name (certificate CN) of the server at the broker.
pub const SERVER_CLIENT_NAME: &str = "drover-server";

/// Where the broker is and how the server authenticates to it.
#[derive(Clone)]
pub struct BrokerEndpoint {
    host: String,
    port: u16,
    tls: Option<(String, String, String)>,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} (tls: {})",
            self.host,
            self.port,
            self.tls.is_some()
        )
    }
}

impl BrokerEndpoint {
    /// Parses `mqtt://[user:pass@]host:port` or `mqtts://host:port`; for mqtts the
    /// server presents its own fleet certificate and trusts only the fleet CA.
    pub fn parse(url: &str, ca: &FleetCa, data_dir: &Path) -> Result<BrokerEndpoint> {
        let bad = || {
            Error::invalid(
                "mqtt_url",
                format!("{url:?} is not mqtt://HOST:PORT or mqtts://HOST:PORT"),
            )
        };
        let (tls, rest) = if let Some(r) = url
            .strip_prefix("mqtts://")
            .or_else(|| url.strip_prefix("ssl://"))
        {
            (true, r)
        } else if let Some(r) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (false, r)
        } else {
            return Err(bad());
        };
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = hostport
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        let credentials = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (user.to_string(), pass.to_string())
        });
        let tls = if tls {
            let (cert, key) = server_client_identity(ca, data_dir)?;
            Some((ca.cert_pem().to_string(), cert, key))
        } else {
            None
        };
        Ok(BrokerEndpoint {
            host: host.to_string(),
            port,
            tls,
            credentials,
        })
    }

    /// Client options for `client_id` at this broker.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some((ca, cert, key)) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.as_bytes().to_vec(),
                alpn: None,
                client_auth: Some((cert.as_bytes().to_vec(), key.as_bytes().to_vec())),
            }));
        }
        if let Some((user, pass)) = &self.credentials {
            options.set_credentials(user.clone(), pass.clone());
        }
        options
    }
}

/// The server's client certificate for the broker, reissued when less than 30 days are left.
fn server_client_identity(ca: &FleetCa, data_dir: &Path) -> Result<(String, String)> {
    let dir = data_dir.join("pki");
    let cert_path = dir.join("server-client.crt");
    let key_path = dir.join("server-client.key");
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(&cert_path),
        std::fs::read_to_string(&key_path),
    ) && pem_to_der(&cert)
        .and_then(|d| certificate_not_after(&d))
        .is_some_and(|end| end > now_ms() + 30 * 86_400_000)
    {
        return Ok((cert, key));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Internal(format!("generating the server's broker key: {e}")))?;
    let issued = ca.issue_server_client(
        SERVER_CLIENT_NAME,
        &key,
        Duration::from_secs(365 * 86_400),
        OffsetDateTime::now_utc(),
    )?;
    let key_pem = key.serialize_pem();
    write_private(&key_path, key_pem.as_bytes())
        .map_err(|e| Error::Internal(format!("writing pki/server-client.key: {e}")))?;
    std::fs::write(&cert_path, &issued.pem)
        .map_err(|e| Error::Internal(format!("writing pki/server-client.crt: {e}")))?;
    Ok((issued.pem, key_pem))
}

/// Keeps the broker's view of revocation current.
pub struct RevocationSync {
    /// The store (revoked serials).
    pub store: Store,
    /// Signs the CRL.
    pub ca: Arc<FleetCa>,
    /// `DATA_DIR/pki/crl.pem`.
    pub crl_path: PathBuf,
    /// Run after each CRL write (e.g. `systemctl reload mosquitto`).
    pub reload_command: Option<String>,
    /// How to reach the broker to take sessions over.
    pub endpoint: BrokerEndpoint,
}

impl RevocationSync {
    /// Writes the CRL (and reloads the broker).
    pub async fn write_crl(&self) -> Result<()> {
        let revoked = devices::revoked_certificates(&self.store).await?;
        crl::write_crl(&self.ca, &revoked, &self.crl_path)?;
        if let Some(cmd) = &self.reload_command {
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .await;
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    tracing::warn!(command = %cmd, status = %s, "the broker reload command failed")
                }
                Err(e) => {
                    tracing::warn!(command = %cmd, error = %e, "cannot run the broker reload command")
                }
            }
        }
        Ok(())
    }

    /// Writes the CRL at start and twice a day (it is valid for a week, and an
    /// expired CRL makes the broker refuse every client), and after every
    /// revocation closes the device's open session.
    pub async fn run(self, mut revocations: broadcast::Receiver<String>) {
        let mut refresh = tokio::time::interval(Duration::from_secs(12 * 3600));
        loop {
            let device_id = tokio::select! {
                _ = refresh.tick() => {
                    if let Err(e) = self.write_crl().await {
                        tracing::error!(error = %e, "cannot write the CRL for the broker");
                    }
                    continue;
                }
                r = revocations.recv() => match r {
                    Ok(id) => id,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if let Err(e) = self.write_crl().await {
                tracing::error!(error = %e, "cannot write the CRL for the broker");
            }
            // The reload command returns before the broker has re-read the CRL;
            // take the session over after it has, and once more for a device
            // that reconnected in between.
            for pause in [Duration::from_secs(1), Duration::from_secs(2)] {
                tokio::time::sleep(pause).await;
                match take_over(&self.endpoint, &device_id).await {
                    Ok(()) => {
                        tracing::info!(device_id, "closed the revoked device's broker session")
                    }
                    Err(e) => {
                        tracing::warn!(device_id, error = %e, "cannot take over the revoked device's session")
                    }
                }
            }
        }
    }
}

/// Connects with the device's client id (the broker drops the device's
/// session in favour of ours, clean), then disconnects.
async fn take_over(endpoint: &BrokerEndpoint, device_id: &str) -> Result<()> {
    let mut options = endpoint.options(device_id);
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(Error::Internal(format!("connecting to the broker: {e}"))),
            }
        }
    })
    .await
    .map_err(|_| Error::Internal("the broker did not answer within 10 s".into()))?;
    connected?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}
