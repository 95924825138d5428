//! Settings: read once at start from an optional TOML file and `DROVER_*`
//! environment variables (the environment wins), validated into typed values.
//! Every error names the key, the variable and what is accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One configuration problem: which key, which value, and what would be accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration {key} ({env}): {message}")]
pub struct ConfigError {
    /// The TOML key.
    pub key: String,
    /// The environment variable for the same key.
    pub env: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            env: env_name(key),
            message: message.into(),
        }
    }
}

fn env_name(key: &str) -> String {
    format!("DROVER_{}", key.to_ascii_uppercase())
}

/// When the session cookie carries the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieSecure {
    /// Secure when the request arrived over TLS (directly or per `X-Forwarded-Proto`).
    Auto,
    /// Always Secure (the dashboard is only reached through HTTPS).
    Always,
    /// Never Secure (plain-HTTP development setups).
    Never,
}

/// A secret setting whose Debug form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated settings every part of the server starts from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where keys, certificates, the SQLite database and blobs live.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Dashboard and REST API listener.
    pub http_listen: SocketAddr,
    /// Device API listener (mutual TLS).
    pub device_listen: SocketAddr,
    /// Embedded MQTT broker listener (TLS).
    pub mqtt_listen: SocketAddr,
    /// External broker; `None` runs the embedded one.
    pub mqtt_url: Option<String>,
    /// Names and addresses put into the server certificate.
    pub public_hostnames: Vec<String>,
    /// Blob store location (`file://…` or `s3://bucket/prefix`).
    pub blob_url: String,
    /// `tracing` filter, e.g. `info` or `drover_server=debug`.
    pub log: String,
    /// Lifetime of dashboard sessions.
    pub session_ttl_hours: u32,
    /// Lifetime of API JWTs.
    pub jwt_ttl_minutes: u32,
    /// Largest JSON request body the API accepts.
    pub max_json_bytes: usize,
    /// Largest artifact upload, in bytes (413 beyond).
    pub max_artifact_bytes: u64,
    /// Secure attribute of the session cookie.
    pub cookie_secure: CookieSecure,
    /// Lifetime of device certificates.
    pub device_cert_lifetime: std::time::Duration,
    /// How long after expiry a device certificate may still be recovered.
    pub recovery_grace: std::time::Duration,
    /// Enrollment attempts allowed per source address and minute.
    pub enroll_rate_per_minute: u32,
    /// Passphrase protecting the fleet CA key on disk.
    pub ca_passphrase: Option<Secret>,
    /// How long raw telemetry points are kept.
    pub telemetry_raw_retention: std::time::Duration,
    /// How long one-minute rollups are kept.
    pub telemetry_rollup_retention: std::time::Duration,
    /// A device not heard from for this long is marked offline.
    pub offline_after: std::time::Duration,
    /// How long finished webhook deliveries stay in the log.
    pub webhook_delivery_retention: std::time::Duration,
    /// The MQTT URL devices are told, when it differs from `mqtt_url` (an external broker's device listener).
    pub mqtt_device_url: Option<String>,
    /// Run after the CRL for an external broker is rewritten (e.g. `systemctl reload mosquitto`).
    pub mqtt_crl_reload_command: Option<String>,
    /// How often drift alert rules are judged and over how many devices a pass (not a
    /// configuration key: the defaults suit every fleet, and tests lower them).
    pub drift_pace: crate::alerts::engine::DriftPace,
}

/// The file format: the same keys as the environment, lower case. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<String>,
    database_url: Option<String>,
    http_listen: Option<String>,
    device_listen: Option<String>,
    mqtt_listen: Option<String>,
    mqtt_url: Option<String>,
    public_hostnames: Option<Vec<String>>,
    blob_url: Option<String>,
    log: Option<String>,
    session_ttl_hours: Option<u32>,
    jwt_ttl_minutes: Option<u32>,
    max_json_bytes: Option<usize>,
    max_artifact_bytes: Option<u64>,
    cookie_secure: Option<String>,
    device_cert_lifetime: Option<String>,
    recovery_grace: Option<String>,
    enroll_rate_per_minute: Option<u32>,
    ca_passphrase: Option<String>,
    mqtt_crl_reload_command: Option<String>,
    mqtt_device_url: Option<String>,
    telemetry_raw_retention: Option<String>,
    telemetry_rollup_retention: Option<String>,
    offline_after: Option<String>,
    webhook_delivery_retention: Option<String>,
}

