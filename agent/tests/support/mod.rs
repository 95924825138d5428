//! Fixtures for the bundle tests: a fleet's root and signing keys, signed manifests and trust
//! documents, `.drover` files (well-formed through the agent's own writer, or crafted entry by
//! entry), and an enrolled device's state directory with just what bundle checks read.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use drover_agent::bundle::file::write_bundle;
use drover_agent::state::{ENROLLMENT_FILE, Enrollment, INSTALLED_FILE, Installed, TRUST_FILE};
use drover_proto::{
    DeviceId, Envelope, InstalledBundle, Installer, KeyStatus, Kind, Manifest, Payload,
    PayloadFormat, PublicKey, SafeName, Sha256, SigningKey, SigningKeyEntry, Timestamp,
    TrustDocument, Version,
};

pub const DEVICE_TYPE: &str = "rpi4";

pub fn t(text: &str) -> Timestamp {
    Timestamp::parse(text).expect("a fixture time")
}

/// The moment the library-level tests run at.
pub fn now() -> Timestamp {
    t("2026-06-01T00:00:00Z")
}

pub fn root() -> SigningKey {
    SigningKey::from_bytes(&[100; 32])
}

pub fn signer() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

pub fn stranger() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

pub fn entry(key: &SigningKey) -> SigningKeyEntry {
    let public = PublicKey::from(key);
    SigningKeyEntry {
        keyid: public.key_id(),
        public_key: public,
        kinds: vec![],
        status: KeyStatus::Active,
    }
}

/// Trust document `version`, root `root()`, signing key `signer()`.
pub fn trust(version: u64) -> TrustDocument {
    TrustDocument {
        schema: 1,
        version,
        issued_at: t("2025-01-01T00:00:00Z"),
        expires_at: t("2100-01-01T00:00:00Z"),
        root_public_key: PublicKey::from(&root()),
        signing_keys: vec![entry(&signer())],
        revoked_keyids: vec![],
        ca_certificates_pem: vec![],
    }
}

pub fn signed_trust(version: u64) -> Envelope {
    trust(version)
        .sign(&root())
        .expect("a fixture trust document")
}

/// The manifest of `detector` 1.2.0 for `rpi4`, listing `payloads` by content.
pub fn manifest(payloads: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        schema: 1,
        bundle_id: "01JD3Z0000000000000000000A".into(),
        name: SafeName::parse("detector").expect("a fixture name"),
        kind: Kind::Model,
        version: Version::parse("1.2.0").expect("a fixture version"),
        device_types: vec![DEVICE_TYPE.into(), "jetson-nano".into()],
        installer: Installer::Files,
        created_at: t("2025-02-01T00:00:00Z"),
        expires_at: t("2100-01-01T00:00:00Z"),
        allow_downgrade: false,
        payloads: payloads
            .iter()
            .map(|(name, bytes)| Payload {
                name: SafeName::parse(name).expect("a fixture payload name"),
                size: bytes.len() as u64,
                sha256: Sha256::digest(bytes),
                format: PayloadFormat::File,
            })
            .collect(),
    }
}

pub const MODEL: &[u8] = b"the model's weights, or something like them";

/// A bundle's parts, to alter before writing.
pub struct Parts {
    pub envelope: Envelope,
    pub trust: Envelope,
    pub payloads: Vec<(String, Vec<u8>)>,
}

impl Parts {
    /// A valid bundle: `manifest(MODEL)` signed by `signer()`, trust document 1.
    pub fn valid() -> Parts {
        Parts::signed(&manifest(&[("model.onnx", MODEL)]), &signer())
    }

    pub fn signed(manifest: &Manifest, key: &SigningKey) -> Parts {
        Parts {
            envelope: manifest.sign(key).expect("a fixture manifest"),
            trust: signed_trust(1),
            payloads: vec![("model.onnx".into(), MODEL.to_vec())],
        }
    }

