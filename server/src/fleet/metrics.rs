//! Fleet metrics: one metric compared across groups of devices — the version
//! of a bundle they ran when they measured, their type, a tag — as statistics
//! over per-device means in a window. The sums come from the hourly and daily
//! tiers kept beside the one-minute rollups (migration 0015), so a question
//! costs a few rows per device however many readings it covers; in return a
//! window is read in whole hours (whole UTC days once longer than two days).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::on_store;
use crate::store::Store;
use crate::telemetry::Catalog;
use crate::telemetry::ingest::MAX_METRIC_NAME;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The window when none is given: the last hour.
pub const DEFAULT_WINDOW_MS: i64 = HOUR_MS;
/// The longest window one question may cover.
pub const MAX_WINDOW_MS: i64 = 31 * DAY_MS;
/// The key of readings (or devices) without the version or tag grouped by.
pub const NONE_KEY: &str = "(none)";
/// Most names of each kind offered by [`choices`].
const MAX_CHOICES: i64 = 500;

/// A metric name as ingest accepts it: 1 to 64 letters, digits, `_`, `.` or `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricName(String);

impl MetricName {
    /// Checks `s`, naming `field` when it is missing or malformed.
    pub fn parse(field: &str, s: &str) -> Result<MetricName> {
        if s.is_empty() {
            return Err(Error::invalid(
                field,
                "is required, e.g. metric=inference_ms",
            ));
        }
        if !crate::identity::is_name(s, MAX_METRIC_NAME) {
            return Err(Error::invalid(
                field,
                format!(
                    "{:?} is not a metric name: 1 to {MAX_METRIC_NAME} letters, digits, '_', '.' or '-'",
                    truncate(s)
                ),
            ));
        }
        Ok(MetricName(s.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What devices are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// The version of this bundle in each reading's version set: a device
    /// that updated inside the window counts under both versions.
    Version(String),
    /// The device's type now.
    DeviceType,
    /// The device's value of this tag now.
    Tag(String),
}

impl GroupBy {
    /// Parses `version:BUNDLE_NAME`, `device_type` or `tag:KEY`, naming `field` when wrong.
    pub fn parse(field: &str, s: &str) -> Result<GroupBy> {
        const USE: &str = "use version:BUNDLE_NAME, device_type or tag:KEY";
        match s.split_once(':') {
            None if s == "device_type" => Ok(GroupBy::DeviceType),
            Some(("version", name)) => drover_proto::SafeName::parse(name)
                .map(|n| GroupBy::Version(n.as_str().to_string()))
                .map_err(|e| Error::invalid(field, format!("{e}; {USE}"))),
            Some(("tag", key)) if crate::identity::is_name(key, 64) => {
                Ok(GroupBy::Tag(key.to_string()))
            }
            Some(("tag", _)) => Err(Error::invalid(
                field,
                "tag keys are 1 to 64 letters, digits, '.', '_' or '-'",
            )),
            _ if s.is_empty() => Err(Error::invalid(field, format!("is required; {USE}"))),
            _ => Err(Error::invalid(
                field,
                format!("{:?} is not a grouping; {USE}", truncate(s)),
            )),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupBy::Version(name) => write!(f, "version:{name}"),
            GroupBy::DeviceType => f.write_str("device_type"),
            GroupBy::Tag(key) => write!(f, "tag:{key}"),
        }
    }
}

/// The bucket width a window is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Whole hours, from `telemetry_hourly`.
    Hour,
    /// Whole UTC days, from `telemetry_daily`.
    Day,
}

impl Resolution {
    /// `hour` or `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Hour => "hour",
            Resolution::Day => "day",
        }
    }

    fn bucket_ms(self) -> i64 {
        match self {
            Resolution::Hour => HOUR_MS,
            Resolution::Day => DAY_MS,
        }
    }

    fn table(self) -> &'static str {
        match self {
            Resolution::Hour => "telemetry_hourly",
            Resolution::Day => "telemetry_daily",
        }
    }
}

/// A window `[from, to)` in milliseconds, checked: `from` before `to`, at most
/// [`MAX_WINDOW_MS`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: i64,
    to: i64,
    now: i64,
}

