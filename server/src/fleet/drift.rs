//! Drift: does a device's metric still behave as it did before its last
//! update? Scored as a population stability index (PSI) of the recent
//! window's per-minute means against a baseline window's, per device and per
//! installed version. The statistic is a pure function of two lists of means;
//! the store is read only to fetch them.
//!
//! The statistic, exactly: bin edges are quantiles of the baseline's
//! per-minute bucket means — deciles when both sides have 200 minutes or
//! more, else one bin per 20 minutes of the smaller side, at least 2 (the
//! lowest and highest bins open-ended, equal edges merged); `a` and `e` are
//! the recent and baseline shares of each bin, each floored at half a minute
//! of its side (at least 1e-4) so an empty bin counts as unlikely rather than
//! impossible; PSI = Σ (a − e)·ln(a / e). Conventional reading: under 0.1
//! steady, 0.1 to 0.25 moderate, over 0.25 drifted (the threshold).
//!
//! Windows: recent = the last 1 h, 24 h or 7 d; baseline = the 7 days before
//! the device's last succeeded update, or, when it never updated, the 7 days
//! before the recent window. Each side needs 30 minutes with readings.
//!
//! Sampling noise: PSI of two samples of one distribution is not zero; it
//! grows with the bins and shrinks with the samples (about (bins − 1) / n).
//! Ten bins over the 60 means of an hour would score a steady device about
//! 0.18 on average and over 0.25 one hour in five, so short windows get fewer
//! bins: 3 for an hour, which keeps steady hours near 0.03 while a shift of a
//! few standard deviations still scores far above 0.25.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::on_store;
use crate::store::Store;
use crate::telemetry::ingest::BUCKET_MS;

/// PSI above this is drift (the conventional reading).
pub const THRESHOLD: f64 = 0.25;

/// Minutes with readings each window needs before a score means anything.
pub const MIN_BUCKETS: usize = 30;

/// Devices scored in one fleet request at most (each costs a few queries).
pub const MAX_FLEET_DEVICES: usize = 2000;

/// Length of the baseline window.
pub const BASELINE_MS: i64 = 7 * 86_400_000;

/// Most bins of the histogram (deciles of the baseline).
const MAX_BINS: usize = 10;

/// Minutes of the smaller side per bin: fewer would let sampling noise read as drift.
const MINUTES_PER_BIN: usize = 20;

/// Smallest share a bin counts with, so an empty bin gives a large but finite term.
const FLOOR: f64 = 1e-4;

/// Bins for two sides of `n` and `m` minutes.
fn bins(n: usize, m: usize) -> usize {
    (n.min(m) / MINUTES_PER_BIN).clamp(2, MAX_BINS)
}

/// How far back the recent window reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last hour.
    Hour,
    /// The last 24 hours.
    Day,
    /// The last 7 days.
    Week,
}

impl Window {
    /// Parses `1h`, `24h` or `7d` (absent: `1h`).
    pub fn parse(field: &str, s: Option<&str>) -> Result<Window> {
        match s.map(str::trim).filter(|s| !s.is_empty()) {
            None | Some("1h") => Ok(Window::Hour),
            Some("24h") => Ok(Window::Day),
            Some("7d") => Ok(Window::Week),
            Some(other) => Err(Error::invalid(
                field,
                format!("`{other}` is not a window; use 1h, 24h or 7d"),
            )),
        }
    }

    /// Its length in milliseconds.
    pub fn ms(self) -> i64 {
        match self {
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
            Window::Week => 7 * 86_400_000,
        }
    }

    /// The window as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
        }
    }
}

/// Checks a metric name (the rules readings' names follow).
pub fn metric_name(field: &str, s: Option<&str>) -> Result<String> {
    let s = s.map(str::trim).unwrap_or("");
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(Error::invalid(
            field,
            "give a metric name (1 to 64 letters, digits, '_', '.' or '-'), e.g. metric=temp_c",
        ))
    }
}

/// The value at quantile `p` of sorted values (linear between ranks).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// The inner bin edges: `bins` quantiles of the baseline, equal ones merged.
pub fn edges(baseline: &[f64], bins: usize) -> Vec<f64> {
    let mut sorted: Vec<f64> = baseline.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return Vec::new();
    }
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..bins)
        .map(|k| quantile(&sorted, k as f64 / bins as f64))
        .collect();
    edges.dedup();
    edges
}

