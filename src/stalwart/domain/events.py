"""Events: the append-only record of every transition, decision and call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Event:
    """One thing that happened to a job; `kind` is past tense (`step_succeeded`)."""

    kind: str
    tenant_id: str
    job_id: str
    actor: str
    at: float
    step_id: int | None = None
    step_key: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    reason: str = ""
    data: dict[str, Any] | None = None
    id: int | None = None


def note(
    kind: str,
    tenant_id: str,
    job_id: str,
    *,
    actor: str,
    at: float,
    reason: str = "",
    step_id: int | None = None,
    step_key: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """An event that is not a status change (a review decided, a plan applied, a warning)."""
    return Event(
        kind=kind,
        tenant_id=tenant_id,
        job_id=job_id,
        actor=actor,
        at=at,
        reason=reason,
        step_id=step_id,
        step_key=step_key,
        data=data,
    )
