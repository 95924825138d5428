//! Semantic versions (semver 2.0: `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`) for bundles.
//! A `Version` only exists if its text is valid semver, displays back to exactly that text, and
//! orders by semver precedence, with build metadata breaking ties so that the order is total.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest version text accepted.
pub const MAX_VERSION_BYTES: usize = 256;

/// A semantic version, ordered by semver precedence (then by build metadata).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Identifier>,
    build: Option<String>,
}

/// One dot-separated pre-release identifier; numeric ones sort before alphanumeric ones.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Identifier {
    Numeric(u64),
    Alphanumeric(String),
}

/// Why a text is not a semantic version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]): {reason}")]
pub struct VersionError {
    input: String,
    reason: &'static str,
}

impl Version {
    /// A release version without pre-release or build parts.
    pub fn new(major: u64, minor: u64, patch: u64) -> Version {
        Version {
            major,
            minor,
            patch,
            pre: Vec::new(),
            build: None,
        }
    }

    /// Parses semver 2.0 text strictly: no leading `v`, no leading zeros in numbers, no empty parts.
    pub fn parse(input: &str) -> Result<Version, VersionError> {
        let fail = |reason| VersionError {
            input: input.chars().take(MAX_VERSION_BYTES).collect(),
            reason,
        };
        if input.len() > MAX_VERSION_BYTES {
            return Err(fail("longer than 256 bytes"));
        }
        let (rest, build) = match input.split_once('+') {
            Some((rest, build)) => {
                let ok = build.split('.').all(|id| {
                    !id.is_empty() && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                });
                if !ok {
                    return Err(fail(
                        "build metadata must be non-empty dot-separated [0-9A-Za-z-] identifiers",
                    ));
                }
                (rest, Some(build.to_owned()))
            }
            None => (input, None),
        };
        let (core, pre_text) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = core.split('.');
        let mut next_number = || {
            numbers
                .next()
                .ok_or_else(|| fail("the core must be three numbers MAJOR.MINOR.PATCH"))
                .and_then(|n| parse_number(n).map_err(fail))
        };
        let (major, minor, patch) = (next_number()?, next_number()?, next_number()?);
        if numbers.next().is_some() {
            return Err(fail("the core must be three numbers MAJOR.MINOR.PATCH"));
        }
        let mut pre = Vec::new();
        if let Some(pre_text) = pre_text {
            for id in pre_text.split('.') {
                if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
                    return Err(fail(
                        "pre-release must be non-empty dot-separated [0-9A-Za-z-] identifiers",
                    ));
                }
                if id.bytes().all(|c| c.is_ascii_digit()) {
                    pre.push(Identifier::Numeric(parse_number(id).map_err(fail)?));
                } else {
                    pre.push(Identifier::Alphanumeric(id.to_owned()));
                }
            }
        }
        Ok(Version {
            major,
            minor,
            patch,
            pre,
            build,
        })
    }

    /// The MAJOR number.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// The MINOR number.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// The PATCH number.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// True for versions with a pre-release part (`1.0.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// The build metadata after `+`, if any; it takes no part in precedence.
    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// Compares by semver precedence alone, so `1.0.0+a` and `1.0.0+b` are equal here.
    pub fn cmp_precedence(&self, other: &Version) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

fn parse_number(text: &str) -> Result<u64, &'static str> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return Err("numbers must be non-empty decimal digits");
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err("numbers must not have leading zeros");
    }
    text.parse()
        .map_err(|_| "a number is too large (over 18446744073709551615)")
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_precedence(other)
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            match id {
                Identifier::Numeric(n) => write!(f, "{n}")?,
                Identifier::Alphanumeric(s) => f.write_str(s)?,
            }
        }
        if let Some(build) = &self.build {
            write!(f, "+{build}")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Version::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn precedence_follows_the_semver_spec_example() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "1.10.0",
            "2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn build_metadata_is_ignored_by_precedence_but_breaks_ties() {
        let (a, b) = (v("1.0.0+a"), v("1.0.0+b"));
        assert_eq!(a.cmp_precedence(&b), Ordering::Equal);
        assert_eq!(a.cmp_precedence(&v("1.0.0")), Ordering::Equal);
        assert!(a < b);
        assert_ne!(a, b);
        assert_eq!(a.build(), Some("a"));
    }

    #[test]
    fn accepts_valid_forms() {
        for good in [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-0",
            "1.0.0-0a",
            "1.0.0-x-y-z.--",
            "1.0.0+001",
            "1.0.0-alpha+build.1-x",
            "18446744073709551615.0.0",
        ] {
            assert_eq!(v(good).to_string(), good);
        }
    }

    #[test]
    fn rejects_bad_semver() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.2.3+",
            "1.2.3+a..b",
            "1.2.3-a_b",
            "1.2.3 ",
            " 1.2.3",
            "1.2.-3",
            "18446744073709551616.0.0",
            "1.2.3-é",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Version::parse(&format!("1.0.0-{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn error_names_the_input_and_the_rule() {
        let message = Version::parse("01.0.0").unwrap_err().to_string();
        assert!(message.contains("`01.0.0`"), "{message}");
        assert!(message.contains("leading zeros"), "{message}");
    }

    #[test]
    fn serde_uses_the_text_form() {
        assert_eq!(
            serde_json::to_string(&v("1.2.3-rc.1")).unwrap(),
            "\"1.2.3-rc.1\""
        );
        assert_eq!(
            serde_json::from_str::<Version>("\"1.2.3\"").unwrap(),
            Version::new(1, 2, 3)
        );
        assert!(serde_json::from_str::<Version>("\"1.2\"").is_err());
    }

    fn identifier() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..1000).prop_map(|n| n.to_string()),
            "[0-9A-Za-z-]{0,5}[A-Za-z-][0-9A-Za-z-]{0,5}",
        ]
    }

    fn version_text() -> impl Strategy<Value = String> {
        (
            0u64..4,
            0u64..4,
            0u64..4,
            proptest::option::of(proptest::collection::vec(identifier(), 1..4)),
            proptest::option::of(proptest::collection::vec("[0-9A-Za-z-]{1,4}", 1..3)),
        )
            .prop_map(|(major, minor, patch, pre, build)| {
                let mut text = format!("{major}.{minor}.{patch}");
                if let Some(pre) = pre {
                    text.push('-');
                    text.push_str(&pre.join("."));
                }
                if let Some(build) = build {
                    text.push('+');
                    text.push_str(&build.join("."));
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn display_round_trips(text in version_text()) {
            let parsed = Version::parse(&text).unwrap();
            prop_assert_eq!(parsed.to_string(), text);
            prop_assert_eq!(Version::parse(&parsed.to_string()).unwrap(), parsed);
        }

        #[test]
        fn order_is_total_and_consistent_with_equality(
            a in version_text(), b in version_text(), c in version_text(),
        ) {
            let (a, b, c) = (v(&a), v(&b), v(&c));
            // Antisymmetry and agreement with Eq.
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
            prop_assert_eq!(a == b, a.to_string() == b.to_string());
            // Transitivity.
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
            // Precedence never contradicts the full order.
            if a.cmp_precedence(&b) != Ordering::Equal {
                prop_assert_eq!(a.cmp_precedence(&b), a.cmp(&b));
            }
        }
    }
}
