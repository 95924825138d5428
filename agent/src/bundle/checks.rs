//! The checks `drover-agent verify` and `install` share, in the contract's order: the file's
//! structure, the trust document (proto's `TrustStore::accept_update`), then signature, manifest,
//! device type, expiry and version (proto's `verify_bundle`), then the entries against the signed
//! manifest, then — `install` only — installer and free space, then each payload's size and
//! sha256 as it streams. Nothing here decides a rule itself; it only orders proto's.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use drover_proto::{
    DeviceFacts, KeyId, Manifest, PublicKey, Timestamp, TrustStore, VerifiedManifest,
    verify_bundle, verify_bundle_without_device,
};

use super::BundleError;
use super::file::{BundleFile, READ_BUFFER_BYTES, StreamOutcome};
use super::staging::{Staged, Staging, commit_part};
use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::state::{Enrollment, Installed, StateDir};

/// Largest `--root-key` file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// What a bundle is checked against.
#[derive(Debug)]
pub enum Device {
    /// An enrolled device (boxed: it is much larger than a key).
    Enrolled(Box<EnrolledDevice>),
    /// No device, only a root public key (`verify --root-key`): device type and version, which
    /// need a device, are not checked.
    Away {
        /// The root key to pin.
        root: PublicKey,
    },
}

/// What bundle checks read from an enrolled device's state directory.
#[derive(Debug)]
pub struct EnrolledDevice {
    /// The state directory.
    pub state: StateDir,
    /// `enrollment.json`.
    pub enrollment: Enrollment,
    /// The trust store `trust.json` holds.
    pub trust: TrustStore,
    /// `installed.json`: installed versions and the clock floor.
    pub installed: Installed,
    /// The device type bundles must list.
    pub device_type: String,
}

impl Device {
    /// The enrolled device in `state`.
    pub fn enrolled(state: &StateDir) -> Result<Device> {
        let (enrollment, trust) = state.trust_store()?;
        let device_type = enrollment.require_device_type(state)?.to_owned();
        let installed = state.installed()?;
        Ok(Device::Enrolled(Box::new(EnrolledDevice {
            state: state.clone(),
            enrollment,
            trust,
            installed,
            device_type,
        })))
    }

    /// No device: check against the root public key in `path` (SPKI PEM, or standard base64 of
    /// the raw 32 bytes as the contract writes keys).
    pub fn away(path: &Path) -> Result<Device> {
        Ok(Device::Away {
            root: read_root_key(path)?,
        })
    }

    /// True when device type and version are checked.
    pub fn is_enrolled(&self) -> bool {
        matches!(self, Device::Enrolled(_))
    }
}

/// Reads a root public key file for `--root-key`.
pub fn read_root_key(path: &Path) -> Result<PublicKey> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| Error::io("read", path, e))?;
    let text = text.trim();
    let bad = |why: String| {
        Error::Usage(format!(
            "--root-key {} is not usable: {why}; give the fleet's root public key as PEM (-----BEGIN PUBLIC KEY-----) or as base64 of its 32 raw bytes",
            path.display()
        ))
    };
    if text.contains("PRIVATE KEY") {
        return Err(bad(
            "it holds a private key, which belongs offline and never on a device".into(),
        ));
    }
    if text.starts_with("-----BEGIN PUBLIC KEY-----") {
        PublicKey::from_pem(text).map_err(|e| bad(e.to_string()))
    } else {
        PublicKey::from_base64(text).map_err(|e| bad(e.to_string()))
    }
}

/// A bundle whose trust document, signature, manifest, device facts and entries checked out;
/// its payload bytes are not checked yet.
#[derive(Debug)]
pub struct Checked {
    /// The open bundle file.
    pub file: BundleFile,
    /// The manifest, verified.
    pub verified: VerifiedManifest,
    /// The trust store once the bundle's `trust.json` is taken.
    pub trust: TrustStore,
    /// The trust document version the device held before (none without a device).
    pub trust_held: Option<u64>,
}

impl Checked {
    /// The trust document version the bundle carries (and the store now holds).
    pub fn trust_version(&self) -> u64 {
        self.trust
            .current()
            .map_or(0, |trusted| trusted.document().version)
    }
}

