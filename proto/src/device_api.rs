//! Bodies of the device API (`/device/v1`, HTTPS with mutual TLS) as both
//! sides see them. Requests are strict (unknown fields are refused by the
//! server); answers tolerate new fields so older agents keep working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// `POST /device/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token's secret.
    pub token: String,
    /// A PKCS#10 CSR (PEM) for the device's own key (P-256 or Ed25519).
    pub csr_pem: String,
    /// The device type the device claims.
    pub device_type: String,
    /// The device's host name, for operators.
    #[serde(default)]
    pub hostname: String,
    /// Tags the device claims; the token's tags win.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device's id (alphanumeric).
    pub device_id: String,
    /// `pending` (waits for an operator) or `accepted`.
    pub status: String,
    /// The device certificate (PEM).
    pub certificate_pem: String,
    /// The fleet CA certificate (PEM) that signs server and device certificates.
    pub ca_pem: String,
    /// Where the device's MQTT client connects (`mqtts://HOST:PORT`).
    pub mqtt_url: String,
    /// The device's topic prefix, ending in `/`.
    pub mqtt_topic_prefix: String,
    /// The current trust document, signed by the root key.
    pub trust_envelope: Envelope,
    /// The root public key to pin (standard base64 of the raw 32 bytes).
    pub root_public_key: String,
}

/// `POST /device/v1/renew` (client certificate required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// A CSR (PEM) for the device's key.
    pub csr_pem: String,
}

/// `POST /device/v1/recover` (no client certificate): for a certificate that
/// expired within the grace period, with a CSR for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    /// The expired certificate (PEM).
    pub certificate_pem: String,
    /// A CSR (PEM) for the same key.
    pub csr_pem: String,
}

/// The answer to a renewal or recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The new device certificate (PEM).
    pub certificate_pem: String,
}

/// `GET /device/v1/ca`: the fleet CA, fetched before enrollment and checked
/// against the `--ca-hash` pin before any secret is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaResponse {
    /// The fleet CA certificate (PEM).
    pub ca_pem: String,
}
