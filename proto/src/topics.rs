//! MQTT topic names below a device's prefix, the two prefix shapes, and device ids.
//! A `DeviceId` is 1..=64 ASCII letters and digits, so it is safe as a topic level, broker user name
//! and tenant id; `parse_topic` accepts only the exact shape expected, with both ids equal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest device id, in characters.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Why a device id or topic is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The device id is empty, too long or not alphanumeric.
    #[error("device id `{0}` is not valid: use 1 to 64 ASCII letters and digits")]
    BadDeviceId(String),
    /// The topic does not start with the expected prefix shape.
    #[error("topic `{0}` is not under a Drover device prefix of the expected shape")]
    WrongPrefix(String),
    /// The tenant and device levels name different devices.
    #[error("topic names tenant `{tenant}` but device `{device}`; they must be the same device id")]
    TenantMismatch {
        /// The tenant level.
        tenant: String,
        /// The device level.
        device: String,
    },
    /// The name below the prefix is not one of ours.
    #[error("`{0}` is not a Drover device topic; expected telemetry, health, state or commands")]
    UnknownTopic(String),
}

/// A device id: 1..=64 ASCII letters and digits (for example a ULID).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks `id` against the rule above.
    pub fn parse(id: &str) -> Result<DeviceId, TopicError> {
        if id.is_empty()
            || id.len() > MAX_DEVICE_ID_LEN
            || !id.bytes().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(TopicError::BadDeviceId(id.chars().take(80).collect()));
        }
        Ok(DeviceId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = TopicError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::parse(s)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DeviceId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The topics below a device prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Device → server readings, QoS 1.
    Telemetry,
    /// Device → server health reports, QoS 1.
    Health,
    /// Device → server online state, retained; also the last will.
    State,
    /// Server → device commands, QoS 1.
    Commands,
}

impl TopicKind {
    /// Every topic kind.
    pub const ALL: [TopicKind; 4] = [
        TopicKind::Telemetry,
        TopicKind::Health,
        TopicKind::State,
        TopicKind::Commands,
    ];

    /// The topic name relative to the prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::Health => "health",
            TopicKind::State => "state",
            TopicKind::Commands => "commands",
        }
    }

    /// The kind for a relative topic name.
    pub fn from_name(name: &str) -> Result<TopicKind, TopicError> {
        TopicKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| TopicError::UnknownTopic(name.chars().take(80).collect()))
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Joins a device prefix (as given at enrollment) and a topic name, with exactly one `/` between.
pub fn topic(prefix: &str, kind: TopicKind) -> String {
    let mut out = String::with_capacity(prefix.len() + 10);
    out.push_str(prefix);
    if !prefix.is_empty() && !prefix.ends_with('/') {
        out.push('/');
    }
    out.push_str(kind.as_str());
    out
}

const PLAIN_ROOT: &str = "drover/v1/devices/";
const TENANT_ROOT: &str = "/tenants/";

/// Where a device's topics live: plain, or under a rumqttd tenant prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrefixShape {
    /// `drover/v1/devices/{device_id}/`, where the broker or a gateway enforces topic rights.
    Plain,
    /// `/tenants/{device_id}/drover/v1/devices/{device_id}/`, for rumqttd's tenant prefix.
    Tenant,
}

impl PrefixShape {
    /// The prefix of `device` in this shape, ending in `/`.
    pub fn prefix(self, device: &DeviceId) -> String {
        match self {
            PrefixShape::Plain => format!("{PLAIN_ROOT}{device}/"),
            PrefixShape::Tenant => format!("{TENANT_ROOT}{device}/{PLAIN_ROOT}{device}/"),
        }
    }

    /// The MQTT filter matching topic `kind` of every device in this shape (`+` for each id).
    pub fn subscription_filter(self, kind: TopicKind) -> String {
        match self {
            PrefixShape::Plain => format!("{PLAIN_ROOT}+/{kind}"),
            PrefixShape::Tenant => format!("{TENANT_ROOT}+/{PLAIN_ROOT}+/{kind}"),
        }
    }

    /// Splits `text` into the device id and what follows the prefix, if it has this shape.
    fn strip(self, text: &str) -> Result<(DeviceId, &str), TopicError> {
        let wrong = || TopicError::WrongPrefix(text.chars().take(200).collect());
        let after_tenant = match self {
            PrefixShape::Plain => None,
            PrefixShape::Tenant => {
                let rest = text.strip_prefix(TENANT_ROOT).ok_or_else(wrong)?;
                let (tenant, rest) = rest.split_once('/').ok_or_else(wrong)?;
                Some((tenant, rest))
            }
        };
        let rest = after_tenant.map_or(text, |(_, rest)| rest);
        let rest = rest.strip_prefix(PLAIN_ROOT).ok_or_else(wrong)?;
        let (device, rest) = rest.split_once('/').ok_or_else(wrong)?;
        let device = DeviceId::parse(device)?;
        if let Some((tenant, _)) = after_tenant
            && tenant != device.as_str()
        {
            return Err(TopicError::TenantMismatch {
                tenant: tenant.chars().take(80).collect(),
                device: device.to_string(),
            });
        }
        Ok((device, rest))
    }
}