/// Default largest artifact: 4 GiB, room for a full disk image.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// Largest object S3 copies in one request (CopyObject), so the largest artifact in a bucket.
pub const S3_MAX_COPY_BYTES: u64 = 5 << 30;

/// Every key the server reads, for the README table and for rejecting unknown variables.
pub const KEYS: &[&str] = &[
    "data_dir",
    "database_url",
    "http_listen",
    "device_listen",
    "mqtt_listen",
    "mqtt_url",
    "public_hostnames",
    "blob_url",
    "log",
    "session_ttl_hours",
    "jwt_ttl_minutes",
    "max_json_bytes",
    "max_artifact_bytes",
    "cookie_secure",
    "device_cert_lifetime",
    "recovery_grace",
    "enroll_rate_per_minute",
    "ca_passphrase",
    "mqtt_crl_reload_command",
    "mqtt_device_url",
    "telemetry_raw_retention",
    "telemetry_rollup_retention",
    "offline_after",
    "webhook_delivery_retention",
];

impl Settings {
    /// Reads the optional file, then the `DROVER_*` variables in `env`, and validates the result.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| {
                    ConfigError::new(
                        "config",
                        format!("{} is not valid: {}", path.display(), e.message()),
                    )
                })?
            }
            None => FileSettings::default(),
        };
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix("DROVER_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // DROVER_CONFIG names the file and DROVER_TEST_* belong to the test suite.
            if key == "config" || key.starts_with("test_") {
                continue;
            }
            if !KEYS.contains(&key.as_str()) {
                return Err(ConfigError::new(
                    &key,
                    format!("unknown setting; known settings are {}", KEYS.join(", ")),
                ));
            }
            vars.insert(key, value);
        }
        Self::resolve(from_file, vars)
    }

    /// Settings for tests: a data directory, a database and port 0 everywhere.
    pub fn for_tests(data_dir: &Path, database_url: &str) -> Settings {
        Settings {
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.to_string(),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            device_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_url: None,
            public_hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            blob_url: format!("file://{}", data_dir.join("blobs").display()),
            log: "warn".into(),
            session_ttl_hours: 12,
            jwt_ttl_minutes: 15,
            max_json_bytes: 1 << 20,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            cookie_secure: CookieSecure::Auto,
            device_cert_lifetime: std::time::Duration::from_secs(90 * 86_400),
            recovery_grace: std::time::Duration::from_secs(365 * 86_400),
            enroll_rate_per_minute: 1000,
            ca_passphrase: None,
            mqtt_crl_reload_command: None,
            drift_pace: Default::default(),
            mqtt_device_url: None,
            telemetry_raw_retention: std::time::Duration::from_secs(7 * 86_400),
            telemetry_rollup_retention: std::time::Duration::from_secs(365 * 86_400),
            offline_after: std::time::Duration::from_secs(90),
            webhook_delivery_retention: std::time::Duration::from_secs(30 * 86_400),
        }
    }

    fn resolve(file: FileSettings, env: BTreeMap<String, String>) -> Result<Settings, ConfigError> {
        let text = |key: &str, from_file: Option<String>| env.get(key).cloned().or(from_file);

        let data_dir = PathBuf::from(
            text("data_dir", file.data_dir).unwrap_or_else(|| "./drover-data".into()),
        );
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        let database_url = text("database_url", file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("drover.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database_url",
                format!(
                    "{:?} is not supported; use sqlite://PATH or postgres://USER@HOST:PORT/DB",
                    redact_url(&database_url)
                ),
            ));
        }
        let http_listen = listen(
            "http_listen",
            text("http_listen", file.http_listen),
            8080,
            true,
        )?;
        let device_listen = listen(
            "device_listen",
            text("device_listen", file.device_listen),
            8443,
            false,
        )?;
        let mqtt_listen = listen(
            "mqtt_listen",
            text("mqtt_listen", file.mqtt_listen),
            8883,
            false,
        )?;
        let mqtt_url = text("mqtt_url", file.mqtt_url).filter(|s| !s.is_empty());
        if let Some(url) = &mqtt_url {
            let ok = ["mqtt://", "mqtts://", "tcp://", "ssl://"]
                .iter()
                .any(|p| url.starts_with(p));
            if !ok {
                return Err(ConfigError::new(
                    "mqtt_url",
                    format!(
                        "{url:?} is not an MQTT URL; use mqtt://HOST:PORT or mqtts://HOST:PORT"
                    ),
                ));
            }
        }
        let public_hostnames = match env.get("public_hostnames") {
            Some(v) => v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => file.public_hostnames.unwrap_or_else(default_hostnames),
        };
        if public_hostnames.is_empty() {
            return Err(ConfigError::new(
                "public_hostnames",
                "needs at least one host name or address",
            ));
        }
        let blob_url = text("blob_url", file.blob_url)
            .unwrap_or_else(|| format!("file://{}", data_dir.join("blobs").display()));
        if !(blob_url.starts_with("file://") || blob_url.starts_with("s3://")) {
            return Err(ConfigError::new(
                "blob_url",
                format!("{blob_url:?} is not supported; use file://PATH or s3://BUCKET/PREFIX"),
            ));
        }
        if blob_url.starts_with("s3://")
            && let Err(e) = crate::blobs::S3Options::parse_url(&blob_url)
        {
            let message = match e {
                crate::error::Error::Invalid { message, .. } => message,
                other => other.to_string(),
            };
            return Err(ConfigError::new("blob_url", message));
        }
        let log = text("log", file.log).unwrap_or_else(|| "info".into());
        let session_ttl_hours = number(
            "session_ttl_hours",
            env.get("session_ttl_hours"),
            file.session_ttl_hours,
            12,
            1..=24 * 90,
        )?;
        let jwt_ttl_minutes = number(
            "jwt_ttl_minutes",
            env.get("jwt_ttl_minutes"),
            file.jwt_ttl_minutes,
            15,
            1..=24 * 60,
        )?;
        let max_json_bytes = number(
            "max_json_bytes",
            env.get("max_json_bytes"),
            file.max_json_bytes,
            1 << 20,
            1024..=64 << 20,
        )?;
        let max_artifact_bytes = number(
            "max_artifact_bytes",
            env.get("max_artifact_bytes"),
            file.max_artifact_bytes,
            DEFAULT_MAX_ARTIFACT_BYTES,
            1024..=1 << 40,
        )?;
        // An S3 upload is copied to its digest's key in one CopyObject, which S3 caps at 5 GiB.
        if blob_url.starts_with("s3://") && max_artifact_bytes > S3_MAX_COPY_BYTES {
            return Err(ConfigError::new(
                "max_artifact_bytes",
                format!(
                    "{max_artifact_bytes} is more than an S3 blob store takes in one artifact; use at most {S3_MAX_COPY_BYTES} (5 GiB) with an s3:// blob_url"
                ),
            ));
        }
        let cookie_secure = match text("cookie_secure", file.cookie_secure).as_deref() {
            None | Some("auto") => CookieSecure::Auto,
            Some("always") => CookieSecure::Always,
            Some("never") => CookieSecure::Never,
            Some(other) => {
                return Err(ConfigError::new(
                    "cookie_secure",
                    format!("{other:?} is not accepted; use auto, always or never"),
                ));
            }
        };
        let device_cert_lifetime = duration(
            "device_cert_lifetime",
            text("device_cert_lifetime", file.device_cert_lifetime),
            90 * 86_400,
            10..=3650 * 86_400,
        )?;
        let recovery_grace = duration(
            "recovery_grace",
            text("recovery_grace", file.recovery_grace),
            365 * 86_400,
            0..=3650 * 86_400,
        )?;
        let enroll_rate_per_minute = number(
            "enroll_rate_per_minute",
            env.get("enroll_rate_per_minute"),
            file.enroll_rate_per_minute,
            120,
            1..=1_000_000,
        )?;
        let ca_passphrase = text("ca_passphrase", file.ca_passphrase)
            .filter(|p| !p.is_empty())
            .map(Secret);
        if ca_passphrase
            .as_ref()
            .is_some_and(|p| p.0.chars().count() < 12)
        {
            return Err(ConfigError::new(
                "ca_passphrase",
                "must have at least 12 characters",
            ));
        }
        let mqtt_crl_reload_command = text("mqtt_crl_reload_command", file.mqtt_crl_reload_command)
            .filter(|c| !c.trim().is_empty());
        let mqtt_device_url =
            text("mqtt_device_url", file.mqtt_device_url).filter(|u| !u.is_empty());
        if let Some(url) = &mqtt_device_url
            && !(url.starts_with("mqtts://") || url.starts_with("mqtt://"))
        {
            return Err(ConfigError::new(
                "mqtt_device_url",
                format!("{url:?} is not an MQTT URL; use mqtts://HOST:PORT"),
            ));
        }
        let telemetry_raw_retention = duration(
            "telemetry_raw_retention",
            text("telemetry_raw_retention", file.telemetry_raw_retention),
            7 * 86_400,
            3600..=3650 * 86_400,
        )?;
        let telemetry_rollup_retention = duration(
            "telemetry_rollup_retention",
            text(
                "telemetry_rollup_retention",
                file.telemetry_rollup_retention,
            ),
            365 * 86_400,
            86_400..=36500 * 86_400,
        )?;
        let offline_after = duration(
            "offline_after",
            text("offline_after", file.offline_after),
            90,
            5..=86_400,
        )?;
        let webhook_delivery_retention = duration(
            "webhook_delivery_retention",
            text(
                "webhook_delivery_retention",
                file.webhook_delivery_retention,
            ),
            30 * 86_400,
            86_400..=3650 * 86_400,
        )?;
        Ok(Settings {
            data_dir,
            database_url,
            http_listen,
            device_listen,
            mqtt_listen,
            mqtt_url,
            public_hostnames,
            blob_url,
            log,
            session_ttl_hours,
            jwt_ttl_minutes,
            max_json_bytes,
            max_artifact_bytes,
            cookie_secure,
            device_cert_lifetime,
            recovery_grace,
            enroll_rate_per_minute,
            ca_passphrase,
            mqtt_crl_reload_command,
            drift_pace: Default::default(),
            mqtt_device_url,
            telemetry_raw_retention,
            telemetry_rollup_retention,
            offline_after,
            webhook_delivery_retention,
        })
    }
}