    /// Writes `dir/NAME` through the agent's own writer.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let sources = dir.join(format!("{name}.payloads"));
        std::fs::create_dir_all(&sources).expect("a fixture directory");
        let payloads: Vec<(SafeName, PathBuf)> = self
            .payloads
            .iter()
            .map(|(payload, bytes)| {
                let path = sources.join(payload);
                std::fs::write(&path, bytes).expect("a fixture payload");
                (
                    SafeName::parse(payload).expect("a fixture payload name"),
                    path,
                )
            })
            .collect();
        let path = dir.join(name);
        let file = std::fs::File::create(&path).expect("a fixture bundle");
        write_bundle(file, &self.envelope, &self.trust, &payloads).expect("a fixture bundle");
        path
    }
}

/// One entry of a hand-made tar: any name, any type, any declared size.
pub struct RawEntry {
    pub name: String,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
}

impl RawEntry {
    pub fn file(name: &str, data: impl Into<Vec<u8>>) -> RawEntry {
        RawEntry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            data: data.into(),
        }
    }
}

/// Writes a tar of `entries` with headers made by hand (tar-rs's builder refuses `..` names).
pub fn write_raw(dir: &Path, name: &str, entries: &[RawEntry]) -> PathBuf {
    let mut out = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let bytes = e.name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_entry_type(e.kind);
        header.set_size(e.data.len() as u64);
        header.set_mode(0o644);
        if e.kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").expect("a fixture link");
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    let path = dir.join(name);
    std::fs::write(&path, out).expect("a fixture bundle");
    path
}

/// The JSON entries of a valid bundle, for hand-made tars.
pub fn valid_json() -> (String, String) {
    let parts = Parts::valid();
    (parts.envelope.to_json(), parts.trust.to_json())
}

/// A state directory with what bundle checks read: `enrollment.json` (device type `rpi4`, root
/// `root()`), `trust.json` holding `held`, and `installed.json` when given.
pub fn enrolled_state(dir: &Path, held: &Envelope, installed: Option<&Installed>) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("a fixture state directory");
    let enrollment = Enrollment {
        device_id: DeviceId::parse("01JD3Z8Q5V6W7X8Y9Z0A1B2C3D").expect("a fixture id"),
        server: "https://127.0.0.1:8443".into(),
        status: "accepted".into(),
        mqtt_url: "mqtts://127.0.0.1:8883".into(),
        mqtt_topic_prefix: "drover/v1/devices/01JD3Z8Q5V6W7X8Y9Z0A1B2C3D/".into(),
        root_public_key: PublicKey::from(&root()),
        enrolled_at: t("2025-01-15T00:00:00Z"),
        device_type: Some(DEVICE_TYPE.into()),
    };
    std::fs::write(
        state.join(ENROLLMENT_FILE),
        serde_json::to_vec(&enrollment).expect("a fixture enrollment"),
    )
    .expect("a fixture enrollment");
    std::fs::write(state.join(TRUST_FILE), held.to_json()).expect("a fixture trust.json");
    if let Some(installed) = installed {
        std::fs::write(
            state.join(INSTALLED_FILE),
            serde_json::to_vec(installed).expect("a fixture installed.json"),
        )
        .expect("a fixture installed.json");
    }
    state
}

/// `installed.json` with `detector` at `version`.
pub fn installed(version: &str) -> Installed {
    Installed {
        signed_time_floor: Timestamp::UNIX_EPOCH,
        bundles: vec![InstalledBundle {
            name: SafeName::parse("detector").expect("a fixture name"),
            kind: Kind::Model,
            version: Version::parse(version).expect("a fixture version"),
        }],
        kept: Vec::new(),
    }
}

/// The root public key as PEM, for `--root-key`.
pub fn write_root_key(dir: &Path) -> PathBuf {
    let path = dir.join("root.pub");
    std::fs::write(
        &path,
        PublicKey::from(&root()).to_pem().expect("a fixture key"),
    )
    .expect("a fixture key file");
    path
}

/// Files in `state/staging` other than its lock.
pub fn staged(state: &Path) -> Vec<String> {
    match std::fs::read_dir(state.join("staging")) {
        Err(_) => vec![],
        Ok(entries) => entries
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n != ".lock")
            .collect(),
    }
}