/// Each bin's share of `values`, bins split at `edges` as (e[i-1], e[i]].
fn shares(edges: &[f64], values: &[f64]) -> Vec<f64> {
    let mut counts = vec![0usize; edges.len() + 1];
    for v in values {
        counts[edges.partition_point(|e| e < v)] += 1;
    }
    let n = values.len().max(1) as f64;
    let floor = (0.5 / n).max(FLOOR);
    counts.iter().map(|&c| (c as f64 / n).max(floor)).collect()
}

/// The PSI of `recent` against `baseline` (per-minute means), or `None`
/// when either side has fewer than [`MIN_BUCKETS`] values.
pub fn psi(baseline: &[f64], recent: &[f64]) -> Option<f64> {
    if baseline.len() < MIN_BUCKETS || recent.len() < MIN_BUCKETS {
        return None;
    }
    let edges = edges(baseline, bins(baseline.len(), recent.len()));
    let e = shares(&edges, baseline);
    let a = shares(&edges, recent);
    Some(a.iter().zip(&e).map(|(a, e)| (a - e) * (a / e).ln()).sum())
}

/// One window of a device's drift answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Span {
    /// Start (RFC 3339).
    pub from: String,
    /// End, exclusive (RFC 3339).
    pub to: String,
    /// Minutes with readings in it.
    pub buckets: usize,
    /// Mean of its per-minute means (absent without readings).
    pub mean: Option<f64>,
}

impl Span {
    fn new(from: i64, to: i64, means: &[f64]) -> Span {
        Span {
            from: crate::timefmt::rfc3339(from),
            to: crate::timefmt::rfc3339(to),
            buckets: means.len(),
            mean: (!means.is_empty()).then(|| means.iter().sum::<f64>() / means.len() as f64),
        }
    }
}

/// A device's drift score for one metric.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceDrift {
    /// The metric.
    pub metric: String,
    /// PSI of the recent window against the baseline (absent when there is not enough data).
    pub score: Option<f64>,
    /// Whether the score is over the threshold.
    pub drifted: bool,
    /// The threshold.
    pub threshold: f64,
    /// The recent window.
    pub recent: Span,
    /// The baseline window.
    pub baseline: Span,
    /// Why there is no score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The metric's id, if any device ever sent it.
async fn metric_id(store: &Store, metric: &str) -> Result<Option<i64>> {
    Ok(on_store!(store, pool => sqlx::query_scalar(
        "SELECT id FROM metric_names WHERE name = $1").bind(metric).fetch_optional(pool).await)?)
}

/// The per-minute means of a device's metric in buckets starting in [from, to).
async fn means(
    store: &Store,
    device_id: &str,
    metric_id: i64,
    from: i64,
    to: i64,
) -> Result<Vec<f64>> {
    // A minute holds one row per version set; a minute's mean spans them all.
    let rows: Vec<(f64, i64)> = on_store!(store, pool => sqlx::query_as(
        "SELECT SUM(sum), CAST(SUM(count) AS BIGINT) FROM telemetry_rollups
          WHERE device_id = $1 AND metric_id = $2 AND bucket >= $3 AND bucket < $4
          GROUP BY bucket ORDER BY bucket")
        .bind(device_id).bind(metric_id).bind(from).bind(to).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| s / n as f64)
        .collect())
}

/// When the device last finished an update successfully.
async fn last_update(store: &Store, device_id: &str) -> Result<Option<i64>> {
    Ok(on_store!(store, pool => sqlx::query_scalar(
        "SELECT MAX(updated_at) FROM device_updates WHERE device_id = $1 AND state = 'succeeded'")
        .bind(device_id).fetch_one(pool).await)?)
}

/// The recent and baseline windows for a device: (recent, baseline), each [from, to).
fn windows(window: Window, now: i64, updated_at: Option<i64>) -> ((i64, i64), (i64, i64)) {
    let recent_from = now - window.ms();
    let baseline_to = updated_at.unwrap_or(recent_from);
    ((recent_from, now), (baseline_to - BASELINE_MS, baseline_to))
}

