//! RFC 3339 UTC times (`YYYY-MM-DDTHH:MM:SS(.fraction)?Z`), the form of every time in signed documents.
//! A `Timestamp` is whole milliseconds since the Unix epoch within years 0000–9999; only the `Z` offset
//! parses, and what `Display` writes always parses back to the same instant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MILLIS_PER_DAY: i64 = 86_400_000;
/// 0000-01-01T00:00:00Z in milliseconds since the epoch.
const MIN_MILLIS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z in milliseconds since the epoch.
const MAX_MILLIS: i64 = 253_402_300_799_999;
/// Longest input worth looking at: 19 fixed characters, a fraction and `Z`.
const MAX_INPUT_BYTES: usize = 64;

/// An instant in UTC with millisecond precision, written as RFC 3339 with `Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a time could not be read or represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The text is not of the form `YYYY-MM-DDTHH:MM:SS(.fraction)?Z`.
    #[error("`{0}` is not an RFC 3339 time; write it like 2024-11-22T18:00:00Z")]
    Malformed(String),
    /// The text carries an offset other than `Z`.
    #[error(
        "`{0}` is not in UTC; write the time in UTC with a `Z` suffix, like 2024-11-22T18:00:00Z"
    )]
    NotUtc(String),
    /// A field is out of its range (month 13, February 30th, hour 24, leap second …).
    #[error("`{0}` is not a valid calendar time: {1}")]
    OutOfRange(String, &'static str),
    /// The instant lies outside years 0000–9999.
    #[error("{0} milliseconds since the epoch is outside the years 0000–9999")]
    MillisOutOfRange(i64),
}

impl Timestamp {
    /// 1970-01-01T00:00:00Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// The instant `millis` milliseconds after the Unix epoch (negative is before it).
    pub fn from_unix_millis(millis: i64) -> Result<Timestamp, TimestampError> {
        if (MIN_MILLIS..=MAX_MILLIS).contains(&millis) {
            Ok(Timestamp(millis))
        } else {
            Err(TimestampError::MillisOutOfRange(millis))
        }
    }

