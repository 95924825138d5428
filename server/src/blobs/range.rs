//! `Range: bytes=…` for blob downloads (RFC 9110 §14): one range is served
//! as 206; a header we do not understand, and a multi-range request, get the
//! whole blob (200), which the RFC allows; a range past the end is 416.

/// What to answer a request for a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole blob, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
}

/// Decides the answer from the `Range` header, if any.
pub fn parse(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(header) = header else {
        return RangeAnswer::Full;
    };
    let header = header.trim();
    let Some(spec) = header
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| header[6..].trim())
    else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        // bytes=A- : from A to the end.
        (false, Some(start), None) if last.trim().is_empty() => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start,
                    end: size - 1,
                }
            }
        }
        // bytes=A-B
        (false, Some(start), Some(end)) if start <= end => {
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => RangeAnswer::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        let p = |start, end| RangeAnswer::Partial { start, end };
        assert_eq!(parse(None, 10), RangeAnswer::Full);
        assert_eq!(parse(Some("bytes=0-3"), 10), p(0, 3));
        assert_eq!(parse(Some("bytes=2-"), 10), p(2, 9));
        assert_eq!(parse(Some("bytes=-4"), 10), p(6, 9));
        assert_eq!(parse(Some("bytes=-40"), 10), p(0, 9));
        assert_eq!(parse(Some("bytes=5-400"), 10), p(5, 9));
        assert_eq!(parse(Some("Bytes=1-1"), 10), p(1, 1));
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(parse(Some("bytes=10-"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(parse(Some("bytes=10-12"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), RangeAnswer::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), RangeAnswer::Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), RangeAnswer::Full);
        assert_eq!(parse(Some("bytes=0-1,4-5"), 10), RangeAnswer::Full);
        assert_eq!(parse(Some("items=0-1"), 10), RangeAnswer::Full);
        assert_eq!(parse(Some("bytes=x-1"), 10), RangeAnswer::Full);
        assert_eq!(parse(Some("bytes=+1-2"), 10), RangeAnswer::Full);
    }
}
