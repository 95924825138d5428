//! Device identity: the fleet CA, enrollment tokens, devices and their
//! certificates. A device is known by the certificate it presents; a revoked
//! device's certificates are refused from the moment of revocation.

pub mod ca;
pub mod crl;
pub mod devices;
pub mod enroll;
pub mod revocation;
pub mod tokens;
pub mod views;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most tags one device or token may carry.
pub const MAX_TAGS: usize = 32;

/// Validated tags: keys of 1 to 64 letters, digits, `.`, `_` or `-`; values up to 128 printable characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct Tags(pub BTreeMap<String, String>);

impl Tags {
    /// Checks every key and value, naming the field at fault.
    pub fn parse(field: &str, map: BTreeMap<String, String>) -> Result<Tags> {
        if map.len() > MAX_TAGS {
            return Err(Error::invalid(field, format!("at most {MAX_TAGS} tags")));
        }
        for (k, v) in &map {
            if !is_name(k, 64) {
                return Err(Error::invalid(
                    field,
                    format!("tag key {k:?}: use 1 to 64 letters, digits, '.', '_' or '-'"),
                ));
            }
            if v.chars().count() > 128 || v.chars().any(char::is_control) {
                return Err(Error::invalid(
                    field,
                    format!("tag {k:?}: values have at most 128 printable characters"),
                ));
            }
        }
        Ok(Tags(map))
    }

    /// Parses `k=v` pairs (CLI) or `k:v` (query strings).
    pub fn from_pairs(field: &str, pairs: &[String], sep: char) -> Result<Tags> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let (k, v) = pair
                .split_once(sep)
                .ok_or_else(|| Error::invalid(field, format!("{pair:?} is not KEY{sep}VALUE")))?;
            map.insert(k.to_string(), v.to_string());
        }
        Tags::parse(field, map)
    }

    /// `self` with `winning` laid over it.
    pub fn merged_under(mut self, winning: &Tags) -> Tags {
        for (k, v) in &winning.0 {
            self.0.insert(k.clone(), v.clone());
        }
        self
    }
}

/// True for 1..=max letters, digits, `.`, `_`, `-`.
pub fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A validated device type such as `rpi4` or `jetson-orin`.
pub fn device_type(field: &str, s: &str) -> Result<String> {
    if is_name(s, 64) {
        Ok(s.to_string())
    } else {
        Err(Error::invalid(
            field,
            "use 1 to 64 letters, digits, '.', '_' or '-'",
        ))
    }
}

/// A validated device id: alphanumeric, 1 to 64 characters.
pub fn device_id(field: &str, s: &str) -> Result<String> {
    if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(s.to_string())
    } else {
        Err(Error::invalid(
            field,
            "device ids are 1 to 64 letters and digits",
        ))
    }
}

/// A new device id: a UUID v7 without dashes (time-ordered, alphanumeric).
pub fn new_device_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
