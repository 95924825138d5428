-- The device list filtered by a type and ordered by name (its default order)
-- reads its page off this index in order, instead of sorting every matching
-- device (25,000 gateways at 100,000 devices). No (status, name) twin: a
-- status filter matches most of a fleet and walks the name index already, and
-- SQLite, without statistics, took such an index for joins on the device id.
CREATE INDEX devices_type_name ON devices (device_type, name, id);
-- A filter no index orders (a tag, an installed version, a search) sorts its
-- matches by name from this index, reading only the page's whole rows.
CREATE INDEX devices_id_name ON devices (id, name);
