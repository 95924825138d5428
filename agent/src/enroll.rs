//! `drover-agent enroll`: make a key, pin the fleet CA by its hash, trade the enrollment token and
//! a CSR for a certificate, and store everything in the state directory. The token is sent only
//! over a channel that trusts the CA whose hash the operator gave, and `enrollment.json` is written
//! last, so an interrupted enrollment is simply run again (with the same key, hence the same device).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use drover_proto::topics::parse_prefix;
use drover_proto::{DeviceId, EnrollRequest, EnrollResponse, PublicKey, Timestamp, TrustStore};
use sha2::{Digest as _, Sha256};

use crate::atomic_write::{PRIVATE, PUBLIC, write_atomic, write_if_absent};
use crate::config::DEFAULT_CONFIG;
use crate::device_api::{DeviceApi, ServerUrl, fetch_ca_unverified};
use crate::error::{Error, Result};
use crate::identity::{DeviceCertificate, DeviceKey, certificate_der};
use crate::state::{
    CA_FILE, CERT_FILE, CONFIG_FILE, ENROLLMENT_FILE, Enrollment, KEY_FILE, StateDir, TRUST_FILE,
};

/// Device type claimed when `--device-type` is not given.
pub const DEFAULT_DEVICE_TYPE: &str = "generic";
/// Host name sent when `--hostname` is not given and /etc/hostname is unreadable or empty.
pub const UNKNOWN_HOSTNAME: &str = "unknown";

/// The sha256 of the fleet CA certificate's DER, as `drover token create` prints it
/// (`sha256:HEX`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaHash([u8; 32]);

impl CaHash {
    /// Parses `sha256:HEX` or bare `HEX` (64 hex digits, either case).
    pub fn parse(text: &str) -> Result<CaHash, String> {
        let trimmed = text.trim();
        let hex_part = match trimmed.split_once(':') {
            Some((algorithm, rest)) if algorithm.eq_ignore_ascii_case("sha256") => rest,
            Some(_) => {
                return Err(format!(
                    "--ca-hash `{text}` is not valid: only sha256 is supported; give it as sha256: followed by 64 hex digits, as printed by `drover token create`"
                ));
            }
            None => trimmed,
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| {
            format!(
                "--ca-hash `{text}` is not valid: expected sha256: followed by 64 hex digits, as printed by `drover token create`"
            )
        })?;
        Ok(CaHash(bytes))
    }

    /// The hash of a certificate's DER.
    pub fn of_der(der: &[u8]) -> CaHash {
        CaHash(Sha256::digest(der).into())
    }
}

impl fmt::Display for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaHash({self})")
    }
}

/// The `enroll` flags as given on the command line.
#[derive(Clone, Debug, Default)]
pub struct EnrollFlags {
    /// `--server`.
    pub server: String,
    /// `--token`.
    pub token: String,
    /// `--ca-hash`.
    pub ca_hash: String,
    /// `--device-type`.
    pub device_type: String,
    /// `--tag k=v`, repeated.
    pub tags: Vec<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
}

/// The `enroll` flags, parsed and checked.
#[derive(Clone)]
pub struct EnrollOptions {
    /// The device API address.
    pub server: ServerUrl,
    /// The enrollment token (secret: never logged).
    pub token: String,
    /// The pin for the fleet CA.
    pub ca_hash: CaHash,
    /// The device type claimed.
    pub device_type: String,
    /// Tags claimed.
    pub tags: BTreeMap<String, String>,
    /// The host name reported.
    pub hostname: String,
}

impl fmt::Debug for EnrollOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollOptions")
            .field("server", &self.server)
            .field("token", &"…")
            .field("ca_hash", &self.ca_hash)
            .field("device_type", &self.device_type)
            .field("tags", &self.tags)
            .field("hostname", &self.hostname)
            .finish()
    }
}

