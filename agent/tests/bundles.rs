//! Bundle checks through the `.drover` reader and the library's `verify` and `install`: every
//! refusal fails closed, names its check, and leaves nothing staged or installed.

mod support;

use std::path::Path;

use base64::Engine as _;
use drover_agent::Error;
use drover_agent::bundle::{self, BundleError, Device, FileError};
use drover_agent::config::AgentConfig;
use drover_agent::state::{Installed, StateDir, TRUST_FILE};
use drover_proto::{Envelope, PayloadError, PublicKey, SafeName, TrustError, VerifyError, Version};
use support::*;

fn enrolled(dir: &Path) -> Device {
    enrolled_with(dir, &signed_trust(1), None)
}

fn enrolled_with(dir: &Path, held: &Envelope, installed: Option<&Installed>) -> Device {
    let state = enrolled_state(dir, held, installed);
    Device::enrolled(&StateDir::new(state)).expect("the fixture state loads")
}

fn refusal<T: std::fmt::Debug>(result: drover_agent::Result<T>) -> (BundleError, String) {
    match result {
        Err(e @ Error::Bundle { .. }) => {
            let message = e.to_string();
            match e {
                Error::Bundle { source, .. } => (source, message),
                _ => unreachable!(),
            }
        }
        other => panic!("expected a bundle refusal, got {other:?}"),
    }
}

/// `parts` written to a file and verified on an enrolled device holding trust document 1.
fn verify_parts(parts: &Parts) -> (BundleError, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = parts.write(dir.path(), "b.drover");
    refusal(bundle::verify(&file, &enrolled(dir.path()), now()))
}

/// The envelope with its payload (the manifest JSON) changed by `change`, signatures kept.
fn tampered(envelope: &Envelope, change: impl FnOnce(&mut serde_json::Value)) -> Envelope {
    let mut wire: serde_json::Value =
        serde_json::from_str(&envelope.to_json()).expect("envelope JSON");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(envelope.payload()).expect("manifest JSON");
    change(&mut manifest);
    wire["payload"] = base64::engine::general_purpose::STANDARD
        .encode(manifest.to_string())
        .into();
    Envelope::from_json(wire.to_string().as_bytes()).expect("a well-formed envelope")
}

#[test]
fn a_valid_bundle_verifies_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let summary = bundle::verify(&file, &enrolled(dir.path()), now()).unwrap();
    assert_eq!(summary.manifest.name.as_str(), "detector");
    assert_eq!(summary.signer, PublicKey::from(&signer()).key_id());
    assert!(summary.device_checked);
    let text = summary.to_text();
    assert!(text.starts_with("valid: every check passed"), "{text}");
    assert!(text.contains("\nversion: 1.2.0\n"), "{text}");
    assert!(
        text.contains(&format!(
            "  model.onnx  {} bytes  sha256:{}  file\n",
            MODEL.len(),
            drover_proto::Sha256::digest(MODEL)
        )),
        "{text}"
    );
    assert!(
        text.contains("trust_document: version 1 (the one this device holds)"),
        "{text}"
    );
}

#[test]
fn entries_may_come_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let (envelope, trust) = valid_json();
    let file = write_raw(
        dir.path(),
        "b.drover",
        &[
            RawEntry::file("payloads/model.onnx", MODEL),
            RawEntry::file("trust.json", trust),
            RawEntry::file("envelope.json", envelope),
        ],
    );
    bundle::verify(&file, &enrolled(dir.path()), now()).unwrap();
}

#[test]
fn one_flipped_payload_byte_is_refused() {
    let mut parts = Parts::valid();
    parts.payloads[0].1[3] ^= 0x01;
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(
            err,
            BundleError::Payload(PayloadError::DigestMismatch { .. })
        ),
        "{message}"
    );
    assert_eq!(err.check(), "payload");
    assert!(
        message.contains("payload check failed: model.onnx has sha256"),
        "{message}"
    );
}

#[test]
fn a_changed_manifest_is_refused() {
    let mut parts = Parts::valid();
    parts.envelope = tampered(&parts.envelope, |m| m["version"] = "9.9.9".into());
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(err, BundleError::Verify(VerifyError::BadSignature { .. })),
        "{message}"
    );
    assert!(message.contains("signature check failed"), "{message}");
}

