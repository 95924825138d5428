-- Staged rollouts. A rollout's target is a snapshot taken when it starts
-- (`rollout_devices`, one row per device with its stable position and phase);
-- the devices' own reports stay in `device_updates`, so a device's state in a
-- rollout is its last report, else the row's `pending` / `offered` / `skipped`.
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- No foreign key: a finished rollout outlives its bundle, and keeps
    -- its name and version.
    bundle_id TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    target TEXT NOT NULL,
    phases TEXT NOT NULL,
    failure_threshold_pct DOUBLE PRECISION NOT NULL,
    max_in_flight BIGINT NOT NULL,
    auto_rollback BOOLEAN NOT NULL,
    maintenance_window TEXT,
    offline_timeout_s BIGINT NOT NULL,
    start_at BIGINT,
    state TEXT NOT NULL,
    phase BIGINT NOT NULL DEFAULT 0,
    phase_started_at BIGINT,
    soak_until BIGINT,
    reason TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    phase BIGINT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    offered_at BIGINT,
    announced_at BIGINT,
    rollback_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_position ON rollout_devices (rollout_id, position);
CREATE INDEX rollout_devices_device ON rollout_devices (device_id);

-- Every transition of a rollout, in order: what the API, webhooks and live
-- pages follow.
CREATE TABLE rollout_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX rollout_events_rollout ON rollout_events (rollout_id, id);

-- The rollout engine's leadership: one row, whose epoch rises with each new
-- leader; every transition checks it inside its transaction.
CREATE TABLE engine_leases (
    name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at BIGINT NOT NULL
);