fn duration(
    key: &str,
    value: Option<String>,
    default_s: u64,
    range_s: std::ops::RangeInclusive<u64>,
) -> Result<std::time::Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(std::time::Duration::from_secs(default_s));
    };
    let d = crate::duration::parse(key, &value).map_err(|_| {
        ConfigError::new(
            key,
            format!("{value:?} is not a duration such as 90s, 15m, 24h or 90d"),
        )
    })?;
    if !range_s.contains(&d.as_secs()) {
        return Err(ConfigError::new(
            key,
            format!(
                "{value} is out of range; use {} to {}",
                crate::duration::format(std::time::Duration::from_secs(*range_s.start())),
                crate::duration::format(std::time::Duration::from_secs(*range_s.end()))
            ),
        ));
    }
    Ok(d)
}

fn default_hostnames() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_string());
        }
    }
    names
}

fn listen(
    key: &str,
    value: Option<String>,
    default_port: u16,
    loopback: bool,
) -> Result<SocketAddr, ConfigError> {
    let Some(value) = value else {
        let ip = if loopback {
            [127, 0, 0, 1]
        } else {
            [0, 0, 0, 0]
        };
        return Ok(SocketAddr::from((ip, default_port)));
    };
    value.parse::<SocketAddr>().map_err(|_| {
        ConfigError::new(
            key,
            format!("{value:?} is not an address; use IP:PORT such as 127.0.0.1:{default_port} (port 0 picks a free one)"),
        )
    })
}

