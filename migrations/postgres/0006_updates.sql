-- Where each offered update stands on each device, as the device reports it
-- (the contract's update states). `seq` rises with each report of a rollout,
-- so a retried older report never overwrites a newer one; a final state
-- never changes.
CREATE TABLE device_updates (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    rollout_id TEXT NOT NULL,
    bundle_id TEXT,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    version TEXT,
    log_tail TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, rollout_id)
);
CREATE INDEX device_updates_rollout ON device_updates (rollout_id, state);
