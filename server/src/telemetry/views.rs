//! How a device's telemetry, health and events look on its dashboard page:
//! the latest values with the versions behind them, a readable health
//! summary, recent events with their log tails apart, and each metric over
//! the charted range (1 h, 24 h or 7 d) in the column shape uPlot draws.
//! Built only from the queries in `query`; everything past those calls is pure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Catalog;
use super::events::Event;
use super::ingest::BUCKET_MS;
use super::query::{self, Bucket, Latest, RawPoint};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::timefmt::rfc3339;

/// The window the device page charts first (and appends live readings to).
pub const RECENT_MS: i64 = 3_600_000;
/// Most charts on one page; each costs one or two queries.
pub const MAX_CHARTS: usize = 24;
/// Up to this many readings in the window a chart shows every reading (a
/// reading every 5 s); above it, one-minute buckets keep the answer small.
pub const RAW_LIMIT: i64 = 720;

/// One row of the device page's latest-values table.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestView {
    /// Metric name.
    pub metric: String,
    /// The value, as text.
    pub value: String,
    /// When it was read, RFC 3339.
    pub at: String,
    /// How long ago, in words ("3 min ago").
    pub age: String,
    /// (bundle name, version) the device ran then; empty when not known.
    pub versions: Vec<(String, String)>,
    /// Read within the charted window.
    pub recent: bool,
}

impl LatestView {
    /// A stored latest value, judged at `now` (ms).
    pub fn new(l: &Latest, now: i64) -> LatestView {
        LatestView {
            metric: l.metric.clone(),
            value: format_value(l.value),
            at: rfc3339(l.ts),
            age: age(now, l.ts),
            versions: versions(l.versions.as_deref()),
            recent: l.ts >= now - RECENT_MS,
        }
    }
}

/// The latest value of each of a device's metrics, as the page shows them.
pub async fn latest(store: &Store, device_id: &str, now: i64) -> Result<Vec<LatestView>> {
    Ok(query::latest(store, device_id)
        .await?
        .iter()
        .map(|l| LatestView::new(l, now))
        .collect())
}

/// The (name, version) pairs of a stored version set; unreadable text gives none.
pub fn versions(text: Option<&str>) -> Vec<(String, String)> {
    text.and_then(|t| serde_json::from_str::<BTreeMap<String, String>>(t).ok())
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// A reading as text: the shortest form that reads back as the same number,
/// in exponent form where plain digits would run long.
pub fn format_value(v: f64) -> String {
    let magnitude = v.abs();
    if magnitude != 0.0 && !(1e-4..1e15).contains(&magnitude) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// How long before `now` a time was, in the largest whole unit.
pub fn age(now: i64, ts: i64) -> String {
    let s = (now - ts) / 1000;
    match s {
        s if s < -5 => "ahead of the server's clock".to_string(),
        s if s < 5 => "just now".to_string(),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago", s / 86_400),
    }
}

/// A device's newest health report, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthView {
    /// When it arrived, RFC 3339.
    pub received_at: String,
    /// How long ago it arrived.
    pub age: String,
    /// CPU use ("12.5 %").
    pub cpu: String,
    /// Memory in use of the total ("512 MiB of 2.0 GiB (25 %)").
    pub memory: String,
    /// Free space on the state directory's file system.
    pub disk_free: String,
    /// SoC temperature, where the board reports one.
    pub temperature: Option<String>,
    /// Time since boot.
    pub uptime: String,
    /// Readings waiting in the spool.
    pub spool_depth: u64,
    /// Readings dropped from a full spool since the agent started.
    pub spool_dropped: u64,
    /// The latest update's state, if the device ever took one.
    pub update_state: Option<&'static str>,
    /// Installed bundles: (name, kind, version).
    pub installed: Vec<(String, String, String)>,
}

impl HealthView {
    /// From a stored report (validated at ingest); `None` if it no longer parses.
    pub fn parse(received_at: i64, report: &str, now: i64) -> Option<HealthView> {
        let h: drover_proto::Health = serde_json::from_str(report).ok()?;
        let mem_pct = if h.mem_total > 0 {
            format!(" ({:.0} %)", h.mem_used as f64 * 100.0 / h.mem_total as f64)
        } else {
            String::new()
        };
        Some(HealthView {
            received_at: rfc3339(received_at),
            age: age(now, received_at),
            cpu: format!("{:.1} %", h.cpu_pct),
            memory: format!("{} of {}{mem_pct}", bytes(h.mem_used), bytes(h.mem_total)),
            disk_free: bytes(h.disk_free),
            temperature: h.temp_c.map(|t| format!("{t:.1} °C")),
            uptime: duration(h.uptime_s),
            spool_depth: h.spool_depth,
            spool_dropped: h.spool_dropped,
            update_state: h.update_state.map(|s| s.as_str()),
            installed: h
                .installed
                .iter()
                .map(|b| {
                    (
                        b.name.to_string(),
                        b.kind.to_string(),
                        b.version.to_string(),
                    )
                })
                .collect(),
        })
    }
}

/// The newest health report of a device, if it sent one that still parses.
pub async fn health(store: &Store, device_id: &str, now: i64) -> Result<Option<HealthView>> {
    Ok(query::health(store, device_id)
        .await?
        .and_then(|(at, report)| HealthView::parse(at, &report, now)))
}

/// Bytes in binary units, one decimal from KiB up.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Seconds as the two largest units ("3 d 4 h", "5 min 2 s").
pub fn duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec} s"),
        (0, 0, m) => format!("{m} min {sec} s"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// A window the device page charts, as `?range=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChartRange {
    /// The last hour: every reading, or one-minute buckets when there are many.
    #[default]
    Hour,
    /// The last 24 hours in five-minute buckets.
    Day,
    /// The last 7 days in one-hour buckets.
    Week,
}

