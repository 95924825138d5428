//! Reading telemetry back: raw points of one series, rolled-up buckets of a
//! chosen step, latest values and the newest health report.

use serde::Serialize;

use super::Catalog;
use super::ingest::BUCKET_MS;
use crate::error::Result;
use crate::on_store;
use crate::store::Store;

/// Most raw points one answer carries.
pub const MAX_RAW_POINTS: i64 = 10_000;

/// A raw point.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RawPoint {
    /// Milliseconds since the epoch.
    pub ts: i64,
    /// The value.
    pub value: f64,
}

/// A rolled-up bucket.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Bucket {
    /// Start of the bucket (ms since the epoch).
    pub ts: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub avg: f64,
    /// Readings in it.
    pub count: i64,
}

/// Raw points of a device's metric in `[from, to)`, oldest first, at most 10,000.
pub async fn raw(
    store: &Store,
    catalog: &Catalog,
    device_id: &str,
    metric: &str,
    from: i64,
    to: i64,
) -> Result<Vec<RawPoint>> {
    let Some(metric_id) = catalog.find_metric(store, metric).await? else {
        return Ok(Vec::new());
    };
    let value = super::metric_text(store, "r", "$2");
    let sql = format!(
        "SELECT r.ts, {value} AS value FROM telemetry_readings r
          WHERE r.device_id = $1 AND r.ts >= $3 AND r.ts < $4 AND {value} IS NOT NULL
          ORDER BY r.ts LIMIT $5"
    );
    let rows: Vec<(i64, String)> = on_store!(store, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(device_id).bind(metric_id).bind(from).bind(to).bind(MAX_RAW_POINTS).fetch_all(pool).await)?;
    // Ingest wrote every value as a JSON number; one that does not parse was not
    // written by it, and is left out rather than failing the whole series.
    Ok(rows
        .into_iter()
        .filter_map(|(ts, value)| match value.parse() {
            Ok(value) => Some(RawPoint { ts, value }),
            Err(_) => {
                tracing::warn!(
                    device_id,
                    metric,
                    ts,
                    value,
                    "stored reading is not a number"
                );
                None
            }
        })
        .collect())
}

/// Buckets of `step_ms` (a whole number of minutes) from the one-minute rollups.
pub async fn rolled(
    store: &Store,
    catalog: &Catalog,
    device_id: &str,
    metric: &str,
    from: i64,
    to: i64,
    step_ms: i64,
) -> Result<Vec<Bucket>> {
    let Some(metric_id) = catalog.find_metric(store, metric).await? else {
        return Ok(Vec::new());
    };
    let step = step_ms.max(BUCKET_MS);
    let rows: Vec<(i64, f64, f64, f64, i64)> = on_store!(store, pool => sqlx::query_as(
        "SELECT bucket - (bucket % $5) AS b, MIN(min), MAX(max), SUM(sum), CAST(SUM(count) AS BIGINT)
         FROM telemetry_rollups WHERE device_id = $1 AND metric_id = $2 AND bucket >= $3 AND bucket < $4
         GROUP BY b ORDER BY b")
        .bind(device_id).bind(metric_id).bind(from - from.rem_euclid(BUCKET_MS)).bind(to).bind(step)
        .fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .map(|(ts, min, max, sum, count)| Bucket {
            ts,
            min,
            max,
            avg: if count > 0 { sum / count as f64 } else { 0.0 },
            count,
        })
        .collect())
}

/// The latest value of one of a device's metrics.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Latest {
    /// Metric name.
    pub metric: String,
    /// When it was read (ms since the epoch).
    pub ts: i64,
    /// The value.
    pub value: f64,
    /// The versions the device ran then (canonical JSON `{"bundle":"1.2.0"}`);
    /// `None` once retention has removed the raw reading it came from.
    pub versions: Option<String>,
}

/// The latest value of each of a device's metrics, by name, with the versions
/// the device ran when it read them.
pub async fn latest(store: &Store, device_id: &str) -> Result<Vec<Latest>> {
    // telemetry_latest keeps no version set; the raw reading at the same
    // (device, ts) that holds the metric has it, found through the series index.
    let value = super::metric_text(store, "r", "l.metric_id");
    let sql = format!(
        "SELECT m.name AS metric, l.ts, l.value,
                (SELECT v.versions FROM telemetry_readings r JOIN version_sets v ON v.id = r.version_set_id
                 WHERE r.device_id = l.device_id AND r.ts = l.ts AND {value} IS NOT NULL LIMIT 1) AS versions
         FROM telemetry_latest l JOIN metric_names m ON m.id = l.metric_id
         WHERE l.device_id = $1 ORDER BY m.name"
    );
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, Latest>(sqlx::AssertSqlSafe(sql))
        .bind(device_id).fetch_all(pool).await)?,
    )
}

/// The newest health report (raw JSON) and when it arrived.
pub async fn health(store: &Store, device_id: &str) -> Result<Option<(i64, String)>> {
    Ok(on_store!(store, pool => sqlx::query_as(
        "SELECT received_at, report FROM device_health WHERE device_id = $1")
        .bind(device_id).fetch_optional(pool).await)?)
}