impl EnrollOptions {
    /// Checks the flags; a bad one is a usage error (exit 2) naming the flag.
    /// `default_hostname` is used when `--hostname` is not given.
    pub fn from_flags(
        flags: EnrollFlags,
        default_hostname: impl FnOnce() -> String,
    ) -> Result<Self> {
        let server =
            ServerUrl::parse(&flags.server).map_err(|e| Error::Usage(format!("--server {e}")))?;
        let ca_hash = CaHash::parse(&flags.ca_hash).map_err(Error::Usage)?;
        let token = flags.token.trim().to_owned();
        if token.is_empty() {
            return Err(Error::Usage(
                "--token is empty; give the token printed by `drover token create`".into(),
            ));
        }
        let device_type = flags.device_type.trim().to_owned();
        if device_type.is_empty() {
            return Err(Error::Usage("--device-type must not be empty".into()));
        }
        let tags = parse_tags(&flags.tags).map_err(Error::Usage)?;
        let hostname = match flags.hostname {
            Some(name) if name.trim().is_empty() => {
                return Err(Error::Usage("--hostname must not be empty".into()));
            }
            Some(name) => name.trim().to_owned(),
            None => default_hostname(),
        };
        Ok(EnrollOptions {
            server,
            token,
            ca_hash,
            device_type,
            tags,
            hostname,
        })
    }
}

/// Parses `--tag k=v` flags; keys must be non-empty and given once.
pub fn parse_tags(flags: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for flag in flags {
        let Some((key, value)) = flag.split_once('=') else {
            return Err(format!(
                "--tag `{flag}` is not valid: write it as KEY=VALUE"
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!(
                "--tag `{flag}` has an empty key: write it as KEY=VALUE"
            ));
        }
        if tags
            .insert(key.to_owned(), value.trim().to_owned())
            .is_some()
        {
            return Err(format!("--tag `{key}` is given twice; give each key once"));
        }
    }
    Ok(tags)
}

/// The contents of /etc/hostname, trimmed, else `unknown`.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| UNKNOWN_HOSTNAME.to_owned())
}

/// How `enroll` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Enrolled now.
    Enrolled(Enrollment),
    /// The state directory already held an enrollment with this server; nothing was changed.
    AlreadyEnrolled(Enrollment),
}

/// Runs the enrollment. `now` is the device clock, for the trust document's expiry and the record.
pub async fn enroll(
    state: &StateDir,
    options: &EnrollOptions,
    now: impl Fn() -> Timestamp,
) -> Result<Outcome> {
    if let Some(existing) = state.enrollment()? {
        return already_enrolled(state, existing, &options.server);
    }
    state.create()?;
    let key = load_or_create_key(state)?;

    // Trust nothing yet: fetch the CA over unverified TLS and check it against the pin.
    let ca = fetch_ca_unverified(&options.server).await?;
    let ca_der = certificate_der(&ca.ca_pem).map_err(|reason| Error::BadAnswer {
        what: "fetching the fleet CA",
        reason,
    })?;
    let found = CaHash::of_der(&ca_der);
    if found != options.ca_hash {
        return Err(Error::CaHashMismatch {
            expected: options.ca_hash.to_string(),
            found: found.to_string(),
        });
    }
    tracing::debug!(ca_hash = %found, "the server's CA matches the pin");

    // From here on the channel trusts only the pinned CA.
    let api = DeviceApi::pinned(&options.server, &ca_der)?;
    let request = EnrollRequest {
        token: options.token.clone(),
        csr_pem: key.csr_pem()?,
        device_type: options.device_type.clone(),
        hostname: options.hostname.clone(),
        tags: options.tags.clone(),
    };
    let answer = api.enroll(&request).await?;
    let verified = verify_answer(answer, &key, &ca_der, now())?;

    write_atomic(
        &state.file(CERT_FILE),
        verified.certificate.pem().as_bytes(),
        PUBLIC,
    )
    .map_err(|e| Error::io("write", &state.file(CERT_FILE), e))?;
    write_atomic(
        &state.file(CA_FILE),
        certificate_pem(&ca_der).as_bytes(),
        PUBLIC,
    )
    .map_err(|e| Error::io("write", &state.file(CA_FILE), e))?;
    let trust_json = verified
        .trust
        .current()
        .map(|doc| doc.envelope().to_json())
        .ok_or_else(|| Error::Crypto("the accepted trust store holds no document".into()))?;
    write_atomic(&state.file(TRUST_FILE), trust_json.as_bytes(), PUBLIC)
        .map_err(|e| Error::io("write", &state.file(TRUST_FILE), e))?;
    write_if_absent(&state.file(CONFIG_FILE), DEFAULT_CONFIG.as_bytes(), PUBLIC)
        .map_err(|e| Error::io("write", &state.file(CONFIG_FILE), e))?;

    let enrollment = Enrollment {
        device_id: verified.device_id,
        server: options.server.as_str().to_owned(),
        status: verified.status,
        mqtt_url: verified.mqtt_url,
        mqtt_topic_prefix: verified.mqtt_topic_prefix,
        root_public_key: *verified.trust.root(),
        enrolled_at: now(),
        device_type: Some(options.device_type.clone()),
    };
    let record = serde_json::to_vec_pretty(&enrollment)
        .map_err(|e| Error::Crypto(format!("cannot encode enrollment.json: {e}")))?;
    // The commit point: only now is the device enrolled.
    write_atomic(&state.file(ENROLLMENT_FILE), &record, PUBLIC)
        .map_err(|e| Error::io("write", &state.file(ENROLLMENT_FILE), e))?;
    tracing::info!(
        device_id = %enrollment.device_id,
        status = %enrollment.status,
        certificate_expires_at = %verified.certificate.not_after(),
        "enrolled"
    );
    Ok(Outcome::Enrolled(enrollment))
}

