//! The bundle manifest (payloadType `application/vnd.drover.manifest+json`) and the values in it.
//! `Manifest::from_json` accepts only schema 1 with no unknown fields, safe file names, 64-hex digests,
//! semver versions and RFC 3339 `Z` times; the agent relies on these before it touches the disk.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

use crate::envelope::{Envelope, EnvelopeError, SigningKey};
use crate::timestamp::Timestamp;
use crate::version::Version;

/// The DSSE payload type of a signed manifest.
pub const MANIFEST_PAYLOAD_TYPE: &str = "application/vnd.drover.manifest+json";
/// The only manifest schema this crate reads and writes.
pub const MANIFEST_SCHEMA: u64 = 1;
/// Longest bundle or payload name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest `bundle_id` or device type, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;
/// Most payloads one manifest may list.
pub const MAX_PAYLOADS: usize = 256;
/// Most device types one manifest may list.
pub const MAX_DEVICE_TYPES: usize = 256;
/// Name of the signed manifest envelope inside a `.drover` bundle file.
pub const BUNDLE_FILE_ENVELOPE: &str = "envelope.json";
/// Name of the trust document envelope inside a `.drover` bundle file.
pub const BUNDLE_FILE_TRUST: &str = "trust.json";
/// Folder holding `payloads/NAME` inside a `.drover` bundle file.
pub const BUNDLE_FILE_PAYLOADS_DIR: &str = "payloads";

/// Why a manifest or one of its values is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest declares a schema other than 1.
    #[error("manifest uses schema {0}; this version of Drover understands schema 1 only")]
    UnsupportedSchema(String),
    /// The JSON is malformed, misses a field, has an unknown field or a badly formed value.
    #[error("manifest is not valid: {0}")]
    Json(String),
    /// A bundle or payload name is not a safe single file name.
    #[error("name `{name}` is not allowed: {reason}")]
    BadName {
        /// The offending name (shortened).
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A digest is not 64 hex digits.
    #[error("sha256 `{0}` is not 64 hex digits")]
    BadSha256(String),
    /// `bundle_id` is empty, too long or has control characters.
    #[error("bundle_id must be 1 to {MAX_LABEL_BYTES} bytes without control characters")]
    BadBundleId,
    /// `device_types` is empty, too long, or one entry is unusable.
    #[error(
        "device_types must list 1 to {MAX_DEVICE_TYPES} device types, each 1 to {MAX_LABEL_BYTES} bytes without control characters"
    )]
    BadDeviceTypes,
    /// `payloads` is empty or too long.
    #[error("payloads must list 1 to {MAX_PAYLOADS} payloads")]
    BadPayloadCount,
    /// Two payloads share a name.
    #[error("payload name `{0}` appears more than once")]
    DuplicatePayload(String),
    /// `expires_at` is not after `created_at`.
    #[error("expires_at ({expires_at}) must be after created_at ({created_at})")]
    ExpiresBeforeCreated {
        /// The manifest's `created_at`.
        created_at: Timestamp,
        /// The manifest's `expires_at`.
        expires_at: Timestamp,
    },
    /// Signing the manifest failed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

/// What a bundle carries; selects the installer table on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Device firmware, usually installed A/B.
    Firmware,
    /// An application.
    Application,
    /// A machine-learning model.
    Model,
    /// Configuration files.
    Config,
    /// The Drover agent itself.
    Agent,
}

impl Kind {
    /// Every kind, in contract order.
    pub const ALL: [Kind; 5] = [
        Kind::Firmware,
        Kind::Application,
        Kind::Model,
        Kind::Config,
        Kind::Agent,
    ];

    /// The contract name (`firmware`, `application`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Firmware => "firmware",
            Kind::Application => "application",
            Kind::Model => "model",
            Kind::Config => "config",
            Kind::Agent => "agent",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown kind `{s}`; use firmware, application, model, config or agent")
            })
    }
}