impl Window {
    /// The window asked for at `now`; without `to` it ends `now`, without
    /// `from` it starts [`DEFAULT_WINDOW_MS`] before its end.
    pub fn new(from: Option<i64>, to: Option<i64>, now: i64) -> Result<Window> {
        let to = to.unwrap_or(now);
        let from = from.unwrap_or_else(|| to.saturating_sub(DEFAULT_WINDOW_MS));
        if from >= to {
            return Err(Error::invalid("from", "must be before to"));
        }
        if to.saturating_sub(from) > MAX_WINDOW_MS {
            return Err(Error::invalid(
                "from",
                "the window from..to is longer than 31 days; ask for 31 days at most",
            ));
        }
        Ok(Window { from, to, now })
    }

    /// Hours up to two days; beyond that, days, which are fewer rows to read
    /// than hours even where the days stand in for most of the hours.
    pub fn resolution(&self) -> Resolution {
        if self.to - self.from > 2 * DAY_MS {
            Resolution::Day
        } else {
            Resolution::Hour
        }
    }

    /// The window read: widened to whole buckets of its resolution, so
    /// every reading asked for is in it.
    pub fn read(&self) -> (i64, i64) {
        let b = self.resolution().bucket_ms();
        let from = self.from.saturating_sub(self.from.rem_euclid(b));
        let to = match self.to.rem_euclid(b) {
            0 => self.to,
            r => self.to.saturating_add(b - r),
        };
        (from, to)
    }

    /// The spans of buckets whose signed sums make up the window read.
    pub fn spans(&self) -> Vec<Span> {
        let (from, to) = self.read();
        match self.resolution() {
            Resolution::Day => vec![Span {
                tier: Resolution::Day,
                from,
                to,
                add: true,
            }],
            Resolution::Hour => hour_spans(from, to, self.now),
        }
    }
}

/// A range of buckets of one tier, added to a window's sums or taken from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The tier read.
    pub tier: Resolution,
    /// The first bucket (ms).
    pub from: i64,
    /// The end, exclusive (ms).
    pub to: i64,
    /// Added, or taken away.
    pub add: bool,
}

/// `[from, to)` (whole hours) in the fewest rows per device: each UTC day it
/// touches is read as its hours in the window, or as the day's row less its
/// hours outside the window, whichever is fewer. Hours after `now`'s hold
/// nothing yet (bar readings stamped ahead), so they cost nothing: today is
/// one row however late it is.
fn hour_spans(from: i64, to: i64, now: i64) -> Vec<Span> {
    let filled_until = now - now.rem_euclid(HOUR_MS) + HOUR_MS;
    let hours = |a: i64, b: i64| (b.min(filled_until) - a).max(0) / HOUR_MS;
    let mut spans: Vec<Span> = Vec::new();
    let mut push = |tier: Resolution, from: i64, to: i64, add: bool| {
        if from >= to {
            return;
        }
        match spans.last_mut() {
            Some(last) if last.tier == tier && last.add == add && last.to == from => last.to = to,
            _ => spans.push(Span {
                tier,
                from,
                to,
                add,
            }),
        }
    };
    let mut day = from - from.rem_euclid(DAY_MS);
    while day < to {
        let next = day + DAY_MS;
        let (a, b) = (from.max(day), to.min(next));
        if 1 + hours(day, a) + hours(b, next) < hours(a, b) {
            push(Resolution::Day, day, next, true);
            push(Resolution::Hour, day, a, false);
            push(Resolution::Hour, b, next, false);
        } else {
            push(Resolution::Hour, a, b, true);
        }
        day = next;
    }
    spans
}

/// Statistics of one group's per-device means.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct GroupStats {
    /// The version, device type or tag value; `(none)` for readings or devices without one.
    pub key: String,
    /// Devices with readings in the group.
    pub devices: usize,
    /// Mean of the per-device means.
    pub mean: f64,
    /// Median of the per-device means (nearest rank).
    pub p50: f64,
    /// 95th percentile of the per-device means (nearest rank).
    pub p95: f64,
    /// Smallest per-device mean.
    pub min: f64,
    /// Largest per-device mean.
    pub max: f64,
}

