"""The LLM gateway's tables on both backends: budgets, the ledger of calls, the response cache.

A call's life in the ledger: `llm_reserve` inserts its row as `reserved` and adds its worst case
to every budget it is charged to, in one transaction, one conditional UPDATE per budget row
(taken in key order, so concurrent reservations cannot deadlock); a budget that would pass its
limit refuses and nothing is written. `llm_settle` records the outcome and moves the budgets
from reserved to spent by the actual figures, and marks (once) the budgets that crossed their
warning ratio. A call settled `cancelled` (its request may have been sent) is charged the worst
case it reserved; one settled `abandoned` (never sent) is charged nothing (decision 0034). A
reservation whose worker died is settled by `charge_reserved` in the transaction that takes its
step's lease back (the reaper, or a restart under the same worker id): the call's request may
have left, so it too is charged its reserved worst case (`cancelled`). `llm_reservations_release`
releases what is left after the row's `expires` (calls outside a step lease, such as planning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

from stalwart.domain.agents import TurnWrite
from stalwart.domain.budgets import (
    NANOS_PER_USD,
    BudgetLine,
    BudgetRecord,
    BudgetWarning,
    CallResult,
    LlmCallRecord,
    NewCall,
    to_usd,
)
from stalwart.domain.events import note
from stalwart.errors import BudgetExceeded
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.rows import loads
from stalwart.store.sql.transcripts import insert_turn, response_json, turn_event
from stalwart.store.sql.tx import Tx
from stalwart.types import dumps

T = TypeVar("T")

CALL_COLUMNS = (
    "id, tenant_id, job_id, step_key, attempt, seq, purpose, provider, model, tier, outcome, "
    "reserved_nanos, input_tokens, output_tokens, cached_tokens, cost_nanos, priced, cache_hit, "
    "latency_ms, context_tokens, context_limit, error_class, error, created, budget_keys"
)
BUDGET_COLUMNS = (
    "key, tenant_id, scope, limit_nanos, limit_tokens, spent_nanos, spent_tokens, "
    "reserved_nanos, reserved_tokens, warned"
)
RESERVATION_EXPIRED = "FROM llm_calls WHERE outcome = 'reserved' AND expires < {now}"


def _call(row: Sequence[Any]) -> LlmCallRecord:
    fields = dict(zip(CALL_COLUMNS.split(", "), row, strict=True))
    fields["priced"] = bool(fields["priced"])
    fields["cache_hit"] = bool(fields["cache_hit"])
    fields["budget_keys"] = loads(fields["budget_keys"], "budget keys of an LLM call")
    return LlmCallRecord(**fields)


def _budget(row: Sequence[Any]) -> BudgetRecord:
    fields = dict(zip(BUDGET_COLUMNS.split(", "), row, strict=True))
    fields["warned"] = bool(fields["warned"])
    return BudgetRecord(**fields)


def _describe(line: BudgetLine) -> str:
    return {"job": "the job's budget", "tenant_day": "the tenant's daily budget"}.get(
        line.scope, "the tenant's monthly budget"
    )


def reserve_call(tx: Tx, call: NewCall) -> int:
    """Reserve a call's worst case against every budget of its scope and open its ledger row,
    inside the caller's transaction; `BudgetExceeded` when a budget would pass its limit, with
    nothing of the reservation left written.

    Every budget row is reserved on in one statement when all of them exist and have room (the
    common case: two statements a reservation). Otherwise what that statement took is given
    back and the budgets are taken one by one, creating a missing row (a budget's first call)
    and naming the one that refuses."""
    lines = sorted(call.scope.budgets, key=lambda b: b.key)
    nanos, tokens = call.reserved_nanos, call.reserved_tokens
    took = _take_all(tx, lines, nanos, tokens)
    if len(took) < len(lines):
        _give_back(tx, took, nanos, tokens)
        tx.con.execute("SAVEPOINT reserve_lines")
        try:
            for line in lines:
                _reserve_line(tx, line, nanos, tokens)
        except BudgetExceeded:
            tx.con.execute("ROLLBACK TO reserve_lines")
            tx.con.execute("RELEASE reserve_lines")
            raise
        tx.con.execute("RELEASE reserve_lines")
    return _insert_call(tx, call, "reserved", tx.now + call.expires_in)


def _in_key_order(tx: Tx, count: int) -> str:
    """The WHERE term naming `count` budget keys (`?` parameters) so that an UPDATE of several
    budget rows locks them in key order on PostgreSQL. A plain `key IN (...)` locks them in the
    order a scan finds them, which moves as the rows are updated: two such UPDATEs sharing a
    tenant's rows would deadlock, over and over under load."""
    marks = ",".join("?" * count)
    return f"key IN (SELECT key FROM budgets WHERE key IN ({marks}) ORDER BY key{tx.lock})"


def _take_all(tx: Tx, lines: Sequence[BudgetLine], nanos: int, tokens: int) -> list[str]:
    """Reserve on every budget row of `lines` that exists and has room, in one statement (rows
    locked in key order); the keys it reserved on."""
    if not lines:
        return []
    limit_nanos, limit_tokens, room = [], [], []
    params_nanos: list[Any] = []
    params_tokens: list[Any] = []
    params_room: list[Any] = []
    for line in lines:
        limit_nanos.append("WHEN ? THEN CAST(? AS BIGINT)")
        params_nanos += [line.key, line.limit_nanos]
        limit_tokens.append("WHEN ? THEN CAST(? AS BIGINT)")
        params_tokens += [line.key, line.limit_tokens]
        test, test_params = ["1 = 1"], []
        if line.limit_nanos is not None:
            test.append("spent_nanos + reserved_nanos + ? <= ?")
            test_params += [nanos, line.limit_nanos]
        if line.limit_tokens is not None:
            test.append("spent_tokens + reserved_tokens + ? <= ?")
            test_params += [tokens, line.limit_tokens]
        room.append(f"WHEN ? THEN ({' AND '.join(test)})")
        params_room += [line.key, *test_params]
    rows = tx.con.execute(
        "UPDATE budgets SET reserved_nanos = reserved_nanos + ?, "
        "reserved_tokens = reserved_tokens + ?, "
        f"limit_nanos = CASE key {' '.join(limit_nanos)} END, "
        f"limit_tokens = CASE key {' '.join(limit_tokens)} END, updated = ? "
        f"WHERE {_in_key_order(tx, len(lines))} AND CASE key {' '.join(room)} ELSE 1 = 0 END "
        "RETURNING key",
        (
            nanos,
            tokens,
            *params_nanos,
            *params_tokens,
            tx.now,
            *(line.key for line in lines),
            *params_room,
        ),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _give_back(tx: Tx, keys: Sequence[str], nanos: int, tokens: int) -> None:
    """Undo `_take_all` on `keys`."""
    if keys:
        tx.con.execute(
            "UPDATE budgets SET reserved_nanos = reserved_nanos - ?, "
            f"reserved_tokens = reserved_tokens - ? WHERE {_in_key_order(tx, len(keys))}",
            (nanos, tokens, *keys),
        )


def _reserve_line(tx: Tx, line: BudgetLine, nanos: int, tokens: int) -> None:
    # The row exists but for a budget's first call: try the update first, and insert the row
    # (then update again) only when it found nothing, so a reservation is one statement a line.
    if _take(tx, line, nanos, tokens):
        return
    tx.con.execute(
        "INSERT INTO budgets (key, tenant_id, scope, limit_nanos, limit_tokens, updated) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT (key) DO NOTHING",
        (line.key, line.tenant_id, line.scope, line.limit_nanos, line.limit_tokens, tx.now),
    )
    if _take(tx, line, nanos, tokens):
        return
    _refuse(tx, line, nanos, tokens)


def _take(tx: Tx, line: BudgetLine, nanos: int, tokens: int) -> bool:
    """Reserve on one budget row if it exists and has room; False otherwise."""
    sql = (
        "UPDATE budgets SET reserved_nanos = reserved_nanos + ?, "
        "reserved_tokens = reserved_tokens + ?, limit_nanos = ?, limit_tokens = ?, updated = ? "
        "WHERE key = ?"
    )
    params: list[Any] = [nanos, tokens, line.limit_nanos, line.limit_tokens, tx.now, line.key]
    if line.limit_nanos is not None:
        sql += " AND spent_nanos + reserved_nanos + ? <= ?"
        params += [nanos, line.limit_nanos]
    if line.limit_tokens is not None:
        sql += " AND spent_tokens + reserved_tokens + ? <= ?"
        params += [tokens, line.limit_tokens]
    return tx.con.execute(sql + " RETURNING key", tuple(params)).fetchone() is not None


def _refuse(tx: Tx, line: BudgetLine, nanos: int, tokens: int) -> None:
    """Raise `BudgetExceeded` for a budget row that had no room, with its figures."""
    row = tx.con.execute(
        "SELECT spent_nanos, reserved_nanos, spent_tokens, reserved_tokens FROM budgets "
        "WHERE key = ?",
        (line.key,),
    ).fetchone()
    spent_nanos, held_nanos, spent_tokens, held_tokens = row
    if line.limit_nanos is not None and spent_nanos + held_nanos + nanos > line.limit_nanos:
        raise BudgetExceeded(
            f"{_describe(line)} ({line.key}) would be exceeded: limit "
            f"${to_usd(line.limit_nanos):.6f}, spent ${to_usd(spent_nanos):.6f}, held by calls "
            f"in flight ${to_usd(held_nanos):.6f}, this call may cost up to "
            f"${to_usd(nanos):.6f}; the provider was not called",
            budget=line.key,
            limit=to_usd(line.limit_nanos),
            spent=to_usd(spent_nanos),
            asked=to_usd(nanos),
        )
    raise BudgetExceeded(
        f"{_describe(line)} ({line.key}) would be exceeded: limit {line.limit_tokens} tokens, "
        f"spent {spent_tokens}, held by calls in flight {held_tokens}, this call may use up to "
        f"{tokens}; the provider was not called",
        budget=line.key,
        limit=line.limit_tokens,
        spent=spent_tokens,
        asked=tokens,
        unit="tokens",
    )


def _insert_call(tx: Tx, call: NewCall, outcome: str, expires: float | None) -> int:
    s = call.scope
    row = tx.con.execute(
        "INSERT INTO llm_calls (tenant_id, job_id, step_key, attempt, seq, purpose, provider, "
        "model, tier, outcome, budget_keys, reserved_nanos, reserved_tokens, context_tokens, "
        "context_limit, created, expires) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
        (
            s.tenant_id,
            s.job_id,
            s.step_key,
            s.attempt,
            call.seq,
            s.purpose,
            call.provider,
            call.model,
            call.tier,
            outcome,
            dumps(sorted(line.key for line in s.budgets)),
            call.reserved_nanos if outcome == "reserved" else 0,
            call.reserved_tokens if outcome == "reserved" else 0,
            call.context_tokens,
            call.context_limit,
            tx.now,
            expires,
        ),
    ).fetchone()
    return int(row[0])


def _result_fields(result: CallResult) -> tuple[Any, ...]:
    """A call's figures in the order the ledger row's settle writes them (`_write_result`, and
    `stalwart_agent_settle` on PostgreSQL)."""
    return (
        result.outcome,
        result.input_tokens,
        result.output_tokens,
        result.cached_tokens,
        result.cost_nanos,
        int(result.priced),
        int(result.cache_hit),
        result.latency_ms,
        result.error_class,
        result.error,
        result.model,
    )


def _write_result(tx: Tx, call_id: int, result: CallResult) -> None:
    tx.con.execute(
        "UPDATE llm_calls SET outcome = ?, input_tokens = ?, output_tokens = ?, "
        "cached_tokens = ?, cost_nanos = ?, priced = ?, cache_hit = ?, latency_ms = ?, "
        "error_class = ?, error = ?, model = COALESCE(?, model), settled = ? WHERE id = ?",
        (*_result_fields(result), tx.now, call_id),
    )


def _warnings(
    tx: Tx,
    keys: list[str],
    job_id: str,
    ratio: float,
    step_key: str | None,
    *,
    committed: bool = False,
) -> list[BudgetWarning]:
    """Mark (once) the budgets among `keys` whose spend reached `ratio` of a limit, with a
    `budget_warning` event each. `committed` counts reservations in flight too (a refused call:
    the budget is as good as spent)."""
    if not keys:
        return []
    marks = ",".join("?" * len(keys))
    usd = "spent_nanos + reserved_nanos" if committed else "spent_nanos"
    tokens = "spent_tokens + reserved_tokens" if committed else "spent_tokens"
    rows = tx.con.execute(
        f"UPDATE budgets SET warned = 1 WHERE key IN ({marks}) AND warned = 0 AND ("
        f"(limit_nanos IS NOT NULL AND limit_nanos > 0 AND {usd} >= limit_nanos * ?) OR "
        f"(limit_tokens IS NOT NULL AND limit_tokens > 0 AND {tokens} >= limit_tokens * ?)) "
        f"RETURNING key, tenant_id, scope, limit_nanos, limit_tokens, {usd}, {tokens}",
        (*keys, ratio, ratio),
    ).fetchall()
    return _warned(tx, rows, job_id, ratio, step_key, committed=committed)


def _crossing(row: Sequence[Any], ratio: float) -> bool:
    """Whether a budget row (key, tenant, scope, limit_nanos, limit_tokens, spent_nanos,
    spent_tokens, warned) has not warned yet and its spend reached `ratio` of a limit."""
    _, _, _, limit_nanos, limit_tokens, spent_nanos, spent_tokens, warned = row
    if warned:
        return False
    by_usd = bool(limit_nanos) and limit_nanos > 0 and spent_nanos >= limit_nanos * ratio
    by_tokens = bool(limit_tokens) and limit_tokens > 0 and spent_tokens >= limit_tokens * ratio
    return by_usd or by_tokens


def _warned(
    tx: Tx,
    rows: Sequence[Sequence[Any]],
    job_id: str,
    ratio: float,
    step_key: str | None,
    *,
    committed: bool = False,
) -> list[BudgetWarning]:
    """The warnings (and their events) of budget rows just marked `warned`: (key, tenant,
    scope, limit_nanos, limit_tokens, spent_nanos, spent_tokens)."""
    out = []
    for key, tenant, scope, limit_nanos, limit_tokens, spent_nanos, spent_tokens in sorted(
        tuple(r) for r in rows
    ):
        # The unit that crossed: USD when its limit did, else tokens.
        by_usd = bool(limit_nanos) and spent_nanos >= limit_nanos * ratio
        limit, spent = (limit_nanos, spent_nanos) if by_usd else (limit_tokens, spent_tokens)
        scale = NANOS_PER_USD if by_usd else 1
        warning = BudgetWarning(
            key,
            tenant,
            job_id,
            scope,
            "usd" if by_usd else "tokens",
            limit / scale,
            spent / scale,
            spent / limit,
        )
        tx.events.append(
            note(
                "budget_warning",
                tenant,
                job_id,
                actor=tx.actor,
                at=tx.now,
                step_key=step_key,
                reason=f"{key} at {warning.ratio:.0%} of its limit"
                + (" (a call was refused)" if committed else ""),
                data=warning.to_dict(),
            )
        )
        out.append(warning)
    return out


def _spend(
    tx: Tx, keys: list[str], nanos: int, tokens: int, held_nanos: int, held_tokens: int
) -> list[tuple[Any, ...]]:
    """Move a settled call's figures into its budgets: add what it spent, release what it held
    (one statement for all of them: every budget of a call moves by the same figures). Returns
    each budget's row as `_crossing` reads it, after the move."""
    if not keys:
        return []
    rows = tx.con.execute(
        "UPDATE budgets SET spent_nanos = spent_nanos + ?, "
        "spent_tokens = spent_tokens + ?, reserved_nanos = reserved_nanos - ?, "
        "reserved_tokens = reserved_tokens - ?, updated = ? "
        f"WHERE {_in_key_order(tx, len(keys))} RETURNING key, tenant_id, scope, "
        "limit_nanos, limit_tokens, spent_nanos, spent_tokens, warned",
        (nanos, tokens, held_nanos, held_tokens, tx.now, *keys),
    ).fetchall()
    return [tuple(r) for r in rows]


def _warn_settled(
    tx: Tx, rows: Sequence[Sequence[Any]], job_id: str, ratio: float, step_key: str | None
) -> list[BudgetWarning]:
    """Mark (once) the budgets a settle moved past `ratio` of a limit, with an event each; no
    statement at all when none did (the common case)."""
    crossed = [r for r in rows if _crossing(r, ratio)]
    if not crossed:
        return []
    marks = ",".join("?" * len(crossed))
    tx.con.execute(
        f"UPDATE budgets SET warned = 1 WHERE key IN ({marks})", tuple(r[0] for r in crossed)
    )
    return _warned(tx, [r[:7] for r in crossed], job_id, ratio, step_key)


def _settle_turn_in_server(
    tx: Tx, call_id: int, result: CallResult, turn: TurnWrite, warn_ratio: float
) -> list[BudgetWarning]:
    """`llm_settle` of an agent turn as one call into the server (`stalwart_agent_settle`,
    migration 0009 on PostgreSQL): the same writes, one round trip; the warnings (rare) here."""
    point, record, start = turn.checkpoint, turn.turn, turn.start
    reason, data = turn_event(turn)
    params: tuple[Any, ...] = (
        call_id,
        *_result_fields(result),
        tx.now,
        point.actor or tx.actor,
        point.step_id,
        point.lease_token,
        point.turn,
        point.attempt,
        response_json(record),
        point.summary,
        record.provider,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cost_nanos,
        reason,
        dumps(data),
        start.index if start is not None else None,
        start.call_id if start is not None else None,
        start.tool if start is not None else None,
        start.arguments if start is not None else None,
    )
    row = tx.con.execute(f"SELECT * FROM stalwart_agent_settle({SETTLE_ARGS})", params).fetchone()
    settled, job_id, step_key, budgets, _recorded, started = row
    if start is not None:
        start.status, start.attempts, start.started = (
            ("running", 1, tx.now) if started else ("new", 0, None)
        )
    if not settled:
        return []
    rows = [tuple(r) for r in loads(budgets, "budgets of a settle", list) or []]
    return _warn_settled(tx, rows, job_id, warn_ratio, step_key)


SETTLE_ARGS = (
    "?::bigint, ?::text, ?::bigint, ?::bigint, ?::bigint, ?::bigint, ?::int, ?::int, "
    "?::double precision, ?::text, ?::text, ?::text, ?::double precision, ?::text, ?::bigint, "
    "?::bigint, ?::int, ?::int, ?::text, ?::text, ?::text, ?::text, ?::bigint, ?::bigint, "
    "?::bigint, ?::text, ?::text, ?::int, ?::text, ?::text, ?::text"
)


def charge_reserved(tx: Tx, job_id: str, step_key: str, attempt: int) -> int:
    """Settle the calls of one step attempt that are still `reserved`, in the transaction that
    takes the attempt's lease back from a worker that died or went silent. Its request may have
    left (the gateway sends it as soon as the reservation commits) and the provider may bill it,
    so each is charged its reserved worst case: the budgets move it from reserved to spent, and
    the row becomes `cancelled` with that cost (a settlement that arrives later changes nothing:
    the worst case is an upper bound of the real cost). Returns the number of rows charged."""
    rows = tx.con.execute(
        "SELECT id, budget_keys, reserved_nanos, reserved_tokens FROM llm_calls "
        "WHERE job_id = ? AND step_key = ? AND attempt = ? AND outcome = 'reserved' "
        f"ORDER BY id{tx.lock}",
        (job_id, step_key, attempt),
    ).fetchall()
    for call_id, raw_keys, held_nanos, held_tokens in rows:
        keys = sorted(loads(raw_keys, "budget keys of an LLM call"))
        _spend(tx, keys, held_nanos, held_tokens, held_nanos, held_tokens)
        tx.con.execute(
            "UPDATE llm_calls SET outcome = 'cancelled', cost_nanos = reserved_nanos, "
            "error = ?, settled = ? WHERE id = ?",
            (
                "its worker lost the step's lease with the call in flight; the request may "
                "have reached the provider, so it is charged its reserved worst case",
                tx.now,
                call_id,
            ),
        )
    return len(rows)


class LlmLedger(SqlBase):
    """Budgets, ledger and cache, over the backend's `_write` and `_read` (mixed into
    `SqlStore`)."""

    async def llm_reserve(self, call: NewCall, *, actor: str) -> int:
        """Open a ledger row and reserve the call's worst case against every budget of its
        scope, all or nothing. Raises `BudgetExceeded` (nothing written) when a budget would
        pass its limit. Returns the row's id, for `llm_settle`."""

        def run(tx: Tx) -> int:
            return reserve_call(tx, call)

        return await self._write(actor, run)

    async def llm_settle(
        self,
        call_id: int,
        result: CallResult,
        *,
        actor: str,
        warn_ratio: float = 0.8,
        turn: TurnWrite | None = None,
    ) -> list[BudgetWarning]:
        """Settle a reserved call to its actual figures; return the budgets that crossed
        `warn_ratio` of a limit with this call (each budget warns once, with an event). With
        `turn`, the agent turn this call answered is recorded in the same transaction, fenced
        by its step's lease token (decision 0039)."""

        def run(tx: Tx) -> list[BudgetWarning]:
            row = tx.con.execute(
                "SELECT outcome, budget_keys, reserved_nanos, reserved_tokens, job_id, step_key, "
                f"tenant_id FROM llm_calls WHERE id = ?{tx.lock}",
                (call_id,),
            ).fetchone()
            if row is None or row[0] not in ("reserved", "abandoned"):
                return []  # settled already: settling is idempotent
            outcome, raw_keys, reserved_nanos, reserved_tokens, job_id, step_key, tenant = row
            if turn is not None:
                insert_turn(tx, turn, tenant, job_id)
            held_nanos, held_tokens = reserved_nanos, reserved_tokens
            if outcome == "abandoned":  # released already; only the spend is left to add
                held_nanos = held_tokens = 0
            spent, tokens = result.cost_nanos, result.tokens
            if result.outcome == "cancelled":
                # Its request may have reached the provider, which may bill it: charged the
                # worst case it reserved (decision 0034); its token counts stay unknown (0).
                spent, tokens = reserved_nanos, reserved_tokens
            keys = sorted(loads(raw_keys, "budget keys of an LLM call"))
            _write_result(tx, call_id, replace(result, cost_nanos=spent))
            rows = _spend(tx, keys, spent, tokens, held_nanos, held_tokens)
            return _warn_settled(tx, rows, job_id, warn_ratio, step_key)

        def in_server(tx: Tx) -> list[BudgetWarning]:
            assert turn is not None
            return _settle_turn_in_server(tx, call_id, result, turn, warn_ratio)

        if turn is not None and self.server_turns:
            return await self._write(actor, in_server)
        return await self._write(actor, run)

    async def llm_record(
        self,
        call: NewCall,
        result: CallResult,
        *,
        actor: str,
        refused_by: str | None = None,
    ) -> tuple[int, list[BudgetWarning]]:
        """Record a call that reserved nothing: a cache hit (free) or a refused reservation.
        A refusal by budget `refused_by` warns for that budget (once, if it has not warned yet):
        a budget that refuses is as good as spent. Returns the row's id and the warnings."""

        def run(tx: Tx) -> tuple[int, list[BudgetWarning]]:
            call_id = _insert_call(tx, call, result.outcome, None)
            _write_result(tx, call_id, result)
            if refused_by is None:
                return call_id, []
            # A budget that refuses a call warns whatever its ratio: it is as good as spent.
            warned = _warnings(
                tx, [refused_by], call.scope.job_id, 0.0, call.scope.step_key, committed=True
            )
            return call_id, warned

        return await self._write(actor, run)

    async def llm_reservations_release(self, *, actor: str) -> int:
        """Release the reservations of calls whose worker died before settling them."""

        def run(tx: Tx) -> int:
            rows = tx.con.execute(
                f"SELECT id, budget_keys, reserved_nanos, reserved_tokens "
                f"{RESERVATION_EXPIRED.format(now='?')} ORDER BY id{tx.skip_locked}",
                (tx.now,),
            ).fetchall()
            for call_id, raw_keys, held_nanos, held_tokens in rows:
                for key in sorted(loads(raw_keys, "budget keys of an LLM call")):
                    tx.con.execute(
                        "UPDATE budgets SET reserved_nanos = reserved_nanos - ?, "
                        "reserved_tokens = reserved_tokens - ?, updated = ? WHERE key = ?",
                        (held_nanos, held_tokens, tx.now, key),
                    )
                tx.con.execute(
                    "UPDATE llm_calls SET outcome = 'abandoned', error = ?, settled = ? "
                    "WHERE id = ?",
                    (
                        "the worker did not settle the call before its reservation expired",
                        tx.now,
                        call_id,
                    ),
                )
            return len(rows)

        if not await self._read(f"SELECT 1 {RESERVATION_EXPIRED.format(now=self.now_sql)} LIMIT 1"):
            return 0
        return await self._write(actor, run)

    async def llm_call_list(
        self, job_id: str, *, tenant_id: str | None = None
    ) -> list[LlmCallRecord]:
        """A job's ledger rows, oldest first."""
        sql = f"SELECT {CALL_COLUMNS} FROM llm_calls WHERE job_id = ?"
        params: list[Any] = [job_id]
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        return [_call(r) for r in await self._read(sql + " ORDER BY id", params)]

    async def budget_list(
        self, *, tenant_id: str | None = None, keys: Sequence[str] | None = None
    ) -> list[BudgetRecord]:
        """Budget rows, by key; filtered by tenant or by keys."""
        sql = f"SELECT {BUDGET_COLUMNS} FROM budgets WHERE 1 = 1"
        params: list[Any] = []
        if tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(tenant_id)
        if keys is not None:
            if not keys:
                return []
            sql += f" AND key IN ({','.join('?' * len(keys))})"
            params += list(keys)
        return [_budget(r) for r in await self._read(sql + " ORDER BY key", params)]

    async def llm_cache_get(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        """A cached answer of this tenant, or None (expired entries are misses)."""
        rows = await self._read(
            "SELECT response FROM llm_cache WHERE tenant_id = ? AND key = ? "
            f"AND (expires IS NULL OR expires > {self.now_sql})",
            (tenant_id, key),
        )
        if not rows:
            return None
        value: dict[str, Any] = loads(rows[0][0], "cached LLM response")
        return value

    async def llm_cache_put(
        self,
        tenant_id: str,
        key: str,
        *,
        provider: str,
        model: str,
        response: dict[str, Any],
        ttl_seconds: float | None,
        actor: str,
    ) -> None:
        """Store an answer under this tenant's key (the latest answer wins)."""

        def run(tx: Tx) -> None:
            expires = tx.now + ttl_seconds if ttl_seconds else None
            tx.con.execute(
                "INSERT INTO llm_cache (tenant_id, key, provider, model, response, created, "
                "expires) VALUES (?,?,?,?,?,?,?) ON CONFLICT (tenant_id, key) DO UPDATE SET "
                "response = excluded.response, provider = excluded.provider, "
                "model = excluded.model, created = excluded.created, expires = excluded.expires",
                (tenant_id, key, provider, model, dumps(response), tx.now, expires),
            )

        await self._write(actor, run)
