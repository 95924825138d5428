-- The overview's "online without a recent health report" read from one index
-- range instead of probing every online device's report: each device carries
-- the time of its newest report (0 before the first), kept by triggers on
-- device_health in the same transaction as the report, and the index holds
-- (status, online, health_at), so the stale devices are the start of a range.
-- The two device_health indexes the old query probed go.
ALTER TABLE devices ADD COLUMN health_at BIGINT NOT NULL DEFAULT 0;
UPDATE devices SET health_at = (SELECT h.received_at FROM device_health h WHERE h.device_id = devices.id)
 WHERE EXISTS (SELECT 1 FROM device_health h WHERE h.device_id = devices.id);
CREATE INDEX devices_health_attention ON devices (status, online, health_at, id);
DROP INDEX device_health_received;
DROP INDEX device_health_device_received;

CREATE TRIGGER device_health_at_insert AFTER INSERT ON device_health
BEGIN
    UPDATE devices SET health_at = NEW.received_at WHERE id = NEW.device_id;
END;

CREATE TRIGGER device_health_at_update AFTER UPDATE OF received_at ON device_health
WHEN OLD.received_at IS NOT NEW.received_at
BEGIN
    UPDATE devices SET health_at = NEW.received_at WHERE id = NEW.device_id;
END;