#[test]
fn a_signature_by_an_unknown_key_is_refused() {
    let parts = Parts::signed(&manifest(&[("model.onnx", MODEL)]), &stranger());
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(err, BundleError::Verify(VerifyError::UnknownKey { .. })),
        "{message}"
    );
    assert!(
        message.contains("which the trust document does not list"),
        "{message}"
    );
}

#[test]
fn a_signature_by_a_revoked_key_is_refused() {
    let mut parts = Parts::valid();
    let mut revoking = trust(2);
    revoking.revoked_keyids = vec![PublicKey::from(&signer()).key_id()];
    parts.trust = revoking.sign(&root()).unwrap();
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(err, BundleError::Verify(VerifyError::RevokedKey { .. })),
        "{message}"
    );
    assert!(message.contains("which is revoked"), "{message}");
}

#[test]
fn a_trust_document_signed_by_a_non_root_key_is_refused() {
    let mut parts = Parts::valid();
    parts.trust = trust(2).sign(&signer()).unwrap();
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(err, BundleError::Trust(TrustError::NotSignedByRoot { .. })),
        "{message}"
    );
    assert!(message.contains("trust check failed"), "{message}");
}

#[test]
fn an_older_trust_document_replayed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let device = enrolled_with(dir.path(), &signed_trust(3), None);
    let (err, message) = refusal(bundle::verify(&file, &device, now()));
    assert!(
        matches!(
            err,
            BundleError::Trust(TrustError::OlderVersion {
                current: 3,
                candidate: 1
            })
        ),
        "{message}"
    );
}

#[test]
fn a_same_version_trust_document_with_other_content_is_refused() {
    let mut parts = Parts::valid();
    let mut other = trust(1);
    other.expires_at = t("2099-01-01T00:00:00Z");
    parts.trust = other.sign(&root()).unwrap();
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(
            err,
            BundleError::Trust(TrustError::SameVersionDifferentContent { version: 1 })
        ),
        "{message}"
    );
}

#[test]
fn an_expired_manifest_is_refused() {
    let mut m = manifest(&[("model.onnx", MODEL)]);
    m.expires_at = t("2026-01-01T00:00:00Z");
    let (err, message) = verify_parts(&Parts::signed(&m, &signer()));
    assert!(
        matches!(err, BundleError::Verify(VerifyError::Expired { .. })),
        "{message}"
    );
    assert!(message.contains("expiry check failed"), "{message}");
}

