//! The state directory (`/var/lib/drover-agent` by default) and what lives in it. Every file is
//! replaced atomically; `enrollment.json` is written last by `enroll`, so its presence means the
//! key, certificate, CA and trust document beside it are complete.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use drover_proto::{
    DeviceId, Envelope, InstalledBundle, PublicKey, Timestamp, TrustStore, Version,
};
use serde::{Deserialize, Serialize};

use crate::atomic_write::{PUBLIC, write_atomic};
use crate::error::{Error, Result};
use crate::identity::{DeviceCertificate, DeviceKey, certificate_der};

/// The device's private key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "device.key";
/// The device certificate (PEM), replaced on renewal.
pub const CERT_FILE: &str = "device.crt";
/// The fleet CA pinned at enrollment (PEM).
pub const CA_FILE: &str = "ca.crt";
/// The trust document envelope (DSSE JSON).
pub const TRUST_FILE: &str = "trust.json";
/// The owner's configuration.
pub const CONFIG_FILE: &str = "agent.toml";
/// The enrollment record; its presence is the commit point of `enroll`.
pub const ENROLLMENT_FILE: &str = "enrollment.json";
/// Installed bundle versions and the newest signed time seen ([`Installed`]).
pub const INSTALLED_FILE: &str = "installed.json";
/// Payloads being downloaded (`SHA256.part`) or verified and waiting for an installer (`SHA256`).
pub const STAGING_DIR: &str = "staging";

/// What `enroll` learned, as stored in `enrollment.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The device's id.
    pub device_id: DeviceId,
    /// The device API address (`https://HOST:PORT`).
    pub server: String,
    /// The device's status in the enrollment answer (`pending` or `accepted`).
    pub status: String,
    /// Where the MQTT client connects.
    pub mqtt_url: String,
    /// The device's MQTT topic prefix, ending in `/`.
    pub mqtt_topic_prefix: String,
    /// The pinned root key of the trust document (replaced when a root change is accepted).
    pub root_public_key: PublicKey,
    /// When the enrollment completed.
    pub enrolled_at: Timestamp,
    /// The device type claimed at enrollment, which bundles must list. Absent in records written
    /// before bundles were verified on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
}

impl Enrollment {
    /// The device type, or a state error saying how to record it.
    pub fn require_device_type(&self, state: &StateDir) -> Result<&str> {
        self.device_type.as_deref().ok_or_else(|| {
            Error::State(format!(
                "{} does not record this device's type (it was written by an older agent); add \"device_type\": \"TYPE\" with the type given at enrollment",
                state.file(ENROLLMENT_FILE).display()
            ))
        })
    }
}

/// What `installed.json` holds: the bundles installed, one per name, and the newest signed time
/// this device has seen, below which its clock is never trusted for expiry checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// The latest `created_at` of a verified manifest or `issued_at` of a taken trust document.
    pub signed_time_floor: Timestamp,
    /// The committed version of each installed bundle name.
    #[serde(default)]
    pub bundles: Vec<InstalledBundle>,
    /// For each bundle name, the release or slot kept from the commit before, which a rollback
    /// returns to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptRelease>,
}

/// The previous committed version of a bundle, kept on the device for a server-ordered rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptRelease {
    /// Bundle name.
    pub name: String,
    /// The version before the current one.
    pub version: Version,
    /// The rollout that installed the current one (a rollback names it).
    pub rollout_id: Option<String>,
}

impl Default for Installed {
    fn default() -> Self {
        Installed {
            signed_time_floor: Timestamp::UNIX_EPOCH,
            bundles: Vec::new(),
            kept: Vec::new(),
        }
    }
}

impl Installed {
    /// The installed version of each bundle name, as the version check takes them.
    pub fn versions(&self) -> BTreeMap<String, Version> {
        self.bundles
            .iter()
            .map(|b| (b.name.to_string(), b.version.clone()))
            .collect()
    }

    /// The committed version of `name`.
    pub fn version_of(&self, name: &str) -> Option<&Version> {
        self.bundles
            .iter()
            .find(|b| b.name.as_str() == name)
            .map(|b| &b.version)
    }