/// Every check that needs no payload byte, in the contract's order.
pub fn check_signed(path: &Path, device: &Device, now: Timestamp) -> Result<Checked> {
    let refuse = |source: BundleError| Error::Bundle {
        bundle: path.to_owned(),
        source,
    };
    let file = BundleFile::open(path)?;

    // The trust document: signed by the pinned root, newer or byte-identical, unexpired.
    let trust_envelope = file.trust().map_err(|e| refuse(e.into()))?;
    let (store, clock, trust_held) = match device {
        Device::Enrolled(d) => (
            d.trust.clone(),
            d.installed.clock(now),
            d.trust.current().map(|t| t.document().version),
        ),
        Device::Away { root } => (TrustStore::new(*root), now, None),
    };
    let trust = store
        .accept_update(&trust_envelope, clock)
        .map_err(|e| refuse(e.into()))?;
    let trusted = trust
        .current()
        .expect("a store that accepted a document holds it");

    // Signature, manifest schema, device type, expiry, version.
    let envelope = file.envelope().map_err(|e| refuse(e.into()))?;
    let verified = match device {
        Device::Enrolled(d) => verify_bundle(
            trusted,
            &envelope,
            &DeviceFacts {
                device_type: &d.device_type,
                installed: &d.installed.versions(),
                now,
                signed_time_floor: d.installed.signed_time_floor,
            },
        ),
        Device::Away { .. } => {
            verify_bundle_without_device(trusted, &envelope, now, Timestamp::UNIX_EPOCH)
        }
    }
    .map_err(|e| refuse(e.into()))?;

    // The entries against the signed manifest: same names, declared sizes.
    file.match_manifest(verified.manifest())
        .map_err(|e| refuse(e.into()))?;
    Ok(Checked {
        file,
        verified,
        trust,
        trust_held,
    })
}

