//! Bundle verification against a trusted document and the device's facts, and the streaming check of
//! payload bytes. A `VerifiedManifest` can only come out of `verify_bundle`, so code that installs
//! cannot skip a check; a `PayloadHasher` fails as soon as bytes exceed the declared size.

use std::collections::BTreeMap;

use sha2::Digest as _;

use crate::envelope::{Envelope, KeyId};
use crate::manifest::{
    Kind, MANIFEST_PAYLOAD_TYPE, Manifest, ManifestError, Payload, SafeName, Sha256,
};
use crate::timestamp::Timestamp;
use crate::trust::TrustedDocument;
use crate::version::Version;

/// What the device knows about itself when it checks a bundle.
#[derive(Clone, Copy, Debug)]
pub struct DeviceFacts<'a> {
    /// The device type it enrolled with.
    pub device_type: &'a str,
    /// Installed version of each bundle name.
    pub installed: &'a BTreeMap<String, Version>,
    /// The device's own clock.
    pub now: Timestamp,
    /// The newest signed time it has seen (`issued_at`, `created_at`).
    pub signed_time_floor: Timestamp,
}

/// Why a bundle was refused; each variant is one check, named in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The envelope does not hold a manifest.
    #[error("signature check failed: the envelope carries `{0}`, not a bundle manifest")]
    WrongPayloadType(String),
    /// No signature names a key of the trust document.
    #[error(
        "signature check failed: the bundle is signed by key {keyid}, which the trust document does not list"
    )]
    UnknownKey {
        /// The `keyid` hint of the first signature (may be empty).
        keyid: String,
    },
    /// The bundle's only signatures are by revoked keys.
    #[error("signature check failed: the bundle is signed by key {keyid}, which is revoked")]
    RevokedKey {
        /// The revoked key.
        keyid: KeyId,
    },
    /// A listed key's signature does not verify over this envelope.
    #[error(
        "signature check failed: the signature by key {keyid} does not match the manifest (altered or corrupt)"
    )]
    BadSignature {
        /// The key whose signature failed.
        keyid: KeyId,
    },
    /// The signed manifest does not parse or breaks a manifest rule.
    #[error("manifest check failed: {0}")]
    Manifest(#[from] ManifestError),
    /// Every valid signer is restricted to other kinds.
    #[error("signature check failed: key {keyid} may not sign {kind} bundles")]
    KeyNotAllowedForKind {
        /// The signer.
        keyid: KeyId,
        /// The manifest's kind.
        kind: Kind,
    },
    /// The bundle is not for this device type.
    #[error(
        "device type check failed: the bundle is for {allowed:?}, and this device is `{device_type}`"
    )]
    WrongDeviceType {
        /// This device's type.
        device_type: String,
        /// The manifest's `device_types`.
        allowed: Vec<String>,
    },
    /// The trust document held has expired.
    #[error(
        "expiry check failed: the trust document expired at {expires_at} and the device clock is {clock}; fetch a new trust document"
    )]
    TrustExpired {
        /// The trust document's `expires_at`.
        expires_at: Timestamp,
        /// The effective clock.
        clock: Timestamp,
    },
    /// The manifest has expired.
    #[error(
        "expiry check failed: the manifest expired at {expires_at} and the device clock is {clock}"
    )]
    Expired {
        /// The manifest's `expires_at`.
        expires_at: Timestamp,
        /// The effective clock (the later of the device clock and the newest signed time seen).
        clock: Timestamp,
    },
    /// An older version than the installed one, without `allow_downgrade`.
    #[error(
        "version check failed: {name} {offered} is older than the installed {installed} and the bundle does not allow downgrade"
    )]
    Downgrade {
        /// Bundle name.
        name: String,
        /// Installed version (boxed to keep the error small).
        installed: Box<Version>,
        /// Version offered.
        offered: Box<Version>,
    },
    /// The same version (by semver precedence) is already installed.
    #[error("version check failed: {name} {version} is already installed")]
    AlreadyInstalled {
        /// Bundle name.
        name: String,
        /// The version installed and offered.
        version: Version,
    },
}

