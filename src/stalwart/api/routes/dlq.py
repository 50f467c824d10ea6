"""`/v1/dlq`: dead letters, and redriving them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from stalwart.api.auth import require
from stalwart.api.errors import responses
from stalwart.api.params import DeadLetterId
from stalwart.api.schemas import DeadLetter, DeadLetterList, Job, Reason
from stalwart.api.state import client
from stalwart.domain.access import Permission, Principal

router = APIRouter(prefix="/v1/dlq", tags=["dead letters"])

DeadLetterStatus = Literal["open", "redriven", "resolved", "closed", "cancelled"]


@router.get(
    "", response_model=DeadLetterList, responses=responses(401, 403, 422), summary="Dead letters"
)
async def list_dead_letters(
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.DLQ_READ))],
    status: Annotated[
        list[DeadLetterStatus] | None, Query(description="Filter by status (default: open).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeadLetterList:
    """The tenant's dead letters, newest first."""
    found = await client(request).dead_letters(
        tenant=principal.tenant_id, statuses=status or ("open",), limit=limit
    )
    return DeadLetterList(items=[DeadLetter.of(d) for d in found])


@router.get(
    "/{dead_letter_id}",
    response_model=DeadLetter,
    responses=responses(401, 403, 404, 422),
    summary="A dead letter",
)
async def get_dead_letter(
    dead_letter_id: DeadLetterId,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.DLQ_READ))],
) -> DeadLetter:
    """One dead letter with its error and context."""
    letter = await client(request).dead_letter(dead_letter_id, tenant=principal.tenant_id)
    return DeadLetter.of(letter)


@router.post(
    "/{dead_letter_id}/redrive",
    response_model=Job,
    responses=responses(400, 401, 403, 404, 409, 422),
    summary="Redrive",
)
async def redrive(
    dead_letter_id: DeadLetterId,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.DLQ_REDRIVE))],
    body: Reason | None = None,
) -> Job:
    """Resume the job from its failed step; completed steps never run again. A dead letter
    already redriven or closed answers 409."""
    c = client(request)
    # The path may name the letter or its job: redrive through the letter, which must be open.
    letter = await c.dead_letter(dead_letter_id, tenant=principal.tenant_id)
    job = await c.redrive(
        letter.id,
        tenant=principal.tenant_id,
        actor=principal.name,
        reason=(body.reason if body else "") or f"redriven by {principal.name}",
    )
    return Job.of(job)
