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
    started     REAL NOT NULL,
    heartbeat   REAL NOT NULL,
    stopped     REAL
);

CREATE TABLE limits (
    key                 TEXT PRIMARY KEY,
    concurrency         INTEGER,
    rate                REAL,
    burst               REAL,
    tokens              REAL NOT NULL DEFAULT 0,
    refilled            REAL NOT NULL DEFAULT 0,
    paused_until        REAL,
    pause_reason        TEXT,
    breaker_failures    INTEGER,
    breaker_window      REAL,
    breaker_cooldown    REAL,
    breaker_state       TEXT NOT NULL DEFAULT 'closed',
    breaker_count       INTEGER NOT NULL DEFAULT 0,
    breaker_since       REAL,
    breaker_probe       INTEGER,
    updated             REAL NOT NULL
);

CREATE TABLE limit_slots (
    key         TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    step_id     INTEGER,
    taken       REAL,
    PRIMARY KEY (key, slot)
);
CREATE INDEX limit_slots_step ON limit_slots (step_id) WHERE step_id IS NOT NULL;
CREATE INDEX steps_lease_owner ON steps (lease_owner) WHERE status = 'running';
