//! Human durations at the boundaries: `90s`, `15m`, `24h`, `90d`.

use std::time::Duration;

use crate::error::{Error, Result};

/// Parses `N` followed by `s`, `m`, `h` or `d` (a bare number is seconds).
pub fn parse(field: &str, text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| {
        Error::invalid(
            field,
            format!("{text:?} is not a duration such as 90s, 15m, 24h or 30d"),
        )
    })?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| {
        Error::invalid(
            field,
            format!("{text:?} is not a duration such as 90s, 15m, 24h or 30d"),
        )
    })?;
    Ok(Duration::from_secs(seconds))
}

/// Formats a duration in the largest whole unit.
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("x", "90").unwrap().as_secs(), 90);
        assert_eq!(parse("x", "15m").unwrap().as_secs(), 900);
        assert_eq!(parse("x", "24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse("x", "90d").unwrap().as_secs(), 90 * 86_400);
        assert!(
            parse("expires", "soon")
                .unwrap_err()
                .to_string()
                .starts_with("expires:")
        );
        assert!(parse("x", "5w").is_err());
        assert_eq!(format(Duration::from_secs(86_400 * 3)), "3d");
        assert_eq!(format(Duration::from_secs(61)), "61s");
    }
}
