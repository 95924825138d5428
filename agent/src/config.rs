//! `agent.toml`, the device owner's configuration (CONTRACT: "Agent configuration"). Read once at
//! start of `run`; unknown keys anywhere are an error that names them and their line, and values
//! are checked here so the rest of the agent only ever sees a valid `AgentConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use drover_proto::{Installer, Kind};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The file `enroll` writes when the owner has not provided one. It must parse (tested).
pub const DEFAULT_CONFIG: &str = r#"# Drover agent configuration. Written once by `drover-agent enroll`; yours to edit,
# the agent never overwrites it. Unknown keys are an error. Restart the agent after a change.

# Seconds between heartbeats (health reports).
heartbeat_s = 30
# Most bytes of readings kept on disk while the server cannot be reached (oldest dropped first).
spool_max_bytes = 67108864
# Longest a device program may hold installs and reboots (`defer_updates`), in seconds.
max_defer_s = 3600

# One table per bundle kind (firmware, application, model, config, agent) that this device
# installs; a bundle of a kind without a table is refused. For example:
#
# [installers.model]
# type = "files"                # files | ab | script
# target = "/opt/models"        # <bundle name>/releases/<version>/<payload>, <bundle name>/current
# restart = "systemctl restart inference"
# require_server = false        # commit only after reaching the server again (default: true for ab)
#
# [installers.firmware]
# type = "ab"
# install = "/usr/local/bin/write-slot {payload} {slot}"
# switch_once = "/usr/local/bin/try-slot {slot}"
# reboot = "systemctl reboot"
# booted_slot = "/usr/local/bin/booted-slot"
# confirm = "/usr/local/bin/confirm-slot"
#
# [health]
# command = "/usr/local/bin/selftest"   # exit 0 = healthy; runs once after install (and after the
#                                       # reboot); a failure or timeout reverts
# timeout_s = 60
# commit_window_s = 300                 # longest the commit may take (reaching the server included)
#
# Installer, restart and health commands run through `sh -c` with DROVER_AGENT_PID,
# DROVER_STATE_DIR, DROVER_BUNDLE_NAME, DROVER_BUNDLE_KIND, DROVER_BUNDLE_VERSION and
# DROVER_PREVIOUS_VERSION set.

# Device programs hand readings to STATE_DIR/intake.sock; this also takes them over HTTP
# (POST /v1/telemetry, no authentication: loopback addresses only). Off unless set.
#
# [intake]
# http_listen = "127.0.0.1:7878"
"#;

/// The agent's configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds between heartbeats (1 to 86400).
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: u64,
    /// Bound of the on-disk reading spool, in bytes (at least 64 KiB).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Longest `defer_updates` hold a device program may ask for, in seconds (0 refuses holds).
    #[serde(default = "default_max_defer_s")]
    pub max_defer_s: u64,
    /// One installer per bundle kind.
    #[serde(default)]
    pub installers: BTreeMap<Kind, InstallerConfig>,
    /// The health check run after an install.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// The local intake.
    #[serde(default)]
    pub intake: IntakeConfig,
}

/// `[intake]`: the local intake's optional HTTP listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// `POST /v1/telemetry` on this loopback address; off when absent.
    pub http_listen: Option<SocketAddr>,
}

/// `[installers.KIND]`: how bundles of one kind are installed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallerConfig {
    /// `files`, `ab` or `script`.
    #[serde(rename = "type")]
    pub installer: Installer,
    /// `files`: the directory holding `<bundle name>/releases/<version>` and `current`.
    pub target: Option<PathBuf>,
    /// `files`, `script`: a command run after the switch.
    pub restart: Option<String>,
    /// Commit only after reaching the server again; see [`InstallerConfig::require_server`].
    pub require_server: Option<bool>,
    /// `ab`: writes `{payload}` into `{slot}`, the inactive slot.
    pub install: Option<String>,
    /// `ab`: boots `{slot}` on the next boot only.
    pub switch_once: Option<String>,
    /// `ab`: reboots the device.
    pub reboot: Option<String>,
    /// `ab`: prints the slot running now.
    pub booted_slot: Option<String>,
    /// `ab`: makes the running slot the default.
    pub confirm: Option<String>,
}