    /// The instant `seconds` seconds after the Unix epoch.
    pub fn from_unix_seconds(seconds: i64) -> Result<Timestamp, TimestampError> {
        let millis = seconds
            .checked_mul(1000)
            .ok_or(TimestampError::MillisOutOfRange(i64::MAX))?;
        Timestamp::from_unix_millis(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch, rounded toward the past.
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant moved by `millis` milliseconds, or `None` when that leaves years 0000–9999.
    pub fn checked_add_millis(self, millis: i64) -> Option<Timestamp> {
        self.0
            .checked_add(millis)
            .and_then(|m| Timestamp::from_unix_millis(m).ok())
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS(.fraction)?Z`; digits of the fraction past milliseconds are dropped.
    pub fn parse(input: &str) -> Result<Timestamp, TimestampError> {
        let shown = || shorten(input);
        let b = input.as_bytes();
        if b.len() > MAX_INPUT_BYTES || b.len() < 20 {
            return Err(TimestampError::Malformed(shown()));
        }
        let fixed_ok = b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
                .iter()
                .all(|&i| b[i].is_ascii_digit());
        if !fixed_ok {
            return Err(TimestampError::Malformed(shown()));
        }
        let mut rest = &b[19..];
        let mut millis_part = 0i64;
        if let Some(after_dot) = rest.strip_prefix(b".") {
            let digits = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(TimestampError::Malformed(shown()));
            }
            for i in 0..3 {
                let d = after_dot
                    .get(i)
                    .filter(|_| i < digits)
                    .map_or(0, |c| c - b'0');
                millis_part = millis_part * 10 + i64::from(d);
            }
            rest = &after_dot[digits..];
        }
        match rest {
            b"Z" => {}
            [b'+' | b'-', ..] | b"z" => return Err(TimestampError::NotUtc(shown())),
            _ => return Err(TimestampError::Malformed(shown())),
        }
        let num = |from: usize, to: usize| {
            b[from..to]
                .iter()
                .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0'))
        };
        let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
        let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
        if !(1..=12).contains(&month) {
            return Err(TimestampError::OutOfRange(shown(), "month must be 01–12"));
        }
        if day < 1 || day > days_in_month(year, month) {
            return Err(TimestampError::OutOfRange(
                shown(),
                "day does not exist in that month",
            ));
        }
        if hour > 23 || minute > 59 {
            return Err(TimestampError::OutOfRange(
                shown(),
                "hour must be 00–23 and minute 00–59",
            ));
        }
        if second > 59 {
            return Err(TimestampError::OutOfRange(
                shown(),
                "second must be 00–59 (leap seconds are not accepted)",
            ));
        }
        let days = days_from_civil(year, month, day);
        let millis =
            days * MILLIS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis_part;
        Timestamp::from_unix_millis(millis)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MILLIS_PER_DAY);
        let in_day = self.0.rem_euclid(MILLIS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let secs = in_day / 1000;
        let millis = in_day % 1000;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )?;
        if millis != 0 {
            write!(f, ".{millis:03}")?;
        }
        f.write_str("Z")
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn shorten(input: &str) -> String {
    input.chars().take(MAX_INPUT_BYTES).collect()
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn parses_known_instants() {
        assert_eq!(ts("1970-01-01T00:00:00Z").unix_millis(), 0);
        assert_eq!(ts("2024-11-22T18:00:00Z").unix_seconds(), 1_732_298_400);
        assert_eq!(ts("2000-02-29T23:59:59.5Z").unix_millis(), 951_868_799_500);
        assert_eq!(ts("1969-12-31T23:59:59.999Z").unix_millis(), -1);
        assert_eq!(ts("0000-01-01T00:00:00Z").unix_millis(), MIN_MILLIS);
        assert_eq!(ts("9999-12-31T23:59:59.999Z").unix_millis(), MAX_MILLIS);
    }

    #[test]
    fn fraction_is_truncated_to_milliseconds() {
        assert_eq!(
            ts("2024-01-01T00:00:00.123456789Z").unix_millis() % 1000,
            123
        );
        assert_eq!(ts("2024-01-01T00:00:00.1Z").unix_millis() % 1000, 100);
    }

    #[test]
    fn formats_without_fraction_when_whole_seconds() {
        assert_eq!(
            Timestamp::from_unix_seconds(1_732_298_400)
                .unwrap()
                .to_string(),
            "2024-11-22T18:00:00Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(-1).unwrap().to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn rejects_offsets_other_than_z() {
        for bad in [
            "2024-11-22T18:00:00+00:00",
            "2024-11-22T18:00:00-05:00",
            "2024-11-22T18:00:00z",
        ] {
            assert!(
                matches!(Timestamp::parse(bad), Err(TimestampError::NotUtc(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_malformed_and_impossible_times() {
        for bad in [
            "",
            "2024-11-22",
            "2024-11-22 18:00:00Z",
            "2024-11-22t18:00:00Z",
            "2024-11-22T18:00:00",
            "2024-11-22T18:00:00.Z",
            "2024-11-22T18:00Z",
            "+2024-11-22T18:00:00Z",
            "2024-1-22T18:00:00Z",
            "2024-11-22T18:00:00ZZ",
        ] {
            assert!(
                matches!(Timestamp::parse(bad), Err(TimestampError::Malformed(_))),
                "{bad}"
            );
        }
        for bad in [
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(
                matches!(Timestamp::parse(bad), Err(TimestampError::OutOfRange(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn serde_uses_the_rfc3339_string() {
        let t = ts("2024-11-22T18:00:00.250Z");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2024-11-22T18:00:00.250Z\""
        );
        let back: Timestamp = serde_json::from_str("\"2024-11-22T18:00:00.250Z\"").unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Timestamp>("\"2024-11-22T18:00:00+01:00\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("1732298400").is_err());
    }

    #[test]
    fn range_is_enforced() {
        assert!(Timestamp::from_unix_millis(MAX_MILLIS + 1).is_err());
        assert!(Timestamp::from_unix_millis(MIN_MILLIS - 1).is_err());
        assert!(Timestamp::from_unix_seconds(i64::MAX).is_err());
        assert_eq!(
            Timestamp::UNIX_EPOCH.checked_add_millis(MAX_MILLIS + 1),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn format_then_parse_round_trips(millis in MIN_MILLIS..=MAX_MILLIS) {
            let t = Timestamp::from_unix_millis(millis).unwrap();
            let text = t.to_string();
            prop_assert_eq!(Timestamp::parse(&text).unwrap(), t);
            prop_assert!(text.ends_with('Z'));
        }

        #[test]
        fn parse_then_format_round_trips(
            year in 0i64..=9999, month in 1i64..=12, day in 1i64..=28,
            hour in 0i64..24, minute in 0i64..60, second in 0i64..60, millis in 1i64..1000,
        ) {
            let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z");
            prop_assert_eq!(Timestamp::parse(&text).unwrap().to_string(), text);
        }

        #[test]
        fn ordering_matches_millis(a in MIN_MILLIS..=MAX_MILLIS, b in MIN_MILLIS..=MAX_MILLIS) {
            let (ta, tb) = (Timestamp::from_unix_millis(a).unwrap(), Timestamp::from_unix_millis(b).unwrap());
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            prop_assert_eq!(ta.to_string().cmp(&tb.to_string()) == std::cmp::Ordering::Equal, a == b);
        }
    }
}