/// The statistics of `means` (one per device); `None` for no devices.
///
/// Percentiles are by nearest rank: the p-th percentile of n sorted values
/// is the value at rank ⌈p·n/100⌉ (counting from 1), always one of the
/// devices' means and never an interpolation between two.
pub fn summarize(key: String, mut means: Vec<f64>) -> Option<GroupStats> {
    means.sort_by(f64::total_cmp);
    let (&min, &max) = (means.first()?, means.last()?);
    Some(GroupStats {
        key,
        devices: means.len(),
        mean: means.iter().sum::<f64>() / means.len() as f64,
        p50: nearest_rank(&means, 50)?,
        p95: nearest_rank(&means, 95)?,
        min,
        max,
    })
}

/// The `p`-th percentile (0 < p ≤ 100) of ascending `sorted` by nearest rank.
pub fn nearest_rank(sorted: &[f64], p: usize) -> Option<f64> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetMetrics {
    /// The window read, widened to whole buckets (ms).
    pub from: i64,
    /// Its end, exclusive (ms).
    pub to: i64,
    /// The bucket width it was read in.
    pub resolution: Resolution,
    /// The groups, in key order (versions by precedence), `(none)` last.
    pub groups: Vec<GroupStats>,
}

/// Compares `metric` across the groups of `group_by` over `window`.
pub async fn compare(
    store: &Store,
    catalog: &Catalog,
    metric: &MetricName,
    group_by: &GroupBy,
    window: Window,
) -> Result<FleetMetrics> {
    let Some(metric_id) = catalog.find_metric(store, metric.as_str()).await? else {
        return Err(Error::invalid(
            "metric",
            format!(
                "no device has sent a reading of {:?}; see the metric names in the dashboard's fleet page",
                metric.as_str()
            ),
        ));
    };
    let resolution = window.resolution();
    let (from, to) = window.read();
    let rows = device_sums(store, &window.spans(), metric_id, group_by).await?;
    let mut means: HashMap<String, Vec<f64>> = HashMap::new();
    let mut add = |key: &str, sum: f64, count: i64| {
        // A device's net count is zero where the spans taken away held all its readings.
        if count > 0 {
            let mean = sum / count as f64;
            match means.get_mut(key) {
                Some(m) => m.push(mean),
                None => {
                    means.insert(key.to_string(), vec![mean]);
                }
            }
        }
    };
    let by_version = matches!(group_by, GroupBy::Version(_));
    if let GroupBy::Version(name) = group_by {
        let versions = version_keys(store, name).await?;
        // A device that updated in the window has a mean under each version
        // it ran (version sets that name the same version count together).
        let mut per_device: HashMap<(&str, &str), (f64, i64)> = HashMap::new();
        for (device, set, sum, count, _) in &rows {
            let key = versions.get(set).map_or(NONE_KEY, String::as_str);
            let e = per_device.entry((device, key)).or_insert((0.0, 0));
            e.0 += sum;
            e.1 += count;
        }
        for ((_, key), (sum, count)) in per_device {
            add(key, sum, count);
        }
    } else {
        for (_, _, sum, count, key) in &rows {
            add(key.as_deref().unwrap_or(NONE_KEY), *sum, *count);
        }
    }
    let mut groups: Vec<GroupStats> = means
        .into_iter()
        .filter_map(|(key, m)| summarize(key, m))
        .collect();
    groups.sort_by(|a, b| key_order(&a.key, &b.key, by_version));
    Ok(FleetMetrics {
        from,
        to,
        resolution,
        groups,
    })
}

/// Keys in order: versions by semver precedence (when grouping by version
/// and both are versions), else as text with numbers by value (`site-2`
/// before `site-10`); `(none)` last.
fn key_order(a: &str, b: &str, versions: bool) -> Ordering {
    let none = |k: &str| k == NONE_KEY;
    none(a).cmp(&none(b)).then_with(|| {
        if versions
            && let (Ok(va), Ok(vb)) = (
                drover_proto::Version::parse(a),
                drover_proto::Version::parse(b),
            )
        {
            return va.cmp(&vb);
        }
        natural_order(a, b)
    })
}

