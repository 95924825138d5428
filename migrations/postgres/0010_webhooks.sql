-- Webhooks: targets that receive signed JSON POSTs for alert and rollout
-- events, and the durable outbox of their deliveries. A delivery's body is
-- fixed when it is enqueued; `seq` orders a target's deliveries, and the
-- worker sends a target's delivery n+1 only once n is delivered or given up.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    -- Comma-separated event names: `alert`, `rollout`.
    events TEXT NOT NULL,
    -- Kept in clear: every delivery is signed with it. Emptied on delete.
    secret TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- A deleted target keeps its row so its delivery log stays readable.
    deleted_at BIGINT
);

CREATE TABLE webhook_deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    webhook_id TEXT NOT NULL REFERENCES webhooks (id),
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    -- pending, delivered, failed (given up after a day of trying) or cancelled.
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    first_attempt_at BIGINT,
    last_attempt_at BIGINT,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, seq);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (webhook_id, seq) WHERE state = 'pending';
