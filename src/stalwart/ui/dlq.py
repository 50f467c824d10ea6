"""Dead-letter pages: the open ones, and one with its error, context and a redrive button."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from stalwart.api.params import DeadLetterId
from stalwart.api.state import client
from stalwart.domain.access import Permission
from stalwart.errors import InvalidTransitionError, NotRedrivableError
from stalwart.ui.render import UiRoute, act, need, page
from stalwart.ui.session import Session

router = APIRouter(prefix="/dlq", route_class=UiRoute)

Viewer = Annotated[Session, Depends(need(Permission.DLQ_READ))]
LIST_SIZE = 200


@router.get("")
async def dead_letters(request: Request, session: Viewer) -> Response:
    """Open dead letters, newest first."""
    found = await client(request).dead_letters(
        tenant=session.principal.tenant_id, statuses=("open",), limit=LIST_SIZE
    )
    return page(request, "dead_letters.html", session, letters=found)


async def dead_letter_page(
    request: Request, session: Session, letter_id: str, *, error: str = "", status_code: int = 200
) -> Response:
    """One dead letter: its error and context, and the redrive form."""
    c, tenant = client(request), session.principal.tenant_id
    letter = await c.dead_letter(letter_id, tenant=tenant)
    job = await c.get(letter.job_id, tenant=tenant)
    return page(
        request,
        "dead_letter.html",
        session,
        status_code,
        letter=letter,
        job=job,
        can_redrive=session.principal.can(Permission.DLQ_REDRIVE) and letter.status == "open",
        error=error,
    )


@router.get("/{letter_id}")
async def dead_letter(request: Request, session: Viewer, letter_id: DeadLetterId) -> Response:
    """One dead letter."""
    return await dead_letter_page(request, session, letter_id)


@router.post("/{letter_id}/redrive")
async def redrive(
    request: Request,
    session: Annotated[Session, Depends(act(Permission.DLQ_REDRIVE))],
    letter_id: DeadLetterId,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Resume the job from its failed step; one already redriven shows why not (409)."""
    c, principal = client(request), session.principal
    letter = await c.dead_letter(letter_id, tenant=principal.tenant_id)
    try:
        await c.redrive(
            letter.id,
            tenant=principal.tenant_id,
            actor=principal.name,
            reason=reason.strip() or f"redriven by {principal.name}",
        )
    except (NotRedrivableError, InvalidTransitionError) as exc:
        return await dead_letter_page(
            request, session, letter_id, error=exc.message, status_code=409
        )
    return RedirectResponse(f"/ui/dlq/{quote(letter_id)}?done=redriven", status_code=303)
