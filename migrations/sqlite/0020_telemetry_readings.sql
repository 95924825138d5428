-- Raw telemetry as one row per reading, its metrics a JSON object keyed by
-- metric id ({"1":40.5,"3":0.25}). A row per metric cost every reading three
-- rows and nine index entries, which bounded ingest under SQLite's one writer
-- (docs/BENCHMARKS.md); a row per reading costs one row and two entries.
CREATE TABLE telemetry_readings (
    device_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    version_set_id BIGINT NOT NULL,
    metrics TEXT NOT NULL
);

-- The stored points, grouped back into the readings they came from. quote()
-- writes a double with as many digits as it needs to read back the same, where
-- SQLite's JSON functions keep only 15; its conversion is exact from about
-- 1e-80 to 1e100 and may move the last digit beyond.
INSERT INTO telemetry_readings (device_id, ts, version_set_id, metrics)
SELECT device_id, ts, version_set_id,
       '{' || group_concat('"' || metric_id || '":' || quote(value), ',') || '}'
FROM telemetry_points
GROUP BY device_id, ts, version_set_id;

DROP TABLE telemetry_points;

CREATE INDEX telemetry_readings_series ON telemetry_readings (device_id, ts);
CREATE INDEX telemetry_readings_ts ON telemetry_readings (ts);
