-- What each device has installed, one row per bundle name, kept from its
-- health reports: the device list filters on these rows instead of parsing
-- every stored report. `since` is when the server first saw the device on
-- this version (ms); a report that changes nothing leaves the rows alone.
CREATE TABLE device_versions (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (device_id, name)
);
CREATE INDEX device_versions_name ON device_versions (name, version, device_id);

-- The rows the newest stored health reports already name (the first entry
-- of a name wins, as at ingest); reports were validated when they arrived.
INSERT OR IGNORE INTO device_versions (device_id, name, kind, version, since)
SELECT h.device_id,
       json_extract(b.value, '$.name'),
       json_extract(b.value, '$.kind'),
       json_extract(b.value, '$.version'),
       h.received_at
FROM device_health h
JOIN devices d ON d.id = h.device_id,
     json_each(CASE WHEN json_valid(h.report) THEN h.report ELSE '{}' END, '$.installed') b
WHERE b.type = 'object'
  AND json_type(b.value, '$.name') = 'text'
  AND json_type(b.value, '$.kind') = 'text'
  AND json_type(b.value, '$.version') = 'text'
ORDER BY h.device_id, b.key;

-- The device list's sorts read a page in index order, each with its id
-- tie-break, rather than sorting the whole fleet per request. Never-seen
-- devices (no last_seen_at) sort as the longest ago.
DROP INDEX devices_name;
CREATE INDEX devices_name ON devices (name, id);
CREATE INDEX devices_last_seen ON devices (last_seen_at, id);
CREATE INDEX devices_created ON devices (created_at, id);
-- The presence filter: online, offline (seen before) or never seen.
CREATE INDEX devices_presence ON devices (online, last_seen_at);