/// Text in natural order: runs of digits compare by their value.
fn natural_order(mut a: &str, mut b: &str) -> Ordering {
    let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let ((na, ra), (nb, rb)) = (a.split_at(digits(a)), b.split_at(digits(b)));
                let (va, vb) = (na.trim_start_matches('0'), nb.trim_start_matches('0'));
                let order = va
                    .len()
                    .cmp(&vb.len())
                    .then_with(|| va.cmp(vb))
                    .then_with(|| na.len().cmp(&nb.len()));
                if order != Ordering::Equal {
                    return order;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(&y),
            (Some(x), Some(_)) => (a, b) = (&a[x.len_utf8()..], &b[x.len_utf8()..]),
        }
    }
}

/// A device's sums in the window: (device, version set when grouping by
/// version, sum, count, its type or tag value when grouping by one).
type DeviceRow = (String, i64, f64, i64, Option<String>);

/// The per-device sums of a metric over `spans`.
///
/// The query answers one JSON array rather than a row per device: the
/// driver hands rows over one at a time, about 4 µs each, so 100,000 rows
/// cost 0.4 s where the same data as one text value costs 30 ms to build
/// and parse. (SQLite writes reals in JSON with 15 significant digits.)
async fn device_sums(
    store: &Store,
    spans: &[Span],
    metric_id: i64,
    group_by: &GroupBy,
) -> Result<Vec<DeviceRow>> {
    let postgres = matches!(store, Store::Postgres(_));
    // $1 is the metric, then each span's bounds, then the tag key.
    let union = spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let sign = if span.add { "" } else { "-" };
            format!(
                "SELECT device_id, version_set_id, {sign}sum AS s, {sign}count AS c FROM {}
                  WHERE metric_id = $1 AND bucket >= ${} AND bucket < ${}",
                span.tier.table(),
                2 * i + 2,
                2 * i + 3
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let tag_param = 2 * spans.len() + 2;
    let (version, group, key, join) = match group_by {
        GroupBy::Version(_) => (
            "r.version_set_id",
            "r.device_id, r.version_set_id",
            if postgres { "NULL::text" } else { "NULL" },
            String::new(),
        ),
        GroupBy::DeviceType => (
            "0",
            "r.device_id",
            "k.device_type",
            "JOIN devices k ON k.id = x.device_id".to_string(),
        ),
        GroupBy::Tag(_) => (
            "0",
            "r.device_id",
            "k.value",
            format!(
                "LEFT JOIN device_tags k ON k.device_id = x.device_id AND k.key = ${tag_param}"
            ),
        ),
    };
    let (count, packed) = if postgres {
        (
            "CAST(SUM(r.c) AS BIGINT)",
            format!(
                "COALESCE(json_agg(json_build_array(x.device_id, x.v, x.s, x.c, {key})), '[]')::text"
            ),
        )
    } else {
        (
            "SUM(r.c)",
            format!("json_group_array(json_array(x.device_id, x.v, x.s, x.c, {key}))"),
        )
    };
    let sql = format!(
        "SELECT {packed} FROM (
           SELECT r.device_id, {version} AS v, SUM(r.s) AS s, {count} AS c FROM ({union}) r
            GROUP BY {group}) x {join}"
    );
    let tag = match group_by {
        GroupBy::Tag(key) => Some(key.as_str()),
        _ => None,
    };
    let packed: String = on_store!(store, pool => {
        let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(metric_id);
        for span in spans {
            q = q.bind(span.from).bind(span.to);
        }
        if let Some(key) = tag {
            q = q.bind(key);
        }
        q.fetch_one(pool).await
    })?;
    serde_json::from_str(&packed)
        .map_err(|e| Error::Internal(format!("the store's fleet sums are not readable: {e}")))
}

/// Each stored version set's version of bundle `name` (sets without it are left out).
async fn version_keys(store: &Store, name: &str) -> Result<HashMap<i64, String>> {
    let sets: Vec<(i64, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT id, versions FROM version_sets").fetch_all(pool).await)?;
    Ok(sets
        .into_iter()
        .filter_map(|(id, versions)| {
            // Ingest wrote each set as a JSON object of name → version text.
            let mut map: BTreeMap<String, String> = serde_json::from_str(&versions).ok()?;
            Some((id, map.remove(name)?))
        })
        .collect())
}

/// What the fleet page offers to choose from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choices {
    /// Metric names ever stored, in order.
    pub metrics: Vec<String>,
    /// Bundle names devices have installed now, in order.
    pub bundles: Vec<String>,
    /// Tag keys devices carry, in order.
    pub tag_keys: Vec<String>,
}