    /// Records `bundle` as committed, keeping `previous` (and the rollout) for a rollback.
    pub fn commit(
        &mut self,
        bundle: InstalledBundle,
        previous: Option<Version>,
        rollout_id: Option<String>,
    ) {
        let name = bundle.name.to_string();
        self.bundles.retain(|b| b.name != bundle.name);
        self.bundles.push(bundle);
        self.bundles
            .sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        self.kept.retain(|k| k.name != name);
        if let Some(version) = previous {
            self.kept.push(KeptRelease {
                name,
                version,
                rollout_id,
            });
        }
    }

    /// Records a rollback of `name` to its kept version: nothing is kept after it.
    pub fn roll_back(&mut self, name: &str, version: Version) {
        if let Some(b) = self.bundles.iter_mut().find(|b| b.name.as_str() == name) {
            b.version = version;
        }
        self.kept.retain(|k| k.name != name);
    }

    /// The device's effective clock: the later of `now` and the signed-time floor.
    pub fn clock(&self, now: Timestamp) -> Timestamp {
        now.max(self.signed_time_floor)
    }
}

/// An enrolled device's state, loaded and cross-checked.
#[derive(Debug)]
pub struct Enrolled {
    /// `enrollment.json`.
    pub enrollment: Enrollment,
    /// `device.key`.
    pub key: DeviceKey,
    /// `device.crt`.
    pub certificate: DeviceCertificate,
    /// `ca.crt`, as DER.
    pub ca_der: Vec<u8>,
    /// `trust.json`, signatures re-checked against the pinned root.
    pub trust: TrustStore,
}

