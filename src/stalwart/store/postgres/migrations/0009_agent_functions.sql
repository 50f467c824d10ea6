-- 0009_agent_functions: the two transactions of an agent turn, each one call into the server
-- (decision 0040). Each does what the SQL store's Python does, statement for statement: the
-- settle of a turn's ledger row with the turn's record and its first call's start, and the end
-- of a call with the reservation of the next turn. Everything rarer (a tool's limits, its
-- on_commit effects, a budget's first call, a refusal, a warning) stays in Python, in the same
-- transaction.

-- The settle of an agent turn's ledger row, with the turn (fenced by the step's lease token),
-- its event, and its first call started when its tool is not limited. Returns whether the row
-- was settled (false: settled already), its job and step key, the budgets after the spend (JSON:
-- [key, tenant, scope, limit_nanos, limit_tokens, spent_nanos, spent_tokens, warned], for the
-- warnings), whether the turn was recorded and whether the call started.
CREATE OR REPLACE FUNCTION stalwart_agent_settle(
    p_call bigint, p_outcome text, p_input bigint, p_output bigint, p_cached bigint,
    p_cost bigint, p_priced int, p_cache_hit int, p_latency double precision,
    p_error_class text, p_error text, p_model text, p_now double precision, p_actor text,
    p_step bigint, p_token bigint, p_turn int, p_attempt int, p_response text, p_summary text,
    p_t_provider text, p_t_model text, p_t_input bigint, p_t_output bigint, p_t_cost bigint,
    p_turn_reason text, p_turn_data text,
    p_start_idx int, p_start_call_id text, p_start_tool text, p_start_args text
) RETURNS TABLE (
    settled boolean, job_id text, step_key text, budgets text, recorded boolean, started boolean
) LANGUAGE plpgsql AS $$
DECLARE
    c record;
    k text;
    spent bigint;
    used bigint;
    held_nanos bigint;
    held_tokens bigint;
BEGIN
    SELECT l.outcome, l.budget_keys, l.reserved_nanos, l.reserved_tokens, l.job_id AS job,
           l.step_key AS skey, l.tenant_id AS tenant
      INTO c FROM llm_calls l WHERE l.id = p_call FOR UPDATE;
    IF NOT FOUND OR c.outcome NOT IN ('reserved', 'abandoned') THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text, NULL::text, false, false;
        RETURN;
    END IF;
    recorded := false;
    started := false;
    SELECT s.key INTO k FROM steps s
     WHERE s.id = p_step AND s.lease_token = p_token AND s.status = 'running' FOR UPDATE;
    IF FOUND THEN
        INSERT INTO agent_turns (step_id, turn, tenant_id, job_id, attempt, response, summary,
            provider, model, input_tokens, output_tokens, cost_nanos, llm_call_id, created)
        VALUES (p_step, p_turn, c.tenant, c.job, p_attempt, p_response, p_summary, p_t_provider,
            p_t_model, p_t_input, p_t_output, p_t_cost, p_call, p_now)
        ON CONFLICT (step_id, turn) DO NOTHING;
        INSERT INTO events (tenant_id, job_id, step_id, step_key, kind, from_status, to_status,
            actor, reason, data, at)
        VALUES (c.tenant, c.job, p_step, k, 'agent_turn', NULL, NULL, p_actor, p_turn_reason,
            p_turn_data, p_now);
        recorded := true;
        IF p_start_tool IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM limits m WHERE m.key = 'tool:' || p_start_tool AND (
                m.concurrency IS NOT NULL OR m.rate IS NOT NULL OR m.breaker_failures IS NOT NULL
                OR m.paused_until > p_now OR m.breaker_state <> 'closed'))
        THEN
            INSERT INTO agent_calls (step_id, turn, idx, tenant_id, job_id, call_id, tool,
                arguments, status, result, error, attempts, review_id, decision, started,
                finished, created)
            VALUES (p_step, p_turn, p_start_idx, c.tenant, c.job, p_start_call_id, p_start_tool,
                p_start_args, 'running', NULL, NULL, 1, NULL, NULL, p_now, NULL, p_now)
            ON CONFLICT (step_id, turn, idx) DO UPDATE SET status = excluded.status,
                result = excluded.result, error = excluded.error, attempts = excluded.attempts,
                review_id = excluded.review_id, decision = excluded.decision,
                started = excluded.started, finished = excluded.finished;
            started := true;
        END IF;
    END IF;
    held_nanos := c.reserved_nanos;
    held_tokens := c.reserved_tokens;
    IF c.outcome = 'abandoned' THEN
        held_nanos := 0;
        held_tokens := 0;
    END IF;
    spent := p_cost;
    used := p_input + p_output;
    IF p_outcome = 'cancelled' THEN
        spent := c.reserved_nanos;
        used := c.reserved_tokens;
    END IF;
    UPDATE llm_calls SET outcome = p_outcome, input_tokens = p_input, output_tokens = p_output,
        cached_tokens = p_cached, cost_nanos = spent, priced = p_priced, cache_hit = p_cache_hit,
        latency_ms = p_latency, error_class = p_error_class, error = p_error,
        model = COALESCE(p_model, model), settled = p_now
     WHERE id = p_call;
    WITH u AS (
        UPDATE budgets b SET spent_nanos = b.spent_nanos + spent,
            spent_tokens = b.spent_tokens + used, reserved_nanos = b.reserved_nanos - held_nanos,
            reserved_tokens = b.reserved_tokens - held_tokens, updated = p_now
         WHERE b.key IN (SELECT x.key FROM budgets x WHERE x.key IN (
                SELECT json_array_elements_text(c.budget_keys::json)) ORDER BY x.key FOR UPDATE)
        RETURNING b.key, b.tenant_id, b.scope, b.limit_nanos, b.limit_tokens, b.spent_nanos,
            b.spent_tokens, b.warned
    )
    SELECT json_agg(json_build_array(u.key, u.tenant_id, u.scope, u.limit_nanos,
        u.limit_tokens, u.spent_nanos, u.spent_tokens, u.warned))::text INTO budgets FROM u;
    settled := true;
    job_id := c.job;
    step_key := c.skey;
    RETURN NEXT;
