"""Agent loops in the SQL store (decision 0039): the turns and tool calls of `agent` steps, each
written as it completes and fenced by the step's lease token; the park of a step on a call that
needs a reviewer; and the transcripts read back, to resume a loop and to show it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stalwart.domain.agents import (
    AgentCall,
    AgentTurn,
    CallStatus,
    Transcript,
    TurnCheckpoint,
    TurnWrite,
)
from stalwart.domain.budgets import NewCall
from stalwart.domain.events import note
from stalwart.domain.limits import tool_key
from stalwart.domain.records import Claim, StepError
from stalwart.domain.states import StepStatus
from stalwart.errors import BudgetExceeded
from stalwart.store.base import CallFinish, CallStart
from stalwart.store.sql import limits as limits_sql
from stalwart.store.sql.base import SqlBase
from stalwart.store.sql.llm import reserve_call
from stalwart.store.sql.steps import apply_effects
from stalwart.store.sql.transcripts import (
    CALL_COLUMNS,
    TURN_COLUMNS,
    assemble,
    call_event,
    fenced_key,
    insert_turn,
    write_call,
)
from stalwart.store.sql.tx import (
    REFUND_ATTEMPT,
    STEP_HEAD_COLUMNS,
    StepHead,
    Tx,
    advance_job,
    move_step,
    open_review,
    step_head,
)
from stalwart.types import dumps

S = StepStatus
Effect = tuple[str, tuple[Any, ...]]


def fence(tx: Tx, claim: Claim) -> StepHead | None:
    """The step, locked, if this claim still holds its lease; else None."""
    row = tx.con.execute(
        f"SELECT {STEP_HEAD_COLUMNS} FROM steps WHERE id = ? AND lease_token = ? "
        f"AND status = 'running'{tx.lock}",
        (claim.step_id, claim.lease_token),
    ).fetchone()
    return step_head(row) if row is not None else None


def _end_call_in_server(
    tx: Tx, claim: Claim, call: AgentCall, reserve: NewCall | None
) -> CallFinish:
    """`agent_call_finish` of a call that took no limit and made no effect, as one call into
    the server (`stalwart_agent_call_end`, migration 0009 on PostgreSQL): the call's end, its
    event and, when every budget row exists and has room, the next turn's reservation. A
    reservation the server left (a budget's first call, no room) is made here, in the same
    transaction, as everywhere else: refused, it names the budget."""
    call.finished = tx.now
    reason, data = call_event(call)
    lines = sorted(reserve.scope.budgets, key=lambda b: b.key) if reserve is not None else []
    s = reserve.scope if reserve is not None else None
    params: tuple[Any, ...] = (
        claim.step_id,
        claim.lease_token,
        claim.tenant_id,
        claim.job_id,
        call.turn,
        call.index,
        call.call_id,
        call.tool,
        call.arguments,
        call.status,
        None if call.result is None else dumps(call.result),
        None if call.error is None else dumps(call.error),
        call.attempts,
        call.review_id,
        None if call.decision is None else dumps(call.decision),
        call.started,
        tx.now,
        tx.actor,
        reason,
        dumps(data),
        [line.key for line in lines] if reserve is not None else None,
        [line.limit_nanos for line in lines],
        [line.limit_tokens for line in lines],
        reserve.reserved_nanos if reserve is not None else 0,
        reserve.reserved_tokens if reserve is not None else 0,
        s.step_key if s is not None else None,
        s.attempt if s is not None else 0,
        reserve.seq if reserve is not None else 0,
        s.purpose if s is not None else "",
        reserve.provider if reserve is not None else "",
        reserve.model if reserve is not None else "",
        reserve.tier if reserve is not None else None,
        dumps([line.key for line in lines]),
        reserve.context_tokens if reserve is not None else None,
        reserve.context_limit if reserve is not None else None,
        tx.now + reserve.expires_in if reserve is not None else None,
    )
    done, reserved = tx.con.execute(
        f"SELECT * FROM stalwart_agent_call_end({CALL_END_ARGS})", params
    ).fetchone()
    if not done:
        return CallFinish(False)
    if reserve is None:
        return CallFinish(True)
    if reserved is not None:
        return CallFinish(True, reserved=int(reserved))
    try:
        return CallFinish(True, reserved=reserve_call(tx, reserve))
    except BudgetExceeded as exc:
        return CallFinish(True, refused=exc)


CALL_END_ARGS = (
    "?::bigint, ?::bigint, ?::text, ?::text, ?::int, ?::int, ?::text, ?::text, ?::text, "
    "?::text, ?::text, ?::text, ?::int, ?::text, ?::text, ?::double precision, "
    "?::double precision, ?::text, ?::text, ?::text, ?::text[], ?::bigint[], ?::bigint[], "
    "?::bigint, ?::bigint, ?::text, ?::int, ?::int, ?::text, ?::text, ?::text, ?::text, "
    "?::text, ?::bigint, ?::bigint, ?::double precision"
)


def release_key(tx: Tx, step_id: int, key: str) -> None:
    """Give back the slot of one limit key a step holds (a tool call of an agent step ended;
    the step keeps its other slots)."""
    tx.con.execute(
        "UPDATE limit_slots SET step_id = NULL, taken = NULL WHERE step_id = ? AND key = ?",
        (step_id, key),
    )


class AgentStore(SqlBase):
    """The agent-loop part of `SqlStore`."""

    async def agent_transcript(self, step_id: int, *, key: str = "") -> Transcript:
        """An agent step's turns and calls so far, in order (empty before its first turn)."""
        turns = await self._read(
            f"SELECT {TURN_COLUMNS} FROM agent_turns WHERE step_id = ? ORDER BY turn", (step_id,)
        )
        calls = await self._read(
            f"SELECT {CALL_COLUMNS} FROM agent_calls WHERE step_id = ? ORDER BY turn, idx",
            (step_id,),
        )
        return assemble(step_id, key, turns, calls)

    async def agent_transcripts(
        self, job_id: str, *, tenant_id: str | None = None
    ) -> list[Transcript]:
        """Every agent step's transcript of the job's current plan, in step order; `NotFoundError`
        when the job does not exist for this tenant."""
        job = await self.job_get(job_id, tenant_id=tenant_id)
        steps = await self._read(
            "SELECT id, key FROM steps WHERE job_id = ? AND plan_version = ? AND kind = 'agent' "
            "ORDER BY id",
            (job_id, job.plan_version),
        )
        if not steps:
            return []
        turns = await self._read(
            f"SELECT {TURN_COLUMNS} FROM agent_turns WHERE job_id = ? ORDER BY step_id, turn",
            (job_id,),
        )
        calls = await self._read(
            f"SELECT {CALL_COLUMNS} FROM agent_calls WHERE job_id = ? ORDER BY step_id, turn, idx",
            (job_id,),
        )
        return [
            assemble(
                step_id,
                key,
                [r for r in turns if r[0] == step_id],
                [r for r in calls if r[0] == step_id],
            )
            for step_id, key in steps
        ]

    async def agent_turn_record(
        self, claim: Claim, checkpoint: TurnCheckpoint, turn: AgentTurn, *, actor: str
    ) -> bool:
        """Record a turn that settled no ledger row of its own (a cached answer); False when the
        lease is gone."""

        def run(tx: Tx) -> bool:
            return insert_turn(tx, TurnWrite(checkpoint, turn), claim.tenant_id, claim.job_id)

        return await self._write(actor, run)

    async def agent_call_start(
        self, claim: Claim, call: AgentCall, *, actor: str, limited: bool = True
    ) -> CallStart:
        """Start a tool call: pass the tool's limits (a slot, a token, a closed breaker) and
        write the call `running` with its attempt counted, fenced. A limit that holds it back
        writes nothing and says until when."""

        def run(tx: Tx) -> CallStart:
            if fenced_key(tx, claim.step_id, claim.lease_token) is None:
                return CallStart(False, lease_lost=True)
            key = tool_key(call.tool)
            through = limited and limits_sql.limits_any(tx, [key])
            if through:
                limits = limits_sql.load(tx)
                job = tx.job(claim.job_id)
                assert job is not None
                tx.con.execute("SAVEPOINT agent_call")
                mark = len(tx.events)
                try:
                    release_key(tx, claim.step_id, key)  # a slot left by a call cut off before
                    limits_sql.admit(tx, limits, job, claim.step_id, [key])
                except limits_sql.NotAdmitted:
                    tx.con.execute("ROLLBACK TO agent_call")
                    del tx.events[mark:]
                    tx.con.execute("RELEASE agent_call")
                    return CallStart(
                        False, held_by=key, wait_until=limits_sql.next_free(tx, limits)
                    )
                tx.con.execute("RELEASE agent_call")
            call.status = CallStatus.RUNNING.value
            call.attempts += 1
            call.started = tx.now
            write_call(tx, claim.step_id, claim.tenant_id, claim.job_id, call)
            return CallStart(True, limited=through)

        return await self._write(actor, run)

    async def agent_call_finish(
        self,
        claim: Claim,
        call: AgentCall,
        *,
        actor: str,
        effects: Sequence[Effect] = (),
        outcome: StepError | None = None,
        ran: bool = True,
        limited: bool = True,
        reserve: NewCall | None = None,
    ) -> CallFinish:
        """Write a call's end (its status, result or error), with the tool's `effects` when it
        succeeded, in one fenced transaction; give back its limit slot and move its breaker
        when it went through the tool's limits (`limited`; `outcome`: the tool's error, None
        when it succeeded; `ran` False: the tool never ran). With `reserve`, the loop's next
        turn is reserved in the same transaction (decision 0039): a refusal undoes only the
        reservation and comes back in `refused`. Nothing is written when the lease is gone."""

        waits = outcome is not None and outcome.asks_to_wait
        if self.server_turns and not effects and not (ran and (limited or waits)):

            def in_server(tx: Tx) -> CallFinish:
                return _end_call_in_server(tx, claim, call, reserve)

            return await self._write(actor, in_server)

        def run(tx: Tx) -> CallFinish:
            key = fenced_key(tx, claim.step_id, claim.lease_token)
            if key is None:
                return CallFinish(False)
            if call.status == CallStatus.SUCCEEDED.value:
                apply_effects(tx, claim, effects)
            call.finished = tx.now
            write_call(tx, claim.step_id, claim.tenant_id, claim.job_id, call)
            if ran and (limited or waits):
                job = tx.job(claim.job_id)
                assert job is not None
                release_key(tx, claim.step_id, tool_key(call.tool))
                limits_sql.record_outcome(tx, job, call.tool, claim.step_id, error=outcome)
            reason, data = call_event(call)
            tx.events.append(
                note(
                    "agent_tool_call",
                    claim.tenant_id,
                    claim.job_id,
                    actor=tx.actor,
                    at=tx.now,
                    reason=reason,
                    step_id=claim.step_id,
                    step_key=key,
                    data=data,
                )
            )
            if reserve is None:
                return CallFinish(True)
            try:  # a refusal leaves nothing of the reservation written (reserve_call)
                return CallFinish(True, reserved=reserve_call(tx, reserve))
            except BudgetExceeded as exc:
                return CallFinish(True, refused=exc)

        return await self._write(actor, run)

    async def agent_park(
        self,
        claim: Claim,
        call: AgentCall,
        *,
        actor: str,
        kind: str,
        reason: str,
        asked: str,
        options: list[dict[str, Any]],
        context: dict[str, Any],
    ) -> bool:
        """Park an agent step on a call that waits for a reviewer: the call `awaiting_approval`
        with its review, the step `running → awaiting_approval` with its lease, slots and attempt
        given back (a park is no failed attempt), the job waiting if nothing else runs. False
        when the lease is gone."""

        def run(tx: Tx) -> bool:
            step = fence(tx, claim)
            if step is None:
                return False
            job = tx.job(claim.job_id)
            assert job is not None
            limits_sql.release(tx, step.id)
            move_step(
                tx,
                step,
                S.AWAITING_APPROVAL,
                f"call {call.turn}.{call.index} to {call.tool} waits for a reviewer",
                sets=", lease_owner = NULL, lease_expires = NULL" + REFUND_ATTEMPT,
            )
            review_id = open_review(
                tx,
                job,
                step,
                kind=kind,
                reason=reason,
                asked=asked,
                options=options,
                context=context,
            )
            call.status = CallStatus.AWAITING_APPROVAL.value
            call.review_id = review_id
            write_call(tx, claim.step_id, claim.tenant_id, claim.job_id, call)
            advance_job(tx, job)
            return True

        return await self._write(actor, run)


def decide_call(tx: Tx, review_id: str, approve: bool, reviewer: str, comment: str) -> None:
    """A reviewer's decision on an agent call: write it on the call (`approved`, or `rejected`
    with the comment the model will read)."""
    decision = {"decision": "approved" if approve else "rejected", "reviewer": reviewer}
    if comment:
        decision["comment"] = comment
    tx.con.execute(
        "UPDATE agent_calls SET status = ?, decision = ?, finished = ? WHERE review_id = ?",
        (
            CallStatus.APPROVED.value if approve else CallStatus.REJECTED.value,
            dumps(decision),
            None if approve else tx.now,
            review_id,
        ),
    )


__all__ = [
    "AgentStore",
    "CallStart",
    "decide_call",
    "fence",
    "release_key",
]
