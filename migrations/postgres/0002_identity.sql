-- Device identity: enrollment tokens, devices with their tags, and every
-- certificate issued to a device. Trust documents signed by the root key.

CREATE TABLE enrollment_tokens (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    uses_total BIGINT NOT NULL,
    uses_left BIGINT NOT NULL CHECK (uses_left >= 0),
    expires_at BIGINT NOT NULL,
    device_types TEXT NOT NULL DEFAULT '[]',
    tags TEXT NOT NULL DEFAULT '{}',
    approval BOOLEAN NOT NULL DEFAULT FALSE,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    device_type TEXT NOT NULL,
    hostname TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'revoked', 'decommissioned')),
    public_key_sha256 TEXT NOT NULL,
    enrollment_token_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    online BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX devices_token_key ON devices (enrollment_token_id, public_key_sha256);
CREATE INDEX devices_status ON devices (status, id);
CREATE INDEX devices_type ON devices (device_type, id);
CREATE INDEX devices_name ON devices (name);

CREATE TABLE device_tags (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_tags_kv ON device_tags (key, value, device_id);

CREATE TABLE device_certificates (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint_sha256 TEXT NOT NULL UNIQUE,
    public_key_sha256 TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    issued_for TEXT NOT NULL CHECK (issued_for IN ('enroll', 'renew', 'recover')),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX device_certificates_device ON device_certificates (device_id, not_after);
CREATE INDEX device_certificates_revoked ON device_certificates (revoked_at);

CREATE TABLE trust_documents (
    version BIGINT PRIMARY KEY,
    envelope TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
