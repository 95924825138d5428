//! Time at the boundaries: stored milliseconds to RFC 3339 UTC with `Z`, and back.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-23T18:33:27.123Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time given in `field` into milliseconds since the epoch.
pub fn parse_rfc3339(field: &str, s: &str) -> Result<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        Error::invalid(
            field,
            format!("{s:?} is not an RFC 3339 time such as 2026-11-23T18:00:00Z"),
        )
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| Error::invalid(field, "is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ms = parse_rfc3339("from", "2026-11-23T18:00:00.250Z").expect("parse");
        assert_eq!(rfc3339(ms), "2026-11-23T18:00:00.25Z");
        assert!(
            parse_rfc3339("from", "yesterday")
                .unwrap_err()
                .to_string()
                .starts_with("from:")
        );
    }
}
