"""Turning stored rows (either backend) into records; JSON decoded here, failing closed on bad
data.

A single read (`job_get`) raises `CorruptStateError` naming what failed to decode. A read of
many jobs (`job_list`) decodes each row on its own: a job that fails comes back marked
(`JobRecord.corrupt`) with the fields that could be read, so one bad row never hides the others
(docs/decisions/0036-corrupt-rows-are-quarantined.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stalwart.domain.records import (
    DeadLetterRecord,
    EventRecord,
    JobRecord,
    ReviewRecord,
    StepRecord,
)
from stalwart.domain.states import JobStatus
from stalwart.errors import CorruptStateError

JOB_STATUSES = frozenset(s.value for s in JobStatus)
_KINDS: dict[type, str] = {dict: "an object", list: "a list"}


def corrupt(what: str, problem: str) -> CorruptStateError:
    """The error for stored `what` (e.g. "input of job job_1") that `problem` (e.g. "is not valid
    JSON"); its fields `what` and `problem` say where and why, for a listing to show."""
    return CorruptStateError(
        f"stored {what} {problem}; refusing to use it", what=what, problem=problem
    )


def corrupt_text(exc: CorruptStateError) -> str:
    """What failed to decode and why, in a few words: "input of job job_1 is not valid JSON"."""
    what, problem = exc.fields.get("what"), exc.fields.get("problem")
    return f"{what} {problem}" if what and problem else exc.message


def loads(text: str | None, what: str, expect: type | None = None) -> Any:
    """Decode stored JSON; malformed data, or (with `expect`, dict or list) a value of another
    shape, raises `CorruptStateError` naming what it was. None stays None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise corrupt(what, "is not valid JSON") from exc
    if expect is not None and value is not None and not isinstance(value, expect):
        raise corrupt(what, f"is {type(value).__name__}, not {_KINDS.get(expect, expect)}")
    return value


JOB_COLUMNS = (
    "id, tenant_id, workflow, status, priority, input, idempotency_key, plan_version, "
    "template_name, template_hash, tool_schema_hashes, replans, max_replans, max_steps, "
    "steps_executed, degraded, cancel_requested, error, result, created, updated, deadline, "
    "finished, trace_context"
)


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A `JobRecord` from a row selected with `JOB_COLUMNS`; `CorruptStateError` if any of it
    fails to decode."""
    return _job(row, None)


def listed_job_from_row(row: Sequence[Any]) -> JobRecord:
    """Like `job_from_row`, for a listing: a row that fails to decode comes back with what
    could be read, the rest empty, and `corrupt` saying what failed, instead of raising."""
    problems: list[str] = []
    job = _job(row, problems)
    if problems:
        job.corrupt = "; ".join(problems)
    return job


def _job(row: Sequence[Any], problems: list[str] | None) -> JobRecord:
    r = tuple(row)

    def field(n: int, what: str, expect: type, empty: Any) -> Any:
        try:
            return loads(r[n], f"{what} of job {r[0]}", expect)
        except CorruptStateError as exc:
            if problems is None:
                raise
            problems.append(corrupt_text(exc))
            return empty

    if r[3] not in JOB_STATUSES:
        exc = corrupt(f"status of job {r[0]}", f"is {r[3]!r}, not a job status")
        if problems is None:
            raise exc
        problems.append(corrupt_text(exc))
    return JobRecord(
        id=r[0],
        tenant_id=r[1],
        workflow=r[2],
        status=r[3],
        priority=r[4],
        input=field(5, "input", dict, {}),
        idempotency_key=r[6],
        plan_version=r[7],
        template_name=r[8],
        template_hash=r[9],
        tool_schema_hashes=field(10, "tool schema hashes", dict, {}) or {},
        replans=r[11],
        max_replans=r[12],
        max_steps=r[13],
        steps_executed=r[14],
        degraded=bool(r[15]),
        cancel_requested=bool(r[16]),
        error=field(17, "error", dict, None),
        result=field(18, "result", dict, None),
        created=r[19],
        updated=r[20],
        deadline=r[21],
        finished=r[22],
        trace_context=r[23],
    )


STEP_COLUMNS = (
    "id, job_id, tenant_id, plan_version, key, kind, tool, status, priority, attempt, "
    "max_attempts, critical, idempotent, approved, reconcile_pending, lease_owner, lease_token, "
    "due, lease_expires, spec, output, error, started, finished, args"
)


def step_from_row(row: tuple[Any, ...]) -> StepRecord:
    """A `StepRecord` from a row selected with `STEP_COLUMNS`."""
    r = tuple(row)
    return StepRecord(
        id=r[0],
        job_id=r[1],
        tenant_id=r[2],
        plan_version=r[3],
        key=r[4],
        kind=r[5],
        tool=r[6],
        status=r[7],
        priority=r[8],
        attempt=r[9],
        max_attempts=r[10],
        critical=bool(r[11]),
        idempotent=bool(r[12]),
        approved=bool(r[13]),
        reconcile_pending=bool(r[14]),
        lease_owner=r[15],
        lease_token=r[16],
        due=r[17],
        lease_expires=r[18],
        spec=loads(r[19], f"spec of step {r[4]!r} of job {r[1]}", dict) or {},
        output=loads(r[20], f"output of step {r[4]!r} of job {r[1]}"),
        error=loads(r[21], f"error of step {r[4]!r} of job {r[1]}", dict),
        started=r[22],
        finished=r[23],
        args=loads(r[24], f"arguments of step {r[0]}"),
    )


REVIEW_COLUMNS = (
    "id, tenant_id, job_id, step_id, step_key, kind, status, reason, asked, options, context, "
    "sla_deadline, created, escalated, decided, decision, decided_by, comment"
)


def review_from_row(row: tuple[Any, ...]) -> ReviewRecord:
    """A `ReviewRecord` from a row selected with `REVIEW_COLUMNS`."""
    r = tuple(row)
    return ReviewRecord(
        id=r[0],
        tenant_id=r[1],
        job_id=r[2],
        step_id=r[3],
        step_key=r[4],
        kind=r[5],
        status=r[6],
        reason=r[7],
        asked=r[8],
        options=loads(r[9], f"options of review {r[0]}", list) or [],
        context=loads(r[10], f"context of review {r[0]}", dict) or {},
        sla_deadline=r[11],
        created=r[12],
        escalated=r[13],
        decided=r[14],
        decision=r[15],
        decided_by=r[16],
        comment=r[17],
    )


DEAD_LETTER_COLUMNS = (
    "id, tenant_id, job_id, workflow, step_id, step_key, reason, error, context, status, "
    "created, redriven, redriven_by"
)


def dead_letter_from_row(row: tuple[Any, ...]) -> DeadLetterRecord:
    """A `DeadLetterRecord` from a row selected with `DEAD_LETTER_COLUMNS`."""
    r = tuple(row)
    return DeadLetterRecord(
        id=r[0],
        tenant_id=r[1],
        job_id=r[2],
        workflow=r[3],
        step_id=r[4],
        step_key=r[5],
        reason=r[6],
        error=loads(r[7], f"error of dead letter {r[0]}", dict),
        context=loads(r[8], f"context of dead letter {r[0]}", dict) or {},
        status=r[9],
        created=r[10],
        redriven=r[11],
        redriven_by=r[12],
    )


EVENT_COLUMNS = (
    "id, kind, tenant_id, job_id, step_id, step_key, from_status, to_status, actor, reason, "
    "data, at"
)


def event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """An `EventRecord` from a row selected with `EVENT_COLUMNS`."""
    r = tuple(row)
    return EventRecord(
        id=r[0],
        kind=r[1],
        tenant_id=r[2],
        job_id=r[3],
        step_id=r[4],
        step_key=r[5],
        from_status=r[6],
        to_status=r[7],
        actor=r[8],
        reason=r[9],
        data=loads(r[10], f"data of event {r[0]} of job {r[3]}", dict),
        at=r[11],
    )