END
$$;

-- The end of an agent call (fenced; a tool without limits nor on_commit effects), its event, and
-- the next turn's reservation when every budget row exists and has room (locked in key order;
-- all or nothing). Returns whether the call's end was written and the reserved ledger row (NULL:
-- nothing asked, or the reservation is left to the caller: a missing row, no room).
CREATE OR REPLACE FUNCTION stalwart_agent_call_end(
    p_step bigint, p_token bigint, p_tenant text, p_job text, p_turn int, p_idx int,
    p_call_id text, p_tool text, p_arguments text, p_status text, p_result text, p_error text,
    p_attempts int, p_review text, p_decision text, p_started double precision,
    p_now double precision, p_actor text, p_reason text, p_data text,
    p_keys text[], p_limit_nanos bigint[], p_limit_tokens bigint[], p_nanos bigint,
    p_tokens bigint, p_step_key text, p_attempt int, p_seq int, p_purpose text,
    p_provider text, p_model text, p_tier text, p_budget_keys text, p_context_tokens bigint,
    p_context_limit bigint, p_expires double precision
) RETURNS TABLE (done boolean, reserved bigint) LANGUAGE plpgsql AS $$
DECLARE
    k text;
    found_rows int;
    room boolean;
BEGIN
    SELECT s.key INTO k FROM steps s
     WHERE s.id = p_step AND s.lease_token = p_token AND s.status = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint;
        RETURN;
    END IF;
    INSERT INTO agent_calls (step_id, turn, idx, tenant_id, job_id, call_id, tool, arguments,
        status, result, error, attempts, review_id, decision, started, finished, created)
    VALUES (p_step, p_turn, p_idx, p_tenant, p_job, p_call_id, p_tool, p_arguments, p_status,
        p_result, p_error, p_attempts, p_review, p_decision, p_started, p_now, p_now)
    ON CONFLICT (step_id, turn, idx) DO UPDATE SET status = excluded.status,
        result = excluded.result, error = excluded.error, attempts = excluded.attempts,
        review_id = excluded.review_id, decision = excluded.decision,
        started = excluded.started, finished = excluded.finished;
    INSERT INTO events (tenant_id, job_id, step_id, step_key, kind, from_status, to_status,
        actor, reason, data, at)
    VALUES (p_tenant, p_job, p_step, k, 'agent_tool_call', NULL, NULL, p_actor, p_reason,
        p_data, p_now);
    done := true;
    reserved := NULL;
    IF p_keys IS NULL THEN
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT count(*) INTO found_rows FROM (
        SELECT x.key FROM budgets x WHERE x.key = ANY(p_keys) ORDER BY x.key FOR UPDATE) locked;
    SELECT bool_and(
            (l.ln IS NULL OR b.spent_nanos + b.reserved_nanos + p_nanos <= l.ln)
        AND (l.lt IS NULL OR b.spent_tokens + b.reserved_tokens + p_tokens <= l.lt))
      INTO room
      FROM budgets b JOIN unnest(p_keys, p_limit_nanos, p_limit_tokens) AS l(key, ln, lt)
        ON b.key = l.key;
    IF found_rows = cardinality(p_keys) AND room THEN
        UPDATE budgets b SET reserved_nanos = b.reserved_nanos + p_nanos,
            reserved_tokens = b.reserved_tokens + p_tokens, limit_nanos = l.ln,
            limit_tokens = l.lt, updated = p_now
          FROM unnest(p_keys, p_limit_nanos, p_limit_tokens) AS l(key, ln, lt)
         WHERE b.key = l.key;
        INSERT INTO llm_calls (tenant_id, job_id, step_key, attempt, seq, purpose, provider,
            model, tier, outcome, budget_keys, reserved_nanos, reserved_tokens, context_tokens,
            context_limit, created, expires)
        VALUES (p_tenant, p_job, p_step_key, p_attempt, p_seq, p_purpose, p_provider, p_model,
            p_tier, 'reserved', p_budget_keys, p_nanos, p_tokens, p_context_tokens,
            p_context_limit, p_now, p_expires)
        RETURNING id INTO reserved;
    END IF;
    RETURN NEXT;
END
$$;