/// How the device installs a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Installer {
    /// Files unpacked into a versioned release folder with a `current` link.
    Files,
    /// A/B slots with a one-time boot into the new slot.
    Ab,
    /// A script shipped in the bundle.
    Script,
}

impl Installer {
    /// The contract name (`files`, `ab`, `script`).
    pub fn as_str(self) -> &'static str {
        match self {
            Installer::Files => "files",
            Installer::Ab => "ab",
            Installer::Script => "script",
        }
    }
}

impl fmt::Display for Installer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a payload is a plain file or a tar archive to unpack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Installed as the file itself.
    File,
    /// A tar archive, unpacked on install.
    Tar,
}

/// A name usable as one path component: 1..=128 bytes, no `/`, `\`, `..`, control characters or NUL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeName(String);

impl SafeName {
    /// Checks `name` against the rules above.
    pub fn parse(name: &str) -> Result<SafeName, ManifestError> {
        let fail = |reason| ManifestError::BadName {
            name: name.chars().take(MAX_NAME_BYTES).collect(),
            reason,
        };
        if name.is_empty() {
            return Err(fail("it is empty"));
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(fail("it is longer than 128 bytes"));
        }
        if name.contains(['/', '\\']) {
            return Err(fail("it contains a path separator"));
        }
        if name == "." || name.contains("..") {
            return Err(fail("it is `.` or contains `..`"));
        }
        if name.chars().any(char::is_control) {
            return Err(fail("it contains NUL or another control character"));
        }
        Ok(SafeName(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SafeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for SafeName {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SafeName::parse(s)
    }
}

impl Serialize for SafeName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SafeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        SafeName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest, written as 64 lowercase hex digits (either case is read).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// Parses 64 hex digits.
    pub fn parse(text: &str) -> Result<Sha256, ManifestError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|_| ManifestError::BadSha256(text.chars().take(80).collect()))?;
        Ok(Sha256(bytes))
    }

