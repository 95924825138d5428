-- Metric gates of a rollout (JSON list, judged at the end of each phase's
-- soak), how many times the current phase was held for too few samples,
-- and every verdict with the numbers that decided it.
ALTER TABLE rollouts ADD COLUMN gates TEXT;
ALTER TABLE rollouts ADD COLUMN gate_holds BIGINT NOT NULL DEFAULT 0;

CREATE TABLE rollout_gate_verdicts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id TEXT NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    phase BIGINT NOT NULL,
    metric TEXT NOT NULL,
    outcome TEXT NOT NULL,
    verdict TEXT NOT NULL,
    decided_at BIGINT NOT NULL
);
CREATE INDEX rollout_gate_verdicts_rollout ON rollout_gate_verdicts (rollout_id, phase, metric, id);
