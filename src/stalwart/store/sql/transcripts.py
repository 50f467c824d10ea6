"""The rows of agent loops (decision 0039), inside a transaction or read back: a turn recorded
under its step's lease (also from the settle of the turn's ledger row, in `llm.py`), and turn and
call rows assembled into a `Transcript`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stalwart.domain.agents import AgentCall, AgentTurn, CallStatus, Transcript, TurnWrite
from stalwart.domain.events import note
from stalwart.domain.limits import tool_key
from stalwart.store.sql.limits import limits_any
from stalwart.store.sql.rows import loads
from stalwart.store.sql.tx import Tx
from stalwart.types import dumps

TURN_COLUMNS = (
    "step_id, turn, attempt, response, summary, provider, model, input_tokens, output_tokens, "
    "cost_nanos, llm_call_id, created"
)
CALL_COLUMNS = (
    "step_id, turn, idx, call_id, tool, arguments, status, result, error, attempts, review_id, "
    "decision, started, finished"
)


def fenced_key(tx: Tx, step_id: int, lease_token: int) -> str | None:
    """The step's key, locked, if `lease_token` still holds its lease; else None."""
    row = tx.con.execute(
        f"SELECT key FROM steps WHERE id = ? AND lease_token = ? AND status = 'running'{tx.lock}",
        (step_id, lease_token),
    ).fetchone()
    return None if row is None else str(row[0])


def insert_turn(tx: Tx, write: TurnWrite, tenant_id: str, job_id: str) -> bool:
    """Record an agent turn if its checkpoint's lease still holds (inside the caller's
    transaction: the settle of the turn's ledger row, or `agent_turn_record`), and start the
    turn's first call in the same transaction when `write.start` asks (decision 0039: two
    transactions per turn), unless the call's tool is limited (its limits are taken by
    `agent_call_start`). `write.start.status` says whether it started."""
    checkpoint, turn = write.checkpoint, write.turn
    key = fenced_key(tx, checkpoint.step_id, checkpoint.lease_token)
    if key is None:
        return False
    tx.con.execute(
        "INSERT INTO agent_turns (step_id, turn, tenant_id, job_id, attempt, response, summary, "
        "provider, model, input_tokens, output_tokens, cost_nanos, llm_call_id, created) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (step_id, turn) DO NOTHING",
        (
            checkpoint.step_id,
            checkpoint.turn,
            tenant_id,
            job_id,
            checkpoint.attempt,
            response_json(turn),
            checkpoint.summary,
            turn.provider,
            turn.model,
            turn.input_tokens,
            turn.output_tokens,
            turn.cost_nanos,
            turn.llm_call_id,
            tx.now,
        ),
    )
    reason, data = turn_event(write)
    tx.events.append(
        note(
            "agent_turn",
            tenant_id,
            job_id,
            actor=checkpoint.actor or tx.actor,
            at=tx.now,
            reason=reason,
            step_id=checkpoint.step_id,
            step_key=key,
            data=data,
        )
    )
    start = write.start
    if start is not None:
        start.status, start.attempts, start.started = "new", 0, None
        if not limited(tx, start.tool):
            start.status, start.attempts, start.started = CallStatus.RUNNING.value, 1, tx.now
            write_call(tx, checkpoint.step_id, tenant_id, job_id, start)
    return True


def turn_event(write: TurnWrite) -> tuple[str, dict[str, Any]]:
    """The reason and data of a recorded turn's `agent_turn` event."""
    turn = write.turn
    reason = f"turn {write.checkpoint.turn}: " + (
        f"{len(turn.tool_calls)} tool call(s)" if turn.tool_calls else "answer"
    )
    return reason, {
        "turn": write.checkpoint.turn,
        "tool_calls": len(turn.tool_calls),
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "cost_nanos": turn.cost_nanos,
        "model": turn.model,
    }


def call_event(call: AgentCall) -> tuple[str, dict[str, Any]]:
    """The reason and data of a call's `agent_tool_call` event."""
    code = (call.error or {}).get("code")
    return f"{call.tool}: {call.status}" + (f" ({code})" if code else ""), {
        "tool": call.tool,
        "outcome": call.status,
        "turn": call.turn,
        "index": call.index,
        "attempts": call.attempts,
    }


def response_json(turn: AgentTurn) -> str:
    """What `agent_turns.response` holds."""
    return dumps(
        {"text": turn.text, "tool_calls": turn.tool_calls, "finish_reason": turn.finish_reason}
    )


def limited(tx: Tx, tool: str) -> bool:
    """Whether the tool's key limits calls now (a cap, a rate, a breaker, a pause)."""
    return limits_any(tx, [tool_key(tool)])


def write_call(tx: Tx, step_id: int, tenant_id: str, job_id: str, call: AgentCall) -> None:
    """Insert or update one call row."""
    tx.con.execute(
        "INSERT INTO agent_calls (step_id, turn, idx, tenant_id, job_id, call_id, tool, "
        "arguments, status, result, error, attempts, review_id, decision, started, finished, "
        "created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (step_id, turn, idx) "
        "DO UPDATE SET status = excluded.status, result = excluded.result, "
        "error = excluded.error, attempts = excluded.attempts, review_id = excluded.review_id, "
        "decision = excluded.decision, started = excluded.started, "
        "finished = excluded.finished",
        (
            step_id,
            call.turn,
            call.index,
            tenant_id,
            job_id,
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
            call.finished,
            tx.now,
        ),
    )


def turn_from_row(row: Sequence[Any]) -> AgentTurn:
    """An `AgentTurn` from a row selected with `TURN_COLUMNS` (its calls not attached)."""
    what = f"turn {row[1]} of agent step {row[0]}"
    response = loads(row[3], what, dict) or {}
    return AgentTurn(
        turn=int(row[1]),
        attempt=int(row[2]),
        text=str(response.get("text") or ""),
        tool_calls=list(response.get("tool_calls") or []),
        finish_reason=response.get("finish_reason"),
        summary=row[4],
        provider=row[5],
        model=row[6],
        input_tokens=int(row[7]),
        output_tokens=int(row[8]),
        cost_nanos=int(row[9]),
        llm_call_id=row[10],
        created=float(row[11]),
    )


def call_from_row(row: Sequence[Any]) -> AgentCall:
    """An `AgentCall` from a row selected with `CALL_COLUMNS`."""
    what = f"call {row[1]}.{row[2]} of agent step {row[0]}"
    return AgentCall(
        turn=int(row[1]),
        index=int(row[2]),
        call_id=row[3],
        tool=row[4],
        arguments=row[5],
        status=row[6],
        result=loads(row[7], f"result of {what}"),
        error=loads(row[8], f"error of {what}", dict),
        attempts=int(row[9]),
        review_id=row[10],
        decision=loads(row[11], f"decision of {what}", dict),
        started=row[12],
        finished=row[13],
    )


def assemble(
    step_id: int, key: str, turns: Sequence[Sequence[Any]], calls: Sequence[Sequence[Any]]
) -> Transcript:
    """A transcript from its turn and call rows (in order)."""
    transcript = Transcript(step_id, key, [turn_from_row(r) for r in turns])
    by_turn = {t.turn: t for t in transcript.turns}
    for row in calls:
        call = call_from_row(row)
        owner = by_turn.get(call.turn)
        if owner is not None:
            owner.calls.append(call)
    return transcript


__all__ = [
    "CALL_COLUMNS",
    "TURN_COLUMNS",
    "assemble",
    "call_event",
    "call_from_row",
    "fenced_key",
    "insert_turn",
    "limited",
    "response_json",
    "turn_event",
    "turn_from_row",
    "write_call",
]
