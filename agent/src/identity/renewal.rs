//! Keeps the device certificate alive inside `run`: renews it over mutual TLS once a third of its
//! lifetime remains, recovers it without a client certificate once it has expired, and retries
//! with capped, jittered backoff. The old certificate stays in place until a new one for the same
//! key, from the pinned CA, has been written atomically.

use std::time::Duration;

use drover_proto::{RecoverRequest, RenewRequest, Timestamp};

use super::schedule::{Action, Backoff, jitter, lifetime, next_action};
use super::{DeviceCertificate, DeviceKey};
use crate::atomic_write::{PUBLIC, write_atomic};
use crate::device_api::{DeviceApi, ServerUrl};
use crate::error::{Error, Result};
use crate::state::{CERT_FILE, StateDir};

/// The identity `run` keeps alive.
#[derive(Debug)]
pub struct Keeper {
    state: StateDir,
    server: ServerUrl,
    key: DeviceKey,
    certificate: DeviceCertificate,
    ca_der: Vec<u8>,
}

impl Keeper {
    /// A keeper for `key` and `certificate`, talking to `server` with the CA `ca_der` pinned.
    pub fn new(
        state: StateDir,
        server: ServerUrl,
        key: DeviceKey,
        certificate: DeviceCertificate,
        ca_der: Vec<u8>,
    ) -> Keeper {
        Keeper {
            state,
            server,
            key,
            certificate,
            ca_der,
        }
    }

    /// The certificate held now.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// Loops forever: wait, renew or recover, as the schedule says; `now` is the device clock.
    pub async fn keep_alive(mut self, now: impl Fn() -> Timestamp) {
        let mut backoff = self.backoff();
        tracing::info!(
            certificate_expires_at = %self.certificate.not_after(),
            "keeping the device certificate alive"
        );
        loop {
            let action = next_action(
                self.certificate.not_before(),
                self.certificate.not_after(),
                now(),
            );
            let (what, attempt) = match action {
                Action::Wait(duration) => {
                    tracing::debug!(
                        sleep_s = duration.as_secs(),
                        "certificate not due for renewal"
                    );
                    tokio::time::sleep(duration).await;
                    continue;
                }
                Action::Renew => ("renewed", self.renew().await),
                Action::Recover => ("recovered", self.recover().await),
            };
            match attempt {
                Ok(()) => {
                    backoff = self.backoff();
                    tracing::info!(
                        certificate_expires_at = %self.certificate.not_after(),
                        "{what} the device certificate"
                    );
                }
                Err(error) => {
                    let delay = backoff.next_delay(jitter());
                    tracing::warn!(
                        %error,
                        retry_in_s = round_secs(delay),
                        certificate_expires_at = %self.certificate.not_after(),
                        "keeping the current device certificate"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One renewal: `POST /device/v1/renew` with the current key and certificate as the client
    /// identity and a CSR for the same key; on success the new certificate replaces the old.
    pub async fn renew(&mut self) -> Result<()> {
        let identity = self.key.identity_pem(&self.certificate);
        let api = DeviceApi::with_identity(&self.server, &self.ca_der, &identity)?;
        let request = RenewRequest {
            csr_pem: self.key.csr_pem()?,
        };
        let answer = api.renew(&request).await?;
        self.replace(&answer.certificate_pem, "certificate renewal")
            .await
    }

    /// One recovery: `POST /device/v1/recover` without a client certificate, with the expired
    /// certificate and a CSR for the same key.
    pub async fn recover(&mut self) -> Result<()> {
        let api = DeviceApi::pinned(&self.server, &self.ca_der)?;
        let request = RecoverRequest {
            certificate_pem: self.certificate.pem().to_owned(),
            csr_pem: self.key.csr_pem()?,
        };
        let answer = api.recover(&request).await?;
        self.replace(&answer.certificate_pem, "certificate recovery")
            .await
    }

    /// Checks a new certificate and writes it over `device.crt`.
    async fn replace(&mut self, pem: &str, what: &'static str) -> Result<()> {
        let bad = |reason: String| Error::BadAnswer { what, reason };
        let certificate = DeviceCertificate::from_pem(pem).map_err(bad)?;
        certificate
            .check_issued_for(&self.key, &self.ca_der)
            .map_err(bad)?;
        let path = self.state.file(CERT_FILE);
        let bytes = certificate.pem().as_bytes().to_vec();
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&target, &bytes, PUBLIC))
            .await
            .map_err(|e| Error::io("write", &path, std::io::Error::other(e)))?
            .map_err(|e| Error::io("write", &path, e))?;
        self.certificate = certificate;
        Ok(())
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(lifetime(
            self.certificate.not_before(),
            self.certificate.not_after(),
        ))
    }
}

fn round_secs(delay: Duration) -> f64 {
    (delay.as_secs_f64() * 10.0).round() / 10.0
}
