//! Maintenance windows: when a rollout's offers may go out, in the devices' local time.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `{days:[…],start:"HH:MM",end:"HH:MM",tz}`: offers go out on the listed days (every day when
/// empty) from `start` until `end` in time zone `tz` (an IANA name such as `Europe/Berlin`, or
/// `UTC`). A window whose end is before its start runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// `mon` … `sun` (or full names); empty for every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Opening time, `HH:MM`.
    pub start: String,
    /// Closing time, `HH:MM` (the same as `start`: the whole day).
    pub end: String,
    /// Time zone; `UTC` when absent.
    #[serde(default = "utc")]
    pub tz: String,
}

fn utc() -> String {
    "UTC".into()
}

fn weekday(name: &str) -> Option<Weekday> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

fn minutes(field: &str, text: &str) -> Result<i32> {
    let bad = || {
        Error::invalid(
            format!("maintenance_window.{field}"),
            format!("`{text}` is not a time; write HH:MM (00:00 to 23:59)"),
        )
    };
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl MaintenanceWindow {
    /// Checks every field; errors name it.
    pub fn validate(&self) -> Result<()> {
        for (i, d) in self.days.iter().enumerate() {
            if weekday(d).is_none() {
                return Err(Error::invalid(
                    format!("maintenance_window.days[{i}]"),
                    format!("`{d}` is not a day; use mon, tue, wed, thu, fri, sat or sun"),
                ));
            }
        }
        minutes("start", &self.start)?;
        minutes("end", &self.end)?;
        self.zone()?;
        Ok(())
    }

    fn zone(&self) -> Result<TimeZone> {
        TimeZone::get(self.tz.trim()).map_err(|_| {
            Error::invalid(
                "maintenance_window.tz",
                format!(
                    "`{}` is not a known time zone; use an IANA name such as Europe/Berlin, or UTC",
                    self.tz
                ),
            )
        })
    }

    /// Whether the window is open at `now_ms` (ms since the epoch). A window that no longer
    /// parses (it was checked when stored) counts as open rather than holding offers forever.
    pub fn is_open(&self, now_ms: i64) -> bool {
        let (Ok(zone), Ok(start), Ok(end)) = (
            self.zone(),
            minutes("start", &self.start),
            minutes("end", &self.end),
        ) else {
            return true;
        };
        let Ok(at) = jiff::Timestamp::from_millisecond(now_ms) else {
            return true;
        };
        let local = at.to_zoned(zone);
        let m = i32::from(local.hour()) * 60 + i32::from(local.minute());
        let day = local.weekday();
        let on = |d: Weekday| {
            self.days.is_empty() || self.days.iter().any(|name| weekday(name) == Some(d))
        };
        match start.cmp(&end) {
            std::cmp::Ordering::Less => on(day) && (start..end).contains(&m),
            std::cmp::Ordering::Equal => on(day),
            // Past midnight: the evening part on its own day, the morning part on the day after.
            std::cmp::Ordering::Greater => {
                (on(day) && m >= start) || (on(day.previous()) && m < end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(days: &[&str], start: &str, end: &str, tz: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
            tz: tz.into(),
        }
    }

    /// 2026-12-07 is a Monday; `at(h, m)` is that day's UTC time.
    fn at(day: i64, h: i64, m: i64) -> i64 {
        let monday = 1_796_601_600_000; // 2026-12-07T00:00:00Z
        monday + day * 86_400_000 + h * 3_600_000 + m * 60_000
    }

    #[test]
    fn the_monday_anchor_is_a_monday() {
        let t = jiff::Timestamp::from_millisecond(at(0, 0, 0)).unwrap();
        assert_eq!(t.to_zoned(TimeZone::UTC).weekday(), Weekday::Monday);
    }

    #[test]
    fn a_window_opens_on_its_days_between_its_times() {
        let win = w(&["mon", "Wednesday"], "02:00", "04:00", "UTC");
        win.validate().unwrap();
        assert!(!win.is_open(at(0, 1, 59)));
        assert!(win.is_open(at(0, 2, 0)));
        assert!(win.is_open(at(0, 3, 59)));
        assert!(!win.is_open(at(0, 4, 0)));
        assert!(!win.is_open(at(1, 3, 0)), "tuesday is not listed");
        assert!(win.is_open(at(2, 3, 0)));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_opened() {
        let win = w(&["fri"], "22:00", "02:00", "UTC");
        assert!(win.is_open(at(4, 23, 0)), "friday night");
        assert!(
            win.is_open(at(5, 1, 0)),
            "saturday early is friday's window"
        );
        assert!(!win.is_open(at(4, 1, 0)), "friday early is thursday's");
        assert!(!win.is_open(at(5, 23, 0)));
    }

    #[test]
    fn time_zones_shift_the_window() {
        // 02:00–04:00 in Berlin (UTC+1 in December) is 01:00–03:00 UTC.
        let win = w(&[], "02:00", "04:00", "Europe/Berlin");
        win.validate().unwrap();
        assert!(win.is_open(at(0, 1, 30)));
        assert!(!win.is_open(at(0, 3, 30)));
        let all_day = w(&["sun"], "00:00", "00:00", "UTC");
        assert!(all_day.is_open(at(6, 12, 0)) && !all_day.is_open(at(5, 12, 0)));
    }

    #[test]
    fn bad_windows_name_the_field() {
        for (win, field) in [
            (w(&["funday"], "01:00", "02:00", "UTC"), "days[0]"),
            (w(&[], "25:00", "02:00", "UTC"), "start"),
            (w(&[], "01:00", "2pm", "UTC"), "end"),
            (w(&[], "01:00", "02:00", "Mars/Olympus"), "tz"),
        ] {
            let e = win.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
