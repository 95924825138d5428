//! JSON payloads of the MQTT topics (telemetry, health, state, commands) and the update states.
//! Telemetry is exactly one of the single or batch forms; unknown fields are ignored so that servers
//! and agents of neighbouring releases keep talking. Update states travel by name, never by number.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::{Kind, SafeName};
use crate::version::Version;

/// Longest telemetry epoch, in hex digits.
pub const MAX_EPOCH_LEN: usize = 64;

/// Why a message is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The epoch is not 1..=64 hex digits.
    #[error("telemetry epoch `{0}` must be 1 to 64 hex digits")]
    BadEpoch(String),
    /// A telemetry message mixes or misses the single and batch forms.
    #[error("telemetry must have either seq, ts and metrics, or a non-empty batch, not both")]
    BadTelemetryForm,
    /// An unknown update state name.
    #[error("`{0}` is not an update state")]
    UnknownUpdateState(String),
}

/// Random per agent start, in hex; the server de-duplicates on (device, epoch, seq).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(String);

impl Epoch {
    /// Checks `text` is 1..=64 hex digits.
    pub fn parse(text: &str) -> Result<Epoch, MessageError> {
        if text.is_empty()
            || text.len() > MAX_EPOCH_LEN
            || !text.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(MessageError::BadEpoch(text.chars().take(80).collect()));
        }
        Ok(Epoch(text.to_owned()))
    }

    /// The epoch for random bytes the agent drew at start (1..=32 bytes; more are cut).
    pub fn from_random(bytes: &[u8]) -> Epoch {
        let bytes = &bytes[..bytes.len().min(MAX_EPOCH_LEN / 2)];
        if bytes.is_empty() {
            return Epoch("0".into());
        }
        Epoch(hex::encode(bytes))
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Epoch::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One reading: sequence number within the epoch, time in ms since the epoch, metric values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Rises by one per reading within an epoch.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
}

/// The readings of one telemetry message.
#[derive(Clone, Debug, PartialEq)]
pub enum Readings {
    /// `{"seq","ts","metrics"}` at the top level.
    Single(Reading),
    /// `{"batch":[…]}`, for spooled readings sent together.
    Batch(Vec<Reading>),
}

impl Readings {
    /// The readings as a slice, whichever the form.
    pub fn as_slice(&self) -> &[Reading] {
        match self {
            Readings::Single(reading) => std::slice::from_ref(reading),
            Readings::Batch(batch) => batch,
        }
    }
}

/// Payload of the `telemetry` topic, in its single or batch form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TelemetryWire", into = "TelemetryWire")]
pub struct Telemetry {
    /// The agent run the readings belong to.
    pub epoch: Epoch,
    /// Version of each bundle the readings were made with: the installed one, or the one the
    /// device program named for its reading (a model it loaded).
    pub versions: BTreeMap<String, Version>,
    /// One reading or a batch.
    pub readings: Readings,
}

#[derive(Serialize, Deserialize)]
struct TelemetryWire {
    epoch: Epoch,
    #[serde(default)]
    versions: BTreeMap<String, Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch: Option<Vec<Reading>>,
}

impl TryFrom<TelemetryWire> for Telemetry {
    type Error = MessageError;

    fn try_from(wire: TelemetryWire) -> Result<Self, Self::Error> {
        let readings = match (wire.seq, wire.ts, wire.metrics, wire.batch) {
            (Some(seq), Some(ts), Some(metrics), None) => {
                Readings::Single(Reading { seq, ts, metrics })
            }
            (None, None, None, Some(batch)) if !batch.is_empty() => Readings::Batch(batch),
            _ => return Err(MessageError::BadTelemetryForm),
        };
        Ok(Telemetry {
            epoch: wire.epoch,
            versions: wire.versions,
            readings,
        })
    }
}

impl From<Telemetry> for TelemetryWire {
    fn from(t: Telemetry) -> Self {
        let mut wire = TelemetryWire {
            epoch: t.epoch,
            versions: t.versions,
            seq: None,
            ts: None,
            metrics: None,
            batch: None,
        };
        match t.readings {
            Readings::Single(r) => {
                wire.seq = Some(r.seq);
                wire.ts = Some(r.ts);
                wire.metrics = Some(r.metrics);
            }
            Readings::Batch(batch) => wire.batch = Some(batch),
        }
        wire
    }
}

/// A bundle installed on the device, as health and `status` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledBundle {
    /// Bundle name.
    pub name: SafeName,
    /// Bundle kind.
    pub kind: Kind,
    /// Committed version.
    pub version: Version,
}

