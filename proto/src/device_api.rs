//! Bodies of the device API (`/device/v1`, HTTPS with mutual TLS) as both
//! sides see them. Requests are strict (unknown fields are refused by the
//! server); answers tolerate new fields so older agents keep working.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::manifest::{SafeName, Sha256};

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

/// `GET /device/v1/update`: the update offered to this device (204 when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    /// The rollout offering the update; status reports go to `/device/v1/update/{rollout_id}/status`.
    pub rollout_id: String,
    /// The bundle offered.
    pub bundle_id: String,
    /// The signed manifest (DSSE envelope); nothing here is trusted before it verifies.
    pub envelope: Envelope,
    /// Where to fetch each payload the manifest lists.
    pub payloads: Vec<OfferedPayload>,
}

/// One payload of an [`UpdateOffer`]: what the manifest says of it, and where to fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedPayload {
    /// The payload's name in the manifest.
    pub name: SafeName,
    /// Its exact size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256,
    /// A path relative to the device API, e.g. `/device/v1/blobs/{sha256}` (`Range` supported).
    pub url: String,
}

/// `POST /device/v1/update/{rollout_id}/status`: one report from the device's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatusReport {
    /// Rises with each report of a rollout, so a retried older report never overwrites a newer one.
    pub seq: u64,
    /// The update state.
    pub state: crate::UpdateState,
    /// What happened, in a sentence.
    #[serde(default)]
    pub detail: String,
    /// The version of the bundle the device runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tail of the install and health logs (failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// The server's answer to an [`UpdateStatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatusRecorded {
    /// False when the report was older than one already stored, or came after a final state.
    pub recorded: bool,
    /// The state stored now.
    pub state: String,
    /// The seq stored now.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_offer_reads_the_contract_form() {
        let envelope =
            Envelope::sign("t", b"x".to_vec(), &crate::SigningKey::from_bytes(&[1; 32])).unwrap();
        let digest = Sha256::digest(b"hello");
        let value = serde_json::json!({
            "rollout_id": "r1",
            "bundle_id": "b1",
            "envelope": serde_json::from_str::<serde_json::Value>(&envelope.to_json()).unwrap(),
            "payloads": [{"name": "model.onnx", "size": 5, "sha256": digest.to_string(),
                          "url": format!("/device/v1/blobs/{digest}")}],
        });
        let offer: UpdateOffer = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(offer.payloads[0].name.as_str(), "model.onnx");
        assert_eq!(offer.payloads[0].sha256, digest);
        assert_eq!(offer.envelope, envelope);
        assert_eq!(serde_json::to_value(&offer).unwrap(), value);
        let mut bad = value;
        bad["payloads"][0]["name"] = "../x".into();
        assert!(serde_json::from_value::<UpdateOffer>(bad).is_err());
    }
}
