//! Ingest: device messages arrive through a bounded queue (back-pressure
//! reaches the broker, which holds them for the persistent session), are
//! validated, and are stored in batches, one transaction each. Readings are
//! de-duplicated by (device, epoch, seq), so QoS 1 redelivery and spool
//! replay store nothing twice; a message is acknowledged to the broker only
//! after its batch committed. Bad payloads are counted and recorded as device
//! events without stopping the flow of good ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_proto::{Telemetry, TopicKind};
use tokio::sync::mpsc;

use super::{Catalog, events};
use crate::error::Result;
use crate::mqtt::client::Inbound;
use crate::on_store;
use crate::store::{Store, now_ms};

/// Most metrics one reading may carry.
pub const MAX_METRICS: usize = 64;
/// Longest metric name.
pub const MAX_METRIC_NAME: usize = 64;
/// How far ahead of the server's clock a reading may be stamped.
pub const MAX_FUTURE_MS: i64 = 24 * 3_600_000;
/// Largest message accepted.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// Messages taken into one transaction at most. A batch is only what is already waiting, so
/// a quiet fleet commits message by message; under a flood it grows, and each device's pages
/// (points, seen keys, rollups, latest values) are written once for many of its readings
/// instead of once per reading: with 1,000 devices, 500-message batches touched every page
/// for about one reading each, and SQLite's WAL writes bounded ingest (docs/BENCHMARKS.md).
const BATCH_MESSAGES: usize = 10_000;
/// Payload bytes taken into one transaction at most (bounds its time and memory when devices
/// send large batches of their own).
const BATCH_BYTES: usize = 4 << 20;
/// Rows one multi-row statement writes at most (8 parameters a row stays far below
/// SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 1_000;
/// Width of a rollup bucket.
pub const BUCKET_MS: i64 = 60_000;

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Readings stored.
    pub stored: AtomicU64,
    /// Readings already stored before (redelivery, replay).
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Telemetry messages taken (a device's batch of readings is one); with `stored`, how well
    /// devices batch.
    pub messages: AtomicU64,
    /// Messages or readings refused, by reason.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Messages waiting in the queue.
    pub queued: AtomicU64,
    /// A batch is being stored and acknowledged now.
    pub busy: std::sync::atomic::AtomicBool,
}

impl IngestMetrics {
    fn reject(&self, reason: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// The Prometheus text of these counters.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "drover_telemetry_readings_stored_total",
            "Readings stored.",
            self.stored.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "drover_telemetry_duplicates_total",
            "Readings received again and not stored twice.",
            self.duplicates.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "drover_telemetry_messages_total",
            "Telemetry messages taken from devices (a batch of readings is one message).",
            self.messages.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "drover_telemetry_batches_total",
            "Ingest transactions committed.",
            self.batches.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP drover_telemetry_queue_depth Device messages waiting to be stored.\n# TYPE drover_telemetry_queue_depth gauge\ndrover_telemetry_queue_depth {}",
            self.queued.load(Ordering::Relaxed)
        );
        out.push_str("# HELP drover_telemetry_rejected_total Device messages or readings refused, by reason.\n# TYPE drover_telemetry_rejected_total counter\n");
        for (reason, n) in self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "drover_telemetry_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out
    }
}

/// A rollup row's key: device, metric, bucket start, version set.
type RollupKey = (String, i64, i64, i64);
/// A rollup row's values: min, max, sum, count.
type RollupValue = (f64, f64, f64, i64);

/// One reading that passed validation.
#[derive(Debug, Clone)]
struct Valid {
    device_id: String,
    epoch: String,
    seq: i64,
    ts: i64,
    versions: String,
    metrics: Vec<(String, f64)>,
}

/// Why a message or reading was refused (also the metrics label).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// Short label.
    pub reason: &'static str,
    /// What was wrong, for the device's events.
    pub detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Parses and checks a telemetry payload; good readings and refused ones apart.