fn already_enrolled(state: &StateDir, existing: Enrollment, server: &ServerUrl) -> Result<Outcome> {
    let same = ServerUrl::parse(&existing.server).is_ok_and(|s| s.same_server(server));
    if same {
        return Ok(Outcome::AlreadyEnrolled(existing));
    }
    Err(Error::Usage(format!(
        "already enrolled as {} with {}, not {server}; to enroll with another server, stop the agent, remove the state directory {} and run enroll again",
        existing.device_id,
        existing.server,
        state.root().display()
    )))
}

/// The device key: reused when an interrupted earlier run left one, else generated and written
/// (mode 0600) before anything goes on the network.
fn load_or_create_key(state: &StateDir) -> Result<DeviceKey> {
    let path = state.file(KEY_FILE);
    if let Some(pem) = state.read_optional(KEY_FILE)? {
        let key = DeviceKey::from_pem(&pem).map_err(|e| {
            Error::State(format!(
                "{} is not a usable private key ({e}); remove it to let enroll generate a new one",
                path.display()
            ))
        })?;
        tracing::info!(path = %path.display(), "reusing the device key of an earlier, unfinished enrollment");
        return Ok(key);
    }
    let key = DeviceKey::generate()?;
    write_atomic(&path, key.to_pem().as_bytes(), PRIVATE)
        .map_err(|e| Error::io("write", &path, e))?;
    Ok(key)
}

/// An enrollment answer whose every part checked out.
struct VerifiedAnswer {
    device_id: DeviceId,
    status: String,
    certificate: DeviceCertificate,
    mqtt_url: String,
    mqtt_topic_prefix: String,
    trust: TrustStore,
}

/// Checks the enrollment answer: a valid device id, a topic prefix for that device, a certificate
/// for our key from the pinned CA, and a trust document signed by the root it names.
fn verify_answer(
    answer: EnrollResponse,
    key: &DeviceKey,
    ca_der: &[u8],
    now: Timestamp,
) -> Result<VerifiedAnswer> {
    let bad = |reason: String| Error::BadAnswer {
        what: "enrollment",
        reason,
    };
    let device_id = DeviceId::parse(&answer.device_id).map_err(|e| bad(e.to_string()))?;
    let (_, prefix_device) = parse_prefix(&answer.mqtt_topic_prefix).map_err(|e| {
        bad(format!(
            "mqtt_topic_prefix `{}` is not a device prefix: {e}",
            answer.mqtt_topic_prefix
        ))
    })?;
    if prefix_device != device_id {
        return Err(bad(format!(
            "mqtt_topic_prefix `{}` belongs to another device than {device_id}",
            answer.mqtt_topic_prefix
        )));
    }
    if answer.status.trim().is_empty() {
        return Err(bad("status is empty".into()));
    }
    if reqwest::Url::parse(&answer.mqtt_url).is_err() {
        return Err(bad(format!("mqtt_url `{}` is not a URL", answer.mqtt_url)));
    }
    let certificate = DeviceCertificate::from_pem(&answer.certificate_pem)
        .map_err(|e| bad(format!("device certificate: {e}")))?;
    certificate
        .check_issued_for(key, ca_der)
        .map_err(|e| bad(format!("device certificate: {e}")))?;
    if certificate_der(&answer.ca_pem)
        .map(|der| der != ca_der)
        .unwrap_or(true)
    {
        tracing::warn!(
            "the enrollment answer names another CA than the pinned one; keeping the pinned CA"
        );
    }
    let root = PublicKey::from_base64(&answer.root_public_key)
        .map_err(|e| bad(format!("root_public_key: {e}")))?;
    let trust = TrustStore::new(root)
        .accept_update(&answer.trust_envelope, now)
        .map_err(|e| bad(e.to_string()))?;
    Ok(VerifiedAnswer {
        device_id,
        status: answer.status,
        certificate,
        mqtt_url: answer.mqtt_url,
        mqtt_topic_prefix: answer.mqtt_topic_prefix,
        trust,
    })
}