impl VerifyError {
    /// The short name of the failed check: `signature`, `manifest`, `device_type`, `expiry` or `version`.
    pub fn check(&self) -> &'static str {
        match self {
            VerifyError::WrongPayloadType(_)
            | VerifyError::UnknownKey { .. }
            | VerifyError::RevokedKey { .. }
            | VerifyError::BadSignature { .. }
            | VerifyError::KeyNotAllowedForKind { .. } => "signature",
            VerifyError::Manifest(_) => "manifest",
            VerifyError::WrongDeviceType { .. } => "device_type",
            VerifyError::TrustExpired { .. } | VerifyError::Expired { .. } => "expiry",
            VerifyError::Downgrade { .. } | VerifyError::AlreadyInstalled { .. } => "version",
        }
    }
}

/// A manifest that passed every check of `verify_bundle`; only that function makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    signer: KeyId,
    signed_time_floor: Timestamp,
}

impl VerifiedManifest {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The trust document key whose signature was accepted.
    pub fn signer(&self) -> &KeyId {
        &self.signer
    }

    /// The new newest-signed-time floor to persist: the old one, the manifest's `created_at` and
    /// the trust document's `issued_at`, whichever is latest.
    pub fn signed_time_floor(&self) -> Timestamp {
        self.signed_time_floor
    }

    /// A checker for the payload called `name`, if the manifest lists it.
    pub fn payload_hasher(&self, name: &str) -> Option<PayloadHasher> {
        self.manifest.payload(name).map(PayloadHasher::new)
    }
}

/// Checks a manifest envelope, in order: (a) signature by a listed, unrevoked key allowed for the
/// manifest's kind, (b) manifest schema, (c) device type, (d) expiry of the trust document and the
/// manifest against the later of `now` and the floor, (e) version against the installed one.
pub fn verify_bundle(
    trust: &TrustedDocument,
    envelope: &Envelope,
    facts: &DeviceFacts<'_>,
) -> Result<VerifiedManifest, VerifyError> {
    check_bundle(
        trust,
        envelope,
        Some((facts.device_type, facts.installed)),
        facts.now,
        facts.signed_time_floor,
    )
}

/// Checks a manifest envelope as [`verify_bundle`] does except for device type and version, which
/// need a device: for looking at a bundle file away from one (`drover-agent verify --root-key`).
/// Its result must never be installed; `verify_bundle` is the check before an install.
pub fn verify_bundle_without_device(
    trust: &TrustedDocument,
    envelope: &Envelope,
    now: Timestamp,
    signed_time_floor: Timestamp,
) -> Result<VerifiedManifest, VerifyError> {
    check_bundle(trust, envelope, None, now, signed_time_floor)
}

/// The checks of `verify_bundle`, in its order; `device` is the device type and installed
/// versions, and `None` skips (c) and (e).
fn check_bundle(
    trust: &TrustedDocument,
    envelope: &Envelope,
    device: Option<(&str, &BTreeMap<String, Version>)>,
    now: Timestamp,
    signed_time_floor: Timestamp,
) -> Result<VerifiedManifest, VerifyError> {
    let document = trust.document();

    // (a) signature, before any byte of the payload is parsed.
    if envelope.payload_type() != MANIFEST_PAYLOAD_TYPE {
        return Err(VerifyError::WrongPayloadType(
            envelope.payload_type().to_owned(),
        ));
    }
    let signers: Vec<_> = document
        .signing_keys
        .iter()
        .filter(|entry| !document.is_revoked(&entry.keyid))
        .filter(|entry| envelope.is_signed_by(&entry.public_key))
        .collect();
    if signers.is_empty() {
        return Err(explain_missing_signature(trust, envelope));
    }

    // (b) manifest schema.
    let manifest = Manifest::from_json(envelope.payload())?;

    // (a, continued) the signer's kinds must allow the manifest's kind.
    let signer = match signers.iter().find(|entry| entry.allows(manifest.kind)) {
        Some(entry) => entry.keyid,
        None => {
            return Err(VerifyError::KeyNotAllowedForKind {
                keyid: signers[0].keyid,
                kind: manifest.kind,
            });
        }
    };

    // (c) device type.
    if let Some((device_type, _)) = device
        && !manifest.device_types.iter().any(|t| t == device_type)
    {
        return Err(VerifyError::WrongDeviceType {
            device_type: device_type.to_owned(),
            allowed: manifest.device_types.clone(),
        });
    }

    // (d) expiry, against a clock that never runs behind what was signed already.
    let clock = now.max(signed_time_floor).max(document.issued_at);
    if document.expires_at <= clock {
        return Err(VerifyError::TrustExpired {
            expires_at: document.expires_at,
            clock,
        });
    }
    if manifest.expires_at <= clock {
        return Err(VerifyError::Expired {
            expires_at: manifest.expires_at,
            clock,
        });
    }

    // (e) version of this bundle name.
    let installed = device.and_then(|(_, installed)| installed.get(manifest.name.as_str()));
    if let Some(installed) = installed {
        match manifest.version.cmp_precedence(installed) {
            std::cmp::Ordering::Greater => {}
            std::cmp::Ordering::Equal => {
                return Err(VerifyError::AlreadyInstalled {
                    name: manifest.name.to_string(),
                    version: manifest.version.clone(),
                });
            }
            std::cmp::Ordering::Less if manifest.allow_downgrade => {}
            std::cmp::Ordering::Less => {
                return Err(VerifyError::Downgrade {
                    name: manifest.name.to_string(),
                    installed: Box::new(installed.clone()),
                    offered: Box::new(manifest.version.clone()),
                });
            }
        }
    }

    let signed_time_floor = signed_time_floor
        .max(manifest.created_at)
        .max(document.issued_at);
    Ok(VerifiedManifest {
        manifest,
        signer,
        signed_time_floor,
    })
}

