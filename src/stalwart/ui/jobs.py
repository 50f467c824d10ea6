"""Job pages: the filterable list, and one job with its plan, steps, timeline and model calls."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from stalwart.api.state import client
from stalwart.domain.access import Permission
from stalwart.domain.budgets import ledger_totals
from stalwart.domain.states import JOB_TERMINAL, JobStatus
from stalwart.errors import InvalidTransitionError
from stalwart.ui import views
from stalwart.ui.render import UiRoute, act, need, page
from stalwart.ui.session import Session

router = APIRouter(prefix="/jobs", route_class=UiRoute)

Reader = Annotated[Session, Depends(need(Permission.READ))]
PAGE_SIZE = 50
STATUSES = [s.value for s in JobStatus]


@router.get("")
async def job_list(
    request: Request,
    session: Reader,
    status: Annotated[str, Query(max_length=64)] = "",
    workflow: Annotated[str, Query(max_length=255)] = "",
    before: Annotated[str, Query(max_length=255)] = "",
) -> Response:
    """The tenant's jobs, newest first, filtered by status and workflow, a page at a time."""
    status = status if status in STATUSES else ""
    found = await client(request).list(
        tenant=session.principal.tenant_id,
        statuses=[status] if status else (),
        workflow=workflow.strip() or None,
        limit=PAGE_SIZE + 1,
        before=before or None,
    )
    more = len(found) > PAGE_SIZE
    found = found[:PAGE_SIZE]
    return page(
        request,
        "jobs.html",
        session,
        jobs=found,
        statuses=STATUSES,
        status=status,
        workflow=workflow.strip(),
        before=before,
        next_cursor=found[-1].id if more and found else "",
    )


async def job_page(
    request: Request, session: Session, job_id: str, *, error: str = "", status_code: int = 200
) -> Response:
    """One job: header, plan DAG, steps, timeline, model calls; and a cancel button."""
    c, tenant = client(request), session.principal.tenant_id
    job = await c.get(job_id, tenant=tenant)
    steps = await c.steps(job_id, tenant=tenant)
    events = await c.events(job_id, tenant=tenant)
    calls = await c.llm_calls(job_id, tenant=tenant)
    # The review each step asked for, to link to it from the steps table and the timeline.
    review_of = {
        e.step_key or "": str(e.data["review_id"])
        for e in events
        if e.kind == "review_requested" and e.data and e.data.get("review_id")
    }
    finished = job.status in JOB_TERMINAL
    return page(
        request,
        "job.html",
        session,
        status_code,
        job=job,
        steps=steps,
        dag=views.dag(steps),
        node_width=views.NODE_WIDTH,
        node_height=views.NODE_HEIGHT,
        events=events,
        calls=calls,
        totals=ledger_totals(calls),
        review_of=review_of,
        finished=finished,
        can_cancel=session.principal.can(Permission.CANCEL)
        and not finished
        and not job.cancel_requested,
        error=error,
    )


@router.get("/{job_id}")
async def job_detail(request: Request, session: Reader, job_id: str) -> Response:
    """One job."""
    return await job_page(request, session, job_id)


@router.post("/{job_id}/cancel")
async def cancel(
    request: Request,
    session: Annotated[Session, Depends(act(Permission.CANCEL))],
    job_id: str,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Cancel the job; a finished one shows why not (409)."""
    name = session.principal.name
    try:
        await client(request).cancel(
            job_id,
            tenant=session.principal.tenant_id,
            actor=name,
            reason=reason.strip() or f"cancelled by {name}",
        )
    except InvalidTransitionError as exc:
        return await job_page(request, session, job_id, error=exc.message, status_code=409)
    return RedirectResponse(f"/ui/jobs/{quote(job_id)}?done=cancelled", status_code=303)
