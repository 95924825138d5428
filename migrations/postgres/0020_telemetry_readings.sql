-- Raw telemetry as one row per reading, its metrics a JSON object keyed by
-- metric id ({"1":40.5,"3":0.25}). A row per metric cost every reading three
-- rows and nine index entries; a row per reading costs one row and two entries
-- (docs/BENCHMARKS.md).
CREATE TABLE telemetry_readings (
    device_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    version_set_id BIGINT NOT NULL,
    metrics JSONB NOT NULL
);

-- The stored points, grouped back into the readings they came from (to_jsonb
-- keeps a double's shortest exact digits).
INSERT INTO telemetry_readings (device_id, ts, version_set_id, metrics)
SELECT device_id, ts, version_set_id, jsonb_object_agg(metric_id::text, value)
FROM telemetry_points
GROUP BY device_id, ts, version_set_id;

DROP TABLE telemetry_points;

CREATE INDEX telemetry_readings_series ON telemetry_readings (device_id, ts);
CREATE INDEX telemetry_readings_ts ON telemetry_readings (ts);