/// Says why no listed, unrevoked key signed: a revoked key, a failing signature, or an unknown key.
fn explain_missing_signature(trust: &TrustedDocument, envelope: &Envelope) -> VerifyError {
    let document = trust.document();
    let hinted: Vec<Option<KeyId>> = envelope
        .signatures()
        .iter()
        .map(|s| KeyId::parse(s.keyid()).ok())
        .collect();
    if let Some(keyid) = hinted.iter().flatten().find(|id| document.is_revoked(id)) {
        return VerifyError::RevokedKey { keyid: *keyid };
    }
    // An unhinted signature may also be by a revoked key: say so rather than "unknown".
    if let Some(entry) = document
        .signing_keys
        .iter()
        .find(|e| document.is_revoked(&e.keyid) && envelope.is_signed_by(&e.public_key))
    {
        return VerifyError::RevokedKey { keyid: entry.keyid };
    }
    if let Some(keyid) = hinted
        .iter()
        .flatten()
        .find(|id| document.signing_key(id).is_some())
    {
        return VerifyError::BadSignature { keyid: *keyid };
    }
    VerifyError::UnknownKey {
        keyid: envelope
            .signatures()
            .first()
            .map(|s| s.keyid().chars().take(80).collect())
            .unwrap_or_default(),
    }
}

/// Why payload bytes do not match the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// More bytes arrived than the manifest declares.
    #[error(
        "payload check failed: {name} is longer than the {declared} bytes the manifest declares"
    )]
    TooLong {
        /// Payload name.
        name: SafeName,
        /// Declared size.
        declared: u64,
    },
    /// Fewer bytes arrived than the manifest declares.
    #[error(
        "payload check failed: {name} is {received} bytes, short of the {declared} the manifest declares"
    )]
    TooShort {
        /// Payload name.
        name: SafeName,
        /// Declared size.
        declared: u64,
        /// Bytes received.
        received: u64,
    },
    /// The bytes hash to another digest.
    #[error("payload check failed: {name} has sha256 {actual}, the manifest says {expected}")]
    DigestMismatch {
        /// Payload name.
        name: SafeName,
        /// Digest in the manifest.
        expected: Sha256,
        /// Digest of the bytes.
        actual: Sha256,
    },
}

/// Checks a payload as it streams in: size on every chunk, size and sha256 at the end.
#[derive(Clone, Debug)]
pub struct PayloadHasher {
    name: SafeName,
    declared_size: u64,
    expected: Sha256,
    received: u64,
    hasher: sha2::Sha256,
    overflowed: bool,
}

impl PayloadHasher {
    /// A checker for `payload` as the manifest declares it.
    pub fn new(payload: &Payload) -> PayloadHasher {
        PayloadHasher {
            name: payload.name.clone(),
            declared_size: payload.size,
            expected: payload.sha256,
            received: 0,
            hasher: sha2::Sha256::new(),
            overflowed: false,
        }
    }

