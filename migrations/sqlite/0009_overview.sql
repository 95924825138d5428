-- The overview's questions answered from indexes at any fleet size:
-- presence counts (index-only), stale health reports, certificates about to expire.
CREATE INDEX devices_status_presence ON devices (status, online, last_seen_at);
CREATE INDEX device_health_received ON device_health (received_at);
CREATE INDEX device_certificates_not_after ON device_certificates (not_after);