/// Reads a full topic of the expected `shape` into the device it belongs to and its kind.
pub fn parse_topic(topic: &str, shape: PrefixShape) -> Result<(DeviceId, TopicKind), TopicError> {
    let (device, name) = shape.strip(topic)?;
    Ok((device, TopicKind::from_name(name)?))
}

/// Reads a device prefix (as sent in the enrollment answer) into its shape and device id.
pub fn parse_prefix(prefix: &str) -> Result<(PrefixShape, DeviceId), TopicError> {
    let shape = if prefix.starts_with(TENANT_ROOT) {
        PrefixShape::Tenant
    } else {
        PrefixShape::Plain
    };
    match shape.strip(prefix)? {
        (device, "") => Ok((shape, device)),
        _ => Err(TopicError::WrongPrefix(prefix.chars().take(200).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    const ULID: &str = "01JD3Z8Q5V6W7X8Y9Z0A1B2C3D";

    #[test]
    fn device_ids_are_alphanumeric_and_bounded() {
        assert!(DeviceId::parse(ULID).is_ok());
        assert!(DeviceId::parse("a").is_ok());
        assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
        for bad in [
            "",
            "a-b",
            "a/b",
            "a+b",
            "#",
            "dev ice",
            "é",
            &"a".repeat(65),
        ] {
            assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<DeviceId>("\"a/b\"").is_err());
    }

    #[test]
    fn prefixes_have_the_contract_shapes() {
        assert_eq!(
            PrefixShape::Plain.prefix(&id("D1")),
            "drover/v1/devices/D1/"
        );
        assert_eq!(
            PrefixShape::Tenant.prefix(&id("D1")),
            "/tenants/D1/drover/v1/devices/D1/"
        );
        assert_eq!(
            PrefixShape::Tenant.subscription_filter(TopicKind::Health),
            "/tenants/+/drover/v1/devices/+/health"
        );
        assert_eq!(
            PrefixShape::Plain.subscription_filter(TopicKind::Telemetry),
            "drover/v1/devices/+/telemetry"
        );
    }

    #[test]
    fn topic_joins_with_one_slash() {
        assert_eq!(
            topic("drover/v1/devices/D1/", TopicKind::State),
            "drover/v1/devices/D1/state"
        );
        assert_eq!(
            topic("drover/v1/devices/D1", TopicKind::State),
            "drover/v1/devices/D1/state"
        );
    }

    #[test]
    fn parse_topic_round_trips_every_kind_and_shape() {
        for shape in [PrefixShape::Plain, PrefixShape::Tenant] {
            for kind in TopicKind::ALL {
                let full = topic(&shape.prefix(&id(ULID)), kind);
                assert_eq!(parse_topic(&full, shape).unwrap(), (id(ULID), kind));
            }
        }
    }

    #[test]
    fn parse_topic_refuses_other_shapes() {
        let plain = PrefixShape::Plain;
        let tenant = PrefixShape::Tenant;
        assert!(matches!(
            parse_topic("/tenants/A/drover/v1/devices/A/health", plain),
            Err(TopicError::WrongPrefix(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/A/health", tenant),
            Err(TopicError::WrongPrefix(_))
        ));
        assert!(matches!(
            parse_topic("drover/v2/devices/A/health", plain),
            Err(TopicError::WrongPrefix(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/A", plain),
            Err(TopicError::WrongPrefix(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/A/logs", plain),
            Err(TopicError::UnknownTopic(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/A/health/x", plain),
            Err(TopicError::UnknownTopic(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/A/", plain),
            Err(TopicError::UnknownTopic(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices/+/health", plain),
            Err(TopicError::BadDeviceId(_))
        ));
        assert!(matches!(
            parse_topic("drover/v1/devices//health", plain),
            Err(TopicError::BadDeviceId(_))
        ));
        assert_eq!(
            parse_topic("/tenants/A/drover/v1/devices/B/health", tenant),
            Err(TopicError::TenantMismatch {
                tenant: "A".into(),
                device: "B".into()
            })
        );
    }

    #[test]
    fn parse_prefix_reads_both_shapes() {
        assert_eq!(
            parse_prefix("drover/v1/devices/D1/").unwrap(),
            (PrefixShape::Plain, id("D1"))
        );
        assert_eq!(
            parse_prefix("/tenants/D1/drover/v1/devices/D1/").unwrap(),
            (PrefixShape::Tenant, id("D1"))
        );
        assert!(parse_prefix("drover/v1/devices/D1").is_err());
        assert!(parse_prefix("drover/v1/devices/D1/telemetry").is_err());
        assert!(parse_prefix("/tenants/D1/drover/v1/devices/D2/").is_err());
    }
}