/// Metric names, installed bundle names and tag keys (up to 500 of each).
pub async fn choices(store: &Store) -> Result<Choices> {
    // Each distinct name is one index seek past the previous one, so this
    // costs the number of names, not of devices.
    fn distinct(table: &str, column: &str) -> String {
        format!(
            "WITH RECURSIVE n (v) AS (
               SELECT MIN({column}) FROM {table}
               UNION ALL
               SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > n.v) FROM n WHERE n.v IS NOT NULL)
             SELECT v FROM n WHERE v IS NOT NULL LIMIT {MAX_CHOICES}"
        )
    }
    let names = |sql: String| async move {
        Ok::<Vec<String>, Error>(
            on_store!(store, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await)?,
        )
    };
    Ok(Choices {
        metrics: names(format!(
            "SELECT name FROM metric_names ORDER BY name LIMIT {MAX_CHOICES}"
        ))
        .await?,
        bundles: names(distinct("device_versions", "name")).await?,
        tag_keys: names(distinct("device_tags", "key")).await?,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let sorted: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 50), Some(10.0), "rank ⌈10⌉");
        assert_eq!(nearest_rank(&sorted, 95), Some(19.0), "rank ⌈19⌉");
        let sorted: Vec<f64> = (1..=21).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 50), Some(11.0), "rank ⌈10.5⌉");
        assert_eq!(nearest_rank(&sorted, 95), Some(20.0), "rank ⌈19.95⌉");
        assert_eq!(nearest_rank(&[4.0], 50), Some(4.0));
        assert_eq!(nearest_rank(&[4.0], 95), Some(4.0));
        assert_eq!(
            nearest_rank(&[1.0, 2.0], 50),
            Some(1.0),
            "never interpolated"
        );
        assert_eq!(nearest_rank(&[], 50), None);
    }

    #[test]
    fn a_group_summarizes_its_devices_means() {
        let s = summarize("1.0.0".into(), vec![30.0, 10.0, 20.0, 40.0]).expect("stats");
        assert_eq!(
            s,
            GroupStats {
                key: "1.0.0".into(),
                devices: 4,
                mean: 25.0,
                p50: 20.0,
                p95: 40.0,
                min: 10.0,
                max: 40.0,
            }
        );
        assert_eq!(summarize("x".into(), Vec::new()), None);
    }

    #[test]
    fn groupings_parse_and_name_the_field() {
        assert_eq!(
            GroupBy::parse("group_by", "version:detector").ok(),
            Some(GroupBy::Version("detector".into()))
        );
        assert_eq!(
            GroupBy::parse("group_by", "device_type").ok(),
            Some(GroupBy::DeviceType)
        );
        assert_eq!(
            GroupBy::parse("group_by", "tag:site").ok(),
            Some(GroupBy::Tag("site".into()))
        );
        for bad in [
            "",
            "version",
            "version:",
            "tag:",
            "tag:a b",
            "site",
            "device_type:x",
        ] {
            let e = GroupBy::parse("group_by", bad).expect_err(bad);
            assert!(e.to_string().starts_with("group_by:"), "{bad}: {e}");
        }
        assert_eq!(
            GroupBy::parse("g", "tag:site").map(|g| g.to_string()).ok(),
            Some("tag:site".into())
        );
        assert!(MetricName::parse("metric", "inference_ms").is_ok());
        for bad in ["", "a b", "<b>", &"x".repeat(65)] {
            assert!(MetricName::parse("metric", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn windows_default_to_the_last_hour_and_widen_to_whole_buckets() {
        let now = T + 23 * 60_000;
        let w = Window::new(None, None, now).expect("default");
        assert_eq!(w.resolution(), Resolution::Hour);
        assert_eq!(w.read(), (T - HOUR_MS, T + HOUR_MS));
        let aligned = Window::new(Some(T), Some(T + HOUR_MS), now).expect("aligned");
        assert_eq!(aligned.read(), (T, T + HOUR_MS));
        let two_days = Window::new(Some(now - 2 * DAY_MS), None, now).expect("two days");
        assert_eq!(two_days.resolution(), Resolution::Hour);
        let week = Window::new(Some(now - 7 * DAY_MS), None, now).expect("week");
        assert_eq!(week.resolution(), Resolution::Day);
        let (from, to) = week.read();
        assert_eq!((from % DAY_MS, to % DAY_MS), (0, 0));
        assert!(from <= now - 7 * DAY_MS && to >= now);
        assert_eq!(week.spans(), [span(Resolution::Day, from, to, true)]);
        let e = Window::new(Some(now), Some(now), now).expect_err("empty");
        assert!(e.to_string().starts_with("from:"), "{e}");
        let e = Window::new(Some(now - MAX_WINDOW_MS - 1), None, now).expect_err("too long");
        assert!(e.to_string().contains("31 days"), "{e}");
        assert!(Window::new(Some(now - MAX_WINDOW_MS), None, now).is_ok());
    }

    /// 2027-01-15T08:00:00Z, a whole hour.
    const T: i64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;

    fn span(tier: Resolution, from: i64, to: i64, add: bool) -> Span {
        Span {
            tier,
            from,
            to,
            add,
        }
    }

    #[test]
    fn hours_are_read_from_days_where_that_is_fewer_rows() {
        let day = T - T % DAY_MS;
        let h = |n: i64| day + n * HOUR_MS;
        // The last hour at 10:30: two hours.
        assert_eq!(
            hour_spans(h(9), h(11), h(10) + 1_800_000),
            [span(Resolution::Hour, h(9), h(11), true)]
        );
        // At 01:30 today's row alone holds 00:00 to now.
        assert_eq!(
            hour_spans(h(0), h(2), h(1) + 1_800_000),
            [
                span(Resolution::Day, h(0), h(24), true),
                span(Resolution::Hour, h(2), h(24), false)
            ]
        );
        // The last 24 hours at 10:30: yesterday less its first ten hours, and today.
        assert_eq!(
            hour_spans(h(10) - DAY_MS, h(11), h(10) + 1_800_000),
            [
                span(Resolution::Day, day - DAY_MS, day, true),
                span(Resolution::Hour, day - DAY_MS, h(10) - DAY_MS, false),
                span(Resolution::Day, day, h(24), true),
                span(Resolution::Hour, h(11), h(24), false)
            ]
        );
        // Yesterday evening is fewer rows as hours.
        assert_eq!(
            hour_spans(h(20) - DAY_MS, h(11), h(10) + 1_800_000)[0],
            span(Resolution::Hour, h(20) - DAY_MS, day, true)
        );
    }

    #[test]
    fn the_spans_count_every_hour_of_the_window_once() {
        let day = T - T % DAY_MS;
        for start in (0..72).map(|n| day - DAY_MS + n * HOUR_MS) {
            for len in [1, 2, 5, 23, 24, 25, 47, 48] {
                for now in [start, start + len * HOUR_MS - 1, start + 3 * DAY_MS] {
                    let (from, to) = (start, start + len * HOUR_MS);
                    let mut count: BTreeMap<i64, i64> = BTreeMap::new();
                    for s in hour_spans(from, to, now) {
                        let step = s.tier.bucket_ms();
                        for b in (s.from..s.to).step_by(step as usize) {
                            for hour in (b..b + step).step_by(HOUR_MS as usize) {
                                *count.entry(hour).or_default() += if s.add { 1 } else { -1 };
                            }
                        }
                    }
                    count.retain(|_, n| *n != 0);
                    let expected: BTreeMap<i64, i64> = (from..to)
                        .step_by(HOUR_MS as usize)
                        .map(|h| (h, 1))
                        .collect();
                    assert_eq!(count, expected, "{from}..{to} at {now}");
                }
            }
        }
    }

    #[test]
    fn versions_sort_by_precedence_with_none_last() {
        let mut keys = vec!["(none)", "1.10.0", "1.9.0", "1.10.0-rc.1"];
        keys.sort_by(|a, b| key_order(a, b, true));
        assert_eq!(keys, ["1.9.0", "1.10.0-rc.1", "1.10.0", "(none)"]);
        let mut keys = vec![
            "(none)", "site-10", "b", "site-2", "a", "site-02", "site-1x",
        ];
        keys.sort_by(|a, b| key_order(a, b, false));
        assert_eq!(
            keys,
            [
                "a", "b", "site-1x", "site-2", "site-02", "site-10", "(none)"
            ]
        );
    }
}
