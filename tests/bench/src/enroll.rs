//! Enrollment of simulated devices through the real device API, as an
//! agent does it: an ECDSA P-256 key and CSR per device, `POST
//! /device/v1/enroll`, and the certificate kept in memory with the key as
//! a ready TLS client configuration. Concurrency is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_proto::{DeviceId, EnrollRequest, EnrollResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Attempts per device before its enrollment counts as failed.
const ATTEMPTS: u32 = 3;

/// An enrolled device, ready to connect.
#[derive(Clone)]
pub struct Device {
    /// Its id (the MQTT client id).
    pub id: DeviceId,
    /// Its topic prefix, from the enrollment answer.
    pub prefix: String,
    /// TLS with its own certificate and key, trusting only the fleet CA.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Enrolls devices with one token.
pub struct Enroller {
    client: reqwest::Client,
    url: String,
    token: String,
    roots: Arc<rustls::RootCertStore>,
}

/// The result of enrolling many devices.
pub struct Enrolled {
    /// The devices that enrolled.
    pub devices: Vec<Device>,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Wall time of the whole batch.
    pub elapsed: Duration,
}

impl Enroller {
    /// An enroller for the device API at `addr`, trusting only `ca_pem`.
    pub fn new(addr: SocketAddr, ca_pem: &str, token: String) -> Result<Enroller> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
            .context("the fleet CA is not a PEM certificate")?;
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30))
            // Idle keep-alive connections would hold up the server's graceful stop.
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .context("building the device API client")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(cert.context("reading the fleet CA")?)
                .context("the fleet CA is not usable as a trust anchor")?;
        }
        if roots.is_empty() {
            bail!("the fleet CA file holds no certificate");
        }
        Ok(Enroller {
            client,
            url: format!("https://{addr}/device/v1/enroll"),
            token,
            roots: Arc::new(roots),
        })
    }

    /// Enrolls one device (a few attempts on transient errors).
    pub async fn enroll(&self, n: u32) -> Result<Device> {
        let mut last = anyhow!("no attempt made");
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match self.try_enroll(n).await {
                Ok(device) => return Ok(device),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient(e)) => last = e,
            }
        }
        Err(last)
    }

    async fn try_enroll(&self, n: u32) -> Result<Device, Failure> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Failure::Final(anyhow!("generating a P-256 key: {e}")))?;
        let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|csr| csr.pem())
            .map_err(|e| Failure::Final(anyhow!("writing the CSR: {e}")))?;
        let request = EnrollRequest {
            token: self.token.clone(),
            csr_pem,
            device_type: "bench".into(),
            hostname: format!("bench-{n}"),
            tags: BTreeMap::new(),
        };
        let res = self
            .client
            .post(&self.url)
            .json(&request)
            .send()
            .await
            .map_err(|e| Failure::Transient(anyhow!("enroll request: {}", error_chain(&e))))?;
        let status = res.status();
        if !status.is_success() {
            let body = res.text().await.unwrap_or_default();
            let title = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("title").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_default();
            let e = anyhow!("enroll answered {status} {title}");
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                Failure::Transient(e)
            } else {
                Failure::Final(e)
            });
        }
        let answer: EnrollResponse = res
            .json()
            .await
            .map_err(|e| Failure::Transient(anyhow!("enroll answer: {e}")))?;
        if answer.status != "accepted" {
            return Err(Failure::Final(anyhow!(
                "the device is {} rather than accepted; the token must not require approval",
                answer.status
            )));
        }
        let id = DeviceId::parse(&answer.device_id)
            .map_err(|e| Failure::Final(anyhow!("enroll answer: {e}")))?;
        let cert = CertificateDer::from_pem_slice(answer.certificate_pem.as_bytes())
            .map_err(|e| Failure::Final(anyhow!("the device certificate is not PEM: {e}")))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(vec![cert], key)
            .map_err(|e| Failure::Final(anyhow!("the device's TLS identity: {e}")))?;
        // A device remembers a few sessions of its own, not rustls' default 256.
        tls.resumption = rustls::client::Resumption::in_memory_sessions(4);
        Ok(Device {
            id,
            prefix: answer.mqtt_topic_prefix,
            tls: Arc::new(tls),
        })
    }

    /// Enrolls `count` devices, `concurrency` at a time.
    pub async fn enroll_many(self: &Arc<Self>, count: u32, concurrency: usize) -> Enrolled {
        let started = Instant::now();
        let mut devices = Vec::with_capacity(count as usize);
        let mut failures = BTreeMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0u32;
        let mut last_report = Instant::now();
        while next < count || !tasks.is_empty() {
            while next < count && tasks.len() < concurrency.max(1) {
                let me = self.clone();
                let n = next;
                tasks.spawn(async move { me.enroll(n).await });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(device))) => devices.push(device),
                Some(Ok(Err(e))) => *failures.entry(format!("{e:#}")).or_insert(0) += 1,
                Some(Err(e)) => *failures.entry(format!("task: {e}")).or_insert(0) += 1,
                None => break,
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "  enrolled {} of {count} ({:.0}/s)",
                    devices.len(),
                    devices.len() as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        Enrolled {
            devices,
            failures,
            elapsed: started.elapsed(),
        }
    }
}

enum Failure {
    /// Worth another attempt (network, 429, 5xx).
    Transient(anyhow::Error),
    /// Another attempt would fail the same way.
    Final(anyhow::Error),
}

/// An error with its causes, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