impl ChartRange {
    /// Every range, in the order the page offers them.
    pub const ALL: [ChartRange; 3] = [ChartRange::Hour, ChartRange::Day, ChartRange::Week];

    /// Parses `?range=`; absent or empty means the last hour.
    pub fn parse(text: Option<&str>) -> Result<ChartRange> {
        match text.map(str::trim) {
            None | Some("" | "1h") => Ok(ChartRange::Hour),
            Some("24h") => Ok(ChartRange::Day),
            Some("7d") => Ok(ChartRange::Week),
            Some(_) => Err(Error::invalid("range", "must be 1h, 24h or 7d")),
        }
    }

    /// The name `?range=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            ChartRange::Hour => "1h",
            ChartRange::Day => "24h",
            ChartRange::Week => "7d",
        }
    }

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            ChartRange::Hour => "1 h",
            ChartRange::Day => "24 h",
            ChartRange::Week => "7 d",
        }
    }

    /// The window's length in milliseconds.
    pub fn span_ms(self) -> i64 {
        match self {
            ChartRange::Hour => RECENT_MS,
            ChartRange::Day => 24 * 3_600_000,
            ChartRange::Week => 7 * 24 * 3_600_000,
        }
    }

    /// Bucket width: one minute for the hour (used only when it is busy),
    /// else wide enough that a chart has a few hundred points at most.
    pub fn step_ms(self) -> i64 {
        match self {
            ChartRange::Hour => BUCKET_MS,
            ChartRange::Day => 5 * 60_000,
            ChartRange::Week => 3_600_000,
        }
    }

    /// The window `[from, to)` ending at `now`. Bucketed ranges start on a
    /// bucket boundary, so their first bucket is whole rather than a sliver.
    pub fn window(self, now: i64) -> (i64, i64) {
        let from = now - self.span_ms();
        match self {
            ChartRange::Hour => (from, now),
            ChartRange::Day | ChartRange::Week => (from - from.rem_euclid(self.step_ms()), now),
        }
    }
}

/// One metric over the charted window, in columns: every reading, or buckets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Metric name.
    pub metric: String,
    /// Bucket width in seconds; absent when the points are single readings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// Times (ms since the epoch), oldest first; a bucket's is its start.
    pub ts: Vec<i64>,
    /// The readings, or each bucket's mean.
    pub value: Vec<f64>,
    /// Each bucket's smallest reading (buckets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<Vec<f64>>,
    /// Each bucket's largest reading (buckets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<Vec<f64>>,
    /// Readings in each bucket (buckets only), so a live reading can move
    /// the last bucket's mean without asking again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<Vec<i64>>,
}

impl Series {
    /// Single readings.
    pub fn raw(metric: &str, points: &[RawPoint]) -> Series {
        Series {
            metric: metric.to_string(),
            step: None,
            ts: points.iter().map(|p| p.ts).collect(),
            value: points.iter().map(|p| p.value).collect(),
            min: None,
            max: None,
            count: None,
        }
    }

    /// Buckets of `step_ms`.
    pub fn rolled(metric: &str, step_ms: i64, buckets: &[Bucket]) -> Series {
        Series {
            metric: metric.to_string(),
            step: Some(step_ms / 1000),
            ts: buckets.iter().map(|b| b.ts).collect(),
            value: buckets.iter().map(|b| b.avg).collect(),
            min: Some(buckets.iter().map(|b| b.min).collect()),
            max: Some(buckets.iter().map(|b| b.max).collect()),
            count: Some(buckets.iter().map(|b| b.count).collect()),
        }
    }
}

