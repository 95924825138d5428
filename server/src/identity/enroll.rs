//! Enrollment, renewal and recovery. The CSR is checked before the token is
//! touched, so a bad request never spends a use; the use is spent and the
//! device created in one transaction, so concurrent enrollments never exceed
//! the token's uses and a crash never leaves one without the other.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateSigningRequestParams, PublicKeyData};
use time::OffsetDateTime;

use super::ca::{FleetCa, Issued, pem_to_der, sha256_hex};
use super::devices::{self, Device, DeviceCertificate, Status};
use super::revocation::{RevokedSerials, serial_of};
use super::tokens;
use super::{Tags, device_type, new_device_id};
use crate::error::{Error, Result};
use crate::keys::Keyring;
use crate::on_store;
use crate::store::{Store, is_unique_violation, now_ms};

/// Largest CSR or certificate PEM accepted.
pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// Everything enrollment needs, built once at start.
pub struct Identity {
    /// The store.
    pub store: Store,
    /// The fleet CA.
    pub ca: Arc<FleetCa>,
    /// The root and signing keys.
    pub keys: Arc<Keyring>,
    /// Serials refused at the TLS handshake.
    pub revoked: Arc<RevokedSerials>,
    /// Lifetime of device certificates.
    pub cert_lifetime: Duration,
    /// How long after expiry a certificate may still be recovered.
    pub recovery_grace: Duration,
    /// The MQTT URL devices are told.
    pub mqtt_url: String,
    /// Device ids as they are revoked or decommissioned (the MQTT side closes their sessions).
    pub revocations: tokio::sync::broadcast::Sender<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// A parsed, signature-checked CSR: only its public key is ever used.
#[derive(Debug)]
pub struct Csr {
    /// The requested key.
    pub public_key: rcgen::PublicKey,
    /// Hex SHA-256 of the key bytes (the device's key identity).
    pub key_sha256: String,
}

/// Parses a CSR at the boundary, naming what is wrong with it.
pub fn parse_csr(field: &str, pem: &str) -> Result<Csr> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(Error::invalid(
            field,
            format!("is larger than {MAX_PEM_BYTES} bytes"),
        ));
    }
    let params = CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
        let why = match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "the CSR's self-signature is not valid"
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                "the CSR uses an unsupported key type; use an ECDSA P-256 or Ed25519 key"
            }
            rcgen::Error::UnsupportedExtension => {
                "the CSR asks for an extension Drover does not accept"
            }
            _ => "is not a PEM certificate signing request",
        };
        Error::invalid(field, why)
    })?;
    let alg = params.public_key.algorithm();
    if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
        return Err(Error::invalid(
            field,
            "the CSR uses an unsupported key type; use an ECDSA P-256 or Ed25519 key",
        ));
    }
    let key_sha256 = sha256_hex(params.public_key.der_bytes());
    Ok(Csr {
        public_key: params.public_key,
        key_sha256,
    })
}

/// A checked enrollment request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Token secret.
    pub token: String,
    /// CSR PEM.
    pub csr_pem: String,
    /// Claimed device type.
    pub device_type: String,
    /// Reported host name.
    pub hostname: String,
    /// Claimed tags.
    pub tags: Tags,
}

/// The outcome of an enrollment.
#[derive(Debug)]
pub struct Enrolled {
    /// The device (new, or the one this token and key enrolled before).
    pub device: Device,
    /// Its new certificate.
    pub certificate: Issued,
    /// True when this request created the device.
    pub created: bool,
}