impl InstallerConfig {
    /// Whether a commit needs the server reached again: as configured, else true for `ab` only.
    pub fn require_server(&self) -> bool {
        self.require_server
            .unwrap_or(self.installer == Installer::Ab)
    }

    /// The fields set, by name (for the per-type checks).
    fn set_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("target", self.target.is_some()),
            ("restart", self.restart.is_some()),
            ("install", self.install.is_some()),
            ("switch_once", self.switch_once.is_some()),
            ("reboot", self.reboot.is_some()),
            ("booted_slot", self.booted_slot.is_some()),
            ("confirm", self.confirm.is_some()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

/// `[health]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Exit 0 means healthy.
    pub command: String,
    /// Longest one run of `command` may take, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Longest the commit may take after an install (the health check, then reaching the server
    /// where required), in seconds.
    #[serde(default = "default_commit_window_s")]
    pub commit_window_s: u64,
}

fn default_heartbeat_s() -> u64 {
    30
}
fn default_spool_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_defer_s() -> u64 {
    3600
}
fn default_timeout_s() -> u64 {
    60
}
fn default_commit_window_s() -> u64 {
    300
}

/// Smallest spool worth having.
const MIN_SPOOL_BYTES: u64 = 64 * 1024;
/// Longest heartbeat interval: a day.
const MAX_HEARTBEAT_S: u64 = 86_400;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            heartbeat_s: default_heartbeat_s(),
            spool_max_bytes: default_spool_max_bytes(),
            max_defer_s: default_max_defer_s(),
            installers: BTreeMap::new(),
            health: None,
            intake: IntakeConfig::default(),
        }
    }
}

impl AgentConfig {
    /// Parses and validates `text`; `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig> {
        let config: AgentConfig = toml::from_str(text).map_err(|e| {
            let place = match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let number = text[..start].matches('\n').count() + 1;
                    let line: String = text
                        .lines()
                        .nth(number - 1)
                        .unwrap_or_default()
                        .trim()
                        .chars()
                        .take(80)
                        .collect();
                    format!("{} line {number} (`{line}`)", origin.display())
                }
                None => origin.display().to_string(),
            };
            let message = e.message().trim().replace('\n', " ");
            Error::Config(format!("{place}: {message}; correct or remove it"))
        })?;
        config
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", origin.display())))?;
        Ok(config)
    }

    /// Reads `path`; a missing file means the defaults.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => AgentConfig::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentConfig::default()),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// Checks the values and the rules between them.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_HEARTBEAT_S).contains(&self.heartbeat_s) {
            return Err(format!(
                "`heartbeat_s` must be 1 to {MAX_HEARTBEAT_S} seconds, not {}",
                self.heartbeat_s
            ));
        }
        if self.spool_max_bytes < MIN_SPOOL_BYTES {
            return Err(format!(
                "`spool_max_bytes` must be at least {MIN_SPOOL_BYTES} (64 KiB), not {}",
                self.spool_max_bytes
            ));
        }
        if let Some(addr) = self.intake.http_listen
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "`intake.http_listen` must be a loopback address such as 127.0.0.1:7878 (the HTTP intake has no authentication), not {addr}"
            ));
        }
        for (kind, installer) in &self.installers {
            validate_installer(*kind, installer)?;
        }
        if let Some(health) = &self.health {
            if health.command.trim().is_empty() {
                return Err(
                    "`health.command` must not be empty; remove [health] to run no health check"
                        .into(),
                );
            }
            if health.timeout_s == 0 {
                return Err("`health.timeout_s` must be at least 1 second".into());
            }
            if health.commit_window_s < health.timeout_s {
                return Err(format!(
                    "`health.commit_window_s` ({}) must be at least `health.timeout_s` ({}), so the health check fits in the commit window",
                    health.commit_window_s, health.timeout_s
                ));
            }
        }
        Ok(())
    }
}