    /// The digest of `bytes` (for small inputs; stream large ones through `PayloadHasher`).
    pub fn digest(bytes: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Sha256 {
        Sha256(bytes)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sha256::parse(s)
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Sha256::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One payload of a bundle: a file stored as `payloads/NAME`, with its size and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// File name of the payload.
    pub name: SafeName,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the payload bytes.
    pub sha256: Sha256,
    /// Plain file or tar archive (`"type"` on the wire).
    #[serde(rename = "type")]
    pub format: PayloadFormat,
}

/// A bundle manifest, schema 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1.
    pub schema: u64,
    /// The server's id for the bundle.
    pub bundle_id: String,
    /// Bundle name; versions and downgrade checks are per name.
    pub name: SafeName,
    /// What the bundle carries.
    pub kind: Kind,
    /// Version of this bundle name.
    pub version: Version,
    /// Device types that may install it.
    pub device_types: Vec<String>,
    /// How it is installed.
    pub installer: Installer,
    /// When it was signed.
    pub created_at: Timestamp,
    /// After this instant no device installs it.
    pub expires_at: Timestamp,
    /// Lets devices install it over a newer version of the same name.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The payload files.
    pub payloads: Vec<Payload>,
}

/// Reads only `schema`, so that a future schema is reported as such rather than as unknown fields.
#[derive(Deserialize)]
struct SchemaProbe {
    schema: Option<serde_json::Value>,
}

/// Fails with `unsupported` unless the JSON document's `schema` is absent or exactly `expected`.
pub(crate) fn probe_schema<E>(
    bytes: &[u8],
    expected: u64,
    json_error: impl Fn(String) -> E,
    unsupported: impl Fn(String) -> E,
) -> Result<(), E> {
    let probe: SchemaProbe =
        serde_json::from_slice(bytes).map_err(|e| json_error(e.to_string()))?;
    match probe.schema {
        Some(value) if value.as_u64() != Some(expected) => {
            Err(unsupported(value.to_string().chars().take(40).collect()))
        }
        _ => Ok(()),
    }
}

fn is_label(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_LABEL_BYTES && !text.chars().any(char::is_control)
}

impl Manifest {
    /// Parses and validates manifest JSON (the payload of a manifest envelope).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        probe_schema(
            bytes,
            MANIFEST_SCHEMA,
            ManifestError::Json,
            ManifestError::UnsupportedSchema,
        )?;
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks the rules that span fields: schema, ids, device types, payload list, time order.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema != MANIFEST_SCHEMA {
            return Err(ManifestError::UnsupportedSchema(self.schema.to_string()));
        }
        if !is_label(&self.bundle_id) {
            return Err(ManifestError::BadBundleId);
        }
        if self.device_types.is_empty()
            || self.device_types.len() > MAX_DEVICE_TYPES
            || !self.device_types.iter().all(|t| is_label(t))
        {
            return Err(ManifestError::BadDeviceTypes);
        }
        if self.payloads.is_empty() || self.payloads.len() > MAX_PAYLOADS {
            return Err(ManifestError::BadPayloadCount);
        }
        let mut names: Vec<&str> = self.payloads.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(ManifestError::DuplicatePayload(pair[0].to_owned()));
        }
        if self.expires_at <= self.created_at {
            return Err(ManifestError::ExpiresBeforeCreated {
                created_at: self.created_at,
                expires_at: self.expires_at,
            });
        }
        Ok(())
    }

    /// The manifest as compact JSON, the bytes that get signed.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("a manifest is strings, numbers and lists and always serializes")
    }

    /// Validates the manifest and signs it into a DSSE envelope with `key`.
    pub fn sign(&self, key: &SigningKey) -> Result<Envelope, ManifestError> {
        self.validate()?;
        Ok(Envelope::sign(MANIFEST_PAYLOAD_TYPE, self.to_json(), key)?)
    }

    /// The payload called `name`, if the manifest lists it.
    pub fn payload(&self, name: &str) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.name.as_str() == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid manifest for tests across the crate.
    pub(crate) fn sample() -> Manifest {
        Manifest {
            schema: 1,
            bundle_id: "01JD3Z0000000000000000000A".into(),
            name: SafeName::parse("detector").unwrap(),
            kind: Kind::Model,
            version: Version::parse("1.2.0").unwrap(),
            device_types: vec!["rpi4".into(), "jetson-nano".into()],
            installer: Installer::Files,
            created_at: Timestamp::parse("2024-11-01T00:00:00Z").unwrap(),
            expires_at: Timestamp::parse("2025-11-01T00:00:00Z").unwrap(),
            allow_downgrade: false,
            payloads: vec![Payload {
                name: SafeName::parse("model.onnx").unwrap(),
                size: 5,
                sha256: Sha256::digest(b"hello"),
                format: PayloadFormat::File,
            }],
        }
    }

    fn json_value() -> serde_json::Value {
        serde_json::from_slice(&sample().to_json()).unwrap()
    }

    fn parse_value(value: &serde_json::Value) -> Result<Manifest, ManifestError> {
        Manifest::from_json(value.to_string().as_bytes())
    }

    #[test]
    fn wire_form_matches_the_contract() {
        let v = json_value();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["kind"], "model");
        assert_eq!(v["installer"], "files");
        assert_eq!(v["version"], "1.2.0");
        assert_eq!(v["created_at"], "2024-11-01T00:00:00Z");
        assert_eq!(v["allow_downgrade"], false);
        assert_eq!(v["payloads"][0]["type"], "file");
        assert_eq!(
            v["payloads"][0]["sha256"],
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(parse_value(&v).unwrap(), sample());
    }

    #[test]
    fn allow_downgrade_defaults_to_false() {
        let mut v = json_value();
        v.as_object_mut().unwrap().remove("allow_downgrade");
        assert!(!parse_value(&v).unwrap().allow_downgrade);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = json_value();
        v["signed_by"] = "me".into();
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `signed_by`"),
            "{err}"
        );
        let mut v = json_value();
        v["payloads"][0]["mode"] = 420.into();
        assert!(matches!(parse_value(&v), Err(ManifestError::Json(_))));
    }

    #[test]
    fn other_schemas_are_refused_by_name() {
        let mut v = json_value();
        v["schema"] = 2.into();
        v["new_field"] = true.into();
        assert_eq!(
            parse_value(&v),
            Err(ManifestError::UnsupportedSchema("2".into()))
        );
        let mut v = json_value();
        v.as_object_mut().unwrap().remove("schema");
        assert!(matches!(parse_value(&v), Err(ManifestError::Json(_))));
    }

    #[test]
    fn malformed_json_is_refused() {
        for bad in [&b"{"[..], b"[]", b"null", b"{\"schema\":1}", b""] {
            assert!(
                matches!(Manifest::from_json(bad), Err(ManifestError::Json(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("kind", "kernel".into()),
            ("installer", "apt".into()),
            ("version", "1.2".into()),
            ("version", "v1.2.0".into()),
            ("created_at", "2024-11-01T00:00:00+01:00".into()),
            ("expires_at", "tomorrow".into()),
            ("name", "../etc".into()),
            ("name", "a/b".into()),
            ("name", "".into()),
            ("name", "a\u{0}b".into()),
            ("name", "x".repeat(129).into()),
            ("device_types", serde_json::json!([])),
            ("device_types", serde_json::json!([""])),
            ("bundle_id", "".into()),
            ("payloads", serde_json::json!([])),
        ];
        for (field, value) in cases {
            let mut v = json_value();
            v[field] = value.clone();
            assert!(parse_value(&v).is_err(), "{field} = {value}");
        }
        let mut v = json_value();
        v["payloads"][0]["sha256"] = "abc".into();
        assert!(parse_value(&v).is_err());
        let mut v = json_value();
        v["payloads"][0]["type"] = "zip".into();
        assert!(parse_value(&v).is_err());
        let mut v = json_value();
        v["payloads"][0]["size"] = (-1).into();
        assert!(parse_value(&v).is_err());
    }

    #[test]
    fn cross_field_rules_are_enforced() {
        let mut m = sample();
        m.payloads.push(m.payloads[0].clone());
        assert_eq!(
            m.validate(),
            Err(ManifestError::DuplicatePayload("model.onnx".into()))
        );
        let mut m = sample();
        m.expires_at = m.created_at;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ExpiresBeforeCreated { .. })
        ));
        let mut m = sample();
        m.schema = 3;
        assert!(m.sign(&SigningKey::from_bytes(&[1; 32])).is_err());
    }

    #[test]
    fn safe_names_follow_the_rules() {
        for good in [
            "model.onnx",
            "a",
            "rootfs.ext4.gz",
            "v1-2_3",
            "é",
            &"x".repeat(128),
        ] {
            assert!(SafeName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            "a/b",
            "/a",
            "a\\b",
            "a\nb",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(SafeName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sha256_reads_either_case_and_writes_lowercase() {
        let lower = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let parsed = Sha256::parse(&lower.to_uppercase()).unwrap();
        assert_eq!(parsed.to_string(), lower);
        assert_eq!(parsed, Sha256::digest(b"hello"));
        assert!(Sha256::parse(&lower[1..]).is_err());
        assert!(Sha256::parse(&format!("{lower}00")).is_err());
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>().unwrap(), kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        assert!("kernel".parse::<Kind>().is_err());
    }

    #[test]
    fn signed_manifest_carries_the_manifest_payload_type() {
        let envelope = sample().sign(&SigningKey::from_bytes(&[1; 32])).unwrap();
        assert_eq!(envelope.payload_type(), MANIFEST_PAYLOAD_TYPE);
        assert_eq!(Manifest::from_json(envelope.payload()).unwrap(), sample());
    }
}
