-- The device timestamp of the last applied `state` message, so a stale last
-- will delivered after a newer "online" cannot mark a connected device offline.
ALTER TABLE devices ADD COLUMN presence_ts BIGINT NOT NULL DEFAULT 0;
