-- The overview's counts kept as changes are stored instead of counted per
-- request (at 100,000 devices counting cost the overview most of its time):
-- devices per status and presence, and devices per installed bundle version.
-- Triggers append a +1 / -1 row in the same transaction as the change, so a
-- count is exact whenever it is read (the sum of its rows); appending never
-- waits on another writer, where one shared counter row per count would, on
-- PostgreSQL, serialize every presence change and could deadlock with a
-- statement that updates many devices. The server folds the rows into one
-- per count in the background (`fleet::tallies::compact`).
--
-- what = 'devices': a = status, b = presence (online | offline | never)
-- what = 'versions': a = bundle name, b = version
CREATE TABLE fleet_tallies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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

CREATE TRIGGER devices_tally_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES ('devices', NEW.status,
        CASE WHEN NEW.online THEN 'online' WHEN NEW.last_seen_at IS NULL THEN 'never' ELSE 'offline' END, 1);
END;

-- Last contacts are written thousands of times a second: the WHEN clause lets
-- those that change no count through without touching the table.
CREATE TRIGGER devices_tally_update AFTER UPDATE OF status, online, last_seen_at ON devices
WHEN OLD.status IS NOT NEW.status OR OLD.online IS NOT NEW.online
  OR (OLD.last_seen_at IS NULL) IS NOT (NEW.last_seen_at IS NULL)
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES
        ('devices', OLD.status,
         CASE WHEN OLD.online THEN 'online' WHEN OLD.last_seen_at IS NULL THEN 'never' ELSE 'offline' END, -1),
        ('devices', NEW.status,
         CASE WHEN NEW.online THEN 'online' WHEN NEW.last_seen_at IS NULL THEN 'never' ELSE 'offline' END, 1);
END;

CREATE TRIGGER devices_tally_delete AFTER DELETE ON devices
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES ('devices', OLD.status,
        CASE WHEN OLD.online THEN 'online' WHEN OLD.last_seen_at IS NULL THEN 'never' ELSE 'offline' END, -1);
END;

CREATE TRIGGER device_versions_tally_insert AFTER INSERT ON device_versions
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES ('versions', NEW.name, NEW.version, 1);
END;

CREATE TRIGGER device_versions_tally_update AFTER UPDATE OF name, version ON device_versions
WHEN OLD.name IS NOT NEW.name OR OLD.version IS NOT NEW.version
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES
        ('versions', OLD.name, OLD.version, -1),
        ('versions', NEW.name, NEW.version, 1);
END;

CREATE TRIGGER device_versions_tally_delete AFTER DELETE ON device_versions
BEGIN
    INSERT INTO fleet_tallies (what, a, b, n) VALUES ('versions', OLD.name, OLD.version, -1);
END;