async fn score_device(
    store: &Store,
    device_id: &str,
    metric: &str,
    metric_id: Option<i64>,
    window: Window,
    now: i64,
) -> Result<DeviceDrift> {
    let ((r_from, r_to), (b_from, b_to)) =
        windows(window, now, last_update(store, device_id).await?);
    let (recent, baseline) = match metric_id {
        // Whole minutes only: the minute straddling a window's start may hold
        // readings from before it, and the one straddling the update readings from after.
        Some(id) => (
            means(store, device_id, id, r_from, r_to).await?,
            means(store, device_id, id, b_from, b_to - BUCKET_MS + 1).await?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let score = psi(&baseline, &recent);
    let reason = score.is_none().then(|| {
        format!(
            "not enough data: {} of the {MIN_BUCKETS} minutes with readings needed in the recent window, {} in the baseline",
            recent.len(),
            baseline.len()
        )
    });
    Ok(DeviceDrift {
        metric: metric.to_string(),
        score,
        drifted: score.is_some_and(|s| s > THRESHOLD),
        threshold: THRESHOLD,
        recent: Span::new(r_from, r_to, &recent),
        baseline: Span::new(b_from, b_to, &baseline),
        reason,
    })
}

/// A device's drift score for `metric` over `window`, as of `now`.
pub async fn device(
    store: &Store,
    device_id: &str,
    metric: &str,
    window: Window,
    now: i64,
) -> Result<DeviceDrift> {
    let id = metric_id(store, metric).await?;
    score_device(store, device_id, metric, id, window, now).await
}

/// Drift over the devices on one version of a bundle.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VersionDrift {
    /// The version.
    pub key: String,
    /// Devices on it (of those scored in this request).
    pub devices: usize,
    /// Devices with enough data for a score.
    pub scored: usize,
    /// Devices whose score is over the threshold.
    pub drifted: usize,
    /// Mean score of the scored devices.
    pub mean_score: Option<f64>,
}

/// Drift per installed version of a bundle.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetDrift {
    /// The metric.
    pub metric: String,
    /// `version:NAME`.
    pub group_by: String,
    /// The recent window (`1h`, `24h`, `7d`).
    pub window: String,
    /// The threshold.
    pub threshold: f64,
    /// Devices scored at most per request.
    pub device_limit: usize,
    /// True when more devices have the bundle than were scored (the first by id were).
    pub truncated: bool,
    /// One entry per version, by version.
    pub groups: Vec<VersionDrift>,
}

/// Scores every device on a version of `bundle` (at most [`MAX_FLEET_DEVICES`],
/// first by id) and sums them up per version.
pub async fn fleet(
    store: &Store,
    metric: &str,
    bundle: &str,
    window: Window,
    now: i64,
) -> Result<FleetDrift> {
    let limit = i64::try_from(MAX_FLEET_DEVICES + 1).unwrap_or(i64::MAX);
    let rows: Vec<(String, String)> = on_store!(store, pool => sqlx::query_as(
        "SELECT device_id, version FROM device_versions WHERE name = $1 ORDER BY device_id LIMIT $2")
        .bind(bundle).bind(limit).fetch_all(pool).await)?;
    let truncated = rows.len() > MAX_FLEET_DEVICES;
    let id = metric_id(store, metric).await?;
    let mut scores: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for (device_id, version) in rows.into_iter().take(MAX_FLEET_DEVICES) {
        let d = score_device(store, &device_id, metric, id, window, now).await?;
        scores.entry(version).or_default().push(d.score);
    }
    Ok(FleetDrift {
        metric: metric.to_string(),
        group_by: format!("version:{bundle}"),
        window: window.as_str().into(),
        threshold: THRESHOLD,
        device_limit: MAX_FLEET_DEVICES,
        truncated,
        groups: scores
            .into_iter()
            .map(|(key, s)| summarize(key, &s))
            .collect(),
    })
}

