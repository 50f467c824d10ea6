"""The rows of agent loops (decision 0039), inside a transaction or read back: a turn recorded
under its step's lease (also from the settle of the turn's ledger row, in `llm.py`), and turn and
call rows assembled into a `Transcript`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stalwart.domain.agents import AgentCall, AgentTurn, Transcript, TurnCheckpoint
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


def insert_turn(
    tx: Tx, checkpoint: TurnCheckpoint, turn: AgentTurn, tenant_id: str, job_id: str
) -> bool:
    """Record an agent turn if the checkpoint's lease still holds (inside the caller's
    transaction: the settle of the turn's ledger row, or `agent_turn_record`)."""
    held = tx.con.execute(
        f"SELECT id FROM steps WHERE id = ? AND lease_token = ? AND status = 'running'{tx.lock}",
        (checkpoint.step_id, checkpoint.lease_token),
    ).fetchone()
    if held is None:
        return False
    response = {
        "text": turn.text,
        "tool_calls": turn.tool_calls,
        "finish_reason": turn.finish_reason,
    }
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
            dumps(response),
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
    step = tx.step(checkpoint.step_id)
    job = tx.job(job_id)
    if step is not None and job is not None:
        tx.note(
            "agent_turn",
            job,
            f"turn {checkpoint.turn}: "
            + (f"{len(turn.tool_calls)} tool call(s)" if turn.tool_calls else "answer"),
            step=step,
            turn=checkpoint.turn,
            tool_calls=len(turn.tool_calls),
            input_tokens=turn.input_tokens,
            output_tokens=turn.output_tokens,
            cost_nanos=turn.cost_nanos,
            model=turn.model,
        )
    return True


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
    "call_from_row",
    "insert_turn",
    "turn_from_row",
]