/// `drover-agent verify`: every check, payloads hashed and thrown away; writes nothing.
pub fn verify(path: &Path, device: &Device, now: Timestamp) -> Result<Summary> {
    let checked = check_signed(path, device, now)?;
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    for payload in &checked.verified.manifest().payloads {
        let hasher = checked
            .verified
            .payload_hasher(payload.name.as_str())
            .expect("the manifest lists its own payloads");
        match checked
            .file
            .stream_payload(hasher, &payload.name, &mut io::sink(), &mut buffer)?
        {
            StreamOutcome::Matched => {}
            StreamOutcome::Refused(source) => {
                return Err(Error::Bundle {
                    bundle: path.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(Summary::of(&checked, device))
}

/// `drover-agent install`, up to the installer: the checks of `verify`, then installer and free
/// space, then each payload staged (hashed as it is written) into `STATE_DIR/staging`. A failure
/// removes what was staged. Once everything matched, a newer trust document from the bundle is
/// kept and the clock floor raised, and the staged payloads are left for the update engine.
pub fn stage(
    path: &Path,
    device: &Device,
    config: &AgentConfig,
    now: Timestamp,
) -> Result<Manifest> {
    let Device::Enrolled(enrolled) = device else {
        return Err(Error::Usage(
            "install needs an enrolled device; --root-key is for verify only".into(),
        ));
    };
    let refuse = |source: BundleError| Error::Bundle {
        bundle: path.to_owned(),
        source,
    };
    let EnrolledDevice {
        state,
        enrollment,
        trust,
        installed,
        ..
    } = enrolled.as_ref();
    let checked = check_signed(path, device, now)?;
    let manifest = checked.verified.manifest();
    check_installer(manifest, config).map_err(refuse)?;

    let staging = Staging::open(state)?;
    let needed = manifest.payloads.iter().map(|p| p.size).sum::<u64>();
    staging.check_space(needed).map_err(refuse)?;
    let mut staged = Staged::default();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    for payload in &manifest.payloads {
        let part = staging.part_path(&payload.sha256);
        let done = staging.final_path(&payload.sha256);
        staged.push(part.clone());
        staged.push(done.clone());
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(|e| Error::io("create", &part, e))?;
        let hasher = checked
            .verified
            .payload_hasher(payload.name.as_str())
            .expect("the manifest lists its own payloads");
        match checked
            .file
            .stream_payload(hasher, &payload.name, &mut out, &mut buffer)?
        {
            StreamOutcome::Matched => {
                commit_part(&out, &part, &done).map_err(|e| Error::io("stage", &done, e))?;
            }
            StreamOutcome::Refused(source) => return Err(refuse(source)),
        }
    }
    tracing::info!(
        bundle = %manifest.name,
        version = %manifest.version,
        payloads = staged.paths().len() / 2,
        "every check passed; payloads staged"
    );

    // Every check passed: what the bundle taught the device about trust and time is kept.
    crate::trust::persist(state, enrollment, trust, &checked.trust)?;
    let mut raised = installed.clone();
    raised.signed_time_floor = raised
        .signed_time_floor
        .max(checked.verified.signed_time_floor());
    if raised != *installed {
        state.write_installed(&raised)?;
    }
    staged.keep();
    Ok(manifest.clone())
}

/// `agent.toml` must have an installer table for the bundle's kind, of the manifest's type.
fn check_installer(manifest: &Manifest, config: &AgentConfig) -> Result<(), BundleError> {
    let found = match config.installers.get(&manifest.kind) {
        Some(table) if table.installer == manifest.installer => return Ok(()),
        Some(table) => format!(
            "[installers.{}] of type \"{}\"",
            manifest.kind, table.installer
        ),
        None => format!("no [installers.{}] table", manifest.kind),
    };
    Err(BundleError::NoInstaller {
        kind: manifest.kind,
        wanted: manifest.installer,
        found,
    })
}

/// What `verify` prints about a valid bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The bundle file.
    pub file: PathBuf,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The key whose signature was accepted.
    pub signer: KeyId,
    /// The trust document version the bundle carries.
    pub trust_version: u64,
    /// The version the device holds, when checked against a device.
    pub trust_held: Option<u64>,
    /// Whether device type and version were checked.
    pub device_checked: bool,
}

impl Summary {
    fn of(checked: &Checked, device: &Device) -> Summary {
        Summary {
            file: checked.file.path().to_owned(),
            manifest: checked.verified.manifest().clone(),
            signer: *checked.verified.signer(),
            trust_version: checked.trust_version(),
            trust_held: checked.trust_held,
            device_checked: device.is_enrolled(),
        }
    }

    /// `name: value` lines, then one line per payload.
    pub fn to_text(&self) -> String {
        let m = &self.manifest;
        let verdict = if self.device_checked {
            "valid: every check passed (trust, signature, manifest, device type, expiry, version, payload sizes and sha256)".to_owned()
        } else {
            "valid: every check passed (trust, signature, manifest, expiry, payload sizes and sha256); device type and version NOT checked: they need an enrolled device, and --root-key was given".to_owned()
        };
        let trust = match self.trust_held {
            Some(held) if held == self.trust_version => {
                format!("version {} (the one this device holds)", self.trust_version)
            }
            Some(held) => format!(
                "version {} (newer than the held version {held}; install keeps it)",
                self.trust_version
            ),
            None => format!(
                "version {} (signed by the given root key)",
                self.trust_version
            ),
        };
        let mut out = format!(
            "{verdict}\nfile: {}\nname: {}\nkind: {}\nversion: {}\nbundle_id: {}\ninstaller: {}\ndevice_types: {}\ncreated_at: {}\nexpires_at: {}\nallow_downgrade: {}\nsigned_by: {}\ntrust_document: {trust}\npayloads:\n",
            self.file.display(),
            m.name,
            m.kind,
            m.version,
            m.bundle_id,
            m.installer,
            m.device_types.join(", "),
            m.created_at,
            m.expires_at,
            m.allow_downgrade,
            self.signer,
        );
        for p in &m.payloads {
            let format = match p.format {
                drover_proto::PayloadFormat::File => "file",
                drover_proto::PayloadFormat::Tar => "tar",
            };
            out.push_str(&format!(
                "  {}  {} bytes  sha256:{}  {format}\n",
                p.name, p.size, p.sha256
            ));
        }
        out
    }
}
