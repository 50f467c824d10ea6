-- 0001_initial: jobs, plans, steps, events, reviews, dead letters, idempotency keys.
-- PostgreSQL. Columns mirror the SQLite schema so one set of SQL serves both backends: times are
-- epoch seconds (double precision, from the database clock), payloads are JSON text, flags are
-- integers. The hot table (steps) has a partial index on the claimable states only.

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    workflow            TEXT NOT NULL,
    status              TEXT NOT NULL,
    priority            INTEGER NOT NULL DEFAULT 0,
    idempotency_key     TEXT,
    input               TEXT NOT NULL,
    plan_version        INTEGER NOT NULL DEFAULT 0,
    template_name       TEXT,
    template_hash       TEXT,
    tool_schema_hashes  TEXT NOT NULL DEFAULT '{}',
    replans             INTEGER NOT NULL DEFAULT 0,
    max_replans         INTEGER NOT NULL DEFAULT 1,
    on_reject           TEXT NOT NULL DEFAULT 'fail',
    review_sla_seconds  DOUBLE PRECISION NOT NULL DEFAULT 86400,
    max_steps           INTEGER,
    steps_executed      INTEGER NOT NULL DEFAULT 0,
    degraded            INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    replan_feedback     TEXT,
    error               TEXT,
    result              TEXT,
    lease_owner         TEXT,
    lease_token         BIGINT NOT NULL DEFAULT 0,
    lease_expires       DOUBLE PRECISION,
    created             DOUBLE PRECISION NOT NULL,
    updated             DOUBLE PRECISION NOT NULL,
    deadline            DOUBLE PRECISION,
    finished            DOUBLE PRECISION
);
CREATE INDEX jobs_tenant_status ON jobs (tenant_id, status, created);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created);
CREATE INDEX jobs_deadline ON jobs (deadline) WHERE deadline IS NOT NULL AND finished IS NULL;
CREATE INDEX jobs_replanning ON jobs (lease_expires) WHERE status = 'replanning';

CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    expires     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE plans (
    job_id          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    template_name   TEXT NOT NULL,
    template_hash   TEXT NOT NULL,
    plan_hash       TEXT NOT NULL,
    plan            TEXT NOT NULL,
    created         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, version)
);

CREATE TABLE steps (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id              TEXT NOT NULL,
    tenant_id           TEXT NOT NULL,
    plan_version        INTEGER NOT NULL,
    key                 TEXT NOT NULL,
    kind                TEXT NOT NULL,
    tool                TEXT,
    status              TEXT NOT NULL,
    priority            INTEGER NOT NULL DEFAULT 0,
    due                 DOUBLE PRECISION NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    deps_remaining      INTEGER NOT NULL DEFAULT 0,
    critical            INTEGER NOT NULL DEFAULT 1,
    idempotent          INTEGER NOT NULL DEFAULT 1,
    approved            INTEGER NOT NULL DEFAULT 0,
    reconcile_pending   INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_token         BIGINT NOT NULL DEFAULT 0,
    lease_expires       DOUBLE PRECISION,
    spec                TEXT NOT NULL,
    needs               TEXT NOT NULL DEFAULT '[]',
    dependents          TEXT NOT NULL DEFAULT '[]',
    output              TEXT,
    error               TEXT,
    started             DOUBLE PRECISION,
    finished            DOUBLE PRECISION,
    UNIQUE (job_id, plan_version, key)
);
CREATE INDEX steps_claim ON steps (priority DESC, due) WHERE status IN ('ready', 'retry_wait');
CREATE INDEX steps_leases ON steps (lease_expires) WHERE status = 'running';
CREATE INDEX steps_job_status ON steps (job_id, plan_version, status);

CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    step_id     BIGINT,
    step_key    TEXT,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    data        TEXT,
    at          DOUBLE PRECISION NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE reviews (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    step_id         BIGINT,
    step_key        TEXT,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    asked           TEXT NOT NULL DEFAULT '',
    options         TEXT NOT NULL DEFAULT '[]',
    context         TEXT NOT NULL DEFAULT '{}',
    sla_deadline    DOUBLE PRECISION NOT NULL,
    created         DOUBLE PRECISION NOT NULL,
    escalated       DOUBLE PRECISION,
    decided         DOUBLE PRECISION,
    decision        TEXT,
    decided_by      TEXT,
    comment         TEXT
);
CREATE INDEX reviews_tenant_status ON reviews (tenant_id, status, created);
CREATE INDEX reviews_overdue ON reviews (sla_deadline) WHERE status = 'pending';
CREATE INDEX reviews_step ON reviews (step_id);

CREATE TABLE dead_letters (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    step_id     BIGINT,
    step_key    TEXT,
    reason      TEXT NOT NULL,
    error       TEXT,
    context     TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL,
    redriven    DOUBLE PRECISION,
    redriven_by TEXT
);
CREATE INDEX dead_letters_tenant_status ON dead_letters (tenant_id, status, created);
CREATE INDEX dead_letters_job ON dead_letters (job_id);
