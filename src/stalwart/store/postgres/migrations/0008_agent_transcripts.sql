-- 0008_agent_transcripts: the durable loop of agent steps (decision 0039).
--
-- agent_turns: one row per model turn of an agent step, written in the transaction that settles
-- the turn's ledger row and fenced by the step's lease token: a paid turn is a recorded turn, and
-- a resumed attempt rebuilds the transcript from here instead of asking again. `response` is
-- JSON {text, tool_calls: [{id, name, arguments}], finish_reason}; `summary`, when set, is what
-- the turn's request carried instead of the turns before it (the transcript outgrew the window).
CREATE TABLE agent_turns (
    step_id         BIGINT NOT NULL,
    turn            INTEGER NOT NULL,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    response        TEXT NOT NULL,
    summary         TEXT,
    provider        TEXT NOT NULL DEFAULT '',
    model           TEXT NOT NULL DEFAULT '',
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_nanos      BIGINT NOT NULL DEFAULT 0,
    llm_call_id     BIGINT,
    created         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (step_id, turn)
);
CREATE INDEX agent_turns_job ON agent_turns (job_id);

-- agent_calls: one row per tool call the model asked for, in the order it asked. Written
-- `running` before the tool runs and finished with its result (and the tool's on_commit
-- effects) in one fenced transaction: a call found `running` by a resumed attempt was cut off,
-- and follows the tool-step rules (idempotent: again under the same key; else reconcile or a
-- person). `arguments` is the model's raw JSON text; `result` and `error` are JSON.
CREATE TABLE agent_calls (
    step_id         BIGINT NOT NULL,
    turn            INTEGER NOT NULL,
    idx             INTEGER NOT NULL,
    tenant_id       TEXT NOT NULL,
    job_id          TEXT NOT NULL,
    call_id         TEXT NOT NULL,
    tool            TEXT NOT NULL,
    arguments       TEXT NOT NULL,
    status          TEXT NOT NULL,
    result          TEXT,
    error           TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    review_id       TEXT,
    decision        TEXT,
    started         DOUBLE PRECISION,
    finished        DOUBLE PRECISION,
    created         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (step_id, turn, idx)
);
CREATE INDEX agent_calls_job ON agent_calls (job_id);