/// A certificate's DER as PEM (64-character lines), so `ca.crt` holds exactly the pinned CA.
fn certificate_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn flags() -> EnrollFlags {
        EnrollFlags {
            server: "https://drover.example:8443".into(),
            token: "tok".into(),
            ca_hash: format!("sha256:{HEX}"),
            device_type: "generic".into(),
            tags: vec![],
            hostname: None,
        }
    }

    fn usage_error(flags: EnrollFlags) -> String {
        let err = EnrollOptions::from_flags(flags, || "box".into()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn ca_hash_accepts_the_printed_form_bare_hex_and_any_case() {
        let printed = CaHash::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(printed.to_string(), format!("sha256:{HEX}"));
        assert_eq!(CaHash::parse(HEX).unwrap(), printed);
        assert_eq!(
            CaHash::parse(&format!("SHA256:{}", HEX.to_uppercase())).unwrap(),
            printed
        );
        assert_eq!(
            CaHash::parse(&format!("  sha256:{HEX}\n")).unwrap(),
            printed
        );
    }

    #[test]
    fn ca_hash_compares_with_the_sha256_of_the_der() {
        // sha256("test")
        assert_eq!(CaHash::of_der(b"test"), CaHash::parse(HEX).unwrap());
        assert_ne!(CaHash::of_der(b"other"), CaHash::parse(HEX).unwrap());
    }

    #[test]
    fn a_malformed_ca_hash_is_a_usage_error_naming_the_flag() {
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{HEX}00"),
            &format!("sha256:{}", HEX.replace('f', "g")),
            &format!("md5:{HEX}"),
            &format!("sha256:{HEX}:x"),
        ] {
            let err = usage_error(EnrollFlags {
                ca_hash: bad.into(),
                ..flags()
            });
            assert!(err.starts_with("--ca-hash"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_are_checked_and_defaults_filled_in() {
        let options = EnrollOptions::from_flags(
            EnrollFlags {
                tags: vec!["site=berlin".into(), "line=2".into()],
                ..flags()
            },
            || "box".into(),
        )
        .unwrap();
        assert_eq!(options.hostname, "box");
        assert_eq!(options.tags["site"], "berlin");
        assert_eq!(options.server.as_str(), "https://drover.example:8443");
        assert!(!format!("{options:?}").contains("tok\""));
        assert!(
            usage_error(EnrollFlags {
                server: "http://x".into(),
                ..flags()
            })
            .starts_with("--server")
        );
        assert!(
            usage_error(EnrollFlags {
                token: " ".into(),
                ..flags()
            })
            .starts_with("--token")
        );
        assert!(
            usage_error(EnrollFlags {
                device_type: "".into(),
                ..flags()
            })
            .starts_with("--device-type")
        );
        assert!(
            usage_error(EnrollFlags {
                hostname: Some("".into()),
                ..flags()
            })
            .starts_with("--hostname")
        );
    }

    #[test]
    fn tags_are_key_value_pairs_given_once() {
        assert_eq!(
            parse_tags(&["a=1".into(), "b=".into(), "c=x=y".into()]).unwrap(),
            BTreeMap::from([
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new()),
                ("c".to_owned(), "x=y".to_owned()),
            ])
        );
        assert!(
            parse_tags(&["novalue".into()])
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(
            parse_tags(&["=1".into()])
                .unwrap_err()
                .contains("empty key")
        );
        assert!(
            parse_tags(&["a=1".into(), "a=2".into()])
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn the_stored_ca_is_the_pinned_der() {
        let key = DeviceKey::generate().unwrap();
        let (_, ca_pem) = crate::identity::tests::issue(&key, 0, 1);
        let der = certificate_der(&ca_pem).unwrap();
        let pem = certificate_pem(&der);
        assert_eq!(certificate_der(&pem).unwrap(), der);
        assert!(pem.lines().all(|line| line.len() <= 64));
    }

    #[test]
    fn the_system_hostname_is_never_empty() {
        assert!(!system_hostname().is_empty());
    }
}