fn number<T>(
    key: &str,
    from_env: Option<&String>,
    from_file: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let value = match from_env {
        Some(s) => s.trim().parse::<T>().map_err(|_| {
            ConfigError::new(
                key,
                format!(
                    "{s:?} is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })?,
        None => from_file.unwrap_or(default),
    };
    if !range.contains(&value) {
        return Err(ConfigError::new(
            key,
            format!(
                "{value} is out of range; use a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        for key in KEYS {
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "README.md lacks a row for {key}"
            );
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = Settings::load(None, env(&[])).expect("defaults are valid");
        assert_eq!(s.data_dir, PathBuf::from("./drover-data"));
        assert_eq!(s.database_url, "sqlite://./drover-data/drover.db");
        assert_eq!(s.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.device_listen.to_string(), "0.0.0.0:8443");
        assert_eq!(s.mqtt_listen.to_string(), "0.0.0.0:8883");
        assert!(s.mqtt_url.is_none());
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("drover.toml");
        std::fs::write(
            &file,
            "http_listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"\n",
        )
        .expect("write");
        let s = Settings::load(Some(&file), env(&[("DROVER_HTTP_LISTEN", "127.0.0.1:0")]))
            .expect("valid");
        assert_eq!(s.http_listen.port(), 0);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_listen_address_names_key_and_variable() {
        let err = Settings::load(None, env(&[("DROVER_HTTP_LISTEN", "nowhere")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http_listen"), "{text}");
        assert!(text.contains("DROVER_HTTP_LISTEN"), "{text}");
        assert!(text.contains("IP:PORT"), "{text}");
    }

    #[test]
    fn unknown_variable_and_file_key_are_rejected() {
        let err = Settings::load(None, env(&[("DROVER_HTTP_LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("unknown setting"));
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, "htp_listen = \"x\"\n").expect("write");
        let err = Settings::load(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("htp_listen"), "{err}");
    }

    #[test]
    fn blob_urls_and_the_artifact_limit_are_checked() {
        let err = Settings::load(
            None,
            env(&[("DROVER_BLOB_URL", "s3://bucket/x?key=secret")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("DROVER_BLOB_URL") && err.contains("AWS_"),
            "{err}"
        );
        let s =
            Settings::load(None, env(&[("DROVER_BLOB_URL", "s3://bucket/drover")])).expect("valid");
        assert_eq!(s.blob_url, "s3://bucket/drover");
        let err = Settings::load(
            None,
            env(&[
                ("DROVER_BLOB_URL", "s3://bucket/drover"),
                ("DROVER_MAX_ARTIFACT_BYTES", "6442450944"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("DROVER_MAX_ARTIFACT_BYTES") && err.contains("5 GiB"),
            "{err}"
        );
        let s =
            Settings::load(None, env(&[("DROVER_MAX_ARTIFACT_BYTES", "1048576")])).expect("valid");
        assert_eq!(s.max_artifact_bytes, 1 << 20);
        assert!(Settings::load(None, env(&[("DROVER_MAX_ARTIFACT_BYTES", "10")])).is_err());
    }

    #[test]
    fn the_webhook_log_retention_is_a_duration_of_a_day_or_more() {
        let s = Settings::load(None, env(&[])).expect("defaults");
        assert_eq!(s.webhook_delivery_retention.as_secs(), 30 * 86_400);
        let s = Settings::load(None, env(&[("DROVER_WEBHOOK_DELIVERY_RETENTION", "90d")]))
            .expect("valid");
        assert_eq!(s.webhook_delivery_retention.as_secs(), 90 * 86_400);
        for bad in ["1h", "forever", ""] {
            let err = Settings::load(None, env(&[("DROVER_WEBHOOK_DELIVERY_RETENTION", bad)]))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("webhook_delivery_retention"), "{bad}: {err}");
        }
    }

    #[test]
    fn cookie_secure_lists_accepted_values() {
        let err = Settings::load(None, env(&[("DROVER_COOKIE_SECURE", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("auto, always or never"));
    }

    #[test]
    fn database_url_scheme_is_checked_and_password_redacted() {
        let err = Settings::load(
            None,
            env(&[("DROVER_DATABASE_URL", "mysql://u:secret@h/db")]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
    }
}
