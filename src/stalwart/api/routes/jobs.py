"""`/v1/jobs`: submit, list, read, follow and cancel jobs, and read their agent transcripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from stalwart.api.auth import require
from stalwart.api.errors import json_responses, responses
from stalwart.api.params import (
    AfterEvent,
    Cursor,
    IdempotencyKey,
    JobId,
    LastEventId,
    StorableText,
)
from stalwart.api.schemas import (
    Event,
    EventPage,
    Job,
    JobDetail,
    JobPage,
    Reason,
    Step,
    SubmitJob,
    TranscriptList,
    cost_of,
)
from stalwart.api.state import client, server
from stalwart.domain.access import Permission, Principal
from stalwart.domain.states import JOB_TERMINAL, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Reader = Annotated[Principal, Depends(require(Permission.READ))]


@router.post(
    "",
    status_code=201,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "A duplicate: the job this key already made."},
        **responses(400, 401, 403, 404, 413, 422, 429),
    },
    summary="Submit a job",
)
async def submit(
    body: SubmitJob,
    request: Request,
    response: Response,
    principal: Annotated[Principal, Depends(require(Permission.SUBMIT))],
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Validate the input, plan, and queue a job for the caller's tenant. A new job answers
    201; a duplicate `Idempotency-Key` answers 200 with the existing job; a full queue answers
    429 with Retry-After."""
    submitted = await client(request).submit(
        body.workflow,
        body.input,
        tenant=principal.tenant_id,
        idempotency_key=idempotency_key,
        priority=body.priority,
        actor=principal.name,
    )
    if not submitted.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return Job.of(submitted.job)


@router.get("", response_model=JobPage, responses=responses(401, 403, 422), summary="List jobs")
async def list_jobs(
    request: Request,
    principal: Reader,
    status: Annotated[
        list[JobStatus] | None, Query(description="Filter by status (repeat).")
    ] = None,
    workflow: Annotated[StorableText | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> JobPage:
    """The tenant's jobs, newest first, a page at a time."""
    jobs = await client(request).list(
        tenant=principal.tenant_id,
        statuses=[s.value for s in status or ()],
        workflow=workflow,
        limit=limit + 1,
        before=cursor,
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(
        items=[Job.of(j) for j in jobs], next_cursor=jobs[-1].id if more and jobs else None
    )


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    responses=responses(401, 403, 404, 422),
    summary="Get a job",
)
async def get_job(job_id: JobId, request: Request, principal: Reader) -> JobDetail:
    """A job with its current plan's steps and its model spend."""
    c = client(request)
    job = await c.get(job_id, tenant=principal.tenant_id)
    steps = await c.steps(job_id, tenant=principal.tenant_id)
    calls = await c.llm_calls(job_id, tenant=principal.tenant_id)
    return JobDetail(
        **Job.of(job).model_dump(), steps=[Step.of(s) for s in steps], cost=cost_of(calls)
    )


@router.get(
    "/{job_id}/transcript",
    response_model=TranscriptList,
    responses=responses(401, 403, 404, 422),
    summary="A job's agent transcripts",
)
async def job_transcript(job_id: JobId, request: Request, principal: Reader) -> TranscriptList:
    """What each agent step of the job's current plan did, turn by turn: the model's text,
    tokens and cost, and each tool call with its arguments, status and result or error (a
    call waiting for a reviewer names its review). Empty for a job without agent steps."""
    transcripts = await client(request).transcripts(job_id, tenant=principal.tenant_id)
    return TranscriptList.of(transcripts)


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses=responses(401, 403, 404, 422),
    summary="A job's events",
)
async def job_events(
    job_id: JobId,
    request: Request,
    principal: Reader,
    after: AfterEvent = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> EventPage:
    """The job's timeline, in order."""
    events = await client(request).events(
        job_id, tenant=principal.tenant_id, after_id=after, limit=limit
    )
    return EventPage(
        items=[Event.of(e) for e in events], next_after=events[-1].id if events else after
    )


async def _streamed_job(job_id: JobId, request: Request, principal: Reader) -> Principal:
    """The caller, once the job is known to be theirs: a dependency, so that a missing job
    answers 404 before the stream's 200 is sent (a generator's body runs only after that)."""
    await client(request).get(job_id, tenant=principal.tenant_id)
    return principal


@router.get(
    "/{job_id}/events/stream",
    response_class=EventSourceResponse,
    responses=json_responses(401, 403, 404, 422),
    summary="Follow a job's events (server-sent events)",
)
async def job_event_stream(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(_streamed_job)],
    after: AfterEvent = 0,
    last_event_id: LastEventId = None,
) -> AsyncIterator[ServerSentEvent]:
    """Each new event as `event: <kind>` with the event as JSON data and its id, so a client
    that reconnects with `Last-Event-ID` misses nothing. Ends with `event: end` once the job
    is finished and every event was sent."""
    c = client(request)
    cursor = after if last_event_id is None else last_event_id
    poll = server(request).settings.event_stream_poll_seconds
    while True:
        events = await c.events(job_id, tenant=principal.tenant_id, after_id=cursor, limit=500)
        for event in events:
            cursor = event.id
            yield ServerSentEvent(
                data=Event.of(event).model_dump(mode="json"), event=event.kind, id=str(event.id)
            )
        if not events:
            job = await c.get(job_id, tenant=principal.tenant_id)
            if job.status in JOB_TERMINAL:
                yield ServerSentEvent(data={"status": job.status}, event="end", id=str(cursor))
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(poll)


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    responses=responses(400, 401, 403, 404, 409, 422),
    summary="Cancel a job",
)
async def cancel_job(
    job_id: JobId,
    request: Request,
    principal: Annotated[Principal, Depends(require(Permission.CANCEL))],
    body: Reason | None = None,
) -> Job:
    """Stop a job: open steps are cancelled; a running tool sees the flag at its next
    heartbeat. A finished job answers 409."""
    job = await client(request).cancel(
        job_id,
        tenant=principal.tenant_id,
        actor=principal.name,
        reason=(body.reason if body else "") or f"cancelled by {principal.name}",
    )
    return Job.of(job)
