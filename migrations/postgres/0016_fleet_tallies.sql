-- The overview's counts kept as changes are stored instead of counted per
-- request (at 100,000 devices counting cost the overview most of its time):
-- devices per status and presence, and devices per installed bundle version.
-- Triggers append a +1 / -1 row in the same transaction as the change, so a
-- count is exact whenever it is read (the sum of its rows); appending never
-- waits on another writer, where one shared counter row per count would
-- serialize every presence change and could deadlock with a statement that
-- updates many devices. The server folds the rows into one per count in the
-- background (`fleet::tallies::compact`).
--
-- what = 'devices': a = status, b = presence (online | offline | never)
-- what = 'versions': a = bundle name, b = version
CREATE TABLE fleet_tallies (
    id BIGSERIAL PRIMARY KEY,
    what TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    n BIGINT NOT NULL
);

INSERT INTO fleet_tallies (what, a, b, n)
SELECT 'devices', status,
       CASE WHEN online THEN 'online' WHEN last_seen_at IS NULL THEN 'never' ELSE 'offline' END,
       COUNT(*)
FROM devices
GROUP BY 2, 3;

INSERT INTO fleet_tallies (what, a, b, n)
SELECT 'versions', name, version, COUNT(*) FROM device_versions GROUP BY name, version;

CREATE FUNCTION device_presence(online BOOLEAN, last_seen_at BIGINT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN online THEN 'online' WHEN last_seen_at IS NULL THEN 'never' ELSE 'offline' END
$$;

CREATE FUNCTION devices_tally() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO fleet_tallies (what, a, b, n)
        VALUES ('devices', OLD.status, device_presence(OLD.online, OLD.last_seen_at), -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO fleet_tallies (what, a, b, n)
        VALUES ('devices', NEW.status, device_presence(NEW.online, NEW.last_seen_at), 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_tally_insert_delete AFTER INSERT OR DELETE ON devices
FOR EACH ROW EXECUTE FUNCTION devices_tally();

-- Last contacts are written thousands of times a second: the WHEN clause lets
-- those that change no count through without calling the function.
CREATE TRIGGER devices_tally_update AFTER UPDATE ON devices
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.online IS DISTINCT FROM NEW.online
      OR (OLD.last_seen_at IS NULL) IS DISTINCT FROM (NEW.last_seen_at IS NULL))
EXECUTE FUNCTION devices_tally();

CREATE FUNCTION device_versions_tally() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO fleet_tallies (what, a, b, n) VALUES ('versions', OLD.name, OLD.version, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO fleet_tallies (what, a, b, n) VALUES ('versions', NEW.name, NEW.version, 1);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER device_versions_tally_insert_delete AFTER INSERT OR DELETE ON device_versions
FOR EACH ROW EXECUTE FUNCTION device_versions_tally();

CREATE TRIGGER device_versions_tally_update AFTER UPDATE ON device_versions
FOR EACH ROW
WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.version IS DISTINCT FROM NEW.version)
EXECUTE FUNCTION device_versions_tally();
