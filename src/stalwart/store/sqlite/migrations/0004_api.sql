-- 0004_api: what the HTTP server needs.
--
-- api_keys: one row per key. 'digest' is the SHA-256 of the key's secret (the secret itself is
-- shown once and never stored); a revoked key keeps its row for the audit trail. An active key's
-- name is unique in its tenant: it is the actor recorded on every decision the key makes.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    created     REAL NOT NULL,
    created_by  TEXT NOT NULL,
    last_used   REAL,
    revoked     REAL,
    revoked_by  TEXT
);
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (tenant_id, name) WHERE revoked IS NULL;

-- server_secrets: secrets every server process of one database must share (the key that signs
-- web UI sessions), created once on first use.
CREATE TABLE server_secrets (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    created REAL NOT NULL
);

-- The dashboard reads the jobs finished lately.
CREATE INDEX jobs_finished ON jobs (tenant_id, finished);