/// A device's metrics over one charted range, for its page's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    /// The range charted (`1h`, `24h`, `7d`).
    pub range: &'static str,
    /// Window start (ms since the epoch).
    pub from: i64,
    /// Window end, exclusive (ms).
    pub to: i64,
    /// One series per metric with readings in the window, by name.
    pub series: Vec<Series>,
    /// Metrics with readings in the window left out (over `MAX_CHARTS`).
    pub omitted: usize,
}

/// Whether a window holding `readings` is drawn from single readings.
pub fn prefer_raw(readings: i64) -> bool {
    readings <= RAW_LIMIT
}

/// Each metric the device sent in `range` before `now`: for the hour, every
/// reading when there are few and one-minute buckets otherwise; for 24 h and
/// 7 d, buckets of the range's step from the rollups, with min and max.
pub async fn series(
    store: &Store,
    catalog: &Catalog,
    device_id: &str,
    range: ChartRange,
    now: i64,
) -> Result<Recent> {
    let (from, to) = range.window(now);
    // telemetry_latest says which metrics have readings this recent, so
    // metrics the device stopped sending cost no series queries.
    let metrics: Vec<String> = query::latest(store, device_id)
        .await?
        .into_iter()
        .filter(|l| l.ts >= from)
        .map(|l| l.metric)
        .collect();
    let omitted = metrics.len().saturating_sub(MAX_CHARTS);
    let step = range.step_ms();
    let mut series = Vec::new();
    for metric in metrics.iter().take(MAX_CHARTS) {
        // Buckets first: a few hundred rows at most, and for the hour their
        // counts tell whether the raw points are few enough to send instead.
        let buckets = query::rolled(store, catalog, device_id, metric, from, to, step).await?;
        let readings: i64 = buckets.iter().map(|b| b.count).sum();
        if readings == 0 {
            continue;
        }
        series.push(if range == ChartRange::Hour && prefer_raw(readings) {
            let points = query::raw(store, catalog, device_id, metric, from, to).await?;
            Series::raw(metric, &points)
        } else {
            Series::rolled(metric, step, &buckets)
        });
    }
    Ok(Recent {
        range: range.as_str(),
        from,
        to,
        series,
        omitted,
    })
}

/// Marks where an install failure's log tail starts in its event's detail
/// (see `updates::record`).
const LOG_TAIL_MARK: &str = "\n--- log tail ---\n";

/// One row of the device page's events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// What kind of event (`online`, `update_failed`, …).
    pub kind: String,
    /// When, RFC 3339.
    pub at: String,
    /// How long ago.
    pub age: String,
    /// What happened, without the log tail.
    pub summary: String,
    /// The install or health log's last lines, for install failures.
    pub log_tail: Option<String>,
}

impl EventRow {
    /// A stored event, judged at `now` (ms).
    pub fn new(e: &Event, now: i64) -> EventRow {
        let (summary, log_tail) = match e.detail.split_once(LOG_TAIL_MARK) {
            Some((summary, tail)) => (summary.to_string(), Some(tail.to_string())),
            None => (e.detail.clone(), None),
        };
        EventRow {
            kind: e.kind.clone(),
            at: rfc3339(e.at),
            age: age(now, e.at),
            summary,
            log_tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn values_read_back_as_the_same_number() {
        assert_eq!(format_value(41.5), "41.5");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(-3.0), "-3");
        assert_eq!(format_value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_value(1e21), "1e21");
        assert_eq!(format_value(2.5e-7), "2.5e-7");
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age(NOW, NOW - 1_000), "just now");
        assert_eq!(age(NOW, NOW - 42_000), "42 s ago");
        assert_eq!(age(NOW, NOW - 3 * 60_000 - 5_000), "3 min ago");
        assert_eq!(age(NOW, NOW - 2 * 3_600_000), "2 h ago");
        assert_eq!(age(NOW, NOW - 3 * 86_400_000), "3 d ago");
        assert_eq!(age(NOW, NOW + 60_000), "ahead of the server's clock");
    }

    #[test]
    fn version_sets_read_as_pairs_and_garbage_as_none() {
        assert_eq!(
            versions(Some(r#"{"fw":"2.0.0","model":"1.2.0"}"#)),
            vec![
                ("fw".to_string(), "2.0.0".to_string()),
                ("model".to_string(), "1.2.0".to_string())
            ]
        );
        assert!(versions(Some("{}")).is_empty());
        assert!(versions(Some("not json")).is_empty());
        assert!(versions(None).is_empty());
    }

    #[test]
    fn latest_rows_know_whether_they_fall_in_the_charted_hour() {
        let row = |ts| Latest {
            metric: "temp_c".into(),
            ts,
            value: 48.25,
            versions: Some(r#"{"model":"1.2.0"}"#.into()),
        };
        let v = LatestView::new(&row(NOW - 60_000), NOW);
        assert_eq!(v.value, "48.25");
        assert_eq!(v.age, "1 min ago");
        assert_eq!(v.versions, vec![("model".into(), "1.2.0".into())]);
        assert!(v.recent);
        assert!(!LatestView::new(&row(NOW - RECENT_MS - 1), NOW).recent);
    }

    #[test]
    fn sizes_and_durations_read_like_a_person_writes_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 * 1024 * 1024 * 1024), "2.0 GiB");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(302), "5 min 2 s");
        assert_eq!(duration(3 * 3600 + 60), "3 h 1 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
    }