pub fn validate(
    device_id: &str,
    payload: &[u8],
    now: i64,
) -> Result<(Vec<ValidReading>, Vec<Rejection>), Rejection> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(reject(
            "too_large",
            format!(
                "a message of {} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit",
                payload.len()
            ),
        ));
    }
    let message: Telemetry = serde_json::from_slice(payload)
        .map_err(|e| reject("invalid_json", format!("not a telemetry message: {e}")))?;
    let versions = serde_json::to_string(
        &message
            .versions
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap_or_else(|_| "{}".into());
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for r in message.readings.as_slice() {
        let problem = if r.metrics.is_empty() {
            Some(reject(
                "no_metrics",
                format!("reading {} has no metrics", r.seq),
            ))
        } else if r.metrics.len() > MAX_METRICS {
            Some(reject(
                "too_many_metrics",
                format!(
                    "reading {} has {} metrics; at most {MAX_METRICS}",
                    r.seq,
                    r.metrics.len()
                ),
            ))
        } else if let Some(name) = r.metrics.keys().find(|n| !valid_metric_name(n)) {
            Some(reject(
                "bad_metric_name",
                format!(
                    "metric name {:?} is not 1 to {MAX_METRIC_NAME} letters, digits, '_', '.' or '-'",
                    truncate(name)
                ),
            ))
        } else if let Some((name, _)) = r.metrics.iter().find(|(_, v)| !v.is_finite()) {
            Some(reject(
                "non_finite",
                format!("metric {name} is not a finite number"),
            ))
        } else if r.ts > now + MAX_FUTURE_MS {
            Some(reject(
                "future_timestamp",
                format!(
                    "reading {} is stamped more than a day ahead of the server's clock",
                    r.seq
                ),
            ))
        } else if r.ts <= 0 {
            Some(reject(
                "bad_timestamp",
                format!("reading {} has no valid timestamp", r.seq),
            ))
        } else {
            None
        };
        match problem {
            Some(p) => bad.push(p),
            None => good.push(ValidReading(Valid {
                device_id: device_id.to_string(),
                epoch: message.epoch.as_str().to_string(),
                seq: i64::try_from(r.seq).unwrap_or(i64::MAX),
                ts: r.ts,
                versions: versions.clone(),
                metrics: r.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            })),
        }
    }
    Ok((good, bad))
}

/// A reading's metrics as its row keeps them: a JSON object keyed by metric id,
/// `None` when none of them has an id.
fn metrics_json(metrics: &[(String, f64)], ids: &HashMap<String, i64>) -> Option<String> {
    use std::fmt::Write as _;
    let mut json = String::with_capacity(2 + 24 * metrics.len());
    for (name, value) in metrics {
        let Some(id) = ids.get(name) else { continue };
        json.push(if json.is_empty() { '{' } else { ',' });
        // serde_json writes a double's shortest digits that read back exactly.
        let _ = write!(json, "\"{id}\":{}", serde_json::Value::from(*value));
    }
    if json.is_empty() {
        return None;
    }
    json.push('}');
    Some(json)
}

/// A reading that passed validation (opaque outside this module).
#[derive(Debug, Clone)]
pub struct ValidReading(Valid);

fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The figures alert rules may watch in a (validated) health report.
fn health_figures(device_id: &str, report: &str) -> crate::live::HealthFigures {
    let mut figures = Vec::new();
    if let Ok(h) = serde_json::from_str::<drover_proto::Health>(report) {
        figures.push(("cpu_pct", h.cpu_pct));
        if h.mem_total > 0 {
            figures.push(("mem_pct", h.mem_used as f64 * 100.0 / h.mem_total as f64));
        }
        figures.push(("disk_free", h.disk_free as f64));
        if let Some(t) = h.temp_c {
            figures.push(("temp_c", t));
        }
        figures.push(("spool_depth", h.spool_depth as f64));
        figures.push(("spool_dropped", h.spool_dropped as f64));
    }
    crate::live::HealthFigures {
        device_id: device_id.to_string(),
        figures,
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The worker that drains the queue into the store.
pub struct Ingest {
    /// The store.
    pub store: Store,
    /// Interned names.
    pub catalog: std::sync::Arc<Catalog>,
    /// Counters.
    pub metrics: std::sync::Arc<IngestMetrics>,
    /// Stored readings and health for the dashboard's live pages.
    pub live: crate::live::Live,
}

impl Ingest {
    /// Runs until the queue closes.
    pub async fn run(self, mut queue: mpsc::Receiver<Inbound>) {
        let mut batch = Vec::with_capacity(1024);
        loop {
            let Some(first) = queue.recv().await else {
                return;
            };
            self.metrics.busy.store(true, Ordering::SeqCst);
            let mut bytes = first.payload.len();
            batch.push(first);
            // Take what is already waiting, so a flood commits in large batches.
            while batch.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                match queue.try_recv() {
                    Ok(m) => {
                        bytes += m.payload.len();
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            self.metrics
                .queued
                .store(queue.len() as u64, Ordering::Relaxed);
            let mut delay = Duration::from_millis(100);
            loop {
                match self.store_batch(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        // Nothing was acknowledged; keep the batch and retry.
                        tracing::error!(error = %e, messages = batch.len(), "cannot store a telemetry batch; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            for m in batch.drain(..) {
                m.ack().await;
            }
            self.metrics.busy.store(false, Ordering::SeqCst);
        }
    }

    async fn store_batch(&self, batch: &[Inbound]) -> Result<()> {
        let now = now_ms();
        let mut readings = Vec::new();
        let mut health = Vec::new();
        let mut rejections: Vec<(String, Rejection)> = Vec::new();
        for m in batch {
            match m.kind {
                TopicKind::Telemetry => match validate(&m.device_id, &m.payload, now) {
                    Ok((good, bad)) => {
                        readings.extend(good.into_iter().map(|r| r.0));
                        rejections.extend(bad.into_iter().map(|b| (m.device_id.clone(), b)));
                    }
                    Err(r) => rejections.push((m.device_id.clone(), r)),
                },
                TopicKind::Health => {
                    match serde_json::from_slice::<drover_proto::Health>(&m.payload) {
                        Ok(_) if m.payload.len() <= MAX_PAYLOAD_BYTES => {
                            health.push((
                                m.device_id.clone(),
                                String::from_utf8_lossy(&m.payload).into_owned(),
                            ));
                        }
                        Ok(_) => rejections.push((
                            m.device_id.clone(),
                            reject("too_large", "a health report over the size limit"),
                        )),
                        Err(e) => rejections.push((
                            m.device_id.clone(),
                            reject("invalid_health", format!("not a health report: {e}")),
                        )),
                    }
                }
                TopicKind::State | TopicKind::Commands => {}
            }
        }
        let names: Vec<String> = readings
            .iter()
            .flat_map(|r| r.metrics.iter().map(|(n, _)| n.clone()))
            .collect();
        let sets: Vec<String> = readings.iter().map(|r| r.versions.clone()).collect();
        let metric_ids = self.catalog.metric_ids(&self.store, names).await?;
        let version_ids = self.catalog.version_ids(&self.store, sets).await?;
        let (fresh, duplicates) = self
            .write(&readings, &metric_ids, &version_ids, &health)
            .await?;
        let stored = fresh.len() as u64;
        self.announce(&readings, &fresh, &health);
        self.metrics.stored.fetch_add(stored, Ordering::Relaxed);
        self.metrics
            .duplicates
            .fetch_add(duplicates, Ordering::Relaxed);
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        let messages = batch
            .iter()
            .filter(|m| m.kind == TopicKind::Telemetry)
            .count();
        self.metrics
            .messages
            .fetch_add(messages as u64, Ordering::Relaxed);
        for (device_id, r) in rejections {
            self.metrics.reject(r.reason);
            events::record(&self.store, &device_id, "telemetry_rejected", &r.detail).await?;
            self.live.device(&device_id);
        }
        Ok(())
    }

    /// Tells the dashboard what was stored: each device's new readings, and health reports.
    fn announce(&self, readings: &[Valid], fresh: &[usize], health: &[(String, String)]) {
        let mut by_device: BTreeMap<&str, Vec<(String, i64, f64)>> = BTreeMap::new();
        for r in fresh.iter().filter_map(|&i| readings.get(i)) {
            let points = by_device.entry(r.device_id.as_str()).or_default();
            points.extend(r.metrics.iter().map(|(n, v)| (n.clone(), r.ts, *v)));
        }
        for (device_id, mut points) in by_device {
            points.sort_by_key(|p| p.1);
            self.live
                .send(crate::live::Change::Readings(std::sync::Arc::new(
                    crate::live::Readings {
                        device_id: device_id.to_string(),
                        points,
                    },
                )));
        }
        for (device_id, report) in health {
            self.live
                .send(crate::live::Change::Health(std::sync::Arc::new(
                    health_figures(device_id, report),
                )));
        }
    }

    /// One transaction: seen keys, readings, rollups, latest values, health.
    /// Answers which readings were new (their indexes) and how many were duplicates.
    async fn write(
        &self,
        readings: &[Valid],
        metric_ids: &HashMap<String, i64>,
        version_ids: &HashMap<String, i64>,
        health: &[(String, String)],
    ) -> Result<(Vec<usize>, u64)> {
        let now = now_ms();
        // Multi-row statements: a batch costs a few statements whatever its size, where one
        // statement per row paid a round trip to the database (on SQLite, to its worker thread)
        // for every point, rollup and latest value.
        let (least, greatest, metrics_cast) = match &self.store {
            Store::Sqlite(_) => ("MIN", "MAX", ""),
            Store::Postgres(_) => ("LEAST", "GREATEST", "::jsonb"),
        };
        let rollup_conflict = format!(
            " ON CONFLICT (device_id, metric_id, bucket, version_set_id) DO UPDATE SET
               min = {least}(telemetry_rollups.min, excluded.min), max = {greatest}(telemetry_rollups.max, excluded.max),
               sum = telemetry_rollups.sum + excluded.sum, count = telemetry_rollups.count + excluded.count"
        );
        let result: std::result::Result<(Vec<usize>, u64), sqlx::Error> = on_store!(&self.store, pool => {
            let mut tx = pool.begin().await?;
            // The keys this batch stored first: a reading seen before (a redelivery), or twice
            // in the batch, is a duplicate.
            let mut inserted: HashSet<(String, String, i64)> = HashSet::with_capacity(readings.len());
            for chunk in readings.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO telemetry_seen (device_id, epoch, seq, ts) ");
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(r.device_id.as_str()).push_bind(r.epoch.as_str()).push_bind(r.seq).push_bind(r.ts);
                });
                q.push(" ON CONFLICT DO NOTHING RETURNING device_id, epoch, seq");
                let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
                inserted.extend(rows);
            }
            let mut fresh_ones = Vec::with_capacity(readings.len());
            let mut duplicates = 0u64;
            // (device, metric, bucket, version set) → (min, max, sum, count)
            let mut rollups: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
            let mut latest: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
            let mut rows: Vec<(&str, i64, i64, String)> = Vec::with_capacity(readings.len());
            for (i, r) in readings.iter().enumerate() {
                if !inserted.remove(&(r.device_id.clone(), r.epoch.clone(), r.seq)) {
                    duplicates += 1;
                    continue;
                }
                fresh_ones.push(i);
                let vset = version_ids.get(&r.versions).copied().unwrap_or(0);
                if let Some(metrics) = metrics_json(&r.metrics, metric_ids) {
                    rows.push((r.device_id.as_str(), r.ts, vset, metrics));
                }
                for (name, value) in &r.metrics {
                    let Some(&metric) = metric_ids.get(name) else { continue };
                    let bucket = r.ts - r.ts.rem_euclid(BUCKET_MS);
                    let e = rollups.entry((r.device_id.clone(), metric, bucket, vset)).or_insert((*value, *value, 0.0, 0));
                    e.0 = e.0.min(*value);
                    e.1 = e.1.max(*value);
                    e.2 += *value;
                    e.3 += 1;
                    let l = latest.entry((r.device_id.clone(), metric)).or_insert((r.ts, *value));
                    if r.ts >= l.0 {
                        *l = (r.ts, *value);
                    }
                }
            }
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO telemetry_readings (device_id, ts, version_set_id, metrics) ");
                q.push_values(chunk, |mut b, row| {
                    b.push_bind(row.0).push_bind(row.1).push_bind(row.2).push_bind(row.3.as_str())
                        .push_unseparated(metrics_cast);
                });
                q.build().execute(&mut *tx).await?;
            }
            let rollups: Vec<_> = rollups.into_iter().collect();
            for chunk in rollups.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO telemetry_rollups (device_id, metric_id, bucket, version_set_id, min, max, sum, count) ");
                q.push_values(chunk, |mut b, ((device, metric, bucket, vset), (min, max, sum, count))| {
                    b.push_bind(device.as_str()).push_bind(*metric).push_bind(*bucket).push_bind(*vset)
                        .push_bind(*min).push_bind(*max).push_bind(*sum).push_bind(*count);
                });
                q.push(rollup_conflict.as_str());
                q.build().execute(&mut *tx).await?;
            }
            let latest: Vec<_> = latest.into_iter().collect();
            for chunk in latest.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::new("INSERT INTO telemetry_latest (device_id, metric_id, ts, value) ");
                q.push_values(chunk, |mut b, ((device, metric), (ts, value))| {
                    b.push_bind(device.as_str()).push_bind(*metric).push_bind(*ts).push_bind(*value);
                });
                q.push(" ON CONFLICT (device_id, metric_id) DO UPDATE SET ts = excluded.ts, value = excluded.value
                     WHERE excluded.ts >= telemetry_latest.ts");
                q.build().execute(&mut *tx).await?;
            }
            for (device, report) in health {
                sqlx::query(
                    "INSERT INTO device_health (device_id, received_at, report) VALUES ($1, $2, $3)
                     ON CONFLICT (device_id) DO UPDATE SET received_at = excluded.received_at, report = excluded.report")
                    .bind(device).bind(now).bind(report)
                    .execute(&mut *tx).await?;
                // Every device reports every 30 s and its installed set rarely
                // changes: read the rows, and write only what differs.
                let Ok(h) = serde_json::from_str::<drover_proto::Health>(report) else { continue };
                let stored: Vec<(String, String, String)> = sqlx::query_as(crate::identity::devices::INSTALLED_OF_DEVICE)
                    .bind(device).fetch_all(&mut *tx).await?;
                let changes = crate::identity::devices::installed_changes(&stored, &h.installed);
                for name in &changes.gone {
                    sqlx::query(crate::identity::devices::DELETE_INSTALLED).bind(device).bind(name).execute(&mut *tx).await?;
                }
                for (name, kind, version) in &changes.upsert {
                    sqlx::query(crate::identity::devices::UPSERT_INSTALLED)
                        .bind(device).bind(name).bind(kind).bind(version).bind(now)
                        .execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
            Ok((fresh_ones, duplicates))
        });
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn single_and_batch_forms_validate() {
        let (good, bad) = validate("d1", br#"{"epoch":"ab","seq":1,"ts":1800000000000,"metrics":{"temp_c":40.5},"versions":{"model":"1.0.0"}}"#, NOW).unwrap();
        assert_eq!((good.len(), bad.len()), (1, 0));
        let (good, bad) = validate(
            "d1",
            br#"{"epoch":"ab","versions":{},"batch":[{"seq":1,"ts":1800000000000,"metrics":{"a":1}},{"seq":2,"ts":1800000000001,"metrics":{"bad name":1}}]}"#,
            NOW,
        )
        .unwrap();
        assert_eq!((good.len(), bad.len()), (1, 1));
        assert_eq!(bad[0].reason, "bad_metric_name");
    }

    #[test]
    fn a_readings_metrics_are_kept_by_id_and_read_back_exactly() {
        let ids: HashMap<String, i64> = [("temp_c".to_string(), 1), ("cpu.pct".to_string(), 12)]
            .into_iter()
            .collect();
        let metrics = vec![
            ("temp_c".to_string(), 0.1 + 0.2),
            ("unknown".to_string(), 1.0),
            ("cpu.pct".to_string(), 40.0),
        ];
        let json = metrics_json(&metrics, &ids).expect("two known metrics");
        assert_eq!(json, r#"{"1":0.30000000000000004,"12":40.0}"#);
        let back: HashMap<String, f64> = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["1"], 0.1 + 0.2);
        let tiny = vec![
            ("temp_c".to_string(), -2.5e-310),
            ("cpu.pct".to_string(), 1e300),
        ];
        let back: HashMap<String, f64> =
            serde_json::from_str(&metrics_json(&tiny, &ids).expect("json")).expect("valid");
        assert_eq!((back["1"], back["12"]), (-2.5e-310, 1e300));
        assert_eq!(metrics_json(&[("unknown".to_string(), 1.0)], &ids), None);
    }

    #[test]
    fn bad_messages_name_the_problem() {
        assert_eq!(
            validate("d", b"not json", NOW).unwrap_err().reason,
            "invalid_json"
        );
        assert_eq!(
            validate("d", &vec![b' '; MAX_PAYLOAD_BYTES + 1], NOW)
                .unwrap_err()
                .reason,
            "too_large"
        );
        let future = format!(
            r#"{{"epoch":"ab","seq":1,"ts":{},"metrics":{{"a":1}}}}"#,
            NOW + MAX_FUTURE_MS + 1
        );
        assert_eq!(
            validate("d", future.as_bytes(), NOW).unwrap().1[0].reason,
            "future_timestamp"
        );
        let many: String = (0..65)
            .map(|i| format!(r#""m{i}":1"#))
            .collect::<Vec<_>>()
            .join(",");
        let msg = format!(r#"{{"epoch":"ab","seq":1,"ts":{NOW},"metrics":{{{many}}}}}"#);
        assert_eq!(
            validate("d", msg.as_bytes(), NOW).unwrap().1[0].reason,
            "too_many_metrics"
        );
        let long = format!(
            r#"{{"epoch":"ab","seq":1,"ts":{NOW},"metrics":{{"{}":1}}}}"#,
            "x".repeat(65)
        );
        assert_eq!(
            validate("d", long.as_bytes(), NOW).unwrap().1[0].reason,
            "bad_metric_name"
        );
        let huge = format!(r#"{{"epoch":"ab","seq":1,"ts":{NOW},"metrics":{{"a":1e400}}}}"#);
        assert!(
            validate("d", huge.as_bytes(), NOW).is_err(),
            "out-of-range numbers are refused"
        );
    }
}