    /// Feeds the next chunk; fails (and keeps failing) once the total exceeds the declared size.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), PayloadError> {
        let total = u64::try_from(chunk.len())
            .ok()
            .and_then(|len| self.received.checked_add(len));
        match total {
            Some(total) if !self.overflowed && total <= self.declared_size => {
                self.hasher.update(chunk);
                self.received = total;
                Ok(())
            }
            _ => {
                self.overflowed = true;
                Err(PayloadError::TooLong {
                    name: self.name.clone(),
                    declared: self.declared_size,
                })
            }
        }
    }

    /// Bytes accepted so far (where a resumed download continues).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ends the stream: the size must be exact and the sha256 must match.
    pub fn finish(self) -> Result<(), PayloadError> {
        if self.overflowed {
            return Err(PayloadError::TooLong {
                name: self.name,
                declared: self.declared_size,
            });
        }
        if self.received != self.declared_size {
            return Err(PayloadError::TooShort {
                name: self.name,
                declared: self.declared_size,
                received: self.received,
            });
        }
        let actual = Sha256::from_bytes(self.hasher.finalize().into());
        if actual != self.expected {
            return Err(PayloadError::DigestMismatch {
                name: self.name,
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{PublicKey, SigningKey};
    use crate::manifest::tests::sample;
    use crate::trust::tests::{document, entry, root, t};
    use crate::trust::{KeyStatus, TrustDocument, TrustStore};

    fn signer() -> SigningKey {
        SigningKey::from_bytes(&[1; 32])
    }

    fn trusted(doc: TrustDocument) -> TrustedDocument {
        TrustStore::new(PublicKey::from(&root()))
            .accept_update(&doc.sign(&root()).unwrap(), t("2024-11-01T00:00:00Z"))
            .unwrap()
            .current()
            .unwrap()
            .clone()
    }

    struct Device {
        device_type: &'static str,
        installed: BTreeMap<String, Version>,
        now: Timestamp,
        floor: Timestamp,
    }

    impl Device {
        fn new() -> Device {
            Device {
                device_type: "rpi4",
                installed: BTreeMap::new(),
                now: t("2024-11-22T00:00:00Z"),
                floor: Timestamp::UNIX_EPOCH,
            }
        }

        fn with_installed(mut self, name: &str, version: &str) -> Device {
            self.installed
                .insert(name.into(), Version::parse(version).unwrap());
            self
        }

        fn verify(
            &self,
            trust: &TrustedDocument,
            envelope: &Envelope,
        ) -> Result<VerifiedManifest, VerifyError> {
            verify_bundle(
                trust,
                envelope,
                &DeviceFacts {
                    device_type: self.device_type,
                    installed: &self.installed,
                    now: self.now,
                    signed_time_floor: self.floor,
                },
            )
        }
    }

    #[test]
    fn valid_bundle_verifies_and_raises_the_floor() {
        let envelope = sample().sign(&signer()).unwrap();
        let verified = Device::new()
            .verify(&trusted(document(1)), &envelope)
            .unwrap();
        assert_eq!(verified.manifest(), &sample());
        assert_eq!(verified.signer(), &PublicKey::from(&signer()).key_id());
        assert_eq!(verified.signed_time_floor(), sample().created_at);
    }

    #[test]
    fn flipped_payload_byte_is_refused() {
        let envelope = sample().sign(&signer()).unwrap();
        let json = envelope.to_json();
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let text = String::from_utf8(envelope.payload().to_vec())
            .unwrap()
            .replace("1.2.0", "1.3.0");
        use base64::Engine as _;
        value["payload"] = base64::engine::general_purpose::STANDARD
            .encode(text)
            .into();
        let tampered = Envelope::from_json(value.to_string().as_bytes()).unwrap();
        let err = Device::new()
            .verify(&trusted(document(1)), &tampered)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::BadSignature {
                keyid: PublicKey::from(&signer()).key_id()
            }
        );
        assert_eq!(err.check(), "signature");
    }

    #[test]
    fn changed_manifest_signed_by_someone_else_is_refused() {
        let mut manifest = sample();
        manifest.version = Version::parse("9.9.9").unwrap();
        let envelope = manifest.sign(&SigningKey::from_bytes(&[9; 32])).unwrap();
        let err = Device::new()
            .verify(&trusted(document(1)), &envelope)
            .unwrap_err();
        assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("does not list"), "{err}");
    }

    #[test]
    fn revoked_key_verifies_nothing() {
        let mut doc = document(2);
        doc.revoked_keyids.push(PublicKey::from(&signer()).key_id());
        let err = Device::new()
            .verify(&trusted(doc.clone()), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::RevokedKey {
                keyid: PublicKey::from(&signer()).key_id()
            }
        );
        // Also when the key has been dropped from signing_keys altogether.
        doc.signing_keys.clear();
        let err = Device::new()
            .verify(&trusted(doc), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert!(matches!(err, VerifyError::RevokedKey { .. }));
    }

    #[test]
    fn retired_key_still_verifies_what_it_signed() {
        let mut doc = document(2);
        doc.signing_keys = vec![
            entry(&signer(), vec![], KeyStatus::Retired),
            entry(&SigningKey::from_bytes(&[2; 32]), vec![], KeyStatus::Active),
        ];
        assert!(
            Device::new()
                .verify(&trusted(doc), &sample().sign(&signer()).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn key_not_allowed_for_the_kind_is_refused() {
        let mut doc = document(2);
        doc.signing_keys = vec![entry(
            &signer(),
            vec![Kind::Firmware, Kind::Agent],
            KeyStatus::Active,
        )];
        let err = Device::new()
            .verify(&trusted(doc.clone()), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::KeyNotAllowedForKind {
                keyid: PublicKey::from(&signer()).key_id(),
                kind: Kind::Model
            }
        );
        doc.signing_keys[0].kinds.push(Kind::Model);
        assert!(
            Device::new()
                .verify(&trusted(doc), &sample().sign(&signer()).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn trust_document_is_not_accepted_as_a_bundle() {
        let trust = trusted(document(1));
        let err = Device::new().verify(&trust, trust.envelope()).unwrap_err();
        assert!(matches!(err, VerifyError::WrongPayloadType(_)));
    }

    #[test]
    fn signed_but_malformed_manifest_is_refused() {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        value["surprise"] = true.into();
        let envelope = Envelope::sign(
            MANIFEST_PAYLOAD_TYPE,
            value.to_string().into_bytes(),
            &signer(),
        )
        .unwrap();
        let err = Device::new()
            .verify(&trusted(document(1)), &envelope)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::Manifest(ManifestError::Json(_))),
            "{err}"
        );
        assert_eq!(err.check(), "manifest");
        let envelope = Envelope::sign(MANIFEST_PAYLOAD_TYPE, b"{".to_vec(), &signer()).unwrap();
        assert!(matches!(
            Device::new().verify(&trusted(document(1)), &envelope),
            Err(VerifyError::Manifest(_))
        ));
    }

    #[test]
    fn other_device_type_is_refused() {
        let mut device = Device::new();
        device.device_type = "x86-gateway";
        let err = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert!(matches!(err, VerifyError::WrongDeviceType { .. }));
        assert_eq!(err.check(), "device_type");
    }

    #[test]
    fn expired_manifest_is_refused() {
        let mut device = Device::new();
        device.now = t("2026-01-01T00:00:00Z");
        let err = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::Expired {
                expires_at: sample().expires_at,
                clock: t("2026-01-01T00:00:00Z")
            }
        );
        assert_eq!(err.check(), "expiry");
    }

    #[test]
    fn expired_manifest_is_refused_when_the_clock_is_set_back() {
        let mut device = Device::new();
        device.now = t("2020-01-01T00:00:00Z");
        device.floor = t("2025-12-01T00:00:00Z");
        let err = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::Expired {
                expires_at: sample().expires_at,
                clock: t("2025-12-01T00:00:00Z")
            }
        );
    }

    #[test]
    fn device_without_a_clock_still_installs_and_keeps_the_newer_floor() {
        let mut device = Device::new();
        device.now = Timestamp::UNIX_EPOCH;
        device.floor = t("2024-10-15T00:00:00Z");
        let verified = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap();
        assert_eq!(verified.signed_time_floor(), t("2024-11-01T00:00:00Z"));
        device.floor = t("2025-06-01T00:00:00Z");
        let verified = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap();
        assert_eq!(verified.signed_time_floor(), t("2025-06-01T00:00:00Z"));
    }

    #[test]
    fn expired_trust_document_is_refused() {
        let mut device = Device::new();
        device.now = t("2026-10-02T00:00:00Z");
        let mut manifest = sample();
        manifest.expires_at = t("2030-01-01T00:00:00Z");
        let err = device
            .verify(&trusted(document(1)), &manifest.sign(&signer()).unwrap())
            .unwrap_err();
        assert!(matches!(err, VerifyError::TrustExpired { .. }), "{err}");
    }

    #[test]
    fn downgrade_is_refused_unless_allowed() {
        let device = Device::new().with_installed("detector", "1.3.0");
        let err = device
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "version check failed: detector 1.2.0 is older than the installed 1.3.0 and the bundle does not allow downgrade"
        );
        assert_eq!(err.check(), "version");
        let mut manifest = sample();
        manifest.allow_downgrade = true;
        assert!(
            device
                .verify(&trusted(document(1)), &manifest.sign(&signer()).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn same_version_is_already_installed_even_with_other_build_metadata() {
        for installed in ["1.2.0", "1.2.0+other"] {
            let device = Device::new().with_installed("detector", installed);
            let mut manifest = sample();
            manifest.allow_downgrade = true;
            let err = device
                .verify(&trusted(document(1)), &manifest.sign(&signer()).unwrap())
                .unwrap_err();
            assert!(matches!(err, VerifyError::AlreadyInstalled { .. }), "{err}");
        }
    }

    #[test]
    fn versions_are_compared_per_bundle_name() {
        let device = Device::new()
            .with_installed("other-model", "5.0.0")
            .with_installed("detector", "1.2.0-rc.1");
        assert!(
            device
                .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn without_a_device_every_check_but_device_type_and_version_runs() {
        let device = Device::new().with_installed("detector", "9.0.0");
        let trust = trusted(document(1));
        let envelope = sample().sign(&signer()).unwrap();
        // Another device type and a downgrade: not looked at without a device.
        let verified =
            verify_bundle_without_device(&trust, &envelope, device.now, device.floor).unwrap();
        assert_eq!(verified.manifest(), &sample());
        assert_eq!(verified.signed_time_floor(), sample().created_at);
        // Signature and expiry still are.
        let stranger = sample().sign(&SigningKey::from_bytes(&[9; 32])).unwrap();
        assert!(matches!(
            verify_bundle_without_device(&trust, &stranger, device.now, device.floor),
            Err(VerifyError::UnknownKey { .. })
        ));
        assert!(matches!(
            verify_bundle_without_device(&trust, &envelope, device.now, t("2025-12-01T00:00:00Z")),
            Err(VerifyError::Expired { .. })
        ));
    }

    fn hasher(content: &[u8], declared: u64) -> PayloadHasher {
        let mut manifest = sample();
        manifest.payloads[0].size = declared;
        manifest.payloads[0].sha256 = Sha256::digest(content);
        PayloadHasher::new(&manifest.payloads[0])
    }

    #[test]
    fn payload_with_declared_size_and_digest_passes() {
        let mut h = hasher(b"hello world", 11);
        h.update(b"hello ").unwrap();
        h.update(b"").unwrap();
        h.update(b"world").unwrap();
        assert_eq!(h.received(), 11);
        h.finish().unwrap();
    }

    #[test]
    fn payload_longer_than_declared_fails_at_once() {
        let mut h = hasher(b"hello", 5);
        h.update(b"hel").unwrap();
        assert!(matches!(
            h.update(b"lo!"),
            Err(PayloadError::TooLong { declared: 5, .. })
        ));
        assert!(h.update(b"").is_err(), "keeps failing after an overflow");
        assert_eq!(h.received(), 3);
        assert!(matches!(h.finish(), Err(PayloadError::TooLong { .. })));
    }

    #[test]
    fn payload_shorter_than_declared_fails() {
        let mut h = hasher(b"hello", 5);
        h.update(b"hell").unwrap();
        assert_eq!(
            h.finish().unwrap_err().to_string(),
            "payload check failed: model.onnx is 4 bytes, short of the 5 the manifest declares"
        );
    }

    #[test]
    fn payload_with_wrong_digest_fails() {
        let mut h = hasher(b"hello", 5);
        h.update(b"HELLO").unwrap();
        assert!(matches!(
            h.finish(),
            Err(PayloadError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn verified_manifest_hands_out_hashers_for_its_payloads() {
        let verified = Device::new()
            .verify(&trusted(document(1)), &sample().sign(&signer()).unwrap())
            .unwrap();
        let mut h = verified.payload_hasher("model.onnx").unwrap();
        h.update(b"hello").unwrap();
        h.finish().unwrap();
        assert!(verified.payload_hasher("missing").is_none());
    }
}
