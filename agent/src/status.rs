//! `drover-agent status`: what this device is, read from the state directory alone (no network).
//! Fields carry the CONTRACT names; `--json` prints them as the top level of one object.

use drover_proto::{InstalledBundle, UpdateState};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::report::spool::{SPOOL_DIR, depth_on_disk};
use crate::state::StateDir;

/// The device's status as `status` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The device id.
    pub device_id: String,
    /// The device API address.
    pub server: String,
    /// The status the enrollment answer gave (`pending` or `accepted`).
    pub status: String,
    /// Where the MQTT client connects.
    pub mqtt_url: String,
    /// The device's topic prefix.
    pub mqtt_topic_prefix: String,
    /// `notAfter` of `device.crt`, RFC 3339 UTC.
    pub certificate_expires_at: String,
    /// Readings in the spool not yet acknowledged by the broker (read from the spool's files).
    pub spool_depth: u64,
    /// Committed bundles (`installed.json`).
    pub installed: Vec<InstalledBundle>,
    /// The state of the current or last update (`null` before the first).
    pub update_state: Option<UpdateState>,
}

impl Status {
    /// Reads the status from `state`; not enrolled is an error.
    pub fn read(state: &StateDir) -> Result<Status> {
        let enrollment = state.require_enrollment()?;
        let certificate = state.certificate()?;
        let spool_dir = state.file(SPOOL_DIR);
        let spool_depth =
            depth_on_disk(&spool_dir).map_err(|e| Error::io("read the spool", &spool_dir, e))?;
        Ok(Status {
            device_id: enrollment.device_id.to_string(),
            server: enrollment.server,
            status: enrollment.status,
            mqtt_url: enrollment.mqtt_url,
            mqtt_topic_prefix: enrollment.mqtt_topic_prefix,
            certificate_expires_at: certificate.not_after().to_string(),
            spool_depth,
            installed: state.installed()?.bundles,
            update_state: crate::update::UpdateStore::new(state)
                .read()?
                .update_state(),
        })
    }

    /// One `name: value` line per field.
    pub fn to_text(&self) -> String {
        let spool_depth = self.spool_depth.to_string();
        let installed = if self.installed.is_empty() {
            "none".to_owned()
        } else {
            self.installed
                .iter()
                .map(|b| format!("{} {} ({})", b.name, b.version, b.kind))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let update_state = self
            .update_state
            .map_or("none".to_owned(), |s| s.to_string());
        [
            ("device_id", &self.device_id),
            ("server", &self.server),
            ("status", &self.status),
            ("mqtt_url", &self.mqtt_url),
            ("mqtt_topic_prefix", &self.mqtt_topic_prefix),
            ("certificate_expires_at", &self.certificate_expires_at),
            ("spool_depth", &spool_depth),
            ("installed", &installed),
            ("update_state", &update_state),
        ]
        .iter()
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect()
    }

    /// One JSON object with the fields at the top level.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a status is plain strings and always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::enrolled_dir;

    #[test]
    fn status_reads_the_enrollment_and_the_certificate_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        let status = Status::read(&state).unwrap();
        assert_eq!(status.device_id, "01JD3Z8Q5V6W7X8Y9Z0A1B2C3D");
        assert_eq!(status.status, "pending");
        assert_eq!(status.certificate_expires_at, "2096-10-02T07:06:40Z");
        let json: serde_json::Value = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(json["mqtt_url"], "mqtts://127.0.0.1:8883");
        assert_eq!(json["certificate_expires_at"], "2096-10-02T07:06:40Z");
        assert_eq!(json["spool_depth"], 0);
        assert_eq!(json["installed"], serde_json::json!([]));
        assert_eq!(json["update_state"], serde_json::Value::Null);
        assert_eq!(json.as_object().unwrap().len(), 9);
        assert!(
            status
                .to_text()
                .contains("\nserver: https://127.0.0.1:8443\n")
        );
    }

    #[test]
    fn status_of_an_empty_directory_says_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let err = Status::read(&StateDir::new(dir.path())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not enrolled; run drover-agent enroll")
        );
    }
}