fn validate_installer(kind: Kind, config: &InstallerConfig) -> Result<(), String> {
    let table = format!("[installers.{}]", kind_name(kind));
    let (required, optional): (&[&str], &[&str]) = match config.installer {
        Installer::Files => (&["target"], &["restart"]),
        Installer::Ab => (
            &["install", "switch_once", "reboot", "booted_slot", "confirm"],
            &[],
        ),
        Installer::Script => (&[], &["restart"]),
    };
    let set = config.set_fields();
    if let Some(missing) = required.iter().find(|f| !set.contains(f)) {
        return Err(format!(
            "{table} has type \"{}\", which needs `{missing}`",
            config.installer
        ));
    }
    if let Some(extra) = set
        .iter()
        .find(|f| !required.contains(f) && !optional.contains(f))
    {
        return Err(format!(
            "{table} has type \"{}\", which does not use `{extra}`; remove it",
            config.installer
        ));
    }
    let commands = [
        ("restart", &config.restart),
        ("install", &config.install),
        ("switch_once", &config.switch_once),
        ("reboot", &config.reboot),
        ("booted_slot", &config.booted_slot),
        ("confirm", &config.confirm),
    ];
    if let Some((name, _)) = commands
        .iter()
        .find(|(_, value)| value.as_deref().is_some_and(|v| v.trim().is_empty()))
    {
        return Err(format!("{table} `{name}` must not be empty"));
    }
    if let Some(target) = &config.target
        && !target.is_absolute()
    {
        return Err(format!(
            "{table} `target` must be an absolute path, not `{}`",
            target.display()
        ));
    }
    Ok(())
}

fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{kind:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from CONTRACT.md, with the placeholders filled in.
    const CONTRACT_EXAMPLE: &str = r#"
heartbeat_s = 30
spool_max_bytes = 67108864
max_defer_s = 3600

[installers.model]            # one table per artifact kind
type = "files"                # files | ab | script
target = "/opt/models"        # <bundle name>/releases/<version>/<payload>; <bundle name>/current -> the committed release
restart = "systemctl restart inference"   # optional
require_server = false        # commit only after reaching the server again (default: true for ab, false otherwise)

[installers.firmware]
type = "ab"
install = "fw-write {payload} {slot}"
switch_once = "fw-try {slot}"
reboot = "reboot"
booted_slot = "fw-booted"
confirm = "fw-confirm"

[installers.agent]            # the agent updates itself like any other kind
type = "files"
target = "/opt/drover-agent"
restart = "systemctl restart drover-agent"

[health]
command = "/usr/local/bin/selftest"   # exit 0 = healthy; runs after install (and after the reboot)
timeout_s = 60
commit_window_s = 300
"#;

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::parse(text, Path::new("/var/lib/drover-agent/agent.toml"))
    }

    fn error(text: &str) -> String {
        let err = parse(text).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn the_contract_example_parses() {
        let config = parse(CONTRACT_EXAMPLE).unwrap();
        assert_eq!(config.heartbeat_s, 30);
        assert_eq!(config.spool_max_bytes, 67_108_864);
        assert_eq!(config.max_defer_s, 3600);
        let model = &config.installers[&Kind::Model];
        assert_eq!(model.installer, Installer::Files);
        assert_eq!(model.target.as_deref(), Some(Path::new("/opt/models")));
        assert!(!model.require_server());
        let firmware = &config.installers[&Kind::Firmware];
        assert_eq!(firmware.installer, Installer::Ab);
        assert!(firmware.require_server());
        assert!(!config.installers[&Kind::Agent].require_server());
        let health = config.health.unwrap();
        assert_eq!(health.command, "/usr/local/bin/selftest");
        assert_eq!((health.timeout_s, health.commit_window_s), (60, 300));
    }

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        assert_eq!(parse(DEFAULT_CONFIG).unwrap(), AgentConfig::default());
        assert_eq!(parse("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn an_unknown_top_level_key_is_named_with_its_line() {
        let err = error("heartbeat_s = 30\nheartbeat = 10\n");
        assert!(err.contains("unknown field `heartbeat`"), "{err}");
        assert!(err.contains("agent.toml line 2"), "{err}");
    }

    #[test]
    fn an_unknown_key_in_an_installer_or_health_is_named() {
        let err =
            error("[installers.model]\ntype = \"files\"\ntarget = \"/opt\"\ntagret = \"/x\"\n");
        assert!(err.contains("unknown field `tagret`"), "{err}");
        let err = error("[health]\ncommand = \"true\"\ntimeout = 5\n");
        assert!(err.contains("unknown field `timeout`"), "{err}");
    }

    #[test]
    fn an_unknown_installer_kind_or_type_is_named() {
        let err = error("[installers.models]\ntype = \"files\"\ntarget = \"/opt\"\n");
        assert!(err.contains("models"), "{err}");
        let err = error("[installers.model]\ntype = \"zip\"\ntarget = \"/opt\"\n");
        assert!(err.contains("zip"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (text, key) in [
            ("heartbeat_s = 0", "`heartbeat_s`"),
            ("heartbeat_s = -1", "heartbeat_s"),
            ("heartbeat_s = \"30\"", "heartbeat_s"),
            ("spool_max_bytes = 10", "`spool_max_bytes`"),
            ("[health]\ncommand = \"\"", "`health.command`"),
            (
                "[health]\ncommand = \"t\"\ntimeout_s = 0",
                "`health.timeout_s`",
            ),
            (
                "[health]\ncommand = \"t\"\ntimeout_s = 60\ncommit_window_s = 30",
                "`health.commit_window_s`",
            ),
        ] {
            let err = error(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn installers_need_their_fields_and_only_theirs() {
        let err = error("[installers.model]\ntype = \"files\"\n");
        assert!(
            err.contains("[installers.model] has type \"files\", which needs `target`"),
            "{err}"
        );
        let err = error("[installers.firmware]\ntype = \"ab\"\ninstall = \"x\"\n");
        assert!(err.contains("needs `switch_once`"), "{err}");
        let err =
            error("[installers.model]\ntype = \"files\"\ntarget = \"/opt\"\nconfirm = \"x\"\n");
        assert!(err.contains("does not use `confirm`"), "{err}");
        let err = error("[installers.model]\ntype = \"files\"\ntarget = \"opt\"\n");
        assert!(err.contains("absolute path"), "{err}");
        let err = error("[installers.model]\ntype = \"script\"\nrestart = \" \"\n");
        assert!(err.contains("`restart` must not be empty"), "{err}");
        assert!(parse("[installers.config]\ntype = \"script\"\n").is_ok());
    }

    #[test]
    fn the_http_intake_is_off_by_default_and_only_on_loopback() {
        assert_eq!(parse("").unwrap().intake.http_listen, None);
        let config = parse("[intake]\nhttp_listen = \"127.0.0.1:7878\"\n").unwrap();
        assert_eq!(
            config.intake.http_listen,
            Some("127.0.0.1:7878".parse().unwrap())
        );
        assert!(parse("[intake]\nhttp_listen = \"[::1]:7878\"\n").is_ok());
        let err = error("[intake]\nhttp_listen = \"0.0.0.0:7878\"\n");
        assert!(
            err.contains("`intake.http_listen` must be a loopback"),
            "{err}"
        );
        let err = error("[intake]\nhttp_listen = \"localhost\"\n");
        assert!(err.contains("line 2"), "{err}");
        let err = error("[intake]\nhttp = \"127.0.0.1:1\"\n");
        assert!(err.contains("unknown field `http`"), "{err}");
    }

    #[test]
    fn a_missing_file_means_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            AgentConfig::load(&dir.path().join("agent.toml")).unwrap(),
            AgentConfig::default()
        );
    }
}