/// The agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (not created yet).
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `name` inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates the directory (and its parents) if missing; new directories get mode 0755, the
    /// key inside carries its own 0600.
    pub fn create(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.root)
            .map_err(|e| Error::io("create the state directory", &self.root, e))
    }

    /// Reads `name` as text, or `None` when it does not exist.
    pub fn read_optional(&self, name: &str) -> Result<Option<String>> {
        let path = self.file(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Reads `name`, which an enrolled device must have.
    fn read_required(&self, name: &str) -> Result<String> {
        self.read_optional(name)?.ok_or_else(|| {
            Error::State(format!(
                "{} is missing although the device is enrolled; restore it from a backup or remove {} and enroll again",
                self.file(name).display(),
                self.root.display()
            ))
        })
    }

    /// `enrollment.json`, or `None` when the device is not enrolled.
    pub fn enrollment(&self) -> Result<Option<Enrollment>> {
        let Some(text) = self.read_optional(ENROLLMENT_FILE)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| self.damaged(ENROLLMENT_FILE, &e.to_string()))
    }

    /// `enrollment.json`, or [`Error::NotEnrolled`].
    pub fn require_enrollment(&self) -> Result<Enrollment> {
        self.enrollment()?.ok_or_else(|| Error::NotEnrolled {
            state_dir: self.root.clone(),
        })
    }

    /// `device.crt`.
    pub fn certificate(&self) -> Result<DeviceCertificate> {
        DeviceCertificate::from_pem(&self.read_required(CERT_FILE)?)
            .map_err(|e| self.damaged(CERT_FILE, &e))
    }

    /// `enrollment.json` and the trust store it pins (`trust.json`, signatures re-checked), without
    /// the key and certificate: what checking a bundle needs.
    pub fn trust_store(&self) -> Result<(Enrollment, TrustStore)> {
        let enrollment = self.require_enrollment()?;
        let trust = self.read_trust(&enrollment)?;
        Ok((enrollment, trust))
    }

    fn read_trust(&self, enrollment: &Enrollment) -> Result<TrustStore> {
        let envelope = Envelope::from_json(self.read_required(TRUST_FILE)?.as_bytes())
            .map_err(|e| self.damaged(TRUST_FILE, &e.to_string()))?;
        TrustStore::restore(enrollment.root_public_key, &envelope)
            .map_err(|e| self.damaged(TRUST_FILE, &e.to_string()))
    }

    /// `installed.json`; nothing installed yet (and an epoch floor) when it does not exist.
    pub fn installed(&self) -> Result<Installed> {
        match self.read_optional(INSTALLED_FILE)? {
            None => Ok(Installed::default()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| self.damaged(INSTALLED_FILE, &e.to_string())),
        }
    }

    /// Replaces `installed.json` atomically.
    pub fn write_installed(&self, installed: &Installed) -> Result<()> {
        let path = self.file(INSTALLED_FILE);
        let bytes = serde_json::to_vec_pretty(installed)
            .expect("installed.json is strings and lists and always serializes");
        write_atomic(&path, &bytes, PUBLIC).map_err(|e| Error::io("write", &path, e))
    }

    /// Everything an enrolled device has, each file parsed and checked against the others: the
    /// certificate is for our key and from the pinned CA, the trust document is signed by the root.
    pub fn load(&self) -> Result<Enrolled> {
        let enrollment = self.require_enrollment()?;
        let key = DeviceKey::from_pem(&self.read_required(KEY_FILE)?)
            .map_err(|e| self.damaged(KEY_FILE, &e.to_string()))?;
        let certificate = self.certificate()?;
        let ca_der = certificate_der(&self.read_required(CA_FILE)?)
            .map_err(|e| self.damaged(CA_FILE, &e))?;
        certificate
            .check_issued_for(&key, &ca_der)
            .map_err(|e| self.damaged(CERT_FILE, &e))?;
        let trust = self.read_trust(&enrollment)?;
        Ok(Enrolled {
            enrollment,
            key,
            certificate,
            ca_der,
            trust,
        })
    }

    fn damaged(&self, name: &str, why: &str) -> Error {
        Error::State(format!(
            "{} is damaged ({why}); restore it, or remove {} and enroll again",
            self.file(name).display(),
            self.root.display()
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::atomic_write::PRIVATE;
    use drover_proto::{SigningKey, TrustDocument};

    pub(crate) fn root_key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    /// A trust envelope signed by `root_key()`, valid from 2024 to 2124.
    pub(crate) fn trust_envelope() -> Envelope {
        TrustDocument {
            schema: 1,
            version: 1,
            issued_at: Timestamp::parse("2024-01-01T00:00:00Z").unwrap(),
            expires_at: Timestamp::parse("2124-01-01T00:00:00Z").unwrap(),
            root_public_key: PublicKey::from(&root_key()),
            signing_keys: vec![],
            revoked_keyids: vec![],
            ca_certificates_pem: vec![],
        }
        .sign(&root_key())
        .unwrap()
    }

    pub(crate) fn enrollment() -> Enrollment {
        Enrollment {
            device_id: DeviceId::parse("01JD3Z8Q5V6W7X8Y9Z0A1B2C3D").unwrap(),
            server: "https://127.0.0.1:8443".into(),
            status: "pending".into(),
            mqtt_url: "mqtts://127.0.0.1:8883".into(),
            mqtt_topic_prefix: "drover/v1/devices/01JD3Z8Q5V6W7X8Y9Z0A1B2C3D/".into(),
            root_public_key: PublicKey::from(&root_key()),
            enrolled_at: Timestamp::parse("2024-11-22T18:00:00Z").unwrap(),
            device_type: Some("rpi4".into()),
        }
    }

    /// A complete, consistent state directory; returns it with the key.
    pub(crate) fn enrolled_dir(dir: &Path) -> (StateDir, DeviceKey) {
        let state = StateDir::new(dir);
        let key = DeviceKey::generate().unwrap();
        let (cert, ca) = crate::identity::tests::issue(&key, 1_700_000_000, 4_000_000_000);
        write_atomic(&state.file(KEY_FILE), key.to_pem().as_bytes(), PRIVATE).unwrap();
        write_atomic(&state.file(CERT_FILE), cert.as_bytes(), PUBLIC).unwrap();
        write_atomic(&state.file(CA_FILE), ca.as_bytes(), PUBLIC).unwrap();
        write_atomic(
            &state.file(TRUST_FILE),
            trust_envelope().to_json().as_bytes(),
            PUBLIC,
        )
        .unwrap();
        write_atomic(
            &state.file(ENROLLMENT_FILE),
            &serde_json::to_vec(&enrollment()).unwrap(),
            PUBLIC,
        )
        .unwrap();
        (state, key)
    }

    #[test]
    fn a_complete_state_directory_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (state, key) = enrolled_dir(dir.path());
        let enrolled = state.load().unwrap();
        assert_eq!(enrolled.enrollment, enrollment());
        assert_eq!(enrolled.key.public_key_raw(), key.public_key_raw());
        assert_eq!(
            enrolled.certificate.not_after().unix_seconds(),
            4_000_000_000
        );
        assert_eq!(enrolled.trust.current().unwrap().document().version, 1);
    }

    #[test]
    fn an_empty_directory_is_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(state.enrollment().unwrap(), None);
        let err = state.load().unwrap_err();
        assert!(matches!(err, Error::NotEnrolled { .. }));
        assert!(
            err.to_string()
                .starts_with("not enrolled; run drover-agent enroll")
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn enrollment_json_uses_the_contract_names() {
        let value = serde_json::to_value(enrollment()).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "device_id",
                "device_type",
                "enrolled_at",
                "mqtt_topic_prefix",
                "mqtt_url",
                "root_public_key",
                "server",
                "status"
            ]
        );
        assert_eq!(value["enrolled_at"], "2024-11-22T18:00:00Z");
    }

    #[test]
    fn an_older_enrollment_record_without_device_type_still_loads() {
        let mut value = serde_json::to_value(enrollment()).unwrap();
        value.as_object_mut().unwrap().remove("device_type");
        let record: Enrollment = serde_json::from_value(value).unwrap();
        assert_eq!(record.device_type, None);
        let dir = tempfile::tempdir().unwrap();
        let err = record
            .require_device_type(&StateDir::new(dir.path()))
            .unwrap_err();
        assert!(err.to_string().contains("\"device_type\""), "{err}");
    }

    #[test]
    fn installed_json_defaults_to_nothing_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(state.installed().unwrap(), Installed::default());
        let installed = Installed {
            signed_time_floor: Timestamp::parse("2025-01-01T00:00:00Z").unwrap(),
            bundles: vec![InstalledBundle {
                name: drover_proto::SafeName::parse("detector").unwrap(),
                kind: drover_proto::Kind::Model,
                version: Version::parse("1.2.0").unwrap(),
            }],
            kept: Vec::new(),
        };
        state.write_installed(&installed).unwrap();
        assert_eq!(state.installed().unwrap(), installed);
        assert_eq!(
            installed.versions()["detector"],
            Version::parse("1.2.0").unwrap()
        );
        assert_eq!(
            installed.clock(Timestamp::UNIX_EPOCH),
            installed.signed_time_floor
        );
        fs::write(state.file(INSTALLED_FILE), "{").unwrap();
        let err = state.installed().unwrap_err().to_string();
        assert!(err.contains("installed.json is damaged"), "{err}");
    }

    #[test]
    fn a_missing_or_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        fs::remove_file(state.file(TRUST_FILE)).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("trust.json is missing"), "{err}");

        let (state, _) = enrolled_dir(dir.path());
        fs::write(state.file(CERT_FILE), "garbage").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("device.crt is damaged"), "{err}");

        let (state, _) = enrolled_dir(dir.path());
        fs::write(state.file(ENROLLMENT_FILE), "{}").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("enrollment.json is damaged"), "{err}");
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        let other = DeviceKey::generate().unwrap();
        write_atomic(&state.file(KEY_FILE), other.to_pem().as_bytes(), PRIVATE).unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("different public key"), "{err}");
    }

    #[test]
    fn a_trust_document_not_signed_by_the_pinned_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = enrolled_dir(dir.path());
        let mut record = enrollment();
        record.root_public_key = PublicKey::from(&SigningKey::from_bytes(&[7; 32]));
        write_atomic(
            &state.file(ENROLLMENT_FILE),
            &serde_json::to_vec(&record).unwrap(),
            PUBLIC,
        )
        .unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("trust.json is damaged"), "{err}");
    }
}
