-- The overview's "online without a recent health report" read from one index
-- range instead of probing every online device's report: each device carries
-- the time of its newest report (0 before the first), kept by a trigger on
-- device_health in the same transaction as the report, and the index holds
-- (status, online, health_at), so the stale devices are the start of a range.
-- The two device_health indexes the old query probed go.
ALTER TABLE devices ADD COLUMN health_at BIGINT NOT NULL DEFAULT 0;
UPDATE devices d SET health_at = h.received_at FROM device_health h WHERE h.device_id = d.id;
CREATE INDEX devices_health_attention ON devices (status, online, health_at, id);
DROP INDEX device_health_received;
DROP INDEX device_health_device_received;

CREATE FUNCTION device_health_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE devices SET health_at = NEW.received_at WHERE id = NEW.device_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_health_at_insert AFTER INSERT ON device_health
FOR EACH ROW EXECUTE FUNCTION device_health_at();

CREATE TRIGGER device_health_at_update AFTER UPDATE ON device_health
FOR EACH ROW WHEN (OLD.received_at IS DISTINCT FROM NEW.received_at)
EXECUTE FUNCTION device_health_at();