/// One version's figures from its devices' scores (pure).
fn summarize(key: String, scores: &[Option<f64>]) -> VersionDrift {
    let scored: Vec<f64> = scores.iter().flatten().copied().collect();
    VersionDrift {
        key,
        devices: scores.len(),
        scored: scored.len(),
        drifted: scored.iter().filter(|s| **s > THRESHOLD).count(),
        mean_score: (!scored.is_empty()).then(|| scored.iter().sum::<f64>() / scored.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A series that walks evenly through `spread` values around `level`.
    fn cycle(level: f64, spread: usize, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| level + (i % spread) as f64 * 0.1 - spread as f64 * 0.05)
            .collect()
    }

    #[test]
    fn identical_distributions_score_about_zero() {
        let baseline = cycle(40.0, 20, 2000);
        let recent = cycle(40.0, 20, 60);
        let s = psi(&baseline, &recent).expect("enough data");
        assert!(s.abs() < 0.01, "{s}");
    }

    #[test]
    fn a_shifted_distribution_scores_over_the_threshold() {
        let baseline = cycle(40.0, 20, 2000);
        let recent: Vec<f64> = cycle(40.0, 20, 60).iter().map(|v| v * 1.4).collect();
        let s = psi(&baseline, &recent).expect("enough data");
        assert!(s > THRESHOLD, "{s}");
        let slight: Vec<f64> = cycle(40.0, 20, 60).iter().map(|v| v + 0.3).collect();
        let t = psi(&baseline, &slight).expect("enough data");
        assert!(t > 0.0 && t < s, "a smaller shift scores less: {t} < {s}");
    }

    #[test]
    fn too_few_minutes_give_no_score() {
        let baseline = cycle(40.0, 20, 2000);
        assert_eq!(psi(&baseline, &cycle(40.0, 20, MIN_BUCKETS - 1)), None);
        assert_eq!(psi(&cycle(40.0, 20, MIN_BUCKETS - 1), &baseline), None);
        assert!(psi(&baseline, &cycle(40.0, 20, MIN_BUCKETS)).is_some());
    }

    /// Minute means scattered independently around 40 (an LCG: no dependency
    /// for randomness in a unit test), sums of 12 uniforms, roughly normal.
    fn noise(state: &mut u64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                (0..12)
                    .map(|_| {
                        *state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        (*state >> 11) as f64 / (1u64 << 53) as f64
                    })
                    .sum::<f64>()
                    + 34.0
            })
            .collect()
    }

    #[test]
    fn steady_noisy_hours_read_steady_and_a_small_shift_does_not_hide() {
        let mut state = 7;
        let baseline = noise(&mut state, 10_080);
        let scores: Vec<f64> = (0..200)
            .map(|_| psi(&baseline, &noise(&mut state, 60)).expect("enough data"))
            .collect();
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        assert!(mean < 0.1, "steady hours average {mean}");
        let over = scores.iter().filter(|s| **s > THRESHOLD).count();
        assert!(over <= 2, "{over} of 200 steady hours read as drift");
        let half = psi(&baseline, &noise(&mut state, 30)).expect("enough data");
        assert!(half < THRESHOLD, "half an hour of steady means: {half}");
        // Two standard deviations up (the sum of 12 uniforms has sd 1).
        let shifted: Vec<f64> = noise(&mut state, 60).iter().map(|v| v + 2.0).collect();
        let s = psi(&baseline, &shifted).expect("enough data");
        assert!(s > THRESHOLD, "a shift of two sd in an hour: {s}");
        let day = psi(&baseline, &noise(&mut state, 1440)).expect("enough data");
        assert!(day < 0.1, "a day of steady means reads steady: {day}");
    }

    #[test]
    fn edges_are_the_deciles_with_equal_ones_merged() {
        let values: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(
            edges(&values, 10),
            vec![10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
        );
        assert_eq!(edges(&values, 2), vec![50.0]);
        assert_eq!(edges(&[5.0; 40], 10), vec![5.0]);
        assert_eq!(
            (bins(10_080, 60), bins(30, 10_080), bins(1440, 10_080)),
            (3, 2, 10)
        );
        // A flat baseline still flags a series that moves above it.
        let s = psi(&[5.0; 40], &[6.0; 40]).expect("enough data");
        assert!(s > THRESHOLD, "{s}");
    }

    #[test]
    fn windows_end_at_the_last_update_or_where_the_recent_one_starts() {
        let now = 100 * 86_400_000;
        let (recent, baseline) = windows(Window::Hour, now, None);
        assert_eq!(recent, (now - 3_600_000, now));
        assert_eq!(baseline, (now - 3_600_000 - BASELINE_MS, now - 3_600_000));
        let (_, baseline) = windows(Window::Day, now, Some(now - 2 * 86_400_000));
        assert_eq!(baseline.1, now - 2 * 86_400_000);
        assert_eq!(baseline.1 - baseline.0, BASELINE_MS);
    }

    #[test]
    fn windows_and_metrics_parse_or_name_their_field() {
        assert_eq!(Window::parse("window", None).ok(), Some(Window::Hour));
        assert_eq!(Window::parse("window", Some("7d")).ok(), Some(Window::Week));
        assert!(
            matches!(Window::parse("window", Some("2h")), Err(Error::Invalid { field, .. }) if field == "window")
        );
        assert!(metric_name("metric", Some("temp_c")).is_ok());
        assert!(metric_name("metric", Some("")).is_err());
        assert!(metric_name("metric", Some("a b")).is_err());
    }

    #[test]
    fn versions_sum_up_only_scored_devices() {
        let v = summarize("1.0".into(), &[Some(0.05), Some(0.9), None]);
        assert_eq!((v.devices, v.scored, v.drifted), (3, 2, 1));
        assert!((v.mean_score.expect("scored") - 0.475).abs() < 1e-9);
        assert_eq!(summarize("2.0".into(), &[None]).mean_score, None);
    }
}