/// Payload of the `health` topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// Seconds since boot.
    pub uptime_s: u64,
    /// CPU use, 0–100 per cent.
    pub cpu_pct: f64,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Memory in total, bytes.
    pub mem_total: u64,
    /// Free space on the state directory's file system, bytes.
    pub disk_free: u64,
    /// SoC temperature in °C, where the board reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// Installed bundles.
    pub installed: Vec<InstalledBundle>,
    /// Readings waiting in the spool.
    pub spool_depth: u64,
    /// Readings dropped from a full spool since the agent started.
    pub spool_dropped: u64,
    /// State of the latest update, `null` when the device has never taken one.
    #[serde(default)]
    pub update_state: Option<UpdateState>,
}

/// Payload of the retained `state` topic (and the last will, with `online: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Whether the agent is connected.
    pub online: bool,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
}

/// Payload of the `commands` topic, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Fetch `GET /device/v1/update` for this rollout.
    UpdateAvailable {
        /// The rollout offering the update.
        rollout_id: String,
    },
    /// Return to the release kept from the previous commit.
    Rollback {
        /// The rollout being rolled back.
        rollout_id: String,
    },
    /// Renew the device certificate now.
    RenewCertificate,
    /// Fetch the current trust document now.
    RefreshTrust,
}

/// Where an update stands on a device; one list for the journal, reports, health and rollouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Fetching payloads.
    Downloading,
    /// Checking signatures and digests.
    Verifying,
    /// Running the installer.
    Installing,
    /// Rebooting into the new release or slot.
    Rebooting,
    /// In the commit window, health check pending.
    Committing,
    /// Final: the new version is committed.
    Succeeded,
    /// Final: nothing was changed (refused offer, download, verification or install error).
    Failed,
    /// Final: installed, failed its commit window, the previous version runs again.
    Reverted,
    /// Final: a server-ordered rollback finished.
    RolledBack,
    /// Final: held by the device's program.
    Deferred,
}

impl UpdateState {
    /// Every state, in contract order.
    pub const ALL: [UpdateState; 10] = [
        UpdateState::Downloading,
        UpdateState::Verifying,
        UpdateState::Installing,
        UpdateState::Rebooting,
        UpdateState::Committing,
        UpdateState::Succeeded,
        UpdateState::Failed,
        UpdateState::Reverted,
        UpdateState::RolledBack,
        UpdateState::Deferred,
    ];