    #[test]
    fn a_health_report_becomes_a_summary() {
        let report = r#"{"ts":1,"uptime_s":90000,"cpu_pct":12.34,"mem_used":536870912,"mem_total":2147483648,
            "disk_free":1073741824,"temp_c":48.04,"installed":[{"name":"detector","kind":"model","version":"1.2.0"}],
            "spool_depth":3,"spool_dropped":1,"update_state":"committing"}"#;
        let h = HealthView::parse(NOW - 30_000, report, NOW).expect("parses");
        assert_eq!(h.cpu, "12.3 %");
        assert_eq!(h.memory, "512.0 MiB of 2.0 GiB (25 %)");
        assert_eq!(h.disk_free, "1.0 GiB");
        assert_eq!(h.temperature.as_deref(), Some("48.0 °C"));
        assert_eq!(h.uptime, "1 d 1 h");
        assert_eq!(h.age, "30 s ago");
        assert_eq!(h.update_state, Some("committing"));
        assert_eq!(
            h.installed,
            vec![("detector".into(), "model".into(), "1.2.0".into())]
        );
        assert_eq!(HealthView::parse(NOW, "{}", NOW), None);
    }

    #[test]
    fn ranges_parse_from_their_names_and_refuse_anything_else() {
        assert_eq!(ChartRange::parse(None).expect("default"), ChartRange::Hour);
        assert_eq!(
            ChartRange::parse(Some("")).expect("empty"),
            ChartRange::Hour
        );
        for r in ChartRange::ALL {
            assert_eq!(ChartRange::parse(Some(r.as_str())).expect("own name"), r);
        }
        for bad in ["1d", "7D", "week", "-1h"] {
            let e = ChartRange::parse(Some(bad)).expect_err(bad);
            assert_eq!(e.to_string(), "range: must be 1h, 24h or 7d");
        }
    }

    #[test]
    fn bucketed_windows_start_on_a_bucket_and_cover_the_whole_range() {
        let now = NOW + 123_456;
        assert_eq!(ChartRange::Hour.window(now), (now - RECENT_MS, now));
        for r in [ChartRange::Day, ChartRange::Week] {
            let (from, to) = r.window(now);
            assert_eq!(to, now);
            assert_eq!(from.rem_euclid(r.step_ms()), 0, "{r:?}");
            assert!(from <= now - r.span_ms() && from > now - r.span_ms() - r.step_ms());
            // A day in 5-minute buckets, a week in hours: a few hundred points.
            assert!((to - from) / r.step_ms() <= 289, "{r:?}");
        }
    }

    #[test]
    fn an_install_failure_keeps_its_log_tail_apart() {
        let event = |detail: &str| Event {
            id: 1,
            at: NOW - 120_000,
            kind: "update_failed".into(),
            detail: detail.into(),
        };
        let row = EventRow::new(
            &event("update failed (rollout r1): exit 3\n--- log tail ---\nline 1\nline 2"),
            NOW,
        );
        assert_eq!(row.summary, "update failed (rollout r1): exit 3");
        assert_eq!(row.log_tail.as_deref(), Some("line 1\nline 2"));
        assert_eq!(row.age, "2 min ago");
        let plain = EventRow::new(&event("went offline"), NOW);
        assert_eq!(
            (plain.summary.as_str(), plain.log_tail),
            ("went offline", None)
        );
    }

    #[test]
    fn few_readings_are_charted_one_by_one_and_many_in_buckets() {
        assert!(prefer_raw(30));
        assert!(prefer_raw(RAW_LIMIT));
        assert!(!prefer_raw(RAW_LIMIT + 1));
        let buckets = [Bucket {
            ts: NOW,
            min: 1.0,
            max: 3.0,
            avg: 2.0,
            count: 2,
        }];
        let s = Series::rolled("m", BUCKET_MS, &buckets);
        assert_eq!(s.step, Some(60));
        assert_eq!(
            (s.value, s.min, s.max, s.count),
            (vec![2.0], Some(vec![1.0]), Some(vec![3.0]), Some(vec![2]))
        );
        let json = serde_json::to_value(Series::raw(
            "m",
            &[RawPoint {
                ts: NOW,
                value: 1.5,
            }],
        ))
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"metric": "m", "ts": [NOW], "value": [1.5]})
        );
    }
}
