-- 0001_initial: jobs, plans, steps, events, reviews, dead letters, idempotency keys.
-- Times are epoch seconds (REAL); payloads are JSON text. The hot table (steps) is indexed for
-- the claim with a partial index on the claimable states only.

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
    review_sla_seconds  REAL NOT NULL DEFAULT 86400,
    max_steps           INTEGER,
    steps_executed      INTEGER NOT NULL DEFAULT 0,
    degraded            INTEGER NOT NULL DEFAULT 0,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    replan_feedback     TEXT,
    error               TEXT,
    result              TEXT,
    lease_owner         TEXT,
    lease_token         INTEGER NOT NULL DEFAULT 0,
    lease_expires       REAL,
    created             REAL NOT NULL,
    updated             REAL NOT NULL,
    deadline            REAL,
    finished            REAL
);
CREATE INDEX jobs_tenant_status ON jobs (tenant_id, status, created);
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created);
CREATE INDEX jobs_deadline ON jobs (deadline) WHERE deadline IS NOT NULL AND finished IS NULL;
CREATE INDEX jobs_replanning ON jobs (lease_expires) WHERE status = 'replanning';

CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    expires     REAL NOT NULL,
    PRIMARY KEY (tenant_id, key)
) WITHOUT ROWID;

CREATE TABLE plans (
    job_id          TEXT NOT NULL,
    version         INTEGER NOT NULL,
    template_name   TEXT NOT NULL,
    template_hash   TEXT NOT NULL,
    plan_hash       TEXT NOT NULL,
    plan            TEXT NOT NULL,
    created         REAL NOT NULL,
    PRIMARY KEY (job_id, version)
) WITHOUT ROWID;

CREATE TABLE steps (
    id                  INTEGER PRIMARY KEY,
    job_id              TEXT NOT NULL,
    tenant_id           TEXT NOT NULL,
    plan_version        INTEGER NOT NULL,
    key                 TEXT NOT NULL,
    kind                TEXT NOT NULL,
    tool                TEXT,
    status              TEXT NOT NULL,
    priority            INTEGER NOT NULL DEFAULT 0,
    due                 REAL NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    deps_remaining      INTEGER NOT NULL DEFAULT 0,
    critical            INTEGER NOT NULL DEFAULT 1,
    idempotent          INTEGER NOT NULL DEFAULT 1,
    approved            INTEGER NOT NULL DEFAULT 0,
    reconcile_pending   INTEGER NOT NULL DEFAULT 0,
    lease_owner         TEXT,
    lease_token         INTEGER NOT NULL DEFAULT 0,
    lease_expires       REAL,
    spec                TEXT NOT NULL,
    needs               TEXT NOT NULL DEFAULT '[]',
    dependents          TEXT NOT NULL DEFAULT '[]',
    output              TEXT,
    error               TEXT,
    started             REAL,
    finished            REAL,
    UNIQUE (job_id, plan_version, key)
);
CREATE INDEX steps_claim ON steps (priority DESC, due) WHERE status IN ('ready', 'retry_wait');
CREATE INDEX steps_leases ON steps (lease_expires) WHERE status = 'running';
CREATE INDEX steps_job_status ON steps (job_id, plan_version, status);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    step_id     INTEGER,
    step_key    TEXT,
    kind        TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    data        TEXT,
    at          REAL NOT NULL
);
CREATE INDEX events_job ON events (job_id, id);

CREATE TABLE reviews (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    step_id         INTEGER,
    step_key        TEXT,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,
    reason          TEXT NOT NULL DEFAULT '',
    asked           TEXT NOT NULL DEFAULT '',
    options         TEXT NOT NULL DEFAULT '[]',
    context         TEXT NOT NULL DEFAULT '{}',
    sla_deadline    REAL NOT NULL,
    created         REAL NOT NULL,
    escalated       REAL,
    decided         REAL,
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
    step_id     INTEGER,
    step_key    TEXT,
    reason      TEXT NOT NULL,
    error       TEXT,
    context     TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL,
    created     REAL NOT NULL,
    redriven    REAL,
    redriven_by TEXT
);
CREATE INDEX dead_letters_tenant_status ON dead_letters (tenant_id, status, created);
CREATE INDEX dead_letters_job ON dead_letters (job_id);
