-- Telemetry: interned metric names and version sets, readings seen (the
-- de-duplication key), raw points, one-minute rollups, latest values, the
-- latest health report, and device events.

CREATE TABLE metric_names (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE version_sets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    versions TEXT NOT NULL UNIQUE
);

CREATE TABLE telemetry_seen (
    device_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (device_id, epoch, seq)
);
CREATE INDEX telemetry_seen_ts ON telemetry_seen (ts);

CREATE TABLE telemetry_points (
    device_id TEXT NOT NULL,
    metric_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    version_set_id BIGINT NOT NULL
);
CREATE INDEX telemetry_points_series ON telemetry_points (device_id, metric_id, ts);
CREATE INDEX telemetry_points_ts ON telemetry_points (ts);

CREATE TABLE telemetry_rollups (
    device_id TEXT NOT NULL,
    metric_id BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    version_set_id BIGINT NOT NULL,
    min DOUBLE PRECISION NOT NULL,
    max DOUBLE PRECISION NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric_id, bucket, version_set_id)
);
CREATE INDEX telemetry_rollups_bucket ON telemetry_rollups (bucket);

CREATE TABLE telemetry_latest (
    device_id TEXT NOT NULL,
    metric_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, metric_id)
);

CREATE TABLE device_health (
    device_id TEXT PRIMARY KEY,
    received_at BIGINT NOT NULL,
    report TEXT NOT NULL
);

CREATE TABLE device_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX device_events_device ON device_events (device_id, id);
