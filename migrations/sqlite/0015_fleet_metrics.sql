-- Hourly and daily sums of the one-minute rollups, for fleet metrics: a
-- fleet-wide question over an hour at 100,000 devices would read 6 million
-- minute rows, over a day or a week far more. Each row holds exactly the
-- sum and count of the rollup rows of its device, metric, version set and
-- hour (or UTC day); triggers on telemetry_rollups keep it so in the same
-- transaction as every insert, update and delete (ingest and retention need
-- not know), and a row whose count reaches zero is removed.
--
-- The key leads with (metric, bucket): what ingest writes lands in the few
-- pages of the current hour and day instead of one page per device, and a
-- fleet question reads one range per bucket span.
CREATE TABLE telemetry_hourly (
    metric_id BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    version_set_id BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (metric_id, bucket, device_id, version_set_id)
) WITHOUT ROWID;

CREATE TABLE telemetry_daily (
    metric_id BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    device_id TEXT NOT NULL,
    version_set_id BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (metric_id, bucket, device_id, version_set_id)
) WITHOUT ROWID;

INSERT INTO telemetry_hourly (metric_id, bucket, device_id, version_set_id, sum, count)
SELECT metric_id, bucket - bucket % 3600000, device_id, version_set_id, SUM(sum), SUM(count)
FROM telemetry_rollups
GROUP BY metric_id, bucket - bucket % 3600000, device_id, version_set_id;

INSERT INTO telemetry_daily (metric_id, bucket, device_id, version_set_id, sum, count)
SELECT metric_id, bucket - bucket % 86400000, device_id, version_set_id, SUM(sum), SUM(count)
FROM telemetry_rollups
GROUP BY metric_id, bucket - bucket % 86400000, device_id, version_set_id;

CREATE TRIGGER telemetry_rollups_tiers_insert AFTER INSERT ON telemetry_rollups
BEGIN
    INSERT INTO telemetry_hourly (metric_id, device_id, bucket, version_set_id, sum, count)
    VALUES (NEW.metric_id, NEW.device_id, NEW.bucket - NEW.bucket % 3600000, NEW.version_set_id, NEW.sum, NEW.count)
    ON CONFLICT (metric_id, bucket, device_id, version_set_id) DO UPDATE SET
        sum = telemetry_hourly.sum + excluded.sum, count = telemetry_hourly.count + excluded.count;
    INSERT INTO telemetry_daily (metric_id, device_id, bucket, version_set_id, sum, count)
    VALUES (NEW.metric_id, NEW.device_id, NEW.bucket - NEW.bucket % 86400000, NEW.version_set_id, NEW.sum, NEW.count)
    ON CONFLICT (metric_id, bucket, device_id, version_set_id) DO UPDATE SET
        sum = telemetry_daily.sum + excluded.sum, count = telemetry_daily.count + excluded.count;
END;

-- Ingest's upsert adds to a rollup row in place: add the difference.
CREATE TRIGGER telemetry_rollups_tiers_update AFTER UPDATE ON telemetry_rollups
WHEN NEW.metric_id = OLD.metric_id AND NEW.device_id = OLD.device_id
 AND NEW.bucket = OLD.bucket AND NEW.version_set_id = OLD.version_set_id
BEGIN
    UPDATE telemetry_hourly SET sum = sum + (NEW.sum - OLD.sum), count = count + (NEW.count - OLD.count)
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 3600000 AND version_set_id = OLD.version_set_id;
    UPDATE telemetry_daily SET sum = sum + (NEW.sum - OLD.sum), count = count + (NEW.count - OLD.count)
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 86400000 AND version_set_id = OLD.version_set_id;
END;

-- Nothing moves a rollup row to another key today; should anything do so,
-- the sums move with it.
CREATE TRIGGER telemetry_rollups_tiers_rekey AFTER UPDATE ON telemetry_rollups
WHEN NOT (NEW.metric_id = OLD.metric_id AND NEW.device_id = OLD.device_id
      AND NEW.bucket = OLD.bucket AND NEW.version_set_id = OLD.version_set_id)
BEGIN
    UPDATE telemetry_hourly SET sum = sum - OLD.sum, count = count - OLD.count
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 3600000 AND version_set_id = OLD.version_set_id;
    DELETE FROM telemetry_hourly
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 3600000 AND version_set_id = OLD.version_set_id AND count <= 0;
    UPDATE telemetry_daily SET sum = sum - OLD.sum, count = count - OLD.count
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 86400000 AND version_set_id = OLD.version_set_id;
    DELETE FROM telemetry_daily
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 86400000 AND version_set_id = OLD.version_set_id AND count <= 0;
    INSERT INTO telemetry_hourly (metric_id, device_id, bucket, version_set_id, sum, count)
    VALUES (NEW.metric_id, NEW.device_id, NEW.bucket - NEW.bucket % 3600000, NEW.version_set_id, NEW.sum, NEW.count)
    ON CONFLICT (metric_id, bucket, device_id, version_set_id) DO UPDATE SET
        sum = telemetry_hourly.sum + excluded.sum, count = telemetry_hourly.count + excluded.count;
    INSERT INTO telemetry_daily (metric_id, device_id, bucket, version_set_id, sum, count)
    VALUES (NEW.metric_id, NEW.device_id, NEW.bucket - NEW.bucket % 86400000, NEW.version_set_id, NEW.sum, NEW.count)
    ON CONFLICT (metric_id, bucket, device_id, version_set_id) DO UPDATE SET
        sum = telemetry_daily.sum + excluded.sum, count = telemetry_daily.count + excluded.count;
END;

-- Retention removes old rollups: their sums leave the tiers with them.
CREATE TRIGGER telemetry_rollups_tiers_delete AFTER DELETE ON telemetry_rollups
BEGIN
    UPDATE telemetry_hourly SET sum = sum - OLD.sum, count = count - OLD.count
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 3600000 AND version_set_id = OLD.version_set_id;
    DELETE FROM telemetry_hourly
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 3600000 AND version_set_id = OLD.version_set_id AND count <= 0;
    UPDATE telemetry_daily SET sum = sum - OLD.sum, count = count - OLD.count
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 86400000 AND version_set_id = OLD.version_set_id;
    DELETE FROM telemetry_daily
     WHERE metric_id = OLD.metric_id AND device_id = OLD.device_id
       AND bucket = OLD.bucket - OLD.bucket % 86400000 AND version_set_id = OLD.version_set_id AND count <= 0;
END;
