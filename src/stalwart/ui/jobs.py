"""Job pages: the filterable list, and one job with its plan, steps, agent transcripts, trace,
timeline and model calls."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import RedirectResponse

from stalwart.api.params import JobId, StorableText
from stalwart.api.state import client
from stalwart.domain.access import Permission
from stalwart.domain.budgets import ledger_totals, usd
from stalwart.domain.states import JOB_TERMINAL, JobStatus
from stalwart.errors import InvalidTransitionError
from stalwart.observability.timeline import (
    LLM,
    MARKER,
    PLAN,
    STEP,
    TraceNode,
    build_trace,
    flatten,
    format_duration,
    trace_totals,
)
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
    workflow: Annotated[StorableText, Query(max_length=255)] = "",
    before: Annotated[StorableText, Query(max_length=255)] = "",
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
    """One job: header, plan DAG, steps, agent transcripts, trace, timeline, model calls; and a
    cancel button."""
    c, tenant = client(request), session.principal.tenant_id
    job = await c.get(job_id, tenant=tenant)
    every_step = await c.steps(job_id, tenant=tenant, all_versions=True)
    steps = [s for s in every_step if s.plan_version == job.plan_version]
    events = await c.events(job_id, tenant=tenant)
    calls = await c.llm_calls(job_id, tenant=tenant)
    agents = any(s.kind == "agent" for s in steps)
    transcripts = await c.transcripts(job_id, tenant=tenant) if agents else []
    trace = build_trace(job, every_step, events, calls, await c.plans(job_id, tenant=tenant))
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
        transcripts=transcripts,
        trace=trace,
        trace_rows=trace_rows(trace, time.time()),
        trace_totals=trace_totals(trace),
        review_of=review_of,
        finished=finished,
        can_cancel=session.principal.can(Permission.CANCEL)
        and not finished
        and not job.cancel_requested,
        error=error,
    )


@dataclass(slots=True)
class TraceRow:
    """One span of the trace as a row of the job page: indented by depth, with a bar placed on
    the job's time axis (in thousandths, for an SVG viewBox 1000 wide)."""

    depth: int
    kind: str
    label: str
    detail: str
    status: str
    outcome: str
    offset: str
    duration: str
    x: int
    width: int
    tokens: str
    cost_usd: float | None


def trace_rows(root: TraceNode, now: float) -> list[TraceRow]:
    """The trace's rows, depth first; open spans run to `now`."""
    total = max(root.extent(now), 1e-9)
    versions = root.attributes.get("plan_version", 1)
    rows = []
    for depth, node in flatten(root):
        a = node.attributes
        label = node.name
        if node.kind == STEP:
            label += f" #{a['attempt']}" + (
                f" (plan v{a.get('plan_version')})" if versions > 1 else ""
            )
        x = round(1000 * (node.start - root.start) / total)
        width = round(1000 * node.extent(now) / total)
        chats = [n for n in node.walk() if n.kind == LLM]
        tokens = ""
        if chats:
            tokens_in = sum(n.attributes["input_tokens"] for n in chats)
            tokens_out = sum(n.attributes["output_tokens"] for n in chats)
            tokens = f"{tokens_in:,} / {tokens_out:,}"
        if node.kind == MARKER:
            took = ""
        elif node.end is None:
            took = f"{format_duration(node.extent(now))} so far"
        else:
            took = format_duration(node.duration)
        rows.append(
            TraceRow(
                depth=min(depth, 4),
                kind=node.kind,
                label=label,
                detail=_detail(node),
                status=node.status,
                outcome=node.outcome or node.status,
                offset=f"+{format_duration(max(0.0, node.start - root.start))}",
                duration=took,
                x=min(max(x, 0), 998),
                width=max(2, min(width, 1000 - max(x, 0))),
                tokens=tokens,
                cost_usd=usd(sum(n.attributes["cost_nanos"] for n in chats)) if chats else None,
            )
        )
    return rows


def _detail(node: TraceNode) -> str:
    """The line under a span's name: what a reader asks next."""
    a = node.attributes
    bits: list[str] = []
    if node.kind == PLAN and a.get("version") is not None:
        bits.append(f"v{a['version']} from template {a.get('template')}")
    if a.get("worker"):
        bits.append(f"on {a['worker']}")
    if a.get("reviewer"):
        bits.append(f"by {a['reviewer']}")
    if node.kind == LLM:
        bits += [str(a.get("purpose") or ""), str(a.get("tier") or "")]
        if a.get("cache_hit"):
            bits.append("cache hit")
    if a.get("error_class"):
        bits.append(f"{a['error_class']}: {a.get('error') or ''}".rstrip(": "))
    elif a.get("reason"):
        bits.append(str(a["reason"]))
    return " · ".join(b for b in bits if b)


@router.get("/{job_id}")
async def job_detail(request: Request, session: Reader, job_id: JobId) -> Response:
    """One job."""
    return await job_page(request, session, job_id)


@router.post("/{job_id}/cancel")
async def cancel(
    request: Request,
    session: Annotated[Session, Depends(act(Permission.CANCEL))],
    job_id: JobId,
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