#[test]
fn an_expired_manifest_is_refused_with_the_clock_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest(&[("model.onnx", MODEL)]);
    m.expires_at = t("2026-01-01T00:00:00Z");
    let file = Parts::signed(&m, &signer()).write(dir.path(), "b.drover");
    // The device has seen a signature from March 2026; its clock says 2025.
    let floor = Installed {
        signed_time_floor: t("2026-03-01T00:00:00Z"),
        bundles: vec![],
        kept: vec![],
    };
    let device = enrolled_with(dir.path(), &signed_trust(1), Some(&floor));
    let (err, _) = refusal(bundle::verify(&file, &device, t("2025-06-01T00:00:00Z")));
    match err {
        BundleError::Verify(VerifyError::Expired { clock, .. }) => {
            assert_eq!(clock, t("2026-03-01T00:00:00Z"));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn another_device_type_is_refused() {
    let mut m = manifest(&[("model.onnx", MODEL)]);
    m.device_types = vec!["jetson-nano".into()];
    let (err, message) = verify_parts(&Parts::signed(&m, &signer()));
    assert!(
        matches!(
            err,
            BundleError::Verify(VerifyError::WrongDeviceType { .. })
        ),
        "{message}"
    );
    assert!(message.contains("this device is `rpi4`"), "{message}");
}

#[test]
fn a_downgrade_is_refused_unless_the_manifest_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let device = enrolled_with(dir.path(), &signed_trust(1), Some(&installed("2.0.0")));
    let (err, message) = refusal(bundle::verify(&file, &device, now()));
    assert!(
        matches!(err, BundleError::Verify(VerifyError::Downgrade { .. })),
        "{message}"
    );
    let mut m = manifest(&[("model.onnx", MODEL)]);
    m.allow_downgrade = true;
    let allowed = Parts::signed(&m, &signer()).write(dir.path(), "c.drover");
    let summary = bundle::verify(&allowed, &device, now()).unwrap();
    assert_eq!(summary.manifest.version, Version::parse("1.2.0").unwrap());
}

#[test]
fn payloads_longer_or_shorter_than_declared_are_refused() {
    for bytes in [[MODEL, b"!"].concat(), MODEL[..MODEL.len() - 1].to_vec()] {
        let mut parts = Parts::valid();
        parts.payloads[0].1 = bytes.clone();
        let (err, message) = verify_parts(&parts);
        assert!(
            matches!(
                err,
                BundleError::File(FileError::SizeMismatch { in_file, declared, .. })
                    if in_file == bytes.len() as u64 && declared == MODEL.len() as u64
            ),
            "{message}"
        );
        assert!(message.contains("payload check failed"), "{message}");
    }
}

#[test]
fn unlisted_and_missing_payloads_are_refused() {
    let mut parts = Parts::valid();
    parts.payloads.push(("extra.bin".into(), b"x".to_vec()));
    let (err, _) = verify_parts(&parts);
    assert!(matches!(
        err,
        BundleError::File(FileError::UnlistedPayload { .. })
    ));
    let mut parts = Parts::valid();
    parts.payloads.clear();
    let (err, _) = verify_parts(&parts);
    assert!(matches!(
        err,
        BundleError::File(FileError::MissingPayload { .. })
    ));
}

#[test]
fn malformed_or_oversized_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = enrolled(dir.path());
    let (envelope, trust) = valid_json();
    let cases = [
        (
            "not-json.drover",
            "{not json".to_owned(),
            trust.clone(),
            "envelope.json is not a valid DSSE envelope",
        ),
        (
            "bad-trust.drover",
            envelope.clone(),
            "[]".to_owned(),
            "trust.json is not a valid DSSE envelope",
        ),
        (
            "huge.drover",
            format!("{}{envelope}", " ".repeat(1024 * 1024)),
            trust.clone(),
            "over the 1048576-byte limit",
        ),
    ];
    for (name, envelope, trust, words) in cases {
        let file = write_raw(
            dir.path(),
            name,
            &[
                RawEntry::file("envelope.json", envelope),
                RawEntry::file("trust.json", trust),
                RawEntry::file("payloads/model.onnx", MODEL),
            ],
        );
        let (err, message) = refusal(bundle::verify(&file, &device, now()));
        assert!(matches!(err, BundleError::File(_)), "{message}");
        assert!(message.contains(words), "{name}: {message}");
    }
    // A manifest that is signed but breaks the schema.
    let bad = Envelope::sign(
        drover_proto::MANIFEST_PAYLOAD_TYPE,
        br#"{"schema":1,"name":"x"}"#.to_vec(),
        &signer(),
    )
    .unwrap();
    let mut parts = Parts::valid();
    parts.envelope = bad;
    let (err, message) = verify_parts(&parts);
    assert!(
        matches!(err, BundleError::Verify(VerifyError::Manifest(_))),
        "{message}"
    );
    assert!(message.contains("manifest check failed"), "{message}");
}

#[test]
fn unsafe_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let device = enrolled(dir.path());
    let (envelope, trust) = valid_json();
    let symlink = RawEntry {
        name: "payloads/model.onnx".into(),
        kind: tar::EntryType::Symlink,
        data: vec![],
    };
    let cases: [(&str, RawEntry, &str); 4] = [
        (
            "dotdot",
            RawEntry::file("../model.onnx", MODEL),
            "leaves the bundle through `..`",
        ),
        (
            "absolute",
            RawEntry::file("/etc/passwd", MODEL),
            "has an absolute path",
        ),
        ("symlink", symlink, "is a symbolic link"),
        (
            "duplicate",
            RawEntry::file("trust.json", trust.clone()),
            "appears more than once",
        ),
    ];
    for (name, extra, words) in cases {
        let file = write_raw(
            dir.path(),
            name,
            &[
                RawEntry::file("envelope.json", envelope.clone()),
                RawEntry::file("trust.json", trust.clone()),
                extra,
            ],
        );
        let (err, message) = refusal(bundle::verify(&file, &device, now()));
        assert!(matches!(err, BundleError::File(_)), "{name}: {message}");
        assert_eq!(err.check(), "file");
        assert!(message.contains(words), "{name}: {message}");
    }
}

