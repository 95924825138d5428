-- The device list filtered by a type or a status and ordered by name (its
-- default order) reads its page off one of these indexes in order, instead of
-- sorting every matching device (25,000 gateways at 100,000 devices).
CREATE INDEX devices_type_name ON devices (device_type, name, id);
CREATE INDEX devices_status_name ON devices (status, name, id);
