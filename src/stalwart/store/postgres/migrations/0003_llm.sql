-- 0003_llm: the LLM gateway's tables. Money is integer nano-USD (1 USD = 10^9) so sums are exact.
--
-- budgets: one row per budget ('job:<id>', 'tenant:<id>:day:<YYYY-MM-DD>',
-- 'tenant:<id>:month:<YYYY-MM>'). A call reserves its worst case in one conditional UPDATE per
-- budget row and settles to its actual cost afterwards; 'warned' makes the 80% warning fire once.
CREATE TABLE budgets (
    key             TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    scope           TEXT NOT NULL,
    limit_nanos     BIGINT,
    limit_tokens    BIGINT,
    spent_nanos     BIGINT NOT NULL DEFAULT 0,
    spent_tokens    BIGINT NOT NULL DEFAULT 0,
    reserved_nanos  BIGINT NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    warned          INTEGER NOT NULL DEFAULT 0,
    updated         DOUBLE PRECISION NOT NULL
);
CREATE INDEX budgets_tenant ON budgets (tenant_id, scope);

-- llm_calls: the ledger, a row per model call (and per refused or cached one). A row is written
-- when the call reserves its budget ('reserved') and settled when it returns; a reservation
-- whose worker died is released after 'expires' ('abandoned').
CREATE TABLE llm_calls (
    id              BIGSERIAL PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    step_key        TEXT,
    attempt         INTEGER NOT NULL DEFAULT 0,
    seq             INTEGER NOT NULL DEFAULT 0,
    purpose         TEXT NOT NULL DEFAULT '',
    provider        TEXT NOT NULL,
    model           TEXT NOT NULL,
    tier            TEXT,
    outcome         TEXT NOT NULL,
    budget_keys     TEXT NOT NULL DEFAULT '[]',
    reserved_nanos  BIGINT NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    cached_tokens   BIGINT NOT NULL DEFAULT 0,
    cost_nanos      BIGINT NOT NULL DEFAULT 0,
    priced          INTEGER NOT NULL DEFAULT 1,
    cache_hit       INTEGER NOT NULL DEFAULT 0,
    latency_ms      DOUBLE PRECISION,
    context_tokens  BIGINT,
    context_limit   BIGINT,
    error_class     TEXT,
    error           TEXT,
    created         DOUBLE PRECISION NOT NULL,
    expires         DOUBLE PRECISION,
    settled         DOUBLE PRECISION
);
CREATE INDEX llm_calls_job ON llm_calls (job_id, id);
CREATE INDEX llm_calls_tenant ON llm_calls (tenant_id, created);
CREATE INDEX llm_calls_reserved ON llm_calls (expires) WHERE outcome = 'reserved';

-- llm_cache: answers of calls declared cacheable, per tenant, keyed by a hash of the model,
-- messages, schema and parameters.
CREATE TABLE llm_cache (
    tenant_id   TEXT NOT NULL,
    key         TEXT NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    response    TEXT NOT NULL,
    created     DOUBLE PRECISION NOT NULL,
    expires     DOUBLE PRECISION,
    PRIMARY KEY (tenant_id, key)
);

-- Jobs whose workflow plans with a model start in 'planning' and wait for a worker to plan them.
CREATE INDEX jobs_planning ON jobs (lease_expires) WHERE status = 'planning';
