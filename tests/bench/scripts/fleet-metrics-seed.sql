-- Seeds a migrated Drover SQLite store (see fleet-metrics.sh) for the fleet
-- metrics benchmark: 100,000 accepted devices (ids of 32 hex digits sharing
-- a prefix, like real ones; 3 types, a site tag, installed versions), one
-- metric (inference_ms) with one-minute rollups from two hours before the
-- current hour until now, written through the real triggers, and older
-- hourly sums for eight days put straight into the tiers (eight days of
-- minute rows would be 1.2 billion). A device reads 6 times a minute; every
-- fifth device updated the detector from 1.0.0 to 1.1.0 30 minutes ago;
-- every twentieth runs no detector.
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
CREATE TEMP TABLE t AS SELECT
  (CAST(strftime('%s', 'now') AS INTEGER) * 1000) / 60000 * 60000 AS minute,
  (CAST(strftime('%s', 'now') AS INTEGER) * 1000) / 3600000 * 3600000 - 2 * 3600000 AS h0;
INSERT INTO metric_names (name) VALUES ('inference_ms');
INSERT INTO version_sets (versions) VALUES ('{"detector":"1.0.0","os":"5.1.0"}'), ('{"detector":"1.1.0","os":"5.1.0"}'), ('{"os":"5.1.0"}');
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)
INSERT INTO devices (id, name, device_type, status, public_key_sha256, enrollment_token_id, created_at, updated_at, last_seen_at, online)
SELECT printf('019af1d2208a7ba9%016x', i), printf('device-%d', i), CASE i % 3 WHEN 0 THEN 'rpi4' WHEN 1 THEN 'jetson' ELSE 'x86' END,
       'accepted', printf('%064d', i), 'seed', 0, 0, (SELECT minute FROM t), TRUE FROM n;
INSERT INTO device_tags (device_id, key, value) SELECT id, 'site', 'site-' || (CAST(substr(name, 8) AS INTEGER) % 20) FROM devices;
INSERT INTO device_versions (device_id, name, kind, version, since)
SELECT id, 'detector', 'model', CASE WHEN CAST(substr(name, 8) AS INTEGER) % 5 = 1 THEN '1.1.0' ELSE '1.0.0' END, 0
FROM devices WHERE CAST(substr(name, 8) AS INTEGER) % 20 <> 0;
-- Two hours of minute rollups up to now, in time order as ingest writes them.
WITH RECURSIVE m(b) AS (SELECT (SELECT h0 FROM t) UNION ALL SELECT b + 60000 FROM m WHERE b < (SELECT minute FROM t))
INSERT INTO telemetry_rollups (device_id, metric_id, bucket, version_set_id, min, max, sum, count)
SELECT d.id, 1, m.b,
       CASE WHEN CAST(substr(d.name, 8) AS INTEGER) % 20 = 0 THEN 3
            WHEN CAST(substr(d.name, 8) AS INTEGER) % 5 = 1 AND m.b >= (SELECT minute FROM t) - 30 * 60000 THEN 2 ELSE 1 END,
       30.0, 70.0, 6 * (45.0 + (abs(random()) % 1000) / 100.0), 6
FROM m CROSS JOIN devices d;
-- Eight days of older hours, straight into the tiers (daily = sum of hourly).
WITH RECURSIVE h(b) AS (SELECT (SELECT h0 FROM t) - 192 * 3600000 UNION ALL SELECT b + 3600000 FROM h WHERE b < (SELECT h0 FROM t) - 3600000)
INSERT INTO telemetry_hourly (metric_id, device_id, bucket, version_set_id, sum, count)
SELECT 1, d.id, h.b, CASE WHEN CAST(substr(d.name, 8) AS INTEGER) % 20 = 0 THEN 3 ELSE 1 END,
       360 * (45.0 + (abs(random()) % 1000) / 100.0), 360
FROM h CROSS JOIN devices d;
INSERT INTO telemetry_daily (metric_id, device_id, bucket, version_set_id, sum, count)
SELECT metric_id, device_id, bucket - bucket % 86400000, version_set_id, SUM(sum), SUM(count)
FROM telemetry_hourly WHERE bucket < (SELECT h0 FROM t)
GROUP BY metric_id, device_id, bucket - bucket % 86400000, version_set_id
ON CONFLICT (metric_id, device_id, bucket, version_set_id) DO UPDATE SET
  sum = telemetry_daily.sum + excluded.sum, count = telemetry_daily.count + excluded.count;
SELECT 'rollups', COUNT(*) FROM telemetry_rollups;
SELECT 'hourly', COUNT(*) FROM telemetry_hourly;
SELECT 'daily', COUNT(*) FROM telemetry_daily;