    /// The contract name (`downloading`, …, `rolled_back`, `deferred`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Installing => "installing",
            UpdateState::Rebooting => "rebooting",
            UpdateState::Committing => "committing",
            UpdateState::Succeeded => "succeeded",
            UpdateState::Failed => "failed",
            UpdateState::Reverted => "reverted",
            UpdateState::RolledBack => "rolled_back",
            UpdateState::Deferred => "deferred",
        }
    }

    /// True for the states that end an update: succeeded, failed, reverted, rolled_back, deferred.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Succeeded
                | UpdateState::Failed
                | UpdateState::Reverted
                | UpdateState::RolledBack
                | UpdateState::Deferred
        )
    }

    /// True for the states that count against a rollout's failure threshold: failed and reverted.
    pub fn counts_as_failure(self) -> bool {
        matches!(self, UpdateState::Failed | UpdateState::Reverted)
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for UpdateState {
    type Err = MessageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpdateState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| MessageError::UnknownUpdateState(s.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_telemetry_reads_and_writes_the_contract_form() {
        let text = r#"{"epoch":"9f2c","seq":7,"ts":1732300000123,"metrics":{"temp_c":48.2},"versions":{"detector":"1.2.0"}}"#;
        let t: Telemetry = serde_json::from_str(text).unwrap();
        assert_eq!(t.epoch.as_str(), "9f2c");
        assert_eq!(t.readings.as_slice().len(), 1);
        assert_eq!(t.readings.as_slice()[0].metrics["temp_c"], 48.2);
        assert_eq!(t.versions["detector"], Version::new(1, 2, 0));
        let back: serde_json::Value = serde_json::to_value(&t).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }

    #[test]
    fn batch_telemetry_reads_and_writes_the_contract_form() {
        let value = json!({"epoch":"ab","versions":{},"batch":[
            {"seq":1,"ts":1,"metrics":{"a":1.0}},
            {"seq":2,"ts":2,"metrics":{"a":2.5}}
        ]});
        let t: Telemetry = serde_json::from_value(value.clone()).unwrap();
        assert!(matches!(t.readings, Readings::Batch(ref b) if b.len() == 2));
        assert_eq!(serde_json::to_value(&t).unwrap(), value);
    }

    #[test]
    fn telemetry_must_be_exactly_one_form() {
        for bad in [
            json!({"epoch":"ab","seq":1,"ts":1}),
            json!({"epoch":"ab","batch":[]}),
            json!({"epoch":"ab","seq":1,"ts":1,"metrics":{},"batch":[{"seq":1,"ts":1,"metrics":{}}]}),
            json!({"epoch":"not hex","seq":1,"ts":1,"metrics":{}}),
            json!({"seq":1,"ts":1,"metrics":{}}),
            json!({"epoch":"ab","seq":1,"ts":1,"metrics":{"a":"high"}}),
            json!({"epoch":"ab","seq":-1,"ts":1,"metrics":{}}),
        ] {
            assert!(
                serde_json::from_value::<Telemetry>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_message_fields_are_ignored() {
        let t: Telemetry =
            serde_json::from_value(json!({"epoch":"ab","seq":1,"ts":1,"metrics":{},"future":true}))
                .unwrap();
        assert!(t.versions.is_empty());
    }

    #[test]
    fn epoch_from_random_bytes_is_hex() {
        assert_eq!(Epoch::from_random(&[0xde, 0xad]).as_str(), "dead");
        assert_eq!(Epoch::from_random(&[7; 40]).as_str().len(), 64);
        assert!(Epoch::parse(Epoch::from_random(&[]).as_str()).is_ok());
        assert!(Epoch::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn health_reads_the_contract_form() {
        let value = json!({"ts":1,"uptime_s":30,"cpu_pct":12.5,"mem_used":1,"mem_total":2,"disk_free":3,
            "installed":[{"name":"detector","kind":"model","version":"1.2.0"}],
            "spool_depth":0,"spool_dropped":0,"update_state":"committing"});
        let h: Health = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(h.temp_c, None);
        assert_eq!(h.update_state, Some(UpdateState::Committing));
        assert_eq!(h.installed[0].kind, Kind::Model);
        assert_eq!(serde_json::to_value(&h).unwrap(), value);
        let mut idle = value;
        idle["update_state"] = serde_json::Value::Null;
        idle["temp_c"] = 51.0.into();
        let h: Health = serde_json::from_value(idle).unwrap();
        assert_eq!((h.update_state, h.temp_c), (None, Some(51.0)));
    }

    #[test]
    fn presence_reads_the_contract_form() {
        let p: Presence = serde_json::from_str(r#"{"online":false,"ts":5}"#).unwrap();
        assert_eq!(
            p,
            Presence {
                online: false,
                ts: 5
            }
        );
    }

    #[test]
    fn commands_are_tagged_by_type() {
        let cases = [
            (
                json!({"type":"update_available","rollout_id":"r1"}),
                Command::UpdateAvailable {
                    rollout_id: "r1".into(),
                },
            ),
            (
                json!({"type":"rollback","rollout_id":"r1"}),
                Command::Rollback {
                    rollout_id: "r1".into(),
                },
            ),
            (
                json!({"type":"renew_certificate"}),
                Command::RenewCertificate,
            ),
            (json!({"type":"refresh_trust"}), Command::RefreshTrust),
        ];
        for (value, command) in cases {
            assert_eq!(
                serde_json::from_value::<Command>(value.clone()).unwrap(),
                command
            );
            assert_eq!(serde_json::to_value(&command).unwrap(), value);
        }
        assert!(serde_json::from_value::<Command>(json!({"type":"self_destruct"})).is_err());
        assert!(serde_json::from_value::<Command>(json!({"type":"rollback"})).is_err());
    }

    #[test]
    fn update_states_use_contract_names() {
        let names: Vec<String> = UpdateState::ALL
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "downloading",
                "verifying",
                "installing",
                "rebooting",
                "committing",
                "succeeded",
                "failed",
                "reverted",
                "rolled_back",
                "deferred"
            ]
        );
        for state in UpdateState::ALL {
            assert_eq!(state.as_str().parse::<UpdateState>().unwrap(), state);
            assert_eq!(state.to_string(), state.as_str());
        }
        assert!("pending".parse::<UpdateState>().is_err());
    }

    #[test]
    fn final_and_failure_states_follow_the_contract() {
        let finals: Vec<_> = UpdateState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                UpdateState::Succeeded,
                UpdateState::Failed,
                UpdateState::Reverted,
                UpdateState::RolledBack,
                UpdateState::Deferred
            ]
        );
        let failures: Vec<_> = UpdateState::ALL
            .into_iter()
            .filter(|s| s.counts_as_failure())
            .collect();
        assert_eq!(failures, [UpdateState::Failed, UpdateState::Reverted]);
        assert!(!UpdateState::RolledBack.counts_as_failure());
    }
}
