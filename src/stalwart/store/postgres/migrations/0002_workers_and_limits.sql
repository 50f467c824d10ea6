-- 0002_workers_and_limits: the worker registry, and limits shared by every worker: concurrency
-- caps (slot rows), token-bucket rate limits, pauses (a 429 with Retry-After) and circuit
-- breakers. A limit's key is 'tool:<name>' or 'tenant:<id>'.

CREATE TABLE workers (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    tools       TEXT NOT NULL DEFAULT '[]',
    version     TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL,
    started     DOUBLE PRECISION NOT NULL,
    heartbeat   DOUBLE PRECISION NOT NULL,
    stopped     DOUBLE PRECISION
);

CREATE TABLE limits (
    key                 TEXT PRIMARY KEY,
    concurrency         INTEGER,
    rate                DOUBLE PRECISION,
    burst               DOUBLE PRECISION,
    tokens              DOUBLE PRECISION NOT NULL DEFAULT 0,
    refilled            DOUBLE PRECISION NOT NULL DEFAULT 0,
    paused_until        DOUBLE PRECISION,
    pause_reason        TEXT,
    breaker_failures    INTEGER,
    breaker_window      DOUBLE PRECISION,
    breaker_cooldown    DOUBLE PRECISION,
    breaker_state       TEXT NOT NULL DEFAULT 'closed',
    breaker_count       INTEGER NOT NULL DEFAULT 0,
    breaker_since       DOUBLE PRECISION,
    breaker_probe       BIGINT,
    updated             DOUBLE PRECISION NOT NULL
);

CREATE TABLE limit_slots (
    key         TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    step_id     BIGINT,
    taken       DOUBLE PRECISION,
    PRIMARY KEY (key, slot)
);
CREATE INDEX limit_slots_step ON limit_slots (step_id) WHERE step_id IS NOT NULL;
CREATE INDEX steps_lease_owner ON steps (lease_owner) WHERE status = 'running';

-- The claim's plan depends on fresh statistics: a queue that fills fast would otherwise be
-- sorted in full until autovacuum's default threshold (20% of the table) is reached.
ALTER TABLE steps SET (autovacuum_analyze_scale_factor = 0.01, autovacuum_analyze_threshold = 500);
ALTER TABLE jobs SET (autovacuum_analyze_scale_factor = 0.01, autovacuum_analyze_threshold = 500);
