"""Review pages: the queue of waiting decisions, and one review with approve and reject."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import RedirectResponse

from stalwart.api.params import ReviewId
from stalwart.api.state import client
from stalwart.client import Client
from stalwart.domain.access import Permission
from stalwart.domain.memory import MemoryHit
from stalwart.errors import InvalidTransitionError, ReviewAlreadyDecidedError, StalwartError
from stalwart.ui.render import UiRoute, act, need, page
from stalwart.ui.session import Session

log = logging.getLogger("stalwart.ui")
router = APIRouter(prefix="/reviews", route_class=UiRoute)

Viewer = Annotated[Session, Depends(need(Permission.REVIEW_READ))]
Decider = Annotated[Session, Depends(act(Permission.REVIEW_DECIDE))]
Comment = Annotated[str, Form(max_length=5000)]
WAITING = ("pending", "escalated")
QUEUE_SIZE = 200


@router.get("")
async def review_queue(request: Request, session: Viewer) -> Response:
    """Reviews waiting for a decision, oldest first, with the time left on each SLA."""
    found = await client(request).reviews(
        tenant=session.principal.tenant_id, statuses=WAITING, limit=QUEUE_SIZE
    )
    return page(request, "reviews.html", session, reviews=found)


async def review_page(
    request: Request, session: Session, review_id: str, *, error: str = "", status_code: int = 200
) -> Response:
    """One review: what the agent was doing, the decision asked, options, context, decision."""
    c, tenant = client(request), session.principal.tenant_id
    review = await c.review(review_id, tenant=tenant)
    job = await c.get(review.job_id, tenant=tenant)
    spec: dict[str, Any] = {}
    if review.step_id is not None:
        for step in await c.steps(review.job_id, tenant=tenant, all_versions=True):
            if step.id == review.step_id:
                spec = step.spec
    context = review.context or {}
    similar, similar_note = await _similar(c, tenant, job.id)
    return page(
        request,
        "review.html",
        session,
        status_code,
        review=review,
        job=job,
        workflow=context.get("workflow") or job.workflow,
        description=spec.get("description") or context.get("description") or "",
        tool=spec.get("tool") or context.get("tool") or "",
        args=review.arguments,
        upstream=context.get("upstream") or {},
        agent=bool(context.get("agent")),
        goal=context.get("goal") or "",
        call=context.get("call") or {},
        transcript=context.get("transcript") or [],
        options=[o if isinstance(o, dict) else {"name": str(o)} for o in review.options],
        waiting=review.status in WAITING,
        can_decide=session.principal.can(Permission.REVIEW_DECIDE),
        error=error,
        similar=similar,
        similar_note=similar_note,
    )


async def _similar(c: Client, tenant: str, job_id: str) -> tuple[list[MemoryHit], str]:
    """Past episodes like this job, and a note on how they were found; a memory that fails
    leaves the review usable."""
    try:
        found = await c.memory.similar_to_job(tenant, job_id)
    except StalwartError as exc:
        log.warning("similar cases unavailable: %s", exc.message)
        return [], "Similar past cases are unavailable right now."
    note = "Found by word overlap (no embedder installed)." if found.method == "bm25" else ""
    return found.hits, note


@router.get("/{review_id}")
async def review_detail(request: Request, session: Viewer, review_id: ReviewId) -> Response:
    """One review."""
    return await review_page(request, session, review_id)


async def _decide(
    request: Request, session: Session, review_id: str, approve: bool, comment: str
) -> Response:
    c, principal = client(request), session.principal
    decide = c.approve if approve else c.reject
    try:
        await decide(
            review_id, reviewer=principal.name, comment=comment.strip(), tenant=principal.tenant_id
        )
    except (ReviewAlreadyDecidedError, InvalidTransitionError) as exc:
        return await review_page(request, session, review_id, error=exc.message, status_code=409)
    done = "approved" if approve else "rejected"
    return RedirectResponse(f"/ui/reviews/{quote(review_id)}?done={done}", status_code=303)


@router.post("/{review_id}/approve")
async def approve(
    request: Request, session: Decider, review_id: ReviewId, comment: Comment = ""
) -> Response:
    """Approve: the step runs. The signed-in key's name is recorded as the reviewer."""
    return await _decide(request, session, review_id, True, comment)


@router.post("/{review_id}/reject")
async def reject(
    request: Request, session: Decider, review_id: ReviewId, comment: Comment = ""
) -> Response:
    """Reject: the job fails or replans with the comment as feedback, per its workflow."""
    return await _decide(request, session, review_id, False, comment)
