-- Signed OTA bundles: uploaded artifacts (content-addressed: one row per
-- sha256, the bytes live in the blob store), bundles with their signed
-- envelope, the payloads each bundle names, and the offers that make a
-- bundle's blobs downloadable by a device (filled by the rollout engine).

CREATE TABLE artifacts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    size BIGINT NOT NULL CHECK (size >= 0),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX artifacts_created ON artifacts (created_at, id);

CREATE TABLE bundles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    version TEXT NOT NULL,
    -- The version without build metadata: semver precedence ignores it, so
    -- 1.0.0+a and 1.0.0+b are the same version to a device.
    version_key TEXT NOT NULL,
    device_types TEXT NOT NULL,
    installer TEXT NOT NULL,
    envelope TEXT NOT NULL,
    signer_keyid TEXT NOT NULL,
    payload_count BIGINT NOT NULL,
    total_size BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (name, version_key)
);
CREATE INDEX bundles_created ON bundles (created_at, id);

CREATE TABLE bundle_payloads (
    bundle_id TEXT NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    artifact_id TEXT NOT NULL REFERENCES artifacts (id),
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (bundle_id, name)
);
CREATE INDEX bundle_payloads_artifact ON bundle_payloads (artifact_id);
CREATE INDEX bundle_payloads_sha256 ON bundle_payloads (sha256, bundle_id);

-- A bundle offered to a device; the device may then download its payloads.
-- rollout_id is NULL for offers made outside a rollout.
CREATE TABLE device_offers (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    bundle_id TEXT NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    rollout_id TEXT,
    offered_at BIGINT NOT NULL
);
CREATE INDEX device_offers_device ON device_offers (device_id, bundle_id);
CREATE INDEX device_offers_bundle ON device_offers (bundle_id);