fn record(device_id: &str, key_sha256: &str, issued: &Issued, why: &str) -> DeviceCertificate {
    DeviceCertificate {
        serial: issued.serial.clone(),
        device_id: device_id.to_string(),
        fingerprint_sha256: issued.fingerprint.clone(),
        public_key_sha256: key_sha256.to_string(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        issued_for: why.to_string(),
        created_at: now_ms(),
        revoked_at: None,
    }
}

impl Identity {
    /// Enrolls a device, or answers the device this token and key enrolled before.
    pub async fn enroll(&self, req: Request) -> Result<Enrolled> {
        let csr = parse_csr("csr_pem", &req.csr_pem)?;
        let claimed_type = device_type("device_type", &req.device_type)?;
        if req.hostname.len() > 253 || req.hostname.chars().any(char::is_control) {
            return Err(Error::invalid(
                "hostname",
                "use at most 253 printable characters",
            ));
        }
        let token = tokens::find_by_secret(&self.store, &req.token)
            .await?
            .ok_or_else(|| {
                Error::Forbidden("the enrollment token is not known; check the join command".into())
            })?;
        if let Some(existing) =
            devices::find_by_token_and_key(&self.store, &token.id, &csr.key_sha256).await?
        {
            return self.reissue_for_repeat(existing, &csr).await;
        }
        let now = now_ms();
        if let Some(why) = token.refusal(now) {
            return Err(Error::Forbidden(why));
        }
        let allowed = token.device_types();
        if !allowed.is_empty() && !allowed.contains(&claimed_type) {
            return Err(Error::Forbidden(format!(
                "this enrollment token admits device types {}, not {claimed_type:?}",
                allowed.join(", ")
            )));
        }
        let device_id = new_device_id();
        let issued = self.ca.issue_device(
            &csr.public_key,
            &device_id,
            self.cert_lifetime,
            OffsetDateTime::now_utc(),
        )?;
        let tags = req.tags.merged_under(&token.tags());
        let status = if token.approval {
            Status::Pending
        } else {
            Status::Accepted
        };
        let name = if req.hostname.is_empty() {
            device_id.clone()
        } else {
            req.hostname.clone()
        };
        let cert = record(&device_id, &csr.key_sha256, &issued, "enroll");
        let outcome = on_store!(&self.store, pool => {
            let mut tx = pool.begin().await?;
            let spent = sqlx::query(
                "UPDATE enrollment_tokens SET uses_left = uses_left - 1
                 WHERE id = $1 AND uses_left > 0 AND expires_at > $2 AND revoked_at IS NULL")
                .bind(&token.id).bind(now).execute(&mut *tx).await?.rows_affected();
            if spent == 1 {
                sqlx::query(
                    "INSERT INTO devices (id, name, device_type, hostname, status, public_key_sha256, enrollment_token_id, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)")
                    .bind(&device_id).bind(&name).bind(&claimed_type).bind(&req.hostname).bind(status.as_str())
                    .bind(&csr.key_sha256).bind(&token.id).bind(now).execute(&mut *tx).await?;
                for (k, v) in &tags.0 {
                    sqlx::query("INSERT INTO device_tags (device_id, key, value) VALUES ($1, $2, $3)")
                        .bind(&device_id).bind(k).bind(v).execute(&mut *tx).await?;
                }
                sqlx::query(
                    "INSERT INTO device_certificates (serial, device_id, fingerprint_sha256, public_key_sha256, not_before, not_after, issued_for, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                    .bind(&cert.serial).bind(&cert.device_id).bind(&cert.fingerprint_sha256).bind(&cert.public_key_sha256)
                    .bind(cert.not_before).bind(cert.not_after).bind(&cert.issued_for).bind(cert.created_at)
                    .execute(&mut *tx).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok::<u64, sqlx::Error>(spent)
        });
        match outcome {
            Ok(1) => Ok(Enrolled {
                device: devices::require(&self.store, &device_id).await?,
                certificate: issued,
                created: true,
            }),
            Ok(_) => {
                // Another enrollment took the last use (or the token expired) meanwhile.
                let fresh = tokens::get(&self.store, &token.id).await?.unwrap_or(token);
                Err(Error::Forbidden(fresh.refusal(now_ms()).unwrap_or_else(
                    || "the enrollment token cannot be used now".into(),
                )))
            }
            Err(e) if is_unique_violation(&e) => {
                // The same agent retried concurrently: answer the device the other request created.
                let existing =
                    devices::find_by_token_and_key(&self.store, &token.id, &csr.key_sha256)
                        .await?
                        .ok_or_else(|| {
                            Error::Internal("enrollment raced and lost its device".into())
                        })?;
                self.reissue_for_repeat(existing, &csr).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn reissue_for_repeat(&self, device: Device, csr: &Csr) -> Result<Enrolled> {
        if matches!(device.status(), Status::Revoked | Status::Decommissioned) {
            return Err(Error::Forbidden(format!(
                "device {} is {}; it cannot enroll again with the same key",
                device.id,
                device.status().as_str()
            )));
        }
        let issued = self.issue_and_record(&device.id, csr, "enroll").await?;
        Ok(Enrolled {
            device,
            certificate: issued,
            created: false,
        })
    }

    /// Issues a certificate for `csr` to an existing device and records it.
    async fn issue_and_record(&self, device_id: &str, csr: &Csr, why: &str) -> Result<Issued> {
        let issued = self.ca.issue_device(
            &csr.public_key,
            device_id,
            self.cert_lifetime,
            OffsetDateTime::now_utc(),
        )?;
        devices::record_certificate(
            &self.store,
            &record(device_id, &csr.key_sha256, &issued, why),
        )
        .await?;
        Ok(issued)
    }

    /// Issues a fresh certificate to an authenticated device.
    pub async fn renew(&self, device: &Device, csr_pem: &str) -> Result<Issued> {
        let csr = parse_csr("csr_pem", csr_pem)?;
        self.issue_and_record(&device.id, &csr, "renew").await
    }

    /// Re-certifies a device whose certificate expired within the grace period, for the same key.
    pub async fn recover(&self, certificate_pem: &str, csr_pem: &str) -> Result<(Device, Issued)> {
        if certificate_pem.len() > MAX_PEM_BYTES {
            return Err(Error::invalid(
                "certificate_pem",
                format!("is larger than {MAX_PEM_BYTES} bytes"),
            ));
        }
        let der = pem_to_der(certificate_pem)
            .ok_or_else(|| Error::invalid("certificate_pem", "is not a PEM certificate"))?;
        if !self.ca.signed(&der) {
            return Err(Error::Forbidden(
                "the certificate was not issued by this fleet's CA".into(),
            ));
        }
        let csr = parse_csr("csr_pem", csr_pem)?;
        let serial = serial_of(&der)
            .ok_or_else(|| Error::invalid("certificate_pem", "is not a readable certificate"))?;
        let record_ = devices::certificate(&self.store, &serial)
            .await?
            .ok_or_else(|| {
                Error::Forbidden("this certificate is not known to the server".into())
            })?;
        if record_.revoked_at.is_some() {
            return Err(Error::Forbidden("this certificate has been revoked".into()));
        }
        if record_.public_key_sha256 != csr.key_sha256 {
            return Err(Error::Forbidden(
                "the CSR is not for the certificate's key; recovery keeps the same key".into(),
            ));
        }
        let grace_ms = i64::try_from(self.recovery_grace.as_millis()).unwrap_or(i64::MAX);
        if now_ms() - record_.not_after > grace_ms {
            return Err(Error::Forbidden(format!(
                "the certificate expired more than {} ago; enroll the device again",
                crate::duration::format(self.recovery_grace)
            )));
        }
        let device = devices::require(&self.store, &record_.device_id).await?;
        if !matches!(device.status(), Status::Accepted | Status::Pending) {
            return Err(Error::Forbidden(format!(
                "device {} is {}",
                device.id,
                device.status().as_str()
            )));
        }
        let issued = self.issue_and_record(&device.id, &csr, "recover").await?;
        Ok((device, issued))
    }

    /// Revokes or decommissions a device and refuses its certificates from now on.
    pub async fn cut_off(&self, id: &str, to: Status) -> Result<Device> {
        let (device, serials) = devices::cut_off(&self.store, id, to).await?;
        self.revoked.insert_all(serials);
        let _ = self.revocations.send(device.id.clone());
        Ok(device)
    }

    /// The MQTT topic prefix of a device (the gateway or broker enforces it).
    pub fn topic_prefix(&self, device_id: &str) -> String {
        format!("drover/v1/devices/{device_id}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm, ca: bool) -> String {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
    }

    #[test]
    fn csrs_are_checked_and_reasons_named() {
        assert!(parse_csr("csr_pem", &csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, false)).is_ok());
        assert!(parse_csr("csr_pem", &csr_for(&rcgen::PKCS_ED25519, true)).is_ok());
        let e = parse_csr("csr_pem", &csr_for(&rcgen::PKCS_ECDSA_P384_SHA384, false)).unwrap_err();
        assert!(e.to_string().contains("P-256 or Ed25519"), "{e}");
        let e = parse_csr("csr_pem", "garbage").unwrap_err();
        assert!(e.to_string().starts_with("csr_pem: is not a PEM"), "{e}");
        let e = parse_csr("csr_pem", &"A".repeat(MAX_PEM_BYTES + 1)).unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        let good = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, false);
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        let mut chars: Vec<char> = lines[mid].chars().collect();
        chars[10] = if chars[10] == 'A' { 'B' } else { 'A' };
        lines[mid] = chars.into_iter().collect();
        assert!(
            parse_csr("csr_pem", &lines.join("\n")).is_err(),
            "a tampered CSR is refused"
        );
    }
}