#[test]
fn with_a_root_key_alone_device_type_and_version_are_not_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest(&[("model.onnx", MODEL)]);
    m.device_types = vec!["jetson-nano".into()];
    let file = Parts::signed(&m, &signer()).write(dir.path(), "b.drover");
    let device = Device::away(&write_root_key(dir.path())).unwrap();
    let summary = bundle::verify(&file, &device, now()).unwrap();
    assert!(!summary.device_checked);
    assert!(
        summary
            .to_text()
            .contains("device type and version NOT checked")
    );
    // Everything else still is.
    let mut parts = Parts::valid();
    parts.payloads[0].1[0] ^= 1;
    let tampered = parts.write(dir.path(), "c.drover");
    let (err, _) = refusal(bundle::verify(&tampered, &device, now()));
    assert_eq!(err.check(), "payload");
    let other_root = dir.path().join("other.pub");
    std::fs::write(&other_root, PublicKey::from(&stranger()).to_base64()).unwrap();
    let (err, _) = refusal(bundle::verify(
        &file,
        &Device::away(&other_root).unwrap(),
        now(),
    ));
    assert!(matches!(
        err,
        BundleError::Trust(TrustError::NotSignedByRoot { .. })
    ));
}

#[test]
fn a_private_key_is_refused_as_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.key");
    std::fs::write(
        &path,
        drover_proto::signing_key_to_pem(&root())
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let err = Device::away(&path).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("holds a private key"), "{err}");
}

fn config_with_model_installer() -> AgentConfig {
    AgentConfig::parse(
        "[installers.model]\ntype = \"files\"\ntarget = \"/opt/models\"\n",
        Path::new("agent.toml"),
    )
    .expect("a valid agent.toml")
}

#[test]
fn staging_checks_everything_and_leaves_the_payloads_for_the_installer() {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Parts::valid();
    parts.trust = signed_trust(2);
    let file = parts.write(dir.path(), "b.drover");
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let device = Device::enrolled(&StateDir::new(&state)).unwrap();
    let manifest = bundle::stage(&file, &device, &config_with_model_installer(), now()).unwrap();
    let digests: Vec<String> = manifest
        .payloads
        .iter()
        .map(|p| p.sha256.to_string())
        .collect();
    assert_eq!(staged(&state), digests);
    // What the verified bundle taught the device is kept: trust document 2 and the clock floor.
    let held = std::fs::read_to_string(state.join(TRUST_FILE)).unwrap();
    assert_eq!(held, signed_trust(2).to_json());
    let installed = StateDir::new(&state).installed().unwrap();
    assert_eq!(installed.signed_time_floor, t("2025-02-01T00:00:00Z"));
    assert!(installed.bundles.is_empty());
}

#[test]
fn a_refused_install_stages_nothing_and_keeps_the_held_trust() {
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Parts::valid();
    parts.trust = signed_trust(2);
    parts.payloads[0].1[0] ^= 1;
    let file = parts.write(dir.path(), "b.drover");
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let device = Device::enrolled(&StateDir::new(&state)).unwrap();
    let (err, _) = refusal(bundle::stage(
        &file,
        &device,
        &config_with_model_installer(),
        now(),
    ));
    assert_eq!(err.check(), "payload");
    assert_eq!(staged(&state), Vec::<String>::new());
    let held = std::fs::read_to_string(state.join(TRUST_FILE)).unwrap();
    assert_eq!(held, signed_trust(1).to_json());
    assert!(!state.join("installed.json").exists());
}

#[test]
fn install_needs_an_installer_table_of_the_manifest_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = Parts::valid().write(dir.path(), "b.drover");
    let state = enrolled_state(dir.path(), &signed_trust(1), None);
    let device = Device::enrolled(&StateDir::new(&state)).unwrap();
    let (err, message) = refusal(bundle::stage(
        &file,
        &device,
        &AgentConfig::default(),
        now(),
    ));
    assert!(matches!(err, BundleError::NoInstaller { .. }), "{message}");
    assert!(message.contains("no [installers.model] table"), "{message}");
    assert_eq!(staged(&state), Vec::<String>::new());
}

#[test]
fn long_payload_names_survive_the_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let name = "m".repeat(128);
    let m = manifest(&[(name.as_str(), MODEL)]);
    let mut parts = Parts::signed(&m, &signer());
    parts.payloads = vec![(name.clone(), MODEL.to_vec())];
    let file = parts.write(dir.path(), "b.drover");
    let summary = bundle::verify(&file, &enrolled(dir.path()), now()).unwrap();
    assert_eq!(
        summary.manifest.payloads[0].name,
        SafeName::parse(&name).unwrap()
    );
}
