-- The overview's "no recent health report": online accepted devices read from
-- an index holding their ids, each probed for a fresh report in an index
-- holding its time, so neither table's rows are read (a health row carries
-- the whole report).
CREATE INDEX devices_online_ids ON devices (status, online, id);
CREATE INDEX device_health_device_received ON device_health (device_id, received_at);
