-- Alert rules and what they found. A rule watches one metric (a reading's
-- metric, a health field as health.NAME, or heartbeat_missing) on the
-- devices of its scope; `alert_states` holds each (rule, device) whose
-- condition holds now — since when, and the alert once it held for the
-- rule's for_seconds — so a restart neither forgets a pending condition nor
-- fires a firing alert twice. `alerts` keeps every firing and its resolution.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    metric TEXT NOT NULL,
    device_type TEXT,
    tags TEXT NOT NULL,
    op TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    for_seconds BIGINT NOT NULL,
    severity TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE alerts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    severity TEXT NOT NULL,
    condition TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    fired_at BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX alerts_state ON alerts (state, id);
CREATE INDEX alerts_device ON alerts (device_id, id);

CREATE TABLE alert_states (
    rule_id TEXT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    since BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    alert_id BIGINT,
    PRIMARY KEY (rule_id, device_id)
);
